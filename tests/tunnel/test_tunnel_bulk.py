"""The asyncssh backend's bulk path against the real sshd: what the two speed-ups in
:mod:`tunnel.backends.asyncssh_link` change must leave every byte and every end as it was.

* the carried patch :func:`~tunnel.backends.asyncssh_link._feed_by_packet` hands asyncssh
  each large read in pieces: a piece boundary off by one byte fails the next packet's
  MAC, and the whole link goes;
* the channel side holds the packets after the first in a turn of the loop and writes
  them together: written after the target's EOF (or not at all), the client would get a
  short reply or a broken pipe.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import asyncssh.connection
import pytest

from tests.peers import Sshd, free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link
from tunnel.backends.asyncssh_link import FEED_WHOLE_MAX, GCM_TAG_LEN
from tunnel.backends.chaff import drop_needless_chaff

from .tunnel_testlib import Target, exchange, link_up, read_until_closed, talking_target

CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")


def test_the_feed_patch_is_in_place_on_the_installed_asyncssh() -> None:
    """A later asyncssh without the internals the patch relies on leaves it out silently;
    this says so (then check the patch against that version, or drop it)."""
    assert getattr(asyncssh.connection.SSHConnection.data_received, "feeds_by_packet", False)


class Reads:
    """What asyncssh's connection was handed: the size of every read (at the patched
    entry point), and the most its input buffer held when it began parsing."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.most_buffered = 0

    def check(self) -> None:
        # The test meant the pieces: reads larger than one packet did reach asyncssh...
        assert max(self.sizes) > FEED_WHOLE_MAX
        # ...and asyncssh never held more than one packet (32 KiB of data from sshd, plus
        # the header, padding and MAC) and one small read handed over whole: no remainder
        # of a large read was copied per packet.
        assert self.most_buffered <= 32 * 1024 + 1024 + FEED_WHOLE_MAX


def test_the_gcm_patch_is_in_place_on_the_installed_asyncssh() -> None:
    from asyncssh.encryption import GCMEncryption

    assert getattr(GCMEncryption.decrypt_packet, "fewer_copies", False)


def test_the_gcm_patch_seals_and_opens_as_asyncssh_did() -> None:
    """Both directions of the patched shim against cryptography's AES-GCM itself, the
    IV stepping per packet, and a bad tag refused (asyncssh's MAC error follows)."""
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key, iv = bytes(range(16)), bytes(range(12))
    sender = GCMEncryption(GCMCipher("aes128-gcm", key, iv))
    receiver = GCMEncryption(GCMCipher("aes128-gcm", key, iv))
    for seq, body in enumerate((b"\x04" + bytes(27), os.urandom(32 * 1024 + 12))):
        header = len(body).to_bytes(4, "big")
        packet, tag = sender.encrypt_packet(seq, header, body)
        nonce = iv[:4] + (int.from_bytes(iv[4:], "big") + seq).to_bytes(8, "big")
        assert packet + tag == header + AESGCM(key).encrypt(nonce, body, header)
        assert len(tag) == GCM_TAG_LEN
        first, rest = packet[:16], packet[16:]
        assert receiver.decrypt_packet(seq, first, rest, 4, tag) == body
    header = (12).to_bytes(4, "big")
    packet, tag = sender.encrypt_packet(2, header, bytes(12))
    assert receiver.decrypt_packet(2, packet[:16], packet[16:], 4, bytes(16)) is None


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    connection = asyncssh.connection.SSHConnection
    patched, parse = connection.data_received, connection._recv_data

    def counting(self: Any, data: bytes, datatype: Any = None) -> None:
        seen.sizes.append(len(data))
        patched(self, data, datatype)

    def parsing(self: Any) -> None:
        if self._auth_complete:
            seen.most_buffered = max(seen.most_buffered, len(self._inpbuf))
        parse(self)

    monkeypatch.setattr(connection, "data_received", counting)
    monkeypatch.setattr(connection, "_recv_data", parsing)
    return seen


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_bulk_reply_arrives_whole_then_ends(
    options: TunnelOptions, reads: Reads, cipher: str
) -> None:
    """Four MiB from a target that speaks first and hangs up: every byte, in order, then
    the end of data (not a reset), and the link still up for the next connection."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    payload = os.urandom(4 * 1024 * 1024 + 5)
    async with talking_target(payload) as forward, Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        assert link.conn.get_extra_info("recv_cipher") == cipher
        for _ in range(2):
            got = await exchange(*forward.mouth, b"")
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert tunnel.link is link
        state = tunnel.state.forwards[0]
        assert (state.cut, state.bytes_in) == (0, 2 * len(payload))
    reads.check()


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_bulk_both_ways_at_once(
    options: TunnelOptions, echo: Target, reads: Reads, cipher: str
) -> None:
    """Three echo connections at once, 3 MiB each: interleaved channels on one link."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    payloads = [os.urandom(3 * 1024 * 1024 + n) for n in range(3)]
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        got = await asyncio.gather(*(exchange(*forward.mouth, p) for p in payloads))
        assert got == payloads
    reads.check()


async def test_a_short_reply_then_close_is_not_held(options: TunnelOptions) -> None:
    """One packet, then the target's end: written at once, then a FIN (nothing waits for
    a turn of the loop that would come after the close)."""
    async with talking_target(b"* OK ready\r\n") as forward, Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            assert await read_until_closed(reader) == b"* OK ready\r\n"
        finally:
            writer.close()


def test_the_send_patch_is_in_place_on_the_installed_asyncssh() -> None:
    assert getattr(asyncssh.connection.SSHConnection.send_packet, "joins_once", False)


@pytest.mark.parametrize("cipher", [*CIPHERS, "aes128-cbc"])
async def test_data_across_key_exchanges(
    options: TunnelOptions,
    sshd: Sshd,
    echo: Target,
    cipher: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rekey every 256 KiB while 2 MiB go each way: data packets sent while a key
    exchange is due or running must go through asyncssh's own path (deferred until the
    new keys), else sshd drops the connection. CBC: with the chaff before each packet."""
    sshd.kill()
    sshd.extra_config = "Ciphers +aes128-cbc\n"
    sshd.start()
    assert options.known_hosts is not None
    payload = os.urandom(2 * 1024 * 1024)
    kexinits: list[int] = []
    connection = asyncssh.connection.SSHConnection
    send_kexinit = connection._send_kexinit

    def counting(self: Any) -> None:
        kexinits.append(1)
        send_kexinit(self)

    monkeypatch.setattr(connection, "_send_kexinit", counting)
    async with asyncssh.connect(
        "127.0.0.1",
        port=sshd.port,
        username=sshd.user,
        known_hosts=str(options.known_hosts),
        client_keys=[str(sshd.client_key)],
        config=None,
        encryption_algs=[cipher],
        rekey_bytes=256 * 1024,
    ) as conn:
        drop_needless_chaff(conn)
        reader, writer = await conn.open_connection("127.0.0.1", echo.port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        assert conn.get_extra_info("send_cipher") == cipher
    # The first exchange, then one per 256 KiB sent: the rekeys did happen mid-transfer.
    assert len(kexinits) >= 4
