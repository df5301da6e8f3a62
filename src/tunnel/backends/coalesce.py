"""Small SSH packets written in one turn of the event loop leave in one write.

asyncssh writes every packet to its transport as it is made (``SSHConnection._send``):
one ``write()`` per packet, and each write wakes the gateway's sshd. A tunneled
connection's life is four small packets (``CHANNEL_OPEN``, the client's data, ``EOF``,
``CLOSE``) and a burst of connections or a teardown beside the next connection's open
makes several in the same turn of the loop. OpenSSH itself queues its output and writes
it once per iteration of its poll loop; :class:`CoalescingTransport` does the same for
small packets: they are held and written together (one ``write``) when the turn ends.
A packet of :data:`BULK_MIN` bytes or more (bulk data) is written at once, after what
is held, so bulk keeps its pipelining with sshd (batching 32 KiB packets into one
``writev`` made bulk up slower: /work/notes/s2/tunnelperf.md).

The wrapper keeps the order of every byte: a held packet always leaves before any later
one, before ``write_eof`` and ``close``; ``abort`` (asyncssh's end after a ``DISCONNECT``)
first tries the held bytes, as the plain transport would have written them already.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tunnel.sshlib import asyncssh

BULK_MIN = 4096
"""Packets at least this large are written at once (data, not control)."""


class CoalescingTransport:
    """An asyncio transport whose small writes are held until the loop's turn ends."""

    __slots__ = ("held", "loop", "scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.held: list[bytes] = []
        self.scheduled = False

    def write(self, data: bytes) -> None:
        if len(data) >= BULK_MIN:
            if self.held:
                self.held.append(data)
                self.flush()
            else:
                self.transport.write(data)
            return
        self.held.append(data)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is held, in one write (the end of the turn, or before anything
        that must follow it)."""
        self.scheduled = False
        held = self.held
        if not held:
            return
        self.held = []
        if self.transport.is_closing():
            return
        self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.flush()
        self.transport.abort()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(len(data) for data in self.held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def coalesce_writes(conn: asyncssh.SSHClientConnection) -> bool:
    """Route ``conn``'s writes through a :class:`CoalescingTransport` from now on (after
    its handshake). Returns whether it is in place: not when asyncssh's connection keeps
    its transport elsewhere than ``_transport`` (checked against asyncssh 2.14-2.x)."""
    transport = getattr(conn, "_transport", None)
    if transport is None or isinstance(transport, CoalescingTransport):
        return isinstance(transport, CoalescingTransport)
    if not callable(getattr(transport, "write", None)):
        return False
    coalescing = CoalescingTransport(transport, asyncio.get_running_loop())
    conn._transport = cast(asyncio.Transport, coalescing)
    return True
