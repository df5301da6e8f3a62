"""Mux connections to a master's control socket, and the pool of spares kept ahead of use.

A new client should cost one request and its descriptor, not a connect and the master's
accept as well: :class:`SparePool` keeps connections open (our hello sent) ahead of demand.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from tunnel.backends.openssh.mux import HELLO, MUX_PACKET_MAX, MuxError, check_hello

CONNECT_RETRY_S = 2.0
"""How long a mux connect is retried while the master's listen backlog is full."""
SPARES_MIN = 2
SPARES_MAX = 16
"""Bounds of the mux connections kept open (hello sent) ahead of demand, per link."""
REFILL_DELAY_S = 0.005
"""Spares are replaced this long after one is used, not at once: the master's accept of a
new spare would otherwise compete with its opening of the channel just requested."""


async def _unix_connect(sock: socket.socket, path: Path) -> None:
    """Connect the non-blocking Unix socket ``sock`` to ``path``.

    A full listen backlog makes a Unix-domain ``connect`` fail with ``EAGAIN`` and leaves
    the socket unconnected: unlike TCP's ``EINPROGRESS`` there is nothing to wait for
    (``loop.sock_connect`` waits anyway and the socket then reports ENOTCONN). So the
    connect is tried again, with short pauses, for up to ``CONNECT_RETRY_S``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_RETRY_S
    pause = 0.001
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if loop.time() >= deadline:
                raise OSError(f"the ssh master's control socket stays busy ({path})") from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)


class MuxChannel:
    """One mux connection to the master, speaking the packet protocol."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path, request: bytes, fd: int | None = None) -> MuxChannel:
        """Connect and send our hello, ``request`` and (twice) ``fd`` at once, then check
        the master's hello (PROTOCOL.mux §1): both peers send their hello unprompted and
        the master handles packets in order, so nothing waits a round trip for the hello."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        channel = cls(sock)
        try:
            loop = asyncio.get_running_loop()
            await _unix_connect(sock, path)
            await loop.sock_sendall(sock, HELLO + request)
            if fd is not None:
                await channel.send_fd(fd)
                await channel.send_fd(fd)
            check_hello(await channel.read_packet())
        except BaseException:
            sock.close()
            raise
        return channel

    def take_packet(self) -> bytes | None:
        """The next complete packet body already buffered, else ``None``."""
        if len(self.buffer) < 4:
            return None
        (length,) = struct.unpack_from(">I", self.buffer)
        if length > MUX_PACKET_MAX:
            raise MuxError(f"mux packet of {length} bytes is too large")
        if len(self.buffer) < 4 + length:
            return None
        body = bytes(self.buffer[4 : 4 + length])
        del self.buffer[: 4 + length]
        return body

    async def read_packet(self) -> bytes | None:
        """The next packet body; ``None`` at end of stream."""
        loop = asyncio.get_running_loop()
        while True:
            body = self.take_packet()
            if body is not None:
                return body
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return None
            self.buffer += chunk

    async def send_fd(self, fd: int) -> None:
        """One descriptor with one NUL byte, as OpenSSH's ``mm_send_fd``."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.sock, [b"\0"], [fd])
                return
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.sock, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.sock)

    def close(self) -> None:
        self.sock.close()


SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
"""Linux: a socket created non-blocking (no ``fcntl``/``ioctl`` afterwards)."""


def connect_now(path: Path | str) -> MuxChannel | None:
    """A mux connection with our hello sent, without waiting (``None`` if the master's
    backlog is full or it is gone)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | SOCK_NONBLOCK)
    if not SOCK_NONBLOCK:
        sock.setblocking(False)
    try:
        sock.connect(str(path))
        if sock.send(HELLO) != len(HELLO):
            raise BlockingIOError
    except OSError:
        sock.close()
        return None
    return MuxChannel(sock)


class SparePool:
    """Spare connections (hello sent) ahead of demand: as many as were used since the last
    refill, within ``SPARES_MIN``..``SPARES_MAX`` (each spare is a channel the master visits
    on every turn of its loop, so not more)."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.path = str(path)
        self._loop = loop
        self._spares: list[MuxChannel] = []
        self._used = 0
        self._refill: asyncio.TimerHandle | None = None
        self._closed = False

    def take(self) -> MuxChannel | None:
        """A spare, else a new connection; ``None`` if neither is to be had at once. The
        pool is refilled ``REFILL_DELAY_S`` later."""
        if self._closed:
            return None
        channel = self._spares.pop() if self._spares else connect_now(self.path)
        if channel is None:
            return None
        self._used += 1
        if self._refill is None:
            self._refill = self._loop.call_later(REFILL_DELAY_S, self.refill)
        return channel

    def refill(self) -> None:
        self._refill = None
        wanted = max(SPARES_MIN, min(SPARES_MAX, self._used))
        self._used = 0
        while not self._closed and len(self._spares) < wanted:
            channel = connect_now(self.path)
            if channel is None:
                return
            self._spares.append(channel)

    def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
        for channel in self._spares:
            channel.close()
        self._spares.clear()
