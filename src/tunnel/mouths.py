"""The mouths: our own listeners, one per forward, each bound once and outliving any
number of links.

A mouth accepts (one connection per wake-up, in the listener's reader callback: no task
per connection), drops peers its forward does not admit, counts, and hands each connection
as a :class:`tunnel.link.Flow` to the current link (:meth:`tunnel.link.Link.carry`). While no
link is up a connection is held (``wait_for_link_s``, the client's bytes waiting in the
kernel) and then cut: it is never connected to the target any other way, the tunnel fails
closed. A link that cannot take a connection at all (its ssh master just died) gives it
back (:meth:`tunnel.link.Flow.give_back`): it is held for the next link the same way.
The link reports every flow's end back here (:meth:`Mouth.flow_ended`), which is where
the counters and the log line of a cut connection are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import errno
import ipaddress
import logging
import socket
import sys
from typing import Protocol

from tunnel.errors import MouthBindError
from tunnel.forwards import Forward, mouth_ip
from tunnel.link import Flow, Link, Traffic
from tunnel.state import ForwardCounters, ForwardState

log = logging.getLogger("tunnel.mouths")

LISTEN_BACKLOG = 1024
#: Out of descriptors, a mouth stops accepting this long (the listener stays readable, so
#: retrying at once would spin): the new connections wait in the backlog meanwhile.
ACCEPT_PAUSE_S = 0.25
NODELAY_INHERITED = sys.platform.startswith("linux")
"""Linux: a connection accepted from a listener with ``TCP_NODELAY`` has it too (the
listener's TCP state is cloned), so it is set once, on the listener, not per connection
(tests/tunnel/test_mouth_accept.py checks the accepted socket). Elsewhere: per connection."""
CLOSE_WAIT_S = 0.5
"""How long closing a mouth waits for the tasks of its connections to end."""


class LinkSource(Protocol):
    """What a mouth needs from the tunnel: the current link, or a bounded wait for one."""

    @property
    def link(self) -> Link | None: ...

    async def wait_link(
        self, stale: object | None = None, since: float | None = None
    ) -> Link | None:
        """The link up, waiting while there is none or it is ``stale``, until
        ``wait_for_link_s`` after ``since`` (loop time; ``None``: now)."""
        ...

    def flow_ended(self) -> None:
        """A connection of some mouth ended (memory may be given back after a burst)."""


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


def bind_socket(host: str, port: int, *, udp: bool = False) -> socket.socket:
    """A listening TCP socket (or, with ``udp``, a bound UDP socket) on ``host:port``, or
    :class:`MouthBindError` saying why not."""
    address = mouth_ip(host)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    try:
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                # As ssh -L does for the sockets it accepts (channels.c): no Nagle delay.
                # Inherited by every accepted connection (NODELAY_INHERITED).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(address), port))
        if not udp:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{address}]" if address.version == 6 else str(address)
        reason = _bind_reason(exc, port)
        raise MouthBindError(
            f"cannot {'bind UDP' if udp else 'listen on'} {shown}:{port}: {reason}",
            address=str(address),
            port=port,
            reason=reason,
        ) from None
    return sock


def peer_host(address: object) -> str:
    """A peer's address as text, without an IPv6 ``%zone`` (``fe80::1%eth0`` → ``fe80::1``)."""
    return str(address).partition("%")[0]


class Mouth:
    """One listener for one forward, and the connections it accepted."""

    def __init__(self, forward: Forward, source: LinkSource) -> None:
        self.forward = forward
        self.source = source
        self.counters = ForwardCounters()
        self.flows: set[Flow] = set()
        self.listener: socket.socket | None = None
        #: Set by close(): nothing accepted from then on is carried for a removed forward.
        self.closed = False
        #: Out of descriptors at the last accept (said once, until an accept works again).
        self.starved = False
        self._family = int(socket.AF_INET)

    def state(self) -> ForwardState:
        """This forward's counters, with the bytes of open connections that are counted
        outside this process (``Flow.meter``) read now."""
        counters = self.counters
        metered = [flow.meter for flow in self.flows if flow.meter is not None]
        if metered:
            counters = copy.copy(counters)
            for meter in metered:
                traffic = meter()
                if traffic is not None:
                    counters.bytes_out += traffic[0]
                    counters.bytes_in += traffic[1]
        return ForwardState.of(self.forward, counters)

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

    async def bind(self) -> None:
        """Listen now; raises :class:`MouthBindError`."""
        if self.listener is not None:
            return
        self.closed = False
        if not self.forward.is_loopback:
            log.warning(
                "mouth %s:%d is not on loopback: reachable from other machines%s",
                self.forward.mouth_host,
                self.forward.mouth_port,
                "" if self.forward.allowed_peers is None else " in the allowed networks",
            )
        self.listener = bind_socket(self.forward.mouth_host, self.forward.mouth_port)
        self._family = int(self.listener.family)
        asyncio.get_running_loop().add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        """One connection per wake-up: the listener is watched level-triggered, so the
        loop wakes this again at once while more wait, and a sequential client does not
        pay a second ``accept`` that fails (EAGAIN, an exception) for every connection.
        The socket is made from the descriptor with the listener's family as a plain int
        (stdlib ``accept()`` looks both up as enums: ~7 us per connection)."""
        listener = self.listener
        if listener is None or self.closed:
            return
        try:
            fd, peer = listener._accept()  # type: ignore[attr-defined]  # what accept() calls
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._pause_accepting(exc)
            else:
                log.warning("mouth %s:%d: accept failed: %s", *self.forward.mouth, exc)
            return
        conn = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        if self.starved:
            self.starved = False
            log.info("mouth %s:%d: accepting again", *self.forward.mouth)
        self.take(conn, peer_host(peer[0]), int(peer[1]), accepted=True)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: say so once, and accept again after ``ACCEPT_PAUSE_S``."""
        if not self.starved:
            self.starved = True
            log.error(
                "mouth %s:%d: out of file descriptors (%s); new connections wait",
                *self.forward.mouth,
                exc.strerror,
            )
        loop = asyncio.get_running_loop()
        if self.listener is not None:
            loop.remove_reader(self.listener.fileno())
        loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self.listener is not None and not self.closed:
            asyncio.get_running_loop().add_reader(self.listener.fileno(), self._accept)

    def take(self, conn: socket.socket, host: str, port: int, *, accepted: bool = False) -> None:
        """Carry a connection (or hold it until a link is up); refuse it if the peer is
        not admitted or the mouth is closed. ``accepted``: it came from this mouth's
        listener (so has ``TCP_NODELAY`` already, where that is inherited). The socket's
        blocking mode is left to the link (the asyncssh link's client side sets it, the
        openssh link before its hand-over) and nothing reads the socket before."""
        if self.closed or self.refuses(host, port):
            conn.close()  # never carried, so not cut: a plain close, as before the accept
            return
        if not (accepted and NODELAY_INHERITED):
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counters.open += 1
        self.counters.total += 1
        flow = Flow(self, self.forward, conn, host, port, self.counters)
        self.flows.add(flow)
        link = self.source.link
        if link is not None:
            link.carry(flow)
            return
        self.hold(flow)

    def hold(self, flow: Flow, stale: object | None = None) -> None:
        """Hold ``flow`` until a link (other than ``stale``, one that gave it back) is up;
        its deadline is that of its first hold: a flow given back by link after dying
        link waits no longer in all than one that found no link."""
        loop = asyncio.get_running_loop()
        if flow.held_since is None:
            flow.held_since = loop.time()
        flow.task = loop.create_task(self._hold(flow, stale))

    async def _hold(self, flow: Flow, stale: object | None) -> None:
        """Wait (bounded) for a link, then carry; none came: cut (fail closed)."""
        link = await self.source.wait_link(stale, flow.held_since)
        flow.task = None
        if flow.done:
            return
        if link is None:
            flow.cut("link is down; connection cut (failing closed)")
            return
        link.carry(flow)

    def flow_ended(self, flow: Flow, cut: str | None, traffic: Traffic | None) -> None:
        """A connection ended (:meth:`Flow.finish`): count it, and log why if it was cut."""
        if flow not in self.flows:
            return
        self.flows.discard(flow)
        self.source.flow_ended()
        self.counters.open -= 1
        if traffic is not None:
            self.counters.bytes_out += traffic[0]
            self.counters.bytes_in += traffic[1]
        if cut is not None:
            self.counters.cut += 1
            log.info("%s: %s", self.label(flow.host), cut)

    def retarget(self, forward: Forward) -> None:
        """Serve ``forward`` (same mouth) from now on; cut the connections it would not
        carry (all when the target changed, else those from peers it no longer admits)."""
        old, self.forward = self.forward, forward
        changed = (old.target_host, old.target_port) != (forward.target_host, forward.target_port)
        for flow in list(self.flows):
            if changed or (flow.host and not forward.admits(ipaddress.ip_address(flow.host))):
                flow.cut("forward changed; connection cut")

    def cut_all(self, why: str) -> list[asyncio.Task[None]]:
        """Cut every connection; return the tasks that were working on them."""
        tasks = [flow.task for flow in self.flows if flow.task is not None]
        for flow in list(self.flows):
            flow.cut(why)
        return [task for task in tasks if not task.done()]

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        self.closed = True
        listener, self.listener = self.listener, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        tasks = self.cut_all("mouth closed; connection cut")
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
