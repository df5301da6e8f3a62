"""Hand a socket to the ssh master in one system call: request, then the descriptor twice.

``MUX_C_NEW_STDIO_FWD`` is followed on the stream by the client socket passed twice, each
time with one byte (OpenSSH ``mm_send_fd``/``mm_receive_fd``, which takes exactly one
descriptor per message). Sent as three ``send`` calls, each wakes the master, which reads
the request, finds no descriptor yet and blocks in ``poll`` until the next arrives: three
wake-ups and context switches on the hot path of every connection. Linux ``sendmmsg(2)``
queues all three messages in one call (each stays its own message, so the master still
reads them one by one); it is called through ctypes because Python does not wrap it.
Elsewhere, or if libc lacks it, the three sends are made one after the other.
"""

from __future__ import annotations

import ctypes
import functools
import os
import socket
import sys

from tunnel.libc import libc

REQUEST_MAX = 1024
"""Largest request sent in the one call (a mux request with a 255-byte host is < 300)."""


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


class _CMsgOneFd(ctypes.Structure):
    """``struct cmsghdr`` carrying one ``int``, padded to ``CMSG_SPACE(sizeof(int))``."""

    _fields_ = (
        ("cmsg_len", ctypes.c_size_t),
        ("cmsg_level", ctypes.c_int),
        ("cmsg_type", ctypes.c_int),
        ("fd", ctypes.c_int),
        ("pad", ctypes.c_int),
    )


_CMSG_LEN_ONE_FD = _CMsgOneFd.fd.offset + ctypes.sizeof(ctypes.c_int)


class _Batch:
    """Preallocated ``mmsghdr[3]``: the request, then one NUL byte with ``fd``, twice."""

    def __init__(self, sendmmsg: ctypes._CFuncPtr) -> None:  # type: ignore[name-defined]
        self.sendmmsg = sendmmsg
        self.request = ctypes.create_string_buffer(REQUEST_MAX)
        self.nul = ctypes.create_string_buffer(1)
        self.iovs = (_IoVec * 3)()
        self.cmsgs = (_CMsgOneFd * 2)()
        self.msgs = (_MMsgHdr * 3)()
        self.iovs[0].iov_base = ctypes.addressof(self.request)
        for i in (1, 2):
            self.iovs[i].iov_base = ctypes.addressof(self.nul)
            self.iovs[i].iov_len = 1
            cmsg = self.cmsgs[i - 1]
            cmsg.cmsg_len = _CMSG_LEN_ONE_FD
            cmsg.cmsg_level = socket.SOL_SOCKET
            cmsg.cmsg_type = socket.SCM_RIGHTS
            hdr = self.msgs[i].msg_hdr
            hdr.msg_control = ctypes.addressof(cmsg)
            hdr.msg_controllen = ctypes.sizeof(_CMsgOneFd)
        for i in range(3):
            self.msgs[i].msg_hdr.msg_iov = ctypes.addressof(self.iovs[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
        # Per connection, on its critical path: the fields are set through views made once
        # (indexing a ctypes array makes a new object each time), the request is copied by
        # the buffer protocol (ctypes.memmove is a foreign call), and the call's arguments
        # are plain ints and a pointer made once (no argtypes conversions).
        self.request_bytes = memoryview(self.request).cast("B")
        self.request_iov = self.iovs[0]
        self.request_msg = self.msgs[0]
        self.fd_cmsgs = (self.cmsgs[0], self.cmsgs[1])
        self.msgs_pointer = ctypes.c_void_p(ctypes.addressof(self.msgs))

    def send(self, sock: socket.socket, request: bytes, fd: int) -> int:
        """Messages fully queued (0–3); raises ``OSError`` from the call itself."""
        size = len(request)
        self.request_bytes[:size] = request
        self.request_iov.iov_len = size
        first, second = self.fd_cmsgs
        first.fd = second.fd = fd
        sent: int = self.sendmmsg(sock.fileno(), self.msgs_pointer, 3, socket.MSG_DONTWAIT)
        if sent < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        if sent and self.request_msg.msg_len != size:
            return 0
        return sent


@functools.cache
def _batch() -> _Batch | None:
    library = libc() if sys.platform.startswith("linux") else None
    sendmmsg = getattr(library, "sendmmsg", None)
    if sendmmsg is None:
        return None
    # No argtypes: the arguments are Python ints (int and unsigned int in C, the same in
    # the calling convention) and a c_void_p, passed without conversion calls.
    sendmmsg.argtypes = None
    sendmmsg.restype = ctypes.c_int
    return _Batch(sendmmsg)


def send_request_and_fd(sock: socket.socket, request: bytes, fd: int) -> None:
    """Queue ``request``, then ``fd`` twice (one NUL byte each), on the non-blocking ``sock``.

    Raises ``BlockingIOError`` if not everything could be queued at once: the caller must
    then close ``sock`` (the master treats the early end as a failed request, never waits).
    """
    batch = _batch() if len(request) <= REQUEST_MAX else None
    if batch is not None:
        if batch.send(sock, request, fd) != 3:
            raise BlockingIOError("mux socket full")
        return
    if sock.send(request) != len(request):
        raise BlockingIOError("mux socket full")
    socket.send_fds(sock, [b"\0"], [fd])
    socket.send_fds(sock, [b"\0"], [fd])
