#!/usr/bin/env python3
"""Tunnel benchmark: our forwarder beside OpenSSH ``ssh -N -L`` against the same sshd.

One run, everything on loopback: a throwaway sshd (needs root, like the tests), an iperf3
server and an echo server as targets, then for each cipher (aes128-gcm@openssh.com,
chacha20-poly1305@openssh.com) and each forwarder in turn:

* bulk throughput with iperf3 through the mouth, both directions (client → target is
  "up", target → client is "down"), each forwarder running alone, in interleaved rounds;
  the rows with issue 18's targets (``tunnel``, ``tunnel+uvloop``) paired: a fresh
  ``ssh -L`` beside each, measured back to back direction by direction, each figure the
  median of the rounds' ratios (:func:`measure_bulk`, :func:`paired_medians`);
* round trip: 500 sequential connect, send a line, read it back, close; p50 and p99. All
  forwarders run at once and take turns in batches of 50, so the machine's other load
  (this is a shared VM) falls on each alike; repeated in as many rounds as the bulk
  figures, each figure the median of the rounds;
* CPU per GB and per connection, peak RSS of the forwarder's process tree (VmHWM).

Forwarders: ``openssh`` (ssh -N -L), ``tunnel`` (this package, asyncio and uvloop),
``tunnel-mux`` (this package with ``backend="openssh"``: our mouths hand each connection to
an ``ssh -M`` master over its mux socket; CPU and RSS are ours plus the master's) and
``asyncssh-plain`` (asyncssh's own ``forward_local_port``, the baseline the issue quotes).
Each runs as its own process. All loops are bounded in count and in time.

Usage: ``python bench/tunnel_bench.py [--seconds 2] [--rounds 5] [--round-trips 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
RT_BATCH = 50
"""Round trips per forwarder per turn; turns interleave the forwarders."""
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE.parent))
from tests.peers import descendants, free_port  # noqa: E402

from figures import Figure, emit  # noqa: E402


def wait_port(
    port: int,
    deadline_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Wait (bounded) until host:port accepts."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port} after {deadline_s} s")


def peak_rss_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of ``pid`` plus its descendants."""
    total = 0.0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by ``pid`` and its live descendants."""
    total = 0.0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# --- the forwarder processes (this script re-run with --serve) ---------------------------


async def serve(args: argparse.Namespace) -> None:
    """Run one forwarder until stdin closes; print READY once the mouths carry traffic."""
    sys.path.insert(0, str(SRC))
    import asyncssh

    from tunnel import Forward, Gateway, Tunnel, TunnelOptions

    forwards = []
    for spec in args.forward:
        mouth, target = spec.split(":")
        forwards.append(Forward("127.0.0.1", int(mouth), "127.0.0.1", int(target)))
    loop = asyncio.get_running_loop()
    closing = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: closing.done() or closing.set_result(None))
    # stop() sends SIGTERM: close the tunnel (and a tunnel-mux forwarder's ssh master and
    # its private directory) instead of dying on the spot.
    loop.add_signal_handler(signal.SIGTERM, lambda: closing.done() or closing.set_result(None))
    if args.serve == "tunnel":
        options = TunnelOptions(
            gateways=(Gateway.parse(args.gateway),),
            ssh_config=Path(args.ssh_config),
            known_hosts=Path(args.known_hosts),
            client_keys=(Path(args.key),),
            backend=args.backend,
        )
        async with Tunnel(options, forwards) as tunnel:
            if not await tunnel.wait_up(10):
                raise SystemExit("link did not come up")
            print("READY", flush=True)
            await closing
    else:
        late_writes = count_late_writes()
        gateway = Gateway.parse(args.gateway)
        async with asyncssh.connect(
            gateway.host,
            port=gateway.port or 22,
            username=gateway.user,
            config=[args.ssh_config],
            known_hosts=args.known_hosts,
            client_keys=[args.key],
        ) as conn:
            listeners = [
                await conn.forward_local_port(
                    "127.0.0.1", f.mouth_port, f.target_host, f.target_port
                )
                for f in forwards
            ]
            print("READY", flush=True)
            await closing
            for listener in listeners:
                listener.close()
        if late_writes:
            print(
                f"asyncssh-plain: {len(late_writes)} writes into a client socket already "
                "reset (asyncio's 'socket.send() raised exception.': asyncssh's own "
                "forwarder, forward.py, writes every packet of one SSH read to the client "
                "after iperf3 reset it)",
                file=sys.stderr,
            )


LATE_WRITE = "socket.send() raised exception."


def count_late_writes() -> list[logging.LogRecord]:
    """Keep asyncio's warning for a write into a transport already lost (the fifth and
    every later write after the loss, before its ``connection_lost`` runs) off stderr,
    and count it. Only asyncssh-plain (asyncssh's ``forward_local_port``, the baseline)
    does that: its forwarder writes each channel packet of one read of the SSH socket
    to the client's transport, and iperf3 resets its data connection at the end of a
    test while sshd still sends (traced with a stack at the warning: asyncssh/forward.py
    ``data_received`` → ``SSHForwarder.write``). The tunnel writes a flow's packets
    once per read and drops data for a client whose write failed."""
    seen: list[logging.LogRecord] = []

    def late(record: logging.LogRecord) -> bool:
        if record.msg == LATE_WRITE:
            seen.append(record)
            return False
        return True

    logging.getLogger("asyncio").addFilter(late)
    return seen


# --- the harness ---------------------------------------------------------------------


@dataclass
class Lab:
    root: Path
    sshd_port: int
    key: Path
    known_hosts: Path
    iperf_port: int
    echo_port: int
    sshd_host: str = "127.0.0.1"
    """The address sshd listens on (the growth bench gives it one of its own)."""

    def ssh_config(self, cipher: str) -> Path:
        path = self.root / f"ssh_config.{cipher.split('@', maxsplit=1)[0]}"
        path.write_text(f"Host *\n  Ciphers {cipher}\n  Compression no\n")
        return path


@contextlib.contextmanager
def lab(sshd_host: str = "127.0.0.1") -> Iterator[Lab]:
    """sshd (on ``sshd_host``), an iperf3 server and an echo server on loopback, torn
    down afterwards."""
    for tool in ("ssh", "ssh-keygen", "iperf3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshd")
    with tempfile.TemporaryDirectory(prefix="tunnel-bench-") as tmp:
        root = Path(tmp)
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)],
                check=True,
            )
        (root / "authorized_keys").write_text((root / "client.pub").read_text())
        port = free_port()
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress {sshd_host}\nHostKey {root / 'host'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\nPidFile none\n"
            f"Ciphers {','.join(CIPHERS)}\n"
        )
        kind, blob = (root / "host.pub").read_text().split()[:2]
        known_hosts = root / "known_hosts"
        known_hosts.write_text(f"[{sshd_host}]:{port} {kind} {blob}\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        iperf_port, echo_port = free_port(), free_port()
        procs = [
            subprocess.Popen(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(root / "sshd_config")],
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen([sys.executable, __file__, "--echo", str(echo_port)]),
        ]
        try:
            hosts = (sshd_host, "127.0.0.1", "127.0.0.1")
            for proc, wanted, host in zip(procs, (port, iperf_port, echo_port), hosts, strict=True):
                wait_port(wanted, 10, proc, host)
            yield Lab(root, port, root / "client", known_hosts, iperf_port, echo_port, sshd_host)
        finally:
            for proc in procs:
                stop(proc)


async def delay_relay(port: int, target_port: int, one_way_ms: float) -> None:
    """The emulated path (its own process): a TCP relay on 127.0.0.1:``port`` to
    ``target_port`` (the sshd) that holds every chunk ``one_way_ms`` before passing it on,
    each way, in order (one queue and one timer per direction). Both forwarders reach
    the sshd through it, so the path's round trip is twice ``one_way_ms`` for both."""
    loop = asyncio.get_running_loop()
    delay_s = one_way_ms / 1000

    class Direction(asyncio.Protocol):
        def __init__(self) -> None:
            self.peer: Direction | None = None
            self.transport: asyncio.Transport | None = None
            self.queue: list[tuple[float, bytes | None]] = []  # (due, chunk; None: EOF)
            self.timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.forward(data)

        def eof_received(self) -> bool:
            self.forward(None)
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            self.forward(None)

        def forward(self, chunk: bytes | None) -> None:
            """Queue ``chunk`` for the peer, due one delay from now."""
            if self.peer is not None:
                self.peer.later(chunk)

        def later(self, chunk: bytes | None) -> None:
            self.queue.append((loop.time() + delay_s, chunk))
            if self.timer is None:
                self.timer = loop.call_at(self.queue[0][0], self.release)

        def release(self) -> None:
            self.timer = None
            now = loop.time()
            while self.queue and self.queue[0][0] <= now:
                _, chunk = self.queue.pop(0)
                if self.transport is None or self.transport.is_closing():
                    continue
                try:
                    if chunk is None:
                        self.transport.write_eof()
                    else:
                        self.transport.write(chunk)
                except OSError:  # the far end already gone
                    self.transport.abort()
            if self.queue:
                self.timer = loop.call_at(self.queue[0][0], self.release)

    async def accepted(client: socket.socket) -> None:
        near = Direction()
        far = Direction()
        near.peer, far.peer = far, near
        try:
            await loop.create_connection(lambda: far, "127.0.0.1", target_port)
        except OSError:
            client.close()
            return
        await loop.connect_accepted_socket(lambda: near, client)

    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    tasks: set[asyncio.Task[None]] = set()
    while True:
        client, _ = await loop.sock_accept(listener)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = loop.create_task(accepted(client))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def echo_server(port: int) -> None:
    """Line echo target for the round-trip test (its own process)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def start_forwarder(
    kind: str, lab_: Lab, cipher: str, mouths: tuple[int, int]
) -> subprocess.Popen[bytes]:
    config = lab_.ssh_config(cipher)
    gateway = f"root@{lab_.sshd_host}:{lab_.sshd_port}"
    forwards = [f"{mouths[0]}:{lab_.iperf_port}", f"{mouths[1]}:{lab_.echo_port}"]
    if kind == "openssh":
        command = ["ssh", "-F", str(config), "-N", "-p", str(lab_.sshd_port), "-i", str(lab_.key)]
        command += ["-o", f"UserKnownHostsFile={lab_.known_hosts}", "-o", "BatchMode=yes"]
        command += ["-o", "ExitOnForwardFailure=yes", "-o", "IdentitiesOnly=yes"]
        for spec in forwards:
            mouth, target = spec.split(":")
            command += ["-L", f"127.0.0.1:{mouth}:127.0.0.1:{target}"]
        command.append(f"root@{lab_.sshd_host}")
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        wait_port(mouths[1], 10, proc)
        time.sleep(0.2)
        return proc
    serve_kind, _, loop = kind.partition("+")
    backend = "asyncssh"
    if serve_kind == "tunnel-mux":
        serve_kind, backend = "tunnel", "openssh"
    command = [sys.executable, __file__, "--serve", serve_kind, "--gateway", gateway]
    command += ["--backend", backend]
    command += ["--ssh-config", str(config), "--known-hosts", str(lab_.known_hosts)]
    command += ["--key", str(lab_.key)] + [arg for f in forwards for arg in ("--forward", f)]
    if loop:
        command += ["--loop", loop]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"READY":
        stop(proc)
        raise RuntimeError(f"{kind} did not come up")
    return proc


IPERF_TRIES = 3
"""iperf3's server takes one test at a time and may still be finishing the last one
("the server is busy"): a failed run is retried this often, after a short pause."""


def iperf(port: int, seconds: float, reverse: bool) -> tuple[float, float]:
    """(Gbit/s, bytes) received, from iperf3's JSON; NaN when every try failed."""
    command = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        command.append("-R")
    for attempt in range(IPERF_TRIES):
        if attempt:
            time.sleep(0.5)
        out = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=False)
        try:
            received = json.loads(out.stdout)["end"]["sum_received"]
            return float(received["bits_per_second"]) / 1e9, float(received["bytes"])
        except (ValueError, KeyError):
            continue
    return float("nan"), float("nan")


def round_trips(port: int, count: int, budget_s: float, gap_s: float = 0.0) -> list[float]:
    """Milliseconds per connect → send a line → read it back → close; ``gap_s``: a
    pause before each connect (not timed), for the last connection's end to settle."""
    times: list[float] = []
    deadline = time.monotonic() + budget_s
    line = b"LOOKUP blitzdns,NAME\r\n"
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        if gap_s:
            time.sleep(gap_s)
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(line)
            got = b""
            while not got.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("echo closed early")
                got += chunk
        times.append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure_bulk(
    kind: str, lab_: Lab, cipher: str, args: argparse.Namespace, lead: str | None = None
) -> dict[str, float]:
    """iperf3 both ways through one forwarder, running alone.

    ``lead`` not None (:data:`PAIRED`): a fresh ``ssh -L`` is started beside it and each
    direction is measured through both back to back: ``"ours"``: ours first up and last
    down, ``"peer"``: the other way round, ``"both"``: each direction twice through each,
    in both orders (ours, peer, peer, ours up; peer, ours, ours, peer down), each side's
    figure the mean of its two, for a last round of an odd count, so that over the rounds
    each side leads each direction equally often. Ours and the peer's transfers of a
    direction are adjacent, so what the rest of the machine does falls on both alike,
    where a round of every forwarder in turn put half a minute between them. The peer's
    figures come as ``up_peer``, ``down_peer``, ``cpu_per_gb_peer``."""
    sides = {"": kind} if lead is None else {"": kind, PEER: "openssh"}
    with contextlib.ExitStack() as started:
        ports, pids = {}, {}
        for side, who in sides.items():
            mouths = (free_port(), free_port())
            proc = start_forwarder(who, lab_, cipher, mouths)
            started.callback(stop, proc)
            round_trips(mouths[1], 20, 10)
            ports[side], pids[side] = mouths[0], proc.pid
        order = list(sides)[:: -1 if lead == "peer" else 1]
        if lead == "both":
            order += order[::-1]
        cpu, nbytes = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0.0)
        out: dict[str, float] = {}
        for way, reverse, turn in (("up", False, order), ("down", True, order[::-1])):
            speeds: dict[str, list[float]] = {side: [] for side in sides}
            for side in turn:
                before = cpu_seconds(pids[side])
                gbps, got = iperf(ports[side], args.seconds, reverse)
                cpu[side] += cpu_seconds(pids[side]) - before
                nbytes[side] += got
                speeds[side].append(gbps)
            for side in sides:
                out[way + side] = statistics.fmean(speeds[side])
        for side in sides:
            out["cpu_per_gb" + side] = cpu[side] / (nbytes[side] / 1e9)
        out["rss"] = peak_rss_mb(pids[""])
        return out


def paired_lead(paired: bool, number: int, rounds: int) -> str | None:
    """Who goes first up in round ``number`` of ``rounds`` (:func:`measure_bulk`'s
    ``lead``): alternating, the last round of an odd count both ways."""
    if not paired:
        return None
    if rounds % 2 and number == rounds - 1:
        return "both"
    return "peer" if number % 2 else "ours"


PEER = "_peer"
"""Suffix of a paired run's ``ssh -L`` figures (:func:`measure_bulk`)."""
PAIRED = ("tunnel",)
"""Forwarder families whose bulk rows carry issue 18's targets: measured paired with a
fresh ``ssh -L``, transfer by transfer (:func:`measure_bulk`), each row's figure the
round whose ratio is the median of the rounds' ratios (:func:`paired_medians`). Unpaired,
a full bench's rounds had put these rows' per-round ratios between 0.71 and 1.18."""


def measure_round_trips(
    kinds: list[str], lab_: Lab, cipher: str, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Round trips with every forwarder running at once, in interleaved batches of
    ``RT_BATCH``, the order rotating: whatever else the machine is doing at a given moment
    falls on all of them alike (an idle forwarder costs the others nothing)."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for kind in kinds:
            mouths = (free_port(), free_port())
            procs[kind] = (start_forwarder(kind, lab_, cipher, mouths), mouths[1])
            round_trips(mouths[1], 20, 10)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        cpu = dict.fromkeys(kinds, 0.0)
        batches = max(1, args.round_trips // RT_BATCH)
        gap_s = getattr(args, "rt_gap_s", 0.0)
        deadline = time.monotonic() + 120 + batches * RT_BATCH * len(kinds) * gap_s
        for batch in range(batches):
            shift = batch % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                proc, port = procs[kind]
                before = cpu_seconds(proc.pid)
                times[kind] += round_trips(port, RT_BATCH, deadline - time.monotonic(), gap_s)
                cpu[kind] += cpu_seconds(proc.pid) - before
        wanted = batches * RT_BATCH
        short = {kind: len(done) for kind, done in times.items() if len(done) < wanted}
        if short:
            raise RuntimeError(f"round trips ran out of time: {short} of {wanted} done")
        return {
            kind: {
                "p50": statistics.median(times[kind]),
                "p99": percentile(times[kind], 0.99),
                "cpu_per_conn_us": cpu[kind] / len(times[kind]) * 1e6,
                "rss": peak_rss_mb(procs[kind][0].pid),
            }
            for kind in kinds
        }
    finally:
        for proc, _ in procs.values():
            stop(proc)


@contextlib.contextmanager
def emulated_path(lab_: Lab, one_way_ms: float) -> Iterator[Lab]:
    """``lab_`` with its sshd reached through :func:`delay_relay` (a relay process in front
    of sshd, the same for every forwarder): a path of ``2 * one_way_ms`` round trip."""
    port = free_port()
    relay = subprocess.Popen(
        [sys.executable, __file__, "--relay", f"{port}:{lab_.sshd_port}:{one_way_ms:g}"]
    )
    try:
        wait_port(port, 10, relay)
        known = lab_.root / f"known_hosts.path{port}"
        line = lab_.known_hosts.read_text().strip()
        known.write_text(line + "\n" + line.replace(f"]:{lab_.sshd_port} ", f"]:{port} ") + "\n")
        yield dataclasses.replace(lab_, sshd_port=port, known_hosts=known)
    finally:
        stop(relay)


def measure_path(
    kinds: list[str], lab_: Lab, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Round trips through the emulated path (the first cipher only): connect, line, echo,
    close, each forwarder's channel open and data crossing the slow path alike.

    Each connect waits :data:`PATH_GAP_RTTS` path round trips after the last close (not
    timed): back to back, the last channel's EOF and the next CHANNEL_OPEN reach sshd
    within a fraction of a millisecond of each other, and whether the OPEN comes before
    sshd has answered that EOF decides whether sshd's Nagle (its socket has no
    TCP_NODELAY) holds its next small writes behind ACKs the relay's kernel delays until
    it has data to send: +1 path round trip on that connection's echo (~11 ms of 33). A
    forwarder a little slower to send the OPEN after the accept escaped more often: the
    asyncio tunnel's 25.0 ms vs ssh -L's 33.4 (0.75x) in the 3e03561 bench (packet
    captures, same-run figures: bench/notes/path.md)."""
    with emulated_path(lab_, args.path_ms / 2) as slow:
        path_args = argparse.Namespace(**vars(args))
        path_args.round_trips = args.path_round_trips
        path_args.rt_gap_s = PATH_GAP_RTTS * args.path_ms / 1000
        return measure_round_trips(kinds, slow, args.ciphers[0], path_args)


PATH_GAP_RTTS = 2
"""Path round trips between one round trip's close and the next connect: the last
channel's EOF, sshd's EOF and CLOSE, and the CLOSE back take one and a half."""


def round_trip_rounds(
    kinds: list[str], lab_: Lab, cipher: str, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """:func:`measure_round_trips` ``args.rounds`` times (the order rotating), each figure
    the median over the rounds. One set alone could be disturbed as a whole: in the
    8e279a8 bench the aes128-gcm set had every forwarder's p99 at 8-10 ms, which lifted
    ssh -L's p50 by half and ours by a tenth (a fixed delay weighs most on the fastest),
    so that cipher's ratios came out low; same-run A/B puts ssh -L's round trip equal for
    both ciphers."""
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for round_number in range(args.rounds):
        shift = round_number % len(kinds)
        for kind, figures in measure_round_trips(
            kinds[shift:] + kinds[:shift], lab_, cipher, args
        ).items():
            runs[kind].append(figures)
    return {kind: aggregate(runs[kind]) for kind in kinds}


def aggregate(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median of each figure over the rounds (peak RSS: the largest)."""
    merged = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    merged["rss"] = max(run["rss"] for run in runs)
    return merged


BULK = ("up", "down", "cpu_per_gb")
BETTER_HIGHER = ("up", "down")


def paired_medians(rounds: list[dict[str, float]], merged: dict[str, float]) -> None:
    """A paired forwarder's bulk figures (:data:`PAIRED`): for each, the round whose ratio
    to its own ``ssh -L``'s is the median of the rounds' ratios, that round's two figures
    put in ``merged`` (``key`` and ``key_peer``, so ours / peer is that median), and the
    lowest and highest ratio (``key_lo``, ``key_hi``). Of an even count, the middle that
    does not favour us (the lower for throughput, the higher for CPU), as the DNS miss row
    (bench/dns_bench.py ``median_pair``). A round whose iperf3 failed is left out."""
    for key in BULK:
        pairs = [(r[key] / r[key + PEER], r) for r in rounds if r[key + PEER]]
        pairs = sorted((p for p in pairs if not math.isnan(p[0])), key=lambda p: p[0])
        if not pairs:
            continue
        _, middle = pairs[(len(pairs) - (1 if key in BETTER_HIGHER else 0)) // 2]
        merged[key], merged[key + PEER] = middle[key], middle[key + PEER]
        merged[f"{key}_lo"], merged[f"{key}_hi"] = pairs[0][0], pairs[-1][0]
        merged[f"{key}_rounds"] = len(pairs)


def print_pairs(kind: str, rounds: list[dict[str, float]]) -> None:
    """Each round of a paired forwarder: ours against its ``ssh -L``, both ways."""
    print(f"{kind}, paired with ssh -L (Gbit/s, ratio):")
    for number, r in enumerate(rounds):
        print(
            f"  round {number}: "
            + "  ".join(
                f"{way} {r[way]:.2f} vs {r[way + PEER]:.2f}"
                f" ({r[way] / max(r[way + PEER], 1e-9):.2f}x)"
                for way in ("up", "down")
            )
        )


def spread_of_ratios(
    runs: dict[str, list[dict[str, float]]], merged: dict[str, dict[str, float]]
) -> None:
    """Each unpaired forwarder's bulk figures over ``ssh -L``'s of the same round, lowest
    and highest (``<key>_lo``, ``<key>_hi`` in ``merged``): how far one round strays from
    the median. Throughput on this 2-core machine moves ±20 % from round to round (four
    busy processes: iperf3 at both ends, sshd, the forwarder), CPU per GB about ±8 %.
    (Paired forwarders have theirs from :func:`paired_medians`.)"""
    base = runs.get("openssh")
    if not base:
        return
    for kind, rounds in runs.items():
        for key in BULK:
            if f"{key}_lo" in merged[kind]:
                continue
            ratios = [r[key] / b[key] for r, b in zip(rounds, base, strict=True) if b[key]]
            ratios = [ratio for ratio in ratios if not math.isnan(ratio)]  # iperf3 failed
            if ratios and kind != "openssh":
                merged[kind][f"{key}_lo"], merged[kind][f"{key}_hi"] = min(ratios), max(ratios)


def report(cipher: str, results: dict[str, dict[str, float]]) -> None:
    print(f"\n{cipher}")
    columns = [  # (key, heading, format)
        ("up", "up Gb/s", "{:.2f}"),
        ("down", "down Gb/s", "{:.2f}"),
        ("cpu_per_gb", "CPU s/GB", "{:.2f}"),
        ("p50", "rt p50 ms", "{:.3f}"),
        ("p99", "rt p99 ms", "{:.3f}"),
        ("cpu_per_conn_us", "CPU us/conn", "{:.0f}"),
        ("rss", "peak RSS MB", "{:.1f}"),
    ]
    print("  " + f"{'forwarder':<18}" + "".join(f"{head:>13}" for _, head, _ in columns))
    base = results.get("openssh")
    for kind, r in results.items():
        print("  " + f"{kind:<18}" + "".join(f"{fmt.format(r[k]):>13}" for k, _, fmt in columns))
        if base and kind != "openssh":
            peers = [r.get(k + PEER, base[k]) for k, _, _ in columns]
            ratios = "".join(
                f"{r[k] / peer:>12.2f}x" if peer else f"{'n/a':>13}"
                for (k, _, _), peer in zip(columns, peers, strict=True)
            )
            print("  " + f"{'  ÷ openssh':<18}" + ratios)
            if any(k + PEER in r for k in BULK):  # paired: ssh -L's own figures beside ours
                print(
                    "  "
                    + f"{'  paired ssh -L':<18}"
                    + "".join(
                        f"{fmt.format(r.get(k + PEER, math.nan)):>13}" for k, _, fmt in columns
                    )
                )


FIGURES = (  # (key, case, unit, better)
    ("up", "bulk up", "Gbit/s", "higher"),
    ("down", "bulk down", "Gbit/s", "higher"),
    ("cpu_per_gb", "CPU per GB", "s/GB", "lower"),
    ("p50", "round trip p50", "ms", "lower"),
    ("p99", "round trip p99", "ms", "lower"),
    ("rss", "peak RSS", "MB", "lower"),
)
TARGETS = {  # issue 18: (forwarder family, figure) -> bound on ours / ssh -L
    ("tunnel", "up"): 0.9,
    ("tunnel", "down"): 0.9,
    ("tunnel", "cpu_per_gb"): 1.3,
    ("tunnel", "p50"): 1.3,
    ("tunnel-mux", "p50"): 1.2,
}


def figures_of(cipher: str, results: dict[str, dict[str, float]]) -> list[Figure]:
    """Each forwarder's figures beside ``ssh -L``'s from the same run, for the report."""
    base = results.get("openssh")
    if base is None:
        return []
    name = cipher.split("@", maxsplit=1)[0]
    return [
        Figure(
            f"tunnel {kind} {name} {case}",
            r[key],
            r.get(key + PEER, base[key]),
            unit,
            better=better,
            target=TARGETS.get((kind.partition("+")[0], key)),
            peer_name="ssh -L",
            note=spread_note(r, key) + note_of(kind.partition("+")[0], key, name),
        )
        for kind, r in results.items()
        if kind != "openssh"
        for key, case, unit, better in FIGURES
    ]


def note_of(family: str, key: str, cipher: str) -> str:
    """Where the time goes for one row: the cipher's own note, else the forwarder's."""
    return NOTES.get((family, key, cipher)) or NOTES.get((family, key), "")


def spread_note(figures: dict[str, float], key: str) -> str:
    """A bulk figure's per-round ratios (:func:`spread_of_ratios`), for its note."""
    if f"{key}_lo" not in figures:
        return ""
    spread = f"per-round ratios {figures[f'{key}_lo']:.2f}-{figures[f'{key}_hi']:.2f}; "
    if f"{key}_rounds" in figures:  # paired_medians
        return (
            f"median of {figures[f'{key}_rounds']:.0f} rounds' ratios, each to a fresh ssh -L "
            f"measured back to back; {spread}"
        )
    return spread


PATH_TARGETS = {"tunnel": 1.02}
"""Issue 18: the round trip through the emulated path, ours / ssh -L's."""
NOTES = {  # where the time goes: bench/notes/aesbulk.md, bench/notes/roundtrip.md
    ("tunnel", "up", "aes128-gcm"): "perf (uvloop): kernel (loopback TCP) ~50 %, Python ~23 %, "
    "AES-GCM ~11 %, memmove ~8.5 % (each 32 KiB packet joined: one copy of the data; a "
    "second for data that waits in asyncssh's buffer for sshd's window); padding cut from "
    "one os.urandom draw per 4 KiB, sealed into a reused buffer (no zero-filled output), "
    "one run per client read (up to 1 MiB) written with one writev on both loops; "
    "bench/results/profiles/tunnel-bulk-up-aes128gcm-*.svg, bench/notes/aesbulk.md",
    ("tunnel", "down", "aes128-gcm"): "per 32 KiB packet (perf, aes128-gcm, uvloop): kernel "
    "(loopback TCP) ~48 %, Python ~31 % (opened in place, the channel's window count, one "
    "client write per read of the SSH socket), AES-GCM ~9 % (4 us), the zero-filled "
    "plaintext's allocation ~3 % (opening into a reused buffer cost more than it saved: a "
    "full client socket keeps its views); behind us sshd is woken out and preempted at "
    "each ~64 KB segment (the loop thread in SCHED_BATCH during downloads halved our "
    "switches and CPU per GB on the loopback bench but was not landed: it would delay "
    "DNS and other connections on the same thread, and a remote gateway's wake-ups do "
    "not come from sshd on our machine); "
    "bench/results/profiles/tunnel-bulk-down-aes128gcm-*.svg, bench/notes/aesbulk.md",
    ("tunnel", "up", "chacha20-poly1305"): "same path as aes128-gcm's (one join per packet, "
    "one writev per client read); ChaCha20 and Poly1305 from cryptography (libsodium's tags "
    "up to 4 KiB); ssh -L pays more per byte for this cipher than for AES-GCM",
    ("tunnel", "down", "chacha20-poly1305"): "same path as aes128-gcm's (opened in place, one "
    "client write per read of the SSH socket), into new bytes per packet; ChaCha20 and "
    "Poly1305 from cryptography",
    ("tunnel", "cpu_per_gb"): "kernel (loopback TCP in read/write) about half, the rest "
    "asyncssh's per-packet Python and copies; bench/results/profiles/",
    ("tunnel", "p50"): "about 380-440 us of CPU per connection against ssh -L's 180-200 "
    "(loaded machine); callgrind 445k instructions per connection (uvloop, aes; 551k on "
    "asyncio, 539k / 656k chacha), a third of it CPython's eval loop: ~980 Python lines "
    "spread over the in-place packet path (4 packets each way), the client side and flow; "
    "the channel's end now in fewer calls and asyncio's reader registration without its "
    "transport check (-3.5 % uvloop, -5 to -10 % asyncio instructions this session); four "
    "SSH writes per connection, each answering a different event (nothing to coalesce); "
    "bench/notes/roundtrip.md",
    ("tunnel-mux", "p50"): "the hand-off to the ssh -M master alone costs ~95-145 us of "
    "round trip: a front in C (bench/mux_floor.py floor-c: accept, one sendmmsg, close) "
    "gives 1.15-1.22x, about the whole 1.2x budget; ours adds ~90-200 us above it (a "
    "minimal Python loop 65-110 of them; our process 144-178 us CPU per connection, half "
    "kernel: the client socket's last close, the wake-ups), the master costs about what "
    "ssh -L does; the hop is ~140-200 us whatever the cipher, the ratio moving with ssh "
    "-L's own p50 (0.41-0.85 ms over the stored runs); bench/notes/mux.md",
}


def path_figures(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> list[Figure]:
    """The emulated path's round trips beside ``ssh -L``'s through the same relay."""
    base = results.get("openssh")
    if base is None:
        return []
    return [
        Figure(
            f"tunnel {kind} {args.path_ms:g} ms path round trip {key}",
            r[key],
            base[key],
            "ms",
            better="lower",
            target=PATH_TARGETS.get(kind.partition("+")[0]) if key == "p50" else None,
            peer_name="ssh -L",
            note=PATH_NOTES.get(kind.partition("+")[0], PATH_NOTE) if key == "p50" else "",
        )
        for kind, r in results.items()
        if kind != "openssh"
        for key in ("p50", "p99")
    ]


PATH_NOTE = (
    "each connect 2 path round trips after the last close: back to back, sshd's Nagle held "
    "its answers behind ACKs the relay delays, one path round trip more on some connections, "
    "at random per forwarder (the asyncio tunnel's 0.75x in 3e03561); bench/notes/path.md"
)
PATH_NOTES = {
    "tunnel": "ours +0.3-0.45 ms over our three steps (accept -> CHANNEL_OPEN, confirmation "
    "-> data, echo -> client; every other hop equal to ssh -L's: nothing waits at the TCP "
    "level; bench/path_steps.py): Python run between the wake-up and the step's write, "
    "which already comes first in each step, ~2x as long as on loopback because each step "
    "runs after 10 ms asleep (ftrace: 160-220 us after the poll vs ssh -L's 45-75); "
    "the per-connection CPU of the loopback rows (bench/notes/roundtrip.md); " + PATH_NOTE,
}


def report_path(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    print(
        f"\nemulated path: {args.path_ms:g} ms round trip (a delay relay in front of sshd, "
        f"{args.path_ms / 2:g} ms each way), {args.ciphers[0]}, "
        f"{args.path_round_trips} round trips, load average {os.getloadavg()[0]:.2f}"
    )
    base = results.get("openssh")
    print("  " + f"{'forwarder':<18}" + "".join(f"{h:>13}" for h in ("rt p50 ms", "rt p99 ms")))
    for kind, r in results.items():
        print("  " + f"{kind:<18}" + "".join(f"{r[k]:>13.3f}" for k in ("p50", "p99")))
        if base and kind != "openssh":
            ratios = "".join(f"{r[k] / base[k]:>12.3f}x" for k in ("p50", "p99"))
            print("  " + f"{'  ÷ openssh':<18}" + ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2, help="iperf3 per direction")
    parser.add_argument("--round-trips", type=int, default=500)
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved repetitions of the bulk runs"
    )
    parser.add_argument("--only", nargs="*", help="forwarders to run (default: all)")
    parser.add_argument("--ciphers", nargs="*", choices=CIPHERS, default=list(CIPHERS))
    parser.add_argument(
        "--path-ms",
        type=float,
        default=10,
        help="round trip of the emulated path (a delay relay in front of sshd); 0: skip it",
    )
    parser.add_argument("--path-round-trips", type=int, help="default: --round-trips, at most 200")
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--echo", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--ssh-config", help=argparse.SUPPRESS)
    parser.add_argument("--known-hosts", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--forward", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="asyncssh", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    if args.echo:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(echo_server(args.echo))
        return
    if args.relay:
        port, target, one_way_ms = args.relay.split(":")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(delay_relay(int(port), int(target), float(one_way_ms)))
        return
    if args.serve:
        asyncio.run(serve(args))
        return
    args.seconds = min(max(args.seconds, 1), 30)
    args.round_trips = min(max(args.round_trips, 10), 5000)
    if args.path_round_trips is None:
        args.path_round_trips = min(args.round_trips, 200)
    args.path_round_trips = min(max(args.path_round_trips, 10), 2000)
    args.path_ms = min(max(args.path_ms, 0), 200)
    args.rounds = min(max(args.rounds, 1), 10)
    kinds = args.only or [
        "openssh",
        "tunnel",
        "tunnel+uvloop",
        "tunnel-mux",
        "tunnel-mux+uvloop",
        "asyncssh-plain",
    ]
    run(args, kinds)


def run(args: argparse.Namespace, kinds: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """The whole benchmark; prints the tables and returns the figures: for each cipher
    (and ``"path"``, the emulated path's round trips) each forwarder's medians."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    with lab() as lab_:
        print(
            f"tunnel benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
            f"{args.seconds:g} s iperf3 per direction, {args.round_trips} round trips, "
            f"median of {args.rounds} interleaved rounds; Gbit/s, ms, MB; ratio = x / openssh"
        )
        emitted: list[Figure] = []
        for cipher in args.ciphers:
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
            for round_number in range(args.rounds):
                shift = round_number % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    paired = "openssh" in kinds and kind.partition("+")[0] in PAIRED
                    runs[kind].append(
                        measure_bulk(
                            kind, lab_, cipher, args, paired_lead(paired, round_number, args.rounds)
                        )
                    )
            merged = {kind: aggregate(runs[kind]) for kind in kinds}
            for kind in kinds:
                if kind.partition("+")[0] in PAIRED and "openssh" in kinds:
                    paired_medians(runs[kind], merged[kind])
                    print_pairs(kind, runs[kind])
            for kind, figures in round_trip_rounds(kinds, lab_, cipher, args).items():
                figures["rss"] = max(figures["rss"], merged[kind]["rss"])
                merged[kind].update(figures)
            report(cipher, merged)
            spread_of_ratios(runs, merged)
            emitted += figures_of(cipher, merged)
            results[cipher] = merged
        if args.path_ms:
            results["path"] = measure_path(kinds, lab_, args)
            report_path(args, results["path"])
            emitted += path_figures(args, results["path"])
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    emit("tunnel", emitted)
    return results


if __name__ == "__main__":
    main()
