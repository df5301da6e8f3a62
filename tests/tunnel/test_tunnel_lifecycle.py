"""Mouths and the tunnel's life: binding (loopback only, errors), allowed peers, reload,
state, and a shutdown that leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

from tests.peers import Sshd, free_port, wait_until
from tunnel import Forward, LinkStatus, Tunnel, TunnelOptions
from tunnel.errors import MouthBindError, TunnelConfigError
from tunnel.mouths import LISTEN_BACKLOG

from .tunnel_testlib import Target, exchange, read_until_closed


def forward_to(target: Target, name: str = "", **kwargs: object) -> Forward:
    return Forward("127.0.0.1", free_port(), "127.0.0.1", target.port, name=name, **kwargs)  # type: ignore[arg-type]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            inodes.add(target)
    return inodes


async def test_mouths_listen_on_loopback_only(options: TunnelOptions, echo: Target) -> None:
    v4 = forward_to(echo)
    try:
        v6 = Forward("::1", free_port("::1"), "127.0.0.1", echo.port)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    tunnel = Tunnel(options, [v4, v6])
    await tunnel.bind()
    try:
        assert tunnel.state.status is LinkStatus.STOPPED
        assert listening_addresses(v4.mouth_port) == {"127.0.0.1"}
        assert listening_addresses(v6.mouth_port) == {"::1"}
    finally:
        await tunnel.close()
    assert listening_addresses(v4.mouth_port) == set()


def test_non_loopback_mouth_needs_the_explicit_option(options: TunnelOptions) -> None:
    lan = Forward("192.0.2.10", 902, "dnd", 902)
    with pytest.raises(TunnelConfigError, match="not a loopback address"):
        Tunnel(options, [lan])


async def test_update_forwards_refuses_non_loopback(options: TunnelOptions) -> None:
    tunnel = Tunnel(options, [])
    with pytest.raises(TunnelConfigError):
        await tunnel.update_forwards([Forward("0.0.0.0", 902, "dnd", 902)])


async def test_bind_errors_name_the_address_and_release_everything(
    options: TunnelOptions, echo: Target
) -> None:
    first = forward_to(echo, "first")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = Forward("127.0.0.1", squatter.getsockname()[1], "127.0.0.1", echo.port)
        tunnel = Tunnel(options, [first, taken])
        with pytest.raises(MouthBindError) as info:
            await tunnel.start()
        assert str(info.value) == f"cannot listen on 127.0.0.1:{taken.mouth_port}: " + (
            "address already in use"
        )
        assert listening_addresses(first.mouth_port) == set()
        assert tunnel.state.status is LinkStatus.STOPPED
        await tunnel.close()


async def test_bind_error_for_an_address_this_machine_lacks(options: TunnelOptions) -> None:
    options = TunnelOptions(gateways=options.gateways, allow_non_loopback=True)
    tunnel = Tunnel(options, [Forward("192.0.2.77", free_port(), "dnd", 902)])
    with pytest.raises(MouthBindError, match=r"192\.0\.2\.77:\d+: address not available"):
        await tunnel.bind()
    await tunnel.close()


async def test_allowed_peers_reject_others_at_once(
    any_options: TunnelOptions, echo: Target, caplog: pytest.LogCaptureFixture
) -> None:
    forward = forward_to(echo, allowed_peers=("127.0.0.2/32",))
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        with caplog.at_level(logging.WARNING, logger="tunnel"):
            assert await exchange(*forward.mouth, b"intruder") == b""
        assert await exchange(*forward.mouth, b"friend", source="127.0.0.2") == b"friend"
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        state = tunnel.state.forwards[0]
    assert (state.rejected, state.total, state.open) == (1, 1, 0)
    assert "refused connection from 127.0.0.1" in caplog.text
    assert len(echo.peers) == 1


async def test_bind_first_then_start(options: TunnelOptions, echo: Target) -> None:
    """The daemon binds (as root), drops privileges, then starts: a client that comes in
    between is held, as while the link is down, and carried once the link is up (a long
    hold here, so a slow handshake on a loaded machine cannot end it first)."""
    forward = forward_to(echo)
    tunnel = Tunnel(dataclasses.replace(options, wait_for_link_s=60), [forward])
    await tunnel.bind()
    try:
        early = asyncio.create_task(exchange(*forward.mouth, b"early"))
        await wait_until(lambda: tunnel.state.forwards[0].open == 1, 10)
        assert not early.done() and echo.peers == []  # held: nothing reached the target
        await tunnel.start()
        assert await tunnel.wait_up(10)
        assert await early == b"early"
        assert await exchange(*forward.mouth, b"now") == b"now"
    finally:
        await tunnel.close()
    assert len(echo.peers) == 2


async def test_bound_but_never_started_cuts_a_held_client(
    options: TunnelOptions, echo: Target
) -> None:
    """Held before start is bounded by ``wait_for_link_s`` like any hold: then a reset
    (fail closed), counted as cut, and nothing reached the target."""
    forward = forward_to(echo)
    tunnel = Tunnel(dataclasses.replace(options, wait_for_link_s=0.3), [forward])
    await tunnel.bind()
    try:
        reader, writer = await asyncio.open_connection(*forward.mouth)
        writer.write(b"too early")
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(10):
                await reader.read()
        writer.close()
        await wait_until(lambda: tunnel.state.forwards[0].cut == 1, 10)
    finally:
        await tunnel.close()
    assert echo.peers == []


async def test_reload_keeps_unchanged_forwards_and_their_connections(
    options: TunnelOptions, echo: Target, sink: Target
) -> None:
    kept = forward_to(echo, "kept")
    removed = forward_to(echo, "removed")
    retargeted = forward_to(echo, "retargeted")
    async with Tunnel(options, [kept, removed, retargeted]) as tunnel:
        assert await tunnel.wait_up(10)
        streams = {}
        for forward in (kept, removed, retargeted):
            reader, writer = await asyncio.open_connection(*forward.mouth)
            writer.write(b"hi")
            assert await reader.readexactly(2) == b"hi"
            streams[forward.name] = (reader, writer)
        added = forward_to(echo, "added")
        to_sink = Forward(*retargeted.mouth, "127.0.0.1", sink.port, name="retargeted")
        await tunnel.update_forwards([kept, to_sink, added])

        reader, writer = streams["kept"]
        writer.write(b"still here")
        assert await reader.readexactly(10) == b"still here"
        for name in ("removed", "retargeted"):
            assert await read_until_closed(streams[name][0]) == b""
        assert listening_addresses(removed.mouth_port) == set()
        assert await exchange(*added.mouth, b"new") == b"new"
        assert await exchange(*to_sink.mouth, b"12345") == b"5\n"
        names = [f.forward.name for f in tunnel.state.forwards]
        assert names == ["kept", "retargeted", "added"]
        counts = {f.forward.name: f.total for f in tunnel.state.forwards}
        assert counts == {"kept": 1, "retargeted": 2, "added": 1}
        writer.close()


async def test_a_connection_accepted_as_its_forward_is_removed_is_closed_not_carried(
    options: TunnelOptions, echo: Target
) -> None:
    """A connection the listener accepted in the same batch as a reload that removes the
    forward must not be carried to the removed forward's target. The late step is driven
    with a real accepted socket."""
    from tunnel.mouths import Mouth

    removed = forward_to(echo, "removed")
    async with Tunnel(options, [removed]) as tunnel:
        assert await tunnel.wait_up(10)
        mouth = tunnel._mouths[removed.mouth]
        assert isinstance(mouth, Mouth)
        await tunnel.update_forwards([])
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            reader, writer = await asyncio.open_connection(*listener.getsockname())
            accepted, peer = listener.accept()
        mouth.take(accepted, *peer)
        writer.write(b"late")
        assert await asyncio.wait_for(read_until_closed(reader), 5) == b""
        writer.close()
        assert echo.peers == [] and not mouth.flows


async def test_reload_with_an_unbindable_mouth_changes_nothing(
    options: TunnelOptions, echo: Target
) -> None:
    kept = forward_to(echo, "kept")
    async with Tunnel(options, [kept]) as tunnel:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = Forward("127.0.0.1", squatter.getsockname()[1], "127.0.0.1", echo.port)
            fresh = forward_to(echo, "fresh")
            with pytest.raises(MouthBindError):
                await tunnel.update_forwards([fresh, taken])
        assert tunnel.forwards == (kept,)
        assert listening_addresses(fresh.mouth_port) == set()
        assert await tunnel.wait_up(10)
        assert await exchange(*kept.mouth, b"unchanged") == b"unchanged"


async def test_state_snapshot_and_callbacks(options: TunnelOptions, echo: Target) -> None:
    forward = forward_to(echo, "dnd")
    seen: list[LinkStatus] = []
    tunnel = Tunnel(options, [forward])
    tunnel.on_state_change(lambda state: seen.append(state.status))
    async with tunnel:
        assert await tunnel.wait_up(10)
        await exchange(*forward.mouth, b"12345")
        data = json.loads(json.dumps(tunnel.state.to_dict()))
    assert data["status"] == "up"
    assert data["gateway"] == str(options.gateways[0])
    assert data["forwards"][0]["name"] == "dnd"
    assert data["forwards"][0]["bytes_out"] == data["forwards"][0]["bytes_in"] == 5
    assert seen == [LinkStatus.CONNECTING, LinkStatus.UP, LinkStatus.STOPPED]
    assert tunnel.state.status is LinkStatus.STOPPED


async def test_shutdown_leaves_nothing_behind(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    forward = forward_to(echo)
    sockets_before = socket_inodes()
    threads_before = set(threading.enumerate())
    tunnel = Tunnel(any_options, [forward])
    await tunnel.start()
    assert await tunnel.wait_up(10)
    streams = [await asyncio.open_connection(*forward.mouth) for _ in range(10)]
    for reader, writer in streams:
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
    assert sshd.session_pids()
    async with asyncio.timeout(5):
        await tunnel.close()
    for reader, writer in streams:
        assert await read_until_closed(reader) == b""
        writer.close()
    await wait_until(lambda: not echo.active and not sshd.session_pids())
    # Transports close their sockets a loop turn or more after close(): wait (bounded).
    with contextlib.suppress(TimeoutError):
        await wait_until(
            lambda: (
                asyncio.all_tasks() == {asyncio.current_task()}
                and socket_inodes() == sockets_before
            )
        )
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert socket_inodes() == sockets_before
    # asyncssh reads config and key files in the loop's default executor: those idle
    # workers belong to the loop (asyncio.run shuts them down), not to the tunnel.
    extra = set(threading.enumerate()) - threads_before
    assert all(thread.name.startswith("asyncio_") for thread in extra), extra
    assert listening_addresses(forward.mouth_port) == set()
    assert tunnel.state.status is LinkStatus.STOPPED


async def test_mouths_listen_with_the_full_backlog(any_options: TunnelOptions) -> None:
    """A burst of clients (a mail client opening many connections) must queue, not be
    dropped at asyncio's default backlog of 100."""
    if shutil.which("ss") is None:
        pytest.skip("ss not installed (Debian: iproute2)")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", 9)
    tunnel = Tunnel(any_options, [forward])
    await tunnel.bind()
    try:
        ss = await asyncio.create_subprocess_exec(
            "ss", "-ltnH", f"sport = :{forward.mouth_port}", stdout=asyncio.subprocess.PIPE
        )
        listing = (await ss.communicate())[0].split()
        assert int(listing[2]) == LISTEN_BACKLOG
    finally:
        await tunnel.close()
