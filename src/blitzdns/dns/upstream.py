"""Asking the upstream resolvers: random port and ID, strict reply checks, TCP retry, failover.

Each attempt goes out on a UDP socket connected to one upstream, chosen at random from a
bounded pool (:class:`SocketPool`, like dnsmasq's random-port sockets): the kernel gave
each a random ephemeral source port, and drops datagrams from any other address or port;
the message gets a fresh random ID (``secrets``) every time. A datagram is accepted only
when it carries the ID of a query waiting on that socket, the QR bit and the same
question (:func:`~blitzdns.dns.fastpath.answers_question`; dnspython's ``query.py`` and
unbound check the same) — anything else, a late reply to an earlier query included, is
counted and ignored, and the wait goes on. Together that is the spoofing resistance of
dnsmasq and unbound: an off-path attacker must guess the port and 16 bits of ID in the
window.

The pool bounds the descriptors forwarding uses (per upstream, whatever the load), and
reusing sockets saves three system calls per query. When the process is out of
descriptors anyway (EMFILE / ENFILE), the failure is local, not the upstream's: it is
reported through ``on_local_error`` and the upstream's health is left alone.

A truncated reply (TC, RFC 1035 §4.2.1) is asked again over TCP (RFC 7766 §5). Upstreams
are tried healthiest first; with a single upstream the query is retransmitted once. The
whole exchange is bounded by ``timeout_s``: a dead upstream means SERVFAIL in time.
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import socket
from collections.abc import Callable, Sequence

from blitzdns.config import Endpoint
from blitzdns.dns.fastpath import answers_question
from blitzdns.dns.rfc import MAX_MESSAGE, TC_BYTE2
from blitzdns.dns.stats import UpstreamHealth

#: Random-port sockets kept open per upstream (dnsmasq keeps 64 over all servers).
SOCKETS_PER_UPSTREAM = 16
#: Queries one socket carries before it is retired (closed once its last reply is in).
SOCKET_USES = 64
#: The process (or the system) is out of descriptors: not the upstream's fault.
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


class _Channel:
    """One connected UDP socket and the queries waiting on it, told apart by ID."""

    def __init__(self, endpoint: Endpoint, health: UpstreamHealth) -> None:
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((endpoint.host, endpoint.port))
        except BaseException:
            self.sock.close()
            raise
        self.health = health
        self.uses = 0
        self.retired = False
        #: ID → (the message sent, the future its reply goes to).
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, query: bytes) -> tuple[int, asyncio.Future[bytes]]:
        """Send ``query`` under a fresh random ID no other waiting query here has."""
        while True:
            query_id = secrets.randbits(16)
            if query_id not in self.waiting:
                break
        message = query_id.to_bytes(2, "big") + query[2:]
        reply: asyncio.Future[bytes] = self._loop.create_future()
        self.waiting[query_id] = (message, reply)
        self.uses += 1
        try:
            self.sock.send(message)
        except BaseException:
            self.forget(query_id)
            raise
        return query_id, reply

    def forget(self, query_id: int) -> None:
        self.waiting.pop(query_id, None)
        if self.retired and not self.waiting:
            self.close()

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:
                # ICMP unreachable and the like: about the upstream, so for every query.
                for _, reply in self.waiting.values():
                    if not reply.done():
                        reply.set_exception(exc)
                return
            found = self.waiting.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
            if found is not None and not found[1].done() and answers_question(data, found[0]):
                found[1].set_result(data)
            else:
                self.health.mismatched += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class SocketPool:
    """Up to :data:`SOCKETS_PER_UPSTREAM` random-port sockets per upstream, shared by queries.

    Each query goes out on one of them chosen at random (``secrets``), or on a new one
    while there are fewer: so an attacker cannot tell which port the next query uses,
    and a socket is retired after :data:`SOCKET_USES` queries, so the ports keep changing.
    """

    def __init__(self, per_upstream: int = SOCKETS_PER_UPSTREAM, uses: int = SOCKET_USES) -> None:
        self.per_upstream = per_upstream
        self.uses = uses
        self._open: dict[Endpoint, list[_Channel]] = {}
        self._retired: set[_Channel] = set()
        #: Sockets made since the start (the tests read it).
        self.created = 0

    def take(self, endpoint: Endpoint, health: UpstreamHealth) -> _Channel:
        """A channel to ``endpoint``; OSError when no socket can be made."""
        channels = self._open.setdefault(endpoint, [])
        if len(channels) < self.per_upstream:
            channel = _Channel(endpoint, health)
            self.created += 1
            channels.append(channel)
        else:
            channel = channels[secrets.randbelow(len(channels))]
        if channel.uses + 1 >= self.uses:
            channels.remove(channel)
            channel.retired = True
            self._retired = {c for c in self._retired if c.sock.fileno() >= 0}
            self._retired.add(channel)
        return channel

    @property
    def sockets(self) -> int:
        """Sockets open now (those retired but still awaiting a reply included)."""
        open_now = sum(len(channels) for channels in self._open.values())
        retired = sum(1 for channel in self._retired if channel.sock.fileno() >= 0)
        return open_now + retired

    def close(self) -> None:
        """Close every socket; queries still waiting on one time out."""
        for channel in (*(c for cs in self._open.values() for c in cs), *self._retired):
            channel.close()
        self._open.clear()
        self._retired.clear()


class Forwarder:
    """Sends queries to ``upstreams`` and tracks each one's health."""

    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        health: list[UpstreamHealth],
        timeout_s: float,
        *,
        on_local_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.health = health
        self.timeout_s = timeout_s
        self.pool = SocketPool()
        self.on_local_error = on_local_error

    def close(self) -> None:
        """Close the idle sockets; those in use close when their query ends."""
        self.pool.close()

    def _order(self) -> list[int]:
        """Healthy upstreams first, then failing ones; looping ones never."""
        usable = [i for i, h in enumerate(self.health) if not h.loops]
        usable.sort(key=lambda i: not self.health[i].ok)
        return usable * 2 if len(usable) == 1 else usable

    async def resolve(self, query: bytes) -> bytes | None:
        """The first acceptable reply to ``query`` (its ID is replaced), or None in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        attempts = self._order()
        for done, index in enumerate(attempts):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            budget = remaining / (len(attempts) - done)
            endpoint, health = self.upstreams[index], self.health[index]
            try:
                reply = await self._udp(endpoint, query, budget, health)
                if reply[2] & TC_BYTE2:
                    reply = await self._tcp(endpoint, query, deadline - loop.time(), health)
            except TimeoutError:
                health.failed(f"no reply within {budget:.2f} s", timeout=True)
            except OSError as exc:
                if exc.errno in OUT_OF_DESCRIPTORS:
                    if self.on_local_error is not None:
                        self.on_local_error(exc)
                    return None
                health.failed(_describe(exc))
            except asyncio.IncompleteReadError as exc:
                health.failed(_describe(exc))
            else:
                health.succeeded()
                return reply
        return None

    async def _udp(
        self, endpoint: Endpoint, query: bytes, budget: float, health: UpstreamHealth
    ) -> bytes:
        channel = self.pool.take(endpoint, health)
        query_id, reply = channel.send(query)
        try:
            async with asyncio.timeout(budget):
                return await reply
        finally:
            channel.forget(query_id)

    async def _tcp(
        self, endpoint: Endpoint, query: bytes, budget: float, health: UpstreamHealth
    ) -> bytes:
        """RFC 7766 §8: each message prefixed with its two-byte length."""
        if budget <= 0:
            raise TimeoutError
        message = secrets.randbits(16).to_bytes(2, "big") + query[2:]
        async with asyncio.timeout(budget):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            try:
                writer.write(len(message).to_bytes(2, "big") + message)
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    if answers_question(data, message):
                        return data
                    health.mismatched += 1
            finally:
                writer.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed the TCP connection mid-reply"
    return str(exc) or type(exc).__name__
