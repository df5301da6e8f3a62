"""A client that hangs up before the target's last reply must not take the link down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tunnel_testlib import exchange, free_port

from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions


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
            await asyncio.sleep(0.2)
        assert tunnel.state.status == LinkStatus.UP
        assert tunnel.state.since == since
        assert (await exchange(*forward.mouth, b"QUIT\r\n")).startswith(b"220 hello")
