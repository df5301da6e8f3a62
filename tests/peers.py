"""The real peers every suite shares: an OpenSSH sshd, a dnsmasq upstream, dig, free ports
and waiting on a condition. One implementation of each; the fixtures using them are in
tests/conftest.py and the suites' own conftest files.

Two rules hold here so that the suite passes on a loaded machine beside other test runs:

- nothing sleeps and then asserts: :func:`wait_for` and :func:`wait_until` poll the condition
  itself, with a generous bound that is a safety net, not a measurement;
- a port handed to a peer that binds it later comes from :func:`free_port`, outside the
  kernel's ephemeral range (so no ``bind(port 0)`` or outgoing connection anywhere can take
  it in between), and the peers that bind it (sshd, dnsmasq) retry on a fresh port when it
  is taken anyway;
- dig runs with the server's port held by :func:`port_guard`: dig 9.18 shares ports with
  ``SO_REUSEPORT`` sockets, the stub's among them, and asking from the stub's own port it
  reads its own query back.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from blitzdns.config import Endpoint
from blitzdns.control import query_status
from blitzdns.errors import BlitzdnsError

T = TypeVar("T")

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")
DNSMASQ = shutil.which("dnsmasq") or (
    "/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None
)
DIG = shutil.which("dig")

#: How often a wait looks at its condition again.
POLL_S = 0.02
#: Attempts a peer makes at binding a port before the test fails.
BIND_ATTEMPTS = 8


# --------------------------------------------------------------------------- waiting


def wait_for(
    check: Callable[[], T | None], what: str | Callable[[], str], timeout: float = 15
) -> T:
    """Poll ``check`` until it returns something true, and return that.

    ``AssertionError`` naming ``what`` (or what ``what()`` says then, e.g. a peer's log)
    after ``timeout`` seconds: a bound on a condition that is expected to come true, never
    a measurement (a failure means it did not happen at all).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(POLL_S)


async def wait_until(condition: Callable[[], object], timeout_s: float = 10) -> None:
    """:func:`wait_for` for a test running on the event loop: poll ``condition`` (state held
    by other processes or objects without an event) until it is true; ``TimeoutError``
    after ``timeout_s`` (a safety bound, not a measurement)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def daemon_status(control: Path) -> dict[str, Any]:
    """What ``blitzdns status --json --control-socket CONTROL`` prints, asked from this
    process with the command's own client (:func:`blitzdns.control.query_status`); ``{}``
    while no daemon answers there. For polling a daemon: a ``blitzdns status`` program per
    look costs a start-up of the command line each time, and a loaded machine many of them.
    Tests of the ``status`` command itself run the program."""
    try:
        return query_status(control)
    except BlitzdnsError:
        return {}


# --------------------------------------------------------------------------- ports


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range (where ``bind`` to port 0 and outgoing
    connections take theirs), and above the well-known ones."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low - 10000 >= 2000:
        return 10000, low - 1
    return 1024 + 1000, 65535  # an odd kernel setting: any unprivileged port


def _bindable(host: str, port: int, kind: socket.SocketKind) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for TCP and UDP on ``host`` a moment ago, for a peer that binds it later.

    Chosen at random below the ephemeral range, so only another explicit choice can take it
    before the peer binds it; the peers here retry on a fresh port when that happens. A test
    that binds the port itself should bind port 0 instead.
    """
    low, high = _port_range()
    for _ in range(200):
        port = random.randint(low, high)
        if _bindable(host, port, socket.SOCK_STREAM) and _bindable(host, port, socket.SOCK_DGRAM):
            return port
    raise RuntimeError(f"no free port on {host} between {low} and {high}")


def tcp_established(sock: socket.socket) -> bool:
    """Whether the kernel still has both ends of ``sock`` (an IPv4 connection to a local
    peer) ESTABLISHED: False as soon as either end closed or reset it. The peer's side
    shows its close at once, even when its FIN waits behind data ``sock`` never reads."""
    try:
        local, remote = sock.getsockname(), sock.getpeername()
    except OSError:  # ENOTCONN: reset and gone already
        return False

    def hexed(address: tuple[str, int]) -> str:
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    ends = {(hexed(local), hexed(remote)), (hexed(remote), hexed(local))}
    states = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) in ends:
            states[fields[1], fields[2]] = fields[3]
    return len(states) == 2 and set(states.values()) == {"01"}


# --------------------------------------------------------------------------- processes


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc; processes may come and go)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``T`` for stopped, ``Z``…); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``: what a program started with
    ``start_new_session=True`` left running after it exited (unless it called setsid)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


def signal_existing(pids: Iterable[int], sig: int) -> list[int]:
    """Send ``sig`` to each of ``pids`` that still exists; the ones it reached.

    A listing of processes is stale as soon as it is made (sshd's pre-auth child exits right
    after authentication, for one), so a pid that is gone is skipped, not an error.
    """
    reached = []
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        reached.append(pid)
    return reached


@contextlib.contextmanager
def stopped(pids: Iterable[int]) -> Iterator[list[int]]:
    """SIGSTOP each of ``pids`` that still exists (a frozen peer: no FIN, no RST); yield
    the ones stopped. Every one of them gets SIGCONT on the way out, whatever happens
    inside, so no process is ever left stopped behind a test."""
    held: list[int] = []
    try:
        for pid in pids:
            held.extend(signal_existing([pid], signal.SIGSTOP))
        yield held
    finally:
        signal_existing(held, signal.SIGCONT)


# --------------------------------------------------------------------------- sshd


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """Generate an unencrypted key pair at ``path`` (+ ``.pub``)."""
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen not installed (Debian: openssh-client)")
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def fingerprint(pub: Path) -> str:
    """``SHA256:…`` of a public key file, as ssh-keygen prints it."""
    assert SSH_KEYGEN is not None
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub)], check=True, capture_output=True
    )
    return out.stdout.decode().split()[1]


class PortTaken(RuntimeError):
    """A peer could not bind the port chosen for it (someone took it first)."""


@dataclass
class Sshd:
    """An OpenSSH sshd on 127.0.0.1:port, with its keys and log in ``root``."""

    root: Path
    port: int
    user: str
    host_key: Path
    client_key: Path
    log: Path
    extra_config: str = ""
    log_level: str = "VERBOSE"
    """sshd's LogLevel; DEBUG3 logs every packet it receives ("receive packet: type N")."""
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def config_path(self) -> Path:
        return self.root / "sshd_config"

    def write_config(self) -> None:
        self.config_path.write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {self.root / "authorized_keys"}
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
PidFile none
LogLevel {self.log_level}
MaxStartups 100:30:200
{self.extra_config}
"""
        )

    def start(self) -> None:
        """Start sshd and wait (bounded) until it greets; :class:`PortTaken` when its port
        is bound by someone else (a restart keeps the port: clients know it)."""
        self.write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        logged = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = self.log.read_bytes()[logged:].decode(errors="replace")
                self.process = None
                if "Address already in use" in said:
                    raise PortTaken(said)
                raise RuntimeError(f"sshd exited: {said[-2000:]}")
            if self._greets():
                return
            time.sleep(POLL_S)
        raise RuntimeError("sshd did not start accepting")

    def _greets(self) -> bool:
        """Whether our sshd (not something else on the port) answers with its banner.

        The probe ends before the key exchange; the session process sshd forked for it
        exits on its own (tests listing session processes must tolerate that).
        """
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=2) as probe,
        ):
            return probe.recv(64).startswith(b"SSH-")
        return False

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (everything below the listener) right now;
        any of them may have exited by the time the caller looks."""
        assert self.process is not None
        return [pid for pid in descendants(self.process.pid) if pid != self.process.pid]

    def kill(self) -> None:
        """SIGKILL the listener and every session process: an abrupt outage.

        The listener is stopped first so it forks no new session while the others are
        listed and killed; SIGKILL ends stopped processes too, so nothing is left behind.
        """
        if self.process is None:
            return
        listener = self.process.pid
        signal_existing([listener], signal.SIGSTOP)
        signal_existing(reversed(descendants(listener)), signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def connections_logged(self) -> int:
        """How many TCP connections sshd accepted (from its VERBOSE log)."""
        return self.log.read_text(errors="replace").count("Connection from 127.0.0.1")

    def authorize(self, pub: Path) -> None:
        with (self.root / "authorized_keys").open("a") as out:
            out.write(pub.read_text())

    def known_hosts_line(self) -> str:
        kind, blob = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"


def need_sshd() -> None:
    """Skip unless sshd is installed and we are root (privilege separation needs root)."""
    if not os.path.exists(SSHD):
        pytest.skip("sshd not installed (Debian: openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the sshd fixture runs sshd with privilege separation: needs root")


def start_sshd(root: Path, **settings: str) -> Sshd:
    """An sshd started under ``root`` (created) whose ``client_key`` is authorized, on a free
    port (a fresh one when the chosen port is taken before sshd binds it)."""
    need_sshd()
    root.mkdir(exist_ok=True)
    server = Sshd(
        root=root,
        port=0,
        user=getpass.getuser(),
        host_key=keygen(root / "host_ed25519"),
        client_key=keygen(root / "client_ed25519"),
        log=root / "sshd.log",
        **settings,  # type: ignore[arg-type]
    )
    server.authorize(server.client_key.with_suffix(".pub"))
    for attempt in range(BIND_ATTEMPTS):
        server.port = free_port()
        try:
            server.start()
            return server
        except PortTaken:
            if attempt == BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running sshd under ``tmp_path``; killed (with every session) at the end. Skips
    the test when sshd is missing or we are not root."""
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.kill()


# --------------------------------------------------------------------------- dnsmasq

#: What the upstream dnsmasq answers (a leaked protected query would get 192.0.2.99).
FORWARDED_ADDRESS = "192.0.2.10"
LEAK_ADDRESS = "192.0.2.99"
SHORT_TTL_ADDRESS = "192.0.2.20"


class Dnsmasq:
    """A real dnsmasq on 127.0.0.1 answering the test names, logging every query to a file.

    ``neg.test`` is an authoritative zone (NXDOMAIN and NODATA with an SOA, 1 s TTLs); dnsmasq
    serves authoritative zones only on a listener of their own, so a second dnsmasq holds
    it and this one forwards ``neg.test`` there with its own cache off.
    """

    def __init__(self, directory: Path, extra: Sequence[str] = (), *, auth: bool = False) -> None:
        if DNSMASQ is None:
            pytest.skip("dnsmasq is not installed (Debian package dnsmasq)")
        self.backend = None if auth else Dnsmasq(directory, auth=True)
        # Someone may take the free port before dnsmasq binds it: try a fresh one.
        for attempt in range(BIND_ATTEMPTS):
            self.log_path = directory / f"dnsmasq-{time.monotonic_ns()}.log"
            self.port = free_port()
            try:
                self._start(extra)
                return
            except PortTaken:
                if attempt == BIND_ATTEMPTS - 1:
                    raise

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)

    def _start(self, extra: Sequence[str]) -> None:
        assert DNSMASQ is not None
        common = [
            DNSMASQ,
            "-k",
            "-C",
            "/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--log-queries",
            f"--log-facility={self.log_path}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={self.port}",
            "--pid-file=",
            "--user=root",
        ]
        if self.backend is None:
            role = [
                "--auth-server=ns.neg.test,127.0.0.1",
                "--auth-zone=neg.test",
                "--auth-ttl=1",
                "--auth-soa=1,hostmaster.neg.test,1200,120,1209600",
                f"--host-record=short.neg.test,{SHORT_TTL_ADDRESS}",
            ]
        else:
            role = [
                "--local-ttl=300",
                "--cache-size=0",
                f"--address=/fwd.test/{FORWARDED_ADDRESS}",
                "--txt-record=txt.fwd.test,hello",
                f"--address=/dartmouth.edu/{LEAK_ADDRESS}",
                f"--server=/neg.test/127.0.0.1#{self.backend.port}",
            ]
        self.process = subprocess.Popen(
            [*common, *role, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                if "in use" in err:
                    raise PortTaken(err)
                raise RuntimeError(f"dnsmasq exited: {err}")
            return "started" in self.log_text()

        wait_for(ready, "dnsmasq to start", timeout=20)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def queries(self) -> list[str]:
        """``query[TYPE] name`` for every query dnsmasq received, lower-cased, in order."""
        found = []
        for line in self.log_text().splitlines():
            for marker in ("query[", "auth["):
                if marker in line:
                    part = line.split(marker, 1)[1]
                    found.append(marker + part.split(" from ")[0].lower())
        return found

    def wait_for_query(self, name: str, timeout: float = 10.0) -> None:
        """Block until dnsmasq has logged a query for ``name`` (its log is written in order)."""
        try:
            wait_for(
                lambda: any(q.endswith("] " + name) for q in self.queries()),
                f"dnsmasq to log {name}",
                timeout,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.queries()}") from None

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


# --------------------------------------------------------------------------- dig


def need_dig() -> str:
    if DIG is None:
        pytest.skip("dig is not installed (Debian package bind9-dnsutils)")
    return DIG


#: Where :func:`port_guard` holds a server's port while dig runs: a loopback address no
#: test serves on.
GUARD_ADDRESS = "127.255.255.254"
#: The same for an IPv6 server (on ::1, the one IPv6 loopback address): an address of no
#: interface (a unique-local one), bound with ``IP_FREEBIND``; nothing is ever sent to it.
GUARD_ADDRESS6 = "fd00:ffff::1"
#: Linux's ``IP_FREEBIND`` (``<linux/in.h>``), which holds for IPv6 sockets too.
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)


@contextlib.contextmanager
def port_guard(host: str, port: int) -> Iterator[socket.socket | None]:
    """Keep dig off ``port`` (a server's, on ``host``) while the block runs.

    dig 9.18 (Debian 12's) opens each query's UDP socket with ``SO_REUSEPORT`` and binds
    port 0, and Linux may then hand it a port that sockets of the same user hold with
    ``SO_REUSEPORT`` too: the stub's steered pair (:mod:`blitzdns.dns.steer`), which the
    tests bind on a kernel-picked port in the same ephemeral range, as root like dig.
    When dig is handed the very port it asks, its query goes to its own connected socket
    (the better match), never to the stub: dig reads its own query back and prints
    ";; Warning: query response not set" in place of the answer (about one query in
    28,000, the range's size; the all-cases test asks 132). Upstream stopped setting the
    option on outgoing sockets in 9.19 ("Don't set load-balancing socket option on the UDP
    connect sockets"); production listens on port 53, which the kernel never hands out.

    A socket without ``SO_REUSEPORT`` on the same port at another address conflicts with
    dig's wildcard bind, so the kernel passes the port over, as for any port in use; with
    ``SO_REUSEADDR`` two guards of one port (dig runs at once) share it. dig's IPv6 query
    socket (``SO_REUSEPORT``, ``IPV6_V6ONLY``, ``[::]``) is kept off an IPv6 server's port
    the same way, by a guard at :data:`GUARD_ADDRESS6`. None when the port cannot be held
    (a wildcard socket on it already): dig runs as before.
    """
    if host in (GUARD_ADDRESS, GUARD_ADDRESS6):
        yield None
        return
    six = ":" in host
    try:  # made inside: a host without IPv6 cannot make the AF_INET6 socket (None then)
        guard = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        yield None
        return
    try:
        guard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if six:
            guard.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            guard.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # an address of no interface
        guard.bind((GUARD_ADDRESS6 if six else GUARD_ADDRESS, port))
    except OSError:
        guard.close()
        yield None
        return
    with guard:
        yield guard


def run_dig(host: str, port: int, args: Sequence[str], timeout: float = 15) -> tuple[str, str]:
    """The real ``dig`` against ``host`` ``port`` (one try, 3 s): its stdout and stderr."""
    command = [need_dig(), f"@{host}", "-p", str(port), "+tries=1", "+time=3", *args]
    with port_guard(host, port):
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout, done.stderr


def dig(server: Endpoint, *args: str, timeout: float = 15) -> str:
    """Run the real ``dig`` against ``server`` (one try, 3 s); its whole output."""
    out, err = run_dig(server.host, server.port, args, timeout)
    return out + err


def dig_short(port: int, name: str, qtype: str = "A", host: str = "127.0.0.1") -> list[str]:
    """The answers ``dig +short`` prints for ``name`` (empty when none or no reply)."""
    return run_dig(host, port, ["+short", name, qtype])[0].split()
