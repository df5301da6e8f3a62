"""Mouths for the ``openssh`` backend: accept, filter, hand the socket to the ssh master.

The listener and the ``allowed_peers`` check are ours, as with the asyncssh backend; after
that the accepted socket's descriptor goes to the master (:meth:`MuxLink.hand_off`), so the
bytes flow in OpenSSH's C code only. The link keeps the mux connection open until the
master closes it (the channel ended) and then tells the mouth
(:meth:`MuxMouth.session_ended`), which is when the connection stops counting as open.
Bytes never pass through here: they are read from the kernel's counters of the client
socket (``TCP_INFO``, Linux); our copy of it is kept until the channel ends for that.

The common case runs in the listener's reader callback, no task per connection: accept,
filter, send the request on a spare mux connection at once. Only a connection that must
wait for the link gets a task.

While the link is down a connection waits ``wait_for_link_s`` and is then closed; if the
master refuses the request it is closed too (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import struct
from typing import Protocol

from tunnel.errors import TunnelError
from tunnel.forwards import Forward
from tunnel.mouths import LinkSource, Mouth, bind_socket, peer_host
from tunnel.openssh import MuxLink, MuxSession, tcp_traffic
from tunnel.state import ForwardState

log = logging.getLogger("tunnel.mouths")


class MuxLinkSource(LinkSource, Protocol):
    """What a mux mouth needs from the tunnel: the current master, or a bounded wait."""

    @property
    def current_mux_link(self) -> MuxLink | None: ...

    async def wait_mux_link(self) -> MuxLink | None: ...


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as ``Transport.abort`` does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


ACCEPT_BATCH = 64
"""Connections accepted per wake-up of the listener, before other callbacks get a turn."""


class MuxMouth(Mouth):
    """One listener whose connections are carried by the ssh master."""

    def __init__(self, forward: Forward, source: MuxLinkSource) -> None:
        super().__init__(forward, source)
        self.mux_source = source
        self.listener: socket.socket | None = None
        self.sessions: set[MuxSession] = set()
        self.waiting: dict[asyncio.Task[None], str] = {}

    async def bind(self) -> None:
        """Listen now; raises :class:`MouthBindError`."""
        if self.listener is not None:
            return
        self.closed = False
        self._warn_if_exposed()
        self.listener = bind_socket(self.forward.mouth_host, self.forward.mouth_port)
        asyncio.get_running_loop().add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        listener = self.listener
        for _ in range(ACCEPT_BATCH):
            if listener is None:
                return
            try:
                conn, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("mouth %s:%d: accept failed: %s", *self.forward.mouth, exc)
                return
            self._take(conn, peer_host(peer[0]), int(peer[1]))

    def _take(self, conn: socket.socket, host: str, port: int) -> None:
        forward = self.forward
        if self.refuses(host, port):
            _abort(conn)
            return
        self.counters.open += 1
        self.counters.total += 1
        with contextlib.suppress(OSError):
            # As ssh -L does for the sockets it accepts (channels.c): no Nagle delay.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = self.mux_source.current_mux_link
        session = (
            link.hand_off(conn, forward.target_host, forward.target_port, self, host)
            if link is not None
            else None
        )
        if session is not None:
            self.sessions.add(session)
            return
        task = asyncio.get_running_loop().create_task(self._wait_and_open(conn, forward, host))
        self.waiting[task] = host
        task.add_done_callback(self.waiting.pop)

    def session_ended(
        self, session: MuxSession, error: str | None, traffic: tuple[int, int] | None
    ) -> None:
        """A handed-over connection ended (or was refused by the master: ``error``);
        ``traffic`` is what the kernel counted on it, ``(out, in)``."""
        if session in self.sessions:
            self.sessions.discard(session)
            self.counters.open -= 1
            if traffic is not None:
                self.counters.bytes_out += traffic[0]
                self.counters.bytes_in += traffic[1]
        if error is not None:
            log.info("%s: %s", self.label(session.tag), error)

    async def _wait_and_open(self, conn: socket.socket, forward: Forward, host: str) -> None:
        """The slow path: wait (bounded) for the link, then open on a fresh mux connection."""
        handed = False
        try:
            source = self.mux_source
            link = source.current_mux_link or await source.wait_mux_link()
            if link is None:
                log.info("%s: link is down; connection closed (failing closed)", self.label(host))
                return
            try:
                channel = await link.open_stdio_fwd(
                    conn.fileno(), forward.target_host, forward.target_port
                )
                self.sessions.add(link.adopt(channel, conn, self, host))
            except (OSError, TunnelError) as exc:
                log.info(
                    "%s: forward to %s:%d failed: %s",
                    self.label(host),
                    forward.target_host,
                    forward.target_port,
                    exc,
                )
                return
            handed = True
        finally:
            if not handed:
                conn.close()
                self.counters.open -= 1

    def state(self) -> ForwardState:
        """The counters, with the bytes of the connections still open read from the kernel."""
        counters = copy.copy(self.counters)
        for session in self.sessions:
            traffic = tcp_traffic(session.client)
            if traffic is not None:
                counters.bytes_out += traffic[0]
                counters.bytes_in += traffic[1]
        return ForwardState.of(self.forward, counters)

    def retarget(self, forward: Forward) -> None:
        """Serve ``forward`` (same mouth) from now on; drop connections it would not allow."""
        drops = self._switch_to(forward)
        for session in list(self.sessions):
            if drops(session.tag):
                session.end()
        for task, host in list(self.waiting.items()):
            if drops(host):
                task.cancel()

    def abort_clients(self) -> list[asyncio.Task[None]]:
        """End every connection (closing its mux connection ends its channel)."""
        for session in list(self.sessions):
            session.end()
        tasks = list(self.waiting)
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        self.closed = True
        listener, self.listener = self.listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        tasks = self.abort_clients()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)
