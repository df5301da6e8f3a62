"""The asyncssh backend's per-connection path: small SSH packets of one turn of the loop
leave in one write (:mod:`tunnel.backends.coalesce`), bulk packets at once; and the set-up
steps run without tasks (:mod:`tunnel.backends.inline`), cancellable as under a task.

The write counts are read from the kernel (``TCP_INFO``'s ``tcpi_segs_out`` of the link's
socket: loopback, ``TCP_NODELAY``, so one segment per write of a small packet), and sshd
must take every joined write apart: the link goes on carrying afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import struct

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.asyncssh_link import SSHLink
from tunnel.backends.coalesce import BULK_MIN, CoalescingTransport
from tunnel.backends.inline import Inline
from tunnel.sshlib import asyncssh

from .tunnel_testlib import Target, exchange

MSG_IGNORE = 2
TCP_INFO_LEN = 144
SEGS_OUT_AT = 136
"""``tcpi_segs_out`` in Linux ``struct tcp_info`` (4.2+)."""


def segs_out(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    if len(info) < TCP_INFO_LEN:
        pytest.skip("tcp_info without tcpi_segs_out (Linux before 4.2)")
    return int(struct.unpack_from("=I", info, SEGS_OUT_AT)[0])


def link_socket(link: SSHLink) -> socket.socket:
    """Our own handle on the link's TCP socket (a dup: the loop's stays untouched)."""
    fileno = link.conn.get_extra_info("socket").fileno()
    return socket.socket(fileno=os.dup(fileno))


async def test_small_packets_of_one_turn_leave_in_one_write(
    options: TunnelOptions, echo: Target
) -> None:
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = tunnel.link
        assert isinstance(link, SSHLink)
        assert isinstance(link.conn._transport, CoalescingTransport)
        with link_socket(link) as sock:
            before = segs_out(sock)
            for index in range(16):  # a non-empty ignore: never dropped as chaff
                link.conn.send_packet(MSG_IGNORE, struct.pack(">I", 1) + bytes([index]))
            assert segs_out(sock) == before  # held while this turn runs
            await wait_until(lambda: segs_out(sock) > before)
            # One write (a keepalive of the link may add one): 16 before the change.
            assert segs_out(sock) - before <= 2
        # sshd took the joined packets apart: the link carries on.
        assert await exchange(*forward.mouth, b"after the burst\n") == b"after the burst\n"
        assert tunnel.link is link


async def test_a_bulk_packet_leaves_at_once_and_after_the_held_ones(
    options: TunnelOptions, echo: Target
) -> None:
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = tunnel.link
        assert isinstance(link, SSHLink)
        got = bytearray()
        done = asyncio.get_running_loop().create_future()

        class Session(asyncssh.SSHTCPSession[bytes]):
            def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
                got.extend(data)

            def eof_received(self) -> bool:
                done.set_result(None)
                return False

        channel, _ = await link.conn.create_connection(Session, "127.0.0.1", echo.port)
        small, bulk = b"small first;", os.urandom(BULK_MIN * 4)
        with link_socket(link) as sock:
            before = segs_out(sock)
            channel.write(small)
            assert segs_out(sock) == before  # held...
            channel.write(bulk)
            assert segs_out(sock) > before  # ...until the bulk packet, which went at once
        channel.write_eof()
        async with asyncio.timeout(10):
            await done
        assert bytes(got) == small + bulk


async def test_a_burst_of_connections_is_carried_whole(
    options: TunnelOptions, echo: Target
) -> None:
    """Many clients at once: their channel opens and data share writes; each gets its
    own bytes back, and every connection ends in order."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        payloads = [f"client {index}\n".encode() * (index + 1) for index in range(40)]
        replies = await asyncio.gather(*(exchange(*forward.mouth, p) for p in payloads))
        assert replies == payloads
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert tunnel.state.forwards[0].cut == 0


# --- Inline: a coroutine without a task -------------------------------------------------


async def test_inline_runs_the_first_step_at_once_and_the_rest_on_the_future() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[int] = loop.create_future()
    steps: list[str] = []
    ends: list[tuple[BaseException | None, int | None]] = []

    async def work() -> int:
        steps.append("first")
        value = await waiter
        steps.append("second")
        await asyncio.sleep(0)  # a bare yield: the next turn
        return value + 1

    Inline(work(), lambda error, result: ends.append((error, result)))
    assert steps == ["first"]
    waiter.set_result(41)
    await wait_until(lambda: ends)
    assert steps == ["first", "second"]
    assert ends == [(None, 42)]


async def test_inline_passes_on_an_error() -> None:
    ends: list[BaseException | None] = []

    async def work() -> None:
        raise OSError("no")

    Inline(work(), lambda error, result: ends.append(error))
    assert len(ends) == 1 and isinstance(ends[0], OSError)


async def test_inline_cancel_raises_at_the_await_and_ends_once() -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []
    ends: list[BaseException | None] = []

    async def work() -> None:
        try:
            await waiter
        except asyncio.CancelledError:
            seen.append("cancelled at the await")
            raise

    step = Inline(work(), lambda error, result: ends.append(error))
    step.cancel()
    await wait_until(lambda: ends)
    step.cancel()  # already ended: nothing more
    await asyncio.sleep(0)
    assert seen == ["cancelled at the await"]
    assert len(ends) == 1 and isinstance(ends[0], asyncio.CancelledError)
    assert waiter.cancelled()


# --- lean: asyncssh's packet log and keepalive timer -------------------------------------


def test_the_packet_log_patch_is_in_place_on_the_installed_asyncssh() -> None:
    from asyncssh.packet import SSHPacketLogger

    assert getattr(SSHPacketLogger._log_packet, "lean", False)


async def test_packets_are_still_logged_at_debug_level_3(
    options: TunnelOptions, echo: Target, caplog: pytest.LogCaptureFixture
) -> None:
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        asyncssh.set_debug_level(3)
        try:
            with caplog.at_level(logging.DEBUG, logger="asyncssh"):
                assert await exchange(*forward.mouth, b"logged\n") == b"logged\n"
        finally:
            asyncssh.set_debug_level(1)
    logged = caplog.text
    assert "Sent MSG_CHANNEL_OPEN (90)" in logged
    assert "Received MSG_CHANNEL_OPEN_CONFIRMATION (91)" in logged


async def test_reads_do_not_remake_the_keepalive_timer(
    options: TunnelOptions, echo: Target
) -> None:
    """A read notes the time; the one timer stays (asyncssh made a new one per read)."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = tunnel.link
        assert isinstance(link, SSHLink)
        timer = link.conn._keepalive_timer
        assert timer is not None
        reader, writer = await asyncio.open_connection(*forward.mouth)
        for index in range(20):
            line = f"line {index}\n".encode()
            writer.write(line)
            assert await reader.readexactly(len(line)) == line
        writer.close()
        assert link.conn._keepalive_timer is timer


async def test_no_keepalive_while_reads_come_and_one_when_they_stop(
    options: TunnelOptions, echo: Target
) -> None:
    """Reads for five keepalive intervals: no keepalive sent (each read postpones it, as
    asyncssh's own timer); then silence: the keepalive goes out."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    options = dataclasses.replace(options, keepalive_s=0.2)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = tunnel.link
        assert isinstance(link, SSHLink)
        sent: list[float] = []
        request = link.conn._make_keepalive_request

        async def counted() -> None:
            sent.append(loop.time())
            await request()

        link.conn._make_keepalive_request = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*forward.mouth)
        end = loop.time() + 1.0
        while loop.time() < end:
            writer.write(b"tick\n")
            assert await reader.readexactly(5) == b"tick\n"
            await asyncio.sleep(0.02)
        assert sent == []
        writer.close()
        await wait_until(lambda: sent)
        assert tunnel.link is link
