"""Notify's datagrams (UDP 2154, "dartnotify-me"): the subset of AppleTalk's ATP it speaks.

Pure: bytes in, values out. From "Notify in detail" in
../../../../shared/reference/blitzmail-protocols.md::

    byte 0      0x03
    byte 1      packet type (top two bits: 0x40 request, 0x80 response, 0xC0 release)
                | flags (0x20 XO, 0x10 EOM, 0x08 STS, …)
    byte 2      bitmap / sequence
    bytes 3-4   transaction id (big-endian)
    bytes 5-8   four "user bytes": the command (NR02, NOTI, CLEN, or 0000 for a reset)
    bytes 9-    the data

A transaction is request → response (same header, type changed, no data) → release.

:class:`NotifyStep` is the one protocol-aware step the tunnel needs for Notify: the server
sends notices to the source address of a registration and to the port written *inside*
it, so a registration leaving through a relay must name the relay's socket instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

MARK: Final = 0x03
REQUEST: Final = 0x40
RESPONSE: Final = 0x80
RELEASE: Final = 0xC0
TYPE_MASK: Final = 0xC0
XO: Final = 0x20
EOM: Final = 0x10
STS: Final = 0x08

HEADER: Final = struct.Struct(">BBBH4s")

REGISTER: Final = b"NR02"
NOTICE: Final = b"NOTI"
CLEAR: Final = b"CLEN"
RESET: Final = b"\0\0\0\0"

SERVICE_MAIL: Final = 1
SERVICE_BULLETINS: Final = 2
SERVICE_TALK: Final = 3

MAX_NOTICE_TEXT: Final = 578
"""The most data one notice carries (the posting side's limit)."""

_NOTICE = struct.Struct(">III")
_CLEAR = struct.Struct(">II")
_PORT = struct.Struct(">H")
_COUNT = struct.Struct(">I")


class AtpError(ValueError):
    """A datagram that is not a well-formed Notify ATP packet."""


@dataclass(frozen=True, slots=True)
class AtpPacket:
    """One ATP packet. ``kind`` is REQUEST, RESPONSE or RELEASE; ``flags`` the low bits."""

    kind: int
    tid: int
    command: bytes
    data: bytes = b""
    flags: int = 0
    bitmap: int = 0

    def encode(self) -> bytes:
        head = HEADER.pack(MARK, self.kind | self.flags, self.bitmap, self.tid, self.command)
        return head + self.data

    @classmethod
    def parse(cls, datagram: bytes) -> AtpPacket:
        if len(datagram) < HEADER.size:
            raise AtpError(f"{len(datagram)} bytes: shorter than an ATP header")
        mark, control, bitmap, tid, command = HEADER.unpack_from(datagram)
        if mark != MARK:
            raise AtpError(f"first byte 0x{mark:02x}, not 0x03")
        kind = control & TYPE_MASK
        if kind == 0:
            raise AtpError("packet type 0 (neither request, response nor release)")
        return cls(kind, tid, command, datagram[HEADER.size :], control & ~TYPE_MASK, bitmap)

    def answer(self, kind: int) -> AtpPacket:
        """The response or release to this packet: same header, type changed, no data."""
        return AtpPacket(kind, self.tid, self.command, b"", self.flags, self.bitmap)


@dataclass(frozen=True, slots=True)
class Registration:
    """The data of an ``NR02`` request: who registers, the port for notices, for what."""

    uid: str
    """As the client writes it: ``#<uid>``."""
    port: int
    """Where notices go; 0 means "the source port of this registration"."""
    services: tuple[int, ...] = (SERVICE_MAIL,)

    def encode(self) -> bytes:
        uid = self.uid.encode("latin-1")
        return (
            bytes([len(uid)])
            + uid
            + _PORT.pack(self.port)
            + _COUNT.pack(len(self.services))
            + b"".join(_COUNT.pack(service) for service in self.services)
        )

    @classmethod
    def parse(cls, data: bytes) -> Registration:
        if not data:
            raise AtpError("NR02 without data")
        uid_end = 1 + data[0]
        fixed_end = uid_end + _PORT.size + _COUNT.size
        if len(data) < fixed_end:
            raise AtpError("NR02 data shorter than its user id, port and count")
        (port,) = _PORT.unpack_from(data, uid_end)
        (count,) = _COUNT.unpack_from(data, uid_end + _PORT.size)
        if len(data) < fixed_end + 4 * count:
            raise AtpError(f"NR02 claims {count} services but carries fewer")
        services = struct.unpack_from(f">{count}I", data, fixed_end)
        return cls(data[1:uid_end].decode("latin-1"), port, tuple(services))

    @property
    def uid_number(self) -> int | None:
        text = self.uid.removeprefix("#")
        return int(text) if text.isdigit() else None

    def with_port(self, port: int) -> Registration:
        return Registration(self.uid, port, self.services)


@dataclass(frozen=True, slots=True)
class Notice:
    """The data of a ``NOTI`` request: a new-mail (or bulletin, talk) notice."""

    service: int
    uid: int
    message_id: int
    text: bytes = b""

    def encode(self) -> bytes:
        return _NOTICE.pack(self.service, self.uid, self.message_id) + self.text

    @classmethod
    def parse(cls, data: bytes) -> Notice:
        if len(data) < _NOTICE.size:
            raise AtpError("NOTI data shorter than service, uid and message id")
        service, uid, message_id = _NOTICE.unpack_from(data)
        return cls(service, uid, message_id, data[_NOTICE.size :])


def clear_data(uid: int, service: int) -> bytes:
    """The data of a ``CLEN`` (clear sticky) request."""
    return _CLEAR.pack(uid, service)


def parse_clear(data: bytes) -> tuple[int, int]:
    if len(data) < _CLEAR.size:
        raise AtpError("CLEN data shorter than uid and service")
    uid, service = _CLEAR.unpack_from(data)
    return uid, service


@dataclass(frozen=True)
class NotifyStep:
    """The notify preset's step on one association (see :class:`tunnel.udp.DatagramStep`).

    Up: an ``NR02`` request gets the relay socket's port written inside, and the port the
    client asked for (its source port when it wrote 0) is where notices go locally. Down:
    the server's own requests and releases (``NOTI``, a reset, the release after a notice's
    response) are server-initiated and go to that notice port; responses go to the sender.
    Anything that is not ATP passes unchanged.
    """

    def upstream(self, datagram: bytes, relay_port: int) -> tuple[bytes, int | None]:
        """(the datagram to send, the local notice port it asks for, or None)."""
        try:
            packet = AtpPacket.parse(datagram)
            if packet.kind != REQUEST or packet.command != REGISTER:
                return datagram, None
            registration = Registration.parse(packet.data)
        except AtpError:
            return datagram, None
        rewritten = AtpPacket(
            packet.kind,
            packet.tid,
            packet.command,
            registration.with_port(relay_port).encode() + packet.data[len(registration.encode()) :],
            packet.flags,
            packet.bitmap,
        )
        return rewritten.encode(), registration.port

    def server_initiated(self, datagram: bytes) -> bool:
        try:
            return AtpPacket.parse(datagram).kind in (REQUEST, RELEASE)
        except AtpError:
            return False
