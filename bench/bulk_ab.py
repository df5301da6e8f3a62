#!/usr/bin/env python3
"""Same-run A/B of bulk throughput through the default backend, beside ``ssh -L``, with
sshd's CPU per GB (issue 18's rows "tunnel bulk up / down"; bench/notes/aesbulk.md).

    python bench/bulk_ab.py --old DIR [--rounds 6] [--seconds 3] [--rate 1.5G] [--up] [--perf]

One lab from bench/tunnel_bench.py (sshd, iperf3, echo). Each round starts, in a rotating
order, ``ssh -L`` and the forwarder of the tree in ``--old`` (a checkout: its own
bench/tunnel_bench.py and ``src``, as bench/roundtrip_ab.py runs it) and of this tree on
each loop, one at a time; each makes 20 round trips to warm up, then ``iperf3 -R`` (down)
for ``--seconds`` (``--rate``: at that fixed rate, iperf3's ``-b``, where CPU per GB
compares without the throughput; ``--up``: then the same up). Per transfer: Gb/s; the
forwarder's CPU per GB and voluntary context switches per GB (``--perf``: its waits, reads
and ``setsockopt`` calls per GB too, by ``perf stat``); the same for sshd (its listener and
every process below it) over the same seconds; sshd's TCP segments with data toward the
forwarder and the segments it got back per GB (``ss -ti``: sshd's socket runs Nagle, so how
the forwarder acknowledges shapes how sshd cuts its stream). Printed: medians over the
rounds, the median of each round's ratio to ``ssh -L``'s, and of the ratio of the
forwarder's and sshd's CPU per GB together to the same sum behind ``ssh -L``. The whole
run holds the machine-wide bench lock (keep it under ~6 minutes: rounds x forwarders x
(seconds + ~2 s)). Needs root (the lab starts sshd), like bench/tunnel_bench.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from tests.peers import descendants, free_port  # noqa: E402

import roundtrip_ab  # noqa: E402
import tunnel_bench  # noqa: E402
from tunnel_bench import Lab, iperf, lab, round_trips, stop  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def usage(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, voluntary context switches) of ``pids`` so far (gone ones: nothing)."""
    cpu, switches = 0.0, 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    switches += int(line.split()[1])
    return cpu, switches


def sshd_listener(lab_: Lab) -> int:
    """The lab's sshd listener (found by its config file on its command line)."""
    config = str(lab_.root / "sshd_config").encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if config in Path(f"/proc/{entry}/cmdline").read_bytes():
                    return int(entry)
    raise RuntimeError("the lab's sshd is not running")


PERF_EVENTS = {
    "wait": "syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait",
    "read": "syscalls:sys_enter_read,syscalls:sys_enter_recvfrom",
    "setso": "syscalls:sys_enter_setsockopt",
}
"""``--perf``: the forwarder's system calls counted (``perf stat``), summed by name."""


def perf_start(pids: list[int]) -> subprocess.Popen[str]:
    events = ",".join(PERF_EVENTS.values())
    command = ["perf", "stat", "-x,", "-e", events, "-p", ",".join(map(str, pids))]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


def perf_stop(proc: subprocess.Popen[str]) -> dict[str, float]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    counts = dict.fromkeys(PERF_EVENTS, 0.0)
    for line in err.splitlines():
        fields = line.split(",")
        for name, events in PERF_EVENTS.items():
            if len(fields) > 2 and fields[2] in events.split(",") and fields[0].isdigit():
                counts[name] += int(fields[0])
    return counts


SEGMENTS = re.compile(r"\b(segs_out|segs_in|data_segs_out):(\d+)")


def segments(sshd_port: int) -> dict[str, int]:
    """sshd's TCP counters toward the forwarder (``ss -ti``: its socket whose source port
    is sshd's): segments out, of them with data, and segments in (the forwarder's)."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{sshd_port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts = dict.fromkeys(("segs_out", "segs_in", "data_segs_out"), 0)
    for name, value in SEGMENTS.findall(out):
        counts[name] += int(value)
    return counts


def iperf_at(port: int, seconds: float, reverse: bool, rate: str | None) -> tuple[float, float]:
    """:func:`tunnel_bench.iperf`, at most ``rate`` (iperf3's ``-b``) when given."""
    if rate is None:
        return iperf(port, seconds, reverse)
    command = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "-b", rate]
    if reverse:
        command.append("-R")
    out = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False)
    try:
        received = json.loads(out.stdout)["end"]["sum_received"]
    except (ValueError, KeyError):
        return float("nan"), float("nan")
    return float(received["bits_per_second"]) / 1e9, float(received["bytes"])


def transfer(
    port: int, args: argparse.Namespace, reverse: bool, ours: list[int], sshd: list[int]
) -> dict[str, float]:
    perf = perf_start(ours) if args.perf else None
    before_ours, before_sshd = usage(ours), usage(sshd)
    before_segs = segments(args.sshd_port)
    gbps, nbytes = iperf_at(port, args.seconds, reverse, args.rate)
    after_segs = segments(args.sshd_port)
    after_ours, after_sshd = usage(ours), usage(sshd)
    gb = nbytes / 1e9
    out = {
        "gbps": gbps,
        "cpu": (after_ours[0] - before_ours[0]) / gb,
        "csw": (after_ours[1] - before_ours[1]) / gb,
        "sshd_cpu": (after_sshd[0] - before_sshd[0]) / gb,
        "sshd_csw": (after_sshd[1] - before_sshd[1]) / gb,
        # Down: sshd's data segments toward us; up: our data segments toward sshd (its in).
        "segs": (after_segs["data_segs_out"] - before_segs["data_segs_out"]) / gb,
        "segs_in": (after_segs["segs_in"] - before_segs["segs_in"]) / gb,
    }
    if perf is not None:
        out.update({name: count / gb for name, count in perf_stop(perf).items()})
    return out


def one(
    kind: str, lab_: Lab, cipher: str, args: argparse.Namespace, listener: int
) -> dict[str, dict[str, float]]:
    mouths = (free_port(), free_port())
    if kind == "openssh":
        proc = tunnel_bench.start_forwarder(kind, lab_, cipher, mouths)
    else:
        tree, _, loop = kind.partition("+")
        script = (Path(args.old).resolve() / "bench" if tree == "old" else HERE) / "tunnel_bench.py"
        command = roundtrip_ab.forwarder_command(script, lab_, cipher, mouths, loop)
        proc = roundtrip_ab.start(command, script)
    try:
        round_trips(mouths[1], 20, 10)
        ours = descendants(proc.pid)
        sshd = descendants(listener)
        out = {"down": transfer(mouths[0], args, True, ours, sshd)}
        if args.up:
            out["up"] = transfer(mouths[0], args, False, ours, sshd)
        return out
    finally:
        stop(proc)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="a checkout of the tree to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--up", action="store_true", help="up as well as down")
    parser.add_argument("--rate", help="iperf3 -b (a fixed rate, e.g. 2G): CPU per GB apart")
    parser.add_argument("--perf", action="store_true", help="count our system calls")
    parser.add_argument("--loops", nargs="*", default=["uvloop", "asyncio"])
    parser.add_argument("--cipher", default=tunnel_bench.CIPHERS[0], choices=tunnel_bench.CIPHERS)
    args = parser.parse_args()
    args.rounds = min(max(args.rounds, 1), 12)
    args.seconds = min(max(args.seconds, 1), 10)
    kinds = ["openssh"] + [f"{tree}+{loop}" for loop in args.loops for tree in ("old", "new")]
    runs: dict[str, list[dict[str, dict[str, float]]]] = {kind: [] for kind in kinds}
    with lab() as lab_, roundtrip_ab.bench_lock():
        listener = sshd_listener(lab_)
        args.sshd_port = lab_.sshd_port
        load = os.getloadavg()[0]
        started = time.monotonic()
        for number in range(args.rounds):
            shift = number % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                runs[kind].append(one(kind, lab_, args.cipher, args, listener))
        load_end = os.getloadavg()[0]
    print(
        f"{args.cipher}: {args.rounds} rounds x {args.seconds:g} s, load {load:.2f}-{load_end:.2f},"
        f" {time.monotonic() - started:.0f} s"
    )
    for way in ("down", "up") if args.up else ("down",):
        print(f"\n{way}: Gb/s (median of per-round ratio to ssh -L), per GB: CPU s, switches")
        base = runs["openssh"]
        for kind in kinds:
            rows = [r[way] for r in runs[kind]]

            def med(key: str, rows: list[dict[str, float]] = rows) -> float:
                return statistics.median(r[key] for r in rows)

            ratios = [
                r[way]["gbps"] / b[way]["gbps"] for r, b in zip(runs[kind], base, strict=True)
            ]
            cpu_ratios = [
                r[way]["cpu"] / b[way]["cpu"] for r, b in zip(runs[kind], base, strict=True)
            ]
            sums = [
                (r[way]["cpu"] + r[way]["sshd_cpu"]) / (b[way]["cpu"] + b[way]["sshd_cpu"])
                for r, b in zip(runs[kind], base, strict=True)
            ]
            print(
                f"  {kind:14} {med('gbps'):5.2f} ({statistics.median(ratios):.2f}x,"
                f" {min(ratios):.2f}-{max(ratios):.2f})  cpu {med('cpu'):.3f}"
                f" ({statistics.median(cpu_ratios):.2f}x) csw {med('csw') / 1000:5.1f}k"
                f"  sshd cpu {med('sshd_cpu'):.3f} csw {med('sshd_csw') / 1000:5.1f}k"
                f"  sshd segs {med('segs') / 1000:.1f}k in {med('segs_in') / 1000:.1f}k"
                f"  ours+sshd {statistics.median(sums):.3f}x"
                + "".join(f"  {n} {med(n) / 1000:.1f}k" for n in PERF_EVENTS if args.perf)
            )


if __name__ == "__main__":
    main()
