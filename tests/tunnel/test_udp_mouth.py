"""UDP mouths with the relay started as a real process on this machine (the gateway's side,
run by ``sh -c`` as sshd would): datagrams both ways, senders kept apart, the full Notify
ATP exchange against the fake server, the socat fallback, the unavailable report, relay
restarts and the drop counters."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blitzdns.blitzmail.atp import SERVICE_MAIL, Notice, NotifyStep
from blitzdns.blitzmail.fake_notify import FakeNotify
from blitzdns.blitzmail.notify import NotifyClient
from tests.peers import descendants, wait_until
from tunnel.errors import LinkLost, MouthBindError
from tunnel.exec import ExecChannel, SubprocessExec
from tunnel.udp import DatagramStep, RelayLimits, UdpForward
from tunnel.udp_mouth import RelayState, UdpMouth, bind_udp_socket

from .udp_testlib import WAIT_S, Sender, UdpTarget, gone, sender


class LocalGateway:
    """Exec channels as local processes under ``sh -c``; every process is remembered."""

    def __init__(self, path: str | None = None) -> None:
        self.env = dict(os.environ)
        if path is not None:
            self.env["PATH"] = path
        self.channels: list[SubprocessExec] = []

    async def open_exec(self, command: str) -> ExecChannel:
        channel = await SubprocessExec.start(["/bin/sh", "-c"], command, env=self.env)
        self.channels.append(channel)
        return channel

    def pids(self) -> list[int]:
        return [pid for c in self.channels for pid in descendants(c.process.pid)]

    def relay_pids(self) -> list[int]:
        found = []
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("python3", "socat"):
                    found.append(pid)
            except OSError:
                continue
        return found


def only_socat_path(tmp_path: Path) -> str:
    """A PATH holding socat and nothing else (no python3)."""
    bin_dir = tmp_path / "bin-socat"
    bin_dir.mkdir()
    socat = shutil.which("socat")
    assert socat is not None
    (bin_dir / "socat").symlink_to(socat)
    return str(bin_dir)


async def mouth_for(
    target: tuple[str, int],
    gateway: LocalGateway,
    *,
    step: DatagramStep | None = None,
    limits: RelayLimits | None = None,
) -> UdpMouth:
    sock = bind_udp_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    forward = UdpForward(
        "127.0.0.1", port, target[0], target[1], limits=limits or RelayLimits(), step=step
    )
    mouth = UdpMouth(forward)
    await mouth.bind(sock)
    mouth.attach(gateway.open_exec)
    await wait_until(lambda: mouth.relay not in (RelayState.DOWN, RelayState.STARTING), WAIT_S)
    return mouth


@pytest.fixture
async def echo() -> AsyncIterator[UdpTarget]:
    target = await UdpTarget("echo").start()
    yield target
    target.close()


needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


@pytest.mark.parametrize("relay", ["python3", pytest.param("socat", marks=needs_socat)])
async def test_two_senders_get_only_their_own_replies(
    echo: UdpTarget, relay: str, tmp_path: Path
) -> None:
    gateway = LocalGateway(only_socat_path(tmp_path) if relay == "socat" else None)
    mouth = await mouth_for(echo.address, gateway)
    try:
        assert mouth.relay.value == relay
        one, two = await sender(), await sender()
        for index in range(5):
            one.send(b"one-%d" % index, mouth.address)
            two.send(b"two-%d" % index, mouth.address)
        await wait_until(lambda: len(one.received) == 5 and len(two.received) == 5, WAIT_S)
        assert sorted(one.received) == [b"echo:one-%d" % i for i in range(5)]
        assert sorted(two.received) == [b"echo:two-%d" % i for i in range(5)]
        state = mouth.state()
        assert (state.associations, state.datagrams_out, state.datagrams_in) == (2, 10, 10)
        assert state.bytes_out == sum(len(b"one-0") for _ in range(10))
        assert state.dropped == {}
        assert len({source for _, source in echo.received}) == 2
    finally:
        await mouth.close()
    await wait_until(lambda: gone(gateway.pids()), WAIT_S)


@pytest.mark.parametrize("relay", ["python3", pytest.param("socat", marks=needs_socat)])
async def test_the_full_notify_exchange_through_the_relay(relay: str, tmp_path: Path) -> None:
    """register → posted notice → response → release, with the registration rewritten to
    the relay's socket (the server never learns the client's own address)."""
    gateway = LocalGateway(only_socat_path(tmp_path) if relay == "socat" else None)
    async with FakeNotify() as server, NotifyClient() as client:
        mouth = await mouth_for((server.host, server.udp_port), gateway, step=NotifyStep())
        try:
            async with asyncio.timeout(WAIT_S):
                await client.register(mouth.address, 1001)
            [registered] = server.core.registered(1001)
            assert registered != client.address
            assert registered[1] == next(
                a.relay_address[1] for a in mouth.core._by_id.values() if a.relay_address
            )
            assert server.post(1001, b"New mail") == 1
            async with asyncio.timeout(WAIT_S):
                notice = await client.next_notice()
                await server.wait_for("answered")
                await client.wait_released()
            assert notice == Notice(SERVICE_MAIL, 1001, 1, b"New mail")
        finally:
            await mouth.close()


async def test_notices_go_to_the_port_the_client_registered() -> None:
    """A client that registers from one socket and listens on another: the notice reaches
    the listening socket, and its answer from there joins the same association."""
    gateway = LocalGateway()
    async with FakeNotify() as server, NotifyClient() as registrar, NotifyClient() as listener:
        mouth = await mouth_for((server.host, server.udp_port), gateway, step=NotifyStep())
        try:
            async with asyncio.timeout(WAIT_S):
                await registrar.register(mouth.address, 1001, port=listener.address[1])
                server.post(1001, b"to the listener")
                assert (await listener.next_notice()).text == b"to the listener"
                await server.wait_for("answered")
                await listener.wait_released()
            assert registrar.notices == []
            assert mouth.state().associations == 1
        finally:
            await mouth.close()


async def test_neither_python3_nor_socat_is_reported_and_nothing_is_carried(
    echo: UdpTarget, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    gateway = LocalGateway(str(empty))
    mouth = await mouth_for(echo.address, gateway)
    try:
        assert mouth.relay == RelayState.UNAVAILABLE
        assert "python3:" in mouth.reason and "socat:" in mouth.reason
        assert "not found" in mouth.reason
        client = await sender()
        client.send(b"lost", mouth.address)
        await wait_until(lambda: mouth.state().dropped.get("relay unavailable") == 1, WAIT_S)
        assert echo.received == []
    finally:
        await mouth.close()


async def test_oversize_is_dropped_and_counted(echo: UdpTarget) -> None:
    gateway = LocalGateway()
    mouth = await mouth_for(echo.address, gateway, limits=RelayLimits(max_datagram=64))
    try:
        client = await sender()
        client.send(b"x" * 65, mouth.address)
        client.send(b"fits", mouth.address)
        await wait_until(lambda: client.received == [b"echo:fits"], WAIT_S)
        assert mouth.state().dropped == {"oversize": 1}
        assert [data for data, _ in echo.received] == [b"fits"]
    finally:
        await mouth.close()


async def test_a_relay_that_dies_is_started_again_and_senders_stay_apart(
    echo: UdpTarget,
) -> None:
    gateway = LocalGateway()
    mouth = await mouth_for(echo.address, gateway)
    try:
        client = await sender()
        client.send(b"before", mouth.address)
        await wait_until(lambda: client.received == [b"echo:before"], WAIT_S)
        [first] = gateway.relay_pids()
        os.kill(first, 9)
        await wait_until(lambda: mouth.relay == RelayState.DOWN, WAIT_S)
        await wait_until(lambda: mouth.relay == RelayState.PYTHON, WAIT_S)
        assert mouth.state().associations == 0  # rebuilt on demand
        other = await sender()
        other.send(b"other", mouth.address)
        client.send(b"after", mouth.address)
        await wait_until(lambda: len(client.received) == 2 and len(other.received) == 1, WAIT_S)
        assert client.received == [b"echo:before", b"echo:after"]
        assert other.received == [b"echo:other"]
    finally:
        await mouth.close()


class DyingLink(LocalGateway):
    """A link that dies: its channels report their command's end only when ``released``
    (a dead connection's exit status comes late, or never), and after ``dead`` no channel
    opens."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = 0
        self.dead = False
        self.ending = asyncio.Event()
        self.released = asyncio.Event()

    async def open_exec(self, command: str) -> ExecChannel:
        self.opened += 1
        if self.dead:
            raise LinkLost("cannot open an exec channel: connection lost")
        channel = await super().open_exec(command)
        plain_wait = channel.wait

        async def late_wait() -> int | None:
            self.ending.set()
            await self.released.wait()
            return await plain_wait()

        channel.wait = late_wait  # type: ignore[method-assign]
        return channel


async def test_a_relay_ending_as_its_link_drops_is_not_started_again(echo: UdpTarget) -> None:
    """The relay's channel ends as the link dies, and the link is dropped while the relay
    waits for the command's exit status: the relay stays stopped. (It took the stop for
    the end of that wait, and 1 s later started again on the dead link, behind the back
    of the next link's relay: the forward then read "down" with its relay carrying.)"""
    link = DyingLink()
    mouth = await mouth_for(echo.address, link)
    try:
        [relay] = link.relay_pids()
        os.kill(relay, 9)
        await wait_until(link.ending.is_set, WAIT_S)
        link.dead = True
        mouth.drop_link("link lost")
        link.released.set()
        async with asyncio.timeout(WAIT_S):
            await mouth.settle()
        assert (mouth.relay, mouth.reason, link.opened) == (RelayState.DOWN, "link lost", 1)
    finally:
        await mouth.close()
    await wait_until(lambda: gone(link.pids()), WAIT_S)


async def test_detached_drops_then_a_new_link_carries_again(echo: UdpTarget) -> None:
    gateway = LocalGateway()
    mouth = await mouth_for(echo.address, gateway)
    try:
        client = await sender()
        client.send(b"one", mouth.address)
        await wait_until(lambda: client.received == [b"echo:one"], WAIT_S)
        await mouth.detach("link lost")
        assert mouth.relay == RelayState.DOWN and mouth.reason == "link lost"
        await wait_until(lambda: gone(gateway.relay_pids()), WAIT_S)
        client.send(b"lost", mouth.address)
        await wait_until(lambda: mouth.state().dropped.get("no link") == 1, WAIT_S)
        mouth.attach(gateway.open_exec)
        await wait_until(lambda: mouth.relay == RelayState.PYTHON, WAIT_S)
        client.send(b"two", mouth.address)
        await wait_until(lambda: client.received == [b"echo:one", b"echo:two"], WAIT_S)
    finally:
        await mouth.close()
    await wait_until(lambda: gone(gateway.pids()), WAIT_S)


async def test_an_ipv6_mouth_carries_too(echo: UdpTarget) -> None:
    try:
        sock = bind_udp_socket("::1", 0)
    except MouthBindError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    forward = UdpForward("::1", sock.getsockname()[1], *echo.address)
    mouth = UdpMouth(forward)
    await mouth.bind(sock)
    gateway = LocalGateway()
    mouth.attach(gateway.open_exec)
    try:
        await wait_until(lambda: mouth.relay is RelayState.PYTHON, WAIT_S)
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(Sender, local_addr=("::1", 0))
        client.send(b"six", ("::1", forward.mouth_port))
        await wait_until(lambda: client.received == [b"echo:six"], WAIT_S)
    finally:
        await mouth.close()
