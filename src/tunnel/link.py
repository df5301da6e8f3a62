"""The seam between mouths and links: the :class:`Link` protocol both backends implement,
and the :class:`Flow` a mouth hands to a link.

A mouth (:mod:`tunnel.mouths`) accepts, filters and counts connections and holds them
while no link is up; the link of either backend (:mod:`tunnel.backends`) carries each one
to its forward's target and says how it ended. Nothing else passes between the two, so a
third kind of link, or a datagram flow (UDP forwarding: a flow whose ``sock`` is the
mouth's datagram socket and whose ``host``/``port`` name the client), lands on the same
three calls: ``carry``, ``wait_closed``, ``close``.

How a flow ends is decided in one place (:meth:`Flow.finish`): ``cut`` names why the
tunnel could not finish it (the link was lost, the gateway refused the channel, no link
came in time, the forward or the tunnel closed): its client socket is then closed with a
reset (:func:`before_cut_close`), on both backends. Only the target's own orderly close
(the SSH channel's EOF, then its CLOSE: RFC 4254 §5.3) reaches the client as a FIN.

Failures of a backend become :mod:`tunnel.errors` at that backend's edge, through the
error classes' own constructors (``AuthFailed.refused``, ``GatewayUnreachable.timed_out``,
``GatewayUnreachable.because``, and :class:`tunnel.hostkeys.HostKeyPolicy` for host keys):
one wording whichever backend met the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Protocol

from tunnel.errors import TunnelError
from tunnel.exec import ExecChannel
from tunnel.forwards import Forward
from tunnel.state import ForwardCounters

Traffic = tuple[int, int]
"""``(bytes out to the target, bytes in from it)``."""


class FlowOwner(Protocol):
    """Who is told when a flow ends (its mouth, which keeps the counters)."""

    def flow_ended(self, flow: Flow, cut: str | None, traffic: Traffic | None) -> None: ...

    def hold(self, flow: Flow, stale: object | None = None) -> None:
        """Hold ``flow`` until a link other than ``stale`` is up, then carry it there;
        none comes by its deadline (``wait_for_link_s`` after it was first held, however
        often it is given back): cut it."""


def before_cut_close(sock: socket.socket) -> None:
    """Make the coming close of a cut flow's client socket a reset (``SO_LINGER`` 0): the
    client sees ECONNRESET, never an EOF it could take for the end of a complete message
    or mailbox. The one place that decides how a cut flow ends on the wire."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Flow:
    """One accepted connection, from its mouth's accept to its one end.

    ``sock`` is the client's socket. ``task`` is whatever works on the flow now (the
    mouth's wait for a link, a backend's channel open): cutting the flow cancels it.
    The link that carries the flow sets ``stop`` (end it now, as cut) and may set
    ``meter`` (bytes so far, when they are counted outside this process).
    ``held_since``: when its owner first held it (loop time; ``None``: never held), the
    start of its one wait for a link, given back or not. ``early``: the client's bytes
    already read from ``sock`` when a link gave the flow back (the asyncssh backend reads
    while the channel opens; they reached no one): the next link sends them first.
    """

    __slots__ = (
        "counters",
        "done",
        "early",
        "forward",
        "held_since",
        "host",
        "meter",
        "owner",
        "port",
        "sock",
        "stop",
        "task",
    )

    def __init__(
        self,
        owner: FlowOwner,
        forward: Forward,
        sock: socket.socket,
        host: str,
        port: int,
        counters: ForwardCounters,
    ) -> None:
        self.owner = owner
        self.forward = forward
        self.sock = sock
        self.host = host
        self.port = port
        self.counters = counters
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.stop: Callable[[str], None] | None = None
        self.meter: Callable[[], Traffic | None] | None = None
        self.held_since: float | None = None
        self.early = b""

    def finish(self, cut: str | None, traffic: Traffic | None = None) -> None:
        """Report the end once: ``cut`` says why the tunnel could not finish the flow
        (``None``: the target or the client ended it); ``traffic`` is what it carried,
        when that was counted outside this process."""
        if self.done:
            return
        self.done = True
        # The link's callbacks refer back to the flow (a cycle): let go of them, so that the
        # flow is freed at once, not by the cyclic GC, which each left-over cycle runs sooner.
        self.stop = None
        self.meter = None
        self.owner.flow_ended(self, cut, traffic)

    def give_back(self, link: object) -> None:
        """``link`` cannot take the flow and nothing of it reached the target: no channel
        was opened for it (at most a CHANNEL_OPEN sent, never confirmed), no byte of the
        client's was sent and none written to it (unread, the client's bytes wait in the
        kernel, or in :attr:`early`). Held by its owner for the next link, as a
        connection that comes while the link is down is, instead of cut; within the
        deadline of its first hold, not a new one."""
        self.stop = None
        self.meter = None
        self.owner.hold(self, link)

    def cut(self, why: str) -> None:
        """End the flow now, as cut: through the link carrying it, else here."""
        if self.done:
            return
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self.stop is not None:
            self.stop(why)
            return
        before_cut_close(self.sock)
        self.sock.close()
        self.finish(why)


class LinkEnd(Protocol):
    """What the supervisor needs of an established link: its end, awaited or forced."""

    async def wait_closed(self) -> TunnelError:
        """Return (with the reason, a :class:`tunnel.errors.LinkLost`) once the link ended."""
        ...

    async def aclose(self, grace_s: float) -> None:
        """End the link, forcing it after ``grace_s``."""
        ...


class Link(LinkEnd, Protocol):
    """An established link to one gateway, of either backend."""

    gateway: str

    def carry(self, flow: Flow) -> None:
        """Take ``flow`` (its socket is the link's from now on) and carry it to
        ``flow.forward``'s target; report its end with :meth:`Flow.finish`, once. A link
        that cannot take it at all, nothing of it having reached the gateway, may give it
        back instead (:meth:`Flow.give_back`): it is then held for the next link."""
        ...

    def close(self) -> None:
        """Begin ending the link (and every flow it carries) without waiting."""
        ...

    def path(self) -> tuple[str, str] | None:
        """``(local address, gateway address)`` of the link's connection, where known."""
        ...

    async def probe(self, timeout_s: float) -> bool:
        """Ask the gateway for a sign of life now: True when it answered in ``timeout_s``."""
        ...

    async def open_exec(self, command: str) -> ExecChannel:
        """Run ``command`` on the gateway (through the user's login shell, as ``ssh host
        COMMAND`` does) on a session channel of this link; what a UDP forward's relay runs
        in. Raises :class:`tunnel.errors.TunnelError` when the channel cannot be opened."""
        ...
