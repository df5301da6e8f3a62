"""The gateway-side relay run as a real subprocess (``sh -c`` the exec command, the program
sent on stdin, as sshd runs it) against a real UDP target on loopback; and the socat
fallback the same way."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.peers import descendants, wait_until
from tunnel.udp import (
    KIND_CLOSE,
    KIND_DATA,
    KIND_DROPPED,
    KIND_HELLO,
    KIND_OPEN,
    Frame,
    RelayLimits,
    python_relay_command,
)

from .udp_testlib import WAIT_S, RelayProcess, SocatProcess, UdpTarget, gone, open_fds


@pytest.fixture
async def target() -> object:
    server = await UdpTarget("echo").start()
    yield server
    server.close()


async def started(
    target: UdpTarget, limits: RelayLimits | None = None, **kw: object
) -> RelayProcess:
    relay = await RelayProcess.start(target.address, limits, **kw)  # type: ignore[arg-type]
    hello = await relay.next_frame()
    assert hello.kind == KIND_HELLO, hello
    assert hello.text.startswith("blitzdns-udp-relay 1 python 3.")
    return relay


async def opened(relay: RelayProcess, association: int) -> int:
    """Open an association; return the relay socket's port (what the target sees)."""
    await relay.send(Frame(KIND_OPEN, association))
    frame = await relay.next_frame()
    assert (frame.kind, frame.association) == (KIND_OPEN, association), frame
    address, port = frame.text.split()
    assert address == "127.0.0.1"
    return int(port)


async def test_datagrams_both_ways_and_the_program_in_small_pieces(target: UdpTarget) -> None:
    relay = await started(target, chunk=97)
    try:
        port = await opened(relay, 1)
        await relay.send(Frame(KIND_DATA, 1, b"ping"))
        reply = await relay.next_frame()
        assert reply == Frame(KIND_DATA, 1, b"echo:ping")
        assert target.received == [(b"ping", ("127.0.0.1", port))]
    finally:
        assert await relay.close() == 0


async def test_a_first_datagram_opens_its_association(target: UdpTarget) -> None:
    relay = await started(target)
    try:
        await relay.send(Frame(KIND_DATA, 5, b"hello"))
        opened_frame = await relay.next_frame()
        assert (opened_frame.kind, opened_frame.association) == (KIND_OPEN, 5)
        assert await relay.next_frame() == Frame(KIND_DATA, 5, b"echo:hello")
    finally:
        await relay.close()


async def test_each_association_gets_only_its_own_replies(target: UdpTarget) -> None:
    relay = await started(target)
    try:
        ports = {association: await opened(relay, association) for association in (1, 2)}
        assert ports[1] != ports[2]
        for round_ in range(5):
            await relay.send(Frame(KIND_DATA, 1, b"one%d" % round_))
            await relay.send(Frame(KIND_DATA, 2, b"two%d" % round_))
        replies = [await relay.next_frame() for _ in range(10)]
        for frame in replies:
            assert frame.kind == KIND_DATA
            assert frame.payload.startswith(b"echo:one" if frame.association == 1 else b"echo:two")
        assert {source for _data, source in target.received} == {
            ("127.0.0.1", ports[1]),
            ("127.0.0.1", ports[2]),
        }
    finally:
        await relay.close()


async def test_the_target_may_speak_first_and_strangers_are_not_carried(
    target: UdpTarget,
) -> None:
    """A server-initiated datagram (a Notify notice) reaches its association; a datagram
    from any other socket to the relay's port is not carried (the socket is connected)."""
    stranger = await UdpTarget("record").start()
    relay = await started(target)
    try:
        port = await opened(relay, 9)
        stranger.send(b"not from the target", ("127.0.0.1", port))
        target.send(b"notice", ("127.0.0.1", port))
        assert await relay.next_frame() == Frame(KIND_DATA, 9, b"notice")
        await relay.send(Frame(KIND_DATA, 9, b"after"))
        assert await relay.next_frame() == Frame(KIND_DATA, 9, b"echo:after")
    finally:
        await relay.close()
        stranger.close()


async def test_oversize_datagrams_are_dropped_and_reported_both_ways(target: UdpTarget) -> None:
    relay = await started(target, RelayLimits(max_datagram=100))
    try:
        port = await opened(relay, 1)
        await relay.send(Frame(KIND_DATA, 1, b"x" * 101))
        assert await relay.next_frame() == Frame(KIND_DROPPED, 1, b"oversize")
        target.send(b"y" * 101, ("127.0.0.1", port))
        assert await relay.next_frame() == Frame(KIND_DROPPED, 1, b"oversize")
        await relay.send(Frame(KIND_DATA, 1, b"x" * 95))  # echo: adds 5 bytes, still fits
        assert await relay.next_frame() == Frame(KIND_DATA, 1, b"echo:" + b"x" * 95)
        assert [len(data) for data, _ in target.received] == [95]
    finally:
        await relay.close()


async def test_an_idle_association_is_closed_and_its_socket_released(target: UdpTarget) -> None:
    relay = await started(target, RelayLimits(idle_s=0.2))
    try:
        await opened(relay, 3)
        pid = relay_pid(relay)
        sockets_open = sum(link.startswith("socket:") for link in open_fds(pid))
        assert sockets_open == 1
        assert await relay.next_frame() == Frame(KIND_CLOSE, 3, b"idle")
        assert not any(link.startswith("socket:") for link in open_fds(pid))
        await relay.send(Frame(KIND_DATA, 3, b"again"))  # rebuilt on demand
        assert (await relay.next_frame()).kind == KIND_OPEN
        assert await relay.next_frame() == Frame(KIND_DATA, 3, b"echo:again")
    finally:
        await relay.close()


async def test_a_close_frame_releases_the_association(target: UdpTarget) -> None:
    relay = await started(target)
    try:
        await opened(relay, 4)
        pid = relay_pid(relay)
        await relay.send(Frame(KIND_CLOSE, 4))
        await wait_until(
            lambda: not any(link.startswith("socket:") for link in open_fds(pid)),
        )
    finally:
        await relay.close()


async def test_too_many_associations_are_refused(target: UdpTarget) -> None:
    relay = await started(target, RelayLimits(max_associations=1))
    try:
        await opened(relay, 1)
        await relay.send(Frame(KIND_OPEN, 2))
        assert await relay.next_frame() == Frame(KIND_CLOSE, 2, b"too many associations")
    finally:
        await relay.close()


def relay_pid(relay: RelayProcess) -> int:
    """The python process (sh may have exec'd it or forked it)."""
    for pid in descendants(relay.process.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("python"):
                return pid
        except OSError:
            continue
    raise AssertionError("no relay process")


async def test_stdin_closing_ends_the_relay_and_leaves_nothing(
    target: UdpTarget, tmp_path: Path
) -> None:
    """What a closing channel (or a dead SSH connection) does: the relay exits, with every
    process gone, and no file written (its cwd and TMPDIR stay empty)."""
    work, tmp = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp), "HOME": str(work)}
    relay = await started(target, cwd=work, env=env)
    await opened(relay, 1)
    await opened(relay, 2)
    family = descendants(relay.process.pid)
    assert await relay.close() == 0
    assert relay.stderr == b""
    assert gone(family)
    assert list(work.iterdir()) == [] and list(tmp.iterdir()) == []


async def test_a_corrupt_stream_ends_the_relay(target: UdpTarget) -> None:
    relay = await started(target)
    assert relay.process.stdin is not None
    relay.process.stdin.write(b"GET / HTTP/1.0\r\n\r\n")
    async with asyncio.timeout(WAIT_S):
        assert await relay.process.wait() != 0
    await relay.kill()
    assert b"corrupt frame stream" in relay.stderr


async def test_a_truncated_program_runs_nothing(target: UdpTarget) -> None:
    """A channel that closes before the whole program arrived: the bootstrap exits
    without running a partial program."""
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        python_relay_command(*target.address),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _err = await asyncio.wait_for(process.communicate(b"import sys\n"), WAIT_S)
    assert process.returncode == 9
    assert out == b""


# ---------------------------------------------------------------------------
# The socat fallback

needs_socat = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


@needs_socat
async def test_socat_carries_an_association_with_its_boundaries(target: UdpTarget) -> None:
    """Datagrams keep their boundaries through socat even when its stdout merges them:
    the transfer log's lengths cut them apart."""
    socat = await SocatProcess.start(target.address)
    try:
        await wait_until(lambda: socat.connected is not None)
        assert socat.connected is not None
        port = socat.connected.port
        for index in range(3):  # one in flight upstream: wait for each transfer line
            await socat.write(b"up%d" % index)
            await wait_until(lambda n=index + 1: len(socat.ups) == n)
        assert socat.ups == [3, 3, 3]
        await wait_until(lambda: len(target.received) == 3)
        assert [d for d, _ in target.received] == [b"up0", b"up1", b"up2"]
        assert {source for _, source in target.received} == {("127.0.0.1", port)}
        burst = [b"a", b"bb" * 40, b"ccc", b"dddd"]
        for datagram in burst:
            target.send(datagram, ("127.0.0.1", port))
        await wait_until(lambda: len(socat.datagrams) == 3 + len(burst))
        assert socat.datagrams == [b"echo:up0", b"echo:up1", b"echo:up2", *burst]
    finally:
        assert await socat.close() == 0


@needs_socat
async def test_socat_ends_when_its_channel_closes(target: UdpTarget) -> None:
    socat = await SocatProcess.start(target.address, RelayLimits(idle_s=600))
    await wait_until(lambda: socat.connected is not None)
    family = descendants(socat.process.pid)
    assert await socat.close() == 0
    assert gone(family)
