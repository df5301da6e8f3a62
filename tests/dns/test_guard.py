"""Forwarded replies that lead to protected names (fail closed through CNAMEs and glue).

A real dnsmasq upstream holds the protected host's real addresses (``host-record``) and
unprotected names that point at it: CNAMEs (also two hops, and one to a name under a
protected name), and MX / SRV records whose additional section carries the real
addresses. The stub must never pass those addresses on, nor cache them.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import CNAME, NS, QTYPE, RD, RR, DNSRecord
from dnslib import A as ARecord
from hypothesis import given, settings
from hypothesis import strategies as st

from blitzdns.config import Endpoint
from blitzdns.dns.guard import Plan, ReplyRecord, plan, screen, trie_pattern
from blitzdns.dns.rfc import AAAA, ADDITIONAL, ANSWER, AUTHORITY, DNAME, OPT, PTR, A
from blitzdns.dns.rfc import CNAME as CNAME_TYPE
from blitzdns.dns.table import Table, labels_of
from tests.peers import Dnsmasq, dig

from .conftest import (
    SHARED_TOML,
    FakeUpstream,
    ServerThread,
    config_protecting,
    make_config,
)
from .test_resolver import addresses, ask

REAL_V4, REAL_V6, REAL_BELOW = "129.170.16.6", "2001:db8::6", "129.170.16.7"
REAL = (REAL_V4, REAL_V6, REAL_BELOW)
UPSTREAM_RECORDS = [
    f"--host-record=dnd.dartmouth.edu,{REAL_V4},{REAL_V6}",
    f"--host-record=www.dnd.dartmouth.edu,{REAL_BELOW}",
    "--host-record=www2.fwd.test,192.0.2.50",
    "--cname=alias.dartmouth.edu,dnd.dartmouth.edu",
    "--cname=alias.fwd.test,dnd.dartmouth.edu",
    "--cname=hop.fwd.test,alias.fwd.test",
    "--cname=deep.fwd.test,www.dnd.dartmouth.edu",
    "--cname=web.fwd.test,www2.fwd.test",
    "--mx-host=mx.fwd.test,dnd.dartmouth.edu,10",
    "--srv-host=_blitz._tcp.fwd.test,dnd.dartmouth.edu,902",
]


@pytest.fixture
def upstream(dnsmasq_factory: Callable[..., Dnsmasq]) -> Dnsmasq:
    return dnsmasq_factory(UPSTREAM_RECORDS)


@pytest.fixture
def guarded(resolver_factory: Callable[..., ServerThread], upstream: Dnsmasq) -> ServerThread:
    return resolver_factory(make_config(), [upstream.endpoint])


def chain(response: dns.message.Message) -> list[tuple[str, str, str]]:
    """The answer section as (owner, type, data), lower case, in order."""
    return [
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype), rr.to_text().lower())
        for rrset in response.answer
        for rr in rrset
    ]


def assert_no_real_address(response: dns.message.Message) -> None:
    text = response.to_text()
    assert not any(address in text for address in REAL), text


@pytest.mark.parametrize("tcp", [False, True])
def test_cname_to_a_protected_name_gets_the_mouth(guarded: ServerThread, tcp: bool) -> None:
    for name in ("alias.dartmouth.edu", "Alias.Fwd.Test"):
        for _ in range(3):  # the first goes upstream; repeats must not come from a cache
            response = ask(guarded.endpoint, name, tcp=tcp)
            assert_no_real_address(response)
            assert response.rcode() == dns.rcode.NOERROR
            assert chain(response) == [
                (name.lower() + ".", "CNAME", "dnd.dartmouth.edu."),
                ("dnd.dartmouth.edu.", "A", "127.77.0.1"),
            ]
            assert not response.flags & dns.flags.AA, "the first record is not ours"


def test_two_hops_and_dig(guarded: ServerThread) -> None:
    response = ask(guarded.endpoint, "hop.fwd.test")
    assert_no_real_address(response)
    assert chain(response) == [
        ("hop.fwd.test.", "CNAME", "alias.fwd.test."),
        ("alias.fwd.test.", "CNAME", "dnd.dartmouth.edu."),
        ("dnd.dartmouth.edu.", "A", "127.77.0.1"),
    ]
    output = dig(guarded.endpoint, "+short", "alias.fwd.test")
    assert output.split() == ["dnd.dartmouth.edu.", "127.77.0.1"]


def test_aaaa_through_a_cname_is_nodata(guarded: ServerThread) -> None:
    for _ in range(2):
        response = ask(guarded.endpoint, "alias.fwd.test", "AAAA", use_edns=0)
        assert_no_real_address(response)
        assert response.rcode() == dns.rcode.NOERROR
        assert chain(response) == [("alias.fwd.test.", "CNAME", "dnd.dartmouth.edu.")]
        (soa,) = response.authority
        assert soa.rdtype == dns.rdatatype.SOA
        assert soa.name.to_text().lower() == "dnd.dartmouth.edu."
        assert response.edns == 0, "the client's EDNS is answered"


def test_cname_to_a_name_under_a_protected_name_is_nxdomain(guarded: ServerThread) -> None:
    response = ask(guarded.endpoint, "deep.fwd.test")
    assert_no_real_address(response)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert chain(response) == [("deep.fwd.test.", "CNAME", "www.dnd.dartmouth.edu.")]
    assert response.authority[0].name.to_text().lower() == "dnd.dartmouth.edu."


@pytest.mark.parametrize(
    ("name", "rdtype"), [("mx.fwd.test", "MX"), ("_blitz._tcp.fwd.test", "SRV")]
)
def test_glue_for_protected_hosts_is_stripped(
    guarded: ServerThread, name: str, rdtype: str
) -> None:
    for _ in range(2):
        response = ask(guarded.endpoint, name, rdtype)
        assert_no_real_address(response)
        (record,) = chain(response)
        assert record[1] == rdtype and record[2].endswith("dnd.dartmouth.edu.")
        assert response.additional == []
    assert addresses(ask(guarded.endpoint, "dnd.dartmouth.edu")) == ["127.77.0.1"]


def test_each_client_gets_its_own_view_through_a_cname(
    resolver_factory: Callable[..., ServerThread], upstream: Dnsmasq
) -> None:
    server = resolver_factory(make_config(SHARED_TOML), [upstream.endpoint])
    shared = Endpoint("127.0.0.5", server.port)
    lan = ask(shared, "alias.fwd.test", source="127.0.0.70")
    assert chain(lan)[-1] == ("dnd.dartmouth.edu.", "A", "127.0.0.5")
    local = ask(server.endpoint, "alias.fwd.test", source="127.0.0.1")
    assert chain(local)[-1] == ("dnd.dartmouth.edu.", "A", "127.77.0.1")
    six = ask(server.endpoint, "alias.fwd.test", "AAAA", source="127.0.0.1")
    assert chain(six)[-1] == ("dnd.dartmouth.edu.", "AAAA", "::1")


def test_reload_drops_cached_chains_to_newly_protected_names(
    resolver_factory: Callable[..., ServerThread], upstream: Dnsmasq
) -> None:
    server = resolver_factory(make_config(), [upstream.endpoint])
    before = ask(server.endpoint, "web.fwd.test")
    assert chain(before)[-1] == ("www2.fwd.test.", "A", "192.0.2.50")
    assert chain(ask(server.endpoint, "web.fwd.test")) == chain(before)
    assert server.resolver.stats.cache_hits == 1
    server.call(server.resolver.update, config_protecting("www2.fwd.test"))
    after = ask(server.endpoint, "web.fwd.test")
    assert chain(after) == [
        ("web.fwd.test.", "CNAME", "www2.fwd.test."),
        ("www2.fwd.test.", "A", "127.77.0.50"),
    ]
    assert "192.0.2.50" not in after.to_text()


# ---------------------------------------------------------------- replies no real server sends


def _fake_reply(query: bytes) -> bytes:
    """DNAME chains, stray records and broken replies for the names of ``*.odd.test``."""
    request = DNSRecord.parse(query)
    reply = request.reply()
    qname = str(request.q.qname).lower()
    real = RR("dnd.dartmouth.edu", QTYPE.A, ttl=60, rdata=ARecord(REAL_V4))
    if qname == "dnd.dname.odd.test.":
        target = b"\x09dartmouth\x03edu\x00"
        reply.add_answer(RR("dname.odd.test", 39, ttl=60, rdata=RD(target)))
        reply.add_answer(RR(request.q.qname, QTYPE.CNAME, ttl=60, rdata=CNAME("dnd.dartmouth.edu")))
        reply.add_answer(real)
    elif qname == "stray.odd.test.":
        reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=60, rdata=ARecord("192.0.2.30")))
        reply.add_answer(real)
        reply.add_auth(RR("DND.dartmouth.edu", QTYPE.NS, ttl=60, rdata=NS("ns.odd.test")))
    elif qname == "broken.odd.test.":
        reply.add_answer(real)
        return bytes(reply.pack())[:-2]
    return bytes(reply.pack())


def test_odd_replies_from_a_hand_written_upstream(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    upstream = fake_upstream_factory(
        on_udp=lambda sock, query, peer: sock.sendto(_fake_reply(query), peer)
    )
    server = resolver_factory(make_config(), [upstream.endpoint])
    dname = ask(server.endpoint, "DND.dname.odd.test")
    assert_no_real_address(dname)
    assert [rtype for _, rtype, _ in chain(dname)] == ["DNAME", "CNAME", "A"]
    assert chain(dname)[-1] == ("dnd.dartmouth.edu.", "A", "127.77.0.1")
    for _ in range(2):  # the stripped form is cached and served again
        stray = ask(server.endpoint, "stray.odd.test")
        assert_no_real_address(stray)
        assert chain(stray) == [("stray.odd.test.", "A", "192.0.2.30")]
        assert stray.authority == []
    assert len([q for q in upstream.udp_queries if b"stray" in q]) == 1
    broken = ask(server.endpoint, "broken.odd.test")
    assert broken.rcode() == dns.rcode.SERVFAIL and broken.answer == []
    assert server.resolver.stats.rewritten == 2


# ---------------------------------------------------------------- the pure core


PROTECTED = Table.from_config(make_config())


def rec(section: int, owner: str, rtype: int, target: str | None = None) -> ReplyRecord:
    return ReplyRecord(
        section, labels_of(owner), rtype, None if target is None else labels_of(target)
    )


DND = "dnd.dartmouth.edu"
MX_TYPE, NS_TYPE = 15, 2


@pytest.mark.parametrize(
    ("qname", "qtype", "records", "expected"),
    [
        ("www.fwd.test", A, [rec(ANSWER, "www.fwd.test", A)], None),
        (
            "alias.test",
            A,
            [rec(ANSWER, "alias.test", CNAME_TYPE, DND), rec(ANSWER, DND, A)],
            Plan((0,), labels_of(DND)),
        ),
        (
            "a.test",
            AAAA,
            [
                rec(ANSWER, "a.test", CNAME_TYPE, "b.test"),
                rec(ANSWER, "b.test", CNAME_TYPE, "Dasher"),
                rec(ANSWER, "dasher", AAAA),
            ],
            Plan((0, 1), (b"Dasher",)),
        ),
        (
            "dnd.dname.test",
            A,
            [rec(ANSWER, "dname.test", DNAME, "dartmouth.edu"), rec(ADDITIONAL, ".", OPT)],
            Plan((0, 1), labels_of(DND)),
        ),
        (
            "deep.test",
            A,
            [rec(ANSWER, "deep.test", CNAME_TYPE, "x.dnd"), rec(ANSWER, "x.dnd", A)],
            Plan((0,), (b"x", b"dnd")),
        ),
        (
            "stray.test",
            A,
            [rec(ANSWER, "stray.test", A), rec(ANSWER, "DND.Dartmouth.EDU", A)],
            Plan((0,)),
        ),
        (
            "mx.test",
            MX_TYPE,
            [
                rec(ANSWER, "mx.test", MX_TYPE),
                rec(AUTHORITY, "mx.test", NS_TYPE),
                rec(ADDITIONAL, DND, AAAA),
            ],
            Plan((0, 1)),
        ),
        ("alias.test", CNAME_TYPE, [rec(ANSWER, "alias.test", CNAME_TYPE, DND)], None),
        (
            "alias.test",
            CNAME_TYPE,
            [rec(ANSWER, "alias.test", CNAME_TYPE, DND), rec(ADDITIONAL, DND, A)],
            Plan((0,)),
        ),
        (
            "loop.test",
            A,
            [
                rec(ANSWER, "loop.test", CNAME_TYPE, "pool.test"),
                rec(ANSWER, "pool.test", CNAME_TYPE, "loop.test"),
            ],
            None,
        ),
        (
            "rev.test",
            PTR,
            [rec(ANSWER, "rev.test", CNAME_TYPE, "1.0.77.127.in-addr.arpa")],
            Plan((0,), labels_of("1.0.77.127.in-addr.arpa")),
        ),
    ],
)
def test_plan(qname: str, qtype: int, records: list[ReplyRecord], expected: Plan | None) -> None:
    assert plan(labels_of(qname.lower()), qtype, records, PROTECTED.protects) == expected


def test_the_screen_finds_every_protected_name_however_compressed() -> None:
    search = screen(PROTECTED.protected).search
    for name in PROTECTED.protected:
        text = ".".join(label.decode() for label in name)
        for qname in ("alias.fwd.test", "x." + text.split(".", 1)[-1], "DARTMOUTH.edu"):
            reply = DNSRecord.question(qname).reply()
            reply.add_answer(RR(qname, QTYPE.CNAME, rdata=CNAME(text.upper())))
            reply.add_answer(RR(text, QTYPE.A, rdata=ARecord(REAL_V4)))
            assert search(bytes(reply.pack())) is not None, (qname, text)
    ordinary = DNSRecord.question("www.example.com").reply()
    ordinary.add_answer(RR("www.example.com", QTYPE.A, rdata=ARecord("192.0.2.1")))
    assert search(bytes(ordinary.pack())) is None
    assert screen(()).search(bytes(ordinary.pack())) is None


@pytest.mark.parametrize("asked", ["mail.fwd.test", "MaIl.fwd.test"])
def test_a_query_in_flight_when_its_name_becomes_protected_gets_the_mouth(asked: str) -> None:
    """A reload that protects a name while its query is upstream: the client gets the local
    answer whatever letter case it asked in, and the upstream's reply is not cached (a later
    question for the name would otherwise be served the real records)."""
    from dnslib import DNSLabel

    from blitzdns.dns.cache import Cache
    from blitzdns.dns.engine import Engine, ForwardJob
    from blitzdns.dns.stats import ResolverStats

    engine = Engine(Table.from_config(make_config()), Cache(100), ResolverStats())
    job = engine.handle(bytes(DNSRecord.question(asked, "A").pack()), "127.0.0.1", 1000.0)
    assert isinstance(job, ForwardJob)
    engine.update(Table.from_config(config_protecting("mail.fwd.test")))
    upstream = DNSRecord.parse(job.query)
    upstream.header.qr = 1
    upstream.add_answer(
        RR(DNSLabel(asked), QTYPE.CNAME, ttl=300, rdata=CNAME("real.fwd.test")),
        RR("real.fwd.test", QTYPE.A, ttl=300, rdata=ARecord("192.0.2.55")),
    )
    reply = DNSRecord.parse(engine.finish(job, bytes(upstream.pack()), 1000.5))
    assert [str(r.rdata) for r in reply.rr] == ["127.77.0.50"]
    assert len(engine.cache.entries) == 0
    later = engine.handle(
        bytes(DNSRecord.question("mail.fwd.test", "MX").pack()), "127.0.0.1", 1001
    )
    assert isinstance(later, bytes)
    parsed = DNSRecord.parse(later)
    assert (parsed.header.aa, parsed.rr) == (1, [])


_BYTES = st.sampled_from(b"\x01\x02\x03aAbBcC.\xc0")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.lists(_BYTES, min_size=1, max_size=4).map(bytes).map(bytes.lower),
        min_size=1,
        max_size=12,
    ),
    st.lists(_BYTES, max_size=40).map(bytes),
)
def test_the_trie_pattern_finds_what_a_plain_alternation_finds(
    words: list[bytes], message: bytes
) -> None:
    """The screen's trie matches somewhere exactly when one of its words occurs (any case)."""
    trie = re.compile(trie_pattern(words), re.IGNORECASE)
    plain = re.compile(b"|".join(re.escape(w) for w in words), re.IGNORECASE)
    for text in (message, message + words[0].upper(), words[-1] + message):
        assert (trie.search(text) is None) == (plain.search(text) is None)
