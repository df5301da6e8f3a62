"""The asyncssh backend's bulk path against the real sshd: what the two speed-ups in
:mod:`tunnel.backends.asyncssh_link` and :mod:`tunnel.backends.asyncssh_patches` change
must leave every byte and every end as it was.

* the carried patch :func:`~tunnel.backends.asyncssh_patches._feed_by_packet` hands asyncssh
  each large read in pieces: a piece boundary off by one byte fails the next packet's
  MAC, and the whole link goes;
* the channel side holds the packets after the first in a turn of the loop and writes
  them together: written after the target's EOF (or not at all), the client would get a
  short reply or a broken pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import os
import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh.connection
import pytest
from asyncssh.encryption import GCMEncryption

from tests.peers import Sshd, free_port, start_sshd, stopped, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link, asyncssh_patches, poly1305
from tunnel.backends.asyncssh_patches import (
    FEED_WHOLE_MAX,
    GCM_TAG_LEN,
    _BufferedReads,
)
from tunnel.backends.chaff import drop_needless_chaff

from .tunnel_testlib import (
    Target,
    digest_to_end,
    exchange,
    link_up,
    one_open_connection,
    read_until_closed,
    talking_target,
)

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


def test_the_gcm_iv_steps_as_asyncssh_steps_it() -> None:
    """The in-place paths' IV step against asyncssh's own ``_update_iv``, the invocation
    counter's carries and its wrap at 2**64 included (the fixed field never changes)."""
    from asyncssh.crypto.cipher import GCMCipher

    for counter in (0, 1, 0xFF, 0xFFFFFFFF, 0x00FFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFE, 2**64 - 1):
        iv = bytes.fromhex("a1b2c3d4") + counter.to_bytes(8, "big")
        theirs, ours = (
            GCMCipher("aes128-gcm", bytes(16), iv),
            GCMCipher("aes128-gcm", bytes(16), iv),
        )
        for _ in range(3):
            theirs._update_iv()
            asyncssh_patches._gcm_step_iv(ours)
            assert ours._iv == theirs._iv
            assert type(ours._iv) is bytes


def test_padding_comes_from_the_os_each_byte_handed_out_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The data packets' padding (:class:`~tunnel.backends.asyncssh_patches._Padding`):
    every byte from ``os.urandom``, in order, none handed out twice, a new draw when the
    pool cannot give a whole padding (its rest is dropped, not reused)."""
    drawn: list[bytes] = []
    system = os.urandom

    def urandom(size: int) -> bytes:
        drawn.append(system(size))
        return drawn[-1]

    monkeypatch.setattr(asyncssh_patches.os, "urandom", urandom)
    take = asyncssh_patches._Padding().take
    pieces = [take(size) for size in [4, 19, 7, 16] * 300]
    assert [len(piece) for piece in pieces] == [4, 19, 7, 16] * 300
    assert all(len(pool) == asyncssh_patches.PADDING_POOL for pool in drawn)
    assert len(drawn) >= 3  # the pool was drawn again, more than once
    # Each draw is cut in order from its start; what a draw could not give whole stays unused.
    handed = iter(pieces)
    piece = next(handed)
    for pool in drawn:
        pos = 0
        while piece is not None and pos + len(piece) <= len(pool):
            assert piece == pool[pos : pos + len(piece)]
            pos += len(piece)
            piece = next(handed, None)
        assert piece is None or pos + len(piece) > len(pool)
    assert piece is None


@pytest.mark.parametrize("library", ["libsodium", "cryptography"])
def test_the_chacha_patch_seals_and_opens_as_asyncssh_did(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patched chacha20-poly1305 shim (its contexts kept per key, moved to each
    packet's nonce; its tags written into the cipher's one buffer) against asyncssh's own
    functions, packets of every size around the 64-byte block and interleaved nonces; a
    bad tag refused (asyncssh's MAC error); the tags given out earlier unchanged."""
    from asyncssh.crypto import chacha

    lib = poly1305.sodium() if library == "libsodium" else None
    if library == "libsodium" and lib is None:
        pytest.skip("libsodium (Debian: libsodium23) is not on this system")
    monkeypatch.setattr(poly1305, "_lib", lib)
    assert getattr(chacha.ChachaCipher.encrypt_and_sign, "kept_streams", False)
    tags: list[tuple[bytes, bytes]] = []
    key = os.urandom(64)
    main, adkey = key[:32], key[32:]
    sender, receiver = chacha.ChachaCipher(key), chacha.ChachaCipher(key)
    # around the block, and around CHACHA_SHORT (key and body in one call up to it)
    sizes = (12, 28, 60, 64, 65, 128, 1000, 1024, 1025, 32 * 1024 + 12, 44)
    seqs = (7, 3, 2**32 + 5, 0, 9, 9, 1, 11, 12, 2**64 - 1, 4)
    assert asyncssh_patches.CHACHA_SHORT in sizes
    for seq, size in zip(seqs, sizes, strict=True):
        nonce, body = seq.to_bytes(8, "big"), os.urandom(size)
        header = len(body).to_bytes(4, "big")
        packet, tag = sender.encrypt_and_sign(header, body, nonce)
        assert packet[:4] == chacha.chacha20(adkey, header, nonce, 0)
        assert packet[4:] == chacha.chacha20(main, body, nonce, 1)
        assert tag == chacha.poly1305(main, packet, nonce)
        tags.append((tag, chacha.poly1305(main, packet, nonce)))
        assert receiver.decrypt_header(packet[:4], nonce) == header
        assert receiver.verify_and_decrypt(packet[:4], packet[4:], nonce, tag) == body
    assert receiver.verify_and_decrypt(packet[:4], packet[4:], nonce, bytes(16)) is None
    assert receiver.verify_and_decrypt(packet[:4], packet[4:], bytes(8), tag) is None
    assert all(tag == expected for tag, expected in tags)


class Opened:
    """Bytes of channel data handed to the tunnel's channel sessions: opened in place (a
    view of the packet's plaintext) or by asyncssh's own packet handler (bytes); and how
    often data came while asyncssh would have held it (the channel's reading paused) or
    with the channel's window not as asyncssh keeps it (counted, and adjusted back to the
    full window once below half of it, before the data goes on)."""

    def __init__(self) -> None:
        self.in_place = 0
        self.by_asyncssh = 0
        self.astray = 0

    def check(self, total: int, connections: int = 1) -> None:
        """Every byte came one way or the other; asyncssh opened only what came before the
        channel's session was there (a target that speaks first: asyncssh holds that data
        until the session starts, at most the channel's first window: nothing is consumed
        before, so no window is adjusted) and what it had buffered during a key exchange.
        (It was bounded at 256 KiB, one read: under load libuv reads the socket up to 32
        times in a turn of the loop, before the session's start gets its turn.)"""
        assert self.in_place + self.by_asyncssh == total
        assert self.by_asyncssh <= connections * DEFAULT_WINDOW
        assert self.in_place >= total // 2
        assert self.astray == 0


DEFAULT_WINDOW: int = next(
    int(f.default)  # type: ignore[arg-type]
    for f in dataclasses.fields(TunnelOptions)
    if f.name == "channel_window"
)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Opened:
    seen = Opened()
    received = asyncssh_link._Channel.data_received

    def counting(self: Any, data: Any, datatype: Any) -> None:
        if isinstance(data, memoryview):
            seen.in_place += len(data)
        else:
            seen.by_asyncssh += len(data)
        window, full = self._recv_window, self._init_recv_window
        if self._recv_paused or not full / 2 <= window <= full:
            seen.astray += 1
        received(self, data, datatype)

    monkeypatch.setattr(asyncssh_link._Channel, "data_received", counting)
    return seen


class Sent:
    """Bytes of channel data that went out through asyncssh's ``send_packet`` (not sealed in
    place by :func:`~tunnel.backends.asyncssh_patches._data_packets_sealed_in_place`)."""

    by_asyncssh = 0


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    from asyncssh.channel import SSHChannel

    seen = Sent()
    send_packet = SSHChannel.send_packet

    def counting(self: Any, pkttype: int, *args: bytes) -> None:
        if pkttype == MSG_CHANNEL_DATA:
            seen.by_asyncssh += len(args[0]) - 4  # the string's length field
        send_packet(self, pkttype, *args)

    monkeypatch.setattr(SSHChannel, "send_packet", counting)
    return seen


MSG_CHANNEL_DATA = 94


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
    options: TunnelOptions, reads: Reads, opened: Opened, cipher: str
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
    opened.check(2 * len(payload), connections=2)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_bulk_both_ways_at_once(
    options: TunnelOptions, echo: Target, reads: Reads, sent: Sent, cipher: str
) -> None:
    """Three echo connections at once, 3 MiB each: interleaved channels on one link. Every
    data packet up is sealed in place (none through asyncssh's send_packet)."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    payloads = [os.urandom(3 * 1024 * 1024 + n) for n in range(3)]
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        got = await asyncio.gather(*(exchange(*forward.mouth, p) for p in payloads))
        assert got == payloads
    reads.check()
    assert sent.by_asyncssh == 0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_gateways_bytes_are_read_into_one_buffer(
    options: TunnelOptions, opened: Opened, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """The SSH socket is read into the connection's one buffer on both loops (uvloop picks
    its read callbacks when reading starts), and reading the next read into the same
    buffer spoils nothing: 4 MiB down from a target that speaks first, then 3 MiB up and
    back from an echo, byte for byte (packets cut by the end of a read are kept as
    copies)."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    reads: list[int] = []
    updated = _BufferedReads.buffer_updated

    def counting(self: _BufferedReads, nbytes: int) -> None:
        reads.append(nbytes)
        updated(self, nbytes)

    monkeypatch.setattr(_BufferedReads, "buffer_updated", counting)
    down, up = os.urandom(4 * 1024 * 1024 + 3), os.urandom(3 * 1024 * 1024 + 1)

    async def scenario() -> tuple[bytes, bytes]:
        echo = await Target("echo").start()
        echoed = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with (
                talking_target(down) as forward,
                Tunnel(options, [forward, echoed]) as tunnel,
            ):
                assert await tunnel.wait_up(10)
                link = await link_up(tunnel)
                assert isinstance(link, asyncssh_link.SSHLink)
                got = await exchange(*forward.mouth, b""), await exchange(*echoed.mouth, up)
                return got
        finally:
            await echo.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        got_down, got_up = runner.run(scenario())
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert sum(reads) > len(down) + len(up)
    opened.check(len(down) + len(up), connections=2)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_clients_bytes_are_read_into_the_links_buffer(
    options: TunnelOptions, sent: Sent, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """Up: client sockets are read into the link's one buffer on both loops, and the next
    read into it spoils nothing: 3 MiB up and back through an echo on two connections at
    once (their first bytes sent before the channel is open: copied aside), byte for
    byte; the data is sealed from the buffer itself. A read takes up to 1 MiB once the
    channel is open (fewer turns of asyncio's loop), at most ``PENDING_MAX`` before."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    reads: list[int] = []
    offered: list[tuple[bool, int]] = []
    updated = asyncssh_link._ClientSide.buffer_updated
    get_buffer = asyncssh_link._ClientSide.get_buffer

    def counting(self: Any, nbytes: int) -> None:
        reads.append(nbytes)
        updated(self, nbytes)

    def offering(self: Any) -> memoryview:
        buffer = get_buffer(self)
        offered.append((self.open, len(buffer)))
        return buffer

    monkeypatch.setattr(asyncssh_link._ClientSide, "buffer_updated", counting)
    monkeypatch.setattr(asyncssh_link._ClientSide, "get_buffer", offering)
    ups = [os.urandom(3 * 1024 * 1024 + 7), os.urandom(3 * 1024 * 1024 + 1)]

    async def scenario() -> list[bytes]:
        echo = await Target("echo").start()
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with Tunnel(options, [forward]) as tunnel:
                assert await tunnel.wait_up(10)
                return list(await asyncio.gather(*(exchange(*forward.mouth, up) for up in ups)))
        finally:
            await echo.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        got = runner.run(scenario())
    assert [hashlib.sha256(g).digest() for g in got] == [hashlib.sha256(u).digest() for u in ups]
    assert sum(reads) == sum(len(up) for up in ups)
    assert sent.by_asyncssh == 0
    assert {size for is_open, size in offered if is_open} == {1024 * 1024}
    assert all(size <= asyncssh_link.PENDING_MAX for is_open, size in offered if not is_open)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sealed_packets_the_transport_holds_are_not_sealed_over(
    options: TunnelOptions, sshd: Sshd, sent: Sent, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """AES-GCM packets up are sealed into the connection's arena
    (:class:`~tunnel.backends.asyncssh_patches._Arena`); while the transport still holds
    some of them (sshd frozen, the SSH socket's send buffer small), what is sealed next
    goes after them, never over them: 8 MiB up and back through an echo, byte for byte
    (a packet sealed over would fail sshd's tag check and end the link). The arena is
    used from its start again once the transport has written everything."""
    if not asyncssh_patches.SEALS_INTO:
        pytest.skip("cryptography before 47: every packet sealed into new bytes")
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    assert options.ssh_config is not None
    options.ssh_config.write_text("Host *\n  Ciphers aes128-gcm@openssh.com\n")
    transport: list[Any] = [None]
    sealed = [0]  # packets sealed into the arena
    held = [0]  # of them, sealed after others the transport still held
    restarts = [0]

    class Watched(asyncssh_patches._Arena):
        __slots__ = ("at",)

        def __init__(self) -> None:
            self.at = 0
            super().__init__()

        @property  # type: ignore[override]
        def pos(self) -> int:
            return self.at

        @pos.setter
        def pos(self, value: int) -> None:
            sealed[0] += value > self.at
            if value == 0 and self.at:
                restarts[0] += 1
            elif self.at and transport[0] and transport[0].get_write_buffer_size():
                held[0] += 1
            self.at = value

    monkeypatch.setattr(asyncssh_patches, "_Arena", Watched)
    payload = os.urandom(8 * 1024 * 1024 + 5)

    async def scenario() -> bytes:
        echo = await Target("echo").start()
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        try:
            async with Tunnel(options, [forward]) as tunnel:
                assert await tunnel.wait_up(10)
                link = await link_up(tunnel)
                assert isinstance(link, asyncssh_link.SSHLink)
                transport[0] = link.conn._transport
                sock = transport[0].get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                reader, writer = await asyncio.open_connection(*forward.mouth)
                try:
                    writer.write(payload[:1000])  # the channel opens: sealing starts
                    await wait_until(lambda: sealed[0] > 0)
                    with stopped(sshd.session_pids()):
                        writer.write(payload[1000:])
                        await wait_until(lambda: held[0] > 0)
                    await writer.drain()
                    writer.write_eof()
                    return await reader.read()
                finally:
                    writer.close()
        finally:
            await echo.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        got = runner.run(scenario())
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    assert sent.by_asyncssh == 0
    assert held[0] > 0  # the case this test is for did come
    assert restarts[0] > 0  # and the arena was used again once written


class CountingTransport:
    """A client transport as the tunnel's channel side sees it, counting its write calls
    (and those made while asyncssh's connection was still processing a read, but for the
    last one, made before the target's EOF is passed on)."""

    def __init__(self, transport: Any, reading: list[bool], client: Any) -> None:
        self.transport = transport
        self.reading = reading
        self.client = client
        self.writes = 0
        self.early = 0

    def write(self, data: Any) -> None:
        self.count()
        self.transport.write(data)

    def writelines(self, data: Any) -> None:
        self.count()
        self.transport.writelines(data)

    def count(self) -> None:
        self.writes += 1
        self.early += self.reading[0] and not self.client.target_eof

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_packets_of_one_read_go_to_the_client_in_one_write(
    options: TunnelOptions, opened: Opened, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """4 MiB down: the data of each read of the SSH socket is written to the client once
    that read is processed, in one call (ssh -L writes its channel's buffer once per
    poll), never while the read is still being opened; every byte, in order. (Data that
    asyncssh held while the client was slow goes out when it resumes, outside any read:
    not counted here.)"""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    writes_per_read: list[int] = []
    reading = [False]
    transports: list[CountingTransport] = []
    updated = _BufferedReads.buffer_updated
    received = asyncssh.connection.SSHConnection.data_received
    channel_init = asyncssh_link._Channel.__init__

    def counting(self: _BufferedReads, nbytes: int) -> None:
        before = sum(transport.writes for transport in transports)
        updated(self, nbytes)
        writes_per_read.append(sum(transport.writes for transport in transports) - before)

    def processing(self: Any, data: Any, datatype: Any = None) -> None:
        reading[0] = True
        try:
            received(self, data, datatype)
        finally:
            reading[0] = False

    def made(self: Any, client: Any) -> None:
        channel_init(self, client)
        self.transport = CountingTransport(self.transport, reading, client)
        transports.append(self.transport)

    monkeypatch.setattr(_BufferedReads, "buffer_updated", counting)
    monkeypatch.setattr(asyncssh.connection.SSHConnection, "data_received", processing)
    monkeypatch.setattr(asyncssh_link._Channel, "__init__", made)
    down = os.urandom(4 * 1024 * 1024 + 5)

    async def scenario() -> bytes:
        async with talking_target(down) as forward, Tunnel(options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            return await exchange(*forward.mouth, b"")

    with asyncio.Runner(loop_factory=factory) as runner:
        got = runner.run(scenario())
    assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()
    (transport,) = transports
    assert transport.early == 0
    assert max(writes_per_read) == 1
    opened.check(len(down))


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_packets_opened_in_place_are_not_opened_again(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tunneled connection's packets other than its data (the open confirmation, EOF,
    close) are opened once, in place, and handed to their channel there: asyncssh's own
    parser makes no packet object for any of them (through it, each was parsed again, and
    for chacha20-poly1305 also opened again: a second Poly1305 check and two ChaCha20
    passes), and whatever it does process meanwhile is served the plaintext opened once."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        await link_up(tunnel)
        assert await exchange(*forward.mouth, b"first\n") == b"first\n"
        handed: list[bool] = []
        taken = asyncssh_patches._opened_before
        parsed: list[int] = []

        def counting(*args: Any) -> bytes | None:
            plain = taken(*args)
            handed.append(plain is not None)
            return plain

        class CountedPacket(asyncssh.packet.SSHPacket):
            def __init__(self, packet: bytes) -> None:
                parsed.append(packet[0])
                super().__init__(packet)

        monkeypatch.setattr(asyncssh_patches, "_opened_before", counting)
        monkeypatch.setattr(asyncssh.connection, "SSHPacket", CountedPacket)
        for n in range(3):
            line = b"line %d\n" % n
            assert await exchange(*forward.mouth, line) == line
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
    assert parsed == []
    assert all(handed)


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


def rekeying_link(sshd: Sshd, options: TunnelOptions, cipher: str, rekeys: bool = True) -> Any:
    """A plain asyncssh connection to ``sshd`` with ``cipher``, rekeying every 256 KiB it
    sends (an async context manager); with ``rekeys`` false, at asyncssh's default (1 GiB:
    the rekeys are sshd's)."""
    assert options.known_hosts is not None
    return asyncssh.connect(
        "127.0.0.1",
        port=sshd.port,
        username=sshd.user,
        known_hosts=str(options.known_hosts),
        client_keys=[str(sshd.client_key)],
        config=None,
        encryption_algs=[cipher],
        rekey_bytes=256 * 1024 if rekeys else 1 << 30,
    )


def test_the_send_patch_is_in_place_on_the_installed_asyncssh() -> None:
    assert getattr(asyncssh.connection.SSHConnection.send_packet, "joins_once", False)


@pytest.mark.parametrize("cipher", [*CIPHERS, "aes128-cbc"])
async def test_data_across_key_exchanges(
    options: TunnelOptions,
    sshd: Sshd,
    echo: Target,
    sent: Sent,
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
    async with rekeying_link(sshd, options, cipher) as conn:
        drop_needless_chaff(conn)
        reader, writer = await conn.open_connection("127.0.0.1", echo.port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        assert conn.get_extra_info("send_cipher") == cipher
    # The first exchange, then one per 256 KiB sent: the rekeys did happen mid-transfer.
    assert len(kexinits) >= 4
    # Sealed in place until the first rekey was due; from then on (a rekey due, running,
    # or the window's rest flushed meanwhile) through asyncssh; CBC: asyncssh's alone.
    if cipher == "aes128-cbc":
        assert sent.by_asyncssh == len(payload)
    else:
        assert 0 < sent.by_asyncssh < len(payload)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_the_kept_seal_follows_the_keys_and_the_debug_level(
    options: TunnelOptions, sshd: Sshd, sent: Sent, loop: str, cipher: str
) -> None:
    """The seal kept with the connection (``SEALS_WITH``) for its send keys, against sshd:
    a rekey every 256 KiB while 1 MiB goes up and back in 128 KiB pieces; after each
    piece the kept seal, if any, belongs to the connection's current send encryption
    object (never to an earlier key's: dropped at NEWKEYS), and the link is up. The seal reads
    the connection's current keys when it seals, so a stale kept seal would still reach
    sshd intact: the identity check is what catches one. asyncssh's debug level 2 during
    piece 1 (which starts with the seal kept for the current keys: asserted, else a kept
    "in place" could not show) sends that piece asyncssh's own way whole (checked each
    time, not kept); back at 1, in place again."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    assert options.known_hosts is not None
    kept_keys: list[Any] = []
    by_asyncssh: list[int] = []

    async def scenario() -> None:
        echo = await Target("echo").start()
        try:
            async with rekeying_link(sshd, options, cipher) as conn:
                drop_needless_chaff(conn)
                reader, writer = await conn.open_connection("127.0.0.1", echo.port)
                for piece in range(8):
                    chunk = os.urandom(128 * 1024)
                    if piece == 1:  # the seal kept so far is for the keys in use now
                        kept = vars(conn).get(asyncssh_patches.SEALS_WITH)
                        assert kept is not None and kept[0] is conn._send_encryption
                    asyncssh.set_debug_level(2 if piece == 1 else 1)
                    before = sent.by_asyncssh
                    writer.write(chunk)
                    assert await reader.readexactly(len(chunk)) == chunk
                    by_asyncssh.append(sent.by_asyncssh - before)
                    kept = vars(conn).get(asyncssh_patches.SEALS_WITH)
                    if kept is not None:  # none: a rekey came after the last send
                        assert kept[0] is conn._send_encryption
                        kept_keys.append(kept[0])
                assert conn.get_extra_info("send_cipher") == cipher
        finally:
            asyncssh.set_debug_level(1)
            await echo.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(scenario())
    assert by_asyncssh[1] == 128 * 1024  # debug level 2: asyncssh's own path, all of it
    assert by_asyncssh[0] < 128 * 1024 and by_asyncssh[7] < 128 * 1024  # in place again
    assert len({id(key) for key in kept_keys}) >= 3  # kept anew for each new key


@pytest.mark.parametrize("by", ["client", "server"])
@pytest.mark.parametrize("cipher", CIPHERS)
async def test_the_kept_seal_goes_with_the_old_keys_at_newkeys(
    options: TunnelOptions,
    sshd: Sshd,
    echo: Target,
    cipher: str,
    by: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncssh drops its send keys at each NEWKEYS (``send_newkeys`` replaces the send
    encryption object); the seal kept for them (``SEALS_WITH``) goes there too, not at the
    next send. Against sshd, a rekey every 256 KiB (asked by the client, or by sshd's
    ``RekeyLimit``) while 1 MiB goes up and back in 128 KiB pieces: right after every
    NEWKEYS nothing is kept for an encryption object other than the connection's new one;
    and before some of them the seal was kept for the keys being replaced (else there
    would have been nothing to drop). What each NEWKEYS saw is recorded and asserted after
    the link (an assert inside asyncssh's packet handler would end the link instead)."""
    connection = asyncssh.connection.SSHConnection
    patched = connection.send_newkeys
    # (keys replaced, kept for the old keys before, kept's keys after when not the new ones)
    seen: list[tuple[bool, bool, Any]] = []

    def recording(self: Any, k: bytes, h: bytes) -> None:
        old = self._send_encryption
        before = vars(self).get(asyncssh_patches.SEALS_WITH)
        patched(self, k, h)
        after = vars(self).get(asyncssh_patches.SEALS_WITH)
        seen.append(
            (
                self._send_encryption is not old,
                before is not None and before[0] is old,
                None if after is None or after[0] is self._send_encryption else after[0],
            )
        )

    monkeypatch.setattr(connection, "send_newkeys", recording)
    server = sshd
    if by == "server":
        server = start_sshd(tmp_path / "rekeying-sshd", extra_config="RekeyLimit 256K\n")
        known_hosts = tmp_path / "rekeying_known_hosts"
        known_hosts.write_text(server.known_hosts_line())
        options = dataclasses.replace(options, known_hosts=known_hosts)
    try:
        link = rekeying_link(server, options, cipher, by == "client")
        async with link as conn:
            drop_needless_chaff(conn)
            reader, writer = await conn.open_connection("127.0.0.1", echo.port)
            for _ in range(8):
                chunk = os.urandom(128 * 1024)
                writer.write(chunk)
                assert await reader.readexactly(len(chunk)) == chunk
            assert conn.get_extra_info("send_cipher") == cipher
    finally:
        if server is not sshd:
            server.kill()
    assert all(replaced for replaced, _, _ in seen)
    rekeys = seen[1:]  # the first NEWKEYS replaces no keys
    assert len(rekeys) >= 3
    assert [stale for _, _, stale in rekeys if stale is not None] == []
    assert any(kept_for_old for _, kept_for_old, _ in rekeys)


def test_the_open_in_place_patch_is_in_place_on_the_installed_asyncssh() -> None:
    assert getattr(asyncssh.connection.SSHConnection.data_received, "opens_in_place", False)


@pytest.mark.parametrize(
    ("cipher", "limit"),
    [("aes128-gcm@openssh.com", "256K"), ("chacha20-poly1305@openssh.com", "1M")],
)
async def test_channel_data_is_opened_in_place_across_the_gateways_rekeys(
    options: TunnelOptions,
    sshd: Sshd,
    opened: Opened,
    cipher: str,
    limit: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sshd rekeys every 256 KiB (chacha20: its RekeyLimit counts so that 256K rekeys after
    every packet, hence 1M) while 4 MiB come down: the data packets under every key are
    opened in place, the key exchanges in between go through asyncssh (which opens the
    rest of the read it buffered meanwhile itself), and every byte arrives in order. A
    wrong sequence number or IV step fails the next packet's MAC: the link would go."""
    sshd.kill()
    sshd.extra_config = f"RekeyLimit {limit}\n"
    sshd.start()
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    kexinits: list[int] = []
    connection = asyncssh.connection.SSHConnection
    handlers = dict(connection._packet_handlers)
    kexinit = handlers[MSG_KEXINIT]

    def counting(self: Any, pkttype: int, pktid: int, packet: Any) -> Any:
        kexinits.append(1)
        return kexinit(self, pkttype, pktid, packet)

    handlers[MSG_KEXINIT] = counting
    monkeypatch.setattr(connection, "_packet_handlers", handlers)
    payload = os.urandom(4 * 1024 * 1024 + 7)
    async with talking_target(payload) as forward, Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        got = await exchange(*forward.mouth, b"")
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert len(kexinits) >= 4
    assert opened.in_place + opened.by_asyncssh == len(payload)
    assert opened.in_place >= len(payload) * 3 // 4  # asyncssh: what it buffered in a rekey


MSG_KEXINIT = 20


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_small_window_is_counted_and_reopened(
    options: TunnelOptions, opened: Opened, cipher: str
) -> None:
    """A 64 KiB channel window: 4 MiB need 64 window adjusts, which asyncssh sends only if
    every packet opened in place was counted against the window (else sshd stops at
    64 KiB and this waits for ever; the guard below makes that a failure)."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    options = dataclasses.replace(options, channel_window=64 * 1024)
    payload = os.urandom(4 * 1024 * 1024)
    async with talking_target(payload) as forward, Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        async with asyncio.timeout(60):  # a guard against a stall, not a measure
            got = await exchange(*forward.mouth, b"")
        assert got == payload
    opened.check(len(payload))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("cipher", CIPHERS)
def test_data_held_while_the_client_is_slow_arrives_whole(
    options: TunnelOptions, opened: Opened, cipher: str, loop: str
) -> None:
    """A client that reads nothing for a while: its socket and transport fill, asyncssh
    pauses the channel and holds the packets opened in place (views) in its own buffer,
    sending no window adjust; when the client reads, the held data comes first, in order,
    and the window opens again. On both loops: what the client's socket did not take of
    a view of the read buffer is copied before the next read overwrites it (every byte
    checked)."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    chunk = os.urandom(1024 * 1024)
    repeat = 12

    async def scenario() -> tuple[int, str]:
        async with talking_target(chunk, repeat) as forward, Tunnel(options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            assert type(asyncio.get_running_loop()).__module__.startswith(loop)
            link = tunnel.link
            assert isinstance(link, asyncssh_link.SSHLink)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, forward.mouth)
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                channels = link.conn._channels.values()
                await wait_until(lambda: any(chan._recv_buf for chan in channels), timeout_s=60)
                return await digest_to_end(reader)
            finally:
                writer.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        total, digest = runner.run(scenario())
    assert total == len(chunk) * repeat
    assert digest == hashlib.sha256(chunk * repeat).hexdigest()
    opened.check(len(chunk) * repeat)


async def test_data_up_beyond_the_gateways_window_waits_for_it(
    options: TunnelOptions, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data up to a target that reads nothing at first, 1 MiB at a time until some of it
    waits in asyncssh's buffer for sshd's window (2 MiB): none sealed beyond the window
    (RFC 4254 §5.2; this sshd lets some excess pass, so the window is watched here); it
    goes when the target reads and sshd adjusts the window: every byte, in order.

    How much the path holds before the window runs out is the kernel's (sshd's send
    buffer to the target grows up to tcp_wmem's maximum, 4 MiB here): 6 MiB sent at once
    sometimes all fitted, and the window, used up only for a moment, was missed by a
    poll (a failure under load). So: more until data waited, seen by ``write`` itself."""
    from asyncssh.channel import SSHChannel

    reading = asyncio.Event()
    waited = asyncio.Event()
    windows: list[int] = []
    waiting: list[int] = []  # the window whenever data waited
    handed = [0]
    write = SSHChannel.write

    def watched(self: Any, data: Any, datatype: Any = None) -> None:
        write(self, data, datatype)
        windows.append(self._send_window)
        handed[0] += len(data)
        if self._send_buf:
            waiting.append(self._send_window)
            waited.set()

    monkeypatch.setattr(SSHChannel, "write", watched)

    async def digest_of_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reading.wait()
        digest = hashlib.sha256()
        while block := await reader.read(1 << 20):
            digest.update(block)
        writer.write(digest.digest())
        await writer.drain()
        writer.close()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)  # no autotuning
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(digest_of_all, sock=listener)
    async with server:
        port = server.sockets[0].getsockname()[1]
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", port)
        async with Tunnel(options, [forward]) as tunnel:
            assert await tunnel.wait_up(10)
            link = tunnel.link
            assert isinstance(link, asyncssh_link.SSHLink)
            reader, writer = await asyncio.open_connection(*forward.mouth)
            try:
                digest = hashlib.sha256(block := os.urandom(1000))
                writer.write(block)  # the reads then end off the window's edge
                await writer.drain()
                await wait_until(lambda: handed[0] == 1000)
                total = 1000
                while not waited.is_set():
                    # The path holds a bounded amount (kernel buffers, sshd's window).
                    assert total < 64 * 1024 * 1024
                    digest.update(block := os.urandom(1024 * 1024))
                    writer.write(block)
                    total += len(block)
                    await wait_until(lambda n=total: waited.is_set() or handed[0] == n, 60)
                writer.write_eof()
                reading.set()
                assert await reader.read() == digest.digest()
            finally:
                writer.close()
    assert sent.by_asyncssh == 0
    assert min(windows) >= 0
    assert max(waiting) == 0  # data waited only for the window


def sealed_by_the_gateway(conn: Any, plain: bytes) -> bytes:
    """``plain`` (padding length, payload, padding) sealed as the gateway seals its next
    packet to ``conn``: the connection's receive keys and sequence number (the GCM IV put
    back, so the connection's own state is untouched)."""
    encryption = conn._recv_encryption
    iv = getattr(encryption._cipher, "_iv", None)
    header = len(plain).to_bytes(4, "big")
    packet, tag = encryption.encrypt_packet(conn._recv_seq, header, plain)
    if iv is not None:
        encryption._cipher._iv = iv
    return bytes(packet + tag)


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(
    ("kind", "body", "padding"),
    [
        ("data", bytes((94,)) + (3).to_bytes(4, "big") + b"abc", 3),
        ("data", bytes((94,)) + (3).to_bytes(4, "big") + b"abc", 0),
        ("window adjust", bytes((93,)) + (4096).to_bytes(4, "big"), 3),
    ],
    ids=["data-3", "data-0", "window_adjust-3"],
)
async def test_a_packet_with_too_little_padding_drops_the_link(
    options: TunnelOptions,
    echo: Target,
    cipher: str,
    kind: str,
    body: bytes,
    padding: int,
) -> None:
    """RFC 4253 §6: at least 4 bytes of padding; OpenSSH drops the connection otherwise
    ("Corrupted padlen"), and so does the in-place receive path, for a channel's data
    (opened in place) and its control packets (dispatched) alike: a protocol error, the
    link closed. No real gateway sends such a packet (sshd always pads by 4 or more), so
    the packet is crafted: sealed with the live link's receive keys for an open channel
    of it and handed to the connection's receive entry as if read from its socket."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    async with one_open_connection(options, echo) as (_, link, _, _):
        (channel,) = link.conn._channels
        conn = link.conn  # at a packet boundary (nothing of a packet held back)
        await wait_until(lambda: not conn._inpbuf and asyncssh_patches.TAIL not in vars(conn))
        plain = bytes((padding,)) + body[:1] + channel.to_bytes(4, "big") + body[1:]
        conn.data_received(sealed_by_the_gateway(conn, plain + bytes(padding)))
        await asyncio.wait_for(asyncio.shield(link.client.closed), 10)
    reason = link.client.lost_reason
    assert isinstance(reason, asyncssh.ProtocolError), (kind, reason)
    assert "padding" in reason.reason


def receive_queue(local_port: int) -> int:
    """Bytes waiting unread in the established loopback TCP socket on ``local_port``."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:  # noqa: SIM115
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port and fields[3] == "01":
            return int(fields[4].split(":")[1], 16)
    return 0


async def test_a_read_stops_at_the_packet_whose_session_closed_the_connection(
    options: TunnelOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aes128-gcm's run of data packets (``gcm_run``) goes on only while the connection
    is there, as the outer loop does: a session that closes the connection while one
    read's packets are delivered gets no packet after that. No real peer makes our
    sessions do that (a client's reset reaches them only when the loop turns), so a
    session here aborts the connection at the second packet of a read that holds several
    (the link's socket left unread until sshd queued 200 KiB in it; real sshd, a real
    download): without the check, the packets after it were delivered on a closed
    connection."""
    assert options.ssh_config is not None
    options.ssh_config.write_text("Host *\n  Ciphers aes128-gcm@openssh.com\n")
    seen = {"read": 0, "in_read": 0, "armed": False, "aborted": False, "after": 0}
    opened_read = asyncssh.connection.SSHConnection.data_received
    delivered = asyncssh_link._Channel.data_received

    def read(self: Any, data: bytes, datatype: Any = None) -> None:
        seen["read"], seen["in_read"] = len(data), 0
        opened_read(self, data, datatype)

    def deliver(self: Any, data: Any, datatype: Any) -> None:
        if seen["aborted"]:
            seen["after"] += len(data)
        delivered(self, data, datatype)
        if seen["armed"] and seen["read"] >= 160 * 1024:
            seen["in_read"] += 1
            if seen["in_read"] == 2:
                seen["armed"], seen["aborted"] = False, True
                self._conn.abort()

    monkeypatch.setattr(asyncssh.connection.SSHConnection, "data_received", read)
    monkeypatch.setattr(asyncssh_link._Channel, "data_received", deliver)
    payload = os.urandom(8 * 1024 * 1024)
    async with talking_target(payload) as forward, Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            await reader.readexactly(1 << 20)
            link.conn._transport.pause_reading()
            port = link.conn.get_extra_info("sockname")[1]
            await wait_until(lambda: receive_queue(port) >= 200 * 1024)
            seen["armed"] = True
            link.conn._transport.resume_reading()
            await wait_until(lambda: seen["aborted"])
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                async with asyncio.timeout(10):
                    await reader.readexactly(len(payload))
        finally:
            writer.close()
    assert seen["after"] == 0


def gateway_packets(
    conn: Any, channel: int, sizes: list[int], rng: random.Random
) -> tuple[bytes, bytes]:
    """Data packets of ``sizes`` for ``channel`` (a window adjust of 0 instead where a
    size is 0), with random padding, sealed as the gateway seals its next packets to
    ``conn``, and their data; the connection's sequence number and GCM IV are left as
    they were."""
    aead = conn._recv_encryption._cipher
    seq, iv = conn._recv_seq, getattr(aead, "_iv", None)
    wire = expected = b""
    for size in sizes:
        if not size:
            body = bytes((93,)) + channel.to_bytes(4, "big") + bytes(4)
        else:
            data = rng.randbytes(size)
            body = bytes((94,)) + channel.to_bytes(4, "big") + size.to_bytes(4, "big") + data
            expected += data
        block = conn._recv_blocksize
        padding = -(1 + len(body)) % block + block * rng.randrange(0, 254 // block)
        padding += block if padding < asyncssh_patches.MIN_PADDING else 0
        wire += sealed_by_the_gateway(conn, bytes((padding,)) + body + rng.randbytes(padding))
        conn._recv_seq += 1
        if iv is not None:
            asyncssh_patches._gcm_step_iv(aead)
    conn._recv_seq = seq
    if iv is not None:
        aead._iv = iv
    return wire, expected


def record_view_sources(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each piece of data handed to a tunnel channel is a view of, in order (the
    buffer a memoryview looks into; None for bytes)."""
    sources: list[Any] = []
    delivered = asyncssh_link._Channel.data_received

    def recording(self: Any, data: Any, datatype: Any) -> None:
        sources.append(data.obj if isinstance(data, memoryview) else None)
        delivered(self, data, datatype)

    monkeypatch.setattr(asyncssh_link._Channel, "data_received", recording)
    return sources


@contextlib.asynccontextmanager
async def idle_read_side(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, int, asyncio.StreamReader, asyncio.StreamWriter, list[Any]]]:
    """One open connection (only ``cipher`` offered) once its link's read side is idle
    (nothing buffered, no packet cut): the link's connection, the channel's number, the
    client's reader and writer, and the sources of the views handed on from then."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    sources = record_view_sources(monkeypatch)
    async with one_open_connection(options, echo) as (_, link, reader, writer):
        (channel,) = link.conn._channels
        conn = link.conn
        await wait_until(lambda: not conn._inpbuf and asyncssh_patches.TAIL not in vars(conn))
        yield conn, channel, reader, writer, sources


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_data_opened_in_the_read_buffer_is_what_asyncssh_opens(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs of data packets (``gcm_run``, ``chacha_run``) open a data packet in place,
    in the (writable) read buffer, and hand the channel a view of it; the twin: the same
    packets handed over as ``bytes`` (read-only: each opened into a plaintext of its
    own). Sizes from 1 byte to beyond 32 KiB, paddings from 4 to 254 bytes, a window
    adjust between them (handled apart: dispatched), sealed with the live link's receive
    keys for its open channel (seeded, so a failure repeats): the client gets the same
    bytes both ways, every data packet of the writable read went as a view of that
    read's buffer, none of the read-only one's did. The connection's receive sequence
    number (and GCM IV) are put back afterwards: sshd's next packets still open."""
    rng = random.Random(18)
    async with idle_read_side(options, echo, cipher, monkeypatch) as opened:
        conn, channel, reader, writer, sources = opened
        aead = conn._recv_encryption._cipher
        for kind in (bytearray, bytes):
            seq, iv = conn._recv_seq, getattr(aead, "_iv", None)
            # 700 and 1100: chacha20's packets either side of CHACHA_SHORT, any padding
            sizes = [1, 5, 6, 100, 0, 700, 1100, 4096, 4097, 32 * 1024, 33000, 77]
            wire, expected = gateway_packets(conn, channel, sizes, rng)
            sources.clear()
            buffer = kind(wire)
            conn.data_received(buffer)
            assert await reader.readexactly(len(expected)) == expected
            assert conn._recv_seq == (seq + len(sizes)) & 0xFFFFFFFF
            in_buffer = [source is buffer for source in sources]
            assert in_buffer == [kind is bytearray] * (len(sizes) - 1), kind
            conn._recv_seq = seq  # sshd's next packet has the number (and IV) it had
            if iv is not None:
                aead._iv = iv
        writer.write(b"still up\n")  # sshd's packets still open after the injected ones
        assert await reader.readexactly(9) == b"still up\n"


@pytest.mark.parametrize("library", ["libsodium", "cryptography"])
@pytest.mark.parametrize("size", [100, 2000])
async def test_a_chacha_packet_with_a_bad_tag_is_refused_before_anything_is_written(
    options: TunnelOptions,
    echo: Target,
    library: str,
    size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chacha20-poly1305 data packet with one bit of its tag wrong, short (its key and
    body opened in one call, its tag checked by libsodium called in line, or by
    cryptography) or long (CHACHA_SHORT): the in-place run refuses it before writing
    anything into the read buffer, nothing reaches the channel's session, and asyncssh's
    own path fails the tag (its MAC error): the link is dropped."""
    lib = poly1305.sodium() if library == "libsodium" else None
    if library == "libsodium" and lib is None:
        pytest.skip("libsodium (Debian: libsodium23) is not on this system")
    assert asyncssh_patches.CHACHA_SHORT + 4 <= poly1305.SHORT  # the in-line call's bound
    rng = random.Random(size)
    async with idle_read_side(options, echo, CIPHERS[1], monkeypatch) as opened:
        conn, channel, _, _, sources = opened
        monkeypatch.setattr(poly1305, "_lib", lib)  # after the connection's want()
        wire, _ = gateway_packets(conn, channel, [size], rng)
        assert (len(wire) - 4 - asyncssh_patches.MAC_LEN <= asyncssh_patches.CHACHA_SHORT) == (
            size < asyncssh_patches.CHACHA_SHORT
        )
        bad = bytearray(wire)
        bad[-1] ^= 1
        came = bytes(bad)
        sources.clear()
        conn.data_received(bad)
        assert bytes(bad) == came
        assert sources == []
        await wait_until(lambda: conn._transport is None)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_reads_in_one_turn_hand_their_data_over_before_the_next(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libuv reads a socket up to 32 times in one turn of the loop, each read into the
    same buffer, whose data the runs hand over as views of it: each read's data must be
    written (or copied) before the next read, even where the channel held data for the
    turn from before (a paused channel's data that asyncssh let go of); and a packet cut
    by the end of a read is kept in the buffer, moved to its start, and opened there
    whole with the next read. Two reads are made by hand here (the link's own socket
    idle, the packets sealed with its receive keys), the first ending inside a 32 KiB
    packet, without the loop turning between them: the client gets every byte in
    order, and every data packet, the cut one too, went as a view of the read buffer."""
    rng = random.Random(8)
    async with idle_read_side(options, echo, cipher, monkeypatch) as opened:
        conn, channel, reader, writer, sources = opened
        protocol = conn._transport.get_protocol()
        assert isinstance(protocol, _BufferedReads)
        aead = conn._recv_encryption._cipher
        seq, iv = conn._recv_seq, getattr(aead, "_iv", None)
        sizes = [32 * 1024, 1000, 32 * 1024, 32 * 1024, 5]
        wire, expected = gateway_packets(conn, channel, sizes, rng)
        session = conn._channels[channel]._session
        session.held = []  # data written earlier in this turn: the rest held for it
        sources.clear()
        cut = 32 * 1024 + 1100 + 20 * 1024  # inside the third packet
        for part in (wire[:cut], wire[cut:]):
            buffer = protocol.get_buffer(-1)
            buffer[: len(part)] = part
            protocol.buffer_updated(len(part))
        assert await reader.readexactly(len(expected)) == expected
        assert sources == [protocol.view.obj] * len(sizes)
        conn._recv_seq = seq  # sshd's next packet has the number (and IV) it had
        if iv is not None:
            aead._iv = iv
        writer.write(b"still up\n")
        assert await reader.readexactly(9) == b"still up\n"


async def test_gcm_opens_in_place_only_where_asyncssh_is_served_the_plaintext(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An asyncssh whose ``GCMEncryption`` the opened-once patch does not know (here: its
    ``decrypt_packet`` put back without it): AES-GCM packets are not opened in the read
    buffer, so a global request's reply (sshd's answer to a keepalive), which asyncssh
    opens itself, still opens and the link carries on. Opened in place regardless,
    asyncssh is handed plaintext, fails its tag and drops the link."""
    assert options.ssh_config is not None
    options.ssh_config.write_text("Host *\n  Ciphers aes128-gcm@openssh.com\n")
    unserved = inspect.getclosurevars(GCMEncryption.decrypt_packet).nonlocals["gcm_packet"]
    assert not getattr(unserved, "opened_once", False)
    monkeypatch.setattr(GCMEncryption, "decrypt_packet", unserved)
    monkeypatch.setattr(asyncssh_patches, "OPENS_INTO", asyncssh_patches.OPENS_INTO)
    asyncssh_patches._gcm_opened_in_place_only_where_served()
    assert not asyncssh_patches.OPENS_INTO
    async with one_open_connection(options, echo) as (_, link, reader, writer):
        await asyncio.wait_for(link.conn._make_global_request(b"keepalive@openssh.com"), 10)
        writer.write(b"still up\n")
        assert await reader.readexactly(9) == b"still up\n"


async def test_the_last_bytes_of_a_burst_arrive_while_nothing_follows(
    options: TunnelOptions, echo: Target
) -> None:
    """Bursts echoed back on one connection that stays open, each read back whole before
    the next is sent: the last bytes of each come down with nothing after them on the
    link, so anything that held received bytes back until more came (a read mark such as
    SO_RCVLOWAT above what the framing proves is coming) would leave the read waiting for
    ever (it would fail at the bound below, not by a measured time)."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            for size in (3 * 1024 * 1024 + 7, 200 * 1024 + 1, 70 * 1024, 1):
                burst = os.urandom(size)
                writer.write(burst)
                await writer.drain()
                assert await asyncio.wait_for(reader.readexactly(size), 60) == burst
        finally:
            writer.close()
