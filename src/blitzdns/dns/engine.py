"""Bytes in, bytes (or a forwarding job) out: the resolver without its sockets.

:class:`Engine` ties the table, the cache and the counters together. The asyncio layer
(:mod:`blitzdns.dns.server`) hands it each packet with the client's address and the
current time, and sends back what it returns:

* ``bytes`` — the reply, at once (local answers, cache hits, errors);
* a :class:`ForwardJob` — ask an upstream, then call :meth:`Engine.finish`;
* ``None`` — send nothing (no readable header, a response, a loop probe of our own).

:func:`~blitzdns.dns.decide.decide` is the one decision. :meth:`Engine.handle` first
tries the byte-level fast path, which is ``decide`` compiled per view (:class:`FastView`:
every local answer of a view computed once by ``decide``'s own
:func:`~blitzdns.dns.decide.local_answer` and kept encoded) plus the cache, and falls back to
:meth:`Engine.handle_slow` — dnslib parse, then ``decide`` — for everything else. Both
must agree; the property tests (``tests/dns/test_fastpath.py``) feed them the same packets
and are the contract. A cache hit is served by one method, :meth:`Engine._cache_hit`,
whichever path found it. Pure: the caller passes ``now`` in.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from blitzdns.dns import guard
from blitzdns.dns.cache import Cache, Entry
from blitzdns.dns.decide import (
    Drop,
    Forward,
    Local,
    Query,
    Question,
    Reject,
    decide,
    local_answer,
)
from blitzdns.dns.errors import Malformed
from blitzdns.dns.fastpath import (
    KEY_FLAG_BYTES,
    FastAnswer,
    encode_local,
    error_reply,
    fits_udp,
    name_end,
    plain_shape,
    scan_response,
    udp_limit,
    upstream_query,
    variant,
)
from blitzdns.dns.rfc import (
    AAAA,
    AD,
    ANY,
    CLASS_IN,
    CLASS_IN_WIRE,
    FORMERR,
    HEADER_SIZE,
    MAX_LABEL,
    MAX_NAME,
    NOTIMP,
    PTR,
    QR_BYTE2,
    REFUSED,
    SERVFAIL,
    TXT,
    A,
)
from blitzdns.dns.stats import ResolverStats
from blitzdns.dns.table import Table, View, lower, to_wire, wire_labels

_MEMO_LIMIT = 4096
#: Parents of forwarded names remembered (:meth:`Engine.handle`); cleared when full.
_PARENTS_LIMIT = 4096
#: Remembered local replies per view (a client's own few questions, times its flag sets).
_REPLY_MEMO_LIMIT = 1024


def _remember(
    replies: dict[bytes, bytes | tuple[Entry, int, bytes]],
    packet: bytes,
    reply: bytes | tuple[Entry, int, bytes],
) -> None:
    if len(replies) >= _REPLY_MEMO_LIMIT:
        replies.clear()
    replies[packet[2:]] = reply


#: A reply remembered for a question in any letter case (:attr:`FastView.folded`): where
#: the question ends, the query's flags and counts and its bytes from the type on (both
#: must be equal, not only alike; None when no byte of either is a letter, see
#: :func:`_remember_folded`), the reply's head and tail, and for a cache hit the entry and
#: the age the tail was patched for (None and 0 for a local answer).
Folded = tuple[int, bytes | None, bytes, bytes, bytes, Entry | None, int]


def _remember_folded(
    folded: dict[bytes, Folded],
    packet: bytes,
    qend: int,
    head: bytes,
    tail: bytes,
    entry: Entry | None,
    age: int,
) -> None:
    """Remember a reply for ``packet``'s question in any letter case.

    A query whose bytes after its ID lower-case to the key has the same bytes as the
    remembered one wherever the remembered one holds no letter: lower-casing turns only
    A-Z into a-z, so a byte that lower-cases to a non-letter is that byte. When the flags,
    counts, type, class and EDNS bytes hold no letter (the usual case: RD, type A or AAAA,
    class IN, a payload of 1232 or 4096), the key alone proves them equal and the entry
    says so with None in place of the bytes to compare (a hit then costs no slices).
    """
    if len(folded) >= _REPLY_MEMO_LIMIT:
        folded.clear()
    fixed, trailer = packet[2:12], packet[qend - 4 :]
    exact = fixed + trailer
    compare = fixed if exact.lower() != exact.upper() else None
    folded[packet[2:].lower()] = (qend, compare, trailer, head, tail, entry, age)


#: QDCOUNT 1, ANCOUNT 1, no authority or additional records (:meth:`Engine.finish`).
_ONE_ANSWER_COUNTS = b"\x00\x01\x00\x01\x00\x00\x00\x00"
#: A record's type, class (skipped), TTL and RDLENGTH after its name.
_RECORD = struct.Struct(">H2xIH")

#: Which of a name's answers (:attr:`FastView.names`) a question's type and class take; any
#: other type in class IN takes the NODATA (slot 4), any other class the general path.
_SLOTS = {
    qtype.to_bytes(2, "big") + CLASS_IN_WIRE: slot for slot, qtype in enumerate((A, AAAA, ANY, PTR))
}
_NODATA_SLOT = 4

#: A name's local answers: to A, AAAA, ANY and PTR in class IN, then to any other type.
Answers = tuple[FastAnswer, FastAnswer, FastAnswer, FastAnswer, FastAnswer]


@dataclass(frozen=True, slots=True)
class FastView:
    """A view's local answers, precomputed: by lower-case wire name, one per type (:data:`Answers`).

    One key per name (issue 18's growth row: five keys per name, each the name again,
    were ~0.4 KB of the ~2.3 KB a name cost), and equal answers kept once
    (bench/notes/growth.md).

    ``replies`` remembers whole replies by the query's bytes after its ID: clients repeat
    the same question with the same flags, and a reply depends on nothing else — a local
    one never changes, a cache hit's (its entry, the age it was patched for, and the
    bytes) holds while the entry lives and its age in seconds is the same. A repeat costs
    one lookup. Bounded; rebuilt with the view on reload.
    """

    names: dict[bytes, Answers]
    replies: dict[bytes, bytes | tuple[Entry, int, bytes]] = field(default_factory=dict)
    #: The same for questions in mixed letter case (0x20-randomising clients: the letters
    #: never repeat), keyed by the query's bytes after its ID lower-cased.
    folded: dict[bytes, Folded] = field(default_factory=dict)

    @classmethod
    def build(cls, view: View, table: Table) -> FastView:
        names: dict[bytes, Answers] = {}
        # Equal answers are kept once: owner names are pointers to the question, so every
        # NODATA is the same bytes whatever the name, and ANY is the A (or the PTR). A
        # name then holds one answer of its own instead of five.
        kept: dict[FastAnswer, FastAnswer] = {}
        for name in (*view.targets, *view.pointers):
            found = []
            for qtype in (A, AAAA, ANY, PTR, TXT):
                answer = local_answer(view, table, Question(name, qtype, CLASS_IN))
                assert isinstance(answer, Local)
                encoded = encode_local(answer)
                found.append(kept.setdefault(encoded, encoded))
            a, aaaa, any_, ptr, other = found
            names[to_wire(name)] = (a, aaaa, any_, ptr, other)
        return cls(names)


#: Clients that are refused: the fast path never answers them.
_REFUSED = FastView({})


class ForwardJob(NamedTuple):
    """A query the cache could not answer, ready for the forwarder (a named tuple: one is
    made per forwarded query, and a frozen dataclass's ``__init__`` costs several times
    more)."""

    #: Cache key (lower-case question + flag byte), also the key for coalescing.
    key: bytes
    #: What to send upstream, with ID 0.
    query: bytes
    #: The client's packet, and where its question ends (for the ID and letters).
    packet: bytes
    qend: int
    edns: int
    #: Largest reply the client takes; None over TCP.
    limit: int | None
    client: str
    table: Table


#: A ``ForwardJob`` from the tuple of its fields (:meth:`Engine._forward`).
_new_job: Callable[[tuple[bytes, bytes, bytes, int, int, int | None, str, Table]], ForwardJob] = (
    partial(tuple.__new__, ForwardJob)
)


class Engine:
    """The resolver's core: one per :class:`~blitzdns.dns.server.Resolver`."""

    def __init__(self, table: Table, cache: Cache, stats: ResolverStats) -> None:
        self.table = table
        self.cache = cache
        self._entries = cache.entries
        self.stats = stats
        self._fast: dict[str, FastView] = {}
        self._fast_by_view: dict[int, FastView] = {}
        self._screen = guard.screen(table.protected).search
        self._protected_wire = _protected_wire(table)
        #: Parents of forwarded names (lower-case wire names, all well formed) and whether
        #: each lies under a protected name, or is one (:meth:`handle`).
        self._parents: dict[bytes, bool] = {}
        #: Loop probes in flight (lower wire name) and those our own listener received.
        self.probes: set[bytes] = set()
        self.probes_seen: set[bytes] = set()

    def update(self, table: Table) -> int:
        """Use ``table`` from now on; drop cached entries that lead to names it protects.

        That is the names themselves (and names under them), and replies whose CNAME chain
        or records reach one (:mod:`~blitzdns.dns.guard`). Returns how many were dropped.
        """
        self.table = table
        self._fast = {}
        self._fast_by_view = {}
        self._parents = {}
        self._screen = guard.screen(table.protected).search
        self._protected_wire = _protected_wire(table)
        return self.cache.drop_where(
            lambda key, entry: (
                table.protects(wire_labels(key)) or self._leads_to_protected(key, entry)
            )
        )

    def _leads_to_protected(self, key: bytes, entry: Entry) -> bool:
        """Whether the cached reply under ``key`` would need the guard's rewrite now."""
        message = b"\x00\x00" + entry[3] + key[:-1] + entry[4]
        if self._screen(message) is None:
            return False
        from blitzdns.dns import wire  # noqa: PLC0415  (dnslib: loaded when first needed)

        try:
            records = wire.parse_reply(message).records
        except Malformed:
            return True
        qtype = int.from_bytes(key[-5:-3], "big")
        return guard.plan(wire_labels(key), qtype, records, self.table.protects) is not None

    def _under_protected(self, name: bytes) -> bool:
        """Whether the lower-case, well-formed wire ``name`` lies under a protected name
        (:meth:`~blitzdns.dns.table.Table.protected_ancestor` on the wire bytes: no label
        tuples for every forwarded name)."""
        protected = self._protected_wire
        size = len(name)
        i = name[0] + 1
        while i < size and name[i]:
            if name[i:] in protected:
                return True
            i += name[i] + 1
        return False

    def _fast_view(self, client: str) -> FastView:
        view = self.table.view_for(client)
        if view is None:
            fast = _REFUSED
        else:
            fast = self._fast_by_view.get(id(view)) or FastView.build(view, self.table)
            self._fast_by_view[id(view)] = fast
        if len(self._fast) >= _MEMO_LIMIT:
            self._fast.clear()
        self._fast[client] = fast
        return fast

    def handle(
        self, packet: bytes, client: str, now: float, udp: bool = True
    ) -> bytes | ForwardJob | None:
        """React to one message from ``client``; see the module docstring for the results.

        A repeated question is answered from the view's memo. Otherwise the common shape is
        read by :func:`~blitzdns.dns.fastpath.plain_shape` without walking the name: the
        name bytes are looked up as they stand, and a hit on a table or cache key (always a
        valid wire name) proves they are one, since lower-casing never changes a length
        byte. Only a miss walks the name (:func:`~blitzdns.dns.fastpath.name_end`).
        """
        fast = self._fast.get(client) or self._fast_view(client)
        after_id = packet[2:]
        remembered = fast.replies.get(after_id)
        if remembered is not None:
            if isinstance(remembered, bytes):
                self.stats.answered_local += 1
                return packet[:2] + remembered
            hit, hit_age, rest = remembered
            if now < hit[0] and int(now - hit[1]) == hit_age:
                self.stats.cache_hits += 1
                return packet[:2] + rest
        # Lower-casing keeps length bytes (at most 63) as they are, so a key equal to a
        # remembered one, with flags, counts, type, class and EDNS bytes exactly equal,
        # is the same question in other letters: its reply differs only in those letters.
        # Not for a query in lower case (the commonest, and every miss): the folded memo
        # is filled by mixed-case ones, and such a query, when one was remembered, gets
        # the same reply below (a property test holds them alike), without the lower-cased
        # copy of the packet made and looked up here first.
        folded = None if after_id.islower() else fast.folded.get(after_id.lower())
        if folded is not None:
            qend, fixed, trailer, head, tail, entry, entry_age = folded
            if fixed is None or (packet[2:12] == fixed and packet[qend - 4 :] == trailer):
                # One join: three concatenations would make two more objects.
                if entry is None:
                    self.stats.answered_local += 1
                    return b"".join((packet[:2], head, packet[12:qend], tail))
                if now < entry[0] and int(now - entry[1]) == entry_age:
                    self.stats.cache_hits += 1
                    return b"".join((packet[:2], head, packet[12:qend], tail))
        shape = None if fast is _REFUSED else plain_shape(packet)
        if shape is None:
            return self.handle_slow(packet, client, now, udp)
        qn, edns = shape
        qend = qn + 4
        flags = packet[2] << 8 | packet[3]
        # :func:`~blitzdns.dns.fastpath.variant`, inline (a call per query).
        which = ((flags >> 8 & 1) | (flags >> 3 & 2)) * 3 + (
            0 if edns < 0 else 2 if edns & 0x10000 else 1
        )
        letters = packet[12:qn]
        name = letters.lower()
        # A name in mixed case is a 0x20-randomising client's: its letters never repeat,
        # so its reply is remembered by the folded question instead (``fast.folded``).
        memo = fast.replies if name == letters else None
        answers = fast.names.get(name)
        if answers is not None:
            # The name is a table key, so a well-formed wire name ending at ``qn``.
            slot = _SLOTS.get(packet[qn:qend])
            if slot is None:
                if packet[qend - 2 : qend] != CLASS_IN_WIRE:
                    return self.handle_slow(packet, client, now, udp)
                slot = _NODATA_SLOT
            answer = answers[slot]
            self.stats.answered_local += 1
            reply = answer.reply(packet, qend, which)
            if memo is not None:
                _remember(memo, packet, reply[2:])
            else:
                head, tail = answer.heads[which], answer.tail(which)
                _remember_folded(fast.folded, packet, qend, head, tail, None, 0)
            return reply
        key = name + packet[qn:qend] + KEY_FLAG_BYTES[which | flags & AD]
        entry = self._entries.get(key)
        if entry is not None and now < entry[0]:
            return self._cache_hit(
                packet,
                qend,
                edns,
                key,
                entry,
                now,
                udp,
                memo,
                fast.folded if memo is None else None,
            )
        # The name's first label, and what is known of the rest (its parent): a parent
        # seen before is a well-formed name, and whether it lies under a protected name
        # is remembered (names under one parent are many; each miss walked its labels
        # twice before, ~220 bytecodes, issue #18). Only the first label is read here.
        if not name:  # a header and an OPT record only: no room for a question (FORMERR)
            return self.handle_slow(packet, client, now, udp)
        first = name[0]
        under = self._parents.get(name[first + 1 :]) if 0 < first <= MAX_LABEL else None
        if under is None:
            if name_end(packet) != qn or not name.isascii():
                return self.handle_slow(packet, client, now, udp)
            under = self._under_protected(name)
            if first:
                self._remember_parent(name[first + 1 :], under)
        elif qn - 12 > MAX_NAME or not name.isascii():
            return self.handle_slow(packet, client, now, udp)
        if under:
            return self.handle_slow(packet, client, now, udp)
        return self._forward(packet, client, key, qend, flags, edns, udp)

    def _remember_parent(self, parent: bytes, under: bool) -> None:
        """Remember that ``parent`` (lower case) is a well-formed wire name, and whether it
        or a name above it is protected (bounded; forgotten with the table)."""
        parents = self._parents
        if len(parents) >= _PARENTS_LIMIT:
            parents.clear()
        parents[parent] = under

    def handle_slow(
        self, packet: bytes, client: str, now: float, udp: bool = True
    ) -> bytes | ForwardJob | None:
        """The general path: dnslib parse, :func:`decide`, dnslib encode."""
        if len(packet) < HEADER_SIZE or packet[2] & QR_BYTE2:
            self.stats.dropped += 1
            return None
        from blitzdns.dns import wire  # noqa: PLC0415  (dnslib: loaded when first needed)

        try:
            query = wire.parse_query(packet)
        except Malformed:
            self.stats.formerr += 1
            return error_reply(packet, question_end(packet), FORMERR, -1)
        decision = decide(query, self.table, client)
        if isinstance(decision, Drop):
            self.stats.dropped += 1
            return None
        if isinstance(decision, Reject):
            self._count_rejection(decision.rcode)
            return wire.encode(query, decision)
        if isinstance(decision, Local):
            self.stats.answered_local += 1
            return wire.encode(query, decision)
        assert isinstance(decision, Forward)
        qn = name_end(packet)
        if qn < 0:
            self.stats.formerr += 1
            return wire.encode(query, Reject(FORMERR, "compressed question name"))
        qend = qn + 4
        edns = _edns_code(query)
        flags = packet[2] << 8 | packet[3]
        key = (
            packet[12:qn].lower()
            + packet[qn:qend]
            + KEY_FLAG_BYTES[variant(flags, edns) | flags & AD]
        )
        entry = self.cache.get(key, now)
        if entry is not None:
            return self._cache_hit(packet, qend, edns, key, entry, now, udp, None)
        return self._forward(packet, client, key, qend, flags, edns, udp)

    def _forward(
        self,
        packet: bytes,
        client: str,
        key: bytes,
        qend: int,
        flags: int,
        edns: int,
        udp: bool,
    ) -> ForwardJob | None:
        probes = self.probes
        # Empty but while the loop check runs: the name is cut out of the key only then.
        if probes and key[: qend - 16] in probes:
            self.probes_seen.add(key[: qend - 16])
            self.stats.dropped += 1
            return None
        self.stats.forwarded += 1
        # tuple.__new__, not ForwardJob(...): a named tuple's constructor is a Python
        # function (one per forwarded query).
        return _new_job(
            (
                key,
                upstream_query(packet, qend, flags, edns),
                packet,
                qend,
                edns,
                udp_limit(edns) if udp else None,
                client,
                self.table,
            )
        )

    def finish(self, job: ForwardJob, response: bytes | None, now: float) -> bytes:
        """The client's reply to ``job`` given the upstream's ``response`` (None: it failed).

        The reply is cached when its records allow, unless a reload made the name ours
        while it was in flight: then the client gets the local answer instead. A reply that
        may name a protected host is looked into first (:meth:`_guard`).
        """
        # One unpacking: each field read by name is a descriptor call (once per miss).
        key, _query, packet, qend, edns, limit, client, table = job
        if table is not self.table and self.table.protects(lower(wire_labels(packet[12:qend]))):
            redone = self.handle(packet, client, now, limit is not None)
            if isinstance(redone, bytes):
                return redone
        if response is None:
            self.stats.servfail += 1
            return error_reply(packet, qend, SERVFAIL, edns)
        # AD only to a query with AD or DO (RFC 6840 §5.8), whatever the upstream sent: the
        # reply is cached under this query's key, so it is cleared before the put too. (DO
        # is set iff ``edns`` >= 1 << 16: it is -1 without EDNS. A reply too short to have
        # the byte is a SERVFAIL below.)
        if len(response) > 3 and response[3] & 0x20 and not (packet[3] & 0x20 or edns > 0xFFFF):
            response = b"".join((response[:3], bytes((response[3] & 0xDF,)), response[4:]))
        cacheable = True
        # Upstreams echo the question's bytes: then where it ends is known (the job's), and
        # the reply carries the client's letters (compared with the client's packet, not the
        # upstream query, so this stays right if the upstream query's case is ever randomised);
        # the scan need not walk the name again.
        known = qend if response.startswith(packet[12:qend], 12) else 0
        if (
            known
            and response[4:12] == _ONE_ANSWER_COUNTS
            and response[qend : qend + 2] == b"\xc0\x0c"
            and len(response) >= qend + 12
            and table is self.table
        ):
            # The commonest reply: one address record owned by the question (a pointer to
            # it). The question is the only name it holds, and ``handle`` forwarded it
            # under this table (not protected, nor under a protected name): nothing for
            # the guard's screen to find. Whole (its data ends the message), it is cached
            # and passed on without a Scan (Cache.put_answer). A property test holds the
            # client's reply, the cache and the counters to the general steps'.
            rtype, ttl, rdlength = _RECORD.unpack_from(response, qend + 2)
            if qend + 12 + rdlength == len(response) and (
                (rtype == A and rdlength == 4) or (rtype == AAAA and rdlength == 16)
            ):
                self.cache.put_answer(key, response, qend, ttl, now)
                if limit is not None and len(response) > limit:
                    self.stats.truncated += 1
                    return error_reply(packet, qend, 0, edns, truncated=True)
                return packet[:2] + response[2:]
        if self._screen(response) is not None:
            try:
                guarded = self._guard(job, response)
            except Malformed:
                guarded = None
            if guarded is None:
                self.stats.servfail += 1
                return error_reply(packet, qend, SERVFAIL, edns)
            response, cacheable = guarded
            known = 0
        scan = scan_response(response, known)
        if scan is None:  # records that run past the end, or bytes after them
            self.stats.servfail += 1
            return error_reply(packet, qend, SERVFAIL, edns)
        if cacheable:
            self.cache.put(key, response, scan, now)
        # _deliver, inline (once per forwarded miss): the job's limit is udp_limit(edns)
        # for UDP, never below 512, so it alone says whether the reply fits.
        if known:
            # The reply carries the question's bytes as the client sent them (the upstream
            # query's are the client's), so it is as long as the join below would make it,
            # and the join is this, with two slices less (a property test holds them alike).
            if limit is not None and len(response) > limit:
                self.stats.truncated += 1
                return error_reply(packet, qend, 0, edns, truncated=True)
            return packet[:2] + response[2:]
        tail = response[qend:]
        if limit is not None and qend + len(tail) > limit:
            self.stats.truncated += 1
            return error_reply(packet, qend, 0, edns, truncated=True)
        return b"".join((packet[:2], response[2:12], packet[12:qend], tail))

    def _guard(self, job: ForwardJob, response: bytes) -> tuple[bytes, bool]:
        """``response`` as it may reach the client, and whether it may be cached.

        A chain that reaches a protected name ends with the local answer of the client's
        view for it; that reply differs per view, so it is not cached. A reply that only
        lost records (glue of protected hosts) is the same for everyone and is cached.
        Raise :class:`~blitzdns.dns.wire.Malformed` when the reply cannot be parsed or
        rebuilt: unseen, it cannot be passed on (SERVFAIL).
        """
        from blitzdns.dns import wire  # noqa: PLC0415  (dnslib: loaded when first needed)

        parsed = wire.parse_reply(response)
        qend = job.qend
        qtype = job.packet[qend - 4] << 8 | job.packet[qend - 3]
        qname = lower(wire_labels(job.packet[12 : qend - 4]))
        cut = guard.plan(qname, qtype, parsed.records, self.table.protects)
        if cut is None:
            return response, True
        self.stats.rewritten += 1
        if cut.reached is None:
            return wire.rebuild(parsed, cut.keep, None), True
        view = self.table.view_for(job.client)
        qclass = job.packet[qend - 2] << 8 | job.packet[qend - 1]
        local = (
            None
            if view is None
            else local_answer(view, self.table, Question(cut.reached, qtype, qclass))
        )
        if local is None:
            local = Reject(REFUSED, f"client {job.client} is not in an allowed network")
        return wire.rebuild(parsed, cut.keep, local), False

    def _cache_hit(
        self,
        packet: bytes,
        qend: int,
        edns: int,
        key: bytes,
        entry: Entry,
        now: float,
        udp: bool,
        replies: dict[bytes, bytes | tuple[Entry, int, bytes]] | None,
        folded: dict[bytes, Folded] | None = None,
    ) -> bytes:
        """The reply to ``packet`` from the live ``entry`` (under ``key``), its TTLs lowered by
        its age.

        Remembered in ``replies`` or ``folded`` (the fast path's memos) when it fits any
        UDP reply to this question, so a memo never holds what a UDP client must get
        truncated.
        """
        self.stats.cache_hits += 1
        age = int(now - entry[1])
        if entry[2] != age:
            entry = self.cache.at_age(key, entry, age)
        head, tail = entry[3], entry[4]
        reply = self._deliver(packet, qend, edns, head, tail, udp)
        if fits_udp(qend + len(tail), edns):
            if replies is not None:
                _remember(replies, packet, (entry, age, reply[2:]))
            elif folded is not None:
                _remember_folded(folded, packet, qend, head, tail, entry, age)
        return reply

    def _deliver(
        self, packet: bytes, qend: int, edns: int, head: bytes, tail: bytes, udp: bool
    ) -> bytes:
        """A reply with the client's ID and letters; TC alone when too big for UDP."""
        if udp and not fits_udp(qend + len(tail), edns):
            self.stats.truncated += 1
            return error_reply(packet, qend, 0, edns, truncated=True)
        return packet[:2] + head + packet[12:qend] + tail

    def _count_rejection(self, rcode: int) -> None:
        if rcode == REFUSED:
            self.stats.refused += 1
        elif rcode == NOTIMP:
            self.stats.notimp += 1
        else:
            self.stats.formerr += 1


def _protected_wire(table: Table) -> frozenset[bytes]:
    """The table's protected names as lower-case wire names."""
    return frozenset(to_wire(name) for name in table.protected)


def question_end(packet: bytes) -> int:
    """Where the question ends when one can be read (so FORMERR can echo it), else 12."""
    qn = name_end(packet)
    if packet[4:6] == b"\x00\x01" and qn > 0 and qn + 4 <= len(packet):
        return qn + 4
    return 12


def _edns_code(query: Query) -> int:
    """The fast path's EDNS integer (-1, or payload | DO << 16) for a parsed query."""
    if query.edns is None:
        return -1
    return (query.edns.payload & 0xFFFF) | (0x10000 if query.edns.dnssec_ok else 0)
