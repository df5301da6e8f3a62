"""The only module that imports dnslib: the general (slow) parse and encode.

Queries the fast path declines — several questions, odd opcodes, EDNS with a version
above 0, trailing bytes, and anything else unusual — are parsed here into a
:class:`~blitzdns.dns.decide.Query`, and the decision's reply is built here. So are the
rare upstream replies :mod:`~blitzdns.dns.guard` must look into: parsed into
:class:`~blitzdns.dns.guard.ReplyRecord` values, and rebuilt from the ones it keeps. dnslib
is untyped, so everything it returns is turned into our own types before it leaves.

Loaded at the first message that needs it, not at the start: a resolver that only answers
its protected names and forwards never does, and dnslib with this module is ~1.2 MB of an
idle daemon's memory (bench/notes/startup.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    DNSHeader,
    DNSLabel,
    DNSQuestion,
    DNSRecord,
)
from dnslib import A as ARecord

from blitzdns.dns import decide as d
from blitzdns.dns.errors import Malformed
from blitzdns.dns.fastpath import name_end
from blitzdns.dns.guard import ReplyRecord
from blitzdns.dns.rfc import (
    ADDITIONAL,
    ANSWER,
    AUTHORITY,
    DNAME,
    DO_BYTE,
    MAX_LABEL,
    MAX_NAME,
    OPT,
    OUR_PAYLOAD,
    RCODE_MASK,
)
from blitzdns.dns.rfc import CNAME as CNAME_TYPE
from blitzdns.dns.table import Name, wire_labels


def parse_query(packet: bytes) -> d.Query:
    """Parse a whole message; raise :class:`Malformed` when any part of it is broken.

    That includes a question name dnslib reads but no encoder may write back: a label over
    63 octets or a name over 255 (RFC 1035 §2.3.4). dnslib parses those and raises only
    when asked to echo them, so they are refused here, where FORMERR is the answer.
    """
    try:
        record = DNSRecord.parse(packet)
        query = _query(record)
    except Exception as exc:  # dnslib raises many types on junk; all mean the same here
        raise Malformed(str(exc) or type(exc).__name__) from None
    for question in query.questions:
        _check_name(question.labels)
    return query


def _check_name(labels: Name) -> None:
    if any(len(label) > MAX_LABEL for label in labels):
        raise Malformed(f"a label longer than {MAX_LABEL} octets")
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME:
        raise Malformed(f"a name longer than {MAX_NAME} octets")


def _query(record: Any) -> d.Query:
    header = record.header
    questions = tuple(
        d.Question(tuple(bytes(label) for label in q.qname.label), int(q.qtype), int(q.qclass))
        for q in record.questions
    )
    opts = [rr for rr in record.ar if rr.rtype == OPT]
    edns = None
    if opts:
        ttl = int(opts[0].ttl)
        edns = d.Edns(int(opts[0].rclass), ttl >> 16 & 0xFF, bool(ttl & DO_BYTE << 8))
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
        rcode=rcode & RCODE_MASK,
    )
    reply = DNSRecord(header)
    for question in query.questions if len(query.questions) == 1 else ():
        reply.add_question(DNSQuestion(DNSLabel(question.labels), question.qtype, question.qclass))
    if isinstance(decision, d.Local):
        for record in decision.answers:
            reply.add_answer(_rr(record))
        for record in decision.authority:
            reply.add_auth(_rr(record))
    if query.edns is not None or rcode > RCODE_MASK:
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


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """An upstream reply: its records for the guard, and the parsed message to rebuild from."""

    records: tuple[ReplyRecord, ...]
    _message: Any = field(repr=False)


def parse_reply(response: bytes) -> ParsedReply:
    """Parse a whole reply, names decompressed; raise :class:`Malformed` when it is broken."""
    try:
        message = DNSRecord.parse(response)
        records = tuple(
            ReplyRecord(section, _labels(rr.rname), int(rr.rtype), _target(rr))
            for section, rrs in (
                (ANSWER, message.rr),
                (AUTHORITY, message.auth),
                (ADDITIONAL, message.ar),
            )
            for rr in rrs
        )
    except Malformed:
        raise
    except Exception as exc:  # as in parse_query: every dnslib failure means "broken"
        raise Malformed(str(exc) or type(exc).__name__) from None
    return ParsedReply(records, message)


def _labels(label: Any) -> Name:
    return tuple(bytes(part) for part in label.label)


def _target(rr: Any) -> Name | None:
    """A CNAME's or DNAME's target (RFC 6672 §2.5: a DNAME's is never compressed)."""
    if rr.rtype == CNAME_TYPE and isinstance(rr.rdata, CNAME):
        return _labels(rr.rdata.label)
    if rr.rtype == DNAME:
        data = bytes(rr.rdata.data)
        if name_end(data, 0) != len(data):
            raise Malformed("a DNAME target that is not one uncompressed name")
        return wire_labels(data)
    return None


def rebuild(reply: ParsedReply, keep: tuple[int, ...], local: d.Local | d.Reject | None) -> bytes:
    """``reply`` with only the records ``keep`` names, then ``local``'s records and RCODE.

    The AD bit goes (RFC 4035 §3.2.3: the data is no longer what was validated), and so
    does AA once a local answer follows an upstream's records. A rejection keeps only
    the OPT record.
    """
    if isinstance(local, d.Reject):
        keep = tuple(i for i in keep if reply.records[i].rtype == OPT)
    message = reply._message
    header = message.header
    header.ad = 0
    if local is not None:
        header.aa = 0
        header.rcode = local.rcode & RCODE_MASK
    out = DNSRecord(header, questions=list(message.questions))
    every = [*message.rr, *message.auth, *message.ar]
    add = {ANSWER: out.add_answer, AUTHORITY: out.add_auth, ADDITIONAL: out.add_ar}
    for index in keep:
        add[reply.records[index].section](every[index])
    if isinstance(local, d.Local):
        for record in local.answers:
            out.add_answer(_rr(record))
        for record in local.authority:
            out.add_auth(_rr(record))
    try:
        return bytes(out.pack())
    except Exception as exc:  # what dnslib parsed it may refuse to write (a 64-octet label)
        raise Malformed(str(exc) or type(exc).__name__) from None


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


def query_log(
    client: str,
    packet: bytes,
    reply: bytes | None,
    protects: Callable[[Name], bool],
    forwarded_to: str | None = None,
) -> list[str]:
    """``-v``'s lines for one query, in the form dnsmasq logs them (never raises)::

        query[A] dnd.dartmouth.edu from 127.0.0.1
        config dnd.dartmouth.edu is 127.77.0.1          (a protected name: our answer)
        cached example.org is 192.0.2.7                 (from the cache)
        forwarded example.org to 192.0.2.53:53 / reply example.org is 192.0.2.7

    ``protects``: whether a (lower-case) name is protected; ``forwarded_to``: where a
    forwarded query went (None: answered here). Types and rcodes by name (RFC 1035
    §3.2.2, §4.1.1); several answers on one line.
    """
    try:
        query = DNSRecord.parse(packet)
    except Exception:
        return [f"query[?] <{len(packet)} unparsable bytes> from {client}"]
    if not query.questions:
        return [f"query[-] (no question) from {client}"]
    question = query.questions[0]
    name = str(question.qname).rstrip(".") or "."
    qtype = QTYPE.get(question.qtype, f"TYPE{question.qtype}")
    lines = [f"query[{qtype}] {name} from {client}"]
    if forwarded_to is not None:
        lines.append(f"forwarded {name} to {forwarded_to or 'the upstreams'}")
        verb = "reply"
    else:
        labels = tuple(label.lower() for label in question.qname.label)
        verb = "config" if protects(labels) else "cached"
    if reply is None:
        return [*lines, f"{verb} {name} is no reply (dropped)"]
    try:
        answer = DNSRecord.parse(reply)
    except Exception:
        return [*lines, f"{verb} {name} is <{len(reply)} unparsable bytes>"]
    rcode = answer.header.rcode
    if rcode != 0:
        said = str(RCODE.get(rcode, f"RCODE{rcode}"))
    elif not answer.rr:
        said = "NODATA"
    else:
        said = ", ".join(
            str(rr.rdata)
            if rr.rtype in (1, 28)
            else f"<{QTYPE.get(rr.rtype, rr.rtype)}> {rr.rdata}"
            for rr in answer.rr
        )
    return [*lines, f"{verb} {name} is {said}"]
