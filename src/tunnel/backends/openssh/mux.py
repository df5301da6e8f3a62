"""The OpenSSH multiplexing protocol, pure: packets built and parsed, no sockets.

``PROTOCOL.mux`` §1 (hello), §3 (``MUX_C_NEW_STDIO_FWD``, what ``ssh -W host:port``
sends), §4 (``MUX_C_ALIVE_CHECK``); integers are uint32, strings SSH ``string``s
(RFC 4251 §5), every packet prefixed with its uint32 length.
"""

from __future__ import annotations

import functools
import struct

from tunnel.errors import TunnelError

MUX_VERSION = 4
MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_OPEN_FWD = 0x10000006
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_ALIVE = 0x80000005
MUX_S_SESSION_OPENED = 0x80000006
MUX_FWD_REMOTE = 2
PORT_STREAMLOCAL = 0xFFFFFFFE
"""``-2`` as uint32: the "host" is a Unix socket path (OpenSSH ``misc.h``)."""
MUX_PACKET_MAX = 256 * 1024
"""Largest mux reply we accept (OpenSSH's own limit is 256 KiB)."""


class MuxError(TunnelError):
    """The master refused or broke a mux request (the one connection is closed)."""


# --- pure ----------------------------------------------------------------------------------


def mux_string(value: bytes | str) -> bytes:
    """An SSH ``string`` (RFC 4251 §5): uint32 length, then the bytes."""
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def mux_packet(*fields: int | bytes | str) -> bytes:
    """One mux packet: uint32 length, then the fields (ints as uint32, bytes/str as strings)."""
    body = b"".join(struct.pack(">I", f) if isinstance(f, int) else mux_string(f) for f in fields)
    return struct.pack(">I", len(body)) + body


HELLO = mux_packet(MUX_MSG_HELLO, MUX_VERSION)
"""Our ``MUX_MSG_HELLO`` (no extensions), the first packet on every mux connection."""


_HEAD = struct.Struct(">III")
"""Packet length, type, request id: the head of a request whose rest is fixed."""


@functools.lru_cache(maxsize=256)
def _stdio_fwd_rest(host: str, port: int) -> bytes:
    return mux_string(b"") + mux_string(host) + struct.pack(">I", port)


def stdio_fwd_packet(request_id: int, host: str, port: int) -> bytes:
    """``MUX_C_NEW_STDIO_FWD``: reserved string, connect host (string), port (uint32, as
    mux.c sends it; PROTOCOL.mux says string but the code is authoritative). The part
    after the request id is built once per target (one per connection otherwise)."""
    rest = _stdio_fwd_rest(host, port)
    return _HEAD.pack(8 + len(rest), MUX_C_NEW_STDIO_FWD, request_id) + rest


def probe_packet(request_id: int) -> bytes:
    """``MUX_C_OPEN_FWD`` (PROTOCOL.mux §5) of a remote Unix-socket forward that cannot be
    set up: a sign-of-life request for the *gateway*, which ``MUX_C_ALIVE_CHECK`` is not
    (that one only asks the master process).

    The master sends it on as a ``streamlocal-forward@openssh.com`` global request with
    want-reply and answers the mux client only when the gateway's reply comes: failure,
    since no socket can be bound under ``/dev/null`` (or because the gateway does not allow
    such forwards). Any answer proves the gateway alive, and nothing is left listening. The
    path is new each time: the master answers a forward it already holds without asking.
    """
    path = f"/dev/null/blitzdns-probe-{request_id}"
    return mux_packet(
        MUX_C_OPEN_FWD, request_id, MUX_FWD_REMOTE, path, PORT_STREAMLOCAL, path, PORT_STREAMLOCAL
    )


def alive_packet(request_id: int) -> bytes:
    return mux_packet(MUX_C_ALIVE_CHECK, request_id)


def parse_reply(body: bytes) -> tuple[int, int, bytes]:
    """``(type, first uint32 field, rest)`` of a mux packet body; :class:`MuxError` if short."""
    if len(body) < 8:
        raise MuxError(f"short mux packet ({len(body)} bytes)")
    kind, first = struct.unpack_from(">II", body)
    return kind, first, body[8:]


def check_hello(body: bytes | None) -> None:
    """The master's ``MUX_MSG_HELLO`` (PROTOCOL.mux §1), version 4; else :class:`MuxError`."""
    if body is None:
        raise MuxError("master closed the control connection before its hello")
    kind, version, _ = parse_reply(body)
    if kind != MUX_MSG_HELLO or version != MUX_VERSION:
        raise MuxError(f"master spoke mux {kind:#x} version {version}, not hello v4")


def check_opened(body: bytes | None, request_id: int) -> None:
    """``MUX_S_SESSION_OPENED`` for ``request_id``; else :class:`MuxError` with the reason."""
    if body is None:
        raise MuxError("master closed the control connection")
    kind, reply_id, rest = parse_reply(body)
    if kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
        raise MuxError(f"master refused the forward: {reply_reason(rest)}")
    if kind != MUX_S_SESSION_OPENED or reply_id != request_id:
        raise MuxError(f"unexpected mux reply {kind:#x} to request {request_id}")


def reply_reason(rest: bytes) -> str:
    """The ``string reason`` of ``MUX_S_FAILURE`` / ``MUX_S_PERMISSION_DENIED``."""
    if len(rest) < 4:
        return "no reason given"
    (length,) = struct.unpack_from(">I", rest)
    return rest[4 : 4 + length].decode(errors="replace") or "no reason given"
