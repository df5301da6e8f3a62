"""The byte-level fast path against dnslib on the same inputs (hypothesis).

For every generated packet, :meth:`Engine.handle` (fast path first) and
:meth:`Engine.handle_slow` (dnslib parse, decide, dnslib encode) must reach the same
decision with equivalent replies, and neither may raise on junk. Cached replies served
by byte patching must equal what dnslib says they should be.
"""

from __future__ import annotations

import os
import struct
from typing import Any
from unittest import mock

import pytest
from dnslib import EDNS0, QTYPE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blitzdns.config import parse_config
from blitzdns.dns import engine as engine_module
from blitzdns.dns import fastpath, rfc
from blitzdns.dns.cache import Cache, lifetime, new_entry
from blitzdns.dns.engine import Engine, ForwardJob
from blitzdns.dns.fastpath import (
    answers,
    answers_question,
    error_reply,
    name_end,
    plain_shape,
    question_of,
    scan_response,
    simple_query,
    upstream_query,
)
from blitzdns.dns.stats import ResolverStats
from blitzdns.dns.table import Table

from .conftest import SHARED_TOML

CONFIG = parse_config(SHARED_TOML)
CLIENTS = ("127.0.0.1", "127.0.0.70", "10.9.8.7")
PROTECTED = sorted(
    {name for host in CONFIG.hosts for name in host.names}
    | {"1.0.77.127.in-addr.arpa", "2.0.77.127.in-addr.arpa"}
)
NOW = 1000.0
#: Examples per property: a short run in ``make test``, a long one in ``make fuzz``.
EXAMPLES = int(os.environ.get("BLITZDNS_FASTPATH_EXAMPLES", "200"))


def new_engine(cache_size: int = 100) -> Engine:
    return Engine(Table.from_config(CONFIG), Cache(cache_size), ResolverStats())


def random_case(text: str, flips: list[bool]) -> str:
    return (
        "".join(c.upper() if flips[i % len(flips)] else c for i, c in enumerate(text))
        if flips
        else text
    )


protected_names = st.builds(
    random_case, st.sampled_from(PROTECTED), st.lists(st.booleans(), max_size=8)
)
names = st.one_of(
    # Protected names three times in five: their answers are the table's (one key per name).
    protected_names,
    protected_names,
    protected_names,
    st.builds(
        lambda prefix, base: f"{prefix}.{base}",
        st.from_regex(r"[a-zA-Z0-9-]{1,10}", fullmatch=True),
        st.sampled_from([*PROTECTED, "dartmouth.edu", "example.com"]),
    ),
    st.from_regex(r"([a-zA-Z0-9]{1,12}\.){0,3}[a-zA-Z]{2,6}", fullmatch=True),
)
qtypes = st.sampled_from([1, 2, 5, 6, 12, 15, 16, 28, 33, 65, 255, 99, 65535, 252, 251, 41, 0])
qclasses = st.sampled_from([1, 1, 1, 3, 255, 254])


def drawn_header(draw: st.DrawFn) -> DNSHeader:
    """A query header: ID and the RD, CD and AD flags drawn."""
    return DNSHeader(
        id=draw(st.integers(0, 0xFFFF)),
        rd=draw(st.integers(0, 1)),
        cd=draw(st.integers(0, 1)),
        ad=draw(st.integers(0, 1)),
    )


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    header = drawn_header(draw)
    header.opcode = draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4, 5]))
    header.qr = draw(st.sampled_from([0, 0, 0, 0, 1]))
    record = DNSRecord(header)
    for _ in range(draw(st.sampled_from([1, 1, 1, 1, 0, 2]))):
        record.add_question(DNSQuestion(draw(names), draw(qtypes), draw(qclasses)))
    edns = draw(st.sampled_from(["none", "none", "plain", "do", "cookie", "v1", "two"]))
    if edns != "none":
        opts = []
        if edns == "cookie":
            from dnslib import EDNSOption

            opts = [EDNSOption(10, b"\x01" * 8)]
        payload = draw(st.sampled_from([0, 512, 1232, 4096]))
        version = 1 if edns == "v1" else 0
        record.add_ar(
            EDNS0(udp_len=payload, flags="do" if edns == "do" else "", version=version, opts=opts)
        )
        if edns == "two":
            record.add_ar(EDNS0(udp_len=payload))
    packet = bytes(record.pack())
    tail = draw(st.sampled_from([b"", b"", b"", b"\x00", b"junk"]))
    return packet + tail


def mutations(packet: bytes, data: st.DataObject) -> bytes:
    choice = data.draw(st.sampled_from(["keep", "truncate", "flip"]))
    if choice == "truncate" and packet:
        return packet[: data.draw(st.integers(0, len(packet) - 1))]
    if choice == "flip" and packet:
        index = data.draw(st.integers(0, len(packet) - 1))
        value = data.draw(st.integers(0, 255))
        return packet[:index] + bytes((value,)) + packet[index + 1 :]
    return packet


def summary(reply: bytes) -> tuple[Any, ...]:
    """Everything a client can see in a reply, letters of names included."""
    record = DNSRecord.parse(reply)
    h = record.header
    header = (h.id, h.qr, h.opcode, h.aa, h.tc, h.rd, h.ra, h.z, h.ad, h.cd, h.rcode)

    def rrs(section: list[Any]) -> list[tuple[Any, ...]]:
        return [
            (tuple(rr.rname.label), rr.rtype, rr.rclass, rr.ttl, str(rr.rdata))
            if rr.rtype != 41
            else (rr.rtype, rr.rclass, rr.ttl, str(rr.rdata))
            for rr in section
        ]

    questions = [(tuple(q.qname.label), q.qtype, q.qclass) for q in record.questions]
    return header, questions, rrs(record.rr), rrs(record.auth), rrs(record.ar)


#: A client cookie alone (RFC 7873 §4) in an OPT record asking for a 0-byte UDP payload.
COOKIE_QUERY = (
    b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01\x02AA\x00\x00\x01\x00\x01"
    b"\x00\x00)\x00\x00\x00\x00\x00\x00\x00\x0c\x00\n\x00\x08" + b"\x01" * 8
)
#: The same with the option's length flipped to 264: it runs past the OPT record (a mutation
#: hypothesis found; the fast path used to forward it while dnslib answers FORMERR).
OVERLONG_OPTION = COOKIE_QUERY[:33] + b"\x01" + COOKIE_QUERY[34:]


def test_an_option_running_past_the_opt_record_is_formerr_on_both_paths() -> None:
    fast = new_engine().handle(OVERLONG_OPTION, "127.0.0.1", NOW)
    assert isinstance(fast, bytes)
    assert summary(fast)[0][-1] == 1  # FORMERR
    same_outcome(fast, new_engine().handle_slow(OVERLONG_OPTION, "127.0.0.1", NOW))


#: A header with one additional record and no room for a question: its last 11 bytes read
#: as an option-less OPT record, so the end-read shape puts the question's end at or before
#: the header's (23 bytes; the 24-27 byte ones have 1-4 stray bytes before the OPT record).
OPT_ONLY = bytes.fromhex("1234 0100 0001 0000 0000 0001") + bytes.fromhex(
    "00 0029 1000 0000 0000 0000"
)


@pytest.mark.parametrize("stray", range(5))
def test_a_header_and_an_opt_record_only_is_formerr_not_an_error(stray: int) -> None:
    """No question name to read: FORMERR, as dnslib answers, and no engine error (the
    remembered-parent lookup read the name's first byte before the name was checked)."""
    packet = OPT_ONLY[:12] + bytes(stray) + OPT_ONLY[12:]
    engine = new_engine()
    fast = engine.handle(packet, "127.0.0.1", NOW)
    assert isinstance(fast, bytes)
    assert summary(fast)[0][-1] == 1  # FORMERR
    assert engine.stats.errors == 0
    same_outcome(fast, new_engine().handle_slow(packet, "127.0.0.1", NOW))


def same_outcome(fast: object, slow: object) -> None:
    if isinstance(slow, bytes):
        assert isinstance(fast, bytes), (fast, slow)
        assert fast == slow or summary(fast) == summary(slow)
    elif isinstance(slow, ForwardJob):
        assert isinstance(fast, ForwardJob), (fast, slow)
        assert (fast.key, fast.query, fast.qend, fast.edns, fast.limit) == (
            slow.key,
            slow.query,
            slow.qend,
            slow.edns,
            slow.limit,
        )
    else:
        assert fast is None and slow is None, (fast, slow)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries(), client=st.sampled_from(CLIENTS), data=st.data())
@example(query=b"", client="127.0.0.1", data=None)
@example(query=COOKIE_QUERY, client="127.0.0.1", data=None)
@example(query=OVERLONG_OPTION, client="127.0.0.1", data=None)
def test_fast_path_agrees_with_dnslib(query: bytes, client: str, data: Any) -> None:
    packet = mutations(query, data) if data is not None else query
    engine = new_engine()
    fast = engine.handle(packet, client, NOW)
    slow = new_engine().handle_slow(packet, client, NOW)
    same_outcome(fast, slow)
    for job in (fast, slow):
        if isinstance(job, ForwardJob):  # the question's end the forwarder is given
            assert question_of(job.query) == job.query[12 : job.qend]
    # Asked again with another ID: remembered replies must still match dnslib.
    again = bytes((packet[0] ^ 0x5A,)) + packet[1:] if packet else packet
    same_outcome(engine.handle(again, client, NOW), new_engine().handle_slow(again, client, NOW))
    # And in other letters: the name's only (a folded-memo hit), then every byte after the
    # header (flags, type, class and EDNS bytes too, which must not match a folded entry).
    for other in (swap_name_case(again), again[:12] + again[12:].swapcase()):
        same_outcome(
            engine.handle(other, client, NOW), new_engine().handle_slow(other, client, NOW)
        )


def swap_name_case(packet: bytes) -> bytes:
    """``packet`` with the question name's letters in the other case (when it has one)."""
    end = name_end(packet)
    return packet if end < 0 else packet[:12] + packet[12:end].swapcase() + packet[end:]


@settings(max_examples=EXAMPLES, deadline=None)
@given(packet=st.binary(max_size=300), client=st.sampled_from(CLIENTS))
def test_junk_never_crashes_and_both_paths_agree(packet: bytes, client: str) -> None:
    engine = new_engine()
    fast = engine.handle(packet, client, NOW)
    assert fast is None or isinstance(fast, bytes | ForwardJob)
    same_outcome(fast, new_engine().handle_slow(packet, client, NOW))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries(), data=st.data())
def test_plain_shape_is_simple_query_read_from_the_end(query: bytes, data: Any) -> None:
    """The engine's end-read shape equals the walking parser's wherever the name ends there."""
    packet = mutations(query, data)
    walked = simple_query(packet)
    shape = plain_shape(packet)
    if walked is not None:
        assert shape == (walked[0], walked[3])
    if shape is not None and name_end(packet) == shape[0]:
        assert walked is not None
        assert (walked[0], walked[3]) == shape


def test_fast_path_takes_the_common_shapes() -> None:
    for packet in (
        DNSRecord.question("DnD.dartmouth.edu", "A").pack(),
        DNSRecord.question("www.example.com", "AAAA").pack(),
    ):
        assert simple_query(bytes(packet)) is not None
    with_cookie = DNSRecord.question("dnd", "A")
    from dnslib import EDNSOption

    with_cookie.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(10, b"\x02" * 8)]))
    assert simple_query(bytes(with_cookie.pack())) is not None


def upstream_reply(query: bytes, ttls: list[int], kind: str) -> bytes:
    """A reply as an upstream would send it, built by dnslib (compressed names)."""
    request = DNSRecord.parse(query)
    reply = request.reply(ra=1)
    name = request.q.qname
    if kind == "nxdomain":
        reply.header.rcode = 3
        reply.add_auth(
            RR(
                DNSLabel("example.com"),
                QTYPE.SOA,
                ttl=ttls[0],
                rdata=SOA("ns.example.com", "host.example.com", (1, 2, 3, 4, ttls[-1])),
            )
        )
    else:
        for i, ttl in enumerate(ttls):
            reply.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A(f"192.0.2.{i + 1}")))
        reply.add_ar(RR("extra." + str(name), QTYPE.TXT, ttl=ttls[0], rdata=TXT("x")))
    return bytes(reply.pack())


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    letters=st.lists(st.booleans(), min_size=1, max_size=20),
    ttls=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    age=st.floats(0, 6000, allow_nan=False),
    kind=st.sampled_from(["answer", "nxdomain"]),
    new_id=st.integers(0, 0xFFFF),
    edns=st.booleans(),
)
def test_cache_hits_patch_id_letters_and_ttls(
    letters: list[bool], ttls: list[int], age: float, kind: str, new_id: int, edns: bool
) -> None:
    engine = new_engine()
    first = DNSRecord.question("www.example.com", "A")
    if edns:
        first.add_ar(EDNS0(udp_len=1232))
    first_packet = bytes(first.pack())
    job = engine.handle(first_packet, "127.0.0.1", NOW)
    assert isinstance(job, ForwardJob)
    response = upstream_reply(job.query, ttls, kind)
    delivered = engine.finish(job, response, NOW)
    assert summary(delivered)[0][0] == first.header.id

    scan = scan_response(response)
    assert scan is not None
    lifetime = min(ttls) if kind == "answer" else min(ttls[0], ttls[-1])

    second = DNSRecord.question(random_case("www.example.com", letters), "A")
    second.header.id = new_id
    if edns:
        second.add_ar(EDNS0(udp_len=1232))
    second_packet = bytes(second.pack())
    hit = engine.handle(second_packet, "127.0.0.1", NOW + age)
    # The same question again (another ID, a little later) is a remembered reply.
    repeat = bytes((second_packet[0] ^ 0x5A,)) + second_packet[1:]
    again = engine.handle(repeat, "127.0.0.1", NOW + age + 0.25)
    # In other letters too (the folded memo when ``second`` was in mixed case).
    swapped = swap_name_case(repeat)
    again_swapped = engine.handle(swapped, "127.0.0.1", NOW + age + 0.25)
    if isinstance(hit, bytes) and int(age + 0.25) == int(age) and age + 0.25 < lifetime:
        assert again == repeat[:2] + hit[2:]
        qend = name_end(swapped) + 4
        assert again_swapped == swapped[:2] + hit[2:12] + swapped[12:qend] + hit[qend:]
    if lifetime == 0 or age >= lifetime:
        assert isinstance(hit, ForwardJob)
        return
    assert isinstance(hit, bytes)
    header, questions, answers, authority, additional = summary(hit)
    expected = DNSRecord.parse(response)
    assert header[0] == new_id
    assert questions == [(tuple(second.q.qname.label), 1, 1)]
    elapsed = int(age)
    for got, want in zip(answers + authority, expected.rr + expected.auth, strict=True):
        assert got[3] == max(0, want.ttl - elapsed)
        assert got[4].lower() == str(want.rdata).lower()
    if kind == "answer":
        assert all(rr[0] == questions[0][0] for rr in answers)
    assert len(additional) == len(expected.ar)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=queries(),
    ttls=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    kind=st.sampled_from(["answer", "nxdomain"]),
    swap=st.booleans(),
    data=st.data(),
)
def test_a_reply_carrying_the_question_as_sent_scans_alike_from_its_known_end(
    query: bytes, ttls: list[int], kind: str, swap: bool, data: Any
) -> None:
    """Engine.finish gives the scan where the question ends when the reply carries the
    query's question bytes as they are: the scan and the client's reply are the same as
    when the name is walked."""
    engine = new_engine()
    job = engine.handle(mutations(query, data), "127.0.0.1", NOW)
    if not isinstance(job, ForwardJob):
        return
    try:
        reply = upstream_reply(job.query, ttls, kind)
    except Exception:  # a question dnslib cannot build a reply for
        return
    if swap:
        reply = swap_name_case(reply)
    response = mutations(reply, data)
    if response.startswith(job.query[12 : job.qend], 12):
        assert scan_response(response, job.qend) == scan_response(response)
    walking = new_engine()
    fresh = walking.handle(job.packet, "127.0.0.1", NOW)
    assert isinstance(fresh, ForwardJob)
    with mock.patch.object(engine_module, "scan_response", lambda r, _=0: scan_response(r)):
        want = walking.finish(fresh, response, NOW)
    assert engine.finish(job, response, NOW) == want


def test_scan_finds_every_ttl_offset() -> None:
    query = DNSRecord.question("a.example", "A")
    response = upstream_reply(bytes(query.pack()), [30, 40, 50], "answer")
    scan = scan_response(response)
    assert scan is not None
    assert [struct.unpack_from(">I", response, o)[0] for o in scan.ttl_offsets] == [30, 40, 50, 30]
    assert scan_response(response[:-1]) is None


def test_a_folded_memo_hit_needs_the_same_edns_payload() -> None:
    """A remembered reply in other letters is served only to the same flags and EDNS bytes.

    A 600-byte cached reply fits a client that takes 609 bytes (payload 0x0261) and must
    be truncated for one that takes 577 (0x0241): lower-casing the query makes those two
    payloads alike (0x61 is "a", 0x41 "A"), so the folded memo must compare them exactly.
    """
    engine = new_engine()

    def ask(payload: int, name: str) -> bytes:
        query = DNSRecord.question(name, "TXT")
        query.add_ar(EDNS0(udp_len=payload))
        return bytes(query.pack())

    job = engine.handle(ask(1232, "big.example.com"), "127.0.0.1", NOW)
    assert isinstance(job, ForwardJob)
    reply = DNSRecord.parse(job.query).reply(ra=1)
    reply.add_answer(RR("big.example.com", QTYPE.TXT, ttl=300, rdata=TXT("x" * 250)))
    reply.add_answer(RR("big.example.com", QTYPE.TXT, ttl=300, rdata=TXT("y" * 250)))
    reply.add_answer(RR("big.example.com", QTYPE.TXT, ttl=300, rdata=TXT("z" * 20)))
    engine.finish(job, bytes(reply.pack()), NOW)
    fits = engine.handle(ask(0x0261, "BIG.example.com"), "127.0.0.1", NOW)
    assert isinstance(fits, bytes)
    assert 577 < len(fits) <= 609 and not DNSRecord.parse(fits).header.tc
    small = ask(0x0241, "Big.example.com")
    truncated = engine.handle(small, "127.0.0.1", NOW)
    assert isinstance(truncated, bytes)
    assert DNSRecord.parse(truncated).header.tc
    assert truncated == engine.handle_slow(small, "127.0.0.1", NOW)


#: Bytes outside the name that can be letters in a plain query: header byte 3 (Z and
#: RCODE bits), the type (65 is "A", 97 "a"), the OPT payload and its flags.
FLAG_BYTES = st.sampled_from([0x00, 0x10, 0x20, 0x30, 0x41, 0x61, 0x5A])
OPT_PAYLOADS = st.sampled_from([-1, 1232, 4096, 0x0241, 0x0261, 0x4141])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([*PROTECTED, "www.example.com"]),
    first_case=st.lists(st.booleans(), min_size=1, max_size=8),
    rd=st.integers(0, 1),
    byte3=FLAG_BYTES,
    qtype=st.sampled_from([1, 28, 255, 12, 16, 65, 97]),
    payload=OPT_PAYLOADS,
    opt_flags=FLAG_BYTES,
    flips=st.one_of(st.just([True]), st.lists(st.booleans(), min_size=1, max_size=64)),
)
# Type 65 ("A") asked again as 97 ("a"): the same folded question, another type.
@example(
    name="www.example.com",
    first_case=[False],
    rd=1,
    byte3=0,
    qtype=65,
    payload=-1,
    opt_flags=0,
    flips=[True],
)
# Asked again all in lower case (its two capitals flipped): the engine skips the folded
# memo for such a query (Engine.handle), and must still answer as a fresh one.
@example(
    name="www.example.com",
    first_case=[False] * 8,
    rd=1,
    byte3=0,
    qtype=1,
    payload=-1,
    opt_flags=0,
    flips=[i in (11, 20) for i in range(64)],
)
@example(
    name="dnd.dartmouth.edu",
    first_case=[False] * 8,
    rd=1,
    byte3=0,
    qtype=1,
    payload=1232,
    opt_flags=0,
    flips=[i in (11, 20) for i in range(64)],
)
def test_a_folded_memo_hit_is_the_computed_reply_byte_for_byte(
    name: str,
    first_case: list[bool],
    rd: int,
    byte3: int,
    qtype: int,
    payload: int,
    opt_flags: int,
    flips: list[bool],
) -> None:
    """A question asked again in other letters (any byte after the ID) is answered from the
    folded memo only when that gives exactly the reply a fresh engine computes for it.

    The first question has a capital, so its reply is remembered by the folded question;
    the second flips the case of letters anywhere after the ID (the name's, and any letter
    among the flags, type and EDNS bytes, which must then not be served the first's reply).
    """
    letters = [True, *first_case]
    opt = b"" if payload < 0 else b"\x00\x00\x29" + struct.pack(">H", payload) + b"\x00\x00"
    opt += bytes((opt_flags, 0, 0, 0)) if opt else b""
    labels = random_case(name, letters).split(".")
    first = (
        bytes((0x12, 0x34, rd, byte3, 0, 1, 0, 0, 0, 0, 0, 1 if opt else 0))
        + b"".join(bytes((len(label),)) + label.encode() for label in labels)
        + b"\x00"
        + struct.pack(">HH", qtype, 1)
        + opt
    )
    second = b"\x56\x78" + bytes(
        b ^ 0x20 if flips[i % len(flips)] and chr(b).isalpha() and b < 0x80 else b
        for i, b in enumerate(first[2:])
    )
    warmed, fresh = new_engine(), new_engine()
    for engine in (warmed, fresh):
        job = engine.handle(first, "127.0.0.1", NOW)
        if isinstance(job, ForwardJob):
            engine.finish(job, upstream_reply(job.query, [300], "answer"), NOW)
    warmed.handle(first, "127.0.0.1", NOW)
    got, want = warmed.handle(second, "127.0.0.1", NOW), fresh.handle(second, "127.0.0.1", NOW)
    if isinstance(want, ForwardJob):
        same_outcome(got, want)
    else:
        assert got == want
    # And what dnslib makes of it, from the same cache.
    same_outcome(got, fresh.handle_slow(second, "127.0.0.1", NOW))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries(), data=st.data())
def test_answers_is_answers_question_once_the_id_matched(query: bytes, data: Any) -> None:
    """The forwarder's per-reply check (question taken out once) decides as the full one."""
    qr = 0x80 if data.draw(st.booleans()) else 0
    reply = bytes((query[0], query[1], query[2] | qr)) + query[3:] if len(query) > 3 else query
    if data.draw(st.booleans()):
        reply = swap_name_case(reply)
    response = mutations(reply, data) + data.draw(st.sampled_from([b"", b"\x00\x01rest"]))
    response = query[:2] + response[2:]  # the ID matched: the channel's key
    assert answers(response, question_of(query)) == answers_question(response, query)


def _without_table(result: bytes | ForwardJob | None) -> object:
    return result[:-1] if isinstance(result, ForwardJob) else result


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(queries(), min_size=1, max_size=6), data=st.data())
def test_a_remembered_parent_decides_as_walking_the_name(packets: list[bytes], data: Any) -> None:
    """Engine.handle remembers the parents of forwarded names (well formed, and whether
    under a protected name): a query whose parent is remembered gets what an engine that
    walks its name gets, whatever its bytes (a sibling is asked first, so it is)."""
    engine = new_engine()
    for query in packets:
        packet = mutations(query, data)
        first = packet[12] if len(packet) > 12 else 0
        if 0 < first <= 63 and len(packet) > 12 + first + 1:
            sibling = packet[:12] + b"\x01x" + packet[12 + first + 1 :]
            assert _without_table(engine.handle(sibling, "127.0.0.1", NOW)) == _without_table(
                new_engine().handle(sibling, "127.0.0.1", NOW)
            )
        fresh = new_engine().handle(packet, "127.0.0.1", NOW)
        assert _without_table(engine.handle(packet, "127.0.0.1", NOW)) == _without_table(fresh)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ttls=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    kind=st.sampled_from(["answer", "nxdomain"]),
)
def test_the_cache_stores_what_new_entry_describes(ttls: list[int], kind: str) -> None:
    """Cache.put builds its entry inline (once per forwarded miss): the same as new_entry."""
    query = bytes(DNSRecord.question("www.example.com", "A").pack())
    response = upstream_reply(query, ttls, kind)
    scan = scan_response(response)
    assert scan is not None
    cache = Cache(10)
    seconds = lifetime(scan, max_ttl=cache.max_ttl, max_negative_ttl=cache.max_negative_ttl)
    assert cache.put(b"key", response, scan, NOW) == (seconds > 0)
    if seconds > 0:
        assert cache.entries[b"key"] == new_entry(response, scan, NOW, seconds)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=queries(),
    ttl=st.integers(0, 0xFFFFFFFF),
    rtype=st.sampled_from([1, 5, 6, 28, 41]),
    rdata=st.binary(max_size=40),
    data=st.data(),
)
def test_a_one_answer_reply_scans_as_the_walk_of_its_records(
    query: bytes, ttl: int, rtype: int, rdata: bytes, data: Any
) -> None:
    """scan_response reads a reply of one answer whose owner points at the question
    without walking: the same Scan as the general walk, whatever the bytes."""
    qn = name_end(query)
    if qn < 0 or len(query) < qn + 4:
        return
    head = query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
    record = b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
    response = mutations(head + query[12 : qn + 4] + record, data)
    walked = None
    if len(response) >= 12 and name_end(response) > 0:
        counts = struct.unpack_from(">HHHH", response, 4)
        if counts[0] == 1:
            walked = fastpath._walk_records(response, name_end(response) + 4, *counts[1:])
    assert scan_response(response) == walked


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=queries(),
    ttls=st.lists(st.integers(0, 5000), min_size=1, max_size=4),
    kind=st.sampled_from(["answer", "nxdomain"]),
    data=st.data(),
)
def test_a_reply_carrying_the_question_as_sent_is_the_general_join(
    query: bytes, ttls: list[int], kind: str, data: Any
) -> None:
    """Engine.finish answers a reply that carries the question's bytes as sent with the
    client's ID on the reply's bytes: what the general join of ID, header, the client's
    question and the reply's records makes, byte for byte."""
    engine = new_engine()
    job = engine.handle(mutations(query, data), "127.0.0.1", NOW)
    if not isinstance(job, ForwardJob):
        return
    packet, qend = job.packet, job.qend
    assert job.query[12:qend] == packet[12:qend]  # the premise: the client's question bytes
    try:
        response = mutations(upstream_reply(job.query, ttls, kind), data)
    except Exception:  # a question dnslib cannot build a reply for
        return
    out = engine.finish(job, response, NOW)
    if not response.startswith(packet[12:qend], 12) or scan_response(response, qend) is None:
        return
    header = response[2:12]
    if not (packet[3] & 0x20 or job.edns > 0xFFFF):  # AD only to a query with AD or DO
        header = header[:1] + bytes((header[1] & ~0x20,)) + header[2:]
    general = b"".join((packet[:2], header, packet[12:qend], response[qend:]))
    if job.limit is not None and len(general) > job.limit:
        assert out == error_reply(packet, qend, 0, job.edns, truncated=True)
    elif engine._screen(response) is None:
        assert out == general


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    packet=st.binary(min_size=12, max_size=80),
    flags=st.integers(0, 0xFFFF),
    edns=st.one_of(st.just(-1), st.integers(0, 0x1FFFF)),
)
def test_upstream_query_is_its_header_packed_and_joined(
    packet: bytes, flags: int, edns: int
) -> None:
    """upstream_query's looked-up headers make what packing the flags and counts made."""
    qend = len(packet)
    kept = struct.pack(">H", flags & (rfc.RD | rfc.AD | rfc.CD))
    if edns < 0:
        want = b"\x00\x00" + kept + b"\x00\x01\x00\x00\x00\x00\x00\x00" + packet[12:qend]
    else:
        opt = rfc.OPT_DO if edns & 0x10000 else rfc.OPT_PLAIN
        want = b"\x00\x00" + kept + b"\x00\x01\x00\x00\x00\x00\x00\x01" + packet[12:qend] + opt
    assert upstream_query(packet, qend, flags, edns) == want


def test_upstream_heads_hold_one_header_per_forwarded_flags_subset() -> None:
    from blitzdns.dns import fastpath

    assert len(fastpath._HEAD_PLAIN) == len(fastpath._HEAD_OPT) == 8
    assert set(fastpath._HEAD_PLAIN) == set(fastpath._HEAD_OPT)
    assert all(k & ~(rfc.RD | rfc.AD | rfc.CD) == 0 for k in fastpath._HEAD_PLAIN)


def _ask(name: str, qid: int) -> bytes:
    record = DNSRecord(DNSHeader(id=qid, rd=1))
    record.add_question(DNSQuestion(name, QTYPE.A))
    return bytes(record.pack())


def test_finish_echoes_each_clients_letters_whatever_the_reply_carries() -> None:
    """Two clients asking one name in different cases each get their own letters back,
    whichever letters the upstream's reply carries (a case-insensitive match must not take
    the reply's bytes as the client's)."""
    e = new_engine()
    a, b = _ask("MiXeD.example.com", 0x1111), _ask("mIxEd.EXAMPLE.com", 0x2222)
    j1, j2 = e.handle(a, "127.0.0.1", NOW), e.handle(b, "127.0.0.1", NOW)
    assert isinstance(j1, ForwardJob) and isinstance(j2, ForwardJob)
    assert j1.key == j2.key
    reply = upstream_reply(j1.query, [300], "answer")
    for job, resp in ((j2, reply), (j1, swap_name_case(reply))):
        out = e.finish(job, resp, NOW)
        assert out[:2] == job.packet[:2] and out[12 : job.qend] == job.packet[12 : job.qend]
        assert out[2:12] == resp[2:12] and out[job.qend :] == resp[job.qend :]


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_finish_truncates_past_the_limit_and_no_sooner(extra: int) -> None:
    """A UDP reply of exactly the limit goes whole; one byte more is truncated (TC)."""
    e = new_engine()
    job = e.handle(_ask("big.example.com", 0x3333), "127.0.0.1", NOW)
    assert isinstance(job, ForwardJob)
    assert job.limit == 512
    req = DNSRecord.parse(job.query)

    def sized(n: int) -> bytes:
        r = req.reply()
        t = b"x" * n
        r.add_answer(
            RR(
                req.q.qname,
                QTYPE.TXT,
                ttl=60,
                rdata=TXT([t[i : i + 255] for i in range(0, n, 255)]),
            )
        )
        return bytes(r.pack())

    resp = next(r for r in map(sized, range(400, 600)) if len(r) == 512 + extra)
    out = e.finish(job, resp, NOW)
    if len(resp) > 512:
        assert out[2] & rfc.TC_BYTE2 and out[6:8] == b"\0\0"
    else:
        assert out == job.packet[:2] + resp[2:]


@st.composite
def forwarded_queries(draw: st.DrawFn) -> bytes:
    """A plain query for a name the engine forwards: flags, type, letters and EDNS drawn."""
    header = drawn_header(draw)
    record = DNSRecord(header)
    name = draw(
        st.one_of(
            st.from_regex(r"[a-zA-Z0-9-]{1,20}\.(example\.com|Bench\.TEST)", fullmatch=True),
            # Names that hold a protected name's label (the guard's screen finds it).
            st.builds(
                lambda label, rest: f"{label}.{rest}",
                st.sampled_from([n.split(".")[0] for n in PROTECTED]),
                st.sampled_from(["example.com", "x.example.org", "Bench.TEST"]),
            ),
            # Labels of any bytes (UTF-8 letters, bytes above 0x7F, dots and NULs in a label).
            st.builds(
                lambda label, rest: DNSLabel([label, *rest]),
                st.one_of(
                    st.text(min_size=1, max_size=12).map(lambda t: t.encode()[:63] or b"x"),
                    st.binary(min_size=1, max_size=20),
                ),
                st.sampled_from([[b"example", b"com"], [b"Bench", b"TEST"], [b"\xc3\xa9x"]]),
            ),
        )
    )
    record.add_question(DNSQuestion(name, draw(st.sampled_from([1, 1, 28, 5, 16, 255]))))
    edns = draw(st.sampled_from(["none", "none", "plain", "do"]))
    if edns != "none":
        payload = draw(st.sampled_from([0, 512, 1232, 4096]))
        record.add_ar(EDNS0(udp_len=payload, flags="do" if edns == "do" else ""))
    return bytes(record.pack())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.one_of(forwarded_queries(), forwarded_queries(), forwarded_queries(), queries()),
    ttl=st.one_of(
        st.integers(1, 5000),
        st.integers(0, 0xFFFFFFFF),
        # Around the top bit (RFC 2181 §8: set, the TTL counts as zero).
        st.integers(0x7FFFFFF0, 0x8000000F),
        st.sampled_from([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]),
    ),
    rtype=st.sampled_from([1, 1, 28, 28, 5, 6, 41]),
    rdata=st.one_of(
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=4, max_size=4),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=40),
        st.binary(min_size=460, max_size=4100),
    ),
    rcode=st.sampled_from([0, 0, 0, 2, 3, 5]),
    truncated=st.sampled_from([False, False, True]),
    # The whole flags word (AD, CD, QR, opcode, any rcode) drawn at times, and the class.
    flags_word=st.one_of(st.none(), st.none(), st.integers(0, 0xFFFF)),
    ad=st.booleans(),
    rclass=st.one_of(st.just(1), st.just(1), st.integers(0, 0xFFFF)),
    cache_size=st.sampled_from([100, 100, 2, 1, 0]),
    max_ttl=st.sampled_from([86400, 86400, 60, 0]),
    data=st.data(),
)
def test_a_one_answer_reply_finishes_as_the_general_steps(
    query: bytes,
    ttl: int,
    rtype: int,
    rdata: bytes,
    rcode: int,
    truncated: bool,
    flags_word: int | None,
    ad: bool,
    rclass: int,
    cache_size: int,
    max_ttl: int,
    data: Any,
) -> None:
    """Engine.finish takes a reply of one answer whose owner points at the question, which
    carries the question as sent, without a Scan (Cache.put_answer): the client's reply,
    the cache's entries (in their order, evictions included) and the counters are what
    the general steps (scan_response, Cache.put, the join) make, whatever the bytes."""
    engines = []
    for _ in range(2):
        engine = new_engine(cache_size)
        engine.cache.max_ttl = max_ttl
        # Something cached before, so a small cache evicts.
        old = upstream_reply(_ask("old.example.com", 1), [300], "answer")
        old_scan = scan_response(old)
        assert old_scan is not None
        engine.cache.put(b"\x03old\x00\x00\x01\x00\x01\x03", old, old_scan, NOW - 1)
        engines.append(engine)
    fast, general = engines
    job = fast.handle(query, "127.0.0.1", NOW)
    same = general.handle(query, "127.0.0.1", NOW)
    if not isinstance(job, ForwardJob) or not isinstance(same, ForwardJob):
        return
    qend = job.qend
    flags = 0x8000 | (0x0200 if truncated else 0) | 0x0080 | rcode | (job.query[2] & 1) << 8
    flags |= 0x0020 if ad else 0
    if flags_word is not None:
        flags = flags_word
    head = job.query[:2] + struct.pack(">HHHHH", flags, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata
    response = head + job.query[12:qend] + record
    if data.draw(st.booleans()):
        response = mutations(response, data)
    out = fast.finish(job, response, NOW)
    with mock.patch.object(engine_module, "_ONE_ANSWER_COUNTS", b"never"):
        want = general.finish(same, response, NOW)
    assert out == want
    assert list(fast.cache.entries.items()) == list(general.cache.entries.items())
    assert fast.stats == general.stats


def _one_answer(job: ForwardJob, qtype: int, ttl: int) -> bytes:
    """A plain NOERROR reply to ``job``: one A or AAAA record owned by the question."""
    rdata = bytes(4) if qtype == 1 else bytes(16)
    return (
        job.query[:2]
        + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
        + job.query[12 : job.qend]
        + b"\xc0\x0c"
        + struct.pack(">HHIH", qtype, 1, ttl, len(rdata))
        + rdata
    )


@pytest.mark.parametrize("qtype", [1, 28])
def test_a_plain_one_answer_reply_takes_the_branch_without_a_scan(qtype: int) -> None:
    """The property test above only compares: this holds that the one-answer branch is
    taken at all. A plain A (AAAA) reply to a forwarded query is cached and passed on with
    scan_response and Cache.put made to fail (the general steps would call both)."""
    engine = new_engine()
    record = DNSRecord(DNSHeader(id=0x4242, rd=1))
    record.add_question(DNSQuestion("Plain.Example.com", qtype))
    packet = bytes(record.pack())
    job = engine.handle(packet, "127.0.0.1", NOW)
    assert isinstance(job, ForwardJob)
    response = _one_answer(job, qtype, 300)
    failing = mock.Mock(side_effect=AssertionError("the general steps ran"))
    with (
        mock.patch.object(engine_module, "scan_response", failing),
        mock.patch.object(Cache, "put", failing),
    ):
        out = engine.finish(job, response, NOW)
    assert out == packet[:2] + response[2:]
    assert failing.call_count == 0
    (entry,) = engine.cache.entries.values()
    assert entry[0] == NOW + 300 and entry[6] == (300,)


@pytest.mark.parametrize("ttl", [0x80000000, 0xFFFFFFFF])
@pytest.mark.parametrize("kind", ["one answer", "answers", "nxdomain minimum", "nxdomain ttl"])
def test_a_ttl_with_its_top_bit_set_counts_as_zero(ttl: int, kind: str) -> None:
    """RFC 2181 §8: such a TTL is treated as zero, so the reply is not cached, in the
    one-answer branch and the general steps alike (the reply itself passes unchanged)."""
    engine = new_engine()
    packet = _ask("top.example.com", 0x5151)
    job = engine.handle(packet, "127.0.0.1", NOW)
    assert isinstance(job, ForwardJob)
    if kind == "one answer":
        response = _one_answer(job, 1, ttl)
    elif kind == "answers":
        response = upstream_reply(job.query, [300, ttl, 60], "answer")
    elif kind == "nxdomain minimum":
        response = upstream_reply(job.query, [300, ttl], "nxdomain")
    else:
        response = upstream_reply(job.query, [ttl, 300], "nxdomain")
    scan = scan_response(response)
    assert scan is not None
    assert lifetime(scan, max_ttl=86400, max_negative_ttl=10800) == 0
    general = new_engine()
    same = general.handle(packet, "127.0.0.1", NOW)
    assert isinstance(same, ForwardJob)
    with mock.patch.object(engine_module, "_ONE_ANSWER_COUNTS", b"never"):
        assert general.finish(same, response, NOW) == packet[:2] + response[2:]
    assert engine.finish(job, response, NOW) == packet[:2] + response[2:]
    assert not engine.cache.entries and not general.cache.entries
