"""A TTL with its most significant bit set is treated as zero (RFC 2181 §8): not cached.

No real server among the test peers sends such a TTL (dnsmasq does not), so the upstream
is the tests' hand-written one (:class:`~tests.dns.conftest.FakeUpstream`) on 127.0.0.1;
the client is dnspython. Each reply kind is asked twice: both questions must reach the
upstream, and nothing is served from the cache. A TTL just below the bit is cached (the
same reply shape, so the test can tell the two apart).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from blitzdns import lookup
from tests.dns.conftest import FakeUpstream, ServerThread, make_config

#: A marker TTL dnspython writes, patched to the drawn one in the reply's bytes.
MARK = 0x01020304
ADDRESS = "192.0.2.80"


def reply_with(query: bytes, kind: str, ttl: int) -> bytes:
    """An upstream reply of ``kind`` whose TTL (every one, or the SOA's MINIMUM) is ``ttl``."""
    asked = dns.message.from_wire(query)
    reply = dns.message.make_response(asked)
    name = asked.question[0].name
    if kind == "one answer":
        reply.answer.append(dns.rrset.from_text(name, MARK, "IN", "A", ADDRESS))
    elif kind == "answers":
        reply.answer.append(dns.rrset.from_text(name, MARK, "IN", "A", ADDRESS, "192.0.2.81"))
        reply.additional.append(dns.rrset.from_text("extra.ttl.test.", 300, "IN", "TXT", "x"))
    else:  # NXDOMAIN, the SOA's MINIMUM marked
        reply.set_rcode(dns.rcode.NXDOMAIN)
        soa = f"ns.ttl.test. host.ttl.test. 1 2 3 4 {MARK}"
        reply.authority.append(dns.rrset.from_text("ttl.test.", 300, "IN", "SOA", soa))
    wire = reply.to_wire()
    assert struct.pack(">I", MARK) in wire
    return wire.replace(struct.pack(">I", MARK), struct.pack(">I", ttl))


@pytest.mark.parametrize("kind", ["one answer", "answers", "nxdomain minimum"])
@pytest.mark.parametrize("ttl", [0x80000000, 0xFFFFFFFF, 0x7FFFFFFF])
def test_a_reply_with_a_top_bit_ttl_is_not_served_from_the_cache(
    kind: str,
    ttl: int,
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    def answer(sock: socket.socket, query: bytes, peer: Any) -> None:
        sock.sendto(reply_with(query, kind, ttl), peer)

    upstream = fake_upstream_factory(on_udp=answer)
    stub = resolver_factory(make_config(), [upstream.endpoint])
    name = f"{kind.replace(' ', '-')}.ttl.test."
    replies = []
    for _ in range(2):
        asked = dns.message.make_query(name, "A", use_edns=False)
        replies.append(dns.query.udp(asked, "127.0.0.1", 5, port=stub.port))
    cached = ttl < 0x80000000
    assert len(upstream.udp_queries) == (1 if cached else 2)
    assert stub.resolver.stats.cache_hits == (1 if cached else 0)
    for got in replies:
        if kind == "nxdomain minimum":
            assert got.rcode() == dns.rcode.NXDOMAIN
        else:
            assert {r.to_text() for r in got.answer[0]} >= {ADDRESS}
            if not cached:  # passed on as it came: dnspython reads the TTL as zero too
                assert got.answer[0].ttl == 0


@pytest.mark.parametrize(
    ("ttl", "seen"), [(0x80000000, 0), (0xFFFFFFFF, 0), (0x7FFFFFFF, 0x7FFFFFFF)]
)
def test_the_guards_lookups_read_a_top_bit_ttl_as_zero(ttl: int, seen: int) -> None:
    """The guard's own lookups (:func:`blitzdns.lookup.parse_reply`, whose TTLs say how long
    an address stays refused): a top-bit TTL would keep an address for decades."""
    query = dns.message.make_query("mail.ttl.test.", "A")
    query.id = 4242
    reply = reply_with(query.to_wire(), "one answer", ttl)
    (record,) = lookup.parse_reply(reply, 4242).answers
    assert (record.value, record.ttl) == (ADDRESS, seen)
