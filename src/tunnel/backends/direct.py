"""A ``direct-tcpip`` channel (RFC 4254 §7.2) opened on asyncssh's connection without its
coroutine and session layers.

Carried subclass (asyncssh 2.14 to 2.x, the range pyproject.toml allows; checked by
:func:`supported` and by tests/tunnel/test_tunnel_direct.py against the real sshd).

Why: asyncssh's ``create_connection`` is a chain of five coroutines (``create_connection``
→ ``connect`` → ``_open_tcp`` → ``_open_forward`` → ``_open``) around one future; when
the gateway's OPEN_CONFIRMATION arrives, the future's done callback resumes them in a
later callback of the loop, which then makes the session (``session_factory``,
``connection_made``, ``session_started``) and a task only to start reading
(``_start_reading``). The client's first bytes wait for all of it. For a short
connection (connect, one request, one reply, close) that set-up was the largest part of
the tunnel's own Python per connection (py-spy and cProfile over round trips).

Here the CHANNEL_OPEN is sent at once, and the confirmation (or failure) is handled
where asyncssh dispatches it (``process_open_confirmation`` / ``process_open_failure``,
the calls its connection makes for every channel): the channel is open, reading, and its
owner told (:meth:`DirectTCPChannel.channel_opened`) in that same callback. The channel
is its own session (``data_received``, ``eof_received``, ``connection_lost``,
``pause_writing``, ``resume_writing`` are the owner's, in a subclass). Everything after
the open (windows and their adjusts, data both ways, EOF, CLOSE, pause/resume, the
connection's loss) is asyncssh's own ``SSHChannel`` code, unchanged; only the channel's
packets are sealed by the tunnel where it can
(:func:`tunnel.backends.asyncssh_patches.send_sealed`), asyncssh's ``send_packet`` otherwise.

One thing asyncssh did not do: a channel given up while its open is still on the way
(the client gone, the flow cut) is closed as soon as the gateway confirms it. Cancelling
asyncssh's ``create_connection`` left such a channel open on both ends (and the gateway's
connection to the target with it) until the link ended.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
from typing import Any

from tunnel.backends import asyncssh_patches
from tunnel.sshlib import asyncssh

SSHChannel = asyncssh.channel.SSHChannel
SSHLogger = asyncssh.logging.SSHLogger

MSG_CHANNEL_OPEN = 90
"""RFC 4254 §5.1."""
MSG_CHANNEL_EOF = 96
MSG_CHANNEL_CLOSE = 97
"""RFC 4254 §5.3."""
DIRECT_TCPIP = b"direct-tcpip"
OPEN_CONNECT_FAILED = 2
"""RFC 4254 §5.1: SSH_OPEN_CONNECT_FAILED."""


OPEN_TYPE = len(DIRECT_TCPIP).to_bytes(4, "big") + DIRECT_TCPIP
"""The channel type, as an SSH string (RFC 4251 §5)."""
OPEN_NUMBERS = struct.Struct(">III")
"""Sender channel, initial window size, maximum packet size (RFC 4254 §5.1)."""
UINT32 = struct.Struct(">I")
EMPTY = asyncssh.packet.SSHPacket(b"")
"""What an EOF or CLOSE carries after its channel number (nothing): the packet asyncssh's
handlers are given for it (only read: ``check_end``)."""


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def supported() -> bool:
    """Whether the installed asyncssh has the internals this channel uses: the
    ``SSHChannel`` attributes set in its ``__init__`` and used here, the calls its
    connection makes on a channel, and ``_update_recv_pktlen`` on the connection."""
    from asyncssh.channel import SSHChannel  # noqa: PLC0415 (only the check needs it)
    from asyncssh.connection import SSHConnection  # noqa: PLC0415

    methods = (
        "process_open_confirmation",
        "process_open_failure",
        "process_connection_close",
        "_cleanup",
        "_flush_recv_buf",
        "send_packet",
    )
    if not all(callable(getattr(SSHChannel, name, None)) for name in methods):
        return False
    if not callable(getattr(SSHConnection, "_update_recv_pktlen", None)):
        return False
    names = set(SSHChannel.__init__.__code__.co_names)
    internals = (
        "_conn _loop _session _send_state _send_chan _send_window _send_pktsize"
        " _recv_state _recv_window _recv_pktsize _recv_paused _recv_chan _open_waiter"
    )
    return all(name in names for name in internals.split())


LEAN_INIT_NAMES = frozenset(
    [
        "Event",
        "_close_event",
        "_command",
        "_conn",
        "_env",
        "_extra",
        "_init_recv_window",
        "_logger",
        "_loop",
        "_open_waiter",
        "_recv_buf",
        "_recv_chan",
        "_recv_paused",
        "_recv_pktsize",
        "_recv_state",
        "_recv_window",
        "_request_queue",
        "_request_waiters",
        "_send_buf",
        "_send_buf_len",
        "_send_chan",
        "_send_paused",
        "_send_pktsize",
        "_send_state",
        "_send_window",
        "_session",
        "_str_env",
        "_subsystem",
        "add_channel",
        "asyncio",
        "get_child",
        "logger",
        "set_encoding",
        "set_write_buffer_limits",
    ]
)
"""The names asyncssh's ``SSHChannel.__init__`` uses (2.14 to 2.24 at least), all of
which :meth:`DirectTCPChannel._lean_init` sets as it does; any other asyncssh: its own."""

SEND_HIGH_WATER = 65536
"""asyncssh's default send buffer limits (``set_write_buffer_limits()``: 64 KiB, low ¼)."""


def _lean_init_fits() -> bool:
    """Whether :meth:`DirectTCPChannel._lean_init` does what this asyncssh's
    ``SSHChannel.__init__`` does: the same names used, the same default write buffer
    limits, and its ``logger`` a plain property of ``_logger``."""
    init = SSHChannel.__init__.__code__
    limits = SSHChannel.set_write_buffer_limits.__code__
    return (
        set(init.co_names) == LEAN_INIT_NAMES
        and SEND_HIGH_WATER in limits.co_consts
        and 4 in limits.co_consts
        and isinstance(SSHChannel.__dict__.get("logger"), property)
    )


LEAN_INIT = _lean_init_fits()

FLUSH_RECV_NAMES = frozenset(
    [
        "ProtocolError",
        "UnicodeDecodeError",
        "_cleanup",
        "_decoder",
        "_deliver_data",
        "_encoding",
        "_loop",
        "_recv_buf",
        "_recv_paused",
        "_recv_state",
        "_send_state",
        "_session",
        "call_soon",
        "decode",
        "eof_received",
        "pop",
        "str",
        "write_eof",
    ]
)
"""The names asyncssh's ``SSHChannel._flush_recv_buf`` uses (2.24), the one
:meth:`DirectTCPChannel._flush_recv_buf` repeats; any other asyncssh: its own."""

INLINE_CLEANUP = set(SSHChannel._flush_recv_buf.__code__.co_names) == FLUSH_RECV_NAMES

LEAN_END_CODE: dict[str, tuple[str, str]] = {
    "write_eof": ("_flush_send_buf _send_state debug2 logger", "Sending EOF|open|eof_pending"),
    "_process_eof": (
        "ProtocolError _flush_recv_buf _recv_state check_end debug2 logger",
        "open|Channel not open for sending|Received EOF|eof_pending",
    ),
    "_process_close": (
        "ProtocolError _close_send _flush_recv_buf _recv_state check_end info logger",
        "Channel not open|Received channel close|close_pending",
    ),
    "_flush_send_buf": (
        "MSG_CHANNEL_DATA MSG_CHANNEL_EOF MSG_CHANNEL_EXTENDED_DATA String UInt32 _close_send"
        " _pause_resume_writing _send_buf _send_buf_len _send_pktsize _send_state"
        " _send_window len min send_packet",
        "eof_pending|eof|close_pending",
    ),
    "_pause_resume_writing": (
        "_send_buf_len _send_high_water _send_low_water _send_paused _session debug2 logger"
        " pause_writing resume_writing",
        "Writing from session resumed|Writing from session paused",
    ),
    "_close_send": (
        "MSG_CHANNEL_CLOSE _send_buf _send_buf_len _send_chan _send_state send_packet",
        "closed",
    ),
    "_cleanup": (
        "ChannelOpenError Exception OPEN_CONNECT_FAILED _close_event _conn _open_waiter"
        " _recv_chan _request_waiters _send_chan _session cancelled connection_lost debug1"
        " detach_x11_listener exc_info info logger remove_channel set set_exception"
        " set_result str sys",
        "Uncaught exception in session ignored|Channel closed%s|: ",
    ),
}
"""asyncssh's channel end (2.24; another version is checked against this), as the lean end
repeats it (:data:`LEAN_END`): per method, the names it uses and the strings it has.
``_flush_send_buf`` and ``_pause_resume_writing`` are what the lean ``write_eof`` stands for
with an empty, unpaused send buffer (the EOF sent, nothing to resume)."""


def _lean_end_fits() -> bool:
    """Whether the installed asyncssh's ``write_eof``, ``_process_eof``, ``_process_close``,
    ``_close_send`` and ``_cleanup`` are the ones :class:`DirectTCPChannel`'s lean end
    repeats (the same names used, the same messages and states); any other asyncssh: its own."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the check needs it)

    if SSHConnection.remove_channel.__code__.co_names != ("_channels",):
        return False
    for name, (names, strings) in LEAN_END_CODE.items():
        # asyncssh's own, under the tunnel's patch where one wraps it (the in-place
        # ``_flush_send_buf`` ends in asyncssh's: tunnel/backends/asyncssh_patches.py)
        method = getattr(SSHChannel, name)
        code = getattr(method, "__wrapped__", method).__code__
        if set(code.co_names) != set(names.split()):
            return False
        if not set(strings.split("|")) <= {c for c in code.co_consts if isinstance(c, str)}:
            return False
    return True


LEAN_END = _lean_end_fits()

CHANNEL_LOG_MAX = LOG_MAX = logging.INFO
"""The highest level asyncssh's channel code writes its own messages at (``info``; the
rest are ``debug1``, ``debug2`` and ``packet``, at DEBUG). The lean end writes a message
when the channel's logger is made or the ``asyncssh`` logger is not known to be off at
this level (``isEnabledFor``'s own cache of it: False, True, or None)."""


class _Unwritten(SSHLogger):
    """A tunnel channel's logger while the ``asyncssh`` logger writes nothing at
    :data:`CHANNEL_LOG_MAX` or below: the channel's own messages (all at or below it) are
    not even formatted; anything above goes to the ``asyncssh`` logger as usual (without
    the channel's number, which a channel's own code never writes at such a level)."""

    def debug1(self, msg: str, *args: Any, **kwargs: Any) -> None:
        pass

    def debug2(self, msg: str, *args: Any, **kwargs: Any) -> None:
        pass

    def packet(self, pktid: int | None, packet: bytes, msg: str, *args: Any, **kwargs: Any) -> None:
        pass

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass


class DirectTCPChannel(SSHChannel[bytes], asyncssh.SSHTCPSession[bytes]):
    """One ``direct-tcpip`` channel; subclasses are its session (see the module's text).

    Call :meth:`open` once after making it; then exactly one of :meth:`channel_opened`
    or :meth:`channel_refused` follows (unless it was given up first: :meth:`close` or
    :meth:`abort` before the confirmation), and :meth:`connection_lost` when the channel
    ends (also when the link is lost while it opens)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, window: int, max_pktsize: int) -> None:
        conn._update_recv_pktlen(max_pktsize)  # as asyncssh's create_tcp_channel does
        if LEAN_INIT:
            self._lean_init(conn, window, max_pktsize)
        else:
            super().__init__(conn, conn._loop, None, "strict", window, max_pktsize)
        self._session = self
        #: The CHANNEL_OPEN is sent, no answer yet.
        self.opening = False
        #: Given up while opening: closed as soon as it is confirmed.
        self.abandoned = False

    def _lean_init(self, conn: asyncssh.SSHClientConnection, window: int, max_pktsize: int) -> None:
        """What asyncssh's ``SSHChannel.__init__`` does for a channel without an encoding
        and with the default write buffer limits (:data:`LEAN_INIT`), in one function:
        the same attributes with the same values, except that the channel's child logger
        is made when something is to be written (:attr:`logger`). asyncssh made it for
        every channel (and ran ``set_encoding``, ``set_write_buffer_limits`` with its
        debug message and ``_pause_resume_writing``, which does nothing at the start);
        the tunnel makes a channel per connection (bench/notes/roundtrip.md)."""
        self._conn = conn
        self._loop = conn._loop
        self._session = None
        self._extra = {"connection": conn}
        self._encoding = None
        self._errors = "strict"
        self._encoder = None
        self._decoder = None
        self._env = {}
        self._str_env = None
        self._command = None
        self._subsystem = None
        self._send_state = "closed"
        self._send_chan = None
        self._send_window = 0
        self._send_pktsize = 0
        self._send_paused = False
        self._send_buf = []
        self._send_buf_len = 0
        self._send_high_water = SEND_HIGH_WATER
        self._send_low_water = SEND_HIGH_WATER // 4
        self._recv_state = "closed"
        self._init_recv_window = window
        self._recv_window = window
        self._recv_pktsize = max_pktsize
        self._recv_paused = "starting"
        self._recv_buf = []
        self._request_queue = []
        self._open_waiter = None
        self._request_waiters = []
        self._close_event = asyncio.Event()
        self._recv_chan = number = conn.add_channel(self)
        self._logger = None  # type: ignore[assignment]
        self._log_parent = conn.logger
        self._log_context = f"chan={number}"
        if self._log_parent.logger.isEnabledFor(logging.DEBUG):  # asyncssh's, from the limits set
            self.logger.debug1(
                "Set write buffer limits: low-water=%d, high-water=%d",
                self._send_low_water,
                self._send_high_water,
            )

    @property
    def logger(self) -> asyncssh.logging.SSHLogger:
        """The channel's logger (asyncssh's ``logger``): its child of the connection's
        logger, made at the first message to be written (:meth:`_lean_init`); while the
        ``asyncssh`` logger writes nothing at the levels a channel writes at, a shared
        one that drops them unformatted (:class:`_Unwritten`)."""
        made: asyncssh.logging.SSHLogger | None = self._logger
        if made is not None:
            return made
        parent = self._log_parent
        # isEnabledFor's own cache of it (False, True, or None: not asked since a change)
        if parent.logger._cache.get(CHANNEL_LOG_MAX) is False:
            return UNWRITTEN
        if not parent.logger.isEnabledFor(CHANNEL_LOG_MAX):
            return UNWRITTEN
        made = self._logger = parent.get_child(context=self._log_context)
        return made

    def _flush_recv_buf(self, exc: Exception | None = None) -> None:
        """asyncssh's ``_flush_recv_buf`` for a channel without an encoding (this one),
        but for one step: the channel's end (``_cleanup``: the owner's
        ``connection_lost``, the channel's number given back) comes at once, where
        asyncssh left it to the loop's next turn (``call_soon``). The end of every
        connection took a turn of the loop of its own: on asyncio a ``Handle`` and often
        a ``select`` more per connection. asyncssh's ``_cleanup`` catches what the
        owner's ``connection_lost`` raises, so nothing reaches the packet being handled;
        the owner (:class:`tunnel.backends.asyncssh_link._Channel`) sends what it held
        and ends the client's side there (it wrote the held data itself before too)."""
        if not INLINE_CLEANUP or self._encoding:
            super()._flush_recv_buf(exc)
            return
        recv_buf = self._recv_buf
        while recv_buf and not self._recv_paused:
            self._deliver_data(*recv_buf.pop(0))
        if recv_buf:
            return
        if self._recv_paused != "starting" and self._recv_state == "eof_pending":
            self._recv_state = "eof"
            session = self._session
            assert session is not None
            if not session.eof_received() and self._send_state == "open":
                self.write_eof()
        if not recv_buf and self._recv_state == "close_pending":
            self._recv_state = "closed"
            self._cleanup(exc)

    # -- the channel's end: asyncssh's, in fewer calls (LEAN_END) ----------------------
    #
    # A tunnel channel ends the same way every time: the client's EOF (write_eof), the
    # gateway's EOF and CLOSE (_process_eof, _process_close, which sends ours), the end
    # (_cleanup). asyncssh's code for it wrote five log messages through the channel's
    # logger (each a property and a call, even with nothing to write), flushed an empty
    # send buffer for the EOF through three calls, and closed through _close_send,
    # detach_x11_listener and remove_channel: ~70 Python lines per connection
    # (bench/notes/roundtrip.md). Here the same states, packets, messages and calls to
    # the session, in that order; a message only formatted and written when the asyncssh
    # logger would write it (as before).

    def write_eof(self) -> None:
        """asyncssh's ``write_eof``; with nothing buffered nor paused, the EOF is sent
        here (asyncssh's ``_flush_send_buf`` with an empty buffer: nothing to resume,
        the EOF sent, the state ``eof``)."""
        if not LEAN_END or self._send_buf or self._send_paused or self._send_state != "open":
            super().write_eof()
            return
        if self._logger is not None or self._log_parent.logger._cache.get(LOG_MAX) is not False:
            self.logger.debug2("Sending EOF")
        self._send_state = "eof_pending"
        self.send_packet(MSG_CHANNEL_EOF)
        self._send_state = "eof"

    def eof_arrived(self) -> None:
        """The gateway's EOF (asyncssh's ``_process_eof`` for a packet with nothing more
        in it: the in-place path hands it over so, ``takes_control``)."""
        if not LEAN_END:
            self._packet_handlers[MSG_CHANNEL_EOF](self, MSG_CHANNEL_EOF, 0, EMPTY)
            return
        if self._recv_state != "open":
            raise asyncssh.ProtocolError("Channel not open for sending")
        if self._logger is not None or self._log_parent.logger._cache.get(LOG_MAX) is not False:
            self.logger.debug2("Received EOF")
        self._recv_state = "eof_pending"
        self._flush_recv_buf()

    def close_arrived(self) -> None:
        """The gateway's CLOSE (asyncssh's ``_process_close`` and ``_close_send`` for a
        packet with nothing more in it, with the patch
        :func:`tunnel.backends.asyncssh_patches._keep_held_eof`: an EOF held back is told
        to the session first)."""
        if not LEAN_END:
            self._packet_handlers[MSG_CHANNEL_CLOSE](self, MSG_CHANNEL_CLOSE, 0, EMPTY)
            return
        state = self._recv_state
        if state == "eof_pending":
            held = getattr(self._session, "eof_held", None)
            if held is not None:
                held()
        if state not in ("open", "eof_pending", "eof"):
            raise asyncssh.ProtocolError("Channel not open")
        if self._logger is not None or self._log_parent.logger._cache.get(LOG_MAX) is not False:
            self.logger.info("Received channel close")
        self._send_buf = []
        self._send_buf_len = 0
        if self._send_state != "closed":
            self.send_packet(MSG_CHANNEL_CLOSE)
            self._send_chan = None
            self._send_state = "closed"
        self._recv_state = "close_pending"
        self._flush_recv_buf()

    def _cleanup(self, exc: Exception | None = None) -> None:
        """asyncssh's ``_cleanup`` for a channel with no open or request waiting (a
        tunnel channel's end in the steady state): the session told, the close event
        set, the channel's number given back."""
        if not LEAN_END or self._open_waiter or self._request_waiters:
            super()._cleanup(exc)
            return
        session = self._session
        if session is not None:
            try:
                session.connection_lost(exc)
            except Exception:
                self.logger.debug1("Uncaught exception in session ignored", exc_info=sys.exc_info)
            self._session = None
        self._close_event.set()
        conn = self._conn
        if conn:
            if self._logger is not None or self._log_parent.logger._cache.get(LOG_MAX) is not False:
                self.logger.info("Channel closed%s", ": " + str(exc) if exc else "")
            conn.detach_x11_listener(self)
            assert self._recv_chan is not None
            del conn._channels[self._recv_chan]  # asyncssh's remove_channel
            self._send_chan = None
            self._recv_chan = None
            self._conn = None

    def open(self, host: str, port: int, orig_host: str, orig_port: int) -> None:
        """Send the CHANNEL_OPEN (RFC 4254 §7.2), now."""
        conn = self._conn
        assert conn is not None and self._recv_chan is not None
        self.opening = True
        target = host.encode()
        origin = orig_host.encode()
        payload = b"".join(
            (
                OPEN_TYPE,
                OPEN_NUMBERS.pack(self._recv_chan, self._recv_window, self._recv_pktsize),
                _string(target),
                UINT32.pack(port),
                _string(origin),
                UINT32.pack(orig_port),
            )
        )
        if not asyncssh_patches.send_sealed(conn, MSG_CHANNEL_OPEN, payload):
            conn.send_packet(MSG_CHANNEL_OPEN, payload, handler=self)

    def send_packet(self, pkttype: int, *args: bytes) -> None:
        """asyncssh's, but sealed here in the steady state (EOF, CLOSE, WINDOW_ADJUST:
        :func:`tunnel.backends.asyncssh_patches.send_sealed`)."""
        if self._send_chan is None:
            return
        if not asyncssh_patches.send_sealed(
            self._conn, pkttype, UINT32.pack(self._send_chan), *args
        ):
            super().send_packet(pkttype, *args)

    # -- asyncssh's connection calls these ------------------------------------------

    def process_open_confirmation(
        self, send_chan: int, send_window: int, send_pktsize: int, packet: Any
    ) -> None:
        packet.check_end()  # a direct-tcpip confirmation carries nothing more
        self.confirmed(send_chan, send_window, send_pktsize)

    takes_control = True
    """The in-place receive path may hand this channel's open confirmation, EOF and CLOSE
    over without asyncssh's packet object (:mod:`tunnel.backends.asyncssh_patches`):
    :meth:`confirmed` and asyncssh's own EOF and CLOSE handlers with an empty packet."""

    def confirmed(self, send_chan: int, send_window: int, send_pktsize: int) -> None:
        """The gateway's OPEN_CONFIRMATION, its numbers read."""
        if not self.opening:
            raise asyncssh.ProtocolError("Channel not being opened")
        self.opening = False
        self._send_chan = send_chan
        self._send_window = send_window
        self._send_pktsize = send_pktsize
        self._send_state = "open"
        self._recv_state = "open"
        self._recv_paused = False
        if self.abandoned:
            self.abort()  # CLOSE now; asyncssh ends the channel on the gateway's CLOSE
            return
        self.channel_opened()

    def process_open_failure(self, code: int, reason: str, lang: str) -> None:
        if not self.opening:
            raise asyncssh.ProtocolError("Channel not being opened")
        self.opening = False
        self._session = None  # refused: no connection_lost follows
        if not self.abandoned:
            self.channel_refused(code, reason)
        self._loop.call_soon(self._cleanup)

    def close(self) -> None:
        if self.opening:
            self.abandoned = True
            return
        super().close()

    def abort(self) -> None:
        if self.opening:
            self.abandoned = True
            return
        super().abort()

    # -- the owner's ---------------------------------------------------------------

    def channel_opened(self) -> None:
        """The gateway confirmed the channel: it is open and reading."""

    def channel_refused(self, code: int, reason: str) -> None:
        """The gateway refused the channel (``code``: RFC 4254 §5.1)."""

    def data_received(self, data: bytes, datatype: Any) -> None:
        """Data from the target (asyncssh's session call)."""

    def eof_received(self) -> bool:
        """The target's EOF; False: asyncssh sends ours back (RFC 4254 §5.3)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel ended (``exc``: the link was lost)."""

    def pause_writing(self) -> None:
        """asyncssh's send buffer is over its high-water mark."""

    def resume_writing(self) -> None:
        """asyncssh's send buffer drained to its low-water mark."""


UNWRITTEN = _Unwritten()
"""The one :class:`_Unwritten` logger (no context: it writes only what is above a
channel's own levels)."""
