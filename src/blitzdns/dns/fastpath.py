"""Byte-level DNS for the hot cases: no dnslib, no objects per packet.

Two kinds of query dominate a stub's traffic: a protected name's A, and a name whose
answer is in the cache. A full dnslib parse costs ~50 µs per packet in CPython; reading the
12-byte header and one question by hand costs a few. This module holds that hand parser
and the byte templates it answers from:

* :func:`simple_query` accepts only the plain shape (RFC 1035 §4.1: QR=0, OPCODE=0,
  QDCOUNT=1, no answer or authority records, at most one version-0 OPT record that ends
  the packet). Anything else goes to the dnslib path, which decides the hard cases.
  :func:`plain_shape` is the same test read from the packet's end, for the engine's hot
  path: it leaves checking the name to a lookup (see :meth:`Engine.handle`).
* :func:`encode_local` turns a :class:`~blitzdns.dns.decide.Local` answer into a
  precomputed tail whose owner names are compression pointers to the question (offset 12,
  RFC 1035 §4.1.4), so the reply echoes the question's exact letters (0x20 case
  randomisation) with no per-packet encoding.
* :func:`upstream_query`, :func:`answers_question` (:func:`answers` with the question
  taken out once) and :func:`scan_response` serve the
  forwarder and the cache: build the query sent upstream, check a reply belongs to it
  (ID and question, as dnspython's ``is_response``), and find every TTL field's offset so
  a cached reply can be served by patching bytes in place.

Property tests check this module against dnslib on the same inputs.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from blitzdns.dns.decide import Local, Record, SoaData
from blitzdns.dns.rfc import (
    AA,
    AD,
    DO_BYTE,
    ECHOED_FLAGS,
    FORWARDED_FLAGS,
    HEADER_SIZE,
    MAX_LABEL,
    MAX_NAME,
    ONE_QUESTION_COUNTS,
    OPT,
    OPT_DO,
    OPT_HEAD,
    OPT_PLAIN,
    PLAIN_UDP_LIMIT,
    QR,
    QR_BYTE2,
    QR_OPCODE_BYTE2,
    RA,
    RCODE_BYTE3,
    SOA,
    TC,
    TC_BYTE2,
)
from blitzdns.dns.table import to_wire

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
#: QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT.
_COUNTS = struct.Struct(">HHHH")
#: A record's type, class (skipped), TTL and RDLENGTH after its name.
_RECORD = struct.Struct(">H2xIH")
#: Reply variants: (RD, CD) × (no EDNS, EDNS, EDNS with DO) — see :func:`variant`.
VARIANTS = 12


def _key_flag_byte(index: int) -> bytes:
    """The key byte for ``variant | (flags & AD)``: the variant, with AD kept only where DO
    is not set (with DO an upstream sets AD as it would for an AD query)."""
    which = index & ~AD
    return bytes((which if which % 3 == 2 else index,))


#: The cache key's last byte, indexed by ``variant(flags, edns) | flags & AD``: the variant
#: (each changes what a reply holds) and the query's AD bit when it has no DO. A validating
#: upstream sets AD in a reply only to a query with AD or DO (RFC 6840 §5.8), so a reply to
#: an AD query must not reach a client that set neither: such queries are cached and shared
#: in flight under keys of their own. (Indices 12..31 never occur.)
KEY_FLAG_BYTES = tuple(_key_flag_byte(i) for i in range(AD + VARIANTS))
#: The shortest plain query: header, root name, type and class.
_SHORTEST_QUERY = HEADER_SIZE + 1 + 4


def name_end(packet: bytes, start: int = HEADER_SIZE) -> int:
    """Offset just past the uncompressed name at ``start``; -1 when it is not one.

    In a query the question name is the first name, so a compression pointer there can
    only point into the header: it is malformed, like a label over 63 bytes or a name
    over 255 bytes (RFC 1035 §2.3.4).
    """
    i = start
    size = len(packet)
    while i < size:
        length = packet[i]
        if length == 0:
            return i + 1 if i + 1 - start <= MAX_NAME else -1
        if length > MAX_LABEL:
            return -1
        i += length + 1
    return -1


def simple_query(packet: bytes) -> tuple[int, int, int, int] | None:
    """``(name_end, question_end, flags, edns)`` for a plain query; None for any other shape.

    ``edns`` is -1 without an OPT record, else the payload size with the DO bit at 1 << 16.
    """
    size = len(packet)
    if size < _SHORTEST_QUERY or packet[2] & QR_OPCODE_BYTE2 or packet[4:10] != ONE_QUESTION_COUNTS:
        return None
    qn = name_end(packet)
    if qn < 0:
        return None
    qend = qn + 4
    additional = packet[10:12]
    if additional == b"\x00\x00":
        if size != qend:
            return None
        return qn, qend, packet[2] << 8 | packet[3], -1
    # One OPT record: root owner, TYPE 41, payload, RCODE/version 0, flags, options.
    if (
        additional != b"\x00\x01"
        or size < qend + 11
        or packet[qend : qend + 3] != OPT_HEAD
        or packet[qend + 5 : qend + 7] != b"\x00\x00"
        or size != qend + 11 + (packet[qend + 9] << 8 | packet[qend + 10])
    ):
        return None
    if not _options_fill(packet, qend + 11):
        return None
    payload = packet[qend + 3] << 8 | packet[qend + 4]
    dnssec_ok = (packet[qend + 7] & DO_BYTE) << 9
    return qn, qend, packet[2] << 8 | packet[3], payload | dnssec_ok


def _options_fill(packet: bytes, start: int) -> bool:
    """Whether the OPT options (code, length, data; RFC 6891 §6.1.2) end where the packet ends.

    An option whose length runs past the record, or bytes too few for another option, make
    the query malformed: the dnslib path answers it (FORMERR), not the fast path.
    """
    i, size = start, len(packet)
    while i + 4 <= size:
        i += 4 + (packet[i + 2] << 8 | packet[i + 3])
    return i == size


def plain_shape(packet: bytes) -> tuple[int, int] | None:
    """``(name_end, edns)`` of a plain query, as :func:`simple_query`, without walking the name.

    The two common shapes — no additional record, or one option-less OPT record — are read
    from the packet's end: the name is taken to end where the question's type and class
    begin. The caller must check that: a hit on a table or cache key (always a valid wire
    name) proves it, since a valid name starting at offset 12 can end in one place only;
    otherwise :func:`name_end`. Other shapes are walked by :func:`simple_query`. Whenever
    the name does end there, the result is :func:`simple_query`'s (a property test).
    """
    size = len(packet)
    if size < _SHORTEST_QUERY or packet[2] & QR_OPCODE_BYTE2 or packet[4:10] != ONE_QUESTION_COUNTS:
        return None
    additional = packet[10:12]
    if additional == b"\x00\x00":
        return size - 4, -1
    if (
        additional == b"\x00\x01"
        and packet[-11:-8] == OPT_HEAD
        and packet[-6:-4] == b"\x00\x00"
        and packet[-2:] == b"\x00\x00"
    ):
        return size - 15, packet[-8] << 8 | packet[-7] | (packet[-4] & DO_BYTE) << 9
    parsed = simple_query(packet)
    return None if parsed is None else (parsed[0], parsed[3])


def udp_limit(edns: int) -> int:
    """Largest UDP reply the client accepts (RFC 6891 §6.2.5: below 512 means 512)."""
    if edns < 0:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, edns & 0xFFFF)


def fits_udp(size: int, edns: int) -> bool:
    """Whether a reply of ``size`` bytes may go over UDP to a client with ``edns``."""
    return size <= PLAIN_UDP_LIMIT or size <= udp_limit(edns)


def variant(flags: int, edns: int) -> int:
    """0..11: which of RD/CD the query set, and whether it had EDNS, with DO or not."""
    echoed = (flags >> 8 & 1) | (flags >> 3 & 2)
    return echoed * 3 + (0 if edns < 0 else 2 if edns & 0x10000 else 1)


@dataclass(frozen=True, slots=True)
class FastAnswer:
    """A precomputed local answer: per :func:`variant`, the bytes before and after the question.

    The reply is ``ID + heads[which] + question + tail(which)``: a head holds the flags and
    counts, a tail the records (owner names point at the question) and our OPT record if
    any. The tail depends only on the EDNS part of the variant, and the heads on the rcode
    and counts only, so those are kept once for every answer alike (issue 18's growth row
    measured 285 MiB for 10,000 hosts when each answer kept its twelve pairs); the records
    are kept once per answer, the OPT record put after them per reply (three tails per
    answer were ~190 bytes more per protected name).
    """

    rcode: int
    heads: tuple[bytes, ...]
    records: bytes

    def tail(self, which: int) -> bytes:
        """The bytes after the question in variant ``which``."""
        return self.records + _OPT_TAILS[which % 3]

    def reply(self, packet: bytes, qend: int, which: int) -> bytes:
        """The reply to ``packet`` (whose question ends at ``qend``) in variant ``which``."""
        return b"".join(
            (packet[:2], self.heads[which], packet[12:qend], self.records, _OPT_TAILS[which % 3])
        )


#: What follows a local answer's records, by the EDNS part of the variant (``which % 3``).
_OPT_TAILS = (b"", OPT_PLAIN, OPT_DO)


_HEADS: dict[tuple[int, int, int], tuple[bytes, ...]] = {}


def _heads(rcode: int, an: int, ns: int) -> tuple[bytes, ...]:
    """The twelve heads (flags and counts) of a local answer, one tuple per shape."""
    found = _HEADS.get((rcode, an, ns))
    if found is None:
        heads = []
        for which in range(VARIANTS):
            echoed, edns = divmod(which, 3)
            flags = QR | AA | RA | rcode | (echoed & 1) << 8 | (echoed & 2) << 3
            heads.append(_U16.pack(flags) + struct.pack(">HHHH", 1, an, ns, 1 if edns else 0))
        found = _HEADS[(rcode, an, ns)] = tuple(heads)
    return found


def encode_local(local: Local) -> FastAnswer:
    """Precompute ``local`` (its owner names must all be the question name)."""
    records = b"".join(_record(r) for r in (*local.answers, *local.authority))
    heads = _heads(local.rcode, len(local.answers), len(local.authority))
    return FastAnswer(local.rcode, heads, records)


def _record(record: Record) -> bytes:
    rdata = _rdata(record)
    return b"\xc0\x0c" + struct.pack(">HHIH", record.rtype, 1, record.ttl, len(rdata)) + rdata


def _rdata(record: Record) -> bytes:
    data = record.rdata
    if isinstance(data, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return data.packed
    if isinstance(data, SoaData):
        numbers = (data.serial, data.refresh, data.retry, data.expire, data.minimum)
        return to_wire(data.mname) + to_wire(data.rname) + struct.pack(">IIIII", *numbers)
    return to_wire(data)


def error_reply(
    packet: bytes, qend: int, rcode: int, edns: int, *, truncated: bool = False
) -> bytes:
    """A reply with ``rcode`` (or TC set) echoing the header's ID and the question, no records."""
    flags = packet[2] << 8 | packet[3] if len(packet) >= 4 else 0
    reply_flags = QR | RA | rcode | (flags & ECHOED_FLAGS) | (TC if truncated else 0)
    qdcount = 1 if qend > 12 else 0
    opt = b"" if edns < 0 else OPT_DO if edns & 0x10000 else OPT_PLAIN
    counts = struct.pack(">HHHH", qdcount, 0, 0, 1 if opt else 0)
    return packet[:2] + _U16.pack(reply_flags) + counts + packet[12:qend] + opt


def _upstream_heads(additional: int) -> dict[int, bytes]:
    """The upstream query's 12 header bytes (ID 0), by its flags (``FORWARDED_FLAGS`` only):
    one per subset of those bits, walked directly (not a scan of all 65536 values)."""
    heads = {}
    kept = FORWARDED_FLAGS
    while True:
        heads[kept] = (
            b"\x00\x00" + _U16.pack(kept) + b"\x00\x01\x00\x00\x00\x00" + _U16.pack(additional)
        )
        if kept == 0:
            return heads
        kept = (kept - 1) & FORWARDED_FLAGS


#: Every header :func:`upstream_query` may put before the question, made once: without
#: and with an OPT record (8 each). Looked up, not packed and joined per miss (issue #18).
_HEAD_PLAIN = _upstream_heads(0)
_HEAD_OPT = _upstream_heads(1)


def upstream_query(packet: bytes, qend: int, flags: int, edns: int) -> bytes:
    """The query sent upstream, with ID 0 (the forwarder sets a random one per attempt).

    The question keeps the client's letters; RD, CD and AD pass through, and so does EDNS0:
    the payload we can take and the DO bit, without the client's options (its cookie is
    meant for us, RFC 7873 §5.1).
    """
    if edns < 0:
        return _HEAD_PLAIN[flags & FORWARDED_FLAGS] + packet[12:qend]
    return b"".join(
        (
            _HEAD_OPT[flags & FORWARDED_FLAGS],
            packet[12:qend],
            OPT_DO if edns & 0x10000 else OPT_PLAIN,
        )
    )


def answers_question(response: bytes, query: bytes) -> bool:
    """True when ``response`` is a reply to ``query``: same ID, QR set, the same question.

    The name compares case-insensitively (RFC 4343), type and class exactly.
    """
    qend = name_end(query)
    if qend < 0 or len(response) < qend + 4:
        return False
    return (
        response[:2] == query[:2]
        and response[2] & QR_BYTE2 != 0
        and response[4:6] == b"\x00\x01"
        and response[12:qend].lower() == query[12:qend].lower()
        and response[qend : qend + 4] == query[qend : qend + 4]
    )


def question_of(query: bytes) -> bytes:
    """``query``'s question as bytes (name, type, class) for :func:`answers`; b"" if none."""
    qend = name_end(query)
    return b"" if qend < 0 or len(query) < qend + 4 else query[12 : qend + 4]


def answers(response: bytes, question: bytes) -> bool:
    """:func:`answers_question` for a ``response`` whose ID is known to match, given the
    query's :func:`question_of`: the forwarder's check per upstream reply.

    Upstreams echo the question's letters, so the bytes compare equal at once; only when
    they do not are the name's letters compared case-insensitively.
    """
    end = 12 + len(question)
    if end == 12 or len(response) < end or not response[2] & QR_BYTE2:
        return False
    if response[4:6] != b"\x00\x01":
        return False
    if response.startswith(question, 12):
        return True
    return (
        response[12 : end - 4].lower() == question[:-4].lower()
        and response[end - 4 : end] == question[-4:]
    )


class Scan(NamedTuple):
    """What the cache needs from an upstream reply (a named tuple: one per forwarded reply)."""

    rcode: int
    truncated: bool
    ancount: int
    #: Offsets of the 32-bit TTL fields (every record but OPT), and their values.
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    #: RFC 2308 §5: min(SOA TTL, SOA MINIMUM) of the first SOA in the authority section
    #: (0 when either has its top bit set, RFC 2181 §8).
    negative_ttl: int | None
    #: Where the (uncompressed) question ends.
    question_end: int


#: ``Scan`` made from a tuple of its fields by ``tuple.__new__`` (C), without the Python
#: ``__new__`` a named tuple's constructor is.
_new_scan: Callable[
    [tuple[int, bool, int, tuple[int, ...], tuple[int, ...], int | None, int]], Scan
] = partial(tuple.__new__, Scan)


def scan_response(response: bytes, question_end: int = 0) -> Scan | None:
    """Walk every record of ``response``; None when it does not hold together.

    ``question_end``, when given, is where the question ends, known from a query whose
    question bytes ``response`` carries as they are (the name is then not walked again).
    """
    size = len(response)
    if size < 12:
        return None
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(response, 4)
    if qdcount != 1:
        return None
    if question_end:
        offset = question_end
    else:
        offset = name_end(response)
        if offset < 0:
            return None
        offset += 4
    question_end = offset
    if ancount == 1 and not nscount and not arcount and offset < size and response[offset] >= 0xC0:
        # The commonest reply: one answer, its owner a pointer to the question. What the
        # walk finds for it, without its lists (a property test holds the two alike).
        if offset + 12 > size:
            return None
        rtype, ttl, rdlength = _RECORD.unpack_from(response, offset + 2)
        if offset + 12 + rdlength != size:
            return None
        found = ((offset + 6,), (ttl,)) if rtype != OPT else ((), ())
        return _new_scan(
            (
                response[3] & RCODE_BYTE3,
                bool(response[2] & TC_BYTE2),
                1,
                found[0],
                found[1],
                None,
                question_end,
            )
        )
    return _walk_records(response, question_end, ancount, nscount, arcount)


def _walk_records(
    response: bytes, question_end: int, ancount: int, nscount: int, arcount: int
) -> Scan | None:
    """:func:`scan_response` for any reply: every record walked from ``question_end``."""
    size = len(response)
    offset = question_end
    offsets: list[int] = []
    ttls: list[int] = []
    negative_ttl: int | None = None
    # The authority section's records, by their index among all records.
    authority = range(ancount, ancount + nscount)
    for index in range(ancount + nscount + arcount):
        # An owner name is most often a pointer to the question: skipped here without
        # a call (what _skip_name does for it; a pointer cut short fails the next test).
        if offset < size and response[offset] >= 0xC0:
            offset += 2
        else:
            offset = _skip_name(response, offset)
        if offset < 0 or offset + 10 > size:
            return None
        rtype, ttl, rdlength = _RECORD.unpack_from(response, offset)
        rdata_end = offset + 10 + rdlength
        if rdata_end > size:
            return None
        if rtype != OPT:
            offsets.append(offset + 4)
            ttls.append(ttl)
        if rtype == SOA and negative_ttl is None and rdlength >= 22 and index in authority:
            minimum = _U32.unpack_from(response, rdata_end - 4)[0]
            # Either with its top bit set is treated as zero (RFC 2181 §8).
            negative_ttl = 0 if (ttl | minimum) & 0x80000000 else min(ttl, minimum)
        offset = rdata_end
    if offset != size:
        return None
    # tuple.__new__, not Scan(...): a named tuple's constructor is a Python function.
    return _new_scan(
        (
            response[3] & RCODE_BYTE3,
            bool(response[2] & TC_BYTE2),
            ancount,
            tuple(offsets),
            tuple(ttls),
            negative_ttl,
            question_end,
        )
    )


def _skip_name(message: bytes, offset: int) -> int:
    """Offset past a possibly compressed name (RFC 1035 §4.1.4); -1 when it runs off the end."""
    size = len(message)
    while offset < size:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= size else -1
        if length > 63:
            return -1
        offset += length + 1
    return -1
