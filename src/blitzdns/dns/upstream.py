"""Asking the upstream resolvers: random port and ID, strict reply checks, TCP retry, failover.

Each attempt uses a fresh UDP socket connected to one upstream: the kernel picks a random
ephemeral source port for it, and drops datagrams from any other address or port; the
message gets a fresh random ID (``secrets``). A datagram is accepted only when it carries
that ID, the QR bit and the same question (:func:`~blitzdns.dns.fastpath.answers_question`;
dnspython's ``query.py`` and unbound check the same) — anything else is counted and
ignored, and the wait goes on. Together that is the spoofing resistance of dnsmasq and
unbound: an off-path attacker must guess 16 bits of port and 16 bits of ID in the window.

A truncated reply (TC, RFC 1035 §4.2.1) is asked again over TCP (RFC 7766 §5). Upstreams
are tried healthiest first; with a single upstream the query is retransmitted once. The
whole exchange is bounded by ``timeout_s``: a dead upstream means SERVFAIL in time.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Sequence

from blitzdns.config import Endpoint
from blitzdns.dns.fastpath import answers_question
from blitzdns.dns.rfc import MAX_MESSAGE, TC_BYTE2
from blitzdns.dns.stats import UpstreamHealth


class Forwarder:
    """Sends queries to ``upstreams`` and tracks each one's health."""

    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        health: list[UpstreamHealth],
        timeout_s: float,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.health = health
        self.timeout_s = timeout_s

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
            except (OSError, asyncio.IncompleteReadError) as exc:
                health.failed(_describe(exc))
            else:
                health.succeeded()
                return reply
        return None

    async def _udp(
        self, endpoint: Endpoint, query: bytes, budget: float, health: UpstreamHealth
    ) -> bytes:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        message = secrets.randbits(16).to_bytes(2, "big") + query[2:]
        reply: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            while not reply.done():
                try:
                    data = sock.recv(MAX_MESSAGE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    reply.set_exception(exc)
                    return
                if answers_question(data, message):
                    reply.set_result(data)
                else:
                    health.mismatched += 1

        def expire() -> None:
            if not reply.done():
                reply.set_exception(TimeoutError())

        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((endpoint.host, endpoint.port))
            loop.add_reader(sock.fileno(), readable)
            timer = loop.call_later(budget, expire)
            try:
                sock.send(message)
                return await reply
            finally:
                timer.cancel()
                loop.remove_reader(sock.fileno())

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
