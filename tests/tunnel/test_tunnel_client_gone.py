"""A client that hangs up before the target's last reply must not take the link down."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions

from .tunnel_testlib import exchange, talking_target


class GreetThenQuit:
    """Greets, then answers one line and closes (like DND's QUIT → 200)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> GreetThenQuit:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 hello\r\n")
            await writer.drain()
            line = await reader.readline()
            await asyncio.sleep(0.05)  # the client is gone by now
            writer.write(b"200 bye " + line)
            writer.write_eof()
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def greeter() -> AsyncIterator[GreetThenQuit]:
    server = await GreetThenQuit().start()
    yield server
    assert server.server is not None
    server.server.close()


async def test_client_closing_before_the_reply_leaves_the_link_up(
    options: TunnelOptions, greeter: GreetThenQuit
) -> None:
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", greeter.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        since = tunnel.state.since
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*forward.mouth)
            assert await reader.readline() == b"220 hello\r\n"
            writer.write(b"QUIT\r\n")
            await writer.drain()
            writer.close()
            # Handled to the end (the target's late reply met a closed client) before
            # looking at the link: no sleep that a loaded machine could outrun.
            await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert tunnel.state.status == LinkStatus.UP
        assert tunnel.state.since == since
        assert (await exchange(*forward.mouth, b"QUIT\r\n")).startswith(b"220 hello")


async def test_a_client_reset_mid_stream_is_not_written_to(
    options: TunnelOptions, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that resets while the target is streaming to it: the channel's data still in
    flight must not be written to the dead socket (asyncio logs "socket.send() raised
    exception." after five such writes, as iperf3 -R's end used to show)."""

    caplog.set_level(logging.WARNING, logger="asyncio")
    async with (
        talking_target(b"z" * 65536, repeat=400) as forward,
        Tunnel(options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        for _ in range(5):
            reader, writer = await asyncio.open_connection(*forward.mouth)
            await reader.readexactly(1 << 20)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        await asyncio.sleep(0.2)
    assert "socket.send() raised exception" not in caplog.text
