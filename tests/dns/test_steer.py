"""Protected names first under a flood (issue 13): the kernel steers them to their own socket.

The steering program is checked in the real kernel against the table's own predicate
(``name in table.protected``: its twin), and end to end: with the resolver's general
socket full and dropping, a protected query still gets its answer — and, the control,
without steering it is dropped with the flood.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from blitzdns.config import Endpoint
from blitzdns.dns import steer
from blitzdns.dns.table import Name, Table, lower, to_wire
from blitzdns.errors import AddressInUse
from tests.peers import wait_for

from .conftest import FakeUpstream, ServerThread, config_protecting, loop_held, make_config
from .test_abuse import Records, logged
from .test_resolver import addresses, ask

__all__ = ["logged"]  # a fixture, used by name

#: The header of a plain query (ID 0x1234, RD): QDCOUNT 1.
HEADER = bytes.fromhex("123401000001000000000000")


def query(wire_name: bytes, flags: bytes = b"\x01\x00") -> bytes:
    return HEADER[:2] + flags + HEADER[4:] + wire_name + b"\x00\x01\x00\x01"


def random_case(wire_name: bytes, rng: random.Random) -> bytes:
    return bytes(b ^ 0x20 if 0x61 <= b <= 0x7A and rng.random() < 0.5 else b for b in wire_name)


def near_misses(name: Name) -> list[Name]:
    """Names one edit away from ``name``: never protected unless the table says so."""
    first = name[0]
    return [
        (first + b"x", *name[1:]),
        (first[:-1], *name[1:]) if len(first) > 1 else (b"x", *name[1:]),
        (*name, b"x"),
        (b"x", *name),
        (first[:-1] + bytes((first[-1] ^ 0x01,)), *name[1:]),
        (first[:-1] + bytes((first[-1] & ~0x20 & 0xFF,)) + b"-", *name[1:]),
    ]


@contextmanager
def group(host: str, table: Table) -> Iterator[tuple[socket.socket, socket.socket, int]]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        general, priority = steer.bind_group(family, (host, 0), steer.program(table.protected)[0])
    except OSError as exc:
        pytest.skip(f"cannot bind a steered pair on {host}: {exc}")
    try:
        yield general, priority, general.getsockname()[1]
    finally:
        general.close()
        priority.close()


def received_on(general: socket.socket, priority: socket.socket) -> str:
    """Which socket the datagram just sent arrived on (waits for it)."""
    readable, _, _ = select.select([general, priority], [], [], 10)
    assert len(readable) == 1, readable
    readable[0].recv(65535)
    return "priority" if readable[0] is priority else "general"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_kernel_steers_exactly_the_protected_names(host: str) -> None:
    """Every protected name (short, fully qualified, reverse; any letter case) goes to the
    priority socket; its near misses, responses and cut packets to the general one."""
    table = Table.from_config(config_protecting("Mail-Box_1.Example.ORG."))
    rng = random.Random(13)
    cases: list[tuple[bytes, bool]] = []
    for name in sorted(table.protected):
        for _ in range(2):
            cases.append((query(random_case(to_wire(name), rng)), True))
        for miss in near_misses(name):
            cases.append((query(to_wire(miss)), lower(miss) in table.protected))
    dnd = to_wire((b"dnd", b"dartmouth", b"edu"))
    cases += [
        (query(dnd, flags=b"\x81\x80"), False),  # a response
        (query(dnd, flags=b"\x29\x00"), False),  # OPCODE 5 (UPDATE)
        (query(dnd)[:20], False),  # cut inside the name
        (HEADER[:5], False),
        (query(to_wire((b"example", b"org"))), False),
    ]
    with (
        group(host, table) as (general, priority, port),
        socket.socket(general.family, socket.SOCK_DGRAM) as client,
    ):
        for packet, protected in cases:
            client.sendto(packet, (host, port))
            assert received_on(general, priority) == ("priority" if protected else "general"), (
                packet
            )


def udp_drops(sock: socket.socket) -> int:
    """The kernel's count of datagrams dropped at ``sock`` (``/proc/net/udp``, last column)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] == inode:
                return int(fields[-1])
    raise AssertionError("socket not found in /proc/net/udp")


@pytest.mark.parametrize("steered", [True, False], ids=["steered", "control"])
def test_a_protected_query_is_answered_past_a_full_receive_queue(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
    steered: bool,
) -> None:
    """The event loop is held while a burst of forwarded names overflows the UDP receive
    queue, then a protected query is sent. Steered, it waits on its own socket and is
    answered once the loop runs; the control (one socket) drops it with the flood."""
    black_hole = fake_upstream_factory()
    stub = resolver_factory(make_config(timeout_s=30), [black_hole.endpoint], steer=steered)
    general = stub.resolver._bound[0][1]
    general.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stats = stub.resolver.stats
    address = ("127.0.0.1", stub.port)
    burst = 200
    protected = dns.message.make_query("DND.dartmouth.EDU.", "A", id=4242).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        with loop_held(stub):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
                for i in range(burst):
                    wire = dns.message.make_query(f"f{i}.flood.test", "A", id=i).to_wire()
                    flooder.sendto(wire, address)
            assert udp_drops(general) > 0  # the queue is full: what comes next is dropped there
            client.sendto(protected, address)
        queued = burst - udp_drops(general) + (1 if steered else 0)
        wait_for(
            lambda: stats.forwarded + stats.answered_local >= queued,
            "the resolver to handle every query that was queued",
            30,
        )
        if steered:
            client.settimeout(10)
            reply = dns.message.from_wire(client.recv(512))
            assert reply.id == 4242 and reply.rcode() == dns.rcode.NOERROR
            assert addresses(reply) == ["127.77.0.1"]
            assert stats.steered == 1
        else:
            assert stats.answered_local == 0 and stats.steered == 0
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(512)


def test_a_reload_steers_the_new_protected_names(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    """A name that becomes protected on reload is steered from then on (the program is
    re-attached), and every name is answered correctly whichever socket it came in on."""
    black_hole = fake_upstream_factory()
    stub = resolver_factory(make_config(timeout_s=30), [black_hole.endpoint])
    stats = stub.resolver.stats
    assert addresses(ask(stub.endpoint, "dnd")) == ["127.77.0.1"]
    assert stats.steered == 1
    stub.call(stub.resolver.update, config_protecting("Newly.Protected.test"))
    assert addresses(ask(stub.endpoint, "newly.PROTECTED.test.")) == ["127.77.0.50"]
    assert stats.steered == 2
    # A name under a protected one is not steered (only exact names are): answered
    # locally all the same (NXDOMAIN), never forwarded.
    assert ask(stub.endpoint, "sub.newly.protected.test").rcode() == dns.rcode.NXDOMAIN
    assert stats.steered == 2 and stats.forwarded == 0 and stats.answered_local == 3


def test_a_port_shared_by_another_socket_is_in_use(
    resolver_factory: Callable[..., ServerThread],
) -> None:
    """A socket of ours (the same user) holding the port with SO_REUSEPORT: without the
    plain probe bind the resolver would join its group silently and share its queries."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(AddressInUse, match=rf"127\.0\.0\.1:{port} \(UDP\) is already in use"):
            resolver_factory(make_config(listen=[Endpoint("127.0.0.1", port)]), [])


def test_where_the_kernel_refuses_steering_one_socket_serves(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
    logged: tuple[object, Records],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program the kernel rejects (a jump past its end: EINVAL) stands for a kernel
    without the option: one log line for every listener, and plain sockets that answer."""
    log, records = logged
    monkeypatch.setattr(steer, "program", lambda names, budget=0: (((0x05, 0, 0, 100),), 0))
    black_hole = fake_upstream_factory()
    listen = [Endpoint("127.0.0.1", 0), Endpoint("127.0.0.2", 0)]
    stub = resolver_factory(make_config(listen=listen), [black_hole.endpoint], log=log)
    assert len(records.matching("the kernel refused UDP steering")) == 1
    assert stub.resolver._steered == []
    for endpoint in stub.resolver.bound_endpoints:
        assert addresses(ask(endpoint, "dnd")) == ["127.77.0.1"]
    assert stub.resolver.stats.steered == 0


def test_a_table_too_large_for_one_program_keeps_steering_its_shortest_names(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
    logged: tuple[object, Records],
) -> None:
    """300 hosts: a program of the whole 4096-instruction budget is more than the kernel
    keeps for a reuseport group (ENOMEM: its eBPF translation is larger than
    net.core.optmem_max); the program is cut until it fits, so steering stays on, for the
    shortest names, instead of being refused altogether."""
    log, records = logged
    lines = ["[tunnel]", 'mouths = "127.80.0.0/16"']
    lines.append("hosts = [" + ", ".join(f'"h{i}"' for i in range(300)) + "]")
    for i in range(300):
        lines += [f"[hosts.h{i}]", f'names = ["h{i}.steer.test"]', 'services = ["dnd"]']
    config = make_config("\n".join(lines) + "\n")
    black_hole = fake_upstream_factory()
    stub = resolver_factory(config, [black_hole.endpoint], log=log)
    assert not records.matching("the kernel refused UDP steering")
    assert len(records.matching("protected names are not steered")) == 1
    assert len(stub.resolver._steered) == 1
    (mouth,) = addresses(ask(stub.endpoint, "H0.steer.test"))
    assert mouth.startswith("127.80.")
    assert stub.resolver.stats.steered == 1


def test_ipv4_and_ipv6_listeners_are_both_steered(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no ::1 here: {exc}")
    black_hole = fake_upstream_factory()
    listen = [Endpoint("127.0.0.1", 0), Endpoint("::1", 0)]
    stub = resolver_factory(make_config(listen=listen), [black_hole.endpoint])
    assert len(stub.resolver._steered) == 2
    for endpoint in stub.resolver.bound_endpoints:
        assert addresses(ask(endpoint, "Dasher")) == ["127.77.0.2"]
    assert stub.resolver.stats.steered == 2


@pytest.mark.parametrize("steer_on", [True, False])
async def test_queries_waiting_on_sockets_bound_ahead_are_answered(steer_on: bool) -> None:
    """A link-first start binds the stub's sockets before the resolver takes them over
    (blitzdns.dns.listen): queries that reach them meanwhile wait in the plain UDP socket's
    queue. Swapping that socket for the steered pair must not drop them (the queue closes
    with the socket): each is answered once the resolver serves, steered or not."""
    from blitzdns.dns.listen import bind_listeners
    from blitzdns.dns.server import Resolver

    config = make_config()
    listeners = bind_listeners(config)
    port = listeners[0][0].port
    ids = (4242, 4243, 4244)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for qid in ids:
            wire = dns.message.make_query("dnd.dartmouth.edu.", "A", id=qid).to_wire()
            client.sendto(wire, ("127.0.0.1", port))
        resolver = Resolver(config, [], loop_probe=False, steer=steer_on)
        try:
            await resolver.bind(listeners)
            assert bool(resolver._steered) is steer_on  # the swap happened (or did not)
            await resolver.start()
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            replies = []
            async with asyncio.timeout(10):
                for _ in ids:
                    replies.append(dns.message.from_wire(await loop.sock_recv(client, 512)))
        finally:
            await resolver.close()
    assert sorted(reply.id for reply in replies) == list(ids)
    assert all(reply.rcode() == dns.rcode.NOERROR and reply.answer for reply in replies)


def program_building_every_block(
    names: list[Name], budget: int
) -> tuple[tuple[steer.Instruction, ...], int]:
    """:func:`steer.program` as it was: every name's block built, then kept if it fits."""
    code = list(steer.program([], budget)[0][:-1])
    ordered = sorted({to_wire(name) for name in names}, key=lambda w: (len(w), w))
    left_out = 0
    for wire in ordered:
        block = steer._block(wire)
        if len(code) + len(block) + 1 > budget:
            left_out += 1
            continue
        code += block
    code.append((steer._RET_K, 0, 0, steer.GENERAL))
    return tuple(code), left_out


def test_names_left_out_unbuilt_give_the_same_program() -> None:
    """Leaving out, without building its block, a name whose shortest block cannot fit
    changes nothing: the same instructions and the same count left out."""
    rng = random.Random(7)
    alphabet = "abcxyz0189-"
    for _ in range(200):
        names = [
            tuple(
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))).encode()
                for _ in range(rng.randint(1, 4))
            )
            for _ in range(rng.randint(0, 60))
        ]
        budget = rng.choice([8, 20, 64, 100, 300, 1000])
        names += names[: rng.randint(0, 3)]  # some twice
        assert steer.program(names, budget) == program_building_every_block(names, budget)
