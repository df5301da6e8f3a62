"""The asyncssh backend acknowledges sshd's small packets at once (``quick_ack`` in
:mod:`tunnel.backends.asyncssh_patches`), against the real sshd, on both loops.

sshd runs Nagle toward the forwarder (no session channel, no ``TCP_NODELAY``): while one
small segment of its is unacknowledged it holds the next. Linux acknowledges a small
segment on a request/response socket by its delayed-ACK timer (40 ms), not when it is
read, so several connections getting replies at once waited 40 ms for the second one
(bench/notes/growth.md, "Session 11"). What the test looks at is that cause, not a time:
when the client has its echo, the forwarder has read sshd's packet carrying it; sshd's
socket (``ss``, the kernel's own view) must then have nothing unacknowledged.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

import pytest

from tests.peers import Sshd, free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link, asyncssh_patches

from .tunnel_testlib import Target, link_up

ROUNDS = 40
UNACKED = re.compile(r"\bunacked:(\d+)")


def unacked(sshd: Sshd) -> int:
    """Segments sshd sent on its established connections that are not acknowledged."""
    out = subprocess.run(
        ["ss", "-tniH", "state", "established", f"( sport = :{sshd.port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert out.strip(), "no connection of sshd's found"
    return sum(int(found) for found in UNACKED.findall(out))


def rounds_with_unacked(
    options: TunnelOptions, sshd: Sshd, loop: str, rounds: int = ROUNDS, enough: int = -1
) -> int:
    """Of ``rounds`` back-to-back round trips of a line through the tunnel, the number at
    whose end (the echo in the client's hands) sshd still waited for an ACK; the rounds
    stop early once more than ``enough`` (if given) did."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop

    async def scenario() -> int:
        echo = await Target("echo").start()
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with Tunnel(options, [forward]) as tunnel:
                assert await tunnel.wait_up(10)
                assert isinstance(await link_up(tunnel), asyncssh_link.SSHLink)
                reader, writer = await asyncio.open_connection(*forward.mouth)
                waiting = 0
                try:
                    for number in range(rounds + 1):
                        line = b"LOOKUP blitzdns,NAME %d\r\n" % number
                        writer.write(line)
                        assert await asyncio.wait_for(reader.readline(), 30) == line
                        # The loop blocks here: the tunnel sends nothing meanwhile (no
                        # request of the next round carrying an ACK along).
                        if number and unacked(sshd):  # the first: warming up
                            waiting += 1
                            if 0 <= enough < waiting:
                                break
                finally:
                    writer.close()
                return waiting
        finally:
            await echo.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(scenario())


NEEDS_SS = pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) not installed")


@NEEDS_SS
@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="Linux's TCP_QUICKACK")
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sshds_replies_are_acknowledged_by_the_time_the_client_has_them(
    options: TunnelOptions, sshd: Sshd, loop: str
) -> None:
    """A few rounds of slack: an ACK the kernel processes later than its send, under
    load; without ``quick_ack`` most rounds wait (the test below)."""
    assert rounds_with_unacked(options, sshd, loop) <= ROUNDS // 10


@NEEDS_SS
def test_without_quick_acks_sshd_waits_in_more_rounds_than_the_slack(
    options: TunnelOptions, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rounds with no read small enough for ``quick_ack``'s call: the call is
    what makes the test above pass (if this fails, the kernel acknowledges these packets
    at once by itself, and the call costs a system call per read for nothing). 37 and 40
    of 40 rounds waited unloaded, 18 of 40 at load 6 (``ss`` itself can then outlast the
    40 ms timer): the bound is the other test's slack, not "most", and up to five times
    the rounds are run (stopping once the bound is passed), so a loaded machine that
    catches fewer of them still gets there."""
    monkeypatch.setattr(asyncssh_patches, "QUICK_ACK_BELOW", 0)
    slack = ROUNDS // 10
    waited = rounds_with_unacked(options, sshd, "asyncio", rounds=5 * ROUNDS, enough=slack)
    assert waited > slack


class Transport:
    """What ``quick_ack`` asks of a transport: its socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> Any:
        return self.sock if name == "socket" else None


def test_quick_ack_is_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.14 has ``socket.TCP_QUICKACK`` on Windows, where there is no C library to
    load by ``CDLL(None)`` (a TypeError): no call there, and nothing raised."""
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(socket, "TCP_QUICKACK", 12, raising=False)
    with socket.socket() as sock:
        assert asyncssh_patches.quick_ack(Transport(sock)) is None  # type: ignore[arg-type]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's TCP_QUICKACK")
def test_quick_ack_without_setsockopt_or_libc_or_tcp_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as sock:
        ack = asyncssh_patches.quick_ack(Transport(sock))  # type: ignore[arg-type]
        assert ack is not None
        assert ack() == 0  # setsockopt's return: done (reading the option back proves
        # nothing: Linux reports 1 for a fresh socket whether or not it was set)
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            assert asyncssh_patches.quick_ack(Transport(udp)) is None  # type: ignore[arg-type]
        assert asyncssh_patches.quick_ack(Transport(None)) is None  # type: ignore[arg-type]
        monkeypatch.setattr(asyncssh_patches, "libc", object)  # no setsockopt
        assert asyncssh_patches.quick_ack(Transport(sock)) is None  # type: ignore[arg-type]
        monkeypatch.setattr(asyncssh_patches, "libc", lambda: None)
        assert asyncssh_patches.quick_ack(Transport(sock)) is None  # type: ignore[arg-type]

        def broken() -> None:
            raise TypeError("CDLL(None)")

        monkeypatch.setattr(asyncssh_patches, "libc", broken)
        assert asyncssh_patches.quick_ack(Transport(sock)) is None  # type: ignore[arg-type]


class Conn:
    """What :class:`_BufferedReads` asks of asyncssh's connection: a transport, and
    ``data_received``."""

    def __init__(self) -> None:
        self._transport = Transport(None)

    def data_received(self, data: Any) -> None:
        pass


def test_quick_ack_after_every_small_read_but_a_downloads_tail() -> None:
    """By read size and the packet a read leaves cut: a small reply cut over two small
    reads gets both calls; the small read completing a packet a large read cut (a
    download's tail) gets none; a small read after a large one that completes nothing (a
    new connection's channel open confirmation after a download) gets its call."""
    reads = asyncssh_patches._BufferedReads(Conn())
    calls: list[int] = []
    reads.ack = lambda: calls.append(1)  # type: ignore[assignment]
    big = asyncssh_patches.QUICK_ACK_BELOW
    made = []
    # (bytes read, whether the read ends inside a packet, kept for the next read)
    steps = [
        (100, True),
        (200, False),
        (big, True),
        (300, False),
        (400, False),
        (big, False),
        (50, False),
        (big * 4, True),
        (10, False),
    ]
    for nbytes, cut in steps:
        before = len(calls)
        reads.get_buffer(-1)
        reads.buffer_updated(nbytes)
        if cut:
            assert reads.keep(0, 16, 100)
        made.append(len(calls) - before)
    assert made == [1, 1, 0, 0, 1, 0, 1, 0, 0]
