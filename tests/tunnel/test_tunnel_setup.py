"""The asyncssh backend's per-connection path against sshd: the set-up steps run without
tasks (:mod:`tunnel.backends.inline`), cancellable as under a task; asyncssh's packet log
and keepalive timer cost nothing per packet while off (:mod:`tunnel.backends.lean`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.asyncssh_link import SSHLink
from tunnel.backends.inline import Inline
from tunnel.sshlib import asyncssh

from .tunnel_testlib import Target, exchange


async def test_a_burst_of_connections_is_carried_whole(
    options: TunnelOptions, echo: Target
) -> None:
    """Many clients at once (one accept batch, their set-up steps interleaved): each gets
    its own bytes back, and every connection ends in order."""
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
    asyncssh's own timer); then silence: the keepalive goes out. The interval is half a
    second so that a loaded 2-core machine cannot stall the reads for a whole one."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    options = dataclasses.replace(options, keepalive_s=0.5)
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
        end = loop.time() + 2.5
        while loop.time() < end:
            writer.write(b"tick\n")
            assert await reader.readexactly(5) == b"tick\n"
            await asyncio.sleep(0.02)
        assert sent == []
        writer.close()
        await wait_until(lambda: sent)
        assert tunnel.link is link
