#!/usr/bin/env python3
"""Growth benchmark (issue 18): the forwarder with 1 to 1,000 concurrent tunneled connections,
beside OpenSSH ``ssh -N -L`` against the same sshd, in one run.

Everything on loopback, in the lab of ``bench/tunnel_bench.py`` (a throwaway sshd, a line
echo target; needs root). For each count N (``--counts``, default 1 10 100 1000) and each
forwarder (``tunnel+uvloop``: this package as the daemon runs it; ``openssh``: ``ssh -L``),
in interleaved rounds, a fresh forwarder process:

* N connections opened through the mouth (100 at a time), each echoing one line, then all
  held open: forwarder CPU per connection opened;
* with the N held: rounds in which every connection sends a line and waits for its echo at
  once (``max(3, 2000 // N)`` rounds, so each count makes about 2,000 requests): latency
  per request p50 and p99 as the client sees it, forwarder CPU per request;
* RSS (VmRSS of the forwarder's process tree) with the N held.

The client is this process (uvloop when installed); it is the same for both forwarders.
sshd listens on an address of its own (:data:`SSHD_HOST`) whose loopback route acknowledges
at once (``quickack 1``, for the run only): sshd sends toward a forwarder under Nagle (it
sets ``TCP_NODELAY`` on that socket only for a session, and neither ``ssh -N -L`` nor the
tunnel opens one), so with N echoes leaving at once its second one waited for the
forwarder's kernel's delayed ACK, 40 ms, on every forwarder alike (bench/notes/growth.md,
"Session 11"). The medians over ``--rounds`` are printed and emitted as figures (group
``growth: connections``) for ``bench/report.py``. Every loop is bounded in count and in
time.

Usage: ``python bench/growth_bench.py [--counts 1 10 100 1000] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from tests.peers import descendants, free_port  # noqa: E402

from benchlock import bench_lock  # noqa: E402
from daemon_bench import memory_kb, raise_nofile  # noqa: E402
from figures import Figure, emit  # noqa: E402
from tunnel_bench import Lab, cpu_seconds, lab, percentile, start_forwarder, stop  # noqa: E402

CIPHER = "aes128-gcm@openssh.com"
KINDS = ("tunnel+uvloop", "openssh")
REQUESTS = 2000
"""About this many requests per count: rounds × N."""
OPEN_AT_ONCE = 100
SSHD_HOST = "127.0.91.1"
"""sshd's address in this bench: no other bench or test uses it, so its ``quickack`` route
changes nothing else on the machine."""


@contextlib.contextmanager
def quick_acks(host: str) -> Iterator[None]:
    """A loopback route to ``host`` (a /32 in the local table, as the kernel's own
    ``127.0.0.0/8``) with ``quickack 1`` while the block runs: a socket connected to
    ``host`` acknowledges every segment at once, never by the delayed-ACK timer. Only the
    forwarders' SSH sockets are connected to sshd's address. The route's ``src 127.0.0.1``
    makes them connect from 127.0.0.1 (without it the kernel takes ``host`` itself as the
    source), so sshd's accepted sockets, connected to 127.0.0.1, keep the kernel's
    defaults, as does every other socket."""
    route = ["local", f"{host}/32", "dev", "lo", "table", "local"]
    subprocess.run(
        ["ip", "route", "replace", *route, "src", "127.0.0.1", "quickack", "1"], check=True
    )
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", *route], check=False)


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and its descendants, MB."""
    return memory_kb(descendants(pid))[0] / 1024


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def held_open(port: int, count: int, deadline: float) -> AsyncIterator[list[Stream]]:
    """``count`` connections through the mouth, each echoing one line, kept open for the
    block and closed after it."""
    limit = asyncio.Semaphore(OPEN_AT_ONCE)
    held: list[Stream] = []

    async def one(index: int) -> None:
        line = f"open {index}\n".encode()
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            held.append((reader, writer))
            writer.write(line)
            got = await asyncio.wait_for(reader.readline(), max(0.1, deadline - time.monotonic()))
            if got != line:
                raise RuntimeError(f"connection {index}: wrong echo {got!r}")

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for _, writer in held:
            writer.close()
        raise RuntimeError(f"{len(failures)} of {count} connections failed: {failures[0]!r}")
    try:
        yield held
    finally:
        for _, writer in held:
            writer.close()


async def request_rounds(held: list[Stream], rounds: int, deadline: float) -> list[float]:
    """Every held connection sends a line and awaits its echo, all at once, ``rounds``
    times; milliseconds per request."""
    times: list[float] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        start = time.perf_counter()
        writer.write(b"LOOKUP blitzdns,NAME\r\n")
        left = max(0.1, deadline - time.monotonic())
        if not (await asyncio.wait_for(reader.readline(), left)).endswith(b"\n"):
            raise RuntimeError("echo closed early")
        times.append((time.perf_counter() - start) * 1000)

    for _ in range(rounds):
        if time.monotonic() > deadline:
            raise RuntimeError(f"requests ran out of time after {len(times)}")
        await asyncio.gather(*(one(reader, writer) for reader, writer in held))
    return times


def measure(kind: str, where: Lab, count: int, budget_s: float) -> dict[str, float]:
    """One fresh forwarder carrying ``count`` held connections."""
    mouths = (free_port(), free_port())
    proc = start_forwarder(kind, where, CIPHER, mouths)
    rounds = max(3, REQUESTS // count)

    async def run() -> dict[str, float]:
        deadline = time.monotonic() + budget_s
        before = cpu_seconds(proc.pid)
        async with held_open(mouths[1], count, deadline) as held:
            opened = cpu_seconds(proc.pid)
            times = await request_rounds(held, rounds, deadline)
            used = cpu_seconds(proc.pid) - opened
            return {
                "open_cpu_us": (opened - before) / count * 1e6,
                "request_cpu_us": used / len(times) * 1e6,
                "p50": statistics.median(times),
                "p99": percentile(times, 0.99),
                "rss": rss_mb(proc.pid),
            }

    try:
        return asyncio.run(run())
    finally:
        stop(proc)


FIGURES = (  # (key, case, unit)
    ("request_cpu_us", "forwarder CPU per request", "µs"),
    ("p50", "request latency p50", "ms"),
    ("p99", "request latency p99", "ms"),
    ("rss", "forwarder RSS", "MB"),
    ("open_cpu_us", "forwarder CPU per connection opened", "µs"),
)


def figures_of(results: dict[int, dict[str, dict[str, float]]]) -> list[Figure]:
    return [
        Figure(
            f"growth {count} conn{'s' if count > 1 else ''}: {case}",
            by_kind["tunnel+uvloop"][key],
            by_kind["openssh"][key],
            unit,
            peer_name="ssh -L",
            group="growth: connections",
        )
        for key, case, unit in FIGURES
        for count, by_kind in results.items()
        if key != "open_cpu_us" or count >= OPEN_AT_ONCE  # fewer: under one clock tick
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="*", default=[1, 10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--budget", type=float, default=120, help="seconds per measurement")
    args = parser.parse_args()
    if not all(1 <= n <= 2000 for n in args.counts) or not 1 <= args.rounds <= 10:
        raise SystemExit("--counts must be 1..2000 and --rounds 1..10")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    raise_nofile()
    with bench_lock(1800), lab(SSHD_HOST) as where, quick_acks(SSHD_HOST):
        print(
            f"growth benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"{CIPHER}; counts {args.counts}; median of {args.rounds} interleaved rounds; "
            f"sshd on {SSHD_HOST}, quick ACKs toward it"
        )
        results: dict[int, dict[str, dict[str, float]]] = {}
        for count in args.counts:
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
            for round_number in range(args.rounds):
                order = KINDS if round_number % 2 == 0 else KINDS[::-1]
                for kind in order:
                    runs[kind].append(measure(kind, where, count, args.budget))
            results[count] = {
                kind: {key: statistics.median(r[key] for r in done) for key in done[0]}
                for kind, done in runs.items()
            }
            print(f"\n{count} connections (load average {os.getloadavg()[0]:.2f})")
            for kind, r in results[count].items():
                print(
                    f"  {kind:<14} CPU/request {r['request_cpu_us']:7.0f} µs  p50 "
                    f"{r['p50']:7.3f} ms  p99 {r['p99']:7.3f} ms  RSS {r['rss']:6.1f} MB  "
                    f"CPU/open {r['open_cpu_us']:6.0f} µs"
                )
        emit("growth", figures_of(results))


if __name__ == "__main__":
    main()
