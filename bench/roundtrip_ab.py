#!/usr/bin/env python3
"""The round-trip measurements of bench/notes/roundtrip.md, repeatable (issue 18's row
"connection round trip p50, default backend").

    python bench/roundtrip_ab.py callgrind [--loop uvloop] [--cipher aes128-gcm@openssh.com]
    python bench/roundtrip_ab.py ab --old DIR [--rounds 7] [--round-trips 500]

* ``callgrind``: the forwarder (bench/tunnel_bench.py ``--serve tunnel``) under
  ``valgrind --tool=callgrind``; after 60 warm-up round trips the counters are zeroed, 50
  round trips made and dumped, zeroed, 50 + ``--count`` made and dumped: instructions
  per connection = (I(50 + count) − I50) / count (the fixed cost of a dump cancels out).
  Counts user-space instructions in the forwarder's process only, repeatable whatever
  the machine's load (to a few per cent: repeat each figure).
* ``ab``: same-run A/B of the round-trip p50: ``ssh -L``, the forwarder of the tree in
  ``--old`` (a checkout: its own bench/tunnel_bench.py, whose ``--serve`` puts its own
  ``src`` first on the path) and of this tree, on both loops, all running at once in
  tunnel_bench's interleaved batches, ``--rounds`` rounds, medians; ratios to ``ssh -L``.

Both run under the machine-wide bench lock, each cipher's run a hold of its own. Needs root
(the lab starts sshd), like bench/tunnel_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlock  # noqa: E402
import tunnel_bench  # noqa: E402
from tunnel_bench import Lab, free_port, lab, round_trips, stop  # noqa: E402


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """The machine-wide bench lock (benchlock.py), waited for in line without a bound."""
    with benchlock.bench_lock(24 * 3600.0):
        yield


TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def forwarder_command(
    script: Path, lab_: Lab, cipher: str, mouths: tuple[int, int], loop: str
) -> list[str]:
    gateway = f"root@127.0.0.1:{lab_.sshd_port}"
    command = [sys.executable, str(script), "--serve", "tunnel", "--gateway", gateway]
    command += ["--backend", "asyncssh", "--loop", loop]
    command += [
        "--ssh-config",
        str(lab_.ssh_config(cipher)),
        "--known-hosts",
        str(lab_.known_hosts),
    ]
    command += ["--key", str(lab_.key)]
    command += [
        "--forward",
        f"{mouths[0]}:{lab_.iperf_port}",
        "--forward",
        f"{mouths[1]}:{lab_.echo_port}",
    ]
    return command


def start(command: list[str], script: Path) -> subprocess.Popen[bytes]:
    """Start a forwarder and wait for its READY. Its tree's ``src`` goes first on its path
    by ``PYTHONPATH``: bench/tunnel_bench.py's own ``sys.path`` insert comes too late, as
    its imports (tests.peers → blitzdns) import ``tunnel`` from the venv's editable tree
    before ``--serve`` runs."""
    env = dict(os.environ, PYTHONPATH=str(script.resolve().parent.parent / "src"))
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"READY":
        stop(proc)
        raise RuntimeError(f"forwarder did not come up: {command[:3]}")
    return proc


def dumped(out: Path, before: set[Path], save: str | None) -> int:
    """The instruction total of the dump that appeared since ``before`` (kept as ``save``)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(out.parent.glob(out.name + "*")) - before
        for path in new:
            found = TOTALS.search(path.read_bytes())
            if found:
                if save:
                    shutil.copyfile(path, save)
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError("no callgrind dump")


def callgrind(args: argparse.Namespace) -> None:
    with lab() as lab_, bench_lock():
        mouths = (free_port(), free_port())
        out = lab_.root / "cg.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
        command += forwarder_command(HERE / "tunnel_bench.py", lab_, args.cipher, mouths, args.loop)
        proc = start(command, HERE / "tunnel_bench.py")
        try:
            round_trips(mouths[1], 60, 300)
            totals = []
            for count in (50, 50 + args.count):
                subprocess.run(
                    ["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True
                )
                done = len(round_trips(mouths[1], count, 600))
                assert done == count, done
                before = set(out.parent.glob(out.name + "*"))
                subprocess.run(
                    ["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True
                )
                totals.append(dumped(out, before, args.save))
            per = (totals[1] - totals[0]) / args.count
            print(
                f"callgrind {args.loop} {args.cipher}: {per / 1000:.1f}k instructions per"
                f" connection (I50 {totals[0]}, I{50 + args.count} {totals[1]};"
                f" load {os.getloadavg()[0]:.2f})"
            )
        finally:
            stop(proc)


def ab(args: argparse.Namespace) -> None:
    old_script = Path(args.old).resolve() / "bench" / "tunnel_bench.py"
    new_script = HERE / "tunnel_bench.py"
    original = tunnel_bench.start_forwarder

    def start_forwarder(
        kind: str, lab_: Lab, cipher: str, mouths: tuple[int, int]
    ) -> subprocess.Popen[bytes]:
        if kind == "openssh":
            return original(kind, lab_, cipher, mouths)
        tree, _, loop = kind.partition("+")
        script = old_script if tree == "old" else new_script
        return start(forwarder_command(script, lab_, cipher, mouths, loop or "asyncio"), script)

    tunnel_bench.start_forwarder = start_forwarder  # type: ignore[assignment]
    kinds = ["openssh", "old+uvloop", "new+uvloop", "old+asyncio", "new+asyncio"]
    rounds_beside_ssh(kinds, args.ciphers, args.rounds, args.round_trips)


def rounds_beside_ssh(kinds: list[str], ciphers: list[str], rounds: int, round_trips: int) -> None:
    """Interleaved round-trip rounds of ``kinds`` (``openssh``, ssh -L, first), per cipher
    under the bench lock; each kind's p50 printed beside ssh -L's (ratio and difference),
    its p99 and CPU per connection. The start of ``tunnel_bench.start_forwarder`` for the
    kinds is the caller's (this script's trees, bench/mux_ab.py's)."""
    targs = argparse.Namespace(rounds=rounds, round_trips=round_trips)
    with lab() as lab_:
        for cipher in ciphers:
            with bench_lock():
                load = os.getloadavg()[0]
                res = tunnel_bench.round_trip_rounds(kinds, lab_, cipher, targs)
                load_end = os.getloadavg()[0]
            base = res["openssh"]["p50"]
            print(f"\n{cipher}: {rounds} rounds x {round_trips},", end=" ")
            print(f"load {load:.2f}-{load_end:.2f}")
            for kind in kinds:
                r = res[kind]
                print(
                    f"  {kind:16} p50 {r['p50']:.3f} ms ({r['p50'] / base:.3f}x,"
                    f" +{(r['p50'] - base) * 1000:.0f} us)  p99 {r['p99']:.3f}"
                    f"  cpu/conn {r['cpu_per_conn_us']:.0f} us"
                )


def main() -> None:
    # A SIGTERM ends the run through the lab's clean-up (sshd and the targets stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    cg = sub.add_parser("callgrind")
    cg.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    cg.add_argument("--cipher", default=tunnel_bench.CIPHERS[0], choices=tunnel_bench.CIPHERS)
    cg.add_argument("--count", type=int, default=100, help="round trips measured")
    cg.add_argument("--save", help="keep the 150 round trips' dump here (callgrind_annotate)")
    abp = sub.add_parser("ab")
    abp.add_argument("--old", required=True, help="a checkout of the tree to compare with")
    abp.add_argument("--rounds", type=int, default=7)
    abp.add_argument("--round-trips", type=int, default=500)
    abp.add_argument(
        "--ciphers", nargs="*", default=list(tunnel_bench.CIPHERS), choices=tunnel_bench.CIPHERS
    )
    args = parser.parse_args()
    if args.mode == "callgrind":
        callgrind(args)
    else:
        args.rounds = min(max(args.rounds, 1), 10)
        args.round_trips = min(max(args.round_trips, 50), 2000)
        ab(args)


if __name__ == "__main__":
    main()
