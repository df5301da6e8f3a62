"""UDP queries in batches: ``recvmmsg`` / ``sendmmsg`` on the listener's own socket (Linux).

At full rate the resolver's time per query is mostly the event loop's and the kernel's,
not the engine's: the datagram transport makes a system call per datagram each way (and
one more per wake-up that finds the queue empty), builds an address tuple per datagram
and parses it back for every reply (issue #18). Here one ``recvmmsg`` reads up to
:data:`BATCH` queued datagrams per wake-up into preallocated slots, and one ``sendmmsg``
sends every reply the batch produced, each to the raw socket address its query came
from: no address is ever turned into a tuple on the way, and the client's address as
text (what views are chosen by) is looked up from its raw bytes.

:class:`BatchReader` is driven by ``loop.add_reader`` (level-triggered: a queue that still
holds datagrams after a batch wakes the loop again, so each socket's turn is bounded and
the steered priority socket is read every loop iteration, as :mod:`~blitzdns.dns.steer`
needs). A forwarded query's reply, which comes later, is queued in the same send slots
and goes out with the next batch's or at the end of the loop iteration, together with
the other replies that came meanwhile; only a reply larger than a slot goes out alone
with the socket's plain ``sendto``.

At a fixed, fast rate (20,000 queries/s, say) with the loop mostly idle, each query is a
wake-up of its own, and the wake-up (the kernel's schedule-in, epoll, the loop's dispatch,
a Python call, two system calls) costs more than answering it. :class:`Linger` shares
wake-ups the way a network card's interrupt moderation (NAPI) does: only while the
observed arrival rate is high and the thread is mostly idle, the loop pauses a bounded
:data:`LINGER_S` after a wake-up before it polls again, so the queries that came
meanwhile are read and answered by one batch. Below the rate, or when the thread is busy
(a pause would only lose time), there is no pause: a query is answered as it comes.

The forwarder's upstream sockets are read the same way (:class:`Drain`): at the full miss
rate their replies come faster than the loop turns, and one ``recvmmsg`` takes all that
queued on a socket (bench/notes/dns.md).

The functions come from the C library through :mod:`ctypes`; :func:`available` says
whether they (and the structure layout this module builds on) are there. Elsewhere the
resolver keeps the event loop's datagram transport.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from blitzdns.dns.stats import ResolverStats

#: Datagrams read per wake-up (and replies sent per ``sendmmsg``), as libuv's 32 reads.
BATCH = 32
#: The largest query taken (RFC 6891 leaves the size to the client; real ones are < 1 KiB).
#: A longer datagram is dropped and counted (``stats.oversized``): the slot could not
#: hold all of it.
MAX_QUERY = 4096
#: A slot is one byte longer, so a datagram that fills it is known to be too long.
_SLOT = MAX_QUERY + 1
#: Replies larger than this go out with a plain ``sendto`` rather than through a slot.
_SEND_SLOT = 4096
#: Client addresses remembered as text (their raw bytes -> str); cleared when full.
_CLIENTS_MAX = 4096


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


_MMSG = ctypes.sizeof(_Mmsghdr)
_IOV = ctypes.sizeof(_Iovec)
#: ``msg_len`` as an index into the header array read as 32-bit words.
_LEN_WORD = _Mmsghdr.len.offset // 4
_WORDS = _MMSG // 4
#: ``msg_name`` as an index into the header array read as 64-bit words.
_NAME_QWORD = _Msghdr.name.offset // 8
_QWORDS = _MMSG // 8
#: Room for a ``sockaddr_in6`` (28 bytes, 7 words) per slot.
_NAME = 28
_NAME_WORDS = _NAME // 4
#: ``MSG_DONTWAIT`` as a plain int (the socket module's is an enum member: slower to pass).
_DONTWAIT = int(socket.MSG_DONTWAIT)

#: The pause after a wake-up while :class:`Linger` is on (the kernel adds its timer slack,
#: 50 µs by default, at most): no query waits longer than this for its batch, plus the
#: loop iteration's other work.
LINGER_S = 0.0002
#: Datagrams per second (all listeners together) from which wake-ups are shared.
LINGER_RATE = 5000
#: ... as long as the thread was busy for less than this share of the time: a loop that
#: is busy anyway reads what queued meanwhile at its next poll, and a pause only loses time.
LINGER_BUSY = 0.5
#: How often the rate and the busy share are looked at (seconds of the loop's clock).
LINGER_WINDOW_S = 0.01
#: While pausing, one window in this many does not pause: a probe of the thread's busy
#: share (a pausing window's own share says nothing: its pauses take the time the thread
#: would have been idle, so it looks busy; judged by it, pausing stopped every other
#: window). A loop that got busy meanwhile (a tunnel's traffic) stops pausing at the
#: next probe, within this many windows.
LINGER_PROBE_EVERY = 10


def _libc() -> Any | None:
    if sys.platform != "linux" or ctypes.sizeof(ctypes.c_void_p) != 8 or _MMSG % 8:
        return None
    try:
        # PyDLL: the GIL is kept through the call (CDLL would drop and take it again
        # each time); every call here is non-blocking (MSG_DONTWAIT), so none waits.
        libc = ctypes.PyDLL(None, use_errno=True)
        functions = (libc.recvmmsg, libc.sendmmsg, libc.sendto)
    except (OSError, AttributeError):
        return None
    # No ``argtypes``: converting each argument through them costs more than the system
    # call (callgrind: ~4k instructions a call, issue #18). The callers pass what converts
    # by itself: ints for the C ints (the descriptor, counts, flags), a ctypes object for
    # the header array's address, None for the NULL timeout.
    for function in functions:
        function.restype = ctypes.c_ssize_t if function is libc.sendto else ctypes.c_int
    return libc


_LIBC = _libc()


def available() -> bool:
    """Whether batched UDP I/O works here (Linux, 64-bit, a C library with both calls)."""
    return _LIBC is not None and os.environ.get("BLITZDNS_NO_BATCH_IO") is None


class _Buffers:
    """``BATCH`` slots of bytes, the socket addresses and the message headers pointing at them."""

    def __init__(self, slot: int, namelen: int) -> None:
        # Anonymous memory: the pages of slots no datagram ever used stay unallocated.
        self.data = mmap.mmap(-1, BATCH * slot)
        self.names = bytearray(BATCH * _NAME)
        self.iovecs = (_Iovec * BATCH)()
        self.headers = (_Mmsghdr * BATCH)()
        data = ctypes.addressof((ctypes.c_char * len(self.data)).from_buffer(self.data))
        self.names_at = ctypes.addressof((ctypes.c_char * len(self.names)).from_buffer(self.names))
        self.name_words = memoryview(self.names).cast("I")
        self.names_view = memoryview(self.names)
        for i in range(BATCH):
            self.iovecs[i].base = data + i * slot
            self.iovecs[i].len = slot
            header = self.headers[i].hdr
            header.name = self.names_at + i * _NAME
            header.namelen = namelen
            header.iov = ctypes.addressof(self.iovecs[i])
            header.iovlen = 1
        self.at = ctypes.addressof(self.headers)
        #: The header array's address as an argument (see :func:`_libc`).
        self.pointer = ctypes.c_void_p(self.at)
        self.words = memoryview(self.headers).cast("B").cast("I")
        self.qwords = memoryview(self.headers).cast("B").cast("Q")
        self.lengths = memoryview(self.iovecs).cast("B").cast("Q")


class Drain:
    """Reads what a connected UDP socket holds: up to :data:`BATCH` queued datagrams per
    ``recvmmsg`` (the forwarder's upstream sockets, :mod:`~blitzdns.dns.upstream`).

    One per event loop's forwarder: :meth:`read` copies each datagram out of the shared
    slots before it returns. A slot holds ``slot`` bytes, as ``recv(slot)`` would take.
    """

    def __init__(self, slot: int) -> None:
        assert _LIBC is not None
        self._recvmmsg = _LIBC.recvmmsg
        self.slot = slot
        self._buffers = buffers = _Buffers(slot, 0)
        for i in range(BATCH):
            # A connected socket's sender is its peer (the kernel drops the rest): no
            # address to copy.
            buffers.headers[i].hdr.name = None
        self._pointer = buffers.pointer
        self._words = buffers.words
        self._data = buffers.data
        #: The most datagrams one read took (the tests look whether batches happen).
        self.largest = 0

    def read(self, fd: int) -> list[bytes]:
        """The datagrams queued on ``fd`` (none: an empty list); OSError for an error the
        socket reports (an ICMP unreachable about an earlier datagram, say)."""
        count = self._recvmmsg(fd, self._pointer, BATCH, _DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(code, os.strerror(code))
        self.largest = max(self.largest, count)
        slot, words, data = self.slot, self._words, self._data
        return [data[i * slot : i * slot + words[i * _WORDS + _LEN_WORD]] for i in range(count)]


class Linger:
    """Wake-up coalescing for the readers of one resolver (see the module docstring).

    Each reader reports every wake-up that read datagrams (:meth:`woke`). Once per
    :data:`LINGER_WINDOW_S` of the loop's clock the rate and the thread's CPU share over
    the window decide whether the next window pauses. While it does, a wake-up that read
    less than a full batch schedules one pause per loop iteration, run among the loop's
    ready callbacks, just before it polls again: queued forwarded replies are sent first,
    then the thread sleeps ``delay``. The steered priority socket keeps its own queue in
    the kernel (nothing is dropped for it) and is read at the next poll as before: a
    protected query waits ``delay`` at most more than it did.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        delay: float = LINGER_S,
        rate: float = LINGER_RATE,
        busy: float = LINGER_BUSY,
        window: float = LINGER_WINDOW_S,
        probe_every: int = LINGER_PROBE_EVERY,
        sleep: Callable[[float], None] = time.sleep,
        cpu: Callable[[], float] = time.thread_time,
    ) -> None:
        self._loop = loop
        self.delay = delay
        self.rate = rate
        self.busy = busy
        self.window = window
        self.probe_every = probe_every
        self._sleep = sleep
        self._cpu = cpu
        #: Whether this window pauses.
        self.on = False
        #: Pauses taken (the tests look whether they happen).
        self.pauses = 0
        self._due = False
        self._count = 0
        #: Pausing windows in a row since the last probe.
        self._paused_windows = 0
        self._start = -1.0
        self._end = -1.0
        self._cpu_start = 0.0
        #: Seconds paused in this window: not idle time (see :meth:`_decide`).
        self._slept = 0.0
        self.readers: list[BatchReader] = []

    def woke(self, count: int, now: float) -> None:
        """A reader's wake-up read ``count`` datagrams at ``now`` (the loop's clock)."""
        self._count += count
        if now >= self._end:
            self._decide(now)
        if self.on and not self._due and count < BATCH:
            self._due = True
            self._loop.call_soon(self._pause)

    def _decide(self, now: float) -> None:
        cpu = self._cpu()
        span = now - self._start
        fast = self._start >= 0 and span > 0 and self._count >= self.rate * span
        if self.on:
            # A pausing window's busy share says nothing (see LINGER_PROBE_EVERY): it
            # pauses on while the rate holds, up to the next probe window.
            self._paused_windows += 1
            self.on = fast and self._paused_windows < self.probe_every
        else:
            # The thread's share is of the time it was not paused: counted as idle, pauses
            # (one spilling over from the window before) would look like idle time.
            awake = span - self._slept
            self.on = fast and cpu - self._cpu_start < self.busy * awake
            self._paused_windows = 0
        self._count = 0
        self._slept = 0.0
        self._start = now
        self._end = now + self.window
        self._cpu_start = cpu

    def _pause(self) -> None:
        self._due = False
        for reader in self.readers:
            reader.flush()
        self.pauses += 1
        self._slept += self.delay
        self._sleep(self.delay)


class BatchReader:
    """Reads one UDP socket in batches and answers what the engine answers at once.

    ``handle(packet, client, now)`` is the engine's; its ``bytes`` results are sent in
    the batch's ``sendmmsg``. Any other result goes to ``other(result, packet, client,
    address, reader)`` (a forwarding job, nothing to send, an exception), whose return
    value, if bytes, is sent too. ``address`` there is the client's raw socket address,
    and the reader stands in for a datagram transport: :meth:`sendto` to that address
    queues a reply for the next ``sendmmsg``, at the end of the loop iteration at the
    latest.
    """

    def __init__(
        self,
        sock: socket.socket,
        handle: Callable[[bytes, str, float], Any],
        other: Callable[[object, bytes, str, bytes, BatchReader], bytes | None],
        clock: Callable[[], float],
        log: logging.Logger,
        stats: ResolverStats,
        *,
        steered: bool = False,
        linger: Linger | None = None,
    ) -> None:
        assert _LIBC is not None
        self._recvmmsg = _LIBC.recvmmsg
        self._sendmmsg = _LIBC.sendmmsg
        self._sendto = _LIBC.sendto
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.handle = handle
        self.other = other
        self.clock = clock
        self.log = log
        self.stats = stats
        #: The steered priority socket's (:mod:`~blitzdns.dns.steer`): counted as such.
        self.steered = steered
        #: The resolver's wake-up coalescing, told of every wake-up that read datagrams.
        self.linger = linger
        if linger is not None:
            linger.readers.append(self)
        #: The most datagrams one wake-up read (the tests look whether batches happen).
        self.largest_batch = 0
        namelen = 16 if sock.family == socket.AF_INET else _NAME
        self._in = _Buffers(_SLOT, namelen)
        self._out = _Buffers(_SEND_SLOT, namelen)
        self._clients: dict[int | bytes, str] = {}
        self._v4 = sock.family == socket.AF_INET
        #: The first slot's sender address, as an argument (:func:`_libc`).
        self._name0 = ctypes.c_void_p(self._in.names_at)
        #: The sender's address is ``namelen`` bytes of its slot (``sockaddr_in``/``_in6``).
        self.namelen = namelen
        #: Replies waiting in the send slots (:meth:`sendto`) for the next ``sendmmsg``.
        self._queued = 0
        self._loop = asyncio.get_running_loop()
        self.closed = False
        inb, out = self._in, self._out
        #: What :meth:`sendto` needs (once per forwarded query's reply), in one tuple.
        self._out_hot = (out.data, out.lengths, out.names, out.qwords, out.names_at)
        self._hot = (
            inb.words,
            inb.data,
            inb.name_words,
            inb.names_view,
            namelen,
            out.data,
            out.qwords,
            out.lengths,
            inb.names_at,
            self._clients,
            handle,
            self._v4,
            linger,
        )

    # The per-datagram work is all in ``readable`` and ``_batch``, kept in locals: at full
    # rate this loop is most of the Python a query costs; at a low rate, each wake-up finds
    # one datagram, answered in ``readable`` itself with one ``sendto`` (issue #18).
    def readable(self) -> None:
        """Read one batch (the loop's reader callback) and send the replies it made."""
        inb = self._in
        count = self._recvmmsg(self.fd, inb.pointer, BATCH, _DONTWAIT, None)
        if count != 1:
            if count > 1:
                self._batch(count)
            elif count < 0:
                self._read_error(ctypes.get_errno())
            return
        now = self.clock()
        if self.linger is not None:
            self.linger.woke(1, now)
        if self.steered:
            self.stats.steered += 1
        size = inb.words[_LEN_WORD]
        if size > MAX_QUERY:
            self.stats.oversized += 1
            return
        packet = inb.data[:size]
        raw: int | bytes = inb.name_words[1] if self._v4 else inb.names_view[8:24].tobytes()
        client = self._clients.get(raw) or self._client(raw, 0)
        try:
            reply = self.handle(packet, client, now)
        except Exception as exc:  # ``other`` logs it, with its traceback
            reply = exc
        if reply.__class__ is not bytes:
            address = inb.names_view[: self.namelen].tobytes()
            reply = self.other(reply, packet, client, address, self)
            if reply is None:
                return
        if self._sendto(self.fd, reply, len(reply), _DONTWAIT, self._name0, self.namelen) < 0:
            self._unsent(1, ctypes.get_errno())

    def _batch(self, count: int) -> None:
        """Answer the ``count`` (> 1) datagrams one ``recvmmsg`` read."""
        if self.steered:
            self.stats.steered += count
        self.largest_batch = max(self.largest_batch, count)
        # One tuple for what every batch needs.
        (
            words,
            data,
            name_words,
            names,
            namelen,
            out_data,
            out_names,
            out_lengths,
            names_at,
            clients,
            handle,
            v4,
            linger,
        ) = self._hot
        now = self.clock()
        if linger is not None:
            linger.woke(count, now)
        sending = self._queued
        for i in range(count):
            size = words[i * _WORDS + _LEN_WORD]
            if size > MAX_QUERY:
                self.stats.oversized += 1
                continue
            start = i * _SLOT
            packet = data[start : start + size]
            at = i * _NAME
            # The client's address as a key: IPv4's as one 32-bit word.
            raw: int | bytes = (
                name_words[i * _NAME_WORDS + 1] if v4 else names[at + 8 : at + 24].tobytes()
            )
            client = clients.get(raw)
            if client is None:
                client = self._client(raw, i)
            try:
                reply = handle(packet, client, now)
            except Exception as exc:  # ``other`` logs it, with its traceback
                reply = exc
            if reply.__class__ is not bytes:
                # Rare at full rate (misses, drops, errors): may queue replies (``sendto``).
                self._queued = sending
                reply = self.other(reply, packet, client, names[at : at + namelen].tobytes(), self)
                sending = self._queued
                if reply is None:
                    continue
            size = len(reply)
            if size > _SEND_SLOT:
                self._send_one(reply, names[at : at + namelen].tobytes())
                continue
            start = sending * _SEND_SLOT
            out_data[start : start + size] = reply
            out_lengths[sending * 2 + 1] = size
            out_names[sending * _QWORDS + _NAME_QWORD] = names_at + at
            sending += 1
            if sending == BATCH:
                self._send(sending)
                sending = 0
        self._queued = 0
        if sending:
            self._send(sending)

    def sendto(self, data: bytes, address: bytes) -> None:
        """Send ``data`` to ``address`` (raw, as ``other`` got it) with the next batch.

        Queued, and sent at the end of this loop iteration at the latest (with the replies
        of the next batch read, or alone): forwarded queries' replies, which come one by
        one from the upstreams' sockets, go out together too.
        """
        if self.closed:
            return
        size = len(data)
        if size > _SEND_SLOT:
            self._send_one(data, address)
            return
        slots, lengths, names, qwords, names_at = self._out_hot
        k = self._queued
        start = k * _SEND_SLOT
        slots[start : start + size] = data
        lengths[k * 2 + 1] = size
        at = k * _NAME
        names[at : at + len(address)] = address
        qwords[k * _QWORDS + _NAME_QWORD] = names_at + at
        self._queued = k + 1
        if k + 1 == BATCH:
            self.flush()
        elif k == 0:
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the replies queued by :meth:`sendto` now."""
        queued, self._queued = self._queued, 0
        if queued and not self.closed:
            self._send(queued)

    def _send(self, count: int) -> None:
        sent = 0
        out = self._out
        while sent < count:
            at = out.pointer if sent == 0 else ctypes.c_void_p(out.at + sent * _MMSG)
            done = self._sendmmsg(self.fd, at, count - sent, _DONTWAIT)
            if done < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                # A full send buffer refuses the rest of the batch too: all of it counted.
                lost = count - sent if code in (errno.EAGAIN, errno.ENOBUFS) else 1
                self._unsent(lost, code)
                sent += lost
            else:
                sent += done

    def _unsent(self, lost: int, code: int) -> None:
        """As the datagram transport does: an unsent reply is dropped and logged."""
        self.stats.unsent += lost
        self.log.debug("%d UDP replies not sent: %s", lost, os.strerror(code))

    def _send_one(self, data: bytes, address: bytes) -> None:
        """A reply too large for a slot, sent at once with the socket's ``sendto``."""
        try:
            self.sock.sendto(data, _address(self.family, address))
        except OSError as exc:
            self.stats.unsent += 1
            self.log.debug("UDP reply not sent: %s", exc)

    def _read_error(self, code: int) -> None:
        if code not in (errno.EAGAIN, errno.EINTR):
            # ICMP errors about earlier replies and the like: reported once, then gone.
            self.log.debug("UDP error (an earlier reply was not delivered): %s", os.strerror(code))

    def _client(self, raw: int | bytes, i: int) -> str:
        if len(self._clients) >= _CLIENTS_MAX:
            self._clients.clear()
        at = i * _NAME
        text: str = _address(self.family, bytes(self._in.names[at : at + _NAME]))[0]
        self._clients[raw] = text
        return text

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _address(family: int, raw: bytes) -> tuple[Any, ...]:
    """A raw ``sockaddr_in`` / ``sockaddr_in6`` as a tuple, as a datagram transport gives it."""
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    flowinfo = int.from_bytes(raw[4:8], "big")
    scope = int.from_bytes(raw[24:28], sys.byteorder)
    return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope)
