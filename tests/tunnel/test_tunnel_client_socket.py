"""The asyncssh backend's client side reads and writes the client's socket itself (no
asyncio transport: :class:`tunnel.backends.asyncssh_link._ClientSide`): sends the socket
takes only in part or not at all (EAGAIN) wait in its queue and go in order, the channel
paused above the high-water mark (bounded memory) and resumed; EOF after the last queued
byte; a client resetting while data waits for it ends only its flow; bytes sent before the
channel is open wait up to ``PENDING_MAX`` (reading paused beyond), then go on. Real
sshd, real sockets, on both loops."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link
from tunnel.state import LinkStatus

from .tunnel_testlib import Target, digest_to_end, exchange, settled_fd_count, talking_target

LOOPS = ["asyncio", "uvloop"]


def run(loop: str, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())


class Queues:
    """What the client sides queued: the most bytes waiting at once, whether any write
    was left (partly) unsent, whether the channel was paused for it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.most = 0
        self.queued = 0
        self.paused = False
        #: The sides that queued, in order.
        self.sides: list[Any] = []
        queue = asyncssh_link._ClientSide.queue

        def watched(side: Any, data: bytes) -> None:
            queue(side, data)
            self.queued += 1
            if not self.sides or self.sides[-1] is not side:
                self.sides.append(side)
            self.most = max(self.most, side.queued_len)
            self.paused = self.paused or side.writer_paused

        monkeypatch.setattr(asyncssh_link._ClientSide, "queue", watched)


def slow_client() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize("loop", LOOPS)
def test_a_slow_client_gets_every_byte_in_order_then_eof(
    options: TunnelOptions, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """12 MiB down to a client that reads nothing until its side has paused the channel:
    sends left unsent wait in the queue (never much more than the high-water mark), the
    channel resumes as it drains, every byte arrives in order, then the target's close as
    an EOF (not a reset)."""
    queues = Queues(monkeypatch)
    chunk = os.urandom(1024 * 1024)
    repeat = 12

    async def scenario() -> None:
        async with talking_target(chunk, repeat) as forward, Tunnel(options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            sock = slow_client()
            await asyncio.get_running_loop().sock_connect(sock, forward.mouth)
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                await wait_until(lambda: queues.paused, timeout_s=60)
                total, digest = await digest_to_end(reader)  # a reset raises
            finally:
                writer.close()
            assert total == len(chunk) * repeat
            assert digest == hashlib.sha256(chunk * repeat).hexdigest()
            await wait_until(lambda: tunnel.state.forwards[0].open == 0)
            assert tunnel.state.forwards[0].cut == 0

    run(loop, scenario)
    assert queues.queued > 0
    # the channel is paused once over the mark: what may follow is at most what asyncssh
    # holds for it, within the channel's window
    assert queues.most <= asyncssh_link.CLIENT_WRITE_HIGH_WATER + options.channel_window


@pytest.mark.parametrize("half_closed", [False, True], ids=["reading", "half_closed"])
@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_resetting_while_data_waits_for_it_ends_only_its_flow(
    options: TunnelOptions,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    loop: str,
    half_closed: bool,
) -> None:
    """Data queued for a client that then resets (SO_LINGER 0): the flow ends (the
    client's end: not counted as cut), its descriptor is closed, nothing is logged as an
    error, and the link carries the next connection. Seen by the read that fails, or,
    when the client had half-closed first (no more reading), by the queued send that
    fails."""
    queues = Queues(monkeypatch)
    caplog.set_level(logging.WARNING)

    async def scenario() -> None:
        echo = await Target("echo").start()
        echo_forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with (
                talking_target(b"z" * 65536, repeat=400) as forward,
                Tunnel(options, [forward, echo_forward]) as tunnel,
            ):
                assert await tunnel.wait_up(10)
                assert await exchange(*echo_forward.mouth, b"warm\n") == b"warm\n"
                before = await settled_fd_count()
                for round_ in range(3):
                    sock = slow_client()
                    await asyncio.get_running_loop().sock_connect(sock, forward.mouth)
                    if half_closed:
                        sock.shutdown(socket.SHUT_WR)
                    await wait_until(lambda n=round_: len(queues.sides) > n, timeout_s=60)
                    if half_closed:
                        side = queues.sides[-1]
                        await wait_until(lambda s=side: s.eof and not s.reading)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                    await wait_until(lambda: tunnel.state.forwards[0].open == 0)
                counters = tunnel.state.forwards[0]
                assert (counters.total, counters.cut) == (3, 0)
                assert tunnel.state.status == LinkStatus.UP
                assert await exchange(*echo_forward.mouth, b"after\n") == b"after\n"
                assert await settled_fd_count() == before
        finally:
            await echo.close()

    run(loop, scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_before_the_channel_opens_wait_up_to_the_cap_then_go(
    options: TunnelOptions, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """The gateway's confirmation held back (by the test): a client sending 1 MiB at once
    is read up to ``PENDING_MAX`` (then its reading pauses: bounded memory); once the
    channel opens every byte goes, in order, and the echo brings them back."""
    held: list[Any] = []
    sides: list[Any] = []
    opened = asyncssh_link._Channel.channel_opened
    start = asyncssh_link._ClientSide.start

    def keep(self: Any) -> None:
        held.append(self)

    def started(self: Any) -> None:
        sides.append(self)
        start(self)

    monkeypatch.setattr(asyncssh_link._Channel, "channel_opened", keep)
    monkeypatch.setattr(asyncssh_link._ClientSide, "start", started)
    payload = os.urandom(1024 * 1024 + 3)

    async def scenario() -> None:
        echo = await Target("echo").start()
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with Tunnel(options, [forward]) as tunnel:
                assert await tunnel.wait_up(10)
                talk = asyncio.ensure_future(exchange(*forward.mouth, payload))
                await wait_until(lambda: held and sides and not sides[0].reading, timeout_s=30)
                (side,) = sides
                assert side.pending_len > asyncssh_link.PENDING_MAX
                assert side.pending_len <= 2 * asyncssh_link.PENDING_MAX
                opened(held[0])
                async with asyncio.timeout(60):  # a guard against a stall, not a measure
                    got = await talk
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                await wait_until(lambda: tunnel.state.forwards[0].open == 0)
                assert tunnel.state.forwards[0].cut == 0
        finally:
            await echo.close()

    run(loop, scenario)
