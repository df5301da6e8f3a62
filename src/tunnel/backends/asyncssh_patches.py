"""Carried patches to asyncssh (2.14 to 2.x, the range pyproject.toml allows).

Each patch says beside it why it is carried, checks that the asyncssh internals it uses
exist (otherwise it leaves asyncssh alone) and marks what it installed so that tests
(tests/tunnel/test_tunnel_bulk.py, against the real sshd) can assert it is in place on
the installed asyncssh. :func:`install` applies them all, once; importing
:mod:`tunnel.backends.asyncssh_link` calls it.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

import tunnel.sshlib  # noqa: F401 (asyncssh is first imported there, cheaply)
from tunnel.backends import cryptohmac, poly1305
from tunnel.libc import libc

__all__ = ["FEED_WHOLE_MAX", "GCM_TAG_LEN", "READ_BATCH", "install", "send_sealed", "write_parts"]


def _aesgcm_into(name: str = "encrypt_into") -> bool:
    """Whether cryptography's ``AESGCM`` has ``encrypt_into`` (or ``name``: 47 and later;
    pyproject.toml allows 43)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    return hasattr(AESGCM, name)


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
            plain: bytes | None = _aead(cipher).decrypt(cipher._iv, sealed, first[:header_len])
        except InvalidTag:
            plain = None
        cipher._update_iv()
        return plain

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = memoryview(_aead(self).encrypt(self._iv, data, header))
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
    internals = (
        "_send_encryption _compressor _kex_complete _auth_complete _rekey_bytes"
        " _rekey_bytes_sent _rekey_seconds _rekey_time _send_seq _send_blocksize _send_enchdrlen"
    )
    if not _has(SSHConnection, internals.split(), ["_send"]):
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


def _data_packets_opened_in_place() -> None:
    """Carried patch (asyncssh 2.x ``SSHConnection.data_received``; the range
    pyproject.toml allows; tests/tunnel/test_tunnel_bulk.py against sshd): a channel data
    packet in the steady state is opened where it lies in the socket read and its data
    handed to the channel as a view of the plaintext. asyncssh copies every byte about
    five times on the way (the read into its input buffer, the packet cut off it, the
    ciphertext joined to its tag, the payload cut out of the plaintext, the data cut out
    of the payload) and runs its packet object, dispatch and logging calls per packet
    (callgrind: half of the receive path's instructions were memcpy); here the one copy
    left is the decryption's output.

    Only where nothing else can differ: asyncssh at a packet boundary with nothing
    buffered, authenticated, no compression, debug level 1 (no packet log),
    AES-GCM or chacha20-poly1305 keys, and the packet a ``MSG_CHANNEL_DATA`` for an open
    channel within its window whose session says it takes views (``accepts_views``; the
    tunnel's channel side writes them straight to the client's socket). The data goes in
    through the channel's own ``_accept_data`` (window count, pause buffer, window adjust
    and delivery are asyncssh's), then the sequence number and the GCM IV step as asyncssh
    steps them. A channel's open confirmation or failure, window adjust, EOF or CLOSE
    goes to its handler as asyncssh's parser would hand it (``dispatch``: the same call
    with the same packet object; tests/tunnel/test_tunnel_direct.py compares the two),
    not through asyncssh's parser (its input buffer, slices and checks once more).
    A packet opened here with less than 4 bytes of padding (or no payload left) ends the
    connection with a protocol error, as OpenSSH's does (RFC 4253 §6). Any other packet
    (a key exchange, a request, extended data, a bad MAC or length) is handed to asyncssh
    whole, as one read, before anything after it: it opens it itself (again) and does
    what it always did. A packet cut by the end of a read is kept here until its last
    byte arrives (asyncssh is at a packet boundary meanwhile, as if that read had not yet
    come)."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.encryption import ChachaEncryption, GCMEncryption  # noqa: PLC0415
    from asyncssh.logging import SSHLogger  # noqa: PLC0415
    from asyncssh.misc import DisconnectError, ProtocolError  # noqa: PLC0415
    from asyncssh.packet import PacketDecodeError, SSHPacket  # noqa: PLC0415
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415

    fed: Any = SSHConnection.data_received
    if getattr(fed, "opens_in_place", False):
        return
    internals = (
        "_recv_encryption _decompressor _auth_complete _auth_final _recv_seq _inpbuf"
        " _recv_handler _channels _max_recv_pktlen _transport _recv_blocksize"
    )
    methods = "_recv_pkthdr _reset_keepalive_timer internal_error _force_close _send_disconnect"
    if not _has(SSHConnection, internals.split(), methods.split()):
        return
    from asyncssh.channel import SSHChannel  # noqa: PLC0415

    channel_internals = (
        "_recv_state _recv_window _encoding _session _recv_paused _init_recv_window _send_state"
    )
    if not _has(SSHChannel, channel_internals.split(), ["_accept_data", "_deliver_data"]):
        return
    header_step = SSHConnection._recv_pkthdr

    def gcm_length(self: Any, head: memoryview) -> int:
        return int.from_bytes(head, "big")

    def gcm_open(self: Any, packet: memoryview) -> bytes | None:
        cipher = self._recv_encryption._cipher
        try:
            plain: bytes = _aead(cipher).decrypt(cipher._iv, packet[4:], packet[:4])
        except InvalidTag:
            return None
        return plain

    def gcm_step(self: Any) -> None:
        _gcm_step_iv(self._recv_encryption._cipher)

    def chacha_length(self: Any, head: memoryview) -> int:
        stream = _chacha_streams(self._recv_encryption._cipher)[0]
        stream.reset_nonce(CHACHA_CTR_0 + self._recv_seq.to_bytes(8, "big"))
        return int.from_bytes(stream.update(head), "big")

    def chacha_open(self: Any, packet: memoryview) -> bytes | None:
        stream = _chacha_streams(self._recv_encryption._cipher)[1]
        stream.reset_nonce(CHACHA_CTR_0 + self._recv_seq.to_bytes(8, "big"))
        if len(packet) - 4 - MAC_LEN <= CHACHA_SHORT:  # key and body in one call
            both: bytes = stream.update(CHACHA_BLOCK_ZERO + packet[4:-MAC_LEN])
            if not poly1305.verify_tag(both[:32], packet[:-MAC_LEN], bytes(packet[-MAC_LEN:])):
                return None
            return both[64:]
        key = stream.update(CHACHA_BLOCK_ZERO)[:32]  # block 0: the Poly1305 key
        if not poly1305.verify_tag(key, packet[:-MAC_LEN], bytes(packet[-MAC_LEN:])):
            return None
        plain: bytes = stream.update(packet[4:-MAC_LEN])  # from block 1 on, as OpenSSH
        return plain

    def chacha_step(self: Any) -> None:
        pass

    suites: dict[type, Any] = {GCMEncryption: (gcm_length, gcm_open, gcm_step)}
    if _chacha_streams_reset():
        suites[ChachaEncryption] = (chacha_length, chacha_open, chacha_step)

    def suite(self: Any) -> Any:
        """The fast steps for this connection now, or None: asyncssh's own path."""
        if (
            self._inpbuf
            or getattr(self._recv_handler, "__func__", None) is not header_step
            or not self._auth_complete
            or self._decompressor is not None
            or SSHLogger._debug_level >= 2
        ):
            return None
        return suites.get(type(self._recv_encryption))

    def deliver(self: Any, plain: bytes, step: Any) -> bool:
        """Hand a channel data packet's data to its channel; False: not one for here."""
        end = len(plain) - plain[0]
        if plain[1] != MSG_CHANNEL_DATA or end < 10:
            return False
        chan = self._channels.get(int.from_bytes(plain[2:6], "big"))
        datalen = int.from_bytes(plain[6:10], "big")
        if (
            chan is None
            or 10 + datalen != end
            or chan._recv_state != "open"
            or datalen > chan._recv_window
            or chan._encoding is not None
            or not getattr(chan._session, "accepts_views", False)
        ):
            return False
        step(self)
        data = memoryview(plain)[10:end]
        window = chan._recv_window - datalen
        if (
            datalen
            and window >= chan._init_recv_window / 2
            and not chan._recv_paused
            and chan._send_state not in ("close_pending", "closed")
        ):
            # What asyncssh's _accept_data and _deliver_data do for such a packet (not
            # paused, no window adjust due, no encoding, not closing): count it and hand
            # it to the session; two calls fewer per packet. Else theirs.
            chan._recv_window = window
            chan._session.data_received(data, None)
        else:
            chan._accept_data(data)
        self._auth_final = True
        self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
        return True

    # asyncssh 2.14 ends a packet inline (no _finish_recv_packet): its own way there
    dispatches = _has(SSHConnection, [], ["_finish_recv_packet", "process_packet"])

    def dispatch(self: Any, plain: bytes, step: Any) -> bool:
        """Hand a channel's open confirmation or failure, window adjust, EOF or CLOSE to
        its handler as asyncssh's ``_recv_packet`` does after opening it (its packet
        object past the type and channel number, the same handler call, a decode error
        made its ``ProtocolError``, its ``_finish_recv_packet``); the packet log call is
        left out (written at debug level 3 only; :func:`suite` stops at 2). False: not
        one for here (asyncssh judges an unknown channel or a short packet)."""
        pkttype = plain[1]
        end = len(plain) - plain[0]
        if pkttype not in DISPATCHED or end < 6 or not dispatches:
            return False
        if end == CONTROL_LEN.get(pkttype) and self._compressor is None:
            chan = self._channels.get(int.from_bytes(plain[2:6], "big"))
            if getattr(chan, "takes_control", False):
                return control(self, chan, plain, pkttype, step)
        packet = SSHPacket(plain[1:end])
        packet.get_byte()
        handler = self
        if pkttype >= MSG_CHANNEL_FIRST:
            handler = self._channels.get(int.from_bytes(plain[2:6], "big"))
            if handler is None:
                return False
            packet.get_uint32()
        step(self)
        seq = self._recv_seq
        try:
            handler.process_packet(pkttype, seq, packet)
        except PacketDecodeError as exc:
            raise ProtocolError(str(exc)) from None
        self._finish_recv_packet(pkttype, seq)
        return True

    def control(self: Any, chan: Any, plain: bytes, pkttype: int, step: Any) -> bool:
        """:func:`dispatch` for a tunnel channel's open confirmation, EOF or CLOSE
        (``takes_control``: :class:`tunnel.backends.direct.DirectTCPChannel`) of exactly
        their length: the same handler calls without asyncssh's packet object and parser
        (the confirmation's numbers read here; an EOF or CLOSE carries nothing: the
        channel's ``eof_arrived`` or ``close_arrived``, asyncssh's handlers in fewer
        calls), then what ``_finish_recv_packet`` does for a
        channel message in the steady state. A confirmation with a maximum packet size
        of 0 goes asyncssh's way (its error)."""
        if pkttype == MSG_CHANNEL_OPEN_CONFIRMATION:
            send_chan = int.from_bytes(plain[6:10], "big")
            send_window = int.from_bytes(plain[10:14], "big")
            send_pktsize = int.from_bytes(plain[14:18], "big")
            if send_pktsize <= 0:
                return False
            step(self)
            seq = self._recv_seq
            chan.confirmed(send_chan, send_window, send_pktsize)
        else:
            step(self)
            seq = self._recv_seq
            try:
                if pkttype == MSG_CHANNEL_EOF:
                    chan.eof_arrived()
                else:
                    chan.close_arrived()
            except PacketDecodeError as exc:  # an asyncssh that reads more from them
                raise ProtocolError(str(exc)) from None
        self._auth_final = True
        if self._transport is not None:
            self._recv_seq = (seq + 1) & 0xFFFFFFFF
        return True

    def one(self: Any, packet: memoryview, steps: Any) -> None:
        """Open one whole packet here, or hand it to asyncssh as one read (with what it
        opened to: :func:`_opened_once`)."""
        handle(self, packet, steps[1](self, packet), steps)

    def handle(self: Any, packet: memoryview, plain: bytes | None, steps: Any) -> None:
        """What :func:`one` does with a packet once opened (``plain``; None: not opened)."""
        if plain is None:
            fed(self, packet)
            return
        if not MIN_PADDING <= plain[0] <= len(plain) - 2:
            # RFC 4253 §6: 4 bytes or more, and a payload (its type) left; OpenSSH drops
            # the connection too ("Corrupted padlen"). asyncssh itself does not check.
            raise ProtocolError(f"Invalid padding length {plain[0]}")
        if plain[1] == MSG_CHANNEL_DATA:
            if deliver(self, plain, steps[2]):
                return
        elif dispatch(self, plain, steps[2]):  # a channel's control packet, or not here
            return
        held = self._recv_encryption.__dict__
        held[OPENED] = (
            self._recv_seq,
            bytes(packet[: self._recv_blocksize]),
            bytes(packet[-MAC_LEN:]),
            bytes(plain),
            (len(packet) - 4 - MAC_LEN).to_bytes(4, "big"),
        )
        try:
            fed(self, packet)
        finally:
            held.pop(OPENED, None)

    def takes_view(chan: Any, window: int, declared: int, datalen: int) -> bool:
        """Whether a data packet of ``datalen`` bytes (``declared`` in it) for ``chan``,
        leaving it ``window`` (negative: no such channel or beyond its window), is one
        :func:`deliver` would count and hand to the session itself, as a view: no window
        adjust due, not paused, not closing, no encoding, a session that takes views."""
        return (
            window >= 0
            and declared == datalen
            and chan._recv_state == "open"
            and chan._encoding is None
            and window >= chan._init_recv_window / 2
            and not chan._recv_paused
            and chan._send_state not in ("close_pending", "closed")
            and getattr(chan._session, "accepts_views", False)
        )

    gcm_steps = suites[GCMEncryption]

    def gcm_run(self: Any, view: memoryview, pos: int, end: int) -> int:
        """AES-GCM packets from ``pos`` on, each whole in ``view``: the channel data that
        :func:`deliver` would count and hand to the session itself is handled here with
        its steps inlined (the same steps in the same order: IV, window, session, then
        the sequence number); any other packet is handled as :func:`one` handles it, and
        then the run ends (that packet may have changed the connection's state). Stops
        before a packet cut by the end of ``view``, with a length outside asyncssh's
        bounds or a bad tag: :func:`opened` takes those the general way. Returns where it
        stopped. (A micro benchmark of the receive path, 32 KiB packets: 0-1 us less per
        packet than :func:`one`'s ~12 us, most of which is memory traffic: the read's copy
        and the decryption; not visible in the bulk A/B: bench/notes/aesbulk.md.)

        In a writable read buffer (:class:`_BufferedReads`) and with cryptography's
        ``decrypt_into`` (47 and later), every packet is opened *in place*, its plaintext
        written over its ciphertext (OpenSSL decrypts in place where output and input
        start at the same byte; the length field and the tag are not written to), and
        channel data goes to the session as a view of the read buffer, as
        :func:`chacha_run` hands it (no new plaintext per packet: cryptography allocated
        and zero-filled one). Any other packet gets a copy of its plaintext, as its own,
        and the read buffer's bytes, now plaintext, go to :func:`handle` with it: asyncssh
        is served that plaintext for them (:func:`_opened_once`; it compares the first
        block and the tag it is handed with the ones held, both taken from those very
        bytes), never decrypting them itself. A bad tag leaves garbage where the
        ciphertext was: the general way then fails that packet's tag again (asyncssh's
        MAC error, the link dropped, as before)."""
        cipher = self._recv_encryption._cipher
        aead = _aead(cipher)
        decrypt = aead.decrypt
        into = OPENS_INTO and not view.readonly
        channels = self._channels
        most = self._max_recv_pktlen
        while end - pos >= 4 and self._transport is not None:  # a session may close it
            pktlen = int.from_bytes(view[pos : pos + 4], "big")
            total = 4 + pktlen + MAC_LEN
            if pktlen < MIN_PACKET_LEN or pktlen > most or end - pos < total:
                break
            iv = cipher._iv
            plain: Any
            try:
                if into:
                    plain = view[pos + 4 : pos + total - MAC_LEN]
                    aead.decrypt_into(iv, view[pos + 4 : pos + total], view[pos : pos + 4], plain)
                else:
                    plain = decrypt(iv, view[pos + 4 : pos + total], view[pos : pos + 4])
            except InvalidTag:
                break
            stop = len(plain) - plain[0]
            if plain[1] == MSG_CHANNEL_DATA and plain[0] >= 4 and stop > 10:
                chan = channels.get(int.from_bytes(plain[2:6], "big"))
                datalen = stop - 10
                window = chan._recv_window - datalen if chan is not None else -1
                if takes_view(chan, window, int.from_bytes(plain[6:10], "big"), datalen):
                    fixed, counter = GCM_IV.unpack(iv)
                    cipher._iv = GCM_IV.pack(fixed, (counter + 1) & 0xFFFFFFFFFFFFFFFF)
                    chan._recv_window = window
                    chan._session.data_received(memoryview(plain)[10:stop], None)
                    self._auth_final = True
                    self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
                    pos += total
                    continue
            if into:
                plain = bytes(plain)  # its own: asyncssh may keep it (a paused channel)
            handle(self, view[pos : pos + total], plain, gcm_steps)
            return pos + total
        return pos

    chacha_steps = suites.get(ChachaEncryption)

    def chacha_run(self: Any, view: memoryview, pos: int, end: int) -> int:
        """chacha20-poly1305 packets from ``pos`` on, each whole in ``view``, as
        :func:`gcm_run` takes AES-GCM's; a channel data packet that :func:`deliver` would
        count and hand to the session itself has its data decrypted *in place*, over its
        ciphertext in the read buffer (``update_into``), and handed over as a view of it:
        no new plaintext per packet, no pass over the padding. That is sound because the
        tag is checked first, over the ciphertext (OpenSSH's order), and the buffer is
        the connection's own read buffer (writable; :class:`_BufferedReads`), which the
        session lets go of before the next read (``accepts_views``: written to the
        client's socket, what it does not take copied). The packet's first 10 bytes
        (padding length, type, channel, data length) are decrypted apart first; any
        packet that is not such a data packet gets a plaintext of its own as before
        (:func:`chacha_open`'s) and is handled as :func:`one` handles it, ciphertext
        untouched, and the run ends. A short packet (:data:`CHACHA_SHORT`) is decrypted
        whole, with its key block, in one call, into a plaintext of its own, before its
        tag is checked (nothing of it is used or written before the check): a data
        packet's data is then copied over its ciphertext and handed over as a view of the
        read buffer all the same. Stops before a packet cut by the end of ``view``,
        with a length outside asyncssh's bounds or a bad tag (:func:`opened` takes those
        the general way). Returns where it stopped."""
        if view.readonly:  # a transport that reads into bytes: the general path
            return pos
        cipher = self._recv_encryption._cipher
        head, stream, _ = cipher.__dict__.get(CHACHA_STREAMS) or _chacha_streams(cipher)
        channels = self._channels
        most = self._max_recv_pktlen
        verify = poly1305.verify_tag
        sodium = poly1305._lib  # libsodium, or None
        while end - pos >= 4 and self._transport is not None:  # a session may close it
            nonce = CHACHA_CTR_0 + self._recv_seq.to_bytes(8, "big")
            head.reset_nonce(nonce)
            pktlen = int.from_bytes(head.update(view[pos : pos + 4]), "big")
            total = 4 + pktlen + MAC_LEN
            if pktlen < MIN_PACKET_LEN or pktlen > most or end - pos < total:
                break
            stream.reset_nonce(nonce)
            tagged = pos + total - MAC_LEN
            whole: bytes | None = None
            tag = bytes(view[tagged : pos + total])
            if pktlen <= CHACHA_SHORT:  # key and body in one call (nothing written yet)
                whole = stream.update(CHACHA_BLOCK_ZERO + view[pos + 4 : tagged])
                key = whole[:32]
                first = whole[64:74]
                if sodium is None:
                    good = verify(key, view[pos:tagged], tag)
                else:  # verify_tag's libsodium call (32-byte key, 16-byte tag, short input)
                    size = poly1305._length(tagged - pos)  # an int where it may be
                    good = not sodium.crypto_onetimeauth_poly1305_verify(
                        tag, bytes(view[pos:tagged]), size, key
                    )
            else:
                key = stream.update(CHACHA_BLOCK_ZERO)[:32]  # block 0: the Poly1305 key
                good = verify(key, view[pos:tagged], tag)
            if not good:
                break
            if whole is None:
                first = stream.update(view[pos + 4 : pos + 14])  # from block 1 on, as OpenSSH
            stop = pktlen - first[0]
            datalen = stop - 10
            if first[1] == MSG_CHANNEL_DATA and first[0] >= MIN_PADDING and datalen > 0:
                chan = channels.get(int.from_bytes(first[2:6], "big"))
                window = chan._recv_window - datalen if chan is not None else -1
                if takes_view(chan, window, int.from_bytes(first[6:10], "big"), datalen):
                    data = view[pos + 14 : pos + 4 + stop]
                    if whole is None:
                        stream.update_into(data, data)
                    else:  # the plaintext written where its ciphertext was, as update_into
                        data[:] = memoryview(whole)[74 : 64 + stop]
                    chan._recv_window = window
                    chan._session.data_received(data, None)
                    self._auth_final = True
                    self._recv_seq = (self._recv_seq + 1) & 0xFFFFFFFF
                    pos += total
                    continue
            plain = (
                whole[64:] if whole is not None else first + stream.update(view[pos + 14 : tagged])
            )
            handle(self, view[pos : pos + total], plain, chacha_steps)
            return pos + total
        return pos

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        try:
            opened(self, data, datatype)
        except DisconnectError as exc:  # as asyncssh's own parser ends (_recv_data)
            self._send_disconnect(exc.code, exc.reason, exc.lang)
            self._force_close(exc)
        except Exception:
            self.internal_error()

    def length(self: Any, steps: Any, head: memoryview) -> int | None:
        """The whole packet's length on the wire; None: asyncssh's to refuse."""
        pktlen: int = steps[0](self, head[:4])
        if pktlen < MIN_PACKET_LEN or pktlen > self._max_recv_pktlen:
            return None
        return 4 + pktlen + MAC_LEN

    def opened(self: Any, data: bytes, datatype: Any) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        tail: bytearray | None = self.__dict__.pop(TAIL, None)
        if tail is not None:  # a packet begun in an earlier read
            steps = suite(self)
            if steps is None:  # asyncssh cannot have moved since, but it knows best
                fed(self, bytes(tail), datatype)
            else:
                if len(tail) < 4:
                    pos = min(4 - len(tail), end)
                    tail += view[:pos]
                total = length(self, steps, memoryview(tail)) if len(tail) >= 4 else 0
                if total is None:
                    fed(self, bytes(tail), datatype)
                elif len(tail) + end - pos < max(total, 4):
                    tail += view[pos:]
                    self.__dict__[TAIL] = tail
                    self._reset_keepalive_timer()
                    return
                else:
                    take = total - len(tail)
                    tail += view[pos : pos + take]
                    pos += take
                    one(self, memoryview(tail), steps)
        while pos < end and self._transport is not None:
            steps = suite(self)
            if steps is None:
                fed(self, view[pos:], datatype)
                return
            if steps is gcm_steps:
                ran = gcm_run(self, view, pos, end)
                if ran > pos:
                    pos = ran
                    continue
            elif steps is chacha_steps:
                ran = chacha_run(self, view, pos, end)
                if ran > pos:
                    pos = ran
                    continue
            total = length(self, steps, view[pos:]) if end - pos >= 4 else 0
            if total is None:
                fed(self, view[pos:], datatype)
                return
            if end - pos < max(total, 4):
                keep = self.__dict__.get(KEEP)  # the read buffer's, during one of its reads
                if keep is None or not keep(pos, end, total):
                    self.__dict__[TAIL] = bytearray(view[pos:])
                break
            one(self, view[pos : pos + total], steps)
            pos += total
        if self._transport is not None:
            self._reset_keepalive_timer()

    data_received.opens_in_place = True  # type: ignore[attr-defined]
    data_received.feeds_by_packet = getattr(fed, "feeds_by_packet", False)  # type: ignore[attr-defined]
    SSHConnection.data_received = data_received  # type: ignore[method-assign]


def send_sealed(conn: Any, pkttype: int, *args: bytes) -> bool:
    """Seal and write one packet (``pkttype`` and its payload ``args``, joined) on asyncssh's
    connection ``conn`` in the steady state, as :func:`_data_packets_sealed_in_place`
    seals data packets (that patch puts its own in here); False: nothing sent, asyncssh's
    ``send_packet`` is the way (the patch is not in place, or not the steady state now).

    For a tunneled connection's packets other than its data (CHANNEL_OPEN, EOF, CLOSE,
    WINDOW_ADJUST: :mod:`tunnel.backends.direct`): through asyncssh each went through the
    chaff filter twice, its ``send_packet`` (the payload built with three copies, the
    ignore check, the packet log call) and its encryption object. The same bytes as
    asyncssh's for the same state (tests/tunnel/test_tunnel_direct.py compares them),
    asyncssh's sequence number and rekey byte count stepped as it steps them."""
    return False


def _data_packets_sealed_in_place() -> None:
    """Carried patch (asyncssh 2.x ``SSHChannel._flush_send_buf``; the range pyproject.toml
    allows; tests/tunnel/test_tunnel_bulk.py against sshd): a channel's data goes out as
    ``MSG_CHANNEL_DATA`` packets built with one join from a view of the channel's send
    buffer and sealed straight to the socket (one ``writelines`` of every packet's length,
    ciphertext and tag in a write or a flush: one ``writev`` with uvloop, where each
    packet was a write of its own). asyncssh copied each byte about six times on
    the way (the chunk cut off its buffer, ``String()``, the channel's and the
    connection's payload joins, the header put in front, the MAC put behind). A write
    that finds nothing buffered is sealed from the caller's bytes themselves, as far as
    the window goes; asyncssh copied all of it into its buffer first (only the rest
    is copied now).

    Only in the steady state, as :func:`_data_packets_joined_once`: encrypted with
    AES-GCM or chacha20-poly1305, authenticated, no compression, no key exchange due or
    running, debug level 1, and the connection's needless chaff dropped
    (:func:`tunnel.backends.chaff.drop_needless_chaff`: asyncssh would otherwise send an
    empty ignore before each packet). Window and packet size, the sequence number and the
    rekey byte count are asyncssh's and stepped as it steps them; the rest of a flush
    (extended data, the pause/resume of the writer, a pending EOF or close) is asyncssh's
    own ``_flush_send_buf``, called after."""
    from asyncssh.channel import SSHChannel  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.connection import SSHConnection  # noqa: PLC0415
    from asyncssh.encryption import ChachaEncryption, GCMEncryption  # noqa: PLC0415
    from asyncssh.logging import SSHLogger  # noqa: PLC0415
    from cryptography.hazmat.primitives.poly1305 import Poly1305  # noqa: PLC0415

    original: Any = SSHChannel._flush_send_buf
    write_original: Any = SSHChannel.write
    if getattr(original, "seals_in_place", False):
        return
    internals = (
        "_send_encryption _compressor _kex_complete _auth_complete _rekey_bytes"
        " _rekey_bytes_sent _rekey_seconds _rekey_time _send_seq _send_blocksize"
        " _send_enchdrlen _transport"
    )
    if not _has(SSHConnection, internals.split(), ["send_newkeys"]):
        return
    newkeys_original: Any = SSHConnection.send_newkeys
    channel_internals = (
        "_conn _send_buf _send_buf_len _send_window _send_pktsize _send_chan _send_state _encoding"
    )
    if not _has(SSHChannel, channel_internals.split(), ["_flush_send_buf", "write"]):
        return
    monotonic = time.monotonic
    padding = PADDING.take

    def gcm_seal(conn: Any, header: bytes, packet: bytes) -> tuple[Any, ...]:
        cipher = conn._send_encryption._cipher
        size = len(packet) + GCM_TAG_LEN
        arena: _Arena | None = conn.__dict__.get(SEALED_INTO)
        if arena is None or arena.pos + size > arena.size:
            sealed: Any = _aead(cipher).encrypt(cipher._iv, packet, header)
        else:
            pos = arena.pos
            sealed = arena.view[pos : pos + size]
            arena.pos = pos + size
            _aead(cipher).encrypt_into(cipher._iv, packet, header, sealed)
        _gcm_step_iv(cipher)
        return header, sealed

    def arena_for(conn: Any) -> None:
        """Before sealing a write's or a flush's packets: the connection's arena
        (:class:`_Arena`) is made if there is none (AES-GCM only), and is used from its
        start again if the transport holds nothing of what it was given (all of it on
        the wire: no part of the arena is referenced); otherwise the arena goes on after
        what it already gave out. Nothing else keeps a sealed part: write_parts hands
        them to the transport, which copies what it keeps (asyncio on 3.11) or counts
        the views it keeps in its write buffer size (uvloop; asyncio from 3.12)."""
        if not SEALS_INTO or type(conn._send_encryption) is not GCMEncryption:
            return
        arena: _Arena | None = conn.__dict__.get(SEALED_INTO)
        transport = conn._transport
        if arena is None:
            arena = conn.__dict__[SEALED_INTO] = _Arena()
        elif not transport.get_write_buffer_size() and not transport.is_closing():
            arena.pos = 0

    def chacha_seal(conn: Any, header: bytes, packet: bytes) -> tuple[bytes, ...]:
        cipher = conn._send_encryption._cipher
        head, stream, out = cipher.__dict__.get(CHACHA_STREAMS) or _chacha_streams(cipher)
        nonce = CHACHA_CTR_0 + conn._send_seq.to_bytes(8, "big")
        head.reset_nonce(nonce)
        header = head.update(header)
        stream.reset_nonce(nonce)
        if len(packet) <= CHACHA_SHORT:  # key and body in one call
            both = stream.update(CHACHA_BLOCK_ZERO + packet)
            sealed = header + both[64:]
            sodium = poly1305._lib  # libsodium, or None
            if sodium is None:
                return sealed, poly1305.generate_tag(both[:32], sealed, out)
            # generate_tag's libsodium call (a 32-byte key, a short input, the tag buffer)
            size = poly1305._length(len(sealed))  # an int where it may be
            sodium.crypto_onetimeauth_poly1305(out, sealed, size, both[:32])
            tag: bytes = out.raw
            return sealed, tag
        key = stream.update(CHACHA_BLOCK_ZERO)[:32]
        sealed = stream.update(packet)
        if len(sealed) > poly1305.SHORT:  # no join of a long packet: cryptography's tag
            mac = Poly1305(key)
            mac.update(header)
            mac.update(sealed)
            return header, sealed, mac.finalize()
        sealed = header + sealed
        return sealed, poly1305.generate_tag(key, sealed, out)

    seals: dict[type, Any] = {GCMEncryption: gcm_seal}
    if _chacha_streams_reset():
        seals[ChachaEncryption] = chacha_seal

    def steady_seal(conn: Any) -> Any:
        """The fast seal for ``conn``'s send keys as far as what holds for as long as they
        do (its transport, whose class writes whole parts; no compression; the chaff
        filter in place; a cipher sealed here), or None."""
        if (
            not (_WRITES_PARTS.get(type(conn._transport)) or writes_parts(conn._transport))
            or conn._compressor is not None
            or not getattr(conn.__dict__.get("send_packet"), "drops_chaff", False)
        ):
            return None
        return seals.get(type(conn._send_encryption))

    def sealer(conn: Any) -> Any:
        """The fast seal for this connection now, or None: asyncssh's own path.

        What :func:`steady_seal` judges is kept with the connection (:data:`SEALS_WITH`)
        for its send encryption object, once it says yes: asyncssh makes a new one, and
        sets its compressor beside it, at each NEWKEYS (``send_newkeys``: a rekey; the
        kept seal for the old one is dropped there, as asyncssh drops the old keys); the
        transport only ever goes (None, checked here each time); the chaff filter,
        once in place, stays (``drop_needless_chaff`` at the link's start). A no is not
        kept (the filter may come after). What moves is checked each time, as before:
        a key exchange running or not done, the rekey byte count and time, asyncssh's
        debug level. One such check per packet cost ~6k instructions, ~2.5k of them the
        part kept (callgrind; bench/notes/roundtrip.md session 10)."""
        if conn is None or conn._transport is None:
            return None
        encryption = conn._send_encryption
        kept = conn.__dict__.get(SEALS_WITH)
        if kept is None or kept[0] is not encryption:
            seal = steady_seal(conn)
            if seal is None:
                return None
            kept = conn.__dict__[SEALS_WITH] = (encryption, seal)
        if (
            not (conn._kex_complete and conn._auth_complete)
            or conn._rekey_bytes_sent >= conn._rekey_bytes
            or (conn._rekey_seconds and monotonic() >= conn._rekey_time)
            or SSHLogger._debug_level >= 2
        ):
            return None
        return kept[1]

    def seal_run(self: Any, conn: Any, seal: Any, data: Any, end: int, out: list[Any]) -> int:
        """Seal ``data[:end]`` as packets from its start, as far as the window, the
        packet size and the rekey byte count allow; their parts go on ``out`` (the
        caller writes them before anything else is sent: one ``writelines`` for all the
        packets of a flush or a write, one ``writev`` with uvloop). Returns how many
        bytes of ``data`` were sealed. What :func:`sealer` judged stays true through the
        run (nothing is written during it, and a run is at most one read of the client:
        a rekey due by time waits for the next run); the byte count is checked before
        each packet, as asyncssh checks it."""
        pos = 0
        pktsize = self._send_pktsize
        hdrlen = conn._send_enchdrlen
        block = conn._send_blocksize
        chan = bytes((MSG_CHANNEL_DATA,)) + self._send_chan.to_bytes(4, "big")
        with memoryview(data) as view:
            while pos < end and self._send_window and conn._rekey_bytes_sent < conn._rekey_bytes:
                size = min(end - pos, self._send_window, pktsize)
                # type, recipient channel, string length; then the data
                padlen = -(hdrlen + 9 + size) % block
                if padlen < MIN_PADDING:
                    padlen += block
                packet = b"".join(
                    (
                        bytes((padlen,)),
                        chan,
                        size.to_bytes(4, "big"),
                        view[pos : pos + size],
                        padding(padlen),
                    )
                )
                pktlen = len(packet)
                out += seal(conn, pktlen.to_bytes(4, "big"), packet)
                conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
                conn._rekey_bytes_sent += pktlen
                self._send_window -= size
                pos += size
        return pos

    def seal_packet(conn: Any, pkttype: int, *args: bytes) -> bool:
        """:func:`send_sealed` once this patch is in place."""
        seal = sealer(conn)
        if seal is None:
            return False
        length = 1 + sum(map(len, args))
        padlen = -(conn._send_enchdrlen + length) % conn._send_blocksize
        if padlen < 4:
            padlen += conn._send_blocksize
        packet = b"".join((bytes((padlen, pkttype)), *args, padding(padlen)))
        pktlen = len(packet)
        write_parts(conn._transport, seal(conn, pktlen.to_bytes(4, "big"), packet))
        conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
        conn._rekey_bytes_sent += pktlen
        return True

    def flush_send_buf(self: Any) -> None:
        conn = self._conn
        out: list[Any] = []
        if self._send_buf and self._send_window and sealer(conn) is not None:
            arena_for(conn)
        while self._send_buf and self._send_window and self._send_chan is not None:
            buf, datatype = self._send_buf[0]
            seal = sealer(conn)
            if datatype is not None or seal is None:
                break
            size = seal_run(self, conn, seal, buf, len(buf), out)
            if size == len(buf):
                del self._send_buf[0]
            else:
                del buf[:size]
            self._send_buf_len -= size
            if not size:
                break
        if out:
            write_parts(conn._transport, out)
        original(self)

    def write(self: Any, data: Any, datatype: Any = None) -> None:
        """Nothing buffered yet: seal what the window takes from ``data`` itself; only
        the rest goes into asyncssh's buffer (a copy of that part only)."""
        if (
            datatype is None
            and type(data) in (bytes, memoryview)  # a view: the tunnel's client read
            and data
            and not self._send_buf
            and self._send_state == "open"
            and self._encoding is None
            and self._send_chan is not None
        ):
            conn = self._conn
            end = len(data)
            out: list[Any] = []
            seal = sealer(conn)
            pos = 0
            if seal is not None:
                arena_for(conn)
                pos = seal_run(self, conn, seal, data, end, out)
            if pos:
                write_parts(conn._transport, out)
                if pos == end:
                    original(self)  # the writer's pause/resume, a pending EOF: asyncssh's
                    return
                data = data[pos:]
        write_original(self, data, datatype)

    def send_newkeys(self: Any, k: bytes, h: bytes) -> None:
        """asyncssh's, which replaces the send keys and drops the old ones; then the seal
        kept for those old keys (:data:`SEALS_WITH`) goes too, not at the next send."""
        try:
            newkeys_original(self, k, h)
        finally:
            kept = self.__dict__.get(SEALS_WITH)
            if kept is not None and kept[0] is not self._send_encryption:
                del self.__dict__[SEALS_WITH]

    flush_send_buf.seals_in_place = True  # type: ignore[attr-defined]
    # asyncssh's, which it ends in (direct.py checks that one for its lean end)
    flush_send_buf.__wrapped__ = original  # type: ignore[attr-defined]
    SSHChannel._flush_send_buf = flush_send_buf  # type: ignore[method-assign]
    SSHChannel.write = write  # type: ignore[method-assign]
    SSHConnection.send_newkeys = send_newkeys  # type: ignore[method-assign]
    global send_sealed  # noqa: PLW0603 (the entry point is this patch's, once installed)
    send_sealed = seal_packet


class _Arena:
    """One SSH connection's buffer that AES-GCM data packets are sealed into
    (``AESGCM.encrypt_into``), one after the other, instead of into a new ``bytes``
    per packet, which cryptography zero-fills before it seals into it (a 32 KiB memset
    and an allocation per packet up: ~3 % of the upload's CPU in perf). Used from
    its start again only when the connection's transport holds none of it
    (``arena_for`` in :func:`_data_packets_sealed_in_place`): a part still waiting
    to be written is never overwritten. When a packet does not fit in what is left,
    it is sealed into a new ``bytes`` as before. An anonymous mapping: its pages
    become resident only once written."""

    __slots__ = ("pos", "size", "view")

    def __init__(self) -> None:
        self.size = SEAL_ARENA
        self.view = memoryview(mmap.mmap(-1, SEAL_ARENA, flags=mmap.MAP_PRIVATE))
        self.pos = 0


SEAL_ARENA = 1024 * 1024 + 64 * 1024
"""Bytes of an :class:`_Arena`: one read of a client (at most 1 MiB,
:data:`tunnel.backends.asyncssh_link.CLIENT_READ`) sealed as 32 KiB packets, with their
headers, padding and tags."""
SEALS_WITH = "blitzdns_seals_with"
"""Where asyncssh's connection keeps its send encryption object and the seal
:func:`_data_packets_sealed_in_place`'s ``sealer`` judged for it."""
SEALED_INTO = "blitzdns_sealed_into"
"""Where asyncssh's connection keeps its :class:`_Arena`."""


class _Padding:
    """Random padding for the packets sealed in place, cut from one ``os.urandom``
    call per :data:`PADDING_POOL` bytes (a 32 KiB packet takes 4 to 19): asyncssh, and
    this path before, made a ``getrandom`` system call per packet (0.4 us; about 1 % of
    the upload's CPU). Each byte is handed out once; the padding stays random, as RFC
    4253 §6 asks (and as OpenSSH's ``arc4random`` buffer serves it)."""

    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = b""
        self.pos = 0
        if hasattr(os, "register_at_fork"):  # a forked child draws its own
            os.register_at_fork(after_in_child=self.drop)

    def drop(self) -> None:
        """Forget what is left of the pool (a new draw at the next take)."""
        self.pool = b""
        self.pos = 0

    def take(self, size: int) -> bytes:
        """``size`` random bytes not handed out before."""
        pos = self.pos
        if pos + size > len(self.pool):
            self.pool, pos = os.urandom(max(PADDING_POOL, size)), 0
        self.pos = pos + size
        return self.pool[pos : pos + size]


PADDING_POOL = 4096
"""Bytes of padding one ``os.urandom`` call gives (about 350 data packets' worth)."""
PADDING = _Padding()
"""The padding of every packet the tunnel seals: data packets, and a connection's
CHANNEL_OPEN, EOF, CLOSE and window adjusts (:func:`send_sealed`). Those drew their own
``os.urandom`` each, a ``getrandom`` system call between a client's accept and its
CHANNEL_OPEN leaving, the first step of the connection's round trip over the path
(bench/notes/path.md)."""


MSG_CHANNEL_OPEN_CONFIRMATION = 91
MSG_CHANNEL_EOF = 96
CONTROL_LEN = {MSG_CHANNEL_OPEN_CONFIRMATION: 18, MSG_CHANNEL_EOF: 6, 97: 6}
"""The payload length (type byte included) of a ``direct-tcpip`` open confirmation (RFC
4254 §5.1, §7.2: four uint32s, nothing channel-specific after them), an EOF and a CLOSE
(§5.3: the recipient channel only): what :func:`_data_packets_opened_in_place`'s
``control`` takes."""
DISPATCHED = frozenset({91, 92, 93, 96, 97})
"""RFC 4254 §5.1-5.3: CHANNEL_OPEN_CONFIRMATION, _OPEN_FAILURE, _WINDOW_ADJUST, _EOF and
_CLOSE, each handled at once by asyncssh (no task): the in-place path hands them over."""
MSG_CHANNEL_FIRST = 93
"""asyncssh's first packet type addressed to a channel (before: to the connection)."""
MAC_LEN = 16
"""The tag of both AEAD modes taken here (RFC 5647 §7.3; OpenSSH PROTOCOL.chacha20poly1305)."""
MIN_PADDING = 4
"""RFC 4253 §6: "There MUST be at least four bytes of padding"."""
MIN_PACKET_LEN = 12
"""The smallest packet length taken here (a block of 16 less the length field); asyncssh
judges anything shorter."""
TAIL = "blitzdns_packet_tail"
"""Where a connection keeps the start of a packet cut by the end of a read."""
CHACHA_CTR_0 = bytes(8)
"""OpenSSH's chacha20 nonce: a 64-bit block counter (here 0), then the sequence number."""
CHACHA_BLOCK_ZERO = bytes(64)
"""One ChaCha20 block: its key stream's first 32 bytes are the packet's Poly1305 key."""
CHACHA_SHORT = 1024
"""A chacha20-poly1305 packet up to this length (the length field's value) has its
Poly1305 key (block 0) and its body (from block 1 on) run through the ChaCha20 context
in one ``update``, of the zero block and the body joined: one call into cryptography
fewer per packet (each ~1.6k instructions, the join and the slices a few hundred at this
size; callgrind, bench/notes/roundtrip.md session 10). Longer packets keep their two
calls: the join would copy all of a bulk packet."""


def _opened_once() -> None:
    """Carried patch (asyncssh 2.x ``GCMEncryption`` and ``ChachaEncryption``:
    ``decrypt_header``/``decrypt_packet``; the range pyproject.toml allows;
    tests/tunnel/test_tunnel_bulk.py against sshd): a packet the in-place path
    (:func:`_data_packets_opened_in_place`) opened but does not deliver or dispatch itself
    (a key exchange message, a global or channel request, data for a channel that does not
    take views) was opened a second time by asyncssh: for chacha20-poly1305 a second
    Poly1305 check and two more ChaCha20 passes. Here asyncssh is handed the plaintext the
    in-place path verified for that very packet: same sequence number, same first block,
    same tag; given once, during the one call that hands asyncssh the packet (dropped
    after it), the GCM IV stepped as asyncssh steps it. Anything else is opened by
    asyncssh as before."""
    from asyncssh.encryption import ChachaEncryption, GCMEncryption  # noqa: PLC0415

    gcm_packet: Any = GCMEncryption.decrypt_packet
    if getattr(gcm_packet, "opened_once", False):
        return
    if not getattr(gcm_packet, "fewer_copies", False):  # the shim's IV step is known there
        return
    if not all(hasattr(cls, "decrypt_header") for cls in (GCMEncryption, ChachaEncryption)):
        return
    chacha_header: Any = ChachaEncryption.decrypt_header
    chacha_packet: Any = ChachaEncryption.decrypt_packet

    def gcm_decrypt_packet(
        self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        plain = _opened_before(self, seq, first, mac)
        if plain is None:
            return gcm_packet(self, seq, first, rest, header_len, mac)  # type: ignore[no-any-return]
        self._cipher._update_iv()
        return plain

    def chacha_decrypt_header(
        self: Any, seq: int, first_block: bytes, header_len: int
    ) -> tuple[bytes, bytes]:
        held = self.__dict__.get(OPENED)
        if held is not None and held[0] == seq and held[1] == first_block:
            return first_block, held[4]
        return chacha_header(self, seq, first_block, header_len)  # type: ignore[no-any-return]

    def chacha_decrypt_packet(
        self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        plain = _opened_before(self, seq, first, mac)
        if plain is None:
            return chacha_packet(self, seq, first, rest, header_len, mac)  # type: ignore[no-any-return]
        return plain

    gcm_decrypt_packet.opened_once = True  # type: ignore[attr-defined]
    gcm_decrypt_packet.fewer_copies = True  # type: ignore[attr-defined]
    GCMEncryption.decrypt_packet = gcm_decrypt_packet  # type: ignore[method-assign]
    ChachaEncryption.decrypt_header = chacha_decrypt_header  # type: ignore[method-assign]
    ChachaEncryption.decrypt_packet = chacha_decrypt_packet  # type: ignore[method-assign]


def _opened_before(encryption: Any, seq: int, first: bytes, mac: bytes) -> bytes | None:
    """The plaintext the in-place path opened for this packet, taken (once), or None."""
    held = encryption.__dict__.pop(OPENED, None)
    if held is None or held[0] != seq or held[1] != first or held[2] != mac:
        return None
    plain: bytes = held[3]
    return plain


OPENED = "blitzdns_opened"
"""Where the receiving encryption object holds a packet opened by the in-place path:
(sequence number, first block, tag, plaintext, clear length field)."""


def _read_into_one_buffer() -> None:
    """Carried patch (asyncssh 2.x ``SSHConnection.connection_made``; the range
    pyproject.toml allows; tests/tunnel/test_tunnel_bulk.py against sshd, on both loops):
    the SSH socket is read into one buffer per connection (:class:`_BufferedReads`,
    asyncio's ``BufferedProtocol``: ``recv_into``) instead of into a new ``bytes`` per
    read. uvloop read into its own buffer and then copied each read (up to 256 KiB) into
    ``bytes``: 14 % of the receive path's instructions (callgrind, bulk download).

    The connection's ``data_received`` gets a view of the buffer, valid during the call
    only. That holds for everything behind it: the in-place path
    (:func:`_data_packets_opened_in_place`, required here) copies a packet cut by the end
    of a read, decrypts into new plaintext and hands anything else to asyncssh, which
    appends it to its own input buffer (a copy). Only for a connection over a socket
    whose transport takes a new protocol; asyncssh remains the transport's protocol in
    everything else (EOF, loss, write flow control: forwarded as they come)."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)

    original: Any = SSHConnection.connection_made
    if getattr(original, "reads_into_buffer", False):
        return
    if not getattr(SSHConnection.data_received, "opens_in_place", False):
        return
    if not _has(SSHConnection, ["_transport"], ["connection_made", "data_received"]):
        return

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        original(self, transport)
        if (
            self._transport is not transport
            or transport.get_extra_info("socket") is None
            or not callable(getattr(transport, "set_protocol", None))
        ):
            return
        # Before reading starts (asyncio and uvloop call connection_made first): uvloop
        # picks its read callbacks then (the test says if reads stop reaching the buffer).
        transport.set_protocol(_BufferedReads(self))

    connection_made.reads_into_buffer = True  # type: ignore[attr-defined]
    SSHConnection.connection_made = connection_made  # type: ignore[method-assign]


class _BufferedReads(asyncio.BufferedProtocol):
    """The SSH socket's protocol: reads into one buffer, each handed to asyncssh's
    connection as a view; its other callbacks forwarded to the connection.

    A packet cut by the end of a read (most reads end inside one: a read of the loopback
    socket brings ~130 KB, four 32 KiB packets and a part) is kept at the start of the
    buffer (:meth:`keep`, asked by the in-place path) and the next read goes after it,
    so the whole packet is opened in the buffer like the others (``gcm_run``,
    ``chacha_run``). Before, its start was copied into a ``bytearray`` of its own,
    the rest appended (a copy and a reallocation), and the packet opened into a new
    plaintext the general way: about one packet in eight under callgrind."""

    __slots__ = ("ack", "after_big", "conn", "free", "kept", "moved", "received", "view")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.ack = quick_ack(conn._transport)
        self.after_big = False  # the last read was QUICK_ACK_BELOW or more (bulk)
        self.received = conn.data_received
        # Anonymous memory, resident only where reads have written (an idle link's few
        # pages); a bytearray is zeroed, all 256 KiB resident from the start.
        self.view = memoryview(mmap.mmap(-1, READ_BUFFER, flags=mmap.MAP_PRIVATE))
        self.free = self.view  # where the next read goes
        self.kept = 0  # bytes of a cut packet at the buffer's start (once moved)
        self.moved = -1  # where that cut packet starts before it is moved there

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.moved >= 0:
            # Moved only now, just before the read: the views of the last read's data
            # handed out are let go of by then (accepts_views), as the read itself needs.
            start, self.moved = self.moved, -1
            self.view[: self.kept] = self.view[start : start + self.kept]  # a memmove
            self.free = self.view[self.kept :]
        return self.free

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        batch: list[Any] = []
        setattr(conn, READ_BATCH, batch)
        conn.__dict__[KEEP] = self.keep
        size = self.kept + nbytes
        self.kept, self.free = 0, self.view
        small = nbytes < QUICK_ACK_BELOW
        # A download's tail: the small read that completes a packet a large read cut.
        # Only that one: a small read after a large one that starts afresh (the channel
        # open confirmation of a new connection after a download, minutes later) is a
        # reply sshd may hold the next one behind.
        if small and not (self.after_big and size != nbytes) and self.ack is not None:
            self.ack()  # before the read is handled: sshd may hold a reply for it
        self.after_big = not small
        try:
            self.received(self.view[:size])
        finally:
            conn.__dict__[KEEP] = None
            setattr(conn, READ_BATCH, None)
            for session in batch:
                session.release()

    def keep(self, pos: int, end: int, total: int) -> bool:
        """Keep the buffer's ``[pos:end]``, the start of a packet of ``total`` bytes (0:
        its length not yet read), for the next read to complete: moved to the buffer's
        start just before that read (:meth:`get_buffer`); False: it is larger than
        :data:`KEEP_MAX` (the caller keeps it its own way)."""
        if total > KEEP_MAX or end - pos > KEEP_MAX:
            return False
        self.kept, self.moved = end - pos, pos
        return True

    def data_received(self, data: bytes) -> None:  # a transport that reads into bytes
        self.received(data)

    def eof_received(self) -> bool | None:
        keep_open: bool | None = self.conn.eof_received()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


def _gcm_opened_in_place_only_where_served() -> None:
    """``gcm_run`` opens every whole packet of a read over its ciphertext, key exchange
    messages and global requests' replies too, and hands those to asyncssh as plaintext:
    asyncssh can take them only from :func:`_opened_once`. Where that patch is not in
    force (an asyncssh whose ``GCMEncryption`` internals it does not know, while the
    in-place path's checks pass), AES-GCM packets are opened into new bytes as before:
    else asyncssh would open plaintext, fail its tag and drop the link at the first
    keepalive reply or rekey. (chacha20-poly1305 leaves such packets' ciphertext as it is.)"""
    global OPENS_INTO  # noqa: PLW0603  (decided once, at install)
    from asyncssh.encryption import GCMEncryption  # noqa: PLC0415

    if not getattr(GCMEncryption.decrypt_packet, "opened_once", False):
        OPENS_INTO = False


READ_BUFFER = 256 * 1024
"""The most one read of the SSH socket takes (what uvloop and asyncio read at most)."""
KEEP_MAX = 64 * 1024
"""The largest cut packet :meth:`_BufferedReads.keep` keeps in the read buffer (two of
sshd's 32 KiB data packets: a read after it still takes up to 192 KiB)."""
KEEP = "blitzdns_keep"
"""Set on asyncssh's connection while one read of the SSH socket is processed: the read
buffer's :meth:`_BufferedReads.keep`. None or unset otherwise."""
SEALS_INTO = _aesgcm_into()
"""cryptography's ``AESGCM`` seals into a given buffer (47 and later)."""
OPENS_INTO = _aesgcm_into("decrypt_into")
"""cryptography's ``AESGCM`` opens into a given buffer (47 and later)."""
READ_BATCH = "blitzdns_read_batch"
"""Set on asyncssh's connection while one read of the SSH socket is processed: a list a
channel session that holds this read's data until the read is done puts itself on, to
have its ``release()`` called then (the tunnel's channel side: one write of every packet
of the read; ``ssh -L`` writes its channel buffer once per poll). None or unset
otherwise."""
QUICK_ACK_BELOW = 16 * 1024
"""A read of the SSH socket smaller than this (not bulk) sends its ACK at once
(:func:`quick_ack`)."""


def quick_ack(transport: asyncio.BaseTransport) -> functools.partial[object] | None:
    """A call that sets ``TCP_QUICKACK`` on ``transport``'s TCP socket (Linux): the
    :class:`_BufferedReads` of the SSH socket makes it after every read under
    :data:`QUICK_ACK_BELOW` but the one that completes a packet a larger read cut (a
    download's tail), before handling the read.
    None off Linux (Python 3.14 has ``socket.TCP_QUICKACK`` on Windows too) and where
    there is no such option, TCP socket or C library ``setsockopt`` (the reads go on as
    before, without it).

    Why: sshd runs Nagle on its socket toward us (it sets ``TCP_NODELAY`` only for a
    session channel; the tunnel, like ``ssh -N -L``, opens none), so while one small packet
    of its is unacknowledged it holds the next (another connection's reply, a window
    adjust) until our ACK comes. Linux decides that ACK when the segment arrives: at once
    when more than a full-size segment is unacknowledged (bulk), else by the delayed-ACK
    timer (40 ms) when the socket is in its interactive ("pingpong") mode, which it enters
    whenever it sends soon after receiving: any request/response link. Reading the segment
    does not send it either in that mode. So with several connections getting replies at
    once, the second reply waited 40 ms, in 20-70 % of the rounds (bench/notes/growth.md,
    "Session 11"; ``ssh -L`` the same). ``TCP_QUICKACK`` set after the read leaves pingpong
    mode and sends the pending ACK at once (``tcp_cleanup_rbuf``: the read emptied the
    queue of a small pushed segment); the kernel goes back to pingpong at our next send, so
    it is set again at every small read (about a microsecond: one system call). Large
    reads are bulk, acknowledged at arrival anyway: left to the kernel's own pace
    (bench/notes/aesbulk.md, session 10: ``TCP_QUICKACK`` 0 per read cost bulk CPU), and
    so is the small read that completes a packet a large read cut (a download's tail;
    already more than a segment to acknowledge at its arrival): quick ACKs on those made
    sshd cut its stream finer (bulk down, asyncio: 5.2k calls per GB, reads 15.7k -> 23.2k
    per GB, one loaded run; bench/notes/growth.md). A small read after a large one that
    completes nothing keeps its call, however long after: a new connection's channel open
    confirmation after a download is exactly the reply sshd would hold a greeting behind.
    A small reply cut over two small reads keeps both calls. Tails are told by the packet
    kept across reads, which only the in-place ciphers (AES-GCM, chacha20-poly1305) keep:
    with others a download's tail gets its call too (one system call per tail). A
    call through the C library on the socket's descriptor: nothing to own or close
    (reads end before the transport closes it); uvloop's socket object would make a new
    Python socket at each call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        sock = transport.get_extra_info("socket")
        option = getattr(socket, "TCP_QUICKACK", None)
        if sock is None or option is None or sock.type != socket.SOCK_STREAM:
            return None
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        setsockopt = getattr(libc(), "setsockopt", None)
        if setsockopt is None:
            return None
        one = ctypes.c_int(1)  # kept alive by its byref
        fd, level = sock.fileno(), socket.IPPROTO_TCP
        return functools.partial(
            setsockopt, fd, level, option, ctypes.byref(one), ctypes.sizeof(one)
        )
    except Exception:  # an optimisation: the link goes on without it
        return None


def _gcm_step_iv(cipher: Any) -> None:
    """Step the IV of asyncssh's ``GCMCipher`` ``cipher`` after a packet, as its
    ``_update_iv`` does (RFC 5647 §7.1: the 64-bit invocation counter after the 4-byte
    fixed field, plus one, modulo 2**64), in one unpack and one pack: 0.29 us against
    0.56 us, per data packet each way. tests/tunnel/test_tunnel_bulk.py compares the two."""
    fixed, counter = GCM_IV.unpack(cipher._iv)
    cipher._iv = GCM_IV.pack(fixed, (counter + 1) & 0xFFFFFFFFFFFFFFFF)


GCM_IV = struct.Struct(">4sQ")
"""RFC 5647 §7.1: AES-GCM's 12-byte IV, a fixed field and an invocation counter."""


def _aead(cipher: Any) -> Any:
    """The ``AESGCM`` of asyncssh's ``GCMCipher`` ``cipher``, made once per key (each
    packet made one: 2.7 us against 1.0 us for the seal of a small packet)."""
    made = cipher.__dict__.get(AEAD)
    if made is None or made[0] is not cipher._key:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

        made = cipher.__dict__[AEAD] = (cipher._key, AESGCM(cipher._key))
    return made[1]


def _chacha_streams(cipher: Any) -> tuple[Any, Any, Any]:
    """ChaCha20 streams under the header key and the main key of asyncssh's
    ``ChachaCipher`` ``cipher`` (a rekey makes a new one), made once and moved to each
    packet's nonce with ``reset_nonce``: building a context per use cost about 4 us here,
    a reset 0.7 us, and asyncssh built three per packet. Third: the cipher's buffer for
    its packets' Poly1305 tags (:func:`poly1305.tag_buffer`; a cipher object is one
    connection's, one direction's, used on that connection's loop only)."""
    made: tuple[Any, Any, Any] | None = cipher.__dict__.get(CHACHA_STREAMS)
    if made is None:
        from cryptography.hazmat.primitives.ciphers import Cipher  # noqa: PLC0415
        from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20  # noqa: PLC0415

        head, body = (
            Cipher(ChaCha20(key, bytes(16)), None).encryptor()
            for key in (cipher._adkey, cipher._key)
        )
        made = cipher.__dict__[CHACHA_STREAMS] = (head, body, poly1305.tag_buffer())
    return made


def _chacha_streams_reset() -> bool:
    """Whether cryptography's ChaCha20 contexts can be moved to a new nonce (43 and later;
    pyproject.toml asks for that): otherwise chacha20-poly1305 is left to asyncssh."""
    from cryptography.hazmat.primitives.ciphers import Cipher  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20  # noqa: PLC0415

    return hasattr(Cipher(ChaCha20(bytes(32), bytes(16)), None).encryptor(), "reset_nonce")


def _chacha_kept_streams() -> None:
    """Carried patch (asyncssh 2.x ``asyncssh.crypto.chacha.ChachaCipher``; the range
    pyproject.toml allows; tests/tunnel/test_tunnel_bulk.py compares it with asyncssh's own
    functions and runs it against sshd): every chacha20-poly1305 packet, each way, built
    three ChaCha20 contexts (the length's under the header key, the Poly1305 key's, the
    data's from block 1): about 12 us of a small packet's Python, the reason its round trip
    cost more than AES-GCM's. Here the two keys' contexts are made once per key
    (:func:`_chacha_streams`) and moved to the packet's nonce; the data continues the
    stream after the Poly1305 key's block 0, which is block 1 (asyncssh's counter 1,
    OpenSSH's PROTOCOL.chacha20poly1305). Same inputs, same outputs; a bad tag still
    returns None (asyncssh's MAC error follows). Every chacha20-poly1305 packet takes it:
    asyncssh's own path (key exchange, EOF, close, window adjust) and the in-place ones."""
    from asyncssh.crypto.chacha import ChachaCipher  # noqa: PLC0415 (only the patch needs it)

    if getattr(ChachaCipher.encrypt_and_sign, "kept_streams", False):
        return
    methods = ["encrypt_and_sign", "decrypt_header", "verify_and_decrypt"]
    if not _has(ChachaCipher, ["_key", "_adkey"], methods) or not _chacha_streams_reset():
        return

    def encrypt_and_sign(
        self: Any, header: bytes, data: bytes, nonce: bytes
    ) -> tuple[bytes, bytes]:
        head, body, out = _chacha_streams(self)
        nonce = CHACHA_CTR_0 + nonce
        head.reset_nonce(nonce)
        body.reset_nonce(nonce)
        if len(data) <= CHACHA_SHORT:  # key and body in one call
            both = body.update(CHACHA_BLOCK_ZERO + data)
            packet = head.update(header) + both[64:]
            return packet, poly1305.generate_tag(both[:32], packet, out)
        key = body.update(CHACHA_BLOCK_ZERO)[:32]
        packet = head.update(header) + body.update(data)
        return packet, poly1305.generate_tag(key, packet, out)

    def decrypt_header(self: Any, header: bytes, nonce: bytes) -> bytes:
        head = _chacha_streams(self)[0]
        head.reset_nonce(CHACHA_CTR_0 + nonce)
        clear: bytes = head.update(header)
        return clear

    def verify_and_decrypt(
        self: Any, header: bytes, data: bytes, nonce: bytes, tag: bytes
    ) -> bytes | None:
        body = _chacha_streams(self)[1]
        body.reset_nonce(CHACHA_CTR_0 + nonce)
        if len(data) <= CHACHA_SHORT:  # key and body in one call
            both: bytes = body.update(CHACHA_BLOCK_ZERO + data)
            if not poly1305.verify_tag(both[:32], header + data, tag):
                return None
            return both[64:]
        if not poly1305.verify_tag(body.update(CHACHA_BLOCK_ZERO)[:32], header + data, tag):
            return None
        clear: bytes = body.update(data)
        return clear

    encrypt_and_sign.kept_streams = True  # type: ignore[attr-defined]
    ChachaCipher.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]
    ChachaCipher.decrypt_header = decrypt_header  # type: ignore[method-assign]
    ChachaCipher.verify_and_decrypt = verify_and_decrypt  # type: ignore[method-assign]


AEAD = "blitzdns_aead"
"""Where asyncssh's GCM cipher object keeps its ``AESGCM`` (with the key it was made for)."""
CHACHA_STREAMS = "blitzdns_chacha_streams"
"""Where asyncssh's chacha20 cipher object keeps its two ChaCha20 contexts."""


_WRITES_PARTS: dict[type, bool] = {}
"""Per transport class: whether :func:`writes_parts` holds."""


def writes_parts(transport: Any) -> bool:
    """Whether ``transport`` is a whole write transport (``writelines``,
    ``get_write_buffer_size``, ``is_closing``), as the sealing paths and
    :func:`write_parts` use it. asyncssh's ProxyCommand tunnel (``_ProxyCommandTunnel``,
    a subprocess protocol standing in for the transport) has only ``write``: on it the
    packets go asyncssh's own way. Judged once per class."""
    kind = type(transport)
    whole = _WRITES_PARTS.get(kind)
    if whole is None:
        names = ("writelines", "get_write_buffer_size", "is_closing")
        whole = _WRITES_PARTS[kind] = all(callable(getattr(kind, name, None)) for name in names)
    return whole


def write_parts(transport: Any, parts: Sequence[Any]) -> None:
    """Write ``parts`` (bytes-like objects) to ``transport`` in order, as its
    ``writelines`` does, without joining them first where that would copy all of them.

    asyncio's socket transport (Python 3.11; 3.12 sends a list with ``sendmsg``) inherits
    ``WriteTransport.writelines``, which joins the parts into one ``bytes``: one more copy
    of every byte of the tunnel's bulk data, both ways (the sealed packets up, the
    packets of one SSH read down), where uvloop writes the list with one ``writev``.
    Here, on such a transport with nothing waiting in its buffer (so the order holds)
    and not closing (so its socket is still open and still its own), the parts go out
    with one ``os.writev`` on its socket, and only what the socket did not take goes to
    the transport (which keeps it in its buffer: a copy either way, as before). Any error
    of the socket is left to the transport: the parts go to its own ``writelines``
    (nothing was sent), which reports it as it always did. Every other transport, and a
    single part, go to the transport's own ``writelines``/``write``."""
    fd = transport.__dict__.get(WRITEV_FD) if hasattr(transport, "__dict__") else -1
    if fd is None:
        fd = transport.__dict__[WRITEV_FD] = _writev_fd(transport)
    if fd < 0 or len(parts) < 2 or len(parts) > WRITEV_MAX:
        transport.writelines(parts)
        return
    if transport.is_closing() or transport.get_write_buffer_size():
        transport.writelines(parts)
        return
    try:
        sent = os.writev(fd, parts)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.writelines(parts)
        return
    for index, part in enumerate(parts):
        size = len(part)
        if sent < size:
            transport.writelines([memoryview(part)[sent:], *parts[index + 1 :]])
            return
        sent -= size


def _writev_fd(transport: Any) -> int:
    """The descriptor :func:`write_parts` may ``writev`` to for ``transport``, or -1."""
    sock = transport.get_extra_info("socket")
    if (
        sock is None
        or not hasattr(os, "writev")
        or type(transport).writelines is not asyncio.WriteTransport.writelines
        or not callable(getattr(transport, "get_write_buffer_size", None))
    ):
        return -1
    fd: int = sock.fileno()
    return fd


WRITEV_FD = "blitzdns_writev_fd"
"""Where a transport keeps the descriptor :func:`write_parts` writes to (-1: none)."""
WRITEV_MAX = 512
"""The most parts one ``writev`` takes here (IOV_MAX is 1024 on Linux)."""


def _has(cls: Any, internals: list[str], methods: list[str]) -> bool:
    """Whether asyncssh's ``cls`` still has what a patch uses: the ``methods``, and the
    ``internals`` (attributes) set by its ``__init__`` or used by those methods."""
    if not all(hasattr(cls, name) for name in methods):
        return False
    names = set(cls.__init__.__code__.co_names)
    for name in methods:
        names.update(getattr(getattr(cls, name), "__code__", cls.__init__.__code__).co_names)
    return all(name in names for name in internals)


def install() -> None:
    """Apply every carried patch (each at most once)."""
    _keep_held_eof()
    _feed_by_packet()
    _gcm_fewer_copies()
    _chacha_kept_streams()
    _data_packets_joined_once()
    _data_packets_opened_in_place()
    _opened_once()
    _gcm_opened_in_place_only_where_served()
    _data_packets_sealed_in_place()
    _read_into_one_buffer()
    cryptohmac.install()
