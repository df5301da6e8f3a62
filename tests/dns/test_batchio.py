"""UDP in batches (``recvmmsg`` / ``sendmmsg``, :mod:`blitzdns.dns.batchio`) against the transport.

The event loop is held while a burst of queries from many client sockets (three client
addresses, two of them in other views) queues up, so the resolver reads them in one
batch; every client must then get exactly the reply the datagram-transport resolver
(``batch_io=False``) gives it — byte for byte for local answers, refusals and errors, the
same records for forwarded names — and nothing where that one sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import random
import select
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.rcode
import pytest

from blitzdns.config import Endpoint
from blitzdns.dns import batchio
from blitzdns.dns.stats import ResolverStats
from tests.peers import FORWARDED_ADDRESS, Dnsmasq, wait_for

from .conftest import SHARED_TOML, FakeUpstream, ServerThread, loop_held, make_config
from .test_resolver import _reply, addresses, mixed_case

pytestmark = pytest.mark.skipif(not batchio.available(), reason="no recvmmsg/sendmmsg here")


def burst() -> list[tuple[str, bytes, bool]]:
    """(client address, datagram, whether a reply comes) for every kind of outcome."""
    rng = random.Random(18)

    def query(name: str, rdtype: str = "A", **kwargs: object) -> bytes:
        message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        message.id = rng.randrange(65536)
        return message.to_wire()

    dnd = query(mixed_case("dnd.dartmouth.edu", rng))
    return [
        *(("127.0.0.1", query(mixed_case("dnd.dartmouth.edu", rng)), True) for _ in range(4)),
        *(("127.0.0.1", bytes((i,)) + dnd[1:], True) for i in range(3)),  # repeats, new IDs
        ("127.0.0.70", query(mixed_case("dnd", rng)), True),  # the LAN view: its own answer
        ("127.0.0.70", query("dasher", "AAAA"), True),
        ("127.0.0.200", query("dnd"), True),  # refused
        ("127.0.0.1", query("DND.dartmouth.edu", "TXT"), True),  # NODATA
        ("127.0.0.1", query("1.0.77.127.in-addr.arpa", "PTR"), True),
        ("127.0.0.1", query("dnd", want_dnssec=True), True),
        ("127.0.0.70", query("lan.fwd.test"), True),  # forwarded
        ("127.0.0.1", query("b.fwd.test", use_edns=0), True),
        ("127.0.0.1", b"\x01\x02\x03", False),  # no header: dropped
        ("127.0.0.1", bytes((dnd[0], dnd[1], dnd[2] | 0x80)) + dnd[3:], False),  # a response
        ("127.0.0.1", dnd[:20], True),  # the question cut short: FORMERR
        ("127.0.0.1", dnd + b"junk", True),
    ]


def answers_to(stub: ServerThread, to: Endpoint) -> tuple[list[bytes | None], int]:
    """Send :func:`burst` to ``to`` while the loop is held; each client's reply, and the
    largest batch the resolver read."""
    plan = burst()
    sockets = []
    for source, _, _ in plan:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sockets.append(sock)
    try:
        with loop_held(stub):
            for sock, (_, datagram, _) in zip(sockets, plan, strict=True):
                sock.sendto(datagram, (to.host, to.port))
        replies: list[bytes | None] = []
        for sock, (_, _, answered) in zip(sockets, plan, strict=True):
            if answered:
                sock.settimeout(10)
                replies.append(sock.recv(4096))
            else:
                replies.append(None)
        # Every reply is in, so every batch is over: the dropped ones had their turn.
        wait_for(lambda: stub.resolver.stats.dropped == 2, "both drops counted", 10)
        for sock, reply in zip(sockets, replies, strict=True):
            if reply is None:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(4096)
    finally:
        for sock in sockets:
            sock.close()
    largest = max((reader.largest_batch for reader in stub.resolver._readers), default=0)
    return replies, largest


def test_a_batch_answers_every_sender_as_the_datagram_transport_does(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    config = make_config(SHARED_TOML)
    batched = resolver_factory(config, [dnsmasq.endpoint])
    plain = resolver_factory(config, [dnsmasq.endpoint], batch_io=False)
    assert batched.resolver._readers and not plain.resolver._readers
    got, largest = answers_to(batched, Endpoint("127.0.0.5", batched.port))
    want, _ = answers_to(plain, Endpoint("127.0.0.5", plain.port))
    assert largest > 1  # several datagrams were read by one recvmmsg
    for (source, datagram, _), ours, theirs in zip(burst(), got, want, strict=True):
        if b"fwd" in datagram and theirs is not None and ours is not None:
            mine, other = dns.message.from_wire(ours), dns.message.from_wire(theirs)
            assert mine.id == other.id and addresses(mine) == addresses(other)
            assert addresses(mine) == [FORWARDED_ADDRESS]
        else:
            assert ours == theirs, (source, datagram)
    ours_stats, theirs_stats = batched.resolver.stats, plain.resolver.stats
    assert ours_stats.formerr == theirs_stats.formerr >= 1
    assert ours_stats.refused == theirs_stats.refused == 1
    assert ours_stats.answered_local == theirs_stats.answered_local


def test_one_datagram_at_a_time_is_answered_as_the_datagram_transport_does(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """A wake-up that finds one datagram (a resolver that is not busy) answers it at once
    with one ``sendto``, not through the batch: the same replies, byte for byte."""
    config = make_config(SHARED_TOML)
    batched = resolver_factory(config, [dnsmasq.endpoint])
    plain = resolver_factory(config, [dnsmasq.endpoint], batch_io=False)
    want, _ = answers_to(plain, Endpoint("127.0.0.5", plain.port))
    drops = 0
    for (source, datagram, answered), theirs in zip(burst(), want, strict=True):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(10)
            sock.sendto(datagram, ("127.0.0.5", batched.port))
            if not answered:
                drops += 1
                wait_for(
                    lambda n=drops: batched.resolver.stats.dropped == n, "the drop counted", 10
                )
                continue
            ours = sock.recv(4096)
        if b"fwd" in datagram:
            assert addresses(dns.message.from_wire(ours)) == [FORWARDED_ADDRESS]
        else:
            assert ours == theirs, (source, datagram)
    # Each wake-up found one datagram: no batch was ever read.
    assert all(reader.largest_batch == 0 for reader in batched.resolver._readers)
    assert batched.resolver.stats.answered_local == plain.resolver.stats.answered_local


def test_an_oversized_datagram_is_dropped_and_counted(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    stub = resolver_factory(make_config(), [dnsmasq.endpoint])
    query = dns.message.make_query("dnd", "A")
    big = query.to_wire() + b"\x00" * batchio.MAX_QUERY
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        with loop_held(stub):
            client.sendto(big, ("127.0.0.1", stub.port))
            client.sendto(query.to_wire(), ("127.0.0.1", stub.port))
        reply = dns.message.from_wire(client.recv(4096))
    assert reply.id == query.id and addresses(reply) == ["127.77.0.1"]
    assert stub.resolver.stats.oversized == 1


def test_an_oversized_datagram_alone_is_dropped_and_counted(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    stub = resolver_factory(make_config(), [dnsmasq.endpoint])
    query = dns.message.make_query("dnd", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(query.to_wire() + b"\x00" * batchio.MAX_QUERY, ("127.0.0.1", stub.port))
        wait_for(lambda: stub.resolver.stats.oversized == 1, "the oversized query counted", 10)
        client.sendto(query.to_wire(), ("127.0.0.1", stub.port))
        reply = dns.message.from_wire(client.recv(4096))
    assert reply.id == query.id and addresses(reply) == ["127.77.0.1"]


def test_forwarded_and_local_answers_over_ipv6(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """An IPv6 listener's clients (their addresses kept as raw ``sockaddr_in6``)."""
    stub = resolver_factory(make_config(listen=[Endpoint("::1", 0)]), [dnsmasq.endpoint])
    assert stub.resolver._readers
    for name, expected in (("DnD.dartmouth.edu", "127.77.0.1"), ("v6.fwd.test", FORWARDED_ADDRESS)):
        query = dns.message.make_query(name, "A")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(query.to_wire(), ("::1", stub.port))
            reply = dns.message.from_wire(client.recv(4096))
        assert reply.id == query.id and reply.rcode() == dns.rcode.NOERROR
        assert addresses(reply) == [expected]


@contextlib.contextmanager
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A non-blocking server socket and a client (10 s timeout), both bound on loopback."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.bind(("127.0.0.1", 0))
        client.settimeout(10)
        yield server, client


def test_replies_the_kernel_refuses_are_all_counted() -> None:
    """A send buffer that refuses a batch (EAGAIN) loses every reply queued in it: each
    one is counted in ``unsent``, not only the first (the kernel's refusal is the one
    part played here; the same replies then go out through the real ``sendmmsg``)."""

    async def main() -> tuple[int, list[bytes]]:
        with udp_pair() as (server, client):
            raw = (
                struct.pack("=H", socket.AF_INET)
                + struct.pack("!H", client.getsockname()[1])
                + socket.inet_aton("127.0.0.1")
                + bytes(8)
            )
            stats = ResolverStats()
            reader = batchio.BatchReader(
                server,
                lambda *_: None,
                lambda *_: None,
                lambda: 0.0,
                logging.getLogger("test"),
                stats,
            )
            real = reader._sendmmsg

            def refused(*_: object) -> int:
                ctypes.set_errno(errno.EAGAIN)
                return -1

            reader._sendmmsg = refused
            for n in range(3):
                reader.sendto(b"reply %d" % n, raw)
            reader.flush()
            lost = stats.unsent
            reader._sendmmsg = real
            for n in range(3):
                reader.sendto(b"reply %d" % n, raw)
            reader.flush()
            return lost, [client.recv(64) for _ in range(3)]

    lost, received = asyncio.run(main())
    assert lost == 3
    assert received == [b"reply 0", b"reply 1", b"reply 2"]


def always_lingering(stub: ServerThread) -> batchio.Linger:
    """The resolver's wake-up coalescing, made to pause after every wake-up from now on
    (any rate, any busy share, a decision per wake-up)."""
    linger = stub.resolver._linger
    assert linger is not None
    linger.rate, linger.busy, linger.window = 0, float("inf"), 0.0
    return linger


def test_replies_are_the_same_when_wake_ups_are_shared(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """With the pause after each wake-up on (as at a high rate on an idle thread), the
    batch and the one-datagram path answer byte for byte as the datagram transport does,
    forwarded replies included (queued ones are sent before each pause)."""
    config = make_config(SHARED_TOML)
    lingering = resolver_factory(config, [dnsmasq.endpoint])
    plain = resolver_factory(config, [dnsmasq.endpoint], batch_io=False)
    linger = always_lingering(lingering)
    want, _ = answers_to(plain, Endpoint("127.0.0.5", plain.port))
    got, largest = answers_to(lingering, Endpoint("127.0.0.5", lingering.port))
    assert largest > 1
    for (source, datagram, answered), ours, theirs in zip(burst(), got, want, strict=True):
        if b"fwd" in datagram and theirs is not None and ours is not None:
            assert addresses(dns.message.from_wire(ours)) == [FORWARDED_ADDRESS]
        else:
            assert ours == theirs, (source, datagram)
        if answered:  # and one at a time
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((source, 0))
                sock.settimeout(10)
                sock.sendto(datagram, ("127.0.0.5", lingering.port))
                again = sock.recv(4096)
            if b"fwd" in datagram:
                assert addresses(dns.message.from_wire(again)) == [FORWARDED_ADDRESS]
            else:
                assert again == theirs, (source, datagram)
    assert linger.pauses > 0


def test_no_resolver_pauses_without_its_linger() -> None:
    """``linger=False`` (``python -m blitzdns.dns --no-linger``): no coalescing at all."""
    config = make_config()
    stub = ServerThread(config, [], linger=False)
    try:
        assert stub.resolver._readers and stub.resolver._linger is None
        assert all(reader.linger is None for reader in stub.resolver._readers)
    finally:
        stub.stop()


class Clock:
    """The thread's CPU seconds as the test says they went (the one part played here)."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def __call__(self) -> float:
        return self.cpu


def wake_ups(
    linger: batchio.Linger,
    loop: asyncio.AbstractEventLoop,
    clock: Clock,
    *,
    rate: float,
    busy: float,
    seconds: float,
    count: int = 1,
) -> None:
    """Wake-ups at ``rate`` a second for ``seconds``, each reading ``count`` datagrams and
    followed by the loop's ready callbacks (where a pause runs), the thread busy for
    ``busy`` of the time."""
    gap = 1 / rate
    now = 1000.0
    for _ in range(round(seconds * rate)):
        now += gap
        clock.cpu += gap * busy
        linger.woke(count, now)
        loop.run_until_complete(asyncio.sleep(0))


@pytest.mark.parametrize(
    ("rate", "busy", "count", "pauses"),
    [
        (1000, 0.05, 1, False),  # a low rate: every query answered as it comes
        (4000, 0.2, 1, False),  # below LINGER_RATE
        (20000, 0.3, 1, True),  # fast and mostly idle: wake-ups shared
        (20000, 0.3, 3, True),
        (20000, 0.9, 1, False),  # fast but busy: a pause would only lose time
        (20000, 0.3, batchio.BATCH, False),  # full batches: more is waiting already
    ],
)
def test_the_loop_pauses_only_at_a_high_rate_on_a_mostly_idle_thread(
    rate: float, busy: float, count: int, pauses: bool
) -> None:
    loop = asyncio.new_event_loop()
    slept: list[float] = []
    clock = Clock()
    try:
        linger = batchio.Linger(loop, sleep=slept.append, cpu=clock)
        wake_ups(linger, loop, clock, rate=rate, busy=busy, seconds=0.1, count=count)
    finally:
        loop.close()
    assert bool(slept) == pauses
    # Bounded: every pause is the one delay, and at most one per loop iteration.
    assert set(slept) <= {batchio.LINGER_S}
    assert len(slept) == linger.pauses <= round(0.1 * rate)


def test_pausing_holds_until_a_probe_window_finds_the_thread_busy() -> None:
    """Pausing, then the thread gets busy (60 % of the time it is not paused: a tunnel's
    traffic on the same loop). A pausing window's own share is no measure (its pauses
    fill the idle time), so the pausing goes on up to the next probe window, which does
    not pause; finding the thread busy, the probe stops the pausing; the pauses do not
    count as idle time there either."""
    loop = asyncio.new_event_loop()
    clock = Clock()
    now = [1000.0]

    def sleep(delay: float) -> None:
        now[0] += delay  # a pause takes wall time, no CPU

    def run(windows: float, work: float, idle: float) -> None:
        until = now[0] + linger.window * windows
        while now[0] < until:
            clock.cpu += work
            now[0] += work + idle
            linger.woke(2, now[0])
            loop.run_until_complete(asyncio.sleep(0))  # the loop's ready callbacks: a pause

    try:
        linger = batchio.Linger(loop, sleep=sleep, cpu=clock, probe_every=3)
        run(1.5, work=5e-6, idle=45e-6)  # fast and idle: pausing
        assert linger.on and linger.pauses
        decided = []
        for _ in range(5):  # busy now: windows 1 and 2 pause on, 3 is the probe, then off
            run(1, work=30e-6, idle=20e-6)
            decided.append(linger.on)
        assert decided[:2] == [True, True], decided
        assert decided[2:] == [False, False, False], decided
        pauses = linger.pauses
        run(1, work=5e-6, idle=45e-6)  # idle again: pausing again after one window
        run(1, work=5e-6, idle=45e-6)
        assert linger.on and linger.pauses > pauses
    finally:
        loop.close()


def test_a_pause_is_taken_once_per_loop_iteration_after_queued_replies_went_out() -> None:
    """Several wake-ups in one loop iteration (the general and the priority socket, say)
    share one pause; replies queued for the batch send are on their way before it."""

    async def main() -> tuple[list[bytes], int]:
        loop = asyncio.get_running_loop()
        seen: list[bytes] = []
        clock = Clock()
        with udp_pair() as (server, client):

            def sleep(_: float) -> None:
                seen.append(client.recv(64))  # already sent: the pause comes after

            linger = batchio.Linger(loop, sleep=sleep, cpu=clock, rate=0, busy=1.0, window=0.0)
            reader = batchio.BatchReader(
                server,
                lambda *_: None,
                lambda *_: None,
                lambda: 0.0,
                logging.getLogger("test"),
                ResolverStats(),
                linger=linger,
            )
            raw = (
                struct.pack("=H", socket.AF_INET)
                + struct.pack("!H", client.getsockname()[1])
                + socket.inet_aton("127.0.0.1")
                + bytes(8)
            )
            linger.woke(1, 1.0)  # the first decision: no window behind it yet
            linger.woke(1, 2.0)
            reader.sendto(b"queued reply", raw)
            linger.woke(1, 3.0)
            linger.woke(2, 4.0)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return seen, linger.pauses

    seen, pauses = asyncio.run(main())
    assert pauses == 1 and seen == [b"queued reply"]


# ---------------------------------------------------------------- upstream replies (Drain)


@contextlib.contextmanager
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Two UDP sockets on 127.0.0.1 connected to each other (as an upstream channel is)."""
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ours.bind(("127.0.0.1", 0))
        peer.bind(("127.0.0.1", 0))
        ours.connect(peer.getsockname())
        peer.connect(ours.getsockname())
        ours.setblocking(False)
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def test_a_drain_reads_every_queued_datagram_whole_and_in_order() -> None:
    drain = batchio.Drain(65535)
    with connected_pair() as (ours, peer):
        assert drain.read(ours.fileno()) == []  # nothing queued (EAGAIN): nothing read
        sent = [bytes([i]) * (i + 1) for i in range(batchio.BATCH + 8)]
        sent.append(b"\xab" * 60000)  # as large as recv(65535) would take
        for datagram in sent:
            peer.send(datagram)
        got: list[bytes] = []
        while len(got) < len(sent):
            assert select.select([ours], [], [], 10)[0]
            got += drain.read(ours.fileno())
        assert got == sent
        assert drain.largest <= batchio.BATCH
        assert drain.read(ours.fileno()) == []


def test_a_drain_reports_the_error_the_socket_holds() -> None:
    """An ICMP port unreachable about an earlier datagram: raised as recv raises it."""
    drain = batchio.Drain(65535)
    with connected_pair() as (ours, peer):
        peer.close()  # nothing listens at the port ours is connected to
        ours.send(b"query")
        assert select.select([ours], [], [], 10)[0]
        with pytest.raises(ConnectionRefusedError):
            drain.read(ours.fileno())


def test_replies_queued_on_an_upstream_socket_are_taken_by_one_read(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    """Replies (and mismatched datagrams among them) that queued on one upstream socket
    while the loop was busy are read together, and each goes to its own query."""
    held: list[tuple[socket.socket, bytes, Any]] = []
    upstream = fake_upstream_factory(
        on_udp=lambda sock, query, peer: held.append((sock, query, peer))
    )
    server = resolver_factory(make_config(timeout_s=10.0), [upstream.endpoint])
    pool = server.resolver.forwarder.pool
    server.call(setattr, pool, "per_upstream", 1)  # every query on one socket
    names = [f"q{i}.drain.test" for i in range(8)]
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in names]
    try:
        for client, name in zip(clients, names, strict=True):
            query = dns.message.make_query(name, "A").to_wire()
            client.sendto(query, ("127.0.0.1", server.port))
        wait_for(lambda: len(held) == len(names), "every query at the upstream", 10)
        with loop_held(server):
            for sock, query, peer in held:
                wrong_id = (int.from_bytes(query[:2], "big") + 1) & 0xFFFF
                sock.sendto(_reply(query, "192.0.2.77", rid=wrong_id), peer)
                sock.sendto(_reply(query, f"192.0.2.{10 + names.index(_name(query))}"), peer)
        for i, client in enumerate(clients):
            client.settimeout(10)
            assert addresses(dns.message.from_wire(client.recv(4096))) == [f"192.0.2.{10 + i}"]
    finally:
        for client in clients:
            client.close()
    assert pool.created == 1 and pool.drain is not None
    assert pool.drain.largest > 1  # several replies in one recvmmsg
    assert server.resolver.stats.upstreams[0].mismatched == len(names)
    assert server.resolver.stats.upstreams[0].answered == len(names)


def _name(query: bytes) -> str:
    return str(dns.message.from_wire(query).question[0].name).rstrip(".")


def test_forwarded_replies_are_the_same_read_in_batches_or_one_by_one(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """A burst of forwarded names through a real dnsmasq: the resolver that reads its
    upstream sockets with recvmmsg answers each client as the one reading one datagram per
    wake-up does (``batch_io=False``)."""
    config = make_config()
    batched = resolver_factory(config, [dnsmasq.endpoint])
    plain = resolver_factory(config, [dnsmasq.endpoint], batch_io=False)
    for stub in (batched, plain):
        stub.call(setattr, stub.resolver.forwarder.pool, "per_upstream", 2)
    answers: dict[str, list[list[str]]] = {}
    for label, stub in (("batched", batched), ("plain", plain)):
        clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(24)]
        try:
            with loop_held(stub):
                for i, client in enumerate(clients):
                    query = dns.message.make_query(f"b{i}.{label}.fwd.test", "A").to_wire()
                    client.sendto(query, ("127.0.0.1", stub.port))
            got = []
            for client in clients:
                client.settimeout(10)
                got.append(addresses(dns.message.from_wire(client.recv(4096))))
            answers[label] = got
        finally:
            for client in clients:
                client.close()
    assert answers["batched"] == answers["plain"] == [[FORWARDED_ADDRESS]] * 24
    assert batched.resolver.forwarder.pool.drain is not None
    assert plain.resolver.forwarder.pool.drain is None
    assert batched.resolver.stats.upstreams[0].answered == 24
