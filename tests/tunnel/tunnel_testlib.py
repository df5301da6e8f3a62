"""Helpers for the tunnel tests: a real OpenSSH sshd on loopback, keys made in a temp dir,
and /proc helpers to see who owns a socket (so a test can prove that a target's peer is
sshd and nobody else). The fixtures using them are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunnel import Forward

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (read from /proc)."""
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


def socket_owners(local_port: int, local_host: str = "127.0.0.1") -> set[str]:
    """Command names of the processes holding the TCP socket bound to local_host:local_port."""
    wanted = f"{socket.inet_aton(local_host)[::-1].hex().upper()}:{local_port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted:
            inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        owners.add(Path(f"/proc/{entry}/comm").read_text().strip())
    return owners


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
        """Start sshd and wait (bounded) until it greets."""
        self.write_config()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe,
            ):
                if probe.recv(64).startswith(b"SSH-"):
                    return
            time.sleep(0.02)
        raise RuntimeError("sshd did not start accepting")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (everything below the listener)."""
        assert self.process is not None
        return [pid for pid in descendants(self.process.pid) if pid != self.process.pid]

    def kill(self) -> None:
        """SIGKILL the listener and every session process: an abrupt outage."""
        if self.process is None:
            return
        for pid in reversed(descendants(self.process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=5)
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


class Target:
    """A loopback TCP server standing in for a service behind the gateway.

    ``mode="echo"`` echoes every byte and half-closes after the client does; ``"sink"``
    counts bytes and answers with the count once the client half-closes. Every accepted
    connection's peer (address, port) is recorded, and its owning process looked up.
    """

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.peers: list[tuple[str, int]] = []
        self.owners: list[set[str]] = []
        self.received = 0
        self.active = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.check_owner = False

    async def start(self) -> Target:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.peers.append((peer[0], peer[1]))
        if self.check_owner:
            self.owners.append(socket_owners(peer[1], peer[0]))
        count = 0
        self.active += 1
        try:
            while chunk := await reader.read(1 << 16):
                count += len(chunk)
                if self.mode == "echo":
                    writer.write(chunk)
                    await writer.drain()
            self.received += count
            if self.mode == "sink":
                writer.write(f"{count}\n".encode())
            writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.active -= 1
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self.server.wait_closed()


async def exchange(host: str, port: int, payload: bytes, *, source: str | None = None) -> bytes:
    """Connect, send ``payload``, half-close, read everything back.

    A reset (even one that arrives before the connect call returns, or a socket already
    disconnected when we write) counts as closed with nothing read (``b""``): the mouth
    refused the connection.
    """
    try:
        reader, writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None
        )
    except ConnectionResetError:
        return b""
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        return await reader.read()
    except OSError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def wait_until(condition: Callable[[], object], timeout_s: float = 10) -> None:
    """Poll ``condition`` (state held by other processes or objects without an event) until
    it is true; ``TimeoutError`` after ``timeout_s`` (a safety bound, not a measurement)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything left on ``reader``; a reset counts as closed with nothing (``b""``)."""
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return b""


@contextlib.contextmanager
def running_sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running sshd under ``tmp_path``; its ``client_key`` is authorized. Skips the test
    when sshd is missing or we are not root (privilege separation needs root)."""
    import getpass

    if not os.path.exists(SSHD):
        pytest.skip("sshd not installed (Debian: openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("the sshd fixture runs sshd with privilege separation: needs root")
    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(
        root=root,
        port=free_port(),
        user=getpass.getuser(),
        host_key=keygen(root / "host_ed25519"),
        client_key=keygen(root / "client_ed25519"),
        log=root / "sshd.log",
    )
    server.authorize(server.client_key.with_suffix(".pub"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextlib.asynccontextmanager
async def talking_target(payload: bytes, repeat: int = 1) -> AsyncIterator[Forward]:
    """A target that speaks first: ``payload`` ``repeat`` times to each client (never
    reading), then closes. Yields a forward from a free loopback mouth to it."""

    async def talk(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            for _ in range(repeat):
                writer.write(payload)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(talk, "127.0.0.1", 0)
    async with server:
        yield Forward("127.0.0.1", free_port(), "127.0.0.1", server.sockets[0].getsockname()[1])
