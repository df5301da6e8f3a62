"""Carried patches to asyncssh (2.14 to 2.x, the range pyproject.toml allows).

Each patch says beside it why it is carried, checks that the asyncssh internals it uses
exist (otherwise it leaves asyncssh alone) and marks what it installed so that tests
(tests/tunnel/test_tunnel_bulk.py, against the real sshd) can assert it is in place on
the installed asyncssh. :func:`install` applies them all, once; importing
:mod:`tunnel.backends.asyncssh_link` calls it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tunnel.sshlib  # noqa: F401 (asyncssh is first imported there, cheaply)

__all__ = ["FEED_WHOLE_MAX", "GCM_TAG_LEN", "install"]


def _keep_held_eof() -> None:
    """Carried patch (asyncssh 2.14 and later, checked against the installed 2.x): an EOF
    that asyncssh holds back (the session's reading paused, or the channel still starting)
    is lost when CLOSE arrives before it is delivered: ``SSHChannel._process_close``
    overwrites the ``eof_pending`` state with ``close_pending``, so ``eof_received`` never
    runs. OpenSSH sends EOF before CLOSE whenever the target's side ended (even on a reset),
    so the target's orderly end looked cut (a reset for a complete reply). The wrapper tells
    the session, through an optional ``eof_held()``, before asyncssh forgets it; the data
    still buffered is delivered before ``connection_lost`` as before."""
    from asyncssh.channel import SSHChannel  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.constants import MSG_CHANNEL_CLOSE  # noqa: PLC0415

    handlers = SSHChannel._packet_handlers
    original = handlers[MSG_CHANNEL_CLOSE]
    if getattr(original, "keeps_held_eof", False):
        return

    def process_close(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        if self._recv_state == "eof_pending":
            held = getattr(self._session, "eof_held", None)
            if held is not None:
                held()
        original(self, pkttype, pktid, packet)

    process_close.keeps_held_eof = True  # type: ignore[attr-defined]
    handlers[MSG_CHANNEL_CLOSE] = process_close


def _feed_by_packet() -> None:
    """Carried patch (asyncssh 2.14 to 2.x, the range pyproject.toml allows; checked by
    tests/tunnel/test_tunnel_bulk.py against sshd): asyncssh keeps its input in one
    ``bytes`` (``SSHConnection._inpbuf``): each read is appended, and every packet taken
    off its front leaves the *rest* copied into a new ``bytes`` twice (header, then body).
    A 256 KiB read of eight 32 KiB packets copied about 2 MiB of remainders: memmove was
    8-12 % of the daemon's CPU in a bulk download (py-spy, bench/results/profiles/).
    Handing asyncssh each read one piece at a time, exactly what its current step needs
    (the first cipher block, then the rest of that packet), leaves no remainder to copy;
    its own parser, decryption and error handling run unchanged. Where asyncssh waits for
    anything else (the version line, a packet handled in a task) the read goes in whole,
    as before. Without the attributes it relies on, the patch leaves asyncssh alone."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)

    original: Any = SSHConnection.data_received
    if getattr(original, "feeds_by_packet", False):
        return
    header_step = SSHConnection._recv_pkthdr
    body_step = SSHConnection._recv_packet

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        end = len(data)
        if end <= FEED_WHOLE_MAX:
            original(self, data, datatype)
            return
        view = memoryview(data)
        pos = 0
        while pos < end and self._transport is not None:
            step = getattr(self._recv_handler, "__func__", None)
            have = len(self._inpbuf)
            if step is header_step:
                need = self._recv_blocksize - have
            elif step is body_step:
                need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize - have
            else:
                need = end - pos
            piece = view[pos : pos + max(need, 1)]
            pos += len(piece)
            original(self, piece, datatype)

    data_received.feeds_by_packet = True  # type: ignore[attr-defined]
    if all(hasattr(SSHConnection, name) for name in ("_recv_pkthdr", "_recv_packet", "_recv_data")):
        SSHConnection.data_received = data_received  # type: ignore[method-assign]


FEED_WHOLE_MAX = 8 * 1024
"""Reads up to this size go to asyncssh whole (a few small packets: a reply, a window
adjust): their remainders are small, and one call costs less than one per piece."""


def _gcm_fewer_copies() -> None:
    """Carried patch (asyncssh 2.x's AES-GCM shim, ``GCMEncryption``/``GCMCipher``; the
    range pyproject.toml allows): each data packet was copied twice where once does.
    Receiving, asyncssh joined the packet's two parts, then joined the tag on: one join
    here. Sending, it cut the tag off the sealed packet (a copy) and then put the header
    in front (another): one copy here, through a memoryview. Same inputs, same outputs
    (a tag mismatch still returns None, so asyncssh still raises its MAC error), the IV
    still stepped after every packet. callgrind over a bulk download counted memcpy at
    half of the daemon's instructions in this path (seven copies of every byte)."""
    from asyncssh.crypto.cipher import GCMCipher  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.encryption import GCMEncryption  # noqa: PLC0415
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    if getattr(GCMEncryption.decrypt_packet, "fewer_copies", False):
        return
    if not all(hasattr(GCMCipher, name) for name in ("_update_iv", "encrypt_and_sign")):
        return

    def decrypt_packet(
        self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        cipher = self._cipher
        sealed = b"".join((memoryview(first)[header_len:], rest, mac))
        try:
            plain: bytes | None = AESGCM(cipher._key).decrypt(
                cipher._iv, sealed, first[:header_len]
            )
        except InvalidTag:
            plain = None
        cipher._update_iv()
        return plain

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = memoryview(AESGCM(self._key).encrypt(self._iv, data, header))
        self._update_iv()
        return header + sealed[:-GCM_TAG_LEN], bytes(sealed[-GCM_TAG_LEN:])

    decrypt_packet.fewer_copies = True  # type: ignore[attr-defined]
    GCMEncryption.decrypt_packet = decrypt_packet  # type: ignore[method-assign]
    GCMCipher.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]


GCM_TAG_LEN = 16
"""RFC 5647 §7.3: AES-GCM's authentication tag."""


def _data_packets_joined_once() -> None:
    """Carried patch (asyncssh 2.x ``SSHConnection.send_packet``; the range pyproject.toml
    allows): a channel data packet was put together with four copies of its data
    (``Byte(type) + b"".join(args)``, then ``Byte(padlen) + payload + padding``); here
    with one ``join``. Only for ``MSG_CHANNEL_DATA`` once the connection is in its steady
    state: encrypted, authenticated, no compression, no key exchange due or running.
    Everything else (and the chaff before the packet, :mod:`tunnel.backends.chaff`) goes
    through asyncssh's own ``send_packet`` as before; the steps kept are asyncssh's, in
    its order: padding to the block size (at least 4 bytes, RFC 4253 §6), encryption
    under the sequence number, the sequence and rekey byte counts, and the packet log
    (asyncssh writes it at debug level 3 only: below that the payload is not built)."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.logging import SSHLogger  # noqa: PLC0415

    original: Any = SSHConnection.send_packet
    if getattr(original, "joins_once", False):
        return
    wanted = (
        "_send_encryption",
        "_compressor",
        "_kex_complete",
        "_auth_complete",
        "_rekey_bytes",
        "_rekey_bytes_sent",
        "_rekey_seconds",
        "_rekey_time",
        "_send_seq",
        "_send_blocksize",
        "_send_enchdrlen",
    )
    probe = SSHConnection.__init__.__code__.co_names
    if not all(name in probe for name in wanted) or not hasattr(SSHConnection, "_send"):
        return
    urandom = os.urandom
    monotonic = time.monotonic

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        encryption = self._send_encryption
        if (
            pkttype != MSG_CHANNEL_DATA
            or encryption is None
            or self._compressor is not None
            or not (self._kex_complete and self._auth_complete)
            or self._rekey_bytes_sent >= self._rekey_bytes
            or (self._rekey_seconds and monotonic() >= self._rekey_time)
        ):
            original(self, pkttype, *args, handler=handler)
            return
        self.send_packet(MSG_IGNORE, EMPTY_STRING)  # asyncssh's chaff (dropped where needless)
        length = 1 + sum(len(arg) for arg in args)
        padlen = -(self._send_enchdrlen + length) % self._send_blocksize
        if padlen < 4:
            padlen += self._send_blocksize
        packet = b"".join((bytes((padlen, pkttype)), *args, urandom(padlen)))
        pktlen = len(packet)
        seq = self._send_seq
        packet, mac = encryption.encrypt_packet(seq, pktlen.to_bytes(4, "big"), packet)
        self._send(packet + mac)
        self._send_seq = (seq + 1) & 0xFFFFFFFF
        self._rekey_bytes_sent += pktlen
        if getattr(SSHLogger, "_debug_level", 3) >= 3:  # asyncssh's packet log is on
            payload = bytes((pkttype,)) + b"".join(args)
            (handler or self).log_sent_packet(pkttype, seq, payload)

    send_packet.joins_once = True  # type: ignore[attr-defined]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]


MSG_IGNORE = 2
MSG_CHANNEL_DATA = 94
"""RFC 4254 §5.2."""
EMPTY_STRING = b"\0\0\0\0"


def install() -> None:
    """Apply every carried patch (each at most once)."""
    _keep_held_eof()
    _feed_by_packet()
    _gcm_fewer_copies()
    _data_packets_joined_once()
