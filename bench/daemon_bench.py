#!/usr/bin/env python3
"""Daemon benchmark: ``blitzdns run`` beside OpenSSH ``ssh -N -L`` + dnsmasq, in one run.

    .venv/bin/python bench/daemon_bench.py [--rounds 5] [--connections 1000]

Both sides do the same job against one throwaway OpenSSH sshd on 127.0.0.1: the preset's
shape (10 hosts, 22 names, 11 TCP forwards) with unprivileged ports, every mouth on its own
127.x.y.z address, every target an echo server behind sshd. The peer is ``ssh -N -L`` with
one ``-L mouth:port:127.0.0.1:echo`` per forward plus dnsmasq answering every protected
name from an ``address=`` line.

Measured per round, for each side (the order alternates between rounds; medians printed):

* **exec → ready**: from just before ``Popen`` until every protected name answers with its
  mouth *and* a line sent through every mouth comes back from the echo target ("carrying").
  "Listening" (every mouth accepts a TCP connection) is printed too: blitzdns binds its
  mouths before the link is up and holds connections, ``ssh -L`` listens only after auth.
  The probe sends a DNS query for one name every 5 ms until the server answers, then
  for each unanswered name every 5 ms (the rest at once at that first answer) and, per
  mouth, retries a refused connect (or a connection reset before its echo: blitzdns
  closes one that comes between binding its mouths and starting its tunnel) every 5 ms,
  then sends one line and waits for its echo.
* **link → ready**: from the client's own "link up" notice (blitzdns's ``link up via``
  log line; ssh's ``Authenticated to`` at LogLevel VERBOSE) and from sshd's ``Accepted
  publickey`` and ``Connection from`` log lines until ready. Log lines are time-stamped
  on arrival through a pipe (a reader thread; a few ms of jitter).
* A warm-up round (not counted) first fills the page cache and the daemon's bytecode cache
  (``--bytecode cached``, the default: ``PYTHONPYCACHEPREFIX=/tmp/daemon-bench-pycache``,
  as an installed package has its ``.pyc`` files; without it a shell with
  ``PYTHONDONTWRITEBYTECODE=1`` makes the daemon compile its own sources at every start).
  The table of the code dataclasses generates (``blitzdns/classcode.py``) is kept there too.
* **CPU exec→ready**: the time the side's processes ran on a CPU until ready (each
  process's CPU clock, ns, read first thing at ready; with the children they waited for):
  less moved by the machine's load than the wall time (blitzdns: the interpreter, its
  imports, the SSH handshake). /proc/<pid>/stat's 10 ms ticks were too coarse for it.
* **More starts**: after the full rounds, ``--start-rounds`` (10) rounds that measure the
  start alone (each side in turn, the order alternating), so the start's medians are over
  15 starts a side rather than 5: one slow start under a passing load moved a median of
  five by ~30 % between two runs (session 9). The report's note gives each side's middle
  half.
* **RSS idle**: VmRSS of the process tree 1 s after ready (and Pss, which splits shared
  library pages between the processes that map them); and **with N connections**:
  N client connections spread over the mouths, each sends a line and gets its echo, all
  held open, then VmRSS and VmHWM (summed over the side's processes; for the peer ssh +
  dnsmasq, dnsmasq also shown alone), and the growth per held connection.

sshd runs with its default ``MaxSessions 10`` (``--max-sessions``): it counts session
channels only, and the N ``direct-tcpip`` channels on one connection pass it (each run
proves so by getting N echoes). RLIMIT_NOFILE is raised before sshd, ssh and the echo
server start, so they inherit room for N sockets.

The whole measurement holds ``flock /tmp/blitzdns-bench.lock`` (shared with other
benchmarks on this machine) and prints /proc/loadavg when it starts and ends. Every loop is
bounded in count and time; everything listens on 127.0.0.0/8. Needs root (it starts sshd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from tests.peers import SSHD, Sshd, descendants, keygen  # noqa: E402

from benchlock import bench_lock  # noqa: E402
from dns_bench import dnsmasq_command, free_port  # noqa: E402
from figures import Figure, emit  # noqa: E402
from tunnel_bench import stop  # noqa: E402

BLITZDNS = next(
    (
        str(p)
        for p in (Path(sys.executable).with_name("blitzdns"), ROOT / ".venv" / "bin" / "blitzdns")
        if p.exists()
    ),
    "blitzdns",
)
SSH = shutil.which("ssh") or "/usr/bin/ssh"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
NOFILE = 16384
#: Where the daemon's bytecode is cached (as an installed package has it).
BYTECODE_CACHE = Path("/tmp/daemon-bench-pycache")
POLL_S = 0.005
PROBE_LINE = b"ready?\n"
READY_KEY = "exec→ready (DNS + all mouths carrying)"

#: The preset's shape (src/blitzdns/blitzmail/preset.py) with bench names and no UDP service.
REINDEER = ("dasher", "dancer", "prancer", "vixen", "comet", "cupid", "donner", "blitzen")


# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class HostSpec:
    key: str
    names: tuple[str, ...]
    services: tuple[str, ...]
    mouth: str


@dataclass(frozen=True)
class Job:
    """What both sides must serve: names → mouths, and (mouth, port) → echo target."""

    hosts: tuple[HostSpec, ...]
    service_ports: dict[str, int]
    mouth_block: str
    echo_port: int

    @property
    def forwards(self) -> list[tuple[str, int]]:
        return [(h.mouth, self.service_ports[s]) for h in self.hosts for s in h.services]

    @property
    def names(self) -> dict[str, str]:
        return {name: h.mouth for h in self.hosts for name in h.names}


def make_job(echo_port: int) -> Job:
    """The preset's table on a random 127.x.y.0/24 block (so concurrent runs rarely meet)."""
    second, third = random.randint(100, 199), random.randint(1, 254)
    block = f"127.{second}.{third}"
    domain = "bench.test"

    def host(
        short: str, services: tuple[str, ...], offset: int, aliases: Sequence[str] = ()
    ) -> HostSpec:
        names = (f"{short}.{domain}", *(f"{a}.{domain}" for a in aliases), short, *aliases)
        return HostSpec(short, names, services, f"{block}.{offset}")

    hosts = [host("dnd", ("dnd",), 1, ("kringle",))]
    hosts += [host(name, ("mail",), i) for i, name in enumerate(REINDEER, start=2)]
    hosts.append(host("newshost", ("bulletins", "posting"), len(REINDEER) + 2))
    ports = {s: free_port() for s in ("dnd", "mail", "bulletins", "posting")}
    return Job(tuple(hosts), ports, f"{block}.0/24", echo_port)


# --------------------------------------------------------------------------- processes


class LineClock:
    """Reads a process's output line by line in a thread, stamping each with monotonic time."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):
            with self.lock:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def mark(self) -> int:
        with self.lock:
            return len(self.lines)

    def first(self, needle: str, since: int = 0) -> float | None:
        with self.lock:
            return next((t for t, line in self.lines[since:] if needle in line), None)

    def text(self, since: int = 0) -> str:
        with self.lock:
            return "\n".join(line for _, line in self.lines[since:])


def memory_kb(pids: Sequence[int]) -> tuple[int, int]:
    """Summed VmRSS and VmHWM (kB) of ``pids`` (gone processes count 0)."""
    rss = hwm = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return rss, hwm


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of ``pids``: each process's CPU clock (``clock_gettime`` of its
    process-wide clock, ``CPUCLOCK_SCHED``: ns, every thread, gone ones too), plus the
    children each waited for (``cutime`` + ``cstime``, in ticks). ``/proc/<pid>/stat``'s own
    ``utime`` + ``stime`` count in 10 ms ticks, too coarse for a start of ~0.1 s (the
    fallback where the clock cannot be read)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            try:
                own = time.clock_gettime(((~pid) << 3) | 2)  # the kernel's CPUCLOCK_SCHED
            except OSError:
                own = sum(int(f) for f in fields[11:13]) / tick  # utime stime
            total += own + sum(int(f) for f in fields[13:15]) / tick
    return total


def pss_kb(pids: Sequence[int]) -> int:
    """Summed proportional set size (kB): shared library pages split between their users."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


def raise_nofile() -> None:
    """Room for N client sockets here, and (inherited) in sshd, ssh and the echo server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


# --------------------------------------------------------------------------- echo target


async def echo_main() -> None:
    """An echo server on 127.0.0.1:0 (port printed); runs until stdin closes."""
    raise_nofile()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    closing = loop.create_future()
    loop.add_reader(
        sys.stdin.fileno(), lambda: None if closing.done() else closing.set_result(None)
    )
    await closing
    server.close()


# --------------------------------------------------------------------------- lab


@dataclass
class Lab:
    root: Path
    sshd: Any
    sshd_log: LineClock
    echo: subprocess.Popen[bytes]
    echo_port: int
    known_hosts: Path
    ssh_config: Path


@contextlib.contextmanager
def lab(max_sessions: int) -> Iterator[Lab]:
    """sshd (stderr piped and time-stamped) and an echo server, on loopback."""
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark starts its own sshd")
    for tool in (SSHD, SSH, DNSMASQ, BLITZDNS):
        if shutil.which(tool) is None and not Path(tool).exists():
            raise SystemExit(f"{tool} is not installed")
    with tempfile.TemporaryDirectory(prefix="daemon-bench-") as tmp:
        root = Path(tmp)
        server = Sshd(
            root=root,
            port=free_port(),
            user="root",
            host_key=keygen(root / "host_ed25519"),
            client_key=keygen(root / "client_ed25519"),
            log=root / "sshd.log",
            extra_config=f"MaxSessions {max_sessions}\n",
        )
        server.authorize(server.client_key.with_suffix(".pub"))
        server.write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        server.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(server.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        sshd_log = LineClock(server.process.stderr)
        echo = subprocess.Popen(
            [sys.executable, __file__, "--echo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert echo.stdout is not None
            echo_port = int(echo.stdout.readline())
            wait_accepting("127.0.0.1", server.port, 10, server.process)
            known_hosts = root / "known_hosts"
            known_hosts.write_text(server.known_hosts_line())
            ssh_config = root / "ssh_config"
            ssh_config.write_text("")
            yield Lab(root, server, sshd_log, echo, echo_port, known_hosts, ssh_config)
        finally:
            server.kill()
            if echo.stdin is not None:
                echo.stdin.close()
            stop(echo)


def wait_accepting(host: str, port: int, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1) as probe:
            if probe.recv(64).startswith(b"SSH-"):
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing accepting on {host}:{port} after {seconds} s")


# --------------------------------------------------------------------------- the two sides


@dataclass
class Side:
    """One running contender: its processes, its output clock and its "link up" marker."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    log: LineClock
    link_needle: str
    #: Processes whose memory is shown alone as well (dnsmasq for the peer).
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return [pid for proc in self.procs for pid in descendants(proc.pid)]

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: {proc.args!r} exited with {proc.returncode}:\n"
                    f"{self.log.text()[-3000:]}"
                )

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


def blitzdns_config(lab: Lab, job: Job, dns_port: int) -> str:
    sshd = lab.sshd
    services = "\n".join(
        f"{s} = {{ port = {p}, remote_port = {job.echo_port} }}"
        for s, p in job.service_ports.items()
    )
    hosts = "\n".join(
        f"[hosts.{h.key}]\nnames = {list(h.names)!r}\nservices = {list(h.services)!r}\n"
        f'mouth = "{h.mouth}"\nremote = "127.0.0.1"\n'
        for h in job.hosts
    ).replace("'", '"')
    return f"""
preset = "none"
[dns]
listen = ["127.0.0.1:{dns_port}"]
upstreams = ["127.0.0.1:{free_port()}"]
timeout_s = 0.5
[tunnel]
gateways = ["{sshd.user}@127.0.0.1:{sshd.port}"]
mouths = "{job.mouth_block}"
known_hosts = "{lab.known_hosts}"
identity_files = ["{sshd.client_key}"]
ssh_config = "{lab.ssh_config}"
[services]
{services}
{hosts}
"""


def start_blitzdns(
    lab: Lab, job: Job, dns_port: int, round_dir: Path, bytecode_cache: Path | None
) -> Side:
    config = round_dir / "config.toml"
    config.write_text(blitzdns_config(lab, job, dns_port))
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["PYTHONUNBUFFERED"] = "1"
    if bytecode_cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    proc = subprocess.Popen(
        [BLITZDNS, "run", "--config", str(config), "--control-socket", str(round_dir / "ctl")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    return Side("blitzdns", [proc], LineClock(proc.stderr), "link up via")


def start_peer(lab: Lab, job: Job, dns_port: int, ssh_options: Sequence[str] = ()) -> Side:
    sshd = lab.sshd
    addresses = [f"--address=/{name}/{mouth}" for name, mouth in job.names.items()]
    dnsmasq = subprocess.Popen(
        dnsmasq_command(dns_port, "--local-ttl=5", *addresses),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    forwards = [
        arg
        for mouth, port in job.forwards
        for arg in ("-L", f"{mouth}:{port}:127.0.0.1:{job.echo_port}")
    ]
    ssh = subprocess.Popen(
        [
            SSH,
            "-N",
            "-F",
            str(lab.ssh_config),
            "-i",
            str(sshd.client_key),
            "-p",
            str(sshd.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={lab.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "LogLevel=VERBOSE",
            *ssh_options,
            *forwards,
            f"{sshd.user}@127.0.0.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return Side(
        "openssh+dnsmasq", [ssh, dnsmasq], LineClock(ssh.stderr), "Authenticated to", [dnsmasq]
    )


# --------------------------------------------------------------------------- probes


def dns_query(qid: int, name: str) -> bytes:
    """A minimal RFC 1035 §4.1 query: header with RD, one question for ``name`` A IN."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!2H", 1, 1)


def dns_first_a(reply: bytes) -> tuple[int, str | None]:
    """(ID, first A record's address) of a reply; None when it has no A answer."""
    import dns.message
    import dns.rdatatype

    message = dns.message.from_wire(reply)
    for rrset in message.answer:
        if rrset.rdtype == dns.rdatatype.A:
            return message.id, str(next(iter(rrset)))
    return message.id, None


class DnsProbe(asyncio.DatagramProtocol):
    """Asks one name (the first) every ``POLL_S`` until the server answers, then every
    name every ``POLL_S`` until each is answered with its mouth (the others at once when
    the first answer comes).

    Asking all 22 names every 5 ms from the start queued ~300 queries at a server that was
    not serving yet (the socket bound, the resolver still loading: blitzdns's link-first
    start), which it then had to answer before ready, while the peer's dnsmasq answered
    each name once: ~300 vs ~25 answers before ready (bench/notes/startup.md, session 10).
    A client retries after seconds, not every 5 ms.
    """

    def __init__(self, names: dict[str, str]) -> None:
        self.pending = {i: (name, mouth) for i, (name, mouth) in enumerate(names.items(), 1)}
        self.done = asyncio.get_running_loop().create_future()
        self.last_answer = 0.0
        self.serving = False
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (a datagram endpoint's)

    def ask(self) -> None:
        """The queries of this turn: the first pending name until the server serves, then
        every pending name."""
        assert self.transport is not None
        asked = list(self.pending.items())
        for qid, (name, _) in asked if self.serving else asked[:1]:
            self.transport.sendto(dns_query(qid, name))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(Exception):
            qid, address = dns_first_a(data)
            wanted = self.pending.get(qid)
            if wanted is not None and address == wanted[1]:
                del self.pending[qid]
                self.last_answer = time.monotonic()
                if not self.pending and not self.done.done():
                    self.done.set_result(self.last_answer)
                elif not self.serving:
                    self.serving = True
                    self.ask()

    def error_received(self, exc: Exception) -> None:
        """ICMP port unreachable before the server binds: ignore, the next round retries."""


async def probe_dns(port: int, names: dict[str, str], deadline: float) -> float:
    loop = asyncio.get_running_loop()
    transport, probe = await loop.create_datagram_endpoint(
        lambda: DnsProbe(names), remote_addr=("127.0.0.1", port)
    )
    try:
        while not probe.done.done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"DNS: {len(probe.pending)} names never answered")
            probe.ask()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(probe.done), POLL_S)
        answered: float = probe.done.result()
        return answered
    finally:
        transport.close()


async def probe_mouth(address: str, port: int, deadline: float) -> tuple[float, float]:
    """(time the mouth first accepted, time a line came back through it).

    A refused connect is retried, and so is a connection reset before its echo: blitzdns
    binds its mouths before its tunnel starts and closes a connection that arrives in
    between at once (tunnel.Tunnel.wait_link; tests/tunnel/test_tunnel_lifecycle.py::
    test_bind_first_then_start), which a client sees as a reset and retries.
    """
    accepted: float | None = None
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"mouth {address}:{port} never carried a line")
        try:
            reader, writer = await asyncio.open_connection(address, port)
        except OSError:
            await asyncio.sleep(POLL_S)
            continue
        if accepted is None:
            accepted = time.monotonic()
        try:
            writer.write(PROBE_LINE)
            left = max(0.1, deadline - time.monotonic())
            echoed = await asyncio.wait_for(reader.readexactly(len(PROBE_LINE)), left)
        except (ConnectionError, asyncio.IncompleteReadError):
            await asyncio.sleep(POLL_S)
            continue
        finally:
            writer.close()
        if echoed != PROBE_LINE:
            raise RuntimeError(f"mouth {address}:{port} echoed {echoed!r}")
        return accepted, time.monotonic()


@dataclass
class Startup:
    dns: float
    listening: float
    carrying: float

    @property
    def ready(self) -> float:
        return max(self.dns, self.carrying)

    @property
    def listening_ready(self) -> float:
        return max(self.dns, self.listening)


async def probe_startup(job: Job, dns_port: int, deadline: float) -> Startup:
    async with asyncio.TaskGroup() as group:
        dns_done = group.create_task(probe_dns(dns_port, job.names, deadline))
        mouths = [group.create_task(probe_mouth(a, p, deadline)) for a, p in job.forwards]
    mouth_times = [task.result() for task in mouths]
    return Startup(
        dns_done.result(), max(t[0] for t in mouth_times), max(t[1] for t in mouth_times)
    )


async def hold_connections(
    job: Job, count: int, deadline: float
) -> tuple[list[asyncio.StreamWriter], float]:
    """Open ``count`` connections round-robin over the mouths, each echoing one line; keep
    them open. Returns the writers and the seconds it took."""
    forwards = job.forwards
    limit = asyncio.Semaphore(100)
    held: list[asyncio.StreamWriter] = []
    started = time.monotonic()

    async def one(index: int) -> None:
        address, port = forwards[index % len(forwards)]
        line = f"conn {index}\n".encode()
        async with limit:
            reader, writer = await asyncio.open_connection(address, port)
            held.append(writer)
            writer.write(line)
            left = max(0.1, deadline - time.monotonic())
            if await asyncio.wait_for(reader.readexactly(len(line)), left) != line:
                raise RuntimeError(f"connection {index}: wrong echo")

    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for writer in held:
            writer.close()
        raise RuntimeError(f"{len(failures)} of {count} connections failed: {failures[0]!r}")
    return held, time.monotonic() - started


# --------------------------------------------------------------------------- one round


def measure(
    side_name: str,
    lab: Lab,
    job: Job,
    connections: int,
    timeout_s: float,
    round_dir: Path,
    bytecode_cache: Path | None,
    peer_options: Sequence[str] = (),
    start_only: bool = False,
) -> dict[str, float]:
    """One side's start (and, unless ``start_only``, its idle and loaded memory)."""
    dns_port = free_port()
    sshd_mark = lab.sshd_log.mark()
    exec_at = time.monotonic()
    side = (
        start_blitzdns(lab, job, dns_port, round_dir, bytecode_cache)
        if side_name == "blitzdns"
        else start_peer(lab, job, dns_port, peer_options)
    )
    try:
        deadline = exec_at + timeout_s
        try:
            startup = asyncio.run(probe_startup(job, dns_port, deadline))
        except Exception as exc:
            side.check_alive()
            raise RuntimeError(f"{side.name}: {exc}\n{side.log.text()[-3000:]}") from exc
        # The side's own processes at once (ready is now), their children after the scan.
        own = [proc.pid for proc in side.procs]
        cpu_at_ready = cpu_seconds(own)
        side.check_alive()
        cpu_at_ready += cpu_seconds([pid for pid in side.pids() if pid not in own])
        link = side.log.first(side.link_needle)
        accepted = lab.sshd_log.first("Connection from 127.0.0.1", sshd_mark)
        authed = lab.sshd_log.first("Accepted publickey", sshd_mark)
        values = {
            "exec→DNS answering": startup.dns - exec_at,
            "exec→DNS + mouths listening": startup.listening_ready - exec_at,
            "exec→ready (DNS + all mouths carrying)": startup.ready - exec_at,
            "CPU exec→ready (s)": cpu_at_ready,
        }
        if accepted is not None:
            values["exec→sshd accepted TCP"] = accepted - exec_at
            values["sshd accepted TCP→ready"] = startup.ready - accepted
        if authed is not None:
            values["sshd accepted key→ready"] = startup.ready - authed
        if link is not None:
            values["exec→client's link-up line"] = link - exec_at
            values["client's link-up line→ready"] = startup.ready - link
        if start_only:
            return values
        time.sleep(1.0)
        rss, hwm = memory_kb(side.pids())
        values["RSS idle (MB)"] = rss / 1024
        values["VmHWM idle (MB)"] = hwm / 1024
        values["Pss idle (MB)"] = pss_kb(side.pids()) / 1024
        extra_pids = [pid for proc in side.extra for pid in descendants(proc.pid)]

        async def loaded() -> float:
            held, seconds = await hold_connections(job, connections, time.monotonic() + timeout_s)
            try:
                await asyncio.sleep(0.5)
                side.check_alive()
                rss, hwm = memory_kb(side.pids())
                values[f"RSS with {connections} conns (MB)"] = rss / 1024
                values[f"VmHWM with {connections} conns (MB)"] = hwm / 1024
                values["RSS per held connection (kB)"] = (
                    rss - values["RSS idle (MB)"] * 1024
                ) / connections
                if extra_pids:
                    values["  of which dnsmasq RSS (MB)"] = memory_kb(extra_pids)[0] / 1024
                values[f"open+echo {connections} conns (s)"] = seconds
            finally:
                for writer in held:
                    writer.close()
            return seconds

        asyncio.run(loaded())
        return values
    finally:
        side.close()


# --------------------------------------------------------------------------- report


TARGETS = {
    "client's link-up line→ready": ("< 0.5 s", 0.5),
    "RSS with {n} conns (MB)": ("< 60 MB", 60.0),
}


def print_table(rounds: list[dict[str, dict[str, float]]], connections: int) -> None:
    sides = ("blitzdns", "openssh+dnsmasq")
    keys: list[str] = []
    for r in rounds:
        for side in sides:
            keys += [k for k in r[side] if k not in keys]
    targets = {k.format(n=connections): v for k, v in TARGETS.items()}
    width = max(len(k) for k in keys) + 2
    head = "metric (medians)"
    columns = (
        f"{'n':>4}{'blitzdns':>12}{'openssh+dnsmasq':>18}{'ratio':>8}  "
        f"{'range (blitzdns)':<20}{'range (peer)':<20}"
    )
    print(f"\n{head:<{width}}{columns}target")
    for key in keys:
        medians = []
        for side in sides:
            series = [r[side][key] for r in rounds if key in r[side]]
            medians.append(statistics.median(series) if series else None)
        ours = [r["blitzdns"][key] for r in rounds if key in r["blitzdns"]]
        peers = [r["openssh+dnsmasq"][key] for r in rounds if key in r["openssh+dnsmasq"]]
        count = max(len(ours), len(peers))
        unit = "" if key.endswith(("(MB)", "(kB)", "(s)")) else " s"
        cells = [f"{m:.3f}{unit}" if m is not None else "—" for m in medians]
        ratio = (
            f"{medians[0] / medians[1]:.2f}"
            if medians[0] is not None and medians[1] not in (None, 0)
            else "—"
        )
        spread = f"{min(ours):.3f}–{max(ours):.3f}" if ours else ""
        peer_spread = f"{min(peers):.3f}–{max(peers):.3f}" if peers else ""
        target = ""
        if key in targets and medians[0] is not None:
            text, limit = targets[key]
            target = f"{text} {'met' if medians[0] < limit else 'MISSED'}"
        print(
            f"{key:<{width}}{count:>4}{cells[0]:>12}{cells[1]:>18}{ratio:>8}  "
            f"{spread:<20}{peer_spread:<20}{target}"
        )


FIGURES = (  # (metric key, case, unit, target ratio, limit on ours) — issue 18's bounds
    ("exec→ready (DNS + all mouths carrying)", "daemon exec → ready", "s", 1.2, None),
    ("client's link-up line→ready", "daemon link-up line → ready", "s", None, 0.5),
    ("RSS idle (MB)", "daemon RSS idle", "MB", None, 40.0),
    ("RSS with {n} conns (MB)", "daemon RSS with {n} conns", "MB", None, 60.0),
    ("RSS per held connection (kB)", "daemon RSS per held connection", "kB", None, None),
    ("CPU exec→ready (s)", "daemon CPU exec → ready", "s", None, None),
    ("Pss idle (MB)", "daemon Pss idle", "MB", None, None),
)
#: Where the time and the memory go (measured with -X importtime, /proc/<pid>/smaps and
#: imports one by one; bench/notes/startup.md has the figures).
NOTES = {
    "daemon exec → ready": "nearly all before the SSH connect, and CPU-bound (so the load "
    "stretches it; the peer's ssh needs ~0.08 s of CPU): ~0.16 s of CPU, nearly all imports "
    "(callgrind, ~0.63 G instructions to ready; asyncssh's modules compile with their "
    "annotations postponed, PEP 563: -5%, blitzdns/optlevel.py; UDP forwards' code and json "
    "load on first use): asyncssh + cryptography ~45% (asyncssh's __init__ "
    "loads every submodule: process, channel, ...; sftp, scp, editor, server and subprocess "
    "are placeholders in run; dnslib loads only for the resolver's slow path), "
    "blitzdns/tunnel modules and "
    "the stdlib they load ~25%, the interpreter with typing/inspect/dataclasses ~18%, "
    "asyncio + uvloop ~12% (ssl is a placeholder in run: tunnel/nossl.py; typing_extensions, "
    "bz2 and lzma load only when asked: tunnel/lazymods.py); the methods dataclasses "
    "generates are "
    "compiled once and kept beside the bytecode (blitzdns/classcode.py: -20% of the import "
    "work; the warm-up round writes that table); the handshake waits ~20-40 ms for sshd: "
    "public-key auth takes one round trip (a key loaded here is sent signed first, no none "
    "probe: tunnel/backends/quickauth.py), and run without a privilege drop starts the link "
    "before loading the stub, whose modules then load in the handshake's waits (blitzdns."
    "daemon STUB_MODULES; main thread blocked 33 -> 13 ms, bench/notes/startup.md session 9); "
    "the TCP connect to an address gateway is opened before asyncssh loads "
    "(tunnel/early.py), so sshd's per-connection start (~13 ms idle) overlaps the imports",
    "daemon RSS idle": "interpreter 8.6 MB, asyncio + uvloop ~10.4 MB (without ssl, _ssl, "
    "libssl since session 8: -1.3 MB; nor typing_extensions, bz2, lzma: -0.4 MB), "
    "asyncssh + cryptography ~16.5 MB (8.9 MB of it cryptography's Rust library, 6 MB of "
    "that clean code pages), blitzdns/tunnel modules ~7.5 MB, state after start ~2.5 MB; "
    "without OpenSSL's hashes and the system's libcrypto since session 9 (hashlib from "
    "CPython's own modules: -3.6 MB; blitzdns/nohashlib.py); by kind: ~19 MB file-backed "
    "code, ~22 MB anonymous (Python heap: interned names, code, classes); "
    "run loads its modules as python -OO would (no docstrings: -1.8 MB; in the one process "
    "since session 8: blitzdns/optlevel.py) with line-only location tables (no column "
    "spans: -0.4 MB; blitzdns/linetable.py), "
    "leaves asyncssh's sftp and scp out (-0.7 MB; tunnel/nosftp.py), and dnslib until the "
    "resolver's slow path needs it (-0.5 MB); the SSH socket's 256 KiB read buffer is "
    "resident only where reads wrote (-0.25 MB); freeing after the start gives nothing "
    "(gc.collect + malloc_trim: -12 kB); dropping the start's clean code pages "
    "(madvise DONTNEED) would read 27.6 MB 1 s after ready but ~34 MB once the first "
    "keepalive maps the Rust library's large folios again, and frees no memory (the page "
    "cache keeps them): not done (bench/notes/startup.md); the Rust library's "
    "resident size follows the page cache's folio sizes (7.0-8.9 MB for the same code; "
    "two venvs with the same files differ by up to 1.5 MB of file-backed RSS)",
}


def spread_text(rounds: list[dict[str, dict[str, float]]], key: str) -> str:
    """Each side's interquartile range of ``key`` over the rounds, for a figure's note."""
    parts = []
    for side, name in (("blitzdns", "ours"), ("openssh+dnsmasq", "peer")):
        series = sorted(r[side][key] for r in rounds if key in r[side])
        if len(series) >= 4:
            low, _, high = statistics.quantiles(series, n=4)
            parts.append(f"{name} {low:.3f}–{high:.3f} s")
    if not parts:
        return ""
    count = sum(1 for r in rounds if key in r["blitzdns"])
    return f"median of {count} starts per side, interleaved (middle half: {', '.join(parts)}); "


def figures_of(rounds: list[dict[str, dict[str, float]]], connections: int) -> list[Figure]:
    """Medians over the rounds, blitzdns beside ssh -L + dnsmasq, for the report."""
    out = []
    for key, case, unit, target, limit in FIGURES:
        medians = []
        for side in ("blitzdns", "openssh+dnsmasq"):
            wanted = key.format(n=connections)
            series = [r[side][wanted] for r in rounds if wanted in r[side]]
            medians.append(statistics.median(series) if series else None)
        note = NOTES.get(case, "")
        if key == READY_KEY:
            note = spread_text(rounds, key) + note
        if medians[0] is not None:
            out.append(
                Figure(
                    case.format(n=connections),
                    medians[0],
                    medians[1],
                    unit,
                    target=target,
                    limit=limit,
                    peer_name="ssh -L + dnsmasq",
                    note=note,
                )
            )
    return out


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--start-rounds",
        type=int,
        default=10,
        help="more rounds that measure only the start (exec → ready, its CPU), each side in "
        "turn, after the full rounds: the start's medians are over all rounds",
    )
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=30.0, help="per phase, seconds")
    parser.add_argument("--max-sessions", type=int, default=10, help="sshd MaxSessions")
    parser.add_argument("--lock-wait", type=float, default=1800.0)
    parser.add_argument("--only", choices=("blitzdns", "openssh+dnsmasq"))
    parser.add_argument(
        "--bytecode",
        choices=("cached", "inherited"),
        default="cached",
        help="cached: the daemon keeps bytecode in /tmp/daemon-bench-pycache, as an installed "
        "package would; inherited: as this shell runs it (PYTHONDONTWRITEBYTECODE is honoured)",
    )
    parser.add_argument(
        "--peer-kex",
        metavar="ALGORITHMS",
        help="ssh -o KexAlgorithms=ALGORITHMS for the peer (default: ssh's own, which is "
        "sntrup761x25519-sha512 with OpenSSH 9.x: a post-quantum exchange that costs ssh "
        "CPU time; asyncssh without liboqs takes curve25519-sha256 from such a server)",
    )
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo:
        asyncio.run(echo_main())
        return
    if not 1 <= args.rounds <= 50 or not 1 <= args.connections <= 10000:
        raise SystemExit("--rounds must be 1..50 and --connections 1..10000")
    if not 0 <= args.start_rounds <= 100:
        raise SystemExit("--start-rounds must be 0..100")
    raise_nofile()
    sys.setswitchinterval(0.001)
    peer_options = ("-o", f"KexAlgorithms={args.peer_kex}") if args.peer_kex else ()
    with bench_lock(args.lock_wait):
        print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
        sides = [args.only] if args.only else ["blitzdns", "openssh+dnsmasq"]
        rounds: list[dict[str, dict[str, float]]] = []
        cache = BYTECODE_CACHE if args.bytecode == "cached" else None
        with lab(args.max_sessions) as where:
            job = make_job(where.echo_port)
            print(
                f"job: {len(job.hosts)} hosts, {len(job.names)} names, {len(job.forwards)} "
                f"TCP forwards on {job.mouth_block}; sshd MaxSessions {args.max_sessions}; "
                f"peer kex: {args.peer_kex or 'ssh default'}",
                flush=True,
            )
            for side in sides:
                warm_dir = where.root / f"warm-up-{side}"
                warm_dir.mkdir()
                measure(side, where, job, 10, args.timeout, warm_dir, cache, peer_options)
            print("warm-up round done (page cache, bytecode cache); not counted", flush=True)
            # Full rounds, then start-only rounds; the order alternates across both (no two
            # rounds in a row in the same order).
            for index in range(args.rounds + args.start_rounds):
                start_only = index >= args.rounds
                name = f"start{index - args.rounds}" if start_only else f"round{index}"
                order = sides if index % 2 == 0 else sides[::-1]
                result: dict[str, dict[str, float]] = {
                    s: {} for s in ("blitzdns", "openssh+dnsmasq")
                }
                for side in order:
                    round_dir = where.root / f"{name}-{side}"
                    round_dir.mkdir()
                    result[side] = measure(
                        side,
                        where,
                        job,
                        args.connections,
                        args.timeout,
                        round_dir,
                        cache,
                        peer_options,
                        start_only=start_only,
                    )
                    if not start_only:
                        ready = result[side][READY_KEY]
                        rss = result[side][f"RSS with {args.connections} conns (MB)"]
                        print(
                            f"round {index + 1} {side}: ready {ready:.3f} s,"
                            f" RSS loaded {rss:.1f} MB",
                            flush=True,
                        )
                if start_only:
                    line = ", ".join(f"{s} {result[s][READY_KEY]:.3f} s" for s in order)
                    print(f"start round {index - args.rounds + 1}: {line}", flush=True)
                rounds.append(result)
        print_table(rounds, args.connections)
        emit("daemon", figures_of(rounds, args.connections))
        print(f"\nloadavg at end: {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
