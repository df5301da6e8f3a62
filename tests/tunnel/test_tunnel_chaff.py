"""asyncssh's empty ignore packets: dropped where the cipher chains no IV, kept with CBC.

sshd at LogLevel DEBUG3 logs each packet it receives except channel data ("receive
packet: type N"), so the test counts, at the wire's far end, the ignores (type 2) that
arrived while one connection exchanged lines, beside the channel open (90), EOF (96)
and close (97) that prove the log covers that stretch.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.peers import Sshd, free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.asyncssh_link import SSHLink
from tunnel.backends.chaff import needs_chaff

from .tunnel_testlib import Target, link_up

MSG_IGNORE, MSG_CHANNEL_OPEN, MSG_CHANNEL_EOF, MSG_CHANNEL_CLOSE = 2, 90, 96, 97
EXCHANGES = 20


@pytest.mark.parametrize(
    ("cipher", "expected"),
    [
        ("aes128-gcm@openssh.com", False),
        ("aes256-gcm@openssh.com", False),
        ("chacha20-poly1305@openssh.com", False),
        ("aes256-ctr", False),
        ("aes128-cbc", True),
        ("3des-cbc", True),
        ("some-future-cipher", True),
        (None, True),
    ],
)
def test_which_ciphers_need_chaff(cipher: str | None, expected: bool) -> None:
    assert needs_chaff(cipher) is expected


def received(log: str, pkttype: int) -> int:
    return len(re.findall(rf"receive packet: type {pkttype}\b", log))


@pytest.mark.parametrize(
    ("cipher", "chaff"),
    [
        ("aes128-gcm@openssh.com", False),
        ("chacha20-poly1305@openssh.com", False),
        ("aes128-ctr", False),
        ("aes128-cbc", True),
    ],
)
async def test_ignore_packets_reaching_sshd(
    options: TunnelOptions, sshd: Sshd, echo: Target, cipher: str, chaff: bool
) -> None:
    sshd.kill()
    sshd.log_level = "DEBUG3"
    sshd.extra_config = "Ciphers +aes128-cbc\n"
    sshd.start()
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = await link_up(tunnel)
        assert isinstance(link, SSHLink)
        assert link.conn.get_extra_info("send_cipher") == cipher
        assert link.conn.get_extra_info("send_compression") == "none"
        start = sshd.log.stat().st_size
        reader, writer = await asyncio.open_connection(*forward.mouth)
        for index in range(EXCHANGES):
            line = f"line {index}\n".encode()
            writer.write(line)
            assert await reader.readexactly(len(line)) == line
        writer.close()
        await writer.wait_closed()

    def tail() -> str:
        with sshd.log.open("rb") as log:
            log.seek(start)
            return log.read().decode(errors="replace")

    await wait_until(lambda: received(tail(), MSG_CHANNEL_CLOSE))
    log = tail()
    assert received(log, MSG_CHANNEL_OPEN) == received(log, MSG_CHANNEL_EOF) == 1
    ignores = received(log, MSG_IGNORE)
    if chaff:
        assert ignores >= EXCHANGES + 3
    else:
        assert ignores == 0
