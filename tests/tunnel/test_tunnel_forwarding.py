"""Forwarding through a real OpenSSH sshd: data, concurrency, outages, failing closed.

Tests taking ``any_options`` run once per link backend (asyncssh, openssh)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os

import pytest

from tests.peers import Sshd, free_port, stopped, wait_until
from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link
from tunnel.backends.openssh.link import MuxSession
from tunnel.link import Flow

from .tunnel_testlib import Target, exchange, read_until_closed, talking_target


def forward_to(target: Target, name: str = "") -> Forward:
    return Forward("127.0.0.1", free_port(), "127.0.0.1", target.port, name=name)


async def test_data_both_ways_with_half_close(any_options: TunnelOptions, echo: Target) -> None:
    forward = forward_to(echo)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, payload) == payload
        assert await exchange(*forward.mouth, b"") == b""
        # The openssh backend sees a connection end when the master closes its mux socket.
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        state = tunnel.state.forwards[0]
    assert (state.total, state.open) == (2, 0)
    # The openssh backend never sees the bytes: it reads the kernel's counts (TCP_INFO).
    assert state.bytes_out == state.bytes_in == len(payload)


async def test_bytes_of_open_connections_are_counted(
    any_options: TunnelOptions, echo: Target
) -> None:
    forward = forward_to(echo)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            writer.write(b"x" * 5000)
            assert await reader.readexactly(5000) == b"x" * 5000
            state = tunnel.state.forwards[0]
            assert (state.open, state.bytes_out, state.bytes_in) == (1, 5000, 5000)
        finally:
            writer.close()


async def test_a_target_that_closes_first_closes_the_client(any_options: TunnelOptions) -> None:
    """Server speaks first, then hangs up: the client must see the end at once (the
    openssh backend keeps a copy of the client socket, which must not hold it open)."""
    greeting = b"200 DND server ready\r\n"

    async with (
        talking_target(greeting) as forward,
        Tunnel(any_options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            assert await read_until_closed(reader) == greeting
        finally:
            writer.close()
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert tunnel.state.forwards[0].bytes_in == len(greeting)


async def test_server_speaks_first_and_client_reads_count(
    options: TunnelOptions, sink: Target
) -> None:
    forward = forward_to(sink)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"x" * 100_000) == b"100000\n"


async def test_200_concurrent_connections(any_options: TunnelOptions, echo: Target) -> None:
    forward = forward_to(echo)

    async def one(index: int) -> bool:
        payload = f"connection {index} ".encode() * 300
        return await exchange(*forward.mouth, payload) == payload

    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert all(results)
        assert tunnel.state.forwards[0].total == 200
    assert len(echo.peers) == 200


async def test_targets_see_only_sshd(any_options: TunnelOptions, echo: Target) -> None:
    """Every connection a target accepts comes from an sshd process, never from us."""
    echo.check_owner = True
    forward = forward_to(echo)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        for _ in range(5):
            assert await exchange(*forward.mouth, b"ping") == b"ping"
    assert len(echo.owners) == 5
    assert all(owners == {"sshd"} for owners in echo.owners), echo.owners


async def test_link_down_fails_closed(any_options: TunnelOptions, sshd: Sshd, echo: Target) -> None:
    """With sshd gone, a connection waits wait_for_link_s, is closed, and nothing reaches
    the target."""
    forward = forward_to(echo)
    options = dataclasses.replace(any_options, wait_for_link_s=0.3)
    sshd.kill()
    async with Tunnel(options, [forward]) as tunnel:
        reader, writer = await asyncio.open_connection(*forward.mouth)
        writer.write(b"secret")
        assert await read_until_closed(reader) == b""
        writer.close()
        assert tunnel.state.status in (LinkStatus.DOWN, LinkStatus.CONNECTING)
        assert tunnel.state.last_error is not None
        assert "refused" in tunnel.state.last_error
    assert echo.peers == []


async def test_sshd_restart_and_connection_opened_during_outage_completes(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    forward = forward_to(echo)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"before") == b"before"
        statuses: list[LinkStatus] = []
        tunnel.on_state_change(lambda state: statuses.append(state.status))
        sshd.kill()
        await wait_until(lambda: tunnel.state.status is not LinkStatus.UP)
        during = asyncio.create_task(exchange(*forward.mouth, b"during the outage"))
        # Held: accepted by the mouth, and the gateway seen refusing since.
        await wait_until(lambda: tunnel.state.forwards[0].open == 1)
        attempts = tunnel.state.attempts
        await wait_until(lambda: tunnel.state.attempts > attempts + 1)
        assert not during.done()
        sshd.start()
        async with asyncio.timeout(10):
            assert await during == b"during the outage"
        assert tunnel.state.status is LinkStatus.UP
        assert LinkStatus.DOWN in statuses and statuses[-1] is LinkStatus.UP
        assert await exchange(*forward.mouth, b"after") == b"after"


async def test_missed_keepalives_declare_the_link_dead(
    options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    """A frozen sshd (no FIN, no RST) is detected by keepalives, then replaced."""
    forward = forward_to(echo)
    options = dataclasses.replace(options, keepalive_s=0.2, keepalive_count_max=2)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        # The listing is stale at once (the pre-auth child exits after authentication):
        # stopped() skips a pid that is gone and continues every one it stopped, always.
        with stopped(sshd.session_pids()) as frozen:
            assert frozen
            await wait_until(lambda: tunnel.state.status is not LinkStatus.UP)
            assert tunnel.state.last_error is not None
            assert await tunnel.wait_up(10)
            assert await exchange(*forward.mouth, b"new link") == b"new link"


async def test_refusing_target_closes_only_that_connection(
    any_options: TunnelOptions, echo: Target
) -> None:
    good = forward_to(echo, "good")
    bad = Forward("127.0.0.1", free_port(), "127.0.0.1", free_port(), name="bad")
    async with Tunnel(any_options, [good, bad]) as tunnel:
        assert await tunnel.wait_up(10)
        reader, writer = await asyncio.open_connection(*good.mouth)
        writer.write(b"kept ")
        assert await reader.readexactly(5) == b"kept "
        assert await exchange(*bad.mouth, b"hello") == b""
        writer.write(b"open")
        assert await reader.readexactly(4) == b"open"
        writer.close()
        assert tunnel.state.status is LinkStatus.UP
        await wait_until(lambda: tunnel.state.forwards[1].open == 0)
        states = {f.forward.name: f for f in tunnel.state.forwards}
        assert states["bad"].total == 1 and states["bad"].open == 0


async def test_client_gone_before_the_channel_opens(
    any_options: TunnelOptions, echo: Target
) -> None:
    forward = forward_to(echo)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        for _ in range(20):
            _, writer = await asyncio.open_connection(*forward.mouth)
            writer.transport.abort()
        assert await exchange(*forward.mouth, b"still fine") == b"still fine"
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert tunnel.state.forwards[0].total == 21


def test_forwarding_under_uvloop(any_options: TunnelOptions) -> None:
    """The daemon may run on uvloop, whose transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> bytes:
        target = await Target("echo").start()
        forward = forward_to(target)
        try:
            async with Tunnel(any_options, [forward]) as tunnel:
                assert await tunnel.wait_up(10)
                return await exchange(*forward.mouth, b"uv" * 100_000)
        finally:
            await target.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == b"uv" * 100_000


async def test_an_ended_flow_is_freed_without_the_cyclic_gc(
    any_options: TunnelOptions, echo: Target
) -> None:
    """What a flow is made of (the flow, and the asyncssh backend's client side and
    channel, or the openssh backend's mux session) refers back and forth while it runs;
    the references are let go when it ends, so nothing of it is left for the cyclic GC,
    whose passes such cycles bring on were ~6 % of the openssh backend's instructions
    per connection (callgrind)."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    kinds = (Flow, MuxSession, asyncssh_link._ClientSide, asyncssh_link._Channel)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"warm") == b"warm"
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        gc.collect()
        gc.disable()
        try:
            for _ in range(3):
                assert await exchange(*forward.mouth, b"one") == b"one"
            await wait_until(lambda: tunnel.state.forwards[0].open == 0)
            left = [type(o).__name__ for o in gc.get_objects() if isinstance(o, kinds)]
        finally:
            gc.enable()
        assert left == []
