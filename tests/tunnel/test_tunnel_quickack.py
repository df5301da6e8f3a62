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

import pytest

from tests.peers import Sshd, free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link

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


def rounds_with_unacked(options: TunnelOptions, sshd: Sshd, loop: str) -> int:
    """Of ``ROUNDS`` back-to-back round trips of a line through the tunnel, the number at
    whose end (the echo in the client's hands) sshd still waited for an ACK."""
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
                    for number in range(ROUNDS + 1):
                        line = b"LOOKUP blitzdns,NAME %d\r\n" % number
                        writer.write(line)
                        assert await asyncio.wait_for(reader.readline(), 30) == line
                        # The loop blocks here: the tunnel sends nothing meanwhile (no
                        # request of the next round carrying an ACK along).
                        if number and unacked(sshd):  # the first: warming up
                            waiting += 1
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
    load. Without ``quick_ack``'s call, 37 and 40 of 40 rounds waited (unloaded machine);
    under load fewer are seen (``ss`` itself can take longer than the 40 ms timer), so
    that side is not a test of its own."""
    assert rounds_with_unacked(options, sshd, loop) <= ROUNDS // 10
