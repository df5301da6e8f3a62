#!/usr/bin/env python3
"""Delayed-ACK stalls through the forwarder, beside ``ssh -L``, in one run
(bench/notes/growth.md, "Session 11 (ack1)"; the asyncssh backend's ``quick_ack``).

    python bench/ack_stalls.py [--old DIR] [--connections 10] [--requests 100] [--rounds 2]

sshd (bench/tunnel_bench.py's lab) on 127.0.0.1 with the kernel's own route: no
``quickack`` (unlike bench/growth_bench.py, which removes these stalls for both sides to
measure the forwarders' own cost). ``--connections`` held connections through the mouth;
``--requests`` times, every one sends a line and awaits its echo, all at once (the growth
bench's pattern). sshd sends toward the forwarder under Nagle (no ``TCP_NODELAY``: no
session channel), so an echo that leaves sshd while another is unacknowledged waits for
the forwarder's kernel's ACK: 40 ms when that ACK is delayed. Per forwarder (``ssh -L``,
this tree and ``--old``'s on both loops, a fresh process each, in a rotating order,
``--rounds`` rounds; ``tunnel-mux``: the openssh backend, whose ``ssh`` master owns its
SSH socket): requests over 30 ms (stalls), p50 and p90. ``--pcap FILE``: tcpdump of
sshd's port meanwhile (a stall shows as sshd's small segment, then nothing until the
forwarder's bare ACK 40 ms later). Holds the machine-wide bench lock for the whole run.
Needs root (the lab starts sshd).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from tests.peers import free_port  # noqa: E402

import tunnel_bench  # noqa: E402
from benchlock import bench_lock  # noqa: E402
from growth_bench import held_open, request_rounds  # noqa: E402
from roundtrip_ab import forwarder_command, start  # noqa: E402
from tunnel_bench import Lab, lab, percentile, stop  # noqa: E402

STALL_MS = 30.0
CIPHER = "aes128-gcm@openssh.com"


def start_kind(
    kind: str, lab_: Lab, old: Path | None, mouths: tuple[int, int]
) -> subprocess.Popen[bytes]:
    if kind in ("openssh", "tunnel-mux"):  # ssh -L; the openssh backend (this tree's)
        return tunnel_bench.start_forwarder(kind, lab_, CIPHER, mouths)
    tree, _, loop = kind.partition("+")
    script = (old if tree == "old" and old else HERE) / "tunnel_bench.py"
    return start(forwarder_command(script, lab_, CIPHER, mouths, loop), script)


def one(kind: str, lab_: Lab, old: Path | None, connections: int, requests: int) -> list[float]:
    mouths = (free_port(), free_port())
    proc = start_kind(kind, lab_, old, mouths)

    async def run() -> list[float]:
        deadline = time.monotonic() + 120
        async with held_open(mouths[1], connections, deadline) as held:
            return await request_rounds(held, requests, deadline)

    try:
        return asyncio.run(run())
    finally:
        stop(proc)


def main() -> None:
    # A SIGTERM ends the run through the lab's clean-up (sshd and the targets stopped).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="a checkout of the tree to compare with")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kinds", nargs="*")
    parser.add_argument("--pcap", help="tcpdump sshd's port into this file meanwhile")
    args = parser.parse_args()
    if (
        not 1 <= args.connections <= 100
        or not 1 <= args.requests <= 500
        or not 1 <= args.rounds <= 6
    ):
        raise SystemExit("--connections 1..100, --requests 1..500, --rounds 1..6")
    old = Path(args.old).resolve() / "bench" if args.old else None
    kinds = args.kinds or ["openssh", "new+uvloop", "new+asyncio", "tunnel-mux"]
    if old and not args.kinds:
        kinds += ["old+uvloop", "old+asyncio"]
    times: dict[str, list[list[float]]] = {kind: [] for kind in kinds}
    with lab() as lab_, bench_lock(1800):
        load = os.getloadavg()[0]
        dump = None
        if args.pcap:
            command = ["tcpdump", "-i", "lo", "-n", "-s", "128", "-w", args.pcap]
            dump = subprocess.Popen(
                [*command, f"tcp port {lab_.sshd_port}"], stderr=subprocess.DEVNULL
            )
        try:
            for number in range(args.rounds):
                shift = number % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    times[kind].append(one(kind, lab_, old, args.connections, args.requests))
        finally:  # a failed round or a SIGTERM (sys.exit) stops tcpdump too
            if dump is not None:
                dump.terminate()
                dump.wait()
        load_end = os.getloadavg()[0]
    print(
        f"{args.connections} connections x {args.requests} requests, {args.rounds} rounds,"
        f" sshd on 127.0.0.1 (no quickack route), load {load:.2f}-{load_end:.2f}"
    )
    base = sum(t > STALL_MS for r in times["openssh"] for t in r) if "openssh" in times else 0
    for kind, runs in times.items():
        every = [t for r in runs for t in r]
        stalls = [sum(t > STALL_MS for t in r) for r in runs]
        print(
            f"  {kind:12} > {STALL_MS:.0f} ms: {sum(stalls):4d} of {len(every)} (rounds {stalls};"
            f" ssh -L {base})  p50 {statistics.median(every):.3f} ms"
            f"  p90 {percentile(every, 0.9):.3f} ms"
        )


if __name__ == "__main__":
    main()
