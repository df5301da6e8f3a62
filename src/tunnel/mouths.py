"""The mouths: our own listeners, each accepted connection carried on one SSH channel.

A mouth is bound once and outlives any number of links. Every accepted connection opens
a ``direct-tcpip`` channel (RFC 4254 §7.2) on the current link; while the link is down it
waits (``wait_for_link_s``) and is then closed. It is never connected to the target any
other way: the tunnel fails closed.

The data path is two small protocol objects wired back to back with no task and no
buffer copy per chunk: bytes read from the client go straight to ``SSHTCPChannel.write``
and bytes from the channel to ``Transport.write``; each side's ``pause_writing`` pauses
the other side's reading, so a slow reader holds back the fast writer (bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Protocol, cast

import asyncssh

from tunnel.errors import MouthBindError
from tunnel.forwards import Forward, mouth_ip
from tunnel.link import SSHLink, describe
from tunnel.state import ForwardCounters, ForwardState

log = logging.getLogger("tunnel.mouths")

LISTEN_BACKLOG = 1024
PENDING_MAX = 256 * 1024
"""Bytes a client may send before its channel is open; beyond that reading pauses."""
CLIENT_WRITE_HIGH_WATER = 1024 * 1024
"""Bytes queued towards a local client before the channel is paused (then resumed at ¼)."""


class LinkSource(Protocol):
    """What a mouth needs from the tunnel: the current link, or a bounded wait for one."""

    @property
    def current_link(self) -> SSHLink | None: ...

    async def wait_link(self) -> SSHLink | None: ...

    @property
    def channel_window(self) -> int: ...

    @property
    def channel_max_packet(self) -> int: ...


def _bind_reason(exc: OSError, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EACCES:
        if port < 1024:
            return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        return "permission denied"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address not available on this machine (on macOS: sudo ifconfig lo0 alias ADDR)"
    return exc.strerror or str(exc)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or :class:`MouthBindError` saying why not."""
    address = mouth_ip(host)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(address), port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{address}]" if address.version == 6 else str(address)
        reason = _bind_reason(exc, port)
        raise MouthBindError(
            f"cannot listen on {shown}:{port}: {reason}",
            address=str(address),
            port=port,
            reason=reason,
        ) from None
    return sock


class _ChannelSide(asyncssh.SSHTCPSession[bytes]):
    """Channel → client: every SSH data packet is written straight to the client.

    These callbacks run inside asyncssh's packet processing: an exception escaping one
    would tear down the whole link and every other connection on it, so each touches the
    client's transport only while the client is still there, and swallows OS errors.
    """

    __slots__ = ("client", "counters", "transport")

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.transport = client.transport
        self.counters = client.counters

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        # A failed write closes the transport at once but tells the client side later
        # (call_soon): data still arriving meanwhile is dropped, not written to a dead socket.
        if self.client.closed or self.transport.is_closing():
            return
        self.counters.bytes_in += len(data)
        self.transport.write(data)

    def eof_received(self) -> bool:
        # The client may have gone already: shutdown(SHUT_WR) on its socket then fails
        # (ENOTCONN), and an exception here would take the whole SSH link down with it.
        if self.client.closed or self.transport.is_closing() or not self.transport.can_write_eof():
            return False
        try:
            self.transport.write_eof()
        except OSError:
            self.transport.abort()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("%s: channel ended: %s", self.client.label, describe(exc))
        self.transport.close()

    def pause_writing(self) -> None:
        if not self.client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.resume_reading()


class _ClientSide(asyncio.Protocol):
    """Client → channel, and the life cycle of one accepted connection."""

    def __init__(self, mouth: Mouth) -> None:
        self.mouth = mouth
        self.counters = mouth.counters
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.channel: asyncssh.SSHTCPChannel[bytes] | None = None
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.eof = False
        self.closed = False
        self.opener: asyncio.Task[None] | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.label = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peername = transport.get_extra_info("peername")
        self.peer = (peer_host(peername[0]), int(peername[1])) if peername else ("", 0)
        forward = self.mouth.forward
        self.label = self.mouth.label(self.peer[0])
        if self.mouth.closed or self.mouth.refuses(*self.peer):
            self.closed = True
            self.transport.abort()
            return
        self.counters.open += 1
        self.counters.total += 1
        self.mouth.clients.add(self)
        self.transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        self.opener = asyncio.get_running_loop().create_task(self._open(forward))

    async def _open(self, forward: Forward) -> None:
        source = self.mouth.source
        link = source.current_link or await source.wait_link()
        if self.closed:
            return
        if link is None:
            log.info("%s: link is down; connection closed (failing closed)", self.label)
            self.transport.close()
            return
        try:
            channel, _ = await link.conn.create_connection(
                lambda: _ChannelSide(self),
                forward.target_host,
                forward.target_port,
                orig_host=self.peer[0],
                orig_port=self.peer[1],
                window=source.channel_window,
                max_pktsize=source.channel_max_packet,
            )
        except asyncssh.ChannelOpenError as exc:
            log.info(
                "%s: gateway could not open %s:%d: %s",
                self.label,
                forward.target_host,
                forward.target_port,
                exc.reason,
            )
            self.transport.close()
            return
        except (OSError, asyncssh.Error) as exc:
            log.info("%s: channel open failed: %s", self.label, describe(exc))
            self.transport.close()
            return
        if self.closed:
            channel.close()
            return
        self.channel = channel
        if self.pending:
            for chunk in self.pending:
                channel.write(chunk)
            self.counters.bytes_out += self.pending_len
            self.pending.clear()
            self.pending_len = 0
            self.transport.resume_reading()
        if self.eof:
            channel.write_eof()

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        if channel is None:
            self.pending.append(data)
            self.pending_len += len(data)
            if self.pending_len > PENDING_MAX:
                self.transport.pause_reading()
            return
        self.counters.bytes_out += len(data)
        try:
            channel.write(data)
        except OSError:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.eof = True
        if self.channel is not None:
            try:
                self.channel.write_eof()
            except OSError:
                return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.counters.open -= 1
        self.mouth.clients.discard(self)
        if self.opener is not None and not self.opener.done():
            self.opener.cancel()
        if self.channel is not None:
            self.channel.close()

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.resume_reading()

    def abort(self) -> None:
        """Drop this connection now (mouth closed, forward changed, tunnel closing)."""
        if self.channel is not None:
            self.channel.abort()
        self.transport.abort()


def peer_host(address: object) -> str:
    """A peer's address as text, without an IPv6 ``%zone`` (``fe80::1%eth0`` → ``fe80::1``)."""
    return str(address).partition("%")[0]


class Mouth:
    """One listener for one forward, and the connections it accepted."""

    def __init__(self, forward: Forward, source: LinkSource) -> None:
        self.forward = forward
        self.source = source
        self.counters = ForwardCounters()
        self.clients: set[_ClientSide] = set()
        self.server: asyncio.Server | None = None
        #: Set by close(): a connection the listener accepted just before that (its
        #: ``connection_made`` still to run) is closed, not carried for a removed forward.
        self.closed = False

    def state(self) -> ForwardState:
        """This forward's counters, as of now."""
        return ForwardState.of(self.forward, self.counters)

    def label(self, host: str) -> str:
        """How log lines name a connection from ``host`` on this mouth."""
        forward = self.forward
        return f"{forward.name or forward.mouth_host}:{forward.mouth_port} ← {host}"

    def refuses(self, host: str, port: int) -> bool:
        """Whether a client at ``host:port`` is not an allowed peer (an unknown address
        never is, where peers are limited); a refusal is counted and logged here, and the
        caller closes the connection."""
        forward = self.forward
        if forward.allowed_peers is None or (host and forward.admits(ipaddress.ip_address(host))):
            return False
        self.counters.rejected += 1
        log.warning(
            "mouth %s:%d: refused connection from %s:%d (not an allowed peer)",
            forward.mouth_host,
            forward.mouth_port,
            host,
            port,
        )
        return True

    def _warn_if_exposed(self) -> None:
        if not self.forward.is_loopback:
            log.warning(
                "mouth %s:%d is not on loopback: reachable from other machines%s",
                self.forward.mouth_host,
                self.forward.mouth_port,
                "" if self.forward.allowed_peers is None else " in the allowed networks",
            )

    def _switch_to(self, forward: Forward) -> Callable[[str], bool]:
        """Serve ``forward`` from now on; which client hosts its connections must drop
        (all when the target changed, else those the new forward no longer admits)."""
        old, self.forward = self.forward, forward
        changed = (old.target_host, old.target_port) != (forward.target_host, forward.target_port)

        def drops(host: str) -> bool:
            return changed or bool(host and not forward.admits(ipaddress.ip_address(host)))

        return drops

    async def bind(self) -> None:
        """Listen now; raises :class:`MouthBindError`."""
        if self.server is not None:
            return
        self.closed = False
        self._warn_if_exposed()
        sock = bind_socket(self.forward.mouth_host, self.forward.mouth_port)
        loop = asyncio.get_running_loop()
        try:
            self.server = await loop.create_server(
                lambda: _ClientSide(self), sock=sock, backlog=LISTEN_BACKLOG
            )
        except BaseException:
            sock.close()
            raise

    def retarget(self, forward: Forward) -> None:
        """Serve ``forward`` (same mouth) from now on; drop connections it would not allow."""
        drops = self._switch_to(forward)
        for client in list(self.clients):
            if drops(client.peer[0]):
                client.abort()

    def abort_clients(self) -> list[asyncio.Task[None]]:
        """Abort every connection; return their unfinished channel-open tasks."""
        openers = []
        for client in list(self.clients):
            if client.opener is not None and not client.opener.done():
                client.opener.cancel()
                openers.append(client.opener)
            client.abort()
        return openers

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self.closed = True
        server, self.server = self.server, None
        if server is not None:
            server.close()
        openers = self.abort_clients()
        if openers:
            await asyncio.wait(openers, timeout=0.5)
        if server is not None:
            try:
                async with asyncio.timeout(0.5):
                    await server.wait_closed()
            except TimeoutError:
                log.warning("mouth %s:%d: listener slow to close", *self.forward.mouth)
