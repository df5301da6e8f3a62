"""Bytes carried on a TCP socket, read from the kernel (Linux ``TCP_INFO``, ``SIOCOUTQ``).

With the openssh backend the bytes never pass through this process: they are counted from
our copy of each client socket.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys

TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_INFO_LEN = 136
"""Through ``tcpi_bytes_received`` (Linux 4.2+): what the counts need."""
TCP_INFO_ASKED = 148
"""Through ``tcpi_notsent_bytes`` (Linux 4.6+), asked for when the kernel has it."""
TCP_INFO_U32 = struct.Struct("=I")
TCP_INFO_UNACKED_AT = 24
"""``tcpi_unacked``: segments sent and not yet acknowledged."""
TCP_INFO_NOTSENT_AT = 144
"""``tcpi_notsent_bytes``: bytes written and not yet sent."""
TCP_INFO_BYTES_AT = 120
TCP_INFO_BYTES = struct.Struct("=QQ")
"""``tcpi_bytes_acked``, ``tcpi_bytes_received`` in Linux ``struct tcp_info``."""
TCP_FIN_RECEIVED = frozenset({6, 8, 9, 11})
"""``tcpi_state`` after the peer's FIN: TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING."""
TCP_FIN_SENT = frozenset({4, 5, 6, 9, 11})
"""``tcpi_state`` after our FIN: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, LAST_ACK, CLOSING."""
TCP_CLOSE = 7
SIOCOUTQ = 0x5411
"""Linux: bytes in a TCP socket's send queue, not yet acknowledged (= ``TIOCOUTQ``)."""


def tcp_traffic(sock: socket.socket, *, ask_queue: bool = False) -> tuple[int, int] | None:
    """``(bytes received from the peer, bytes written to it)`` of a TCP socket, from the
    kernel: ``tcpi_bytes_received`` and ``tcpi_bytes_acked`` of ``TCP_INFO`` (Linux 4.2+)
    plus what is still queued unacknowledged (``SIOCOUTQ``), so data the peer has not yet
    acknowledged counts too. A FIN takes a sequence number, which these counters include:
    it is taken off. After a reset (state CLOSE) what is still queued will never be
    delivered and is not counted; whether a FIN came first is unknown then, so the count
    received may be one too many. ``None`` where that is not available.

    ``SIOCOUTQ`` is asked only when ``TCP_INFO`` says something is queued (a segment
    unacknowledged or bytes not yet sent; Linux 4.6+ tells both), or with ``ask_queue``:
    at a connection's usual end everything was acknowledged, and the ``ioctl`` is one
    system call more per connection."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_ASKED)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < TCP_INFO_LEN:
        return None
    acked, received = TCP_INFO_BYTES.unpack_from(info, TCP_INFO_BYTES_AT)
    state = info[0]
    received -= state in TCP_FIN_RECEIVED
    sent = acked
    if state != TCP_CLOSE:
        queued = 0
        if (
            ask_queue
            or len(info) < TCP_INFO_ASKED
            or TCP_INFO_U32.unpack_from(info, TCP_INFO_UNACKED_AT)[0]
            or TCP_INFO_U32.unpack_from(info, TCP_INFO_NOTSENT_AT)[0]
        ):
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
            except (OSError, ValueError):
                return None
            queued = int.from_bytes(answer, sys.byteorder)
        sent += queued - (state in TCP_FIN_SENT)
    return int(received), int(sent)


SIOCINQ = 0x541B
"""Linux: bytes received and not yet read from a TCP socket (= ``FIONREAD``)."""


def untouched(sock: socket.socket) -> bool:
    """Whether no one read a byte from this TCP socket or wrote one to it: every byte
    received (``tcpi_bytes_received``, less a FIN) still waits unread (``SIOCINQ``), none
    was acknowledged (``tcpi_bytes_acked``) or waits to be (``SIOCOUTQ``). False where
    the kernel cannot tell, and after a reset. What proves that a master that got the
    socket and died left the client's stream whole, for another to carry."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN)
        unread = int.from_bytes(fcntl.ioctl(sock.fileno(), SIOCINQ, b"\0\0\0\0"), sys.byteorder)
        queued = int.from_bytes(fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"), sys.byteorder)
    except (OSError, AttributeError, ValueError):
        return False
    if len(info) < TCP_INFO_LEN or info[0] == TCP_CLOSE:
        return False
    acked, received = TCP_INFO_BYTES.unpack_from(info, TCP_INFO_BYTES_AT)
    received -= info[0] in TCP_FIN_RECEIVED
    return acked == 0 and queued == 0 and unread == received
