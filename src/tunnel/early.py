"""A TCP connection to the first gateway, opened before the link's code is even loaded.

``blitzdns run`` spends most of its start importing (asyncssh alone is ~60 ms of CPU),
and the gateway's sshd spends the first ~13 ms of every connection (idle machine; more
under load) forking and re-executing itself before it sends its banner. Opening the TCP
connection before asyncssh loads (:func:`connect_early`, from ``run`` once its sockets are
bound, so the connection's ephemeral port cannot take one of theirs) lets the two
overlap: by the time asyncssh is loaded, sshd's banner is waiting in the socket.

What asyncssh connects to is not decided here. ``~/.ssh/config`` may rename the host
(HostName), change the port, or send the connection through ProxyJump / ProxyCommand /
a BindAddress. So the early socket is only *offered* (:func:`offered`): while asyncssh
connects, the event loop's ``create_connection`` hands over the early socket only when
asyncssh, after applying the config exactly as always, asks for a plain TCP connection to
that same address and port (no local address, a compatible family). Anything else (a
proxy, another host or port, a name, a failed early connect) takes the normal path, and
the early socket is closed. Only an IP literal is connected early: resolving a name at
that point could ask the stub itself, which does not serve yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("tunnel.link")

SSH_PORT = 22
"""asyncssh's (and ssh's) port when neither the gateway nor the config names one."""


class EarlyConnection:
    """One non-blocking TCP connect started towards ``ip``:``port``."""

    def __init__(
        self, sock: socket.socket, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ):
        self.sock = sock
        self.ip = ip
        self.port = port
        #: Whether asyncssh took the socket (tests and the debug log look at it).
        self.used = False
        #: Set once the link's connect has asked the loop for a connection (this one or
        #: another) or has ended without: from then on the link's handshake runs step by
        #: step as the gateway answers (``run`` loads the stub meanwhile).
        self.asked = asyncio.Event()

    def fits(self, host: object, port: object, kwargs: dict[str, Any]) -> bool:
        """Whether a ``create_connection(factory, host, port, **kwargs)`` call asks for
        exactly this connection: the same address and port, no local address, no TLS or
        socket of its own, a family that admits this one."""
        if not isinstance(host, str) or port != self.port:
            return False
        try:
            if ipaddress.ip_address(host) != self.ip:
                return False
        except ValueError:
            return False
        if set(kwargs) - {"family", "flags", "local_addr"} or kwargs.get("local_addr"):
            return False
        return kwargs.get("family", 0) in (0, socket.AF_UNSPEC, self.sock.family)

    async def connected(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait for the connect to finish; whether it succeeded (refused, unreachable:
        ``False``, and the caller connects afresh)."""
        done: asyncio.Future[None] = loop.create_future()

        def writable() -> None:
            if not done.done():
                done.set_result(None)

        fd = self.sock.fileno()
        loop.add_writer(fd, writable)
        try:
            await done
        finally:
            loop.remove_writer(fd)
        if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            return False
        # Connected, but the server may have dropped it since (sshd's MaxStartups, a
        # restart): an orderly end or a reset waiting means "connect afresh", as always.
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True  # nothing to read yet: alive
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


#: The connection started and not yet taken (at most one).
_pending: list[EarlyConnection] = []


def connect_early(host: str, port: int | None) -> EarlyConnection | None:
    """Start connecting to ``host``:``port`` (an IP literal; ``None`` port: 22) and keep the
    socket for the first :func:`take`; ``None`` when this does not apply (a name) or the
    connect could not even start. The caller binds its own ports first: the kernel gives
    the connection (its ephemeral port) none that a socket is bound to."""
    discard()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    port = SSH_PORT if port is None else port
    sock = _connect(host, ip, port)
    if sock is None:
        return None
    _pending.append(EarlyConnection(sock, ip, port))
    return _pending[0]


def _connect(
    host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> socket.socket | None:
    try:
        sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)
    except OSError:
        return None
    try:
        sock.setblocking(False)
        # As asyncio's own connect sets it (uvloop does; the standard loop does not for a
        # socket handed over with sock=).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        status = sock.connect_ex((host, port))
    except OSError:
        sock.close()
        return None
    if status not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock


def pending() -> EarlyConnection | None:
    """The early connection not taken yet, left in place (``None``: there is none)."""
    return _pending[0] if _pending else None


def take() -> EarlyConnection | None:
    """The early connection, once (the first connect attempt takes it, or nobody)."""
    return _pending.pop() if _pending else None


def discard() -> None:
    """Close an early connection nobody took."""
    early = take()
    if early is not None:
        early.close()


@contextlib.contextmanager
def offered(loop: asyncio.AbstractEventLoop, early: EarlyConnection | None) -> Iterator[None]:
    """While inside, ``loop.create_connection`` answers a call that :meth:`~EarlyConnection.fits`
    ``early`` with ``early``'s socket (once); every other call goes through unchanged. On the
    way out an early socket nobody used is closed."""
    if early is None:
        yield
        return
    original = loop.create_connection
    left: EarlyConnection | None = early

    async def create_connection(
        protocol_factory: Any, host: Any = None, port: Any = None, **kwargs: Any
    ) -> Any:
        nonlocal left
        early.asked.set()
        if left is not None and left.fits(host, port, kwargs):
            mine, left = left, None
            try:
                ok = await mine.connected(loop)
            except BaseException:
                mine.close()
                raise
            if ok:
                mine.used = True
                log.debug("connection to %s port %d opened early", host, port)
                try:
                    return await original(protocol_factory, sock=mine.sock)
                except BaseException:
                    mine.close()
                    raise
            mine.close()  # the early connect failed: connect afresh, as always
        return await original(protocol_factory, host, port, **kwargs)

    before = vars(loop).get("create_connection")  # an instance's own, if any: put back
    loop.create_connection = create_connection  # type: ignore[method-assign]
    try:
        yield
    finally:
        early.asked.set()
        if before is None:
            del loop.create_connection
        else:
            loop.create_connection = before  # type: ignore[method-assign]
        if left is not None:
            left.close()
