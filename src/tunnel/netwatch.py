"""Network-change and resume events: netlink on Linux, a cheap poll elsewhere.

:class:`NetWatch` keeps the current :class:`~tunnel.netview.NetView` and calls
``on_change(NetChange)`` when it moves or when this process resumes after a sleep or a
pause. What a change means for the link is :func:`tunnel.netview.judge`'s business.

On Linux a netlink socket joined to the link, address and route groups says *that*
something changed; the watcher then waits ``settle_s`` (a network switch is a burst of
messages) and reads the whole view again with two dumps and one route lookup. Reading
rather than applying each message keeps one code path for the first view, every change,
and a receive buffer that overflowed while the process was stopped (``ENOBUFS``).

Elsewhere, every ``tick_s`` it asks the kernel which source address it would use toward
the followed gateway (``connect()`` on a UDP socket: no packet leaves). Addresses and
default routes are then unknown, so the verdicts rest on that one route.

Either way a tick every ``tick_s`` checks the clocks for a resume
(:class:`~tunnel.netview.ResumeClock`: ``CLOCK_BOOTTIME`` against ``CLOCK_MONOTONIC`` on
Linux; the wall clock against the monotonic one elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import select
import socket
import sys
import time
from collections.abc import Callable

from tunnel import netlink
from tunnel.netview import NetChange, NetView, Resume, ResumeClock, Route, plain_address

log = logging.getLogger("tunnel.netwatch")

TICK_S = 1.0
"""How often the clocks are read (and, without netlink, the route polled)."""
SETTLE_S = 0.02
"""After a netlink message, how long to wait for the rest of its burst before reading."""
QUERY_TIMEOUT_S = 1.0
RECEIVE_BUFFER = 1 << 20


def _clocks() -> tuple[float, float]:
    """(a clock that stops in sleep, one that does not)."""
    if sys.platform.startswith("linux"):
        return time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic(), time.time()


class NetlinkReader:
    """Reads views through rtnetlink: address and route dumps, one route lookup."""

    def __init__(self) -> None:
        self._socket = socket.socket(
            socket.AF_NETLINK,  # type: ignore[attr-defined,unused-ignore]
            socket.SOCK_RAW | socket.SOCK_CLOEXEC,
            0,  # NETLINK_ROUTE
        )
        self._socket.settimeout(QUERY_TIMEOUT_S)
        self._socket.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._socket.close()

    def _ask(self, request: bytes, *, dump: bool) -> list[netlink.Message]:
        """Send one request; its answers until ``NLMSG_DONE`` (a dump) or the first one."""
        seq = netlink.sequence_of(request)
        self._socket.send(request)
        answers: list[netlink.Message] = []
        while True:
            for message in netlink.messages(self._socket.recv(1 << 16)):
                if message.seq != seq:
                    continue  # the late answer of a request that timed out
                if message.type == netlink.NLMSG_DONE:
                    return answers
                if message.type == netlink.NLMSG_ERROR:
                    code = netlink.error_code(message)
                    if code:
                        raise netlink.NetlinkError(errno.errorcode.get(code, str(code)), code)
                    return answers
                answers.append(message)
                if not dump:
                    return answers

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def read(self, peer: str | None) -> NetView:
        names = dict(socket.if_nameindex())
        addresses = [
            address
            for m in self._ask(netlink.dump_addresses(self._next()), dump=True)
            if m.type == netlink.RTM_NEWADDR and (address := netlink.parse_address(m.body))
        ]
        routes = [
            route
            for m in self._ask(netlink.dump_routes(self._next()), dump=True)
            if m.type == netlink.RTM_NEWROUTE and (route := netlink.parse_route(m.body))
        ]
        peer_route = None
        if peer is not None:
            try:
                found = self._ask(netlink.get_route(self._next(), peer), dump=False)
            except netlink.NetlinkError as exc:
                if exc.errno not in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    raise
                found = []
            if found and found[0].type == netlink.RTM_NEWROUTE:
                peer_route = netlink.parse_route(found[0].body)
        return netlink.view(addresses, routes, names, peer, peer_route)


class PollReader:
    """Reads what any platform tells cheaply: the source address toward the gateway."""

    def close(self) -> None:
        pass

    def read(self, peer: str | None) -> NetView:
        if peer is None:
            return NetView()
        family = socket.AF_INET6 if ipaddress.ip_address(peer).version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((peer, 9))  # UDP: picks the route, sends nothing
                source = str(probe.getsockname()[0]).split("%", 1)[0]
        except OSError:
            return NetView(peer=peer)
        return NetView(peer=peer, peer_route=Route(None, None, source))


class NetWatch:
    """Calls ``on_change`` (synchronously, in the loop) for every change of the view and
    every resume. Use: ``await start()``, :meth:`follow` the gateway's address while a link
    is up, ``close()``."""

    def __init__(
        self,
        on_change: Callable[[NetChange], None],
        *,
        on_settled: Callable[[], None] | None = None,
        use_netlink: bool | None = None,
        tick_s: float = TICK_S,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._on_change = on_change
        self._on_settled = on_settled
        self._use_netlink = sys.platform.startswith("linux") if use_netlink is None else use_netlink
        self._tick_s = tick_s
        self._settle_s = settle_s
        self._resume_clock = ResumeClock(tick_s)
        self._reader: NetlinkReader | PollReader | None = None
        self._events: socket.socket | None = None
        #: The events socket alone in an epoll set: :meth:`pending` asks it, no ``recv``.
        self._waiting: select.epoll | None = None
        self._peer: str | None = None
        self._view = NetView()
        self._read_handle: asyncio.TimerHandle | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False

    @property
    def view(self) -> NetView:
        return self._view

    @property
    def mode(self) -> str:
        """ "netlink" or "poll" once started."""
        return "netlink" if isinstance(self._reader, NetlinkReader) else "poll"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._use_netlink:
            try:
                self._events = self._subscribe()
                self._reader = NetlinkReader()
            except OSError as exc:
                log.info("netlink unavailable (%s); polling the route instead", exc)
                if self._events is not None:
                    self._loop.remove_reader(self._events.fileno())
                    self._events.close()
                    self._events = None
                if self._waiting is not None:
                    self._waiting.close()
                    self._waiting = None
        if self._reader is None:
            self._reader = PollReader()
        self._view = self._read() or NetView()
        self._resume_clock.tick(*_clocks())
        self._tick_handle = self._loop.call_later(self._tick_s, self._tick)

    def _subscribe(self) -> socket.socket:
        assert self._loop is not None
        events = socket.socket(
            socket.AF_NETLINK,  # type: ignore[attr-defined,unused-ignore]
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            0,
        )
        try:
            with contextlib.suppress(OSError):
                events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            events.bind((0, netlink.WATCH_GROUPS))
            self._waiting = select.epoll()
            self._waiting.register(events.fileno(), select.EPOLLIN)
            self._loop.add_reader(events.fileno(), self._readable)
        except OSError:
            events.close()
            if self._waiting is not None:
                self._waiting.close()
                self._waiting = None
            raise
        return events

    def follow(self, peer: str | None) -> None:
        """Follow the route to ``peer`` (the link's gateway address), or none; reads at once."""
        self._peer = plain_address(peer) if peer is not None else None
        if self._reader is not None:
            self._refresh()

    def close(self) -> None:
        for handle in (self._read_handle, self._tick_handle):
            if handle is not None:
                handle.cancel()
        self._read_handle = self._tick_handle = None
        if self._events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._events.fileno())
            self._events.close()
            self._events = None
        if self._waiting is not None:
            self._waiting.close()
            self._waiting = None
        if self._reader is not None:
            self._reader.close()

    # --- the loop side ------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether a change may have happened that is not read yet: a netlink message came
        (this asks the kernel now, so that a change it made before a connection was
        accepted is seen before that connection is handed to the link). Called for every
        connection: one ``epoll_wait`` with no timeout on the events socket alone, which
        is read only when something waits there (an error such as ``ENOBUFS`` counts)."""
        waiting = self._waiting
        if waiting is not None and waiting.poll(0, 1):
            self._drain()
        return self._read_handle is not None

    def _readable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        assert self._events is not None and self._loop is not None
        came = False
        while True:
            try:
                came = bool(self._events.recv(1 << 16)) or came
            except BlockingIOError:
                break
            except OSError as exc:
                came = True  # ENOBUFS: overflowed while stopped; read it all anew
                if exc.errno != errno.ENOBUFS:
                    log.warning("netlink: %s", exc)
                    break
        if came and self._read_handle is None:
            self._read_handle = self._loop.call_later(self._settle_s, self._refresh)

    def _tick(self) -> None:
        assert self._loop is not None
        self._tick_handle = self._loop.call_later(self._tick_s, self._tick)
        if isinstance(self._reader, PollReader):
            self._refresh()
            return
        resume = self._resume_clock.tick(*_clocks())
        if resume is not None:
            self._refresh(resume)

    def _read(self) -> NetView | None:
        assert self._reader is not None
        try:
            view = self._reader.read(self._peer)
        except (OSError, netlink.NetlinkError) as exc:
            if not self._failing:
                log.warning("cannot read the network's state: %s", exc)
            self._failing = True
            return None
        self._failing = False
        return view

    def _refresh(self, resume: Resume | None = None) -> None:
        """Read the view; report it if it changed or the process resumed."""
        if self._read_handle is not None:
            self._read_handle.cancel()  # read now, not again when the settle ends
            self._read_handle = None
        if resume is None:
            resume = self._resume_clock.tick(*_clocks())
        after = self._read()
        if after is not None:
            before, self._view = self._view, after
            if after != before or resume is not None:
                self._call(self._on_change, NetChange(before, after, resume))
        if self._on_settled is not None:
            self._call(self._on_settled)

    @staticmethod
    def _call(callback: Callable[..., None], *args: object) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("network-watch callback %r failed", callback)
