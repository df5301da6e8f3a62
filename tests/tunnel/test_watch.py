"""tunnel.backends.watch: the client sockets' reader registrations on asyncio's selector
loop without its transport check: the same registration as asyncio's, asyncio's own way
where a writer is registered already, and the loop's own methods on any other loop."""

from __future__ import annotations

import asyncio
import selectors
import socket

import pytest
import uvloop

from tunnel.backends import watch


async def test_asyncio_s_selector_loop_is_the_one_repeated() -> None:
    """The installed Python's asyncio is the one repeated (a change there gets the loop's
    own methods, and this says so)."""
    assert watch.fits(asyncio.get_running_loop())


def test_uvloop_gets_its_own_methods() -> None:
    async def calls() -> None:
        loop = asyncio.get_running_loop()
        assert not watch.fits(loop)
        add, remove = watch.reader_calls(loop)
        assert add == loop.add_reader
        assert remove == loop.remove_reader

    uvloop.run(calls())


async def test_a_reader_is_registered_as_asyncio_registers_it() -> None:
    """Twin check: the selector's key (events, handle's callback, no writer) is the one
    asyncio's ``add_reader`` makes; the callback runs when the socket is readable; the
    remove leaves no registration and cancels the handle."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    add, remove = watch.reader_calls(loop)
    one, peer = socket.socketpair()
    two, peer2 = socket.socketpair()
    read: list[int] = []
    both = asyncio.Event()

    def got(sock: socket.socket) -> None:
        read.append(sock.recv(10)[0])
        if len(read) == 2:
            both.set()

    try:
        for sock in (one, two, peer, peer2):
            sock.setblocking(False)
        add(one.fileno(), lambda: got(one))
        loop.add_reader(two.fileno(), lambda: got(two))
        ours, theirs = selector.get_key(one.fileno()), selector.get_key(two.fileno())
        assert ours.events == theirs.events == selectors.EVENT_READ
        assert ours.data[1] is theirs.data[1] is None
        assert type(ours.data[0]) is type(theirs.data[0]) is asyncio.Handle
        assert ours.data[0]._loop is theirs.data[0]._loop is loop
        handle = ours.data[0]
        peer.send(b"\x01")
        peer2.send(b"\x02")
        async with asyncio.timeout(10):
            await both.wait()
        assert sorted(read) == [1, 2]
        assert remove(one.fileno())
        assert handle.cancelled()
        with pytest.raises(KeyError):
            selector.get_key(one.fileno())
        loop.remove_reader(two.fileno())
    finally:
        for sock in (one, two, peer, peer2):
            sock.close()


async def test_a_reader_beside_a_writer_goes_asyncio_s_way() -> None:
    """A descriptor with its writer registered already: the reader is added to that
    registration (asyncio's ``add_reader``), and its remove leaves the writer."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    add, remove = watch.reader_calls(loop)
    one, peer = socket.socketpair()
    try:
        one.setblocking(False)
        loop.add_writer(one.fileno(), lambda: None)
        add(one.fileno(), lambda: None)
        key = selector.get_key(one.fileno())
        assert key.events == selectors.EVENT_READ | selectors.EVENT_WRITE
        assert key.data[0] is not None and key.data[1] is not None
        assert remove(one.fileno())
        key = selector.get_key(one.fileno())
        assert key.events == selectors.EVENT_WRITE
        assert key.data[0] is None
        loop.remove_writer(one.fileno())
    finally:
        one.close()
        peer.close()


async def test_a_closed_loop_refuses_a_reader_as_asyncio_does() -> None:
    loop = asyncio.new_event_loop()
    add, _remove = watch.reader_calls(loop)
    loop.close()
    one, peer = socket.socketpair()
    try:
        with pytest.raises(RuntimeError, match="closed"):
            add(one.fileno(), lambda: None)
    finally:
        one.close()
        peer.close()
