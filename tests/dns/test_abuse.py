"""The resolver under attack (issue 13): hostile clients and hostile upstreams.

Each test here fails without the fix it guards: malformed names answered FORMERR without a
traceback, log lines a client can provoke limited to one per interval, the cap on
forwarded queries in flight, per-client TCP limits.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import pytest

from blitzdns.dns.quiet import LogLimiter

from .conftest import Dnsmasq, ServerThread, make_config
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
    assert len(records.matching("error while handling a query")) == 1
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
