"""The resolver under attack (issue 13): hostile clients and hostile upstreams.

Each test here fails without the fix it guards: malformed names answered FORMERR without a
traceback, log lines a client can provoke limited to one per interval, the cap on
forwarded queries in flight, per-client TCP limits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from blitzdns.dns.quiet import LogLimiter
from blitzdns.dns.server import FORWARD_MAX, TCP_CLIENTS_MAX, TCP_PER_CLIENT_MAX
from blitzdns.dns.upstream import RANDOM, SOCKETS_PER_UPSTREAM
from tests.peers import DNSMASQ, wait_for

from .conftest import Dnsmasq, FakeUpstream, ServerThread, make_config
from .test_resolver import addresses, ask

#: The issue's reproducer: a 64-octet label.
LONG_LABEL = bytes.fromhex("abcd01000001000000000000" + "40" + "62" * 64 + "00" + "00010001")
#: Four 63-octet labels: every label legal, the name 257 octets.
LONG_NAME = (
    bytes.fromhex("abce01000001000000000000")
    + b"".join(b"\x3f" + b"a" * 63 for _ in range(4))
    + bytes.fromhex("0000010001")
)


class Records(logging.Handler):
    """Every record a logger emits, kept for the test to read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def logged(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, Records]]:
    log = logging.getLogger(f"blitzdns.test.{request.node.name}")
    records = Records()
    log.addHandler(records)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, records
    log.removeHandler(records)


def udp_exchange(port: int, packet: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        while True:
            reply = sock.recv(65535)
            if reply[:2] == packet[:2]:
                return reply


def tcp_exchange(port: int, packet: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(len(packet).to_bytes(2, "big") + packet)
        size = int.from_bytes(_recv_exactly(conn, 2), "big")
        return _recv_exactly(conn, size)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


# ---------------------------------------------------------------- malformed names


@pytest.mark.parametrize("packet", [LONG_LABEL, LONG_NAME], ids=["label-64", "name-257"])
def test_overlong_labels_and_names_get_formerr_and_no_traceback(
    resolver_factory: Callable[..., ServerThread],
    dnsmasq: Dnsmasq,
    logged: tuple[logging.Logger, Records],
    packet: bytes,
) -> None:
    log, records = logged
    stub = resolver_factory(make_config(), [dnsmasq.endpoint], log=log)
    for exchange in (udp_exchange, tcp_exchange):
        reply = exchange(stub.port, packet)
        assert reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR, reply.hex()
    assert stub.resolver.stats.errors == 0
    assert [r for r in records.records if r.exc_info] == []
    assert addresses(ask(stub.endpoint, "dnd")) == ["127.77.0.1"]


def test_log_lines_a_client_provokes_are_limited(
    resolver_factory: Callable[..., ServerThread],
    dnsmasq: Dnsmasq,
    logged: tuple[logging.Logger, Records],
) -> None:
    """A handler bug hit by every packet: one log line per interval, the rest counted."""
    log, records = logged
    stub = resolver_factory(make_config(), [dnsmasq.endpoint], log=log)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in the slow path")

    stub.call(setattr, stub.resolver.engine, "handle_slow", broken)
    two_questions = dns.message.make_query("a.fwd.test", "A")
    two_questions.question.append(dns.message.make_query("b.fwd.test", "A").question[0])
    wire = two_questions.to_wire()
    for index in range(50):
        reply = udp_exchange(stub.port, index.to_bytes(2, "big") + wire[2:])
        assert reply[3] & 0x0F == dns.rcode.SERVFAIL
    assert stub.resolver.stats.errors == 50
    [line] = records.matching("error while handling a query")
    assert line.exc_info is not None and isinstance(line.exc_info[1], RuntimeError)
    stub.stop()
    assert len(records.matching("49 more errors while handling queries")) == 1


def test_log_limiter_counts_repeats_and_writes_them_with_the_next_line(
    logged: tuple[logging.Logger, Records],
) -> None:
    log, records = logged
    limited = LogLimiter(log, interval_s=10)
    assert limited("kind", 100.0, logging.WARNING, "bad thing from %s", "a")
    for second in range(1, 10):
        assert not limited("kind", 100.0 + second, logging.WARNING, "bad thing from %s", "b")
    assert limited("other", 105.0, logging.WARNING, "another kind")
    assert limited("kind", 110.0, logging.WARNING, "bad thing from %s", "c")
    lines = [r.getMessage() for r in records.records]
    assert lines == [
        "bad thing from a",
        "another kind",
        "bad thing from c (and 9 more like it in the last 10 s)",
    ]
    limited("kind", 111.0, logging.WARNING, "bad thing from %s", "d")
    limited.flush(115.0)
    assert records.records[-1].getMessage() == "1 more kind in the last 5 s"


# ---------------------------------------------------------------- bounded forwarding


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def query_wire(name: str, qid: int, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype, id=qid).to_wire()


def flood(client: socket.socket, stub: ServerThread, prefix: str, total: int) -> None:
    """Distinct names ``{prefix}{i}.flood.test`` (ID i), in chunks the resolver has seen
    before the next is sent (so the kernel drops none)."""
    stats = stub.resolver.stats
    for start in range(0, total, 30):
        for i in range(start, min(start + 30, total)):
            client.sendto(query_wire(f"{prefix}{i}.flood.test", i), ("127.0.0.1", stub.port))
        sent = min(start + 30, total)
        wait_for(
            lambda sent=sent: stats.forwarded >= sent,
            "the resolver to take every query sent",
            30,
        )


@pytest.fixture
def black_holed(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> tuple[ServerThread, FakeUpstream]:
    """The resolver forwarding to an upstream that never answers (nothing times out)."""
    black_hole = fake_upstream_factory()
    return resolver_factory(make_config(timeout_s=30), [black_hole.endpoint]), black_hole


def test_forwarded_queries_in_flight_are_capped_and_descriptors_bounded(
    black_holed: tuple[ServerThread, FakeUpstream],
) -> None:
    """A flood of distinct names to a black hole: FORWARD_MAX in flight, the rest SERVFAIL."""
    stub, black_hole = black_holed
    stats = stub.resolver.stats
    before = open_descriptors()
    total = FORWARD_MAX + 250
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        client.settimeout(10)
        flood(client, stub, "n", total)
        assert stats.forwards_in_flight == FORWARD_MAX
        assert stats.forward_capped == total - FORWARD_MAX
        assert open_descriptors() - before <= SOCKETS_PER_UPSTREAM + 4
        refused = [client.recv(512) for _ in range(total - FORWARD_MAX)]
        assert {r[3] & 0x0F for r in refused} == {dns.rcode.SERVFAIL}
        assert {int.from_bytes(r[:2], "big") for r in refused} == set(range(FORWARD_MAX, total))
        # A question already in flight is joined, not refused; a new one is refused.
        client.sendto(query_wire("n0.flood.test", 9000), ("127.0.0.1", stub.port))
        client.sendto(query_wire("new.flood.test", 9001), ("127.0.0.1", stub.port))
        assert int.from_bytes(client.recv(512)[:2], "big") == 9001
        assert stats.forward_capped == total - FORWARD_MAX + 1
    # Protected names are answered all along, over UDP and TCP.
    assert addresses(ask(stub.endpoint, "dnd")) == ["127.77.0.1"]
    assert addresses(ask(stub.endpoint, "dasher", tcp=True)) == ["127.77.0.2"]
    assert len({q[12:] for q in black_hole.udp_queries}) <= FORWARD_MAX


def test_under_a_flood_refusals_are_answered_at_a_bounded_rate(
    black_holed: tuple[ServerThread, FakeUpstream],
) -> None:
    """Past the caps, at most ``overflow_replies_per_s`` SERVFAIL a second; the rest dropped."""
    stub, _ = black_holed
    stats = stub.resolver.stats
    stub.call(setattr, stub.resolver, "overflow_replies_per_s", 5)
    total = FORWARD_MAX + 60
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        flood(client, stub, "d", total)
    seconds = int(time.monotonic() - started) + 2  # the whole seconds the burst touched
    assert stats.forward_capped == 60
    answered = stats.servfail
    assert 0 < answered <= 5 * seconds
    assert stats.dropped == 60 - answered


def test_out_of_descriptors_is_logged_once_per_interval(
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    """With a tiny descriptor limit the forwarder hits EMFILE: one log line, no traceback."""
    black_hole = fake_upstream_factory()

    with subprocess.Popen(
        [
            "sh",
            "-c",
            'ulimit -n 24 && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "blitzdns.dns",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            str(black_hole.endpoint),
            "--no-loop-probe",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None
        ready = server.stdout.readline().split()
        assert ready[:1] == ["ready"], ready
        port = int(ready[1].rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for i in range(40):
                client.sendto(query_wire(f"f{i}.emfile.test", i), ("127.0.0.1", port))
            # Past the limit a forward fails at once (SERVFAIL): wait for those replies.
            replies = [client.recv(512) for _ in range(40 - SOCKETS_PER_UPSTREAM + 8)]
        assert {r[3] & 0x0F for r in replies} == {dns.rcode.SERVFAIL}
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=20)
    assert stderr.count("ERROR out of file descriptors") == 1, stderr
    assert "more times out of file descriptors" in stderr
    assert "Traceback" not in stderr


def test_upstream_sockets_are_reused_from_a_bounded_pool(stub: ServerThread) -> None:
    """Sequential forwards reuse the pool's random-port sockets instead of one per query."""
    for i in range(3 * SOCKETS_PER_UPSTREAM):
        assert addresses(ask(stub.endpoint, f"p{i}.fwd.test")) == ["192.0.2.10"]
    pool = stub.resolver.forwarder.pool
    assert pool.created == SOCKETS_PER_UPSTREAM
    assert pool.sockets == SOCKETS_PER_UPSTREAM


def test_a_forked_child_does_not_repeat_the_parents_query_ids() -> None:
    """IDs come from a buffered block of the OS's CSPRNG: a fork must not hand the child
    the parent's rest of it (both would then send the same IDs, one predictable from the
    other)."""
    RANDOM.forget()
    RANDOM.u16()  # a block is read, nearly all of it still to come
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next IDs, then out at once
        try:
            os.write(write_end, b"".join(RANDOM.u16().to_bytes(2, "big") for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(RANDOM.u16().to_bytes(2, "big") for _ in range(8))
    assert len(child) == 16 and child != parent


# ---------------------------------------------------------------- TCP slots


def tcp_query(conn: socket.socket, name: str, qid: int) -> bytes:
    wire = query_wire(name, qid)
    conn.sendall(len(wire).to_bytes(2, "big") + wire)
    size = int.from_bytes(_recv_exactly(conn, 2), "big")
    return _recv_exactly(conn, size)


def closed_by_server(conn: socket.socket) -> bool:
    conn.settimeout(5)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_client_holding_idle_connections_cannot_starve_another(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """One address opens as many connections as the resolver serves in all and keeps them
    idle; it holds TCP_PER_CLIENT_MAX at most, and another client still gets TCP answers."""
    stub = resolver_factory(make_config(tcp_idle_s=30.0), [dnsmasq.endpoint])
    address = ("127.0.0.1", stub.port)
    opened = []
    try:
        for i in range(TCP_CLIENTS_MAX):
            conn = socket.create_connection(address, timeout=5, source_address=("127.0.3.1", 0))
            opened.append(conn)
            assert tcp_query(conn, "dnd", i)[3] & 0x0F == 0  # answered: then idle
        held = stub.call(lambda: stub.resolver._tcp_clients.get("127.0.3.1", 0))
        assert held == TCP_PER_CLIENT_MAX
        # Its older connections were closed to make room for its newer ones.
        assert all(closed_by_server(conn) for conn in opened[:-TCP_PER_CLIENT_MAX])
        for i in range(5):
            with socket.create_connection(
                address, timeout=5, source_address=("127.0.3.2", 0)
            ) as other:
                reply = tcp_query(other, "dasher", 100 + i)
                assert reply[3] & 0x0F == 0 and b"\x7f\x4d\x00\x02" in reply
    finally:
        for conn in opened:
            conn.close()


def test_idle_connections_are_closed_when_slots_run_short(
    resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq
) -> None:
    """Every slot held by idle connections of many clients (each under its own limit):
    a new client is served, the longest idle connection closed for it."""
    stub = resolver_factory(make_config(tcp_idle_s=30.0), [dnsmasq.endpoint])
    address = ("127.0.0.1", stub.port)
    opened = []
    try:
        for i in range(TCP_CLIENTS_MAX):
            source = (f"127.0.4.{i // TCP_PER_CLIENT_MAX + 1}", 0)
            conn = socket.create_connection(address, timeout=5, source_address=source)
            opened.append(conn)
            tcp_query(conn, "dnd", i)
        with socket.create_connection(address, timeout=5, source_address=("127.0.5.1", 0)) as new:
            assert tcp_query(new, "dnd", 999)[3] & 0x0F == 0
        assert closed_by_server(opened[0])
        assert stub.resolver.stats.tcp_idle_closed == 1
        assert stub.resolver.stats.tcp_refused == 0
    finally:
        for conn in opened:
            conn.close()


# ---------------------------------------------------------------- the runs, short


BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_result(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run ``bench/script`` and return its ``RESULT`` line's data."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(lines[-1][7:])
    return result


def test_fuzz_run_short() -> None:
    """``make fuzz``, short: malformed packets of every kind and TCP abuse, correct answers
    after each of 4 batches (the run starts its own dnsmasq)."""
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed (Debian package dnsmasq)")
    result = bench_result("fuzz_dns.py", "--packets", "8000", "--batch", "2000")
    assert result["packets"] == 8000 and result["checks"] == 4
    assert result["failed_checks"] == []
    for key in ("crashes", "tracebacks", "replies_to_qr", "oversize", "unparseable"):
        assert result[key] == 0, (key, result)
    assert result["resolver_errors"] == 0 and result["formerr"] > 0


def test_stress_run_short() -> None:
    """``make stress``, short: no forged reply accepted from any faulty upstream (one name
    each), and the protected name answered during a flood (how fast, and the memory given
    back after it, are the long run's to measure)."""
    result = bench_result(
        "stress_dns.py",
        *("--queries", "1", "--flood-seconds", "1", "--rounds", "1", "--timeout", "0.5"),
        *("--no-peer", "--no-control", "--no-settle"),
    )
    faults = {row["fault"]: row for row in result["faults"]}
    assert all(row["bad_accepted"] == 0 and row["tracebacks"] == 0 for row in faults.values())
    assert faults["slow"]["rcodes"] == {"NOERROR": 1}
    assert faults["CNAME to protected"]["rcodes"] == {"NOERROR": 1}
    failing = ("down", "black hole", "garbage", "wrong ID", "spoofed source", "other question",
               "TC without TCP")  # fmt: skip
    for fault in failing:
        assert faults[fault]["rcodes"] == {"SERVFAIL": 1}, faults[fault]
    assert len(faults) == len(failing) + 2  # every fault of the table, each checked
    flood = result["flood"]
    assert flood["tracebacks"] == 0 and flood["within_1s"] > 0 and flood["steered"] > 0
    assert flood["peak_fds"] <= flood["idle_fds"] + FORWARD_MAX
