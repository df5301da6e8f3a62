"""The decision: answer locally, forward, refuse, or drop — a pure function.

``decide(query, table, client)`` looks at a parsed query (see :mod:`blitzdns.dns.wire`),
the table of protected names and the client's address, and returns what to do. No
sockets, no clock, no dnslib: the cache and the upstream I/O live elsewhere.

This is the resolver's one decision. The fast path (:class:`~blitzdns.dns.engine.FastView`)
is this function compiled per view: for every name a view owns it calls
:func:`local_answer` once and keeps the encoded reply, so a plain query is answered by a
dictionary lookup. Whatever the fast path does not hold it hands to :func:`decide`. The
property tests (``tests/dns/test_fastpath.py``) are the contract between the two: the
same packets must get the same replies from both.

Fail closed (issue 2): every record type of a protected name is answered here, never
forwarded. A → the mouth; AAAA → the IPv6 mouth or NODATA with an SOA (a forwarded AAAA
would let a client reach the real server outside the tunnel); ANY → the A (RFC 8482 §4.2
allows a subset); PTR of a mouth's reverse name → the host's canonical name; anything
else → NODATA. A name *under* a protected name (``x.dnd.dartmouth.edu``) gets NXDOMAIN
with the protected name's SOA: it is answered locally too, because the real zone may hold
names under it that lead to the real server, and nothing under a mouth exists (RFC 8020).
A protected name asked in a class other than IN or ANY gets REFUSED, locally as well.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from blitzdns.dns.rfc import (
    AAAA,
    ANY,
    BADVERS,
    CLASS_ANY,
    CLASS_IN,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    PTR,
    REFUSED,
    SOA,
    A,
)
from blitzdns.dns.table import Name, Table, View, lower


@dataclass(frozen=True, slots=True)
class Question:
    """One question, with the labels exactly as the client wrote them (RFC 1035 §4.1.2)."""

    labels: Name
    qtype: int
    qclass: int


@dataclass(frozen=True, slots=True)
class Edns:
    """The client's OPT record (RFC 6891 §6.1.2)."""

    payload: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed message, reduced to what the decision and the encoders need."""

    id: int
    qr: bool
    opcode: int
    rd: bool
    cd: bool
    questions: tuple[Question, ...]
    edns: Edns | None = None
    #: How many OPT records the additional section held (more than one is FORMERR).
    opt_count: int = 0

    @property
    def question(self) -> Question | None:
        return self.questions[0] if len(self.questions) == 1 else None


@dataclass(frozen=True, slots=True)
class SoaData:
    mname: Name
    rname: Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


RData = ipaddress.IPv4Address | ipaddress.IPv6Address | Name | SoaData


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record of a local answer; ``owner`` keeps the client's letters."""

    owner: Name
    rtype: int
    ttl: int
    rdata: RData


@dataclass(frozen=True, slots=True)
class Local:
    """Answer from the table: authoritative, never forwarded."""

    rcode: int
    answers: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer with an error code and no records (the question echoed when there is one)."""

    rcode: int
    reason: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours: the cache or an upstream answers."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Send nothing (a response sent to us, or a packet with no readable header)."""

    reason: str


Decision = Local | Reject | Forward | Drop


def decide(query: Query, table: Table, client: str) -> Decision:
    """What to do with ``query`` from ``client`` (an address as the socket reports it)."""
    if query.qr:
        return Drop("a response, not a query")
    view = table.view_for(client)
    if view is None:
        return Reject(REFUSED, f"client {client} is not in an allowed network")
    if query.opcode != 0:
        return Reject(NOTIMP, f"opcode {query.opcode} is not QUERY")
    question = query.question
    if question is None:
        return Reject(FORMERR, f"{len(query.questions)} questions (expected exactly one)")
    if query.opt_count > 1:
        return Reject(FORMERR, "more than one OPT record (RFC 6891 §6.1.1)")
    if query.edns is not None and query.edns.version != 0:
        return Reject(BADVERS, f"EDNS version {query.edns.version} (RFC 6891 §6.1.3)")
    local = local_answer(view, table, question)
    return Forward() if local is None else local


def local_answer(view: View, table: Table, question: Question) -> Local | Reject | None:
    """The local answer for ``question`` in ``view``, or None when the name is not ours."""
    name = lower(question.labels)
    if not view.owns(name):
        above = table.protected_ancestor(name)
        if above is None:
            return None
        if question.qclass not in (CLASS_IN, CLASS_ANY):
            return Reject(REFUSED, "a protected zone asked in a class other than IN")
        return Local(NXDOMAIN, authority=(_soa(table, question.labels[above:]),))
    if question.qclass not in (CLASS_IN, CLASS_ANY):
        return Reject(REFUSED, "a protected name asked in a class other than IN")
    owner, qtype, ttl = question.labels, question.qtype, table.ttl
    answers: tuple[Record, ...] = ()
    target = view.targets.get(name)
    if target is not None:
        if qtype in (A, ANY) and target.a is not None:
            answers = (Record(owner, A, ttl, target.a),)
        elif qtype in (AAAA, ANY) and target.aaaa is not None:
            answers = (Record(owner, AAAA, ttl, target.aaaa),)
    pointer = view.pointers.get(name)
    if pointer is not None and qtype in (PTR, ANY):
        answers = (Record(owner, PTR, ttl, pointer),)
    if answers:
        return Local(NOERROR, answers=answers)
    return Local(NOERROR, authority=(_soa(table, owner),))


def _soa(table: Table, owner: Name) -> Record:
    soa = table.soa
    data = SoaData(soa.mname, soa.rname, soa.serial, soa.refresh, soa.retry, soa.expire, table.ttl)
    return Record(owner, SOA, table.ttl, data)
