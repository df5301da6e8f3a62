"""Mouths for the ``openssh`` backend: accept, filter, hand the socket to the ssh master.

The listener and the ``allowed_peers`` check are ours, as with the asyncssh backend; after
that the accepted socket's descriptor goes to the master (:meth:`MuxLink.open_stdio_fwd`)
and our copy is closed, so the bytes flow in OpenSSH's C code only. We keep the mux
connection open until the master closes it (the channel ended), which is when the
connection stops counting as open. Bytes are not seen here: the counters stay 0.

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
from tunnel.openssh import MuxChannel, MuxLink

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


class MuxMouth(Mouth):
    """One listener whose connections are carried by the ssh master."""

    def __init__(self, forward: Forward, source: MuxLinkSource) -> None:
        super().__init__(forward, source)
        self.mux_source = source
        self.listener: socket.socket | None = None
        self.accepter: asyncio.Task[None] | None = None
        self.served: dict[asyncio.Task[None], str] = {}

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
        self.accepter = asyncio.get_running_loop().create_task(
            self._accept(self.listener), name=f"tunnel-mouth-{self.forward.mouth_port}"
        )

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:
                log.warning("mouth %s:%d: accept failed: %s", *self.forward.mouth, exc)
                await asyncio.sleep(0.1)
                continue
            host = str(peer[0]).partition("%")[0]
            forward = self.forward
            if forward.allowed_peers is not None and not forward.admits(ipaddress.ip_address(host)):
                self.counters.rejected += 1
                log.warning(
                    "mouth %s:%d: refused connection from %s:%d (not an allowed peer)",
                    *forward.mouth,
                    host,
                    peer[1],
                )
                _abort(conn)
                continue
            label = f"{forward.name or forward.mouth_host}:{forward.mouth_port} ← {host}"
            task = loop.create_task(self._serve(conn, forward, label))
            self.served[task] = host
            task.add_done_callback(self.served.pop)

    async def _serve(self, conn: socket.socket, forward: Forward, label: str) -> None:
        counters = self.counters
        counters.open += 1
        counters.total += 1
        channel: MuxChannel | None = None
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
            conn.close()
            await channel.wait_closed()
        except OSError as exc:
            log.debug("%s: mux connection ended: %s", label, exc)
        finally:
            counters.open -= 1
            conn.close()
            if channel is not None:
                channel.close()

    def retarget(self, forward: Forward) -> None:
        """Serve ``forward`` (same mouth) from now on; drop connections it would not allow."""
        old, self.forward = self.forward, forward
        changed = (old.target_host, old.target_port) != (forward.target_host, forward.target_port)
        for task, host in list(self.served.items()):
            if changed or (host and not forward.admits(ipaddress.ip_address(host))):
                task.cancel()

    def abort_clients(self) -> list[asyncio.Task[None]]:
        """Cancel every connection (closing its mux connection ends its channel)."""
        tasks = list(self.served)
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        accepter, self.accepter = self.accepter, None
        if accepter is not None:
            accepter.cancel()
        tasks = self.abort_clients()
        waiting = [t for t in (accepter, *tasks) if t is not None]
        if waiting:
            await asyncio.wait(waiting, timeout=0.5)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
