"""A connection the tunnel cannot finish ends with a reset, on both backends (issue #12).

The link lost mid-stream, the gateway refusing the channel, no link within
``wait_for_link_s``, the tunnel closing: the client must see ECONNRESET, never an end of
stream it could take for a complete message. Only the target's own close is an EOF (the
control case, so that a tunnel that reset everything would fail here too)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.peers import Sshd, free_port, signal_existing, stopped, wait_until
from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions
from tunnel.backends.asyncssh_link import PENDING_MAX, SSHLink
from tunnel.backends.openssh.link import MuxLink
from tunnel.link import Flow, Link

from .tunnel_testlib import Target, link_up, settled_fd_count, talking_target

WAIT_S = 20.0
CHUNK = b"s" * 65536
"""A target sends 16384 of these (1 GB): it never closes first while the client is there."""


async def connect(forward: Forward) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, forward.mouth)
    return sock


async def read_some(sock: socket.socket, wanted: int) -> int:
    loop = asyncio.get_running_loop()
    got = 0
    while got < wanted:
        chunk = await loop.sock_recv(sock, 65536)
        assert chunk, "the stream ended early"
        got += len(chunk)
    return got


async def how_it_ends(sock: socket.socket) -> str:
    """Read to the end: ``"reset"`` (ECONNRESET) or ``"eof"`` (a clean end of stream)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(10):
            while await loop.sock_recv(sock, 65536):
                pass
    except ConnectionResetError:
        return "reset"
    finally:
        sock.close()
    return "eof"


def cut_count(tunnel: Tunnel) -> int:
    return sum(forward.cut for forward in tunnel.state.forwards)


async def test_a_link_lost_mid_transfer_resets_the_client(
    any_options: TunnelOptions, sshd: Sshd
) -> None:
    async with (
        talking_target(CHUNK, repeat=16384) as forward,
        Tunnel(any_options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        client = await connect(forward)
        await read_some(client, 1 << 20)
        sshd.kill()
        assert await how_it_ends(client) == "reset"
        await wait_until(lambda: cut_count(tunnel) == 1)
        assert tunnel.state.forwards[0].open == 0


async def test_a_held_connection_that_gets_no_link_is_reset(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    """The client sends nothing: a plain close would be a clean EOF."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    sshd.kill()
    options = dataclasses.replace(any_options, wait_for_link_s=0.3)
    async with Tunnel(options, [forward]) as tunnel:
        client = await connect(forward)
        assert await how_it_ends(client) == "reset"
        assert tunnel.state.status is not LinkStatus.UP
        await wait_until(lambda: cut_count(tunnel) == 1)
    assert echo.peers == []


async def test_a_channel_the_gateway_refuses_is_reset(any_options: TunnelOptions) -> None:
    closed_port = free_port()
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", closed_port)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        client = await connect(forward)
        assert await how_it_ends(client) == "reset"
        await wait_until(lambda: cut_count(tunnel) == 1)
        assert tunnel.state.status is LinkStatus.UP


async def test_closing_the_tunnel_resets_its_connections(any_options: TunnelOptions) -> None:
    async with talking_target(CHUNK, repeat=16384) as forward:
        tunnel = Tunnel(any_options, [forward])
        await tunnel.start()
        assert await tunnel.wait_up(10)
        client = await connect(forward)
        await read_some(client, 1 << 16)
        await tunnel.close()
        assert await how_it_ends(client) == "reset"


@pytest.mark.parametrize("size", [1, 3 << 20])
async def test_the_targets_own_close_reaches_the_client_as_eof(
    any_options: TunnelOptions, size: int
) -> None:
    """The control: a target that says all and closes gives every byte, then an EOF."""
    async with (
        talking_target(b"t" * size) as forward,
        Tunnel(any_options, [forward]) as tunnel,
    ):
        assert await tunnel.wait_up(10)
        client = await connect(forward)
        assert await read_some(client, size) == size
        assert await how_it_ends(client) == "eof"
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert cut_count(tunnel) == 0


def die(link: Link) -> None:
    """End ``link`` as a crash would: its ssh master SIGKILLed, or its connection aborted."""
    if isinstance(link, MuxLink):
        os.kill(link.pid, signal.SIGKILL)
    else:
        assert isinstance(link, SSHLink)
        link.conn.abort()


async def test_a_flow_given_back_by_dying_links_waits_no_longer_than_its_first_deadline(
    any_options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link that cannot take a flow (it is dying as the flow comes) gives it back, to be
    held for the next link (:meth:`~tunnel.link.Flow.give_back`). Links that keep dying so
    must not keep the client waiting: its whole wait is bounded by its first deadline
    (``wait_for_link_s`` after it was first held), then it is reset. Here each link gives
    the flow back and dies (the race of a link dying just as a flow comes, made certain);
    the next is up a moment later each time, so a wait started anew at each give-back
    never ends (``how_it_ends``' bound fails it)."""
    options = dataclasses.replace(any_options, wait_for_link_s=2.5)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    given_back: list[Link] = []

    def dying_carry(link: Link, flow: Flow) -> None:
        given_back.append(link)
        flow.give_back(link)
        die(link)

    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        monkeypatch.setattr(
            MuxLink if options.backend == "openssh" else SSHLink, "carry", dying_carry
        )
        client = await connect(forward)
        assert await how_it_ends(client) == "reset"
        await wait_until(lambda: cut_count(tunnel) == 1)
    assert given_back
    assert echo.peers == []


@pytest.mark.parametrize("when", ["before_the_carry", "after_the_channel_open"])
async def test_a_flow_that_comes_as_the_connection_is_lost_is_held_for_the_next_link(
    options: TunnelOptions, echo: Target, when: str
) -> None:
    """The asyncssh backend's twin of the openssh backend's
    ``test_a_flow_that_comes_as_the_master_is_gone_is_held_for_the_next_link``: a flow
    accepted when the SSH connection has just been lost (the supervisor not told yet:
    ``tunnel.link`` is still that link), or lost right after the carry (its CHANNEL_OPEN
    written, never confirmed), had nothing read from its client: it is held and carried
    by the next link, not cut. The test accepts
    (the mouth's listener is not watched meanwhile) in the same step of the loop as the
    connection's loss, before or after."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, SSHLink)
        before = await settled_fd_count()
        mouth = tunnel._mouths[forward.mouth]
        assert mouth.listener is not None
        listener = mouth.listener.fileno()
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener)
        try:
            with socket.create_connection(forward.mouth, timeout=10) as client:
                client.sendall(b"held")
                if when == "before_the_carry":
                    link.conn.abort()
                    mouth._accept()
                else:
                    mouth._accept()
                    link.conn.abort()
                assert tunnel.link is link
                assert len(mouth.flows) == 1 and mouth.counters.cut == 0
                assert await asyncio.to_thread(client.recv, 16) == b"held"
        finally:
            loop.add_reader(listener, mouth._accept)
        assert tunnel.link is not link
        await wait_until(lambda: not mouth.flows)
        assert mouth.counters.cut == 0
        assert await settled_fd_count() == before


def tcp_queues(local_port: int, remote_port: int | None = None) -> list[tuple[int, int]]:
    """``(send queue, receive queue)`` of each established loopback TCP socket on
    ``local_port`` (connected from ``remote_port``, when given), from /proc/net/tcp."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if int(local.split(":")[1], 16) != local_port or state != "01":
            continue
        if remote_port is not None and int(remote.split(":")[1], 16) != remote_port:
            continue
        tx, rx = fields[4].split(":")
        found.append((int(tx, 16), int(rx, 16)))
    return found


async def test_a_flow_whose_channel_open_went_unanswered_is_carried_by_the_next_link(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    """The link dies after a flow's CHANNEL_OPEN was sent and before the gateway answered
    it: nothing was sent on the channel and nothing written to the client, so the flow
    is held and opened again on the next link (as one that came while the link was
    down), its bytes carried once. The asyncssh backend has read them meanwhile (they go
    with the flow); the master never read them (they wait in the kernel, which
    :func:`~tunnel.backends.openssh.tcpinfo.untouched` checks). sshd's session is frozen
    (the OPEN waits unread in its socket), then killed: the link is reset."""
    options = dataclasses.replace(any_options, wait_for_link_s=WAIT_S, keepalive_s=3600)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    payload = b"sent while the channel opened\n"
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        mouth = tunnel._mouths[forward.mouth]
        await wait_until(lambda: tcp_queues(sshd.port) == [(0, 0)])  # the link quiet
        with stopped(sshd.session_pids()) as frozen:
            assert frozen and tcp_queues(sshd.port)[0][1] == 0
            reader, writer = await asyncio.open_connection(*forward.mouth)
            client_port = writer.get_extra_info("sockname")[1]
            writer.write(payload)
            await wait_until(lambda: tcp_queues(sshd.port)[0][1] > 0, WAIT_S)  # the OPEN
            # The payload taken by our process (asyncssh) or waiting for the master.
            unread = 0 if isinstance(link, SSHLink) else len(payload)
            await wait_until(lambda: tcp_queues(forward.mouth_port, client_port) == [(0, unread)])
            assert len(mouth.flows) == 1
            signal_existing(frozen, signal.SIGKILL)
        try:
            async with asyncio.timeout(WAIT_S):
                assert await reader.readexactly(len(payload)) == payload
            assert tunnel.link is not link
            assert mouth.counters.cut == 0
            assert len(echo.peers) == 1  # the frozen sshd never reached the target
        finally:
            writer.close()


@pytest.mark.parametrize("what", ["eof", "over-the-cap"])
async def test_a_flow_given_back_keeps_its_end_and_every_byte(
    any_options: TunnelOptions, sshd: Sshd, sink: Target, what: str
) -> None:
    """A flow given back (its CHANNEL_OPEN unanswered as the link died) that had already
    seen the client's EOF, or whose bytes read meanwhile went past the pending cap (the
    asyncssh backend stops reading there; the rest waits in the kernel): the next link
    carries every byte once, in order, then the EOF, and the target's answer comes back.
    The master (openssh backend) reads nothing before the channel is open."""
    options = dataclasses.replace(any_options, wait_for_link_s=WAIT_S, keepalive_s=3600)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", sink.port)
    size = 6 if what == "eof" else 3 * PENDING_MAX + 12345
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        mouth = tunnel._mouths[forward.mouth]
        await wait_until(lambda: tcp_queues(sshd.port) == [(0, 0)])  # the link quiet
        with stopped(sshd.session_pids()) as frozen:
            assert frozen
            reader, writer = await asyncio.open_connection(*forward.mouth)
            writer.write(payload)
            writer.write_eof()
            await wait_until(lambda: tcp_queues(sshd.port)[0][1] > 0, WAIT_S)  # the OPEN
            assert len(mouth.flows) == 1
            if isinstance(link, SSHLink):
                side = next(iter(mouth.flows)).stop.__self__  # type: ignore[union-attr]
                if what == "eof":  # read, EOF and all
                    await wait_until(lambda: side.eof, WAIT_S)
                else:  # read up to the cap, then paused
                    await wait_until(lambda: side.pending_len > PENDING_MAX, WAIT_S)
                    assert not side.reading and not side.eof
            signal_existing(frozen, signal.SIGKILL)
        try:
            async with asyncio.timeout(WAIT_S):
                assert await reader.read() == f"{size}\n".encode()
            assert tunnel.link is not link
            assert mouth.counters.cut == 0
            assert len(sink.peers) == 1 and sink.received == size
        finally:
            writer.close()
