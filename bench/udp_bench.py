#!/usr/bin/env python3
"""UDP benchmark: datagrams through the tunnel's relay, beside the same traffic sent
directly on loopback and beside a socat-over-``ssh`` pipeline, in one run.

Everything on loopback, against one throwaway sshd (needs root, like the tests) and one
UDP echo target:

* ``direct``: the client sends to the echo target itself (the floor);
* ``relay``: a :class:`tunnel.Tunnel` UDP forward (the relay started over an exec channel
  by sshd), with the default asyncssh backend and with ``backend="openssh"``;
* ``socat+ssh``: the usual hand-made workaround, ``socat UDP-LISTEN … TCP:…`` here,
  ``ssh -L`` to ``socat TCP-LISTEN … UDP:…`` on the gateway (a byte stream: datagram
  boundaries survive only because each round trip has one datagram in flight).

For each: round trips (send one 64-byte datagram, wait for its echo; p50, p99), then
datagrams/s with a window of 32 in flight for a fixed time. All loops are bounded in
count and in time; a datagram not answered within 1 s counts as lost.

Usage: ``python bench/udp_bench.py [--round-trips 2000] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from bench.benchlock import bench_lock  # noqa: E402
from bench.figures import Figure, emit  # noqa: E402
from tests.peers import Sshd, free_port, start_sshd  # noqa: E402

from tunnel import RelayState, Tunnel, TunnelOptions, UdpForward  # noqa: E402

PAYLOAD = b"x" * 64
WINDOW = 32
LOSS_S = 1.0


class Echo(asyncio.DatagramProtocol):
    """The target: every datagram back to its sender."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class Client(asyncio.DatagramProtocol):
    """A sender that wakes whoever waits for the next reply."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def client_for(target: tuple[str, int]) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_datagram_endpoint(Client, remote_addr=target)
    return client


async def round_trips(target: tuple[str, int], count: int, budget_s: float) -> list[float]:
    """Sequential send → echo; milliseconds each (lost ones are left out)."""
    client = await client_for(target)
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            start = time.perf_counter()
            client.transport.sendto(PAYLOAD)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LOSS_S):
                    await client.replies.get()
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        client.transport.close()
    return times


async def throughput(target: tuple[str, int], seconds: float) -> tuple[float, int]:
    """Datagrams/s echoed with WINDOW in flight for ``seconds``; and how many were lost."""
    client = await client_for(target)
    sent = received = 0
    start = time.monotonic()
    try:
        for _ in range(WINDOW):
            client.transport.sendto(PAYLOAD)
            sent += 1
        while time.monotonic() - start < seconds:
            try:
                async with asyncio.timeout(LOSS_S):
                    await client.replies.get()
            except TimeoutError:
                break
            received += 1
            client.transport.sendto(PAYLOAD)
            sent += 1
    finally:
        client.transport.close()
    elapsed = time.monotonic() - start
    return received / elapsed, max(0, sent - received - WINDOW)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


@contextlib.asynccontextmanager
async def relay_mouth(
    sshd: Sshd, root: Path, target: tuple[str, int], backend: str
) -> AsyncIterator[tuple[str, int]]:
    known_hosts = root / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    config = root / "ssh_config"
    config.write_text("")
    options = TunnelOptions(
        gateways=(f"{sshd.user}@127.0.0.1:{sshd.port}",),  # type: ignore[arg-type]
        known_hosts=known_hosts,
        ssh_config=config,
        client_keys=(sshd.client_key,),
        backend=backend,  # type: ignore[arg-type]
    )
    forward = UdpForward("127.0.0.1", free_port(), *target)
    async with Tunnel(options, [forward]) as tunnel:
        if not await tunnel.wait_up(15):
            raise SystemExit(f"the {backend} link did not come up")
        async with asyncio.timeout(15):
            while tunnel.state.udp_forwards[0].relay is not RelayState.PYTHON:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        yield forward.mouth
        state = tunnel.state.udp_forwards[0]
        if state.dropped:
            print(f"    ({backend}: dropped {state.dropped})")


@contextlib.asynccontextmanager
async def socat_pipeline(sshd: Sshd, target: tuple[str, int]) -> AsyncIterator[tuple[str, int]]:
    """``socat UDP → TCP`` + ``ssh -L`` + ``socat TCP → UDP`` on the gateway."""
    udp_port, local_tcp, remote_tcp = free_port(), free_port(), free_port()
    remote = (
        f"socat TCP-LISTEN:{remote_tcp},bind=127.0.0.1,reuseaddr,fork UDP:{target[0]}:{target[1]}"
    )
    ssh = await asyncio.create_subprocess_exec(
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        str(sshd.client_key),
        "-o",
        f"UserKnownHostsFile={sshd.root / 'bench_known_hosts'}",
        "-o",
        "BatchMode=yes",
        "-p",
        str(sshd.port),
        "-L",
        f"{local_tcp}:127.0.0.1:{remote_tcp}",
        f"{sshd.user}@127.0.0.1",
        remote,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    local: asyncio.subprocess.Process | None = None
    try:
        deadline = time.monotonic() + 15
        while True:  # the gateway is this machine: ask its socat directly whether it listens
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", remote_tcp)
                writer.close()
                break
            if time.monotonic() > deadline or ssh.returncode is not None:
                raise SystemExit("the socat-over-ssh pipeline did not come up")
            await asyncio.sleep(0.05)
        local = await asyncio.create_subprocess_exec(
            "socat",
            f"UDP-LISTEN:{udp_port},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:127.0.0.1:{local_tcp}",
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)  # socat has no readiness signal for a UDP listener
        yield ("127.0.0.1", udp_port)
    finally:
        for process in (local, ssh):
            if process is not None and process.returncode is None:
                process.terminate()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await process.wait()


async def measure(
    name: str,
    open_path: Callable[[], contextlib.AbstractAsyncContextManager[tuple[str, int]]],
    args: argparse.Namespace,
    results: dict[str, dict[str, float]],
) -> None:
    async with open_path() as target:
        await round_trips(target, 50, 10)  # warm up: associations, caches
        times = await round_trips(target, args.round_trips, 60)
        rate, lost = await throughput(target, args.seconds)
    results[name] = {
        "p50": statistics.median(times) if times else 0.0,
        "p99": percentile(times, 0.99),
        "answered": len(times),
        "rate": rate,
        "lost": lost,
    }


async def run(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshd")
    for tool in ("ssh", "socat", "python3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    target = transport.get_extra_info("sockname")[:2]
    with tempfile.TemporaryDirectory(prefix="udp-bench-") as tmp:
        root = Path(tmp)
        sshd = start_sshd(root / "sshd")
        (sshd.root / "bench_known_hosts").write_text(sshd.known_hosts_line())
        try:
            results: dict[str, dict[str, float]] = {}

            @contextlib.asynccontextmanager
            async def direct() -> AsyncIterator[tuple[str, int]]:
                yield target

            await measure("direct", direct, args, results)
            for backend in ("asyncssh", "openssh"):
                await measure(
                    f"relay ({backend})",
                    lambda b=backend: relay_mouth(sshd, root, target, b),  # type: ignore[misc]
                    args,
                    results,
                )
            await measure("socat+ssh", lambda: socat_pipeline(sshd, target), args, results)
        finally:
            sshd.kill()
            transport.close()
    print(
        f"UDP benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
        f"{args.round_trips} round trips of {len(PAYLOAD)} bytes, then {args.seconds:g} s "
        f"with {WINDOW} in flight"
    )
    print(f"  {'path':<18} {'p50 ms':>8} {'p99 ms':>8} {'datagrams/s':>12} {'lost':>6}")
    for name, r in results.items():
        print(
            f"  {name:<18} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['rate']:>12,.0f} "
            f"{int(r['lost']):>6}"
        )
    socat = results.get("socat+ssh")
    if socat and socat["p50"]:
        for name in ("relay (asyncssh)", "relay (openssh)"):
            r = results[name]
            print(
                f"  {name} ÷ socat+ssh: p50 {r['p50'] / socat['p50']:.2f}×, "
                f"datagrams/s {r['rate'] / max(socat['rate'], 1):.2f}×"
            )
    emit("udp", figures_of(results))


def figures_of(results: dict[str, dict[str, float]]) -> list[Figure]:
    """Each relay's round trip and rate beside the socat-over-ssh pipeline's."""
    socat = results.get("socat+ssh")
    return [
        Figure(
            f"UDP {name} {case}",
            results[name][key],
            socat[key] if socat else None,
            unit,
            better=better,
            peer_name="socat+ssh",
            group="udp",
        )
        for name in ("relay (asyncssh)", "relay (openssh)")
        if name in results
        for key, case, unit, better in (
            ("p50", "round trip p50", "ms", "lower"),
            ("rate", "datagrams/s, 32 in flight", "datagrams/s", "higher"),
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3)
    args = parser.parse_args()
    args.round_trips = min(max(args.round_trips, 10), 20000)
    args.seconds = min(max(args.seconds, 1), 30)
    with bench_lock(600):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
