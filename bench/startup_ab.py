#!/usr/bin/env python3
"""Start-up A/B: two ``blitzdns`` installs beside ``ssh -L`` + dnsmasq, in one run.

    .venv/bin/python bench/startup_ab.py --old OLD/.venv/bin/blitzdns [--new NEW] [--rounds 8]

bench/daemon_bench.py's lab and measurement (exec → ready, CPU exec → ready, RSS idle),
for three sides in rotating order each round: the old tree's script, the new tree's, and
the peer. Each tree keeps its bytecode in the bench's cache (by source path: the two do
not meet); one warm-up round per side is not counted. Medians, with the ratio to the peer
from the same run. Holds the bench lock throughout; needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import signal
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import daemon_bench as bench  # noqa: E402
from benchlock import LOCK_PATH  # noqa: E402

KEYS = (
    "exec→ready (DNS + all mouths carrying)",
    "CPU exec→ready (s)",
    "RSS idle (MB)",
    "Pss idle (MB)",
)
PEER = "openssh+dnsmasq"


@contextlib.contextmanager
def lock_in_turn(wait_s: float) -> Iterator[None]:
    """The bench lock (bench/benchlock.py's file), waited for in the kernel's queue, as
    ``flock -w`` does (benchlock polls every 0.5 s and loses every hand-over to a
    ``flock -w`` waiter)."""

    def expired(signum: int, frame: object) -> None:
        raise SystemExit(f"{LOCK_PATH} still held after {wait_s} s")

    with LOCK_PATH.open("a") as handle:
        previous = signal.signal(signal.SIGALRM, expired)
        signal.alarm(max(1, int(wait_s)))
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--old", required=True, help="the old tree's blitzdns script")
    parser.add_argument(
        "--new", default=bench.BLITZDNS, help="the new tree's (default: this venv's)"
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--lock-wait", type=float, default=1800.0)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 30:
        raise SystemExit("--rounds must be 1..30")
    bench.raise_nofile()
    scripts = {"old": args.old, "new": args.new}
    sides = ["old", "new", PEER]
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}

    def one(side: str, where: bench.Lab, job: bench.Job, round_dir: Path) -> dict[str, float]:
        round_dir.mkdir()
        if side in scripts:
            bench.BLITZDNS = scripts[side]
        kind = PEER if side == PEER else "blitzdns"
        return bench.measure(kind, where, job, 10, 30.0, round_dir, bench.BYTECODE_CACHE)

    with lock_in_turn(args.lock_wait):
        print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
        with bench.lab(10) as where:
            job = bench.make_job(where.echo_port)
            for side in sides:
                one(side, where, job, where.root / f"warm-{side}")
            for index in range(args.rounds):
                order = sides[index % 3 :] + sides[: index % 3]
                for side in order:
                    values = one(side, where, job, where.root / f"r{index}-{side}")
                    results[side].append(values)
                    print(
                        f"round {index + 1} {side}: ready {values[KEYS[0]]:.3f} s, "
                        f"CPU {values[KEYS[1]]:.3f} s, RSS {values[KEYS[2]]:.2f} MB",
                        flush=True,
                    )
        print(f"loadavg at end: {Path('/proc/loadavg').read_text().strip()}")
    head = f"{'old':>9}{'new':>9}{'peer':>9}{'old/peer':>10}{'new/peer':>10}"
    print(f"\n{f'medians of {args.rounds} rounds':<29}{head}")
    for key in KEYS:
        medians = {s: statistics.median(r[key] for r in results[s]) for s in sides}
        old, new, peer = medians["old"], medians["new"], medians[PEER]
        cells = f"{old:>9.3f}{new:>9.3f}{peer:>9.3f}{old / peer:>10.2f}{new / peer:>10.2f}"
        print(f"{key[:28]:<29}{cells}")
    spread = [r[KEYS[0]] for r in results[PEER]]
    print(f"peer's exec→ready range: {min(spread):.3f}–{max(spread):.3f} s")


if __name__ == "__main__":
    main()
