"""UDP forwards through the real sshd fixture, on both link backends: the relay runs on
this machine as the gateway's side, started by sshd over an exec channel."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from blitzdns.blitzmail.atp import SERVICE_MAIL, Notice, NotifyStep
from blitzdns.blitzmail.fake_notify import FakeNotify
from blitzdns.blitzmail.notify import NotifyClient
from tests.peers import Sshd, free_port, start_sshd, stopped, wait_until
from tunnel import LinkStatus, RelayLimits, RelayState, Tunnel, TunnelOptions, UdpForward, udp_mouth
from tunnel.udp import BOOTSTRAP

from .udp_testlib import WAIT_S, UdpTarget
from .udp_testlib import sender as open_sender

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


def udp_forward(target: tuple[str, int], **kwargs: object) -> UdpForward:
    return UdpForward("127.0.0.1", free_port(), target[0], target[1], **kwargs)  # type: ignore[arg-type]


def relay_processes() -> list[int]:
    """Processes running the relay's bootstrap (anywhere on this machine)."""
    marker = BOOTSTRAP.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
async def echo() -> AsyncIterator[UdpTarget]:
    target = await UdpTarget("echo").start()
    yield target
    target.close()


async def carrying(tunnel: Tunnel, relay: RelayState = RelayState.PYTHON) -> None:
    assert await tunnel.wait_up(WAIT_S)
    await wait_until(lambda: tunnel.state.udp_forwards[0].relay is relay, WAIT_S)


async def test_both_ways_and_two_senders_only_get_their_own(
    any_options: TunnelOptions, echo: UdpTarget
) -> None:
    forward = udp_forward(echo.address)
    async with Tunnel(any_options, [forward]) as tunnel:
        await carrying(tunnel)
        one, two = await open_sender(), await open_sender()
        for index in range(5):
            one.send(b"one-%d" % index, forward.mouth)
            two.send(b"two-%d" % index, forward.mouth)
        await wait_until(lambda: len(one.received) == 5 and len(two.received) == 5, WAIT_S)
        assert sorted(one.received) == [b"echo:one-%d" % i for i in range(5)]
        assert sorted(two.received) == [b"echo:two-%d" % i for i in range(5)]
        [state] = tunnel.state.udp_forwards
        assert (state.associations, state.datagrams_out, state.datagrams_in) == (2, 10, 10)
        assert state.bytes_in == 10 * len(b"echo:one-0") and state.dropped == {}
        assert tunnel.state.to_dict()["udp_forwards"][0]["relay"] == "python3"
    await wait_until(lambda: not relay_processes(), WAIT_S)


async def test_the_full_notify_exchange_through_the_tunnel(any_options: TunnelOptions) -> None:
    """Registration → a notice posted on the TCP side → the client's response → release,
    the server seeing only the relay's socket on the gateway."""
    async with FakeNotify() as server, NotifyClient() as notify_client:
        forward = udp_forward((server.host, server.udp_port), step=NotifyStep())
        async with Tunnel(any_options, [forward]) as tunnel:
            await carrying(tunnel)
            async with asyncio.timeout(WAIT_S):
                await notify_client.register(forward.mouth, 1001)
            [registered] = server.core.registered(1001)
            assert registered != notify_client.address
            assert server.post(1001, b"New mail from Demo Reindeer") == 1
            async with asyncio.timeout(WAIT_S):
                notice = await notify_client.next_notice()
                await server.wait_for("answered")
                await notify_client.wait_released()
            assert notice == Notice(SERVICE_MAIL, 1001, 1, b"New mail from Demo Reindeer")


async def test_oversize_is_dropped_and_counted(options: TunnelOptions, echo: UdpTarget) -> None:
    forward = udp_forward(echo.address, limits=RelayLimits(max_datagram=100))
    async with Tunnel(options, [forward]) as tunnel:
        await carrying(tunnel)
        sender = await open_sender()
        sender.send(b"x" * 101, forward.mouth)
        sender.send(b"fits", forward.mouth)
        await wait_until(lambda: sender.received == [b"echo:fits"], WAIT_S)
        assert tunnel.state.udp_forwards[0].dropped == {"oversize": 1}
        assert [data for data, _ in echo.received] == [b"fits"]


async def test_link_killed_and_restored_restarts_the_relay(
    any_options: TunnelOptions, sshd: Sshd, echo: UdpTarget
) -> None:
    forward = udp_forward(echo.address)
    async with Tunnel(any_options, [forward]) as tunnel:
        await carrying(tunnel)
        sender = await open_sender()
        sender.send(b"before", forward.mouth)
        await wait_until(lambda: sender.received == [b"echo:before"], WAIT_S)
        sshd.kill()
        await wait_until(lambda: tunnel.state.status is not LinkStatus.UP, WAIT_S)
        await wait_until(lambda: tunnel.state.udp_forwards[0].relay is RelayState.DOWN, WAIT_S)
        sender.send(b"lost", forward.mouth)
        await wait_until(lambda: tunnel.state.udp_forwards[0].dropped.get("no link") == 1, WAIT_S)
        await wait_until(lambda: not relay_processes(), WAIT_S)
        sshd.start()
        await carrying(tunnel)
        other = await open_sender()
        other.send(b"other", forward.mouth)
        sender.send(b"after", forward.mouth)
        await wait_until(lambda: len(sender.received) == 2 and len(other.received) == 1, WAIT_S)
        assert sender.received == [b"echo:before", b"echo:after"]
        assert other.received == [b"echo:other"]
        assert tunnel.state.udp_forwards[0].associations_total == 3
    assert [data for data, _ in echo.received if data == b"lost"] == []


async def test_close_does_not_wait_on_a_frozen_gateway_for_the_relay(
    any_options: TunnelOptions, sshd: Sshd, echo: UdpTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that stopped answering never confirms the relay channel's end; closing
    the tunnel must not wait for it (it waited the relay's start timeout, 15 s, before
    closing the link), and once the gateway thaws nothing of the relay is left."""
    # The old wait, for good: no relay start timeout, no keepalive to find the link dead.
    monkeypatch.setattr(udp_mouth, "START_TIMEOUT_S", 3600.0)
    forward = udp_forward(echo.address)
    tunnel = Tunnel(dataclasses.replace(any_options, keepalive_s=3600), [forward])
    try:
        await tunnel.start()
        await carrying(tunnel)
        with stopped(sshd.session_pids()) as frozen:
            assert frozen
            async with asyncio.timeout(WAIT_S) as deadline:
                await tunnel.close()
            assert not deadline.expired()  # (a cancel in close's last wait is not raised)
            assert tunnel.state.status is LinkStatus.STOPPED
    finally:
        await tunnel.close()
    await wait_until(lambda: not relay_processes(), WAIT_S)


@pytest.fixture
def path_sshd(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sshd]:
    """An sshd whose sessions get ``PATH`` = a directory holding only what the test names
    (``socat``, or nothing): a gateway without python3."""
    tools = request.param
    bin_dir = tmp_path / "gateway-bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} not installed")
        (bin_dir / tool).symlink_to(found)
    server = start_sshd(tmp_path / "path-sshd", extra_config=f"SetEnv PATH={bin_dir}\n")
    try:
        yield server
    finally:
        server.kill()


def options_for(
    options: TunnelOptions, server: Sshd, tmp_path: Path, backend: str
) -> TunnelOptions:
    known_hosts = tmp_path / "path_known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    return dataclasses.replace(
        options,
        gateways=(f"{server.user}@127.0.0.1:{server.port}",),  # type: ignore[arg-type]
        known_hosts=known_hosts,
        client_keys=(server.client_key,),
        backend=backend,
    )


@needs_socat
@pytest.mark.parametrize("path_sshd", [("socat",)], indirect=True)
@pytest.mark.parametrize("backend", ["asyncssh", "openssh"])
async def test_a_gateway_without_python3_uses_socat(
    options: TunnelOptions, path_sshd: Sshd, tmp_path: Path, backend: str
) -> None:
    async with FakeNotify() as server, NotifyClient() as notify_client:
        forward = udp_forward((server.host, server.udp_port), step=NotifyStep())
        gateway = options_for(options, path_sshd, tmp_path, backend)
        async with Tunnel(gateway, [forward]) as tunnel:
            await carrying(tunnel, RelayState.SOCAT)
            async with asyncio.timeout(WAIT_S):
                await notify_client.register(forward.mouth, 1001)
                server.post(1001, b"via socat")
                assert (await notify_client.next_notice()).text == b"via socat"
                await server.wait_for("answered")
                await notify_client.wait_released()


@pytest.mark.parametrize("path_sshd", [()], indirect=True)
async def test_neither_python3_nor_socat_is_a_clear_report(
    options: TunnelOptions, path_sshd: Sshd, tmp_path: Path, echo: UdpTarget
) -> None:
    forward = udp_forward(echo.address)
    async with Tunnel(options_for(options, path_sshd, tmp_path, "asyncssh"), [forward]) as tunnel:
        await carrying(tunnel, RelayState.UNAVAILABLE)
        [state] = tunnel.state.udp_forwards
        assert "python3:" in state.reason and "socat:" in state.reason
        assert "not found" in state.reason
        assert tunnel.state.status is LinkStatus.UP  # everything else runs on
        sender = await open_sender()
        sender.send(b"nowhere", forward.mouth)
        await wait_until(
            lambda: tunnel.state.udp_forwards[0].dropped.get("relay unavailable") == 1, WAIT_S
        )
    assert echo.received == []


async def test_a_close_cancelled_while_the_relays_end_leaves_no_unretrieved_error(
    options: TunnelOptions, sshd: Sshd, echo: UdpTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tunnel.close waits for the UDP relays' ends shielded and bounded; a close cancelled
    meanwhile (a caller's own timeout) leaves that wait running, and the loop's end
    cancels it (``asyncio.run`` cancels what is left): no "exception was never retrieved"
    from the wait's gather then (it had a cancelled child as its exception, and no one
    left to look at it). The asyncssh backend only: the openssh backend's relay is a
    local ``ssh -S`` process, ended at once, so that wait never outlives the close."""
    monkeypatch.setattr(udp_mouth, "START_TIMEOUT_S", 3600.0)
    forward = udp_forward(echo.address)
    tunnel = Tunnel(dataclasses.replace(options, keepalive_s=3600), [forward])
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, context: errors.append(context["message"]))
    link = None
    try:
        await tunnel.start()
        await carrying(tunnel)
        link = tunnel.link
        with stopped(sshd.session_pids()) as frozen:
            assert frozen
            closing = asyncio.create_task(tunnel.close())

            def settles() -> list[asyncio.Task[object]]:
                return [
                    task
                    for task in asyncio.all_tasks()
                    if getattr(task.get_coro(), "__qualname__", "") == "UdpMouth.settle"
                ]

            await wait_until(lambda: bool(settles()), WAIT_S)
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            left = settles()
            assert left  # the relays' end still awaited, in the background
            for task in left:  # as the loop's end does
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            await asyncio.sleep(0)  # the gather's callbacks
            gc.collect()
            assert errors == []
    finally:
        loop.set_exception_handler(None)
        if link is not None:
            await link.aclose(1)
        for udp in tunnel._udp.values():
            await udp.close()
        await tunnel.close()
    await wait_until(lambda: not relay_processes(), WAIT_S)
