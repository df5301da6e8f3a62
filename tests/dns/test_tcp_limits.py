"""What one TCP client (RFC 7766) may cost the resolver, and what ``close`` leaves behind.

Real sockets against the resolver in its thread: a client that pipelines queries and
never reads its replies, one that stalls in the middle of a message while another of its
queries is in flight, one that pipelines more forwarded queries than may be in flight,
and a query still upstream when the resolver closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import pytest

from blitzdns.dns.server import TCP_CLIENTS_MAX, TCP_PER_CLIENT_MAX, TCP_PIPELINE_LIMIT
from tests.peers import Dnsmasq, tcp_established, wait_for

from .conftest import FakeUpstream, ServerThread, make_config
from .test_resolver import _reply, addresses, ask

#: Fifteen 250-byte strings: a ~3.8 KB reply to a ~30-byte query.
BIG_TXT = "--txt-record=big.fwd.test," + ",".join(["a" * 250] * 15)


def framed(name: str, rdtype: str = "A", qid: int = 1) -> bytes:
    wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
    return len(wire).to_bytes(2, "big") + wire


def read_replies(
    conn: socket.socket, bound_s: float, expect: int | None = None
) -> tuple[list[bytes], str]:
    """Whole replies until the server closes (EOF or reset) or ``expect`` have come."""
    conn.settimeout(bound_s)
    data = b""
    replies: list[bytes] = []
    ended = "timeout"
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline and (expect is None or len(replies) < expect):
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            ended = "reset"
            break
        except TimeoutError:
            break
        if not chunk:
            ended = "eof"
            break
        data += chunk
        while len(data) >= 2 and len(data) >= 2 + int.from_bytes(data[:2], "big"):
            size = int.from_bytes(data[:2], "big")
            replies.append(data[2 : 2 + size])
            data = data[2 + size :]
    return replies, ended


def kernel_send_buffer_max() -> int:
    """tcp_wmem's maximum: about how much the kernel holds for one socket's unread data."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


#: What the resolver may hold for one connection: the transport's high-water mark
#: (asyncio's and uvloop's default, 64 KiB) plus one largest message.
HELD_BOUND = 64 * 1024 + 2 + 65535


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_client_that_never_reads_is_not_buffered_for(
    resolver_factory: Callable[..., ServerThread],
    dnsmasq_factory: Callable[..., Dnsmasq],
    loop: str,
) -> None:
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    upstream = dnsmasq_factory([BIG_TXT])
    server = resolver_factory(
        make_config(tcp_idle_s=0.5), [upstream.endpoint], loop_factory=factory
    )
    big = ask(server.endpoint, "big.fwd.test", "TXT", tcp=True)
    reply_size = len(big.to_wire())
    assert reply_size > 3500
    # Replies for four times what the kernel holds for a socket, and more: a server
    # that keeps reading answers every query and keeps the excess in memory.
    count = 4 * kernel_send_buffer_max() // reply_size + 1000
    held: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect((server.endpoint.host, server.port))
        conn.settimeout(0.5)
        with contextlib.suppress(TimeoutError):  # the server stopped reading: the point
            conn.sendall(b"".join(framed("big.fwd.test", "TXT", i) for i in range(count)))

        # Not reading past the idle timeout: the resolver gives up on the connection.
        def given_up() -> bool:
            held.append(server.call(lambda: server.resolver.tcp_unsent))
            return not tcp_established(conn)

        wait_for(given_up, "the resolver to drop a client that does not read")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        replies, ended = read_replies(conn, bound_s=15)
    assert max(held) <= HELD_BOUND, f"{max(held)} bytes held for a client that does not read"
    answered = server.resolver.stats.cache_hits
    assert answered < count - 1000, f"{answered} of {count} queries answered into a full pipe"
    assert ended in ("eof", "reset"), "the idle timeout closes a connection that does not read"
    assert len(replies) <= answered
    assert server.call(lambda: server.resolver.tcp_unsent) == 0
    assert addresses(ask(server.endpoint, "after.fwd.test", tcp=True)) == ["192.0.2.10"]


def test_forwarded_queries_in_flight_per_connection_are_bounded(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    # The upstream holds every query until the test lets it answer: nothing times out, so
    # the first batch stays in flight for as long as the check takes, however slow.
    held: list[tuple[socket.socket, bytes, Any]] = []
    answering = threading.Event()

    def hold(sock: socket.socket, query: bytes, peer: Any) -> None:
        if answering.is_set():
            sock.sendto(_reply(query, "192.0.2.1"), peer)
        else:
            held.append((sock, query, peer))

    upstream = fake_upstream_factory(on_udp=hold)
    server = resolver_factory(make_config(timeout_s=60.0, tcp_idle_s=60.0), [upstream.endpoint])
    count = TCP_PIPELINE_LIMIT * 3
    with socket.create_connection((server.endpoint.host, server.port), timeout=5) as conn:
        conn.sendall(b"".join(framed(f"q{i}.held.test", qid=i) for i in range(count)))
        wait_for(lambda: len(held) >= TCP_PIPELINE_LIMIT, "the first batch upstream")
        time.sleep(0.3)  # a quiet spell for a query beyond the limit to show (none may)
        asked = {query[2:] for query in upstream.udp_queries}  # without the ID
        assert len(asked) == TCP_PIPELINE_LIMIT
        answering.set()
        for sock, query, peer in list(held):
            sock.sendto(_reply(query, "192.0.2.1"), peer)
        replies, _ = read_replies(conn, bound_s=30, expect=count)
    assert len(replies) == count, "every query is answered, a batch at a time"
    assert {reply[:2] for reply in replies} == {i.to_bytes(2, "big") for i in range(count)}


def test_a_message_stalled_midway_closes_the_connection(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    def slowly(sock: socket.socket, query: bytes, peer: Any) -> None:
        time.sleep(1.0)
        sock.sendto(_reply(query, "192.0.2.1"), peer)

    upstream = fake_upstream_factory(on_udp=slowly)
    server = resolver_factory(make_config(timeout_s=3.0, tcp_idle_s=0.3), [upstream.endpoint])
    first = framed("slow.odd.test", qid=0x1111)
    # ID 5: a server that took the body for a length prefix would read a 5-byte "message".
    second = framed("next.odd.test", qid=0x0005)
    with socket.create_connection((server.endpoint.host, server.port), timeout=5) as conn:
        conn.sendall(first)
        conn.sendall(second[:2])
        # Stalled mid-message past the idle timeout, with the first query in flight:
        wait_for(lambda: not tcp_established(conn), "the resolver to drop the stalled client")
        with contextlib.suppress(OSError):  # the server may have closed already
            conn.sendall(second[2:])
        replies, ended = read_replies(conn, bound_s=10)
    assert ended in ("eof", "reset")
    assert {reply[:2] for reply in replies} <= {b"\x11\x11", b"\x00\x05"}
    stats = server.resolver.stats
    assert stats.dropped == 0 and stats.formerr == 0, "no stray bytes were read as a message"


def test_close_leaves_no_upstream_query_running(
    resolver_factory: Callable[..., ServerThread],
    fake_upstream_factory: Callable[..., FakeUpstream],
) -> None:
    silent = fake_upstream_factory()
    server = resolver_factory(make_config(timeout_s=30.0), [silent.endpoint])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(
            dns.message.make_query("pending.silent.test", "A").to_wire(),
            (server.endpoint.host, server.port),
        )
        wait_for(lambda: silent.udp_queries, "the query to reach the upstream")
    server.run(server.resolver.close())

    async def running() -> list[str]:
        current = asyncio.current_task()
        return [repr(t) for t in asyncio.all_tasks() if t is not current and not t.done()]

    assert server.run(running()) == []


@pytest.mark.parametrize("tcp", [False, True])
def test_a_slow_reader_within_the_idle_timeout_gets_everything(
    resolver_factory: Callable[..., ServerThread],
    dnsmasq_factory: Callable[..., Dnsmasq],
    tcp: bool,
) -> None:
    upstream = dnsmasq_factory([BIG_TXT])
    server = resolver_factory(make_config(tcp_idle_s=2.0), [upstream.endpoint])
    assert ask(server.endpoint, "big.fwd.test", "TXT", tcp=True).answer
    count = 300
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect((server.endpoint.host, server.port))
        conn.sendall(b"".join(framed("big.fwd.test", "TXT", i) for i in range(count)))
        time.sleep(0.5)  # the pipe fills; the reader comes back well within the timeout
        replies, _ = read_replies(conn, bound_s=10, expect=count)
    assert len(replies) == count


def test_tcp_connections_are_capped_and_freed(
    resolver_factory: Callable[..., ServerThread],
    dnsmasq: Dnsmasq,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past TCP_CLIENTS_MAX open connections, none of them idle (each in the middle of a
    message), a new one is closed unserved; once one of the open ones goes, a new one is
    served again. The connections come from several addresses, TCP_PER_CLIENT_MAX each."""
    server = resolver_factory(make_config(tcp_idle_s=30.0), [dnsmasq.endpoint])
    address = (server.endpoint.host, server.port)
    with contextlib.ExitStack() as stack:
        held = []
        for i in range(TCP_CLIENTS_MAX):
            source = (f"127.0.1.{i // TCP_PER_CLIENT_MAX + 1}", 0)
            conn = stack.enter_context(
                socket.create_connection(address, timeout=5, source_address=source)
            )
            conn.sendall(framed("dnd.dartmouth.edu"))
            assert len(read_replies(conn, bound_s=5, expect=1)[0]) == 1
            conn.sendall(framed("busy.fwd.test")[:6])  # in the middle of a message: busy
            held.append(conn)
        wait_for(
            lambda: server.call(lambda: not server.resolver._idle),
            "the resolver to read the start of every message",
        )
        extra_source = ("127.0.2.1", 0)
        try:  # closed with a reset at once: even connect() may see it
            with socket.create_connection(address, timeout=5, source_address=extra_source) as extra:
                with contextlib.suppress(OSError):
                    extra.sendall(framed("dnd.dartmouth.edu"))
                replies, ended = read_replies(extra, bound_s=5)
        except ConnectionResetError:
            replies, ended = [], "reset"
        assert (replies, ended in ("eof", "reset")) == ([], True)
        assert server.resolver.stats.tcp_refused == 1
        assert f"{TCP_CLIENTS_MAX} TCP connections open, none idle" in caplog.text
        held.pop().close()
        wait_for(
            lambda: server.call(lambda: len(server.resolver._connections)) < TCP_CLIENTS_MAX,
            "the resolver to see that one end",
        )
        with socket.create_connection(address, timeout=5, source_address=extra_source) as again:
            again.sendall(framed("dnd.dartmouth.edu"))
            assert len(read_replies(again, bound_s=5, expect=1)[0]) == 1
