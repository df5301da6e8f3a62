"""Fail closed through forwarded replies: an unprotected name must not lead to a real address.

A protected name's own query never leaves the stub (:mod:`~blitzdns.dns.decide`), but an
upstream reply to some *other* name can still carry a protected host's real address:

* a CNAME (or DNAME, RFC 6672) chain from an unprotected name that reaches a protected
  one — ``alias.example CNAME dnd.dartmouth.edu``, then ``dnd.dartmouth.edu A <real>`` —
  which every stub resolver follows (RFC 1034 §3.6.2);
* glue: the additional section of an MX, SRV or NS reply holding the A / AAAA records of
  a target that is protected (RFC 1035 §3.7, RFC 2782);
* any stray record whose owner is a protected name (or lies under one).

:func:`plan` decides, from the reply's records, what to keep: a chain that reaches a
protected name is cut after the record that points at it, and the caller appends the
local answer for that name (as if the client had asked it); every other record owned by
a protected name is dropped. It is pure and sees names, not bytes.

Parsing every forwarded reply would cost the miss path a dnslib parse, so
:func:`screen` builds a first check: each label of a name is written out in full
somewhere in the message (compression only points at earlier copies, RFC 1035 §4.1.4),
so a reply in which one chosen label of every protected name (its *needle*) is absent
cannot name any of them. One regular-expression search of the reply answers that.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from blitzdns.dns.rfc import ANSWER, CNAME, DNAME, OPT
from blitzdns.dns.table import Name, lower

#: Longest chain followed (dnsmasq and unbound stop near here too); longer ones loop.
MAX_CHAIN = 16


def needles(protected: Iterable[Name]) -> tuple[bytes, ...]:
    """The label (in wire form) searched for each protected name.

    Any label would do; the first one that is not among the last two (a domain and a
    top-level domain most names share) and is longest of those is the rarest: ``dnd`` for
    ``dnd.dartmouth.edu``, ``127`` for ``1.0.77.127.in-addr.arpa``.
    """
    found = set()
    for name in protected:
        if name:
            label = max(name[:-2] or name, key=len)
            found.add(bytes((len(label),)) + label)
    return tuple(sorted(found))


def screen(protected: Iterable[Name]) -> re.Pattern[bytes]:
    """A pattern whose ``search`` finds nothing in a message that names no protected name.

    One pass of the regular expression engine over the reply (about 1 µs for a typical
    one), case-insensitive in ASCII only like DNS names (RFC 4343); with no protected
    names, a pattern that never matches. The needles are written as a trie
    (:func:`trie_pattern`), so the work per byte of the reply grows with a needle's
    length, not with how many there are: a plain alternation of 10,000 needles made a
    forwarded miss five times dearer (issue 18's growth row).
    """
    found = needles(protected)
    if not found:
        return re.compile(b"(?!)")
    return re.compile(trie_pattern(found), re.IGNORECASE)


def trie_pattern(words: Iterable[bytes]) -> bytes:
    """A regular expression that matches where one of ``words`` (lower case) begins.

    It matches the shortest word there: a search only asks whether any occurs.
    """
    trie: dict[int, dict[int, Any]] = {}
    ends: set[int] = set()
    for word in words:
        node = trie
        for byte in word:
            node = node.setdefault(byte, {})
        ends.add(id(node))

    def branch(node: dict[int, Any]) -> bytes:
        if id(node) in ends or not node:
            return b""
        parts = [re.escape(bytes((byte,))) + branch(child) for byte, child in sorted(node.items())]
        return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"

    return branch(trie)


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """One record of an upstream reply, as far as the guard needs it."""

    section: int
    #: Owner name with the letters the upstream wrote.
    owner: Name
    rtype: int
    #: The name a CNAME or DNAME points at (letters as written); None for other types.
    target: Name | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """How to rewrite a reply: the records to keep (indexes, in order), and where it ends."""

    keep: tuple[int, ...]
    #: The protected name (letters as written) the chain reached: the caller answers it
    #: locally after the kept records. None: only records were dropped.
    reached: Name | None = None


def plan(
    qname: Name, qtype: int, records: Sequence[ReplyRecord], protects: Callable[[Name], bool]
) -> Plan | None:
    """What to send instead of a reply with ``records`` to ``qname`` (lower case); None: as is.

    ``protects`` tells whether a lower-case name is protected or lies under one. A query
    for the CNAME itself is answered by the CNAME alone (RFC 1034 §4.3.2), so its chain is
    not followed; its glue is still checked. A protected ``qname`` itself (a reload made it
    ours while its query was upstream) is answered locally whole.
    """
    if protects(qname):
        return Plan(tuple(i for i, r in enumerate(records) if r.rtype == OPT), qname)
    if qtype != CNAME:
        followed, reached = _follow(qname, records, protects)
        if reached is not None:
            kept = sorted(
                {*followed, *(i for i, r in enumerate(records) if r.rtype == OPT)},
            )
            return Plan(tuple(kept), reached)
    kept = [i for i, record in enumerate(records) if not protects(lower(record.owner))]
    if len(kept) == len(records):
        return None
    return Plan(tuple(kept))


def _follow(
    qname: Name, records: Sequence[ReplyRecord], protects: Callable[[Name], bool]
) -> tuple[list[int], Name | None]:
    """The answer records of the chain from ``qname``, and the protected name it reaches."""
    answers = [(i, r, lower(r.owner)) for i, r in enumerate(records) if r.section == ANSWER]
    followed: list[int] = []
    current = qname
    seen = {current}
    for _ in range(MAX_CHAIN):
        step: Name | None = None
        for i, record, owner in answers:
            if record.target is None or i in followed:
                continue
            if record.rtype == DNAME and owner == current[len(current) - len(owner) :]:
                if len(owner) < len(current):
                    followed.append(i)
                    if step is None:
                        step = current[: len(current) - len(owner)] + record.target
            elif record.rtype == CNAME and owner == current:
                followed.append(i)
                step = record.target
        if step is None:
            return followed, None
        current = lower(step)
        if protects(current):
            return followed, step
        if current in seen:
            return followed, None
        seen.add(current)
    return followed, None
