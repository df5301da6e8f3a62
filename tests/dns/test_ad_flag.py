"""The AD bit reaches only a client that asked for it (RFC 6840 §5.8).

A validating resolver sets AD in a reply only when the query had AD or DO (§5.8; §5.7 lets
a query set AD to ask for it). The stub passes
a client's AD upstream, so a reply to an AD query may carry AD; it must not be served from
the cache, or shared in flight, to a client that set neither. The upstream here is a real
dnsmasq with ``--proxy-dnssec`` (it passes AD both ways; its cache is off) in front of a
hand-written validator answering as RFC 6840 §5.8 says, since no validating resolver is
among the test peers; the clients are dnspython and dig. A validator that sets AD in every
reply (as some upstreams do) must not make the stub set it for a client that asked with
neither AD nor DO: the stub clears it, in the first reply and the cached one.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from tests.dns.conftest import FakeUpstream, ServerThread, make_config
from tests.peers import Dnsmasq, dig, need_dig, wait_for

ZONE = "ad.test"
VALIDATED_ADDRESS = "192.0.2.44"


def validated_reply(query: bytes, *, always_ad: bool = False) -> bytes:
    """A validating resolver's reply: the address, AD set iff the query had AD or DO (or,
    with ``always_ad``, in every reply)."""
    asked = dns.message.from_wire(query)
    reply = dns.message.make_response(asked)
    reply.answer.append(
        dns.rrset.from_text(asked.question[0].name, 300, "IN", "A", VALIDATED_ADDRESS)
    )
    if always_ad or asked.flags & dns.flags.AD or asked.ednsflags & dns.flags.DO:
        reply.flags |= dns.flags.AD
    else:
        reply.flags &= ~dns.flags.AD
    return reply.to_wire()


def answer_at_once(sock: socket.socket, query: bytes, peer: Any) -> None:
    sock.sendto(validated_reply(query), peer)


def answer_always_ad(sock: socket.socket, query: bytes, peer: Any) -> None:
    sock.sendto(validated_reply(query, always_ad=True), peer)


def query(name: str, *, ad: bool, edns: int = -1, do: bool = False) -> dns.message.Message:
    made = dns.message.make_query(name, "A", use_edns=edns, want_dnssec=do)
    if ad:
        made.flags |= dns.flags.AD
    else:
        made.flags &= ~dns.flags.AD
    return made


def ad_of(reply: dns.message.Message) -> bool:
    return bool(reply.flags & dns.flags.AD)


@pytest.fixture(params=[answer_at_once, answer_always_ad], ids=["validator", "always-ad"])
def chain(
    request: pytest.FixtureRequest,
    dnsmasq_factory: Callable[..., Dnsmasq],
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> ServerThread:
    """The stub → dnsmasq (``--proxy-dnssec``) → the validator for ``ad.test`` (one as RFC
    6840 §5.8 says, one that sets AD in every reply)."""
    validator = fake_upstream_factory(on_udp=request.param)
    upstream = dnsmasq_factory(
        ["--proxy-dnssec", f"--server=/{ZONE}/127.0.0.1#{validator.endpoint.port}"]
    )
    return resolver_factory(make_config(), [upstream.endpoint])


# (AD, EDNS version or -1, DO) of a query; AD is due in the reply when AD or DO is set.
FLAG_SETS = [
    (True, -1, False),
    (False, -1, False),
    (True, 0, False),
    (False, 0, False),
    (False, 0, True),
    (True, 0, True),
]


@pytest.mark.parametrize("first", FLAG_SETS, ids=str)
def test_a_cached_reply_carries_ad_only_to_a_client_that_asked(
    chain: ServerThread, first: tuple[bool, int, bool]
) -> None:
    """The first query fills the cache; every flag set asked after it gets AD exactly when
    it set AD or DO, whether it is a hit or a miss of its own (twice each: the second is
    a cache hit, the first may be one)."""
    name = f"n{FLAG_SETS.index(first)}.{ZONE}."
    ad, edns, do = first
    got = dns.query.udp(query(name, ad=ad, edns=edns, do=do), "127.0.0.1", 5, port=chain.port)
    assert got.answer and ad_of(got) == (ad or do)
    for _ in range(2):
        for ad, edns, do in FLAG_SETS:
            asked = query(name, ad=ad, edns=edns, do=do)
            got = dns.query.udp(asked, "127.0.0.1", 5, port=chain.port)
            assert got.answer[0][0].to_text() == VALIDATED_ADDRESS
            assert ad_of(got) == (ad or do), (first, (ad, edns, do), got.flags)
    assert chain.resolver.stats.cache_hits >= len(FLAG_SETS)


def test_dig_without_ad_gets_no_ad_after_dig_with_it(chain: ServerThread) -> None:
    """dig sets AD by default (``+adflag``); ``+noadflag`` asks without it."""
    need_dig()
    name = f"dig.{ZONE}"
    with_ad = dig(chain.endpoint, name, "+adflag", "+noedns", "+noall", "+comments")
    assert " ad" in with_ad and "status: NOERROR" in with_ad, with_ad
    for _ in range(2):
        flags = dig(chain.endpoint, name, "+noadflag", "+noedns", "+noall", "+comments")
        assert "flags: qr rd ra;" in flags and "status: NOERROR" in flags, flags
        with_ad = dig(chain.endpoint, name, "+adflag", "+noedns", "+noall", "+comments")
        assert " ad" in with_ad and "status: NOERROR" in with_ad, with_ad


def test_a_query_in_flight_with_ad_is_not_shared_with_one_without(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    """Two clients ask the same question at once, one with AD, one without: each gets the
    upstream's reply to its own flags (two upstream queries), not the other's."""
    held: list[tuple[bytes, Any]] = []
    validator = fake_upstream_factory(on_udp=lambda _sock, asked, peer: held.append((asked, peer)))
    stub = resolver_factory(make_config(), [validator.endpoint])
    name = f"flight.{ZONE}."
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for client, ad in zip(clients, (True, False), strict=True):
            client.settimeout(5)
            client.sendto(query(name, ad=ad).to_wire(), ("127.0.0.1", stub.port))
        # Both flag sets held upstream (counters alone race: one query can be counted as
        # forwarded before its upstream send, and a retry repeats one flag set).
        wait_for(
            lambda: (
                {bool(dns.message.from_wire(asked).flags & dns.flags.AD) for asked, _ in held}
                == {True, False}
            ),
            "both flag sets asked upstream",
        )
        for asked, peer in list(held):
            validator.udp.sendto(validated_reply(asked), peer)
        replies = [dns.message.from_wire(client.recv(4096)) for client in clients]
    finally:
        for client in clients:
            client.close()
    assert [reply.rcode() for reply in replies] == [dns.rcode.NOERROR] * 2, replies
    assert [reply.answer[0][0].to_text() for reply in replies] == [VALIDATED_ADDRESS] * 2
    assert [ad_of(reply) for reply in replies] == [True, False]
    # one upstream query per flag set (a retry, under load, would only repeat one)
    assert {bool(dns.message.from_wire(asked).flags & dns.flags.AD) for asked, _ in held} == {
        True,
        False,
    }
