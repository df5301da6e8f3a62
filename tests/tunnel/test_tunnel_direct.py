"""The asyncssh backend's ``direct-tcpip`` channels (:mod:`tunnel.backends.direct`: opened
without asyncssh's coroutine and session layers) against the real sshd: the channel in
use is ours, on the installed asyncssh; a flow given up while its channel opens leaves
nothing open on the gateway; the channel's own life (data both ways, half-close, the
target's end) is asyncssh's. The tunnel-wide behaviours (windows, resets, counters) are
tested for every flow in the other tunnel tests, which all go through this channel."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncssh.constants import MSG_CHANNEL_CLOSE

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import asyncssh_link, asyncssh_patches, direct
from tunnel.sshlib import asyncssh

from .tunnel_testlib import Target, exchange, link_up, one_open_connection


@contextlib.asynccontextmanager
async def ssh_link_to(
    options: TunnelOptions, target: Target, cipher: str | None = None
) -> AsyncIterator[tuple[Forward, asyncssh_link.SSHLink]]:
    """A tunnel with one forward to ``target`` (only ``cipher`` offered, when given) and its
    asyncssh link up: the forward and the link."""
    if cipher is not None:
        assert options.ssh_config is not None
        options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", target.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        yield forward, link


def test_the_direct_channel_fits_the_installed_asyncssh() -> None:
    assert direct.supported()


async def test_each_flow_rides_a_direct_channel(options: TunnelOptions, echo: Target) -> None:
    """While a connection is carried its channel is a :class:`DirectTCPChannel`, reading
    (no task started it), and the connection works both ways, half-closed by each side."""
    async with one_open_connection(options, echo) as (tunnel, link, reader, writer):
        channels = list(link.conn._channels.values())
        assert len(channels) == 1
        assert isinstance(channels[0], direct.DirectTCPChannel)
        assert channels[0]._recv_paused is False
        writer.write_eof()  # our half-close: the echo target half-closes back
        assert await reader.read() == b""
        writer.close()
        await wait_until(lambda: not link.conn._channels)
        counters = tunnel.state.forwards[0]
        await wait_until(lambda: counters.open == 0)
        assert (counters.cut, counters.bytes_out, counters.bytes_in) == (0, 6, 6)


async def test_a_flow_cut_while_its_channel_opens_leaves_nothing_open(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow is cut in the very callback that sends its CHANNEL_OPEN, before the
    gateway can answer: the client gets a reset, the flow counts as cut, and once sshd
    confirms the channel it is closed at once, so sshd's connection to the target ends
    too. (asyncssh's own open, cancelled, left the channel and the target's connection
    open until the link ended.)"""
    made = asyncssh_link._ClientSide.start

    def made_then_cut(self: Any) -> None:
        made(self)
        self.cut("cut by the test while the channel opens")

    monkeypatch.setattr(asyncssh_link._ClientSide, "start", made_then_cut)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        try:
            with pytest.raises(ConnectionResetError):  # the reset may come before the connect ends
                await loop.sock_connect(client, forward.mouth)
                async with asyncio.timeout(10):
                    while await loop.sock_recv(client, 4096):
                        pass
        finally:
            client.close()
        await wait_until(lambda: echo.peers)  # sshd did reach the target
        await wait_until(lambda: echo.active == 0 and not link.conn._channels)
        assert tunnel.state.forwards[0].cut == 1


async def test_a_flow_cut_while_its_channel_is_refused_ends_once(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut while opening, then the gateway refuses the channel (nothing listens on the
    target's port): the flow ends once, as cut; the channel is gone and the link still
    carries the next connection."""
    made = asyncssh_link._ClientSide.start

    def made_then_cut(self: Any) -> None:
        made(self)
        if self.flow.forward.target_port != echo.port:
            self.cut("cut by the test while the channel opens")

    monkeypatch.setattr(asyncssh_link._ClientSide, "start", made_then_cut)
    refused = Forward("127.0.0.1", free_port(), "127.0.0.1", free_port())
    working = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [refused, working]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        assert await exchange(*refused.mouth, b"hello\n") == b""
        await wait_until(lambda: not link.conn._channels)
        assert await exchange(*working.mouth, b"hello\n") == b"hello\n"
        assert tunnel.link is link
        assert [forward.cut for forward in tunnel.state.forwards] == [1, 0]


@contextlib.asynccontextmanager
async def accepted_with_bytes_waiting(
    tunnel: Tunnel, forward: Forward, payload: bytes
) -> AsyncIterator[socket.socket]:
    """A client of ``forward``'s mouth whose ``payload`` is already in the kernel when the
    mouth accepts it (the listener's reader is off meanwhile): ``start`` then finds the
    bytes waiting. Yields the client's (non-blocking) socket."""
    mouth = tunnel._mouths[forward.mouth]
    assert mouth.listener is not None
    listener = mouth.listener.fileno()
    loop = asyncio.get_running_loop()
    loop.remove_reader(listener)
    client = socket.socket()
    client.setblocking(False)
    try:
        await loop.sock_connect(client, forward.mouth)
        await loop.sock_sendall(client, payload)
        mouth._accept()
        yield client
    finally:
        client.close()
        loop.add_reader(listener, mouth._accept)


async def receive_exactly(client: socket.socket, wanted: bytes) -> None:
    """Read ``client`` until it has given ``wanted`` (a close before that fails)."""
    loop = asyncio.get_running_loop()
    got = b""
    async with asyncio.timeout(10):
        while got != wanted:
            chunk = await loop.sock_recv(client, 4096)
            assert chunk, f"closed after {got!r}"
            got += chunk


async def test_a_link_lost_while_a_channel_opens_holds_its_flow_with_the_bytes_read(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link dies right after a CHANNEL_OPEN went out (no answer can come), the
    client's first bytes already read by us: nothing was sent on the channel nor written
    to the client, so the flow is held and carried by the next link with those bytes
    (``Flow.early``), once; not cut. (With the gateway frozen instead, on both backends:
    test_tunnel_cut.py's
    ``test_a_flow_whose_channel_open_went_unanswered_is_carried_by_the_next_link``.)"""
    made = asyncssh_link._ClientSide.start
    read: list[int] = []

    def made_then_link_lost(self: Any) -> None:
        made(self)
        if read:  # the next link: carried as any flow
            read.append(self.pending_len)
            return
        self.readable()  # the client's bytes are there already (sent before the accept)
        read.append(self.pending_len)
        self.link.conn.abort()

    monkeypatch.setattr(asyncssh_link._ClientSide, "start", made_then_link_lost)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        first = await link_up(tunnel)
        async with accepted_with_bytes_waiting(tunnel, forward, b"hello\n") as client:
            await receive_exactly(client, b"hello\n")
            client.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(10):  # nothing twice
                assert await asyncio.get_running_loop().sock_recv(client, 4096) == b""
        assert read == [6, 6]  # read on the first link, carried to the next
        assert tunnel.link is not first
        assert tunnel.state.forwards[0].cut == 0


def record_sends(
    conn: Any,
    monkeypatch: pytest.MonkeyPatch,
    seen: Callable[[int, tuple[bytes, ...]], object],
    *,
    sealing: bool,
) -> None:
    """Show ``seen`` every packet that goes through asyncssh's ``send_packet`` on ``conn``
    (then sent as before). ``sealing``: the wrapper says it keeps the chaff filter, so the
    tunnel's own sealing stays in force (else it steps aside for a wrapped send_packet)."""
    send = conn.send_packet

    def recorded(pkttype: int, *args: bytes, handler: Any = None) -> None:
        seen(pkttype, args)
        send(pkttype, *args, handler=handler)

    if sealing:
        recorded.drops_chaff = True  # type: ignore[attr-defined] (it wraps the filter)
    monkeypatch.setattr(conn, "send_packet", recorded)


async def test_the_open_is_the_one_asyncssh_sends(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin check: the CHANNEL_OPEN of a :class:`DirectTCPChannel` is byte for byte the one
    asyncssh's own ``create_connection`` sends for the same target, origin, window and
    packet size (but for each channel's own number), and sshd confirms both."""
    async with ssh_link_to(options, echo) as (_, link):
        conn = link.conn
        opens: list[bytes] = []
        # Sealing off (the wrapper does not say it keeps the chaff filter): both opens go
        # through asyncssh's send_packet, where they are recorded.
        record_sends(
            conn,
            monkeypatch,
            lambda pkttype, args: (
                opens.append(b"".join(args)) if pkttype == direct.MSG_CHANNEL_OPEN else None
            ),
            sealing=False,
        )
        theirs, _ = await conn.create_connection(
            asyncssh.SSHTCPSession,
            "127.0.0.1",
            echo.port,
            "127.0.0.1",
            4242,
            window=link.window,
            max_pktsize=link.max_packet,
        )
        ours = direct.DirectTCPChannel(conn, link.window, link.max_packet)
        ours.open("127.0.0.1", echo.port, "127.0.0.1", 4242)
        await wait_until(lambda: not ours.opening)
        assert not ours.is_closing()  # confirmed, not refused
        theirs.close()
        ours.close()
        await wait_until(lambda: not conn._channels)
    number = len(direct.DIRECT_TCPIP) + 4  # the channel type string, then our number
    assert len(opens) == 2
    assert opens[0][:number] == opens[1][:number]
    assert opens[0][number + 4 :] == opens[1][number + 4 :]
    assert opens[0][number : number + 4] != opens[1][number : number + 4]


CIPHERS = ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
CONTROL = frozenset({direct.MSG_CHANNEL_OPEN, 93, 96, 97})
"""CHANNEL_OPEN, WINDOW_ADJUST, EOF, CLOSE (RFC 4254 §5)."""


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_flows_control_packets_are_sealed_by_the_tunnel(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the steady state a connection's CHANNEL_OPEN, EOF and CLOSE are sealed and
    written by :func:`~tunnel.backends.asyncssh_patches.send_sealed`: none goes through
    asyncssh's ``send_packet`` (and the connections work)."""
    async with ssh_link_to(options, echo, cipher) as (forward, link):
        conn = link.conn
        through_asyncssh: list[int] = []
        record_sends(
            conn, monkeypatch, lambda pkttype, _: through_asyncssh.append(pkttype), sealing=True
        )
        for n in range(3):
            line = b"line %d\n" % n
            assert await exchange(*forward.mouth, line) == line
        await wait_until(lambda: not conn._channels)
    assert not CONTROL.intersection(through_asyncssh)


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_flows_control_packets_take_their_padding_from_the_pool(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's CHANNEL_OPEN, EOF and CLOSE are padded from the tunnel's pool
    (:data:`~tunnel.backends.asyncssh_patches.PADDING`), as its data packets are: no
    ``os.urandom`` call (a ``getrandom`` system call) of a packet's own, which put one
    between a client's accept and its CHANNEL_OPEN leaving (bench/notes/path.md)."""
    async with ssh_link_to(options, echo, cipher) as (forward, link):
        conn = link.conn
        assert await exchange(*forward.mouth, b"first\n") == b"first\n"
        await wait_until(lambda: not conn._channels)
        system = os.urandom
        drawn: list[int] = []

        def urandom(size: int) -> bytes:
            drawn.append(size)
            return system(size)

        monkeypatch.setattr(os, "urandom", urandom)
        for n in range(3):
            line = b"line %d\n" % n
            assert await exchange(*forward.mouth, line) == line
        await wait_until(lambda: not conn._channels)
        monkeypatch.undo()
    assert [size for size in drawn if size < asyncssh_patches.PADDING_POOL] == []


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_a_sealed_packet_is_the_one_asyncssh_sends(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin check: on a live link in its steady state, ``send_sealed`` and asyncssh's own
    ``send_packet`` (chaff filtered, as the tunnel runs it) write the same bytes for the
    same packet from the same state (sequence number, GCM IV, padding drawn from the same
    ``os.urandom``), for every payload length over two cipher blocks (each padding case);
    both step the sequence number and rekey count alike. Nothing of it reaches sshd (the
    transport is a recorder meanwhile, the state put back): the link carries on."""
    async with ssh_link_to(options, echo, cipher) as (forward, link):
        conn = link.conn
        assert await exchange(*forward.mouth, b"before\n") == b"before\n"
        wrote: list[bytes] = []

        class Recorder:
            def write(self, data: bytes) -> None:
                wrote.append(bytes(data))

            def writelines(self, parts: list[bytes]) -> None:
                wrote.append(b"".join(parts))

            def get_write_buffer_size(self) -> int:
                return 0

            def is_closing(self) -> bool:
                return False

            def get_extra_info(self, name: str, default: Any = None) -> Any:
                return transport.get_extra_info(name, default)

        cipher_state = conn._send_encryption._cipher
        transport: Any = conn._transport
        monkeypatch.setattr(os, "urandom", lambda size: bytes((7 + i) % 256 for i in range(size)))
        for size in range(40):
            payload = bytes(range(100, 100 + size))
            state = (conn._send_seq, conn._rekey_bytes_sent, getattr(cipher_state, "_iv", None))
            after = []
            conn._transport = Recorder()
            try:
                for sender in (asyncssh_patches.send_sealed, type(conn).send_packet):
                    if sender is asyncssh_patches.send_sealed:
                        # The tunnel's padding is cut from its pool: drawn afresh here, so
                        # that it starts where asyncssh's own os.urandom call does.
                        asyncssh_patches.PADDING.drop()
                        assert sender(conn, 96, payload)
                    else:
                        conn.send_packet(96, payload)
                    after.append((conn._send_seq, conn._rekey_bytes_sent))
                    conn._send_seq, conn._rekey_bytes_sent, iv = state
                    if iv is not None:
                        cipher_state._iv = iv
            finally:
                conn._transport = transport
            assert len(wrote) == 2
            assert wrote[0] == wrote[1], size
            assert after[0] == after[1] != state[:2]
            wrote.clear()
        monkeypatch.undo()
        asyncssh_patches.PADDING.drop()  # no padding cut from the test's bytes from now on
        assert await exchange(*forward.mouth, b"after\n") == b"after\n"


@pytest.mark.parametrize("cipher", CIPHERS)
async def test_control_packets_reach_their_handlers_as_through_asyncssh(
    options: TunnelOptions, echo: Target, cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin check of the receiving side: the open confirmation, EOF and CLOSE of a fresh
    link's first connection reach the same handlers with the same numbers (and the
    connection's sequence number stepped alike) whether the in-place path hands them
    over without asyncssh's packet object (``CONTROL_LEN``; EOF and CLOSE to the
    channel's lean end, ``eof_arrived`` and ``close_arrived``), through it
    (:data:`~tunnel.backends.asyncssh_patches.DISPATCHED`), or asyncssh's own parser does
    it all; the first way calls asyncssh's ``process_packet`` for none of them."""
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host *\n  Ciphers {cipher}\n")
    process = asyncssh.packet.SSHPacketHandler.process_packet
    confirmed = direct.DirectTCPChannel.confirmed
    handlers = asyncssh.channel.SSHChannel._packet_handlers
    parsed: list[tuple[int, str, bytes]] = []
    handled: list[tuple[Any, ...]] = []

    def recorded(self: Any, pkttype: int, pktid: int, packet: Any) -> Any:
        if pkttype in {91, 93, 96, 97}:
            parsed.append((pkttype, type(self).__name__, packet.get_remaining_payload()))
        return process(self, pkttype, pktid, packet)

    def recorded_confirmed(self: Any, *numbers: int) -> None:
        handled.append(("confirmed", *numbers, self._conn._recv_seq))
        confirmed(self, *numbers)

    def handler_of(pkttype: int) -> Any:
        original = handlers[pkttype]

        def handler(self: Any, kind: int, pktid: int, packet: Any) -> None:
            handled.append((kind, pktid, packet.get_remaining_payload()))
            original(self, kind, pktid, packet)

        return handler

    def arrived_of(pkttype: int, name: str) -> Any:
        original = getattr(direct.DirectTCPChannel, name)

        def arrived(self: Any) -> None:
            if direct.LEAN_END:  # asyncssh's handler (recorded above) otherwise
                handled.append((pkttype, self._conn._recv_seq, b""))
            original(self)

        return arrived

    monkeypatch.setattr(asyncssh.packet.SSHPacketHandler, "process_packet", recorded)
    monkeypatch.setattr(direct.DirectTCPChannel, "confirmed", recorded_confirmed)
    monkeypatch.setitem(handlers, 96, handler_of(96))
    monkeypatch.setitem(handlers, 97, handler_of(97))
    monkeypatch.setattr(direct.DirectTCPChannel, "eof_arrived", arrived_of(96, "eof_arrived"))
    monkeypatch.setattr(direct.DirectTCPChannel, "close_arrived", arrived_of(97, "close_arrived"))
    runs = []
    ways = (
        (asyncssh_patches.DISPATCHED, asyncssh_patches.CONTROL_LEN),
        (asyncssh_patches.DISPATCHED, {}),
        (frozenset(), {}),
    )
    for dispatched, control in ways:
        monkeypatch.setattr(asyncssh_patches, "DISPATCHED", dispatched)
        monkeypatch.setattr(asyncssh_patches, "CONTROL_LEN", control)
        forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
        async with Tunnel(options, [forward]) as tunnel:
            link = await link_up(tunnel)
            assert isinstance(link, asyncssh_link.SSHLink)
            parsed.clear()
            handled.clear()
            assert await exchange(*forward.mouth, b"hello\n") == b"hello\n"
            await wait_until(lambda: not link.conn._channels)  # noqa: B023 (awaited here)
            runs.append((list(parsed), list(handled)))
    assert [kind[0] for kind in runs[0][1]] == ["confirmed", 96, 97]
    assert runs[0][1] == runs[1][1] == runs[2][1]
    assert runs[0][0] == []
    assert [call[:2] for call in runs[1][0]] == [
        (91, "SSHClientConnection"),
        (96, "_Channel"),
        (97, "_Channel"),
    ]
    assert runs[1][0] == runs[2][0]


async def test_the_channel_s_pause_holds_through_its_open(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes that waited for the open fill the channel's send buffer (a gateway with a
    small window) and the channel pauses its client, once: the open must not undo that
    pause (the client would be read into asyncssh's buffer without bound); reading
    resumes when the channel says so, and every byte then goes through."""
    made = asyncssh_link._ClientSide.start
    opened = asyncssh_link._ClientSide.opened
    reading: list[bool] = []

    def made_then_read(self: Any) -> None:
        made(self)
        self.readable()  # the client's bytes are there already (sent before the accept)

    def opened_while_full(self: Any) -> None:
        self.channel.pause_writing()  # what asyncssh says when the writes fill its buffer
        opened(self)
        reading.append(self.reading)
        self.channel.resume_writing()
        reading.append(self.reading)

    monkeypatch.setattr(asyncssh_link._ClientSide, "start", made_then_read)
    monkeypatch.setattr(asyncssh_link._ClientSide, "opened", opened_while_full)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        await link_up(tunnel)
        async with accepted_with_bytes_waiting(tunnel, forward, b"hello\n") as client:
            await wait_until(lambda: len(reading) == 2)
            await asyncio.get_running_loop().sock_sendall(client, b"again\n")
            await receive_exactly(client, b"hello\nagain\n")
        assert reading == [False, True]


async def test_a_flow_whose_channel_write_fails_ends_with_a_reset(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel refuses the client's bytes (asyncssh raises when its channel is
    closing: the gateway's CLOSE came before the target's EOF): the flow could not be
    finished, so its client sees a reset, never a clean end."""
    async with Tunnel(
        options, [Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)]
    ) as tunnel:
        await link_up(tunnel)
        forward = tunnel.state.forwards[0].forward
        assert await exchange(*forward.mouth, b"hello\n") == b"hello\n"

        def refused(self: Any, data: Any, datatype: Any = None) -> None:
            raise BrokenPipeError("channel closing")

        monkeypatch.setattr(asyncssh_link._Channel, "write", refused)
        reader, writer = await asyncio.open_connection(*forward.mouth)
        try:
            writer.write(b"lost\n")
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(10):
                    while await reader.read(4096):
                        pass
        finally:
            writer.close()


def test_the_lean_channel_set_up_fits_the_installed_asyncssh() -> None:
    """The installed asyncssh is one whose ``SSHChannel.__init__`` the lean set-up
    repeats (a newer one that changes it gets asyncssh's own, and this fails to say so)."""
    assert direct.LEAN_INIT


def channel_state(chan: Any) -> dict[str, Any]:
    """A channel's attributes but its number, its logger and its close event (one each)."""
    left_out = {"_recv_chan", "_logger", "_log_parent", "_log_context", "_close_event"}
    state = {name: value for name, value in vars(chan).items() if name not in left_out}
    assert state.pop("_session") is chan  # the channel is its own session
    return state


async def test_the_lean_channel_is_made_as_asyncssh_makes_it(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twin check: a :class:`DirectTCPChannel` made by the lean set-up has the attributes
    asyncssh's ``SSHChannel.__init__`` gives it, with the same values (but its number and
    its logger, made when something is written), registered on the connection the same
    way; its close event is a fresh unset ``asyncio.Event``."""
    async with ssh_link_to(options, echo) as (_, link):
        conn = link.conn
        lean = direct.DirectTCPChannel(conn, link.window, link.max_packet)
        monkeypatch.setattr(direct, "LEAN_INIT", False)
        theirs = direct.DirectTCPChannel(conn, link.window, link.max_packet)
        try:
            assert channel_state(lean) == channel_state(theirs)
            assert conn._channels[lean._recv_chan] is lean
            assert conn._channels[theirs._recv_chan] is theirs
            assert lean._recv_chan + 1 == theirs._recv_chan
            assert isinstance(lean._close_event, asyncio.Event)
            assert not lean._close_event.is_set()
            assert lean._logger is None
        finally:
            lean._cleanup()
            theirs._cleanup()
        assert not conn._channels
        assert lean._close_event.is_set()


def channel_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    """asyncssh's messages about a channel, its number taken out."""
    return [
        re.sub(r"chan=\d+", "chan=N", record.getMessage())
        for record in caplog.records
        if record.name.startswith("asyncssh") and "chan=" in record.getMessage()
    ]


@pytest.mark.parametrize("level", ["DEBUG2", "DEBUG", "INFO", "WARNING"])
async def test_a_lean_channel_logs_what_asyncssh_s_logs(
    options: TunnelOptions,
    echo: Target,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    level: str,
) -> None:
    """Twin check: a connection carried on a channel made by the lean set-up and ended by
    the lean end writes the same asyncssh channel messages, with the same channel context,
    as one on a channel made by asyncssh's ``__init__`` and ended by asyncssh's code, at
    DEBUG with asyncssh's debug level 2 (its ``debug2`` messages: the EOFs sent and
    received), DEBUG, INFO and WARNING (nothing then; the channel's own logger is not
    even made)."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    made: list[Any] = []
    original = direct.DirectTCPChannel.__init__

    def recorded(self: Any, *args: Any) -> None:
        original(self, *args)
        made.append(self)

    monkeypatch.setattr(direct.DirectTCPChannel, "__init__", recorded)
    if level == "DEBUG2":
        monkeypatch.setattr(asyncssh.logging.SSHLogger, "_debug_level", 2)
    seen: list[list[str]] = []
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        caplog.set_level("DEBUG" if level == "DEBUG2" else level, logger="asyncssh")
        for lean in (True, False):
            monkeypatch.setattr(direct, "LEAN_INIT", lean)
            monkeypatch.setattr(direct, "LEAN_END", lean)
            caplog.clear()
            assert await exchange("127.0.0.1", forward.mouth_port, b"ping\n") == b"ping\n"
            await wait_until(lambda: not link.conn._channels)
            seen.append(channel_messages(caplog))
    assert seen[0] == seen[1]
    if level == "WARNING":
        assert seen[0] == []
        assert made[0]._logger is None
    else:
        assert any(message.endswith("chan=N] Channel closed") for message in seen[0])
        assert any(message.endswith("chan=N] Received channel close") for message in seen[0])
        assert made[0]._logger is not None
    if level.startswith("DEBUG"):
        assert any("Set write buffer limits" in message for message in seen[0])
    if level == "DEBUG2":
        assert any(message.endswith("chan=N] Sending EOF") for message in seen[0])
        assert any(message.endswith("chan=N] Received EOF") for message in seen[0])


#: Logger methods that write above INFO (:data:`direct.CHANNEL_LOG_MAX`).
ABOVE_INFO = {"warning", "warn", "error", "exception", "critical", "fatal", "log"}


def test_nothing_writes_above_info_to_a_channel_s_logger() -> None:
    """The premise of the shared :class:`direct._Unwritten` (no ``chan=`` context): no
    code of the installed asyncssh writes to a logger above INFO (its channel code writes
    ``debug1``, ``debug2`` and ``info`` only), nor does the tunnel's own code through a
    channel's logger. An asyncssh that starts to must give the lean channel its context
    back (build the real child logger for such a message): this says so."""
    roots = [Path(asyncssh.__file__).parent, Path(direct.__file__).parents[1]]
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            if path.name == "logging.py" and root == roots[0]:  # SSHLogger itself
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ABOVE_INFO
                    and isinstance(node.func.value, ast.Attribute)
                    and node.func.value.attr == "logger"
                ):
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []
    assert direct.CHANNEL_LOG_MAX == logging.INFO


def test_the_lean_channel_end_fits_the_installed_asyncssh() -> None:
    """The installed asyncssh's channel end (``write_eof``, ``_process_eof``,
    ``_process_close``, ``_close_send``, ``_cleanup``) is the one the lean end repeats;
    another asyncssh gets its own, and this says so."""
    assert direct.LEAN_END


@pytest.mark.parametrize("method", ["_flush_send_buf", "_pause_resume_writing", "write_eof"])
def test_another_send_side_turns_the_lean_end_off(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lean ``write_eof`` stands for asyncssh's ``_flush_send_buf`` and
    ``_pause_resume_writing`` with an empty send buffer: an asyncssh whose send side reads
    otherwise gets its own end (the check covers those two as well as the end's own)."""
    from asyncssh.channel import SSHChannel

    assert direct._lean_end_fits()

    def other(self: Any) -> None:
        self._send_state = "somewhere else"

    monkeypatch.setattr(SSHChannel, method, other)
    assert not direct._lean_end_fits()


@pytest.mark.parametrize("lean", [True, False])
async def test_a_close_after_an_eof_held_back_tells_the_session_first(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch, lean: bool
) -> None:
    """The gateway's EOF held back (the channel's reading paused), then its CLOSE: the
    session hears of the EOF (``eof_held``) before the channel ends, the held data is
    delivered before ``connection_lost``, by the lean end as by asyncssh's own handler
    with the patch (tunnel.backends.asyncssh_patches._keep_held_eof)."""
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    heard: list[Any] = []

    class Session(direct.DirectTCPChannel):
        def eof_held(self) -> None:
            heard.append("eof_held")

        def data_received(self, data: bytes, datatype: Any) -> None:
            heard.append(bytes(data))

        def eof_received(self) -> bool:
            heard.append("eof")
            return True

        def connection_lost(self, exc: Exception | None) -> None:
            heard.append(("lost", exc))

    monkeypatch.setattr(direct, "LEAN_END", lean)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        chan = Session(link.conn, link.window, link.max_packet)
        chan._recv_state = "eof_pending"  # as after the gateway's EOF, while paused
        chan._recv_paused = True
        chan._recv_buf.append((b"held", None))
        # As for a channel the gateway confirmed: our CLOSE goes out in answer to its
        # CLOSE (recorded here, not sent: the gateway knows no such channel).
        chan._send_state = "open"
        chan._send_chan = 4242
        sent: list[int] = []
        chan.send_packet = lambda pkttype, *args: sent.append(pkttype)  # type: ignore[method-assign]
        chan.close_arrived()
        assert heard == ["eof_held"]
        assert sent == [MSG_CHANNEL_CLOSE]
        assert chan._recv_state == "close_pending"
        assert chan._send_state == "closed"
        assert chan._send_chan is None
        chan.resume_reading()  # asyncssh's: the held data, then the end
        await wait_until(lambda: len(heard) == 3)
        assert heard == ["eof_held", b"held", ("lost", None)]
        assert chan._recv_chan is None
        assert not link.conn._channels


def test_the_inline_channel_end_fits_the_installed_asyncssh() -> None:
    """The installed asyncssh's ``_flush_recv_buf`` is the one the tunnel channel's
    repeats (with its end called at once); another asyncssh gets its own, and this says so."""
    assert direct.INLINE_CLEANUP


async def test_a_channel_ends_in_the_callback_of_its_close(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's CLOSE ends the channel where it is handled: the owner is told while
    the read of the SSH socket that brought the CLOSE is still being handled (no later
    turn of the loop); the connection itself ended in order (all data, then EOF)."""
    ended: list[bool] = []
    lost = asyncssh_link._Channel.connection_lost

    def recorded(self: Any, exc: Exception | None) -> None:
        ended.append(getattr(self._conn, asyncssh_patches.READ_BATCH, None) is not None)
        lost(self, exc)

    monkeypatch.setattr(asyncssh_link._Channel, "connection_lost", recorded)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, asyncssh_link.SSHLink)
        payload = os.urandom(200_000)
        assert await exchange("127.0.0.1", forward.mouth_port, payload) == payload
        await wait_until(lambda: not link.conn._channels)
        counters = tunnel.state.forwards[0]
        await wait_until(lambda: counters.open == 0)
        assert counters.cut == 0
    assert ended == [True]


async def test_an_owner_failing_at_the_channel_s_end_leaves_the_link_up(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channel's end now runs inside the packet handling: a defect in the owner's
    ``connection_lost`` is still caught there (asyncssh's ``_cleanup``), so the link
    and the next connections go on."""
    lost = asyncssh_link._Channel.connection_lost
    failed: list[bool] = []

    def failing(self: Any, exc: Exception | None) -> None:
        if not failed:
            failed.append(True)
            raise RuntimeError("a defect in connection_lost")
        lost(self, exc)

    monkeypatch.setattr(asyncssh_link._Channel, "connection_lost", failing)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert await exchange("127.0.0.1", forward.mouth_port, b"one\n") == b"one\n"
        await wait_until(lambda: bool(failed))
        assert await exchange("127.0.0.1", forward.mouth_port, b"two\n") == b"two\n"
        assert tunnel.link is link
        assert not link.client.closed.done()
