"""``asyncssh_patches.write_parts``: a list of parts written to a transport in order, on
asyncio's socket transport with one ``writev`` instead of its join (a copy of every
byte), on real socket pairs."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from tunnel.backends.asyncssh_patches import WRITEV_FD, write_parts


async def _pair() -> tuple[asyncio.Transport, socket.socket]:
    """A transport on one end of a socket pair whose send buffer is small, the other end
    (not read until the test says) returned as a plain socket."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, ours)
    theirs.setblocking(False)
    return transport, theirs


async def _read_all(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    async with asyncio.timeout(30):  # a guard against a stall, not a measure
        while len(got) < size:
            chunk = await loop.sock_recv(sock, 1 << 20)
            if not chunk:
                break
            got += chunk
    return bytes(got)


def _parts(count: int, size: int) -> list[Any]:
    """Bytes and views, as the tunnel writes them (headers, sealed packets, plaintexts)."""
    parts: list[Any] = []
    for index in range(count):
        block = os.urandom(size)
        parts += [index.to_bytes(4, "big"), memoryview(block)[3:] if index % 2 else block]
    return parts


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_parts_arrive_in_order_past_a_full_socket(
    monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """1 MiB in parts to a peer that reads nothing at first: the socket takes part (on
    asyncio with one ``writev``: its ``writelines``, which joins, gets only what the
    socket did not take), the transport keeps the rest, a second list waits behind it;
    every byte arrives, in order. Without the ``writev``, asyncio's join-and-write gets
    the whole first list."""
    factory = asyncio.new_event_loop
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    joined: list[int] = []
    writelines = asyncio.WriteTransport.writelines

    def counting(self: Any, parts: Any) -> None:
        parts = list(parts)
        joined.append(sum(len(part) for part in parts))
        writelines(self, parts)

    monkeypatch.setattr(asyncio.WriteTransport, "writelines", counting)
    first, second = _parts(16, 64 * 1024), _parts(8, 32 * 1024)

    async def scenario() -> tuple[bytes, int]:
        transport, theirs = await _pair()
        with theirs:
            write_parts(transport, first)
            waiting = transport.get_write_buffer_size()
            write_parts(transport, second)
            expected = b"".join(bytes(part) for part in first + second)
            got = await _read_all(theirs, len(expected))
            transport.close()
        assert got == expected
        return got, waiting

    with asyncio.Runner(loop_factory=factory) as runner:
        _, waiting = runner.run(scenario())
    assert waiting > 0  # the test meant it: the socket did not take the first list whole
    if loop == "asyncio":
        assert 0 < joined[0] < sum(len(part) for part in first)


async def test_a_closing_transport_gets_nothing_written_to_its_socket() -> None:
    """Once the transport closes, ``write_parts`` leaves its socket alone (the descriptor
    may be gone, or another socket's): the parts go to the transport, which drops them;
    the peer sees the end of data and nothing after the bytes written before."""
    transport, theirs = await _pair()
    with theirs:
        write_parts(transport, [b"ab", b"cd"])
        assert transport.__dict__.get(WRITEV_FD, -1) >= 0  # asyncio's: the writev way
        transport.close()
        write_parts(transport, [b"ef", b"gh"])
        assert await _read_all(theirs, 1 << 20) == b"abcd"
