"""Helpers for the tunnel tests: targets behind the gateway, clients of a mouth, and a
/proc helper to see who owns a socket (so a test can prove that a target's peer is sshd
and nobody else). The sshd itself and the waits are shared: tests/peers.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.asyncssh_link import SSHLink
from tunnel.link import Link


def _proc_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it (IPv4 in host byte order, hex)."""
    return f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"


def socket_owners(
    local_port: int, local_host: str = "127.0.0.1", remote: tuple[str, int] | None = None
) -> set[str]:
    """Command names of the processes holding the TCP socket bound to local_host:local_port
    (and connected to ``remote``, when given: one local port may serve several
    connections to different remotes, some of them other processes' on a busy machine)."""
    wanted = _proc_address(local_host, local_port)
    peer = _proc_address(*remote) if remote is not None else None
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and (peer is None or fields[2] == peer):
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
            here = writer.get_extra_info("sockname")
            self.owners.append(socket_owners(peer[1], peer[0], remote=(here[0], here[1])))
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


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything left on ``reader``; a reset counts as closed with nothing (``b""``)."""
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return b""


async def digest_to_end(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read ``reader`` to its EOF (a reset raises): how many bytes, and their SHA-256."""
    digest = hashlib.sha256()
    total = 0
    while block := await reader.read(1 << 20):
        digest.update(block)
        total += len(block)
    return total, digest.hexdigest()


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


async def link_up(tunnel: Tunnel, timeout_s: float = 15) -> Link:
    """The link that is up now, waited for. ``wait_up`` can return while the fresh link is
    already in doubt or being replaced: on a loaded machine a stalled loop reads as a
    pause, and roaming's probe of the link can time out. A test about "the" link takes
    the one that is up."""
    await wait_until(lambda: tunnel.link is not None, timeout_s)
    link = tunnel.link
    assert link is not None
    return link


@contextlib.asynccontextmanager
async def one_open_connection(
    options: TunnelOptions, echo: Target
) -> AsyncIterator[tuple[Tunnel, SSHLink, asyncio.StreamReader, asyncio.StreamWriter]]:
    """A tunnel (asyncssh backend) to the ``echo`` target with one client connection
    carried and a line echoed through it: its channel is open. The client is closed at
    the end, then the tunnel."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, SSHLink)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            writer.write(b"hello\n")
            assert await reader.readexactly(6) == b"hello\n"
            yield tunnel, link, reader, writer
        finally:
            writer.close()


async def settled_fd_count() -> int:
    """This process's open descriptors, once the count has held still for 0.2 s (or 5 s
    have passed): the master works in its own time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    count = len(os.listdir("/proc/self/fd"))
    while loop.time() < deadline:
        await asyncio.sleep(0.2)
        count, last = len(os.listdir("/proc/self/fd")), count
        if count == last:
            break
    return count
