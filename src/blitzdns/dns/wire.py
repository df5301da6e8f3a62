"""The only module that imports dnslib: the general (slow) parse and encode.

Queries the fast path declines — several questions, odd opcodes, EDNS with a version
above 0, trailing bytes, and anything else unusual — are parsed here into a
:class:`~blitzdns.dns.decide.Query`, and the decision's reply is built here. dnslib is
untyped, so everything it returns is turned into our own types before it leaves.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from dnslib import (
    AAAA,
    EDNS0,
    PTR,
    RR,
    SOA,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)
from dnslib import A as ARecord

from blitzdns.dns import decide as d
from blitzdns.dns.fastpath import OUR_PAYLOAD


class Malformed(ValueError):
    """The message's header is readable but the rest is not (answered with FORMERR)."""


def parse_query(packet: bytes) -> d.Query:
    """Parse a whole message; raise :class:`Malformed` when any part of it is broken."""
    try:
        record = DNSRecord.parse(packet)
        return _query(record)
    except Exception as exc:  # dnslib raises many types on junk; all mean the same here
        raise Malformed(str(exc) or type(exc).__name__) from None


def _query(record: Any) -> d.Query:
    header = record.header
    questions = tuple(
        d.Question(tuple(bytes(label) for label in q.qname.label), int(q.qtype), int(q.qclass))
        for q in record.questions
    )
    opts = [rr for rr in record.ar if rr.rtype == d.OPT]
    edns = None
    if opts:
        ttl = int(opts[0].ttl)
        edns = d.Edns(int(opts[0].rclass), ttl >> 16 & 0xFF, bool(ttl & 0x8000))
    return d.Query(
        id=int(header.id),
        qr=bool(header.qr),
        opcode=int(header.opcode),
        rd=bool(header.rd),
        cd=bool(header.cd),
        questions=questions,
        edns=edns,
        opt_count=len(opts),
    )


def encode(query: d.Query, decision: d.Local | d.Reject) -> bytes:
    """The reply to ``query``: the local answer, or the error code with the question echoed."""
    rcode = decision.rcode
    header = DNSHeader(
        id=query.id,
        qr=1,
        aa=1 if isinstance(decision, d.Local) else 0,
        ra=1,
        rd=int(query.rd),
        cd=int(query.cd),
        rcode=rcode & 0x0F,
    )
    reply = DNSRecord(header)
    for question in query.questions if len(query.questions) == 1 else ():
        reply.add_question(DNSQuestion(DNSLabel(question.labels), question.qtype, question.qclass))
    if isinstance(decision, d.Local):
        for record in decision.answers:
            reply.add_answer(_rr(record))
        for record in decision.authority:
            reply.add_auth(_rr(record))
    if query.edns is not None or rcode > 0x0F:
        flags = "do" if query.edns is not None and query.edns.dnssec_ok else ""
        reply.add_ar(EDNS0(udp_len=OUR_PAYLOAD, ext_rcode=rcode >> 4, flags=flags))
    return bytes(reply.pack())


def _rr(record: d.Record) -> Any:
    data = record.rdata
    rdata: Any
    if isinstance(data, ipaddress.IPv4Address):
        rdata = ARecord(str(data))
    elif isinstance(data, ipaddress.IPv6Address):
        rdata = AAAA(str(data))
    elif isinstance(data, d.SoaData):
        rdata = SOA(
            DNSLabel(data.mname),
            DNSLabel(data.rname),
            (data.serial, data.refresh, data.retry, data.expire, data.minimum),
        )
    else:
        rdata = PTR(DNSLabel(data))
    return RR(DNSLabel(record.owner), record.rtype, ttl=record.ttl, rdata=rdata)


def describe(packet: bytes) -> str:
    """A one-line summary of a message for logs and test failures (never raises)."""
    try:
        record = DNSRecord.parse(packet)
        header = record.header
        questions = " ".join(f"{q.qname}/{int(q.qtype)}" for q in record.questions)
        return (
            f"id={header.id} rcode={header.rcode} q={questions or '-'} "
            f"an={len(record.rr)} ns={len(record.auth)} ar={len(record.ar)}"
        )
    except Exception:
        return f"<{len(packet)} unparsable bytes>"
