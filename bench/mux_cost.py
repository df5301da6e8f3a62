#!/usr/bin/env python3
"""What one connection costs each process of the openssh backend, beside ``ssh -L``: CPU
(run time) and context switches per connection, exact, from ``/proc/PID/task/*/schedstat``,
for our process and its ``ssh -M`` master; and, where ``perf`` can record system-call
tracepoints (``--perf``: it adds a little to each tree's, not ``ssh -L``'s, round trip),
the time from our ``accept4`` returning to our ``sendmmsg`` (the hand-off)
starting: the part of the round trip's critical path that is our Python.

    python bench/mux_cost.py --tree base=DIR --tree new=DIR [--round-trips 1000] [--perf]

Each tree runs its own ``bench/tunnel_bench.py --serve`` (its ``src`` first on the path),
all at once with ``ssh -L``, taking turns in batches of 50 sequential round trips (connect,
send a line, read it back, close), the order rotating; the p50 of each beside ``ssh -L``'s
of the same run. Under the machine-wide bench lock. Needs root (the lab starts sshd), like
bench/tunnel_bench.py. Session 11 (bench/notes/mux.md) used it with these figures.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tunnel_bench as tb  # noqa: E402
from mux_ab import command  # noqa: E402
from roundtrip_ab import bench_lock, start  # noqa: E402

EAGAIN = "0xfffffffffffffff5"


def schedstat(pid: int) -> tuple[int, int]:
    """(run time in ns, context switches) of every thread of ``pid`` so far."""
    run = switches = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError):
            fields = Path(path).read_text().split()
            run += int(fields[0])
            switches += int(fields[2])
    return run, switches


def child_pids(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], check=False, capture_output=True, text=True)
    return [int(word) for word in found.stdout.split()]


def hand_off_gaps(data: Path) -> dict[int, list[float]]:
    """Per pid: µs from each ``accept4`` that returned a socket to the next ``sendmmsg``."""
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "pid,time,event,trace"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    accepted: dict[int, float] = {}
    gaps: dict[int, list[float]] = {}
    for line in script.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        pid, when, event = int(fields[0]), float(fields[1].rstrip(":")), fields[2]
        if "sys_exit_accept4" in event:
            if fields[-1] != EAGAIN:
                accepted[pid] = when
        elif "sys_enter_sendmmsg" in event and pid in accepted:
            gaps.setdefault(pid, []).append((when - accepted.pop(pid)) * 1e6)
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--cipher", default=tb.CIPHERS[0])
    parser.add_argument("--perf", action="store_true", help="the hand-off time too (perf)")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.tree)
    batches = max(1, args.round_trips // tb.RT_BATCH)
    use_perf = args.perf and shutil.which("perf") is not None
    with tb.lab() as lab, tempfile.TemporaryDirectory() as tmp:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}
        try:
            mouths = (tb.free_port(), tb.free_port())
            procs["ssh -L"] = tb.start_forwarder("openssh", lab, args.cipher, mouths)
            ports["ssh -L"] = mouths[1]
            for name, tree in trees.items():
                mouths = (tb.free_port(), tb.free_port())
                script = Path(tree).resolve() / "bench" / "tunnel_bench.py"
                argv = command(script, lab, args.cipher, mouths, "uvloop")
                procs[name] = start(argv, script)
                ports[name] = mouths[1]
            for port in ports.values():
                tb.round_trips(port, 200, 60)
            watched = {name: [proc.pid, *child_pids(proc.pid)] for name, proc in procs.items()}
            ours = ",".join(str(procs[name].pid) for name in trees)
            times: dict[str, list[float]] = {name: [] for name in ports}
            cost = {name: [(0, 0)] * len(pids) for name, pids in watched.items()}
            data = Path(tmp) / "perf.data"
            names = list(ports)
            with bench_lock():
                load = os.getloadavg()[0]
                recorder = None
                if use_perf:
                    events = [
                        "-e",
                        "syscalls:sys_exit_accept4",
                        "-e",
                        "syscalls:sys_enter_sendmmsg",
                    ]
                    recorder = subprocess.Popen(
                        ["perf", "record", "-o", str(data), *events, "-p", ours],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    time.sleep(0.5)
                for batch in range(batches):
                    shift = batch % len(names)
                    for name in names[shift:] + names[:shift]:
                        before = [schedstat(pid) for pid in watched[name]]
                        times[name] += tb.round_trips(ports[name], tb.RT_BATCH, 60)
                        after = [schedstat(pid) for pid in watched[name]]
                        cost[name] = [
                            (run + a[0] - b[0], sw + a[1] - b[1])
                            for (run, sw), b, a in zip(cost[name], before, after, strict=True)
                        ]
                if recorder is not None:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait()
            gaps = hand_off_gaps(data) if use_perf and data.exists() else {}
            peer = statistics.median(times["ssh -L"])
            print(f"{len(times['ssh -L'])} round trips each, {args.cipher}, load {load:.2f}")
            for name in names:
                p50 = statistics.median(times[name])
                count = len(times[name])
                extra = (p50 - peer) * 1000
                parts = [f"  {name:<8} p50 {p50:.3f} ms {p50 / peer:.3f}x ({extra:+.0f} us)"]
                for label, (run, sw) in zip(("proc", "master"), cost[name], strict=False):
                    parts.append(f"{label} {run / count / 1000:.0f} us {sw / count:.2f} sw")
                gap = gaps.get(procs[name].pid)
                if gap:
                    parts.append(f"accept->sendmmsg p50 {statistics.median(gap):.0f} us")
                print("; ".join(parts))
        finally:
            for proc in procs.values():
                tb.stop(proc)


if __name__ == "__main__":
    main()
