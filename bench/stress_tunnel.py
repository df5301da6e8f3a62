#!/usr/bin/env python3
"""Tunnel stress (issue #12): the tunnel as a hostile network would try it, per backend.

    .venv/bin/python bench/stress_tunnel.py [--cycles 30] [--soak 180] [--backend both]

Everything on loopback or in a network namespace of its own, every loop bounded in count
and time. Needs root (it starts its own sshd, and ``ip netns`` for the black hole). The
tunnel runs in a child process (this script with ``--serve``) so that its RSS and
descriptors are its own; it reports every link status change as a JSON line stamped with
``CLOCK_MONOTONIC``, which is one clock for the whole machine.

For each backend, one table:

* **kill storm**: ``--cycles`` kill/restart cycles of the real sshd (SIGKILL of the listener
  and every session) while ``--parallel`` checksummed downloads of 1–20 MB run without
  pause. Each transfer ends intact (every byte right, then the target's EOF), reset (the
  client saw ECONNRESET: it knows it was cut), **cut but clean** (an EOF before the last
  byte: must be 0), corrupted (a wrong byte: 0) or hung (no byte for ``HUNG_S``: 0).
  sshd listening → link up: p50 and max.
* **black hole**: sshd in a namespace behind a veth pair whose far end is set down
  (no FIN, no RST, nothing): keepalive 1 s × ``--hole-keepalives`` (3) → time to declare
  the link dead; far end up again → time to link up.
* **load and soak**: 1000 held connections and 200 × 1 MB at once, then ``--soak``
  seconds of short connections (connect, a line, its echo, close) with ``--reloads``
  SIGHUPs spread over it (every third one with a broken forwards file): failures, RSS and
  descriptors at start / 1 min / end / 30 s after; held connections on the unchanged
  forward must survive every reload, and every broken file must be refused.

``make test`` runs a short version (tests/tunnel/test_tunnel_stress.py): fewer cycles,
transfers and reloads, one hole with one keepalive, no RSS watch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE.parent))
from tests.peers import Sshd, descendants, free_port, running_sshd  # noqa: E402

TUNNEL_SRC = Path(os.environ.get("STRESS_TUNNEL_SRC", SRC))
"""The tunnel under test (``STRESS_TUNNEL_SRC``: another checkout's ``src``, to measure
an older version in the same conditions)."""
HUNG_S = 20.0
"""A transfer with no byte for this long is hung (a cut is seen within keepalives and
``wait_for_link_s``, both far shorter here)."""
PATTERN_LEN = (1 << 20) + 7
"""Downloads repeat a pseudo-random pattern of this (odd) length, one per seed."""
PATTERNS = 8
HEADER = struct.Struct(">QI")
"""A download request: size (uint64), seed (uint32)."""
NOFILE = 8192
WAIT_FOR_LINK_S = 3.0


# --- the tunnel under test (this script re-run with --serve) ---------------------------


def load_forwards(path: Path) -> list[Any]:
    from tunnel import Forward

    specs = json.loads(path.read_text())
    return [Forward("127.0.0.1", int(m), "127.0.0.1", int(t), name=str(m)) for m, t in specs]


async def serve(args: argparse.Namespace) -> None:
    """Run one tunnel until stdin closes; one JSON line per status change and reload."""
    sys.path.insert(0, str(TUNNEL_SRC))
    from tunnel import Backoff, Gateway, Tunnel, TunnelOptions

    raise_nofile()

    def say(**fields: object) -> None:
        print(json.dumps({"t": time.monotonic(), **fields}), flush=True)

    forwards_file = Path(args.forwards)
    options = TunnelOptions(
        gateways=(Gateway.parse(args.gateway),),
        ssh_config=Path(args.ssh_config),
        known_hosts=Path(args.known_hosts),
        client_keys=(Path(args.key),),
        backend=args.backend,
        keepalive_s=1,
        keepalive_count_max=args.keepalives,
        connect_timeout_s=2,
        wait_for_link_s=WAIT_FOR_LINK_S,
        backoff=Backoff(),
    )
    loop = asyncio.get_running_loop()
    closing = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closing.done() or closing.set_result(None))
    loop.add_signal_handler(signal.SIGTERM, lambda: closing.done() or closing.set_result(None))
    tunnel = Tunnel(options, load_forwards(forwards_file))
    tunnel.on_state_change(lambda state: say(status=state.status.value, error=state.last_error))

    async def reload() -> None:
        try:
            forwards = load_forwards(forwards_file)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            say(reload="refused", why=str(exc))
            return
        await tunnel.update_forwards(forwards)
        say(reload="done")

    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))
    async with tunnel:
        say(status="started")
        await closing


# --- the harness ---------------------------------------------------------------------


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def pattern(seed: int) -> bytes:
    return random.Random(seed).randbytes(PATTERN_LEN)


class Targets:
    """The services behind the gateway: checksummed downloads, and an echo server."""

    def __init__(self) -> None:
        self.patterns = [pattern(seed) for seed in range(PATTERNS)]
        self.servers: list[asyncio.Server] = []
        self.download_port = 0
        self.echo_port = 0

    async def start(self) -> Targets:
        download = await asyncio.start_server(self._download, "127.0.0.1", 0, backlog=4096)
        echo = await asyncio.start_server(self._echo, "127.0.0.1", 0, backlog=4096)
        self.servers = [download, echo]
        self.download_port = download.sockets[0].getsockname()[1]
        self.echo_port = echo.sockets[0].getsockname()[1]
        return self

    async def _download(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            size, seed = HEADER.unpack(await reader.readexactly(HEADER.size))
            data = self.patterns[seed % PATTERNS]
            sent = 0
            while sent < size:
                offset = sent % PATTERN_LEN
                chunk = data[offset : offset + min(65536, size - sent)]
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        writer.close()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        for server in self.servers:
            server.close()


async def open_mouth(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
    """A connection to a mouth, or how the attempt ended (``"reset"``, ``"hung"``)."""
    try:
        async with asyncio.timeout(HUNG_S):
            return await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionResetError, ConnectionRefusedError):
        return "reset"
    except TimeoutError:
        return "hung"


async def download(port: int, size: int, seed: int, patterns: list[bytes]) -> str:
    """One checksummed download through the mouth: intact / reset / cut-clean / corrupted
    / hung (see the module docstring)."""
    expected = patterns[seed % PATTERNS]
    got = 0
    opened = await open_mouth(port)
    if isinstance(opened, str):
        return opened
    reader, writer = opened
    try:
        writer.write(HEADER.pack(size, seed))
        while True:
            try:
                async with asyncio.timeout(HUNG_S):
                    chunk = await reader.read(262144)
            except TimeoutError:
                return "hung"
            if not chunk:
                return "intact" if got == size else "cut-clean"
            offset = got % PATTERN_LEN
            want = (expected[offset:] + expected)[: len(chunk)]
            if chunk != want or got + len(chunk) > size:
                return "corrupted"
            got += len(chunk)
    except ConnectionResetError:
        return "intact" if got == size else "reset"
    except OSError:
        return "reset"
    finally:
        writer.close()


class Child:
    """The tunnel process, and the status lines it prints (read in this loop)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self.changed.set()

    async def wait_for(self, status: str, after: float, timeout_s: float) -> float | None:
        """The time of the first ``status`` event at or after ``after``; None on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while True:
                    for event in self.events:
                        if event.get("status") == status and event["t"] >= after:
                            return float(event["t"])
                    self.changed.clear()
                    await self.changed.wait()
        return None

    def reloads(self) -> Counter[str]:
        return Counter(e["reload"] for e in self.events if "reload" in e)

    async def wait_reloads(self, count: int, timeout_s: float) -> Counter[str]:
        """The reload outcomes once ``count`` of them are reported (or ``timeout_s`` ends)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while sum(self.reloads().values()) < count:
                    self.changed.clear()
                    await self.changed.wait()
        return self.reloads()

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total / 1024

    def fds(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                total += len(os.listdir(f"/proc/{pid}/fd"))
        return total


@dataclass
class Lab:
    root: Path
    sshd: Sshd
    targets: Targets
    forwards_file: Path
    download_mouth: int
    echo_mouth: int
    spare_mouth: int


@contextlib.asynccontextmanager
async def child(
    lab: Lab,
    backend: str,
    gateway: str | None = None,
    *,
    keep_known_hosts: bool = False,
    keepalives: int = 3,
) -> AsyncIterator[Child]:
    config = lab.root / "ssh_config"
    config.write_text("")
    known_hosts = lab.root / "known_hosts"
    if not keep_known_hosts:
        known_hosts.write_text(lab.sshd.known_hosts_line())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--backend",
        backend,
        "--gateway",
        gateway or f"{lab.sshd.user}@127.0.0.1:{lab.sshd.port}",
        "--known-hosts",
        str(known_hosts),
        "--key",
        str(lab.sshd.client_key),
        "--ssh-config",
        str(config),
        "--forwards",
        str(lab.forwards_file),
        "--keepalives",
        str(keepalives),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(lab.root / f"{backend}.log").open("ab"),
        env={**os.environ, "PYTHONPATH": str(TUNNEL_SRC)},
    )
    tunnel = Child(proc)
    try:
        yield tunnel
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        tunnel.reader.cancel()


@contextlib.contextmanager
def sshd_lab(tmp: Path) -> Iterator[Sshd]:
    with running_sshd(tmp) as sshd:
        yield sshd


def write_forwards(lab: Lab, *, broken: bool = False, with_spare: bool = False) -> None:
    specs = [
        [lab.download_mouth, lab.targets.download_port],
        [lab.echo_mouth, lab.targets.echo_port],
    ]
    if with_spare:
        specs.append([lab.spare_mouth, lab.targets.echo_port])
    text = json.dumps(specs)
    lab.forwards_file.write_text(text[:-7] if broken else text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")
    )


# --- the three parts ---------------------------------------------------------------


@dataclass
class StormResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    relink_s: list[float] = field(default_factory=list)
    no_link: int = 0


async def kill_storm(
    lab: Lab,
    tunnel: Child,
    cycles: int,
    parallel: int,
    rng: random.Random,
    max_mb: int = 20,
    pace: float = 1.0,
) -> StormResult:
    result = StormResult()
    if await tunnel.wait_for("up", 0, 20) is None:
        raise SystemExit("the link did not come up")
    stop = asyncio.Event()
    patterns = lab.targets.patterns

    async def worker() -> None:
        while not stop.is_set():
            size = rng.randint(1 << 20, max_mb << 20)
            result.outcomes[
                await download(lab.download_mouth, size, rng.randrange(1 << 30), patterns)
            ] += 1

    workers = [asyncio.create_task(worker()) for _ in range(parallel)]
    try:
        for _ in range(cycles):
            await asyncio.sleep(rng.uniform(0.3, 1.5) * pace)
            await asyncio.to_thread(lab.sshd.kill)
            await asyncio.sleep(rng.uniform(0.0, 1.0) * pace)
            await asyncio.to_thread(lab.sshd.start)
            listening = time.monotonic()
            up = await tunnel.wait_for("up", listening - 0.5, 20)
            if up is None:
                result.no_link += 1
            else:
                result.relink_s.append(max(0.0, up - listening))
    finally:
        stop.set()
        async with asyncio.timeout(HUNG_S * 3):
            await asyncio.gather(*workers)
    return result


async def echo_transfer(port: int, size: int, seed: int, patterns: list[bytes]) -> str:
    """``size`` bytes up through the echo target and back, checked: intact / reset /
    cut-clean / corrupted / hung."""
    data = (patterns[seed % PATTERNS] * (size // PATTERN_LEN + 1))[:size]
    opened = await open_mouth(port)
    if isinstance(opened, str):
        return opened
    reader, writer = opened

    async def send() -> None:
        with contextlib.suppress(OSError):
            writer.write(data)
            await writer.drain()
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(HUNG_S * 3):
            back = await reader.read()
    except TimeoutError:
        return "hung"
    except ConnectionResetError:
        return "reset"
    finally:
        await sender
        writer.close()
    if len(back) < size:
        return "cut-clean" if data.startswith(back) else "corrupted"
    return "intact" if back == data else "corrupted"


async def short_connection(port: int) -> bool:
    try:
        async with asyncio.timeout(HUNG_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"ping\n")
                return await reader.readexactly(5) == b"ping\n"
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


@dataclass
class SoakResult:
    samples: dict[str, tuple[float, int]] = field(default_factory=dict)
    burst: Counter[str] = field(default_factory=Counter)
    connections: int = 0
    failures: int = 0
    held_lost: int = 0
    reloads: Counter[str] = field(default_factory=Counter)
    broken_sent: int = 0
    idle_mb: float = 0.0
    after_burst_mb: float = 0.0
    back_within_10mb_s: float | None = None


async def load_and_soak(
    lab: Lab,
    tunnel: Child,
    held: int,
    burst: int,
    soak_s: float,
    reloads: int,
    after_s: float,
    watch_s: float = 30.0,
) -> SoakResult:
    result = SoakResult()
    if await tunnel.wait_for("up", 0, 20) is None:
        raise SystemExit("the link did not come up")
    if watch_s > 0:
        await asyncio.sleep(1)  # idle memory, for the RSS watch (the short run has none)
    result.idle_mb = tunnel.rss_mb()
    result.samples["start"] = (result.idle_mb, tunnel.fds())
    patterns = lab.targets.patterns
    loop = asyncio.get_running_loop()
    # Memory given back: a burst alone, then RSS watched for 30 s.
    outcomes = await asyncio.gather(
        *(echo_transfer(lab.echo_mouth, 1 << 20, seed, patterns) for seed in range(burst))
    )
    result.burst.update(outcomes)
    burst_end = loop.time()
    result.after_burst_mb = tunnel.rss_mb()
    while loop.time() < burst_end + watch_s:
        if tunnel.rss_mb() <= result.idle_mb + 10:
            result.back_within_10mb_s = loop.time() - burst_end
            break
        await asyncio.sleep(0.25)
    # Then the held connections, the same burst beside them, and the soak.
    streams = []
    for _ in range(held):
        reader, writer = await asyncio.open_connection("127.0.0.1", lab.echo_mouth)
        writer.write(b"hold\n")
        assert await reader.readexactly(5) == b"hold\n"
        streams.append((reader, writer))
    outcomes = await asyncio.gather(
        *(echo_transfer(lab.echo_mouth, 1 << 20, seed, patterns) for seed in range(burst))
    )
    result.burst.update(outcomes)
    start = loop.time()
    deadline = start + soak_s
    reload_at = [start + soak_s * (i + 1) / (reloads + 1) for i in range(reloads)]

    async def soaker() -> None:
        while loop.time() < deadline:
            result.connections += 1
            if not await short_connection(lab.echo_mouth):
                result.failures += 1

    async def reloader() -> None:
        for index, when in enumerate(reload_at):
            await asyncio.sleep(max(0.0, when - loop.time()))
            # The file is rewritten only once the tunnel has read the last one: a reload
            # that a loaded machine delays must not read the next (perhaps broken) file.
            await tunnel.wait_reloads(index, HUNG_S)
            broken = index % 3 == 2
            result.broken_sent += broken
            write_forwards(lab, broken=broken, with_spare=index % 2 == 0)
            tunnel.proc.send_signal(signal.SIGHUP)

    async def sampler() -> None:
        if soak_s >= 60:
            await asyncio.sleep(60)
            result.samples["1 min"] = (tunnel.rss_mb(), tunnel.fds())

    await asyncio.gather(*(soaker() for _ in range(10)), reloader(), sampler())
    result.samples["end"] = (tunnel.rss_mb(), tunnel.fds())
    # Every reload done (or refused) before the held connections are checked.
    result.reloads = await tunnel.wait_reloads(reloads, HUNG_S)
    for reader, writer in streams:
        try:
            writer.write(b"kept\n")
            if await asyncio.wait_for(reader.readexactly(5), HUNG_S) != b"kept\n":
                result.held_lost += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            result.held_lost += 1
        writer.close()
    await asyncio.sleep(after_s)
    result.samples[f"{after_s:g} s after"] = (tunnel.rss_mb(), tunnel.fds())
    return result


@dataclass
class HoleResult:
    dead_s: list[float] = field(default_factory=list)
    relink_s: list[float] = field(default_factory=list)
    skipped: str = ""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def namespaced_sshd(lab: Lab, tag: str) -> Iterator[tuple[str, str, str, subprocess.Popen[bytes]]]:
    """An sshd in a namespace of its own behind a veth pair: (namespace, far end, its
    address, the sshd process). Same keys as the lab's sshd."""
    ns, near, far = f"bzst-{tag}", f"bzh{tag}", f"bzn{tag}"
    net = f"10.213.{int(tag) % 250}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", far, "netns", ns)
        ip("addr", "add", f"{net}.1/30", "dev", near)
        ip("link", "set", near, "up")
        ip("-n", ns, "addr", "add", f"{net}.2/30", "dev", far)
        ip("-n", ns, "link", "set", far, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        sshd = lab.sshd
        config = lab.root / "sshd_hole_config"
        config.write_text(
            sshd.config_path.read_text().replace(
                "ListenAddress 127.0.0.1", f"ListenAddress {net}.2"
            )
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield ns, far, f"{net}.2", proc
        finally:
            proc.kill()
            proc.wait()
    finally:
        subprocess.run(["ip", "link", "del", near], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


async def black_hole(
    lab: Lab, backend: str, rounds: int, outage_s: float, keepalives: int = 3
) -> HoleResult:
    result = HoleResult()
    if shutil.which("ip") is None:
        result.skipped = "ip (iproute2) not installed"
        return result
    tag = str(os.getpid() % 10000)
    with namespaced_sshd(lab, tag) as (ns, far, address, _):
        (lab.root / "known_hosts").write_text(
            lab.sshd.known_hosts_line().replace("127.0.0.1", address)
        )
        gateway = f"{lab.sshd.user}@{address}:{lab.sshd.port}"
        async with child(
            lab, backend, gateway, keep_known_hosts=True, keepalives=keepalives
        ) as tunnel:
            if await tunnel.wait_for("up", 0, 30) is None:
                result.skipped = "the link through the namespace did not come up"
                return result
            for _ in range(rounds):
                cut = time.monotonic()
                ip("-n", ns, "link", "set", far, "down")
                dead = await tunnel.wait_for("down", cut, 30)
                if dead is not None:
                    result.dead_s.append(dead - cut)
                await asyncio.sleep(outage_s)
                back = time.monotonic()
                ip("-n", ns, "link", "set", far, "up")
                up = await tunnel.wait_for("up", back, 60)
                if up is not None:
                    result.relink_s.append(up - back)
    return result


async def run_backend(args: argparse.Namespace, backend: str, tmp: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"backend": backend, "hole_keepalives": args.hole_keepalives}
    with sshd_lab(tmp / backend) as sshd:
        targets = await Targets().start()
        lab = Lab(
            root=tmp / backend,
            sshd=sshd,
            targets=targets,
            forwards_file=tmp / backend / "forwards.json",
            download_mouth=free_port(),
            echo_mouth=free_port(),
            spare_mouth=free_port(),
        )
        write_forwards(lab)
        try:
            async with child(lab, backend) as tunnel:
                report["storm"] = await kill_storm(
                    lab, tunnel, args.cycles, args.parallel, rng, args.max_mb, args.pace
                )
            report["hole"] = await black_hole(
                lab, backend, args.holes, args.outage, args.hole_keepalives
            )
            write_forwards(lab)
            async with child(lab, backend) as tunnel:
                report["soak"] = await load_and_soak(
                    lab,
                    tunnel,
                    args.held,
                    args.burst,
                    args.soak,
                    args.reloads,
                    args.after,
                    args.watch,
                )
        finally:
            targets.close()
    return report


def print_report(report: dict[str, Any]) -> None:
    storm: StormResult = report["storm"]
    soak: SoakResult = report["soak"]
    o = storm.outcomes
    print(f"\n== backend {report['backend']} ==")
    print(f"kill storm: {len(storm.relink_s) + storm.no_link} cycles, {sum(o.values())} transfers")
    print("  intact  reset  cut-but-clean  corrupted  hung")
    print(
        f"  {o['intact']:6}  {o['reset']:5}  {o['cut-clean']:13}  {o['corrupted']:9}  {o['hung']:4}"
    )
    r = storm.relink_s
    print(
        f"  sshd listening -> link up: p50 {percentile(r, 0.5):.3f} s, "
        f"max {max(r, default=float('nan')):.3f} s"
        f" ({storm.no_link} cycles without a link within 20 s)"
    )
    hole: HoleResult = report["hole"]
    if hole.skipped:
        print(f"black hole: skipped ({hole.skipped})")
    else:
        print(
            f"black hole ({len(hole.dead_s)} rounds, keepalive 1 s x {report['hole_keepalives']}):"
            f" declared dead after "
            f"p50 {percentile(hole.dead_s, 0.5):.2f} s, max {max(hole.dead_s, default=0):.2f} s;"
            f" restored -> link up p50 {percentile(hole.relink_s, 0.5):.2f} s, "
            f"max {max(hole.relink_s, default=0):.2f} s"
        )
    print(
        f"load: burst {dict(soak.burst)}; soak {soak.connections} connections, "
        f"{soak.failures} failed; held connections lost over the reloads: {soak.held_lost}"
    )
    print(f"  reloads: {dict(soak.reloads)} ({soak.broken_sent} broken files sent)")
    back = soak.back_within_10mb_s
    print(
        f"  RSS idle {soak.idle_mb:.1f} MB, right after the burst {soak.after_burst_mb:.1f} MB,"
        f" back within 10 MB of idle: {'not within the watch' if back is None else f'{back:.1f} s'}"
    )
    for name, (rss, fds) in soak.samples.items():
        print(f"  {name:>12}: RSS {rss:6.1f} MB, descriptors {fds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gateway")
    parser.add_argument("--known-hosts")
    parser.add_argument("--key")
    parser.add_argument("--ssh-config")
    parser.add_argument("--forwards")
    parser.add_argument("--backend", default="both", choices=("asyncssh", "openssh", "both"))
    parser.add_argument("--cycles", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--soak", type=float, default=180.0, help="seconds of short connections")
    parser.add_argument("--reloads", type=int, default=50)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--max-mb", type=int, default=20, help="largest storm transfer, MB")
    parser.add_argument("--pace", type=float, default=1.0, help="scales the storm's pauses")
    parser.add_argument("--watch", type=float, default=30.0, help="RSS watch after a burst")
    parser.add_argument("--holes", type=int, default=3, help="black-hole rounds")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds each hole lasts")
    parser.add_argument(
        "--hole-keepalives",
        type=int,
        default=3,
        help="keepalives (1 s apart) missed before the link through the hole is dead",
    )
    parser.add_argument("--keepalives", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the stress run starts its own sshd")
    raise_nofile()
    backends = ("asyncssh", "openssh") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="tunnel-stress-") as tmp:
        for backend in backends:
            (Path(tmp) / backend).mkdir()
            print_report(asyncio.run(run_backend(args, backend, Path(tmp))))


if __name__ == "__main__":
    main()
