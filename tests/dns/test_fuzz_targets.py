"""Fuzz targets over the packet parsers and the decision core (hypothesis).

Arbitrary bytes, and valid messages with bytes changed, go into every function a client
or an upstream can reach with its own bytes: :meth:`Engine.handle` (fast and slow path,
every kind of client), :meth:`Engine.finish` with any upstream reply, the byte scanners,
the dnslib wrappers and ``lookup``'s parser. None may raise anything but its documented
error, and every reply must be one a client can parse, no larger than it may take, and
never a reply to a reply. ``make test`` runs a short version; ``make fuzz`` sets
``BLITZDNS_FUZZ_EXAMPLES`` for a long one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import dns.exception
import dns.message
from dnslib import CNAME as CNAMERecord
from dnslib import EDNS0, QTYPE, RR, DNSRecord
from dnslib import A as ARecord
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from blitzdns import lookup
from blitzdns.dns import wire
from blitzdns.dns.cache import Cache
from blitzdns.dns.engine import Engine, ForwardJob
from blitzdns.dns.fastpath import answers_question, name_end, scan_response, simple_query
from blitzdns.dns.stats import ResolverStats
from blitzdns.dns.table import Table

from .test_fastpath import CLIENTS, CONFIG, NOW, queries

EXAMPLES = int(os.environ.get("BLITZDNS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def new_engine() -> Engine:
    return Engine(Table.from_config(CONFIG), Cache(100), ResolverStats())


@st.composite
def damaged(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with a few bytes changed, cut, or extended: near-valid inputs go deepest."""
    packet = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if packet and draw(st.booleans()):
            packet[draw(st.integers(0, len(packet) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(packet)))
    return bytes(packet[:cut]) + draw(st.binary(max_size=8))


packets = st.one_of(st.binary(max_size=600), damaged(queries()))


def check_reply(packet: bytes, reply: bytes, *, udp: bool) -> None:
    """A reply a client can parse, no larger than it may take; never to a response."""
    assert not (len(packet) > 2 and packet[2] & 0x80), "a reply to a response"
    message = dns.message.from_wire(reply)
    if udp:
        limit = 512 if message.edns < 0 else max(512, message.payload)
        assert len(reply) <= limit
    assert reply[:2] == packet[:2]


@FUZZ
@given(packet=packets, client=st.sampled_from(CLIENTS), udp=st.booleans())
def test_engine_handle_never_raises_and_replies_are_sound(
    packet: bytes, client: str, udp: bool
) -> None:
    engine = new_engine()
    out = engine.handle(packet, client, NOW, udp)
    target(float(name_end(packet)), label="question name read")
    if isinstance(out, bytes):
        check_reply(packet, out, udp=udp)
    else:
        assert out is None or isinstance(out, ForwardJob)
    slow = new_engine().handle_slow(packet, client, NOW, udp)
    assert type(slow) is type(out)


def upstream_replies(query: bytes) -> st.SearchStrategy[bytes]:
    """Replies an upstream could send to ``query``: right, forged, chained, or junk."""
    record = DNSRecord.parse(query)

    def build(kind: str, address: str) -> bytes:
        reply = record.reply()
        if kind == "answer":
            address = "192.0.2.1"  # the name's own address: passed on
        if kind == "cname":
            reply.add_answer(
                RR(record.q.qname, QTYPE.CNAME, rdata=CNAMERecord("dnd.dartmouth.edu"))
            )
            reply.add_answer(RR("dnd.dartmouth.edu", QTYPE.A, rdata=ARecord(address)))
        elif kind == "answer":
            reply.add_answer(RR(record.q.qname, QTYPE.A, ttl=60, rdata=ARecord(address)))
        elif kind == "glue":
            reply.add_ar(RR("dasher.dartmouth.edu", QTYPE.A, rdata=ARecord(address)))
        reply.add_ar(EDNS0(udp_len=4096))
        return bytes(reply.pack())

    valid = st.builds(
        build,
        st.sampled_from(["answer", "cname", "glue", "empty"]),
        st.just("192.0.2.66"),
    )
    return st.one_of(valid, damaged(valid), st.binary(max_size=300))


@FUZZ
@given(data=st.data(), query=queries(), client=st.sampled_from(CLIENTS), udp=st.booleans())
def test_engine_finish_takes_any_upstream_reply(
    data: Any, query: bytes, client: str, udp: bool
) -> None:
    engine = new_engine()
    job = engine.handle(query, client, NOW, udp)
    if not isinstance(job, ForwardJob):
        return
    response = data.draw(upstream_replies(job.query))
    # The forwarder's contract: only a reply to the question asked reaches finish().
    response = job.query[:2] + response[2:]
    if not answers_question(response, job.query):
        return
    reply = engine.finish(job, response, NOW)
    check_reply(query, reply, udp=udp)
    assert b"\xc0\x00\x02\x42" not in reply, "a protected name's forged address passed"


@FUZZ
@given(message=st.one_of(st.binary(max_size=600), damaged(queries())))
def test_parsers_raise_only_their_own_errors(message: bytes) -> None:
    scan_response(message)
    simple_query(message)
    answers_question(message, message)
    for parse in (wire.parse_query, wire.parse_reply):
        with contextlib.suppress(wire.Malformed):
            parse(message)
    with contextlib.suppress(lookup.LookupFailed):
        lookup.parse_reply(message, int.from_bytes(message[:2] or b"\x00\x00", "big"))
    wire.describe(message)
    with contextlib.suppress(dns.exception.DNSException, ValueError):
        dns.message.from_wire(message)
