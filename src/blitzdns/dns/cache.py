"""A TTL-respecting cache of upstream replies, stored as bytes; ``now`` is passed in.

An entry is the upstream's reply as it came, plus the offsets of its TTL fields (found
once by :func:`~blitzdns.dns.fastpath.scan_response`). Serving a hit copies the bytes with
the client's ID and question letters put in and every TTL lowered by the entry's age in
whole seconds (RFC 1035 §7.3 / RFC 2181 §8); the patched body is kept per age, so most
hits within a second cost four slices and a join.

What is cached (RFC 2308 §5): positive replies for min(TTL of every record); NXDOMAIN and
NODATA replies for min(SOA TTL, SOA MINIMUM) when the authority section holds an SOA, and
not at all without one; never SERVFAIL, REFUSED, other errors, or truncated replies, nor a
reply holding a TTL with its top bit set (RFC 2181 §8: treated as zero).
``max_ttl`` and ``max_negative_ttl`` cap how long anything stays.

The key is the lower-case question (name, type, class) plus one byte for the query flags
that change a reply's contents: EDNS present, DO, RD and CD, and AD when DO is not set (a
validating upstream sets AD only in a reply to a query with AD or DO, RFC 6840 §5.8).
Eviction is first in, first out when ``size`` is reached: cheap, and the TTL bounds
staleness anyway. The map is an ``OrderedDict`` so that eviction is O(1): taking a plain
dict's first key after many deletions from its front walks the deleted slots, O(size) per
insert in a full cache.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar, cast

from blitzdns.dns.fastpath import Scan
from blitzdns.dns.rfc import NOERROR, NXDOMAIN, RCODE_BYTE3, TC_BYTE2

DEFAULT_MAX_TTL = 86400
#: RFC 2308 §5 suggests one to three hours as the upper bound for negative caching.
DEFAULT_MAX_NEGATIVE_TTL = 10800

_pack_ttl = struct.Struct(">I").pack_into


#: One cached reply: ``(expires, stored, age, head, tail, ttl_offsets, ttls)``, a plain
#: tuple (index it by those positions; the hot paths do). ``head`` (flags and counts) and
#: ``tail`` (everything after the question) are the reply's pieces as patched for ``age``:
#: a hit is ``ID + head + the client's question + tail``; the TTL offsets count from the
#: start of ``tail``. Values many entries share (heads, offset and TTL tuples) are kept once.
#:
#: A tuple, not a class instance, so that the cyclic garbage collector stops looking at it:
#: CPython untracks a tuple of bytes, numbers and int tuples the first time a collection
#: sees it, and an untracked object costs a full collection nothing. As instances, a
#: million cached names were a million objects walked by every full collection: a 0.3-0.8 s
#: pause of the resolver each time one ran (bench/dns_growth_bench.py's 1,000,000 row).
Entry = tuple[float, float, int, bytes, bytes, tuple[int, ...], tuple[int, ...]]


def new_entry(original: bytes, scan: Scan, stored: float, lifetime: int) -> Entry:
    """The entry for the upstream reply ``original`` (read by ``scan``), stored at ``stored``."""
    qend = scan.question_end
    return (
        stored + lifetime,
        stored,
        0,
        _shared(original[2:12]),
        original[qend:],
        _shared(tuple(offset - qend for offset in scan.ttl_offsets)),
        _shared(scan.ttls),
    )


def at_age(entry: Entry, age: int) -> Entry:
    """``entry`` with every TTL in its tail lowered by ``age`` seconds (never below zero)."""
    expires, stored, _, head, tail, ttl_offsets, ttls = entry
    patched = bytearray(tail)
    for offset, ttl in zip(ttl_offsets, ttls, strict=True):
        _pack_ttl(patched, offset, ttl - age if ttl > age else 0)
    return (expires, stored, age, head, bytes(patched), ttl_offsets, ttls)


_Shareable = TypeVar("_Shareable", bytes, tuple[int, ...])
_SHARED: dict[Any, Any] = {}
_SHARED_LIMIT = 4096


def _shared(value: _Shareable) -> _Shareable:
    """One copy of small values that recur across entries (bounded: later ones stay apart)."""
    found = _SHARED.get(value)
    if found is not None:
        return cast(_Shareable, found)
    if len(_SHARED) < _SHARED_LIMIT:
        _SHARED[value] = value
    return value


#: Where the TTL of a one-answer reply's record is, from the question's end (the owner's
#: pointer, type and class before it): :meth:`Cache.put_answer`'s offsets, kept once.
_ONE_TTL_AT = _shared((6,))


#: RFC 2181 §8: a TTL with its most significant bit set is to be treated as zero. A reply
#: holding one (in any record, or as its SOA's MINIMUM) is not cached: its TTLs lowered by
#: an age on a hit would read as huge positive ones.
TTL_TOP_BIT = 0x80000000


def lifetime(scan: Scan, *, max_ttl: int, max_negative_ttl: int) -> int:
    """How many seconds a reply may be cached; 0 means not at all."""
    ttls = scan.ttls
    if scan.truncated or (ttls and max(ttls) >= TTL_TOP_BIT):
        return 0
    if scan.rcode == NOERROR and scan.ancount > 0:
        return min(min(ttls, default=0), max_ttl)
    if scan.rcode in (NOERROR, NXDOMAIN) and scan.negative_ttl is not None:
        return min(scan.negative_ttl, max_negative_ttl)
    return 0


class Cache:
    """Bounded map from question key to :class:`Entry`."""

    def __init__(
        self,
        size: int,
        *,
        max_ttl: int = DEFAULT_MAX_TTL,
        max_negative_ttl: int = DEFAULT_MAX_NEGATIVE_TTL,
    ) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()

    @property
    def entries(self) -> dict[bytes, Entry]:
        """The map itself, for the fast path's lookup (check ``expires`` before use)."""
        return self._entries

    def get(self, key: bytes, now: float) -> Entry | None:
        """The live entry for ``key``; an expired one is removed and None returned."""
        entry = self._entries.get(key)
        if entry is not None and now >= entry[0]:
            del self._entries[key]
            return None
        return entry

    def put(self, key: bytes, response: bytes, scan: Scan, now: float) -> bool:
        """Store ``response`` when its records allow; True when stored."""
        if self.size <= 0:
            return False
        seconds = lifetime(scan, max_ttl=self.max_ttl, max_negative_ttl=self.max_negative_ttl)
        if seconds <= 0:
            return False
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.size:
            entries.popitem(last=False)
        # new_entry, inline: one per forwarded miss, and its four calls cost more than
        # the rest of it (issue #18). A value seen before is taken without a call.
        qend = scan.question_end
        offsets = scan.ttl_offsets
        relative = (
            (offsets[0] - qend,)
            if len(offsets) == 1
            else tuple([offset - qend for offset in offsets])
        )
        head = response[2:12]
        shared = _SHARED
        entries[key] = (
            now + seconds,
            now,
            0,
            shared.get(head) or _shared(head),
            response[qend:],
            shared.get(relative) or _shared(relative),
            shared.get(scan.ttls) or _shared(scan.ttls),
        )
        return True

    def put_answer(self, key: bytes, response: bytes, qend: int, ttl: int, now: float) -> None:
        """:meth:`put` for the commonest reply, seen by :meth:`Engine.finish
        <blitzdns.dns.engine.Engine.finish>` without a :class:`~blitzdns.dns.fastpath.Scan`:
        one question ending at ``qend``, one answer record (not OPT) whose owner is a
        pointer and whose TTL is ``ttl``, nothing else. What ``put`` stores for the scan of
        such a reply, its lifetime included (a property test holds them alike; issue #18:
        the scan's tuple, ``lifetime`` and the general offsets cost ~140 bytecodes a miss).
        """
        # lifetime(): NOERROR with an answer, not truncated: min(ttl, max_ttl); an answer
        # under any other rcode has no SOA to cache it by; a TTL of TTL_TOP_BIT or more
        # counts as zero.
        if (
            self.size <= 0
            or ttl >= TTL_TOP_BIT
            or response[3] & RCODE_BYTE3
            or response[2] & TC_BYTE2
        ):
            return
        seconds = ttl if ttl < self.max_ttl else self.max_ttl
        if seconds <= 0:
            return
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self.size:
            entries.popitem(last=False)
        head = response[2:12]
        ttls = (ttl,)
        shared = _SHARED
        entries[key] = (
            now + seconds,
            now,
            0,
            shared.get(head) or _shared(head),
            response[qend:],
            _ONE_TTL_AT,
            shared.get(ttls) or _shared(ttls),
        )

    def at_age(self, key: bytes, entry: Entry, age: int) -> Entry:
        """The live ``entry`` under ``key`` patched for ``age``, kept in its place when it
        was not so already (the patched tail serves the rest of that second's hits)."""
        if entry[2] == age:
            return entry
        patched = at_age(entry, age)
        if self._entries.get(key) is entry:
            self._entries[key] = patched
        return patched

    def resize(self, size: int) -> None:
        self.size = size
        while len(self._entries) > max(size, 0):
            self._entries.popitem(last=False)

    def drop_where(self, condition: Callable[[bytes, Entry], bool]) -> int:
        """Remove every entry for which ``condition(key, entry)`` holds; how many were removed."""
        doomed = [key for key, entry in self._entries.items() if condition(key, entry)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)
