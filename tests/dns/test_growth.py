"""Lookups cost the same however many names the table and the cache hold (issue 18's growth).

Counted, not timed: the Python lines the engine runs for one query (``sys.settrace``
line events) are the same with 10 protected names as with 1,000, and with 10 cached
names as with 5,000. A lookup that walked the names would add lines per name. The
dictionaries themselves are C (constant expected time); ``bench/dns_growth_bench.py``
measures CPU, latency and RSS up to 10,000 protected and 1,000,000 cached names.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from blitzdns.config import parse_config
from blitzdns.dns.cache import Cache
from blitzdns.dns.decide import Local, Question, local_answer
from blitzdns.dns.engine import Engine, ForwardJob
from blitzdns.dns.fastpath import encode_local
from blitzdns.dns.stats import ResolverStats
from blitzdns.dns.table import Table, to_wire

from .conftest import SHARED_TOML
from .test_fastpath import same_outcome

NOW = 1000.0
CLIENT = "127.0.0.1"


def engine_protecting(hosts: int, cache_size: int = 10_000) -> Engine:
    lines = ["[tunnel]", 'mouths = "127.80.0.0/16"']
    lines.append("hosts = [" + ", ".join(f'"h{i}"' for i in range(hosts)) + "]")
    for i in range(hosts):
        lines += [f"[hosts.h{i}]", f'names = ["h{i}.growth.test"]', 'services = ["dnd"]']
    table = Table.from_config(parse_config("\n".join(lines) + "\n"))
    return Engine(table, Cache(cache_size), ResolverStats())


def query(name: str) -> bytes:
    """An A query for ``name``, no EDNS (built by hand: the fills make thousands)."""
    labels = b"".join(bytes((len(label),)) + label.encode() for label in name.split("."))
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"


def answer(packet: bytes) -> bytes:
    """The upstream's reply to ``packet``: one A record, TTL 3600."""
    record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xc0\x00\x02\x08"
    return packet[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + packet[12:] + record


def lines_run(call: Callable[[], Any]) -> int:
    """How many Python lines ``call`` runs (every frame it enters).

    The garbage collector is held meanwhile: a collection that happens to start inside
    ``call`` runs finalizers (``__del__``, weakref callbacks) of what earlier tests left,
    and their lines would be counted too (seen once in a full run: 9 lines more).
    """
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)
        if collecting:
            gc.enable()
    return count


def fill(engine: Engine, names: int) -> None:
    """Cache ``names`` forwarded replies, as the resolver does when each comes back."""
    for i in range(names):
        packet = query(f"n{i}.cached.test")
        job = engine.handle(packet, CLIENT, NOW)
        assert isinstance(job, ForwardJob)
        engine.finish(job, answer(packet), NOW)
    assert len(engine.cache.entries) == names


def costs(engine: Engine, serial: int) -> dict[str, int]:
    """Lines per case; each query's letters are new, so no remembered reply answers it."""
    protected = query(("H3.growth.TEST", "h3.GROWTH.test")[serial])
    hit = query(("N5.cached.TEST", "n5.CACHED.test")[serial])
    miss = query(f"new{serial}.example.test")
    return {
        "protected": lines_run(lambda: engine.handle(protected, CLIENT, NOW + 1)),
        "cache hit": lines_run(lambda: engine.handle(hit, CLIENT, NOW + 1)),
        "miss": lines_run(lambda: engine.handle(miss, CLIENT, NOW + 1)),
    }


def test_protected_lookups_run_the_same_lines_for_10_or_1000_names() -> None:
    small, large = engine_protecting(10), engine_protecting(1000)
    for engine in (small, large):
        fill(engine, 10)
        costs(engine, 0)  # the client's view is compiled on its first query
    assert costs(small, 1) == costs(large, 1)


def test_cache_hits_and_misses_run_the_same_lines_for_10_or_5000_cached_names() -> None:
    small, large = engine_protecting(10), engine_protecting(10)
    fill(small, 10)
    fill(large, 5000)
    for engine in (small, large):
        costs(engine, 0)
    assert costs(small, 1) == costs(large, 1)


def test_inserting_into_a_full_cache_runs_the_same_lines_for_10_or_5000_names() -> None:
    """A full cache evicts its oldest entry per insert with no Python work per entry (the
    eviction itself is ``OrderedDict.popitem``, O(1))."""
    small, large = engine_protecting(10, cache_size=10), engine_protecting(10, cache_size=5000)
    fill(small, 10)
    fill(large, 5000)

    def insert(engine: Engine) -> int:
        packet = query("late.cached.test")
        job = engine.handle(packet, CLIENT, NOW)
        assert isinstance(job, ForwardJob)
        response = answer(packet)
        return lines_run(lambda: engine.finish(job, response, NOW))

    assert insert(small) == insert(large)
    assert len(small.cache.entries) == 10 and len(large.cache.entries) == 5000


def test_cached_entries_are_left_out_of_the_cyclic_collectors_work() -> None:
    """A full collection walks every object the collector tracks; a cache of a million
    names as a million tracked objects paused the resolver 0.3-0.8 s each time one ran
    (bench/dns_growth_bench.py). Entries are tuples of bytes and numbers, which the
    collector stops tracking the first time it sees them, also once patched for an age."""
    engine = engine_protecting(10)
    fill(engine, 50)
    for i in range(0, 50, 2):  # hits a second later: their tails are patched for age 1
        packet = query(f"n{i}.cached.test")
        reply = engine.handle(packet, CLIENT, NOW + 1.5)
        assert isinstance(reply, bytes)
        assert reply[-10:-6] == (3599).to_bytes(4, "big")
    gc.collect()
    tracked = [key for key, entry in engine.cache.entries.items() if gc.is_tracked(entry)]
    assert tracked == []


def engine_with_mixed_hosts() -> Engine:
    """Hosts with one name or two, one with an IPv6 mouth and offered at a shared address."""
    lines = [
        "[dns]",
        'allow = ["127.0.0.1/32"]',
        "[[shared]]",
        'address = "127.0.0.5"',
        'allow = ["127.0.0.64/26"]',
        'hosts = ["h1"]',
        "dns = true",
        "[tunnel]",
        'mouths = "127.80.0.0/16"',
        "hosts = [" + ", ".join(f'"h{i}"' for i in range(12)) + "]",
    ]
    for i in range(12):
        names = f'["h{i}.growth.test", "h{i}"]' if i % 3 == 0 else f'["h{i}.growth.test"]'
        lines += [f"[hosts.h{i}]", f"names = {names}", 'services = ["dnd"]']
        if i == 1:
            lines.append('mouth6 = "::1"')
    table = Table.from_config(parse_config("\n".join(lines) + "\n"))
    return Engine(table, Cache(100), ResolverStats())


def variants_of(wire_name: bytes, qtype: int, qclass: int = 1) -> list[tuple[bytes, int]]:
    """The query in every variant (RD, CD; no EDNS, EDNS, EDNS with DO), each with its
    :func:`~blitzdns.dns.fastpath.variant`."""
    question = wire_name + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
    out = []
    for echoed, flags in enumerate((b"\x00\x00", b"\x01\x00", b"\x00\x10", b"\x01\x10")):
        head = b"\xab\xcd" + flags + b"\x00\x01\x00\x00\x00\x00"
        out.append((head + b"\x00\x00" + question, echoed * 3))
        for edns, do in ((1, b"\x00"), (2, b"\x80")):
            opt = b"\x00\x00\x29\x04\xd0\x00\x00" + do + b"\x00\x00\x00"
            out.append((head + b"\x00\x01" + question + opt, echoed * 3 + edns))
    return out


#: Ordinary types, then meta types (ANY, AXFR, IXFR, OPT, 0, 65535).
QTYPES = (1, 28, 12, 16, 5, 33, 65, 255, 252, 251, 41, 0, 65535)
#: IN, CH, NONE, ANY.
QCLASSES = (1, 3, 254, 255)


@pytest.mark.parametrize("toml", ["mixed", "shared"])
def test_shared_answers_are_each_types_own_answer_byte_for_byte(toml: str) -> None:
    """A name's answers are kept once where equal (every NODATA alike, ANY the A or the
    PTR) and found by one key per name: each reply is the general path's (dnslib, then
    ``decide``) for every type (meta types too) and class, in every variant, in both
    letter cases (the second a folded-memo entry), asked twice (the second from the
    memo), in each view; in class IN also byte for byte the answer ``decide`` computes
    for that very type, encoded on its own."""
    engine = (
        engine_with_mixed_hosts()
        if toml == "mixed"
        else Engine(Table.from_config(parse_config(SHARED_TOML)), Cache(100), ResolverStats())
    )
    table = engine.table
    visited = []
    for client in ("127.0.0.1", "127.0.0.70", "fd00::9"):
        view = table.view_for(client)
        if view is None:
            continue  # refused ("mixed" has no shared address for fd00::9)
        assert view.targets and view.pointers, client
        visited.append(client)
        for name in (*view.targets, *view.pointers):
            wire_name = to_wire(name)
            qend = 12 + len(wire_name) + 4
            for qtype in QTYPES:
                for qclass in QCLASSES:
                    own = local_answer(view, table, Question(name, qtype, qclass))
                    expected = encode_local(own) if isinstance(own, Local) else None
                    variants = variants_of(wire_name, qtype, qclass)
                    # Every variant in class IN for the ordinary types; for the rest, the
                    # three EDNS kinds (RD and CD change only the header's echoed bits).
                    if qclass != 1 or qtype not in QTYPES[:7]:
                        variants = variants[:3]
                    for packet, which in variants:
                        upper = packet[:12] + packet[12 : qend - 4].upper() + packet[qend - 4 :]
                        for asked in (packet, upper):
                            fresh = Engine(table, Cache(100), ResolverStats())
                            slow = fresh.handle_slow(asked, client, NOW)
                            for _ in range(2):
                                fast = engine.handle(asked, client, NOW)
                                same_outcome(fast, slow)
                                if qclass == 1 and qtype not in (252, 251, 41):
                                    assert expected is not None
                                    want = expected.reply(packet, qend, which)
                                    assert fast == want[:12] + asked[12:qend] + want[qend:]
    # every view the configuration has was checked: the loopback's, each shared address's
    assert visited == ["127.0.0.1", "127.0.0.70", "fd00::9"][: 2 if toml == "mixed" else 3]
    if toml != "mixed":
        return
    names = engine._fast_view("127.0.0.1").names
    kept = {id(answer) for answers in names.values() for answer in answers}
    # One answer per host (the A its names share) and per mouth's reverse name (the PTR),
    # plus the NODATA, and the AAAA of the host with an IPv6 mouth.
    assert len(names) == 12 + 4 + 12
    assert len(kept) == 12 + 12 + 2
