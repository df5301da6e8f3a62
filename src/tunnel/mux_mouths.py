"""Mouths for the ``openssh`` backend: accept, filter, hand the socket to the ssh master.

The listener and the ``allowed_peers`` check are ours, as with the asyncssh backend; after
that the accepted socket's descriptor goes to the master (:meth:`MuxLink.start_stdio_fwd`)
and our copy is closed, so the bytes flow in OpenSSH's C code only. We keep the mux
connection open until the master closes it (the channel ended), which is when the
connection stops counting as open. Bytes are not seen here: the counters stay 0.

The common case runs in plain reader callbacks, no task per connection: the listener's
callback accepts, filters and sends the request on a spare mux connection at once; a
:class:`_Passenger` callback reads the master's hello and reply and then waits for the
end. Only a connection that must wait for the link gets a task.

While the link is down a connection waits ``wait_for_link_s`` and is then closed; if the
master refuses the request it is closed too (fail closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from typing import Protocol

from tunnel.errors import TunnelError
from tunnel.forwards import Forward
from tunnel.mouths import LinkSource, Mouth, bind_socket
from tunnel.openssh import MuxChannel, MuxError, MuxLink, check_hello, check_opened

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


REPLY_READ_DELAY_S = 0.005
"""The master's hello and reply are read this long after the request: by then a short
exchange has usually finished, so reading them does not compete with the master (and the
client) for a CPU while the channel opens. A refusal still closes the client: the master
closes the descriptors it was given."""
ACCEPT_BATCH = 64
"""Connections accepted per wake-up of the listener, before other callbacks get a turn."""


class _Passenger:
    """One handed-over connection: its mux connection, read by a reader callback.

    Stage 0 waits for the master's hello, 1 for ``MUX_S_SESSION_OPENED``, 2 for the end of
    the stream (the master closes the mux connection when the channel ends).
    """

    __slots__ = ("channel", "label", "mouth", "peer", "request_id", "stage", "watching")

    def __init__(
        self,
        mouth: MuxMouth,
        channel: MuxChannel,
        request_id: int | None,
        label: str,
        peer: str,
    ) -> None:
        self.mouth = mouth
        self.channel = channel
        self.request_id = request_id or 0
        self.label = label
        self.peer = peer
        self.stage = 2 if request_id is None else 0
        self.watching = False
        mouth.passengers.add(self)
        if self.stage == 2:
            self._watch()
        else:
            asyncio.get_running_loop().call_later(REPLY_READ_DELAY_S, self._watch)

    def _watch(self) -> None:
        if self.channel.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.channel.sock.fileno(), self._readable)
            self.watching = True

    def _readable(self) -> None:
        channel = self.channel
        try:
            data = channel.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self.stage < 2:
                log.info("%s: master closed the mux connection before the reply", self.label)
            self.end()
            return
        if self.stage == 2:
            return
        channel.buffer += data
        try:
            while self.stage < 2 and (body := channel.take_packet()) is not None:
                if self.stage == 0:
                    check_hello(body)
                else:
                    check_opened(body, self.request_id)
                self.stage += 1
        except MuxError as exc:
            log.info("%s: %s", self.label, exc)
            self.end()

    def end(self) -> None:
        """Close the mux connection (which ends the channel, if any) and stop counting."""
        if self.channel.sock.fileno() < 0:
            return
        if self.watching:
            asyncio.get_running_loop().remove_reader(self.channel.sock.fileno())
        self.channel.close()
        self.mouth.counters.open -= 1
        self.mouth.passengers.discard(self)


class MuxMouth(Mouth):
    """One listener whose connections are carried by the ssh master."""

    def __init__(self, forward: Forward, source: MuxLinkSource) -> None:
        super().__init__(forward, source)
        self.mux_source = source
        self.listener: socket.socket | None = None
        self.passengers: set[_Passenger] = set()
        self.waiting: dict[asyncio.Task[None], str] = {}

    async def bind(self) -> None:
        """Listen now; raises :class:`MouthBindError`."""
        if self.listener is not None:
            return
        if not self.forward.is_loopback:
            log.warning(
                "mouth %s:%d is not on loopback: reachable from other machines",
                *self.forward.mouth,
            )
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
            self._take(conn, str(peer[0]).partition("%")[0], int(peer[1]))

    def _take(self, conn: socket.socket, host: str, port: int) -> None:
        forward = self.forward
        if forward.allowed_peers is not None and not forward.admits(ipaddress.ip_address(host)):
            self.counters.rejected += 1
            log.warning(
                "mouth %s:%d: refused connection from %s:%d (not an allowed peer)",
                *forward.mouth,
                host,
                port,
            )
            _abort(conn)
            return
        self.counters.open += 1
        self.counters.total += 1
        label = f"{forward.name or forward.mouth_host}:{forward.mouth_port} ← {host}"
        with contextlib.suppress(OSError):
            # As ssh -L does for the sockets it accepts (channels.c): no Nagle delay.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = self.mux_source.current_mux_link
        started = (
            link.start_stdio_fwd(conn.fileno(), forward.target_host, forward.target_port)
            if link is not None
            else None
        )
        if started is not None:
            conn.close()
            _Passenger(self, *started, label, host)
            return
        task = asyncio.get_running_loop().create_task(
            self._wait_and_open(conn, forward, label, host)
        )
        self.waiting[task] = host
        task.add_done_callback(self.waiting.pop)

    async def _wait_and_open(
        self, conn: socket.socket, forward: Forward, label: str, host: str
    ) -> None:
        """The slow path: wait (bounded) for the link, then open on a fresh mux connection."""
        handed = False
        try:
            source = self.mux_source
            link = source.current_mux_link or await source.wait_mux_link()
            if link is None:
                log.info("%s: link is down; connection closed (failing closed)", label)
                return
            try:
                channel = await link.open_stdio_fwd(
                    conn.fileno(), forward.target_host, forward.target_port
                )
            except (OSError, TunnelError) as exc:
                log.info(
                    "%s: forward to %s:%d failed: %s",
                    label,
                    forward.target_host,
                    forward.target_port,
                    exc,
                )
                return
            _Passenger(self, channel, None, label, host)
            handed = True
        finally:
            conn.close()
            if not handed:
                self.counters.open -= 1

    def retarget(self, forward: Forward) -> None:
        """Serve ``forward`` (same mouth) from now on; drop connections it would not allow."""
        old, self.forward = self.forward, forward
        changed = (old.target_host, old.target_port) != (forward.target_host, forward.target_port)

        def dropped(host: str) -> bool:
            return changed or bool(host and not forward.admits(ipaddress.ip_address(host)))

        for passenger in list(self.passengers):
            if dropped(passenger.peer):
                passenger.end()
        for task, host in list(self.waiting.items()):
            if dropped(host):
                task.cancel()

    def abort_clients(self) -> list[asyncio.Task[None]]:
        """End every connection (closing its mux connection ends its channel)."""
        for passenger in list(self.passengers):
            passenger.end()
        tasks = list(self.waiting)
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        listener, self.listener = self.listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        tasks = self.abort_clients()
        if tasks:
            await asyncio.wait(tasks, timeout=0.5)
