"""The openssh backend's byte counts read from the kernel (tunnel.backends.openssh.tcpinfo),
on real loopback TCP connections: the count skips ``SIOCOUTQ`` when ``TCP_INFO`` shows
nothing queued, and is then the same as with it (the general path, ``ask_queue``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tunnel.backends.openssh import tcpinfo
from tunnel.backends.openssh.tcpinfo import tcp_traffic

from ..peers import wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TCP_INFO")


@contextlib.contextmanager
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, the peer's): a loopback TCP connection with small buffers on the peer."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.listen()
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    with ours, peer:
        yield ours, peer


@pytest.fixture
def ioctls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The SIOCOUTQ questions tcp_traffic asks (the real call, counted)."""
    asked: list[int] = []
    real = fcntl.ioctl

    def ioctl(fd: int, request: int, arg: Any) -> Any:
        asked.append(request)
        return real(fd, request, arg)

    monkeypatch.setattr(tcpinfo.fcntl, "ioctl", ioctl)
    return asked


def acknowledged(sock: socket.socket) -> bool:
    """No segment of ours unacknowledged (``tcpi_unacked``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, tcpinfo.TCP_INFO, tcpinfo.TCP_INFO_LEN)
    return tcpinfo.TCP_INFO_U32.unpack_from(info, tcpinfo.TCP_INFO_UNACKED_AT)[0] == 0


def both(sock: socket.socket) -> tuple[object, object]:
    return tcp_traffic(sock), tcp_traffic(sock, ask_queue=True)


def test_nothing_queued_is_counted_without_the_ioctl(ioctls: list[int]) -> None:
    with pair() as (ours, peer):
        ours.sendall(b"x" * 1000)
        assert peer.recv(4096) == b"x" * 1000
        peer.sendall(b"y" * 300)
        assert ours.recv(4096) == b"y" * 300
        wait_for(lambda: acknowledged(ours), "all acknowledged")
        assert tcp_traffic(ours) == (300, 1000)
        assert ioctls == []
        assert tcp_traffic(ours, ask_queue=True) == (300, 1000)
        assert ioctls == [tcpinfo.SIOCOUTQ]


def fill(ours: socket.socket) -> int:
    """Write until the peer, which does not read, stops taking bytes: what was written."""
    ours.setblocking(False)
    written = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            written += ours.send(b"z" * 65536)
    return written


def test_queued_bytes_count_as_written_as_with_the_ioctl(ioctls: list[int]) -> None:
    with pair() as (ours, _peer):
        written = fill(ours)
        fast, general = both(ours)
        assert fast == general == (0, written)
        assert len(ioctls) == 2  # both asked: TCP_INFO showed bytes queued


def test_queued_bytes_and_our_fin_as_with_the_ioctl(ioctls: list[int]) -> None:
    with pair() as (ours, _peer):
        written = fill(ours)
        ours.shutdown(socket.SHUT_WR)
        fast, general = both(ours)
        assert fast == general == (0, written)


def test_after_the_peers_fin_as_with_the_ioctl(ioctls: list[int]) -> None:
    """CLOSE_WAIT, as a connection whose client closed first ends (the FIN not counted)."""
    with pair() as (ours, peer):
        peer.sendall(b"q" * 10)
        peer.shutdown(socket.SHUT_WR)
        assert ours.recv(100) == b"q" * 10
        ours.sendall(b"a" * 7)
        assert peer.recv(100) == b"a" * 7
        wait_for(lambda: acknowledged(ours), "all acknowledged")
        fast, general = both(ours)
        assert fast == general == (10, 7)
        assert len(ioctls) == 1  # only the general path asked


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, tcpinfo.TCP_INFO, tcpinfo.TCP_INFO_LEN)[0]


def test_untouched_until_a_byte_of_it_is_read() -> None:
    """What lets the openssh backend give back a flow whose master died: the client's
    bytes (and its FIN) still waiting, whatever copies of the socket came and went."""
    with pair() as (ours, peer):
        assert tcpinfo.untouched(ours)
        peer.sendall(b"abc")
        peer.shutdown(socket.SHUT_WR)
        wait_for(lambda: tcp_state(ours) == 8, "CLOSE_WAIT")  # the data came before it
        assert tcpinfo.untouched(ours)
        os.close(os.dup(ours.fileno()))  # a master's copy, closed as it dies
        assert tcpinfo.untouched(ours)
        assert ours.recv(1) == b"a"
        assert not tcpinfo.untouched(ours)


def test_not_untouched_once_written_to_or_reset() -> None:
    with pair() as (ours, peer):
        ours.sendall(b"x")
        assert not tcpinfo.untouched(ours)  # queued, then acknowledged
        wait_for(lambda: acknowledged(ours), "all acknowledged")
        assert not tcpinfo.untouched(ours)
    with pair() as (ours, peer):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        wait_for(lambda: tcp_state(ours) == tcpinfo.TCP_CLOSE, "the reset")
        assert not tcpinfo.untouched(ours)
