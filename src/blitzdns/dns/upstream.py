"""Asking the upstream resolvers: random port and ID, strict reply checks, TCP retry, failover.

Each attempt goes out on a UDP socket connected to one upstream, chosen at random from a
bounded pool (:class:`SocketPool`, like dnsmasq's random-port sockets): the kernel gave
each a random ephemeral source port, and drops datagrams from any other address or port;
the message gets a fresh random ID every time (:class:`RandomBits`: the operating
system's CSPRNG, as ``secrets`` uses, read in blocks rather than one system call per
draw). A datagram is accepted only when it carries the ID of a query waiting on that
socket, the QR bit and the same question
(:func:`~blitzdns.dns.fastpath.answers_question`; dnspython's ``query.py`` and unbound
check the same) — anything else, a late reply to an earlier query included, is counted
and ignored, and the wait goes on. Together that is the spoofing resistance of dnsmasq
and unbound: an off-path attacker must guess the port and 16 bits of ID in the window.

The pool bounds the descriptors forwarding uses (per upstream, whatever the load), and
reusing sockets saves three system calls per query. When the process is out of
descriptors anyway (EMFILE / ENFILE), the failure is local, not the upstream's: it is
reported through ``on_local_error`` and the upstream's health is left alone.

A truncated reply (TC, RFC 1035 §4.2.1) is asked again over TCP (RFC 7766 §5). Upstreams
are tried healthiest first; with a single upstream the query is retransmitted once. The
whole exchange is bounded by ``timeout_s``: a dead upstream means SERVFAIL in time.

An exchange (:class:`Exchange`) is callbacks on the event loop, not a task: the reply's
datagram, or the attempt's deadline, moves it on, and its end calls the caller's function
(:meth:`Forwarder.ask`; :meth:`Forwarder.start` wraps it in a future). A forwarded miss is
the resolver's most expensive case (issue #18): a task with a timeout context per query
cost more than the rest of the exchange together, and a future with its done callbacks,
or a loop timer per attempt, cost several microseconds each. So attempts' deadlines are
rounded up to :data:`DEADLINE_TICK` and the attempts due alike share one loop timer
(:meth:`Exchange.next_attempt`). Only the rare TCP retry runs as a task.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Iterator, Sequence

from blitzdns.config import Endpoint
from blitzdns.dns import batchio
from blitzdns.dns.fastpath import answers, answers_question, question_of
from blitzdns.dns.rfc import MAX_MESSAGE, QR_BYTE2, TC_BYTE2
from blitzdns.dns.stats import UpstreamHealth

#: Random-port sockets kept open per upstream (dnsmasq keeps 64 over all servers).
SOCKETS_PER_UPSTREAM = 16
#: Queries one socket carries before it is retired (closed once its last reply is in).
SOCKET_USES = 64
#: The process (or the system) is out of descriptors: not the upstream's fault.
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
#: Attempts' deadlines are rounded up to this (seconds, a binary fraction): those due in
#: the same tick share one loop timer. An attempt may wait up to this much longer.
DEADLINE_TICK = 1 / 128

#: How an exchange ends: the reply (None: no acceptable one in time), or the error that
#: ended it (a bug's; the reply is then None).
OnDone = Callable[[bytes | None, BaseException | None], None]


class RandomBits:
    """Unpredictable numbers from the operating system's CSPRNG (``os.urandom``, as
    ``secrets`` uses), read 4 KiB at a time: one ``getrandom`` call per 2048 IDs instead
    of one per ID. A forked child starts on a block of its own (:data:`RANDOM` forgets
    its block at a fork), so parent and child never send the same IDs.

    :attr:`stream` yields the block's 16-bit numbers (a C iterator: ``next(stream, -1)``
    costs no Python call; -1 once it is used up): the forwarder takes two per query
    (issue #18). Their byte order is the machine's, which changes nothing: every 16 bits
    are uniformly random either way.
    """

    _BLOCK = 4096

    def __init__(self) -> None:
        self.stream: Iterator[int] = iter(())

    def forget(self) -> None:
        """Drop what is left of the block: the next number reads a new one."""
        self.stream = iter(())

    def refill(self) -> int:
        """A number from a new block (the stream is used up)."""
        self.stream = iter(memoryview(os.urandom(self._BLOCK)).cast("H"))
        return next(self.stream)

    def u16(self) -> int:
        """A uniformly random 16-bit number."""
        value = next(self.stream, -1)
        return value if value >= 0 else self.refill()

    def below(self, n: int) -> int:
        """A uniformly random number in ``range(n)``, ``0 < n <= 65536`` (rejection sampling)."""
        limit = 65536 - 65536 % n
        while True:
            value = next(self.stream, -1)
            if value < 0:
                value = self.refill()
            if value < limit:
                return value % n


#: The forwarder's source of IDs and socket choices.
RANDOM = RandomBits()
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=RANDOM.forget)


class _Channel:
    """One connected UDP socket and the queries waiting on it, told apart by ID."""

    def __init__(
        self, endpoint: Endpoint, health: UpstreamHealth, drain: batchio.Drain | None = None
    ) -> None:
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            self.sock.connect((endpoint.host, endpoint.port))
        except BaseException:
            self.sock.close()
            raise
        self.health = health
        self.uses = 0
        self.retired = False
        #: ID → the exchange waiting for its reply (its ``question`` is what the reply
        #: must carry).
        self.waiting: dict[int, Exchange] = {}
        self._loop = asyncio.get_running_loop()
        self._drain = drain
        self._loop.add_reader(
            self.sock.fileno(), self._readable if drain is None else self._drained
        )

    def send(self, query: bytes, exchange: Exchange) -> int:
        """Send ``query`` for ``exchange`` under a fresh random ID no other waiting query
        here has; the ID."""
        waiting = self.waiting
        while True:
            query_id = next(RANDOM.stream, -1)  # RANDOM.u16(), without the call
            if query_id < 0:
                query_id = RANDOM.refill()
            if query_id not in waiting:
                break
        message = query_id.to_bytes(2, "big") + query[2:]
        waiting[query_id] = exchange
        self.uses += 1
        try:
            self.sock.send(message)
        except BaseException:
            self.forget(query_id)
            raise
        return query_id

    def forget(self, query_id: int) -> None:
        # Copied inline in Exchange.received (every answered exchange's end): change both.
        self.waiting.pop(query_id, None)
        if self.retired and not self.waiting:
            self.close()

    def _readable(self) -> None:
        # Without recvmmsg (:func:`batchio.available`): one datagram per call. The loop
        # calls again while more are queued (its readers are level-triggered), and a read
        # that finds the queue empty costs a system call and an exception, more than the
        # loop's next look (issue #18).
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._error(exc)
            return
        self._take(data)

    def _drained(self) -> None:
        # Every reply queued here in one recvmmsg: at the full miss rate the replies come
        # faster than the loop turns (95 % of single reads found another one queued), and
        # each one read alone cost a loop wake-up, a callback and a system call.
        assert self._drain is not None
        try:
            replies = self._drain.read(self.sock.fileno())
        except OSError as exc:
            self._error(exc)
            return
        if len(replies) == 1:
            self._take(replies[0])
            return
        for data in replies:
            try:
                self._take(data)
            except Exception as exc:  # a bug: the other replies are still taken, as
                # separate callbacks did (the loop's handler logs it, with its traceback)
                self._loop.call_exception_handler(
                    {"message": "error while taking an upstream reply", "exception": exc}
                )

    def _error(self, exc: OSError) -> None:
        # ICMP unreachable and the like: about the upstream, so for every query.
        for exchange in list(self.waiting.values()):
            exchange.failed(exc)

    def _take(self, data: bytes) -> None:
        """Pass ``data`` to the exchange whose ID and question it carries, or count it."""
        found = self.waiting.get(data[0] << 8 | data[1]) if len(data) >= 2 else None
        if found is None:
            self.health.mismatched += 1
            return
        # The ID matched (the key): the rest of answers_question. Upstreams echo the
        # question as sent: that case is answers' first test, taken here without a call.
        question = found.question
        if (
            question
            and data.startswith(question, 12)
            and data[2] & QR_BYTE2
            and data[4:6] == b"\x00\x01"
        ) or answers(data, question):
            found.received(data)
        else:
            self.health.mismatched += 1

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


class SocketPool:
    """Up to :data:`SOCKETS_PER_UPSTREAM` random-port sockets per upstream, shared by queries.

    Each query goes out on one of them chosen at random (:data:`RANDOM`), or on a new one
    while there are fewer: so an attacker cannot tell which port the next query uses,
    and a socket is retired after :data:`SOCKET_USES` queries, so the ports keep changing.
    """

    def __init__(
        self,
        per_upstream: int = SOCKETS_PER_UPSTREAM,
        uses: int = SOCKET_USES,
        *,
        batch_io: bool = True,
    ) -> None:
        self.per_upstream = per_upstream
        self.uses = uses
        self._open: dict[Endpoint, list[_Channel]] = {}
        #: The last endpoint taken and its list in ``_open`` (see :meth:`take`).
        self._last: tuple[Endpoint, list[_Channel]] | None = None
        self._retired: set[_Channel] = set()
        #: Sockets made since the start (the tests read it).
        self.created = 0
        #: Set by :meth:`close`: an exchange then ends rather than take a socket again.
        self.closed = False
        #: The sockets' recvmmsg slots (made with the first socket; None without it).
        self.drain: batchio.Drain | None = None
        self._batch_io = batch_io and batchio.available()

    def take(self, endpoint: Endpoint, health: UpstreamHealth) -> _Channel:
        """A channel to ``endpoint``; OSError when no socket can be made."""
        # The endpoint asked last, by identity: an Endpoint's hash is a Python call.
        last = self._last
        if last is not None and last[0] is endpoint:
            channels = last[1]
        else:
            channels = self._open.setdefault(endpoint, [])
            self._last = (endpoint, channels)
        if len(channels) < self.per_upstream:
            if self.drain is None and self._batch_io:
                self.drain = batchio.Drain(MAX_MESSAGE)
            channel = _Channel(endpoint, health, self.drain)
            self.created += 1
            channels.append(channel)
        else:
            # RANDOM.below(n) without the call where n divides 65536 (the pool full, 16):
            # then every 16-bit number modulo n is uniform, no draw is rejected.
            n = len(channels)
            if 65536 % n:
                channel = channels[RANDOM.below(n)]
            else:
                value = next(RANDOM.stream, -1)
                if value < 0:
                    value = RANDOM.refill()
                channel = channels[value % n]
        if channel.uses + 1 >= self.uses:
            channels.remove(channel)
            channel.retired = True
            self._retired = {c for c in self._retired if c.sock.fileno() >= 0}
            self._retired.add(channel)
        return channel

    @property
    def sockets(self) -> int:
        """Sockets open now (those retired but still awaiting a reply included)."""
        open_now = sum(len(channels) for channels in self._open.values())
        retired = sum(1 for channel in self._retired if channel.sock.fileno() >= 0)
        return open_now + retired

    def close(self) -> None:
        """Close every socket; the exchanges still waiting on one end now, unanswered.

        They must not go on to a next attempt: that would make a socket in this pool,
        which nobody closes again, and ask an upstream the resolver no longer uses.
        """
        self.closed = True
        channels = (*(c for cs in self._open.values() for c in cs), *self._retired)
        waiting = [exchange for channel in channels for exchange in channel.waiting.values()]
        for channel in channels:
            channel.close()
        self._open.clear()
        self._last = None
        self._retired.clear()
        for exchange in waiting:
            exchange.abandon()


#: The attempts with a single upstream: it, then one retransmission (one tuple for all).
_ONE_UPSTREAM = (0, 0)


class Forwarder:
    """Sends queries to ``upstreams`` and tracks each one's health."""

    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        health: list[UpstreamHealth],
        timeout_s: float,
        *,
        on_local_error: Callable[[OSError], None] | None = None,
        batch_io: bool = True,
    ) -> None:
        self.upstreams = tuple(upstreams)
        self.health = health
        self.timeout_s = timeout_s
        #: ``batch_io``: replies read with recvmmsg where it works (:class:`batchio.Drain`).
        self.pool = SocketPool(batch_io=batch_io)
        self.on_local_error = on_local_error
        #: Attempts waiting for a reply, by their (rounded) deadline; one timer per key.
        self._due: dict[float, set[Exchange]] = {}
        #: The loop the sockets read on, taken at the first :meth:`ask` (None before, and
        #: once closed): on Python 3.11, ``asyncio.get_running_loop()`` makes a ``getpid``
        #: system call each time, twice per forwarded miss before (issue #18).
        self.loop: asyncio.AbstractEventLoop | None = None

    def close(self) -> None:
        """Close every socket; exchanges in flight end unanswered (SERVFAIL to their
        clients) instead of moving on to the upstreams this forwarder had (a reload)."""
        self.pool.close()
        self.loop = None

    def _order(self) -> Sequence[int]:
        """Healthy upstreams first, then failing ones; looping ones never."""
        if len(self.health) == 1:
            return () if self.health[0].loops else _ONE_UPSTREAM
        usable = [i for i, h in enumerate(self.health) if not h.loops]
        usable.sort(key=lambda i: not self.health[i].ok)
        return usable * 2 if len(usable) == 1 else usable

    def ask(self, query: bytes, on_done: OnDone, question_end: int = 0) -> Exchange:
        """Ask for ``query`` (its ID is replaced); ``on_done`` is called once with the first
        acceptable reply, or None when none came in time — possibly before this returns
        (no upstream to ask). :meth:`Exchange.cancel` abandons it without a call.

        ``question_end``, when the caller knows it, is where ``query``'s question ends (as
        :func:`~blitzdns.dns.fastpath.question_of` would find it walking the name).
        """
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        exchange = Exchange(self, loop, query, on_done, question_end)
        exchange.next_attempt()
        return exchange

    def start(self, query: bytes) -> asyncio.Future[bytes | None]:
        """:meth:`ask` as a future of the reply. Cancelling the future abandons the exchange."""
        result: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(reply: bytes | None, error: BaseException | None) -> None:
            if result.done():
                return
            if error is None:
                result.set_result(reply)
            else:
                result.set_exception(error)

        exchange = self.ask(query, done)
        result.add_done_callback(lambda _: exchange.cancel())
        return result

    def _unwatch(self, exchange: Exchange, due: float) -> None:
        waiting = self._due.get(due)
        if waiting is not None:
            waiting.discard(exchange)

    def _expire(self, due: float) -> None:
        """The attempts due now that still wait time out (each moves on or ends)."""
        loop = asyncio.get_running_loop()
        for exchange in list(self._due.pop(due, ())):
            try:
                exchange.timed_out()
            except Exception as exc:  # a bug: the others still time out, as separate
                # callbacks did (the loop's handler logs it, with its traceback)
                loop.call_exception_handler(
                    {"message": "error while timing out an upstream exchange", "exception": exc}
                )

    async def resolve(self, query: bytes) -> bytes | None:
        """The first acceptable reply to ``query`` (its ID is replaced), or None in time."""
        return await self.start(query)

    async def _tcp(
        self, endpoint: Endpoint, query: bytes, budget: float, health: UpstreamHealth
    ) -> bytes:
        """RFC 7766 §8: each message prefixed with its two-byte length."""
        if budget <= 0:
            raise TimeoutError
        message = RANDOM.u16().to_bytes(2, "big") + query[2:]
        async with asyncio.timeout(budget):
            reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
            try:
                writer.write(len(message).to_bytes(2, "big") + message)
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    if answers_question(data, message):
                        return data
                    health.mismatched += 1
            finally:
                writer.close()


class Exchange:
    """One query's way through the upstreams, as callbacks.

    Attempts go in :meth:`Forwarder._order`, each over UDP with its share of what is left
    of ``timeout_s``; a truncated reply is asked again over TCP (a task) within the whole
    deadline. The end calls ``on_done`` once; after it, or after :meth:`cancel`, each step
    only lets go of what it holds.
    """

    __slots__ = (
        "attempts",
        "budget",
        "channel",
        "deadline",
        "due",
        "finished",
        "forwarder",
        "index",
        "loop",
        "on_done",
        "query",
        "query_id",
        "question",
        "tcp",
    )

    def __init__(
        self,
        forwarder: Forwarder,
        loop: asyncio.AbstractEventLoop,
        query: bytes,
        on_done: OnDone,
        question_end: int = 0,
    ) -> None:
        self.forwarder = forwarder
        self.loop = loop
        self.query = query
        #: What a reply must carry (:func:`~blitzdns.dns.fastpath.answers`).
        self.question = query[12:question_end] if question_end else question_of(query)
        self.on_done = on_done
        self.finished = False
        self.deadline = loop.time() + forwarder.timeout_s
        health = forwarder.health
        # _order's answer for one usable upstream, without the call.
        self.attempts = (
            _ONE_UPSTREAM if len(health) == 1 and not health[0].loops else forwarder._order()
        )
        self.index = -1
        self.budget = 0.0
        self.channel: _Channel | None = None
        self.query_id = 0
        #: The current attempt's key in :attr:`Forwarder._due` (0: none).
        self.due = 0.0
        self.tcp: asyncio.Task[bytes] | None = None

    def _end(self, reply: bytes | None, error: BaseException | None = None) -> None:
        self.finished = True
        if self.tcp is not None:
            self.tcp.cancel()
        self.on_done(reply, error)

    def cancel(self) -> None:
        """Abandon the exchange: no call to ``on_done`` (the caller went away)."""
        self.finished = True
        self._release()
        if self.tcp is not None:
            self.tcp.cancel()

    def next_attempt(self) -> None:
        """Send to the next upstream in order; the result is None when none is left."""
        forwarder, attempts, loop = self.forwarder, self.attempts, self.loop
        while not self.finished:
            index = self.index = self.index + 1
            now = loop.time()
            remaining = self.deadline - now
            if index >= len(attempts) or remaining <= 0 or forwarder.pool.closed:
                self._end(None)
                return
            budget = self.budget = remaining / (len(attempts) - index)
            upstream = attempts[index]
            endpoint, health = forwarder.upstreams[upstream], forwarder.health[upstream]
            try:
                channel = forwarder.pool.take(endpoint, health)
                self.query_id = channel.send(self.query, self)
            except OSError as exc:
                if self._stop(exc, health):
                    return
                continue
            self.channel = channel
            # The attempt times out at its deadline rounded up to the tick, with the others
            # due then (one loop timer per tick). math.ceil(at / DEADLINE_TICK) *
            # DEADLINE_TICK without the call: the tick is a binary fraction, so both are
            # exact and equal. Inline: once per attempt, every miss (issue #18).
            due = -(-(now + budget) // DEADLINE_TICK) * DEADLINE_TICK
            waiting = forwarder._due.get(due)
            if waiting is None:
                waiting = forwarder._due[due] = set()
                loop.call_at(due, forwarder._expire, due)
            waiting.add(self)
            self.due = due
            return

    def _release(self) -> None:
        """Stop waiting on the current attempt's socket and deadline."""
        # Copied inline (with _unwatch and _Channel.forget) in received: change both.
        if self.due:
            self.forwarder._unwatch(self, self.due)
            self.due = 0.0
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.forget(self.query_id)

    def abandon(self) -> None:
        """The forwarder closed: let go of the attempt, no reply (see :meth:`SocketPool.close`)."""
        self._release()
        if not self.finished:
            self._end(None)

    def _health(self) -> UpstreamHealth:
        return self.forwarder.health[self.attempts[self.index]]

    def received(self, reply: bytes) -> None:
        """The current attempt's reply came (its ID and question checked)."""
        # _release, inline: every answered exchange ends here (issue #18).
        due = self.due
        if due:
            waiting = self.forwarder._due.get(due)
            if waiting is not None:
                waiting.discard(self)
            self.due = 0.0
        channel, self.channel = self.channel, None
        if channel is not None:
            # channel.forget, inline.
            on_channel = channel.waiting
            on_channel.pop(self.query_id, None)
            if channel.retired and not on_channel:
                channel.close()
        if self.finished:
            return
        if reply[2] & TC_BYTE2:
            upstream = self.attempts[self.index]
            retry = self.forwarder._tcp(
                self.forwarder.upstreams[upstream],
                self.query,
                self.deadline - self.loop.time(),
                self.forwarder.health[upstream],
            )
            self.tcp = self.loop.create_task(retry)
            self.tcp.add_done_callback(self._tcp_done)
            return
        # UpstreamHealth.succeeded, inline.
        health = self.forwarder.health[self.attempts[self.index]]
        health.ok = True
        health.answered += 1
        # _end, inline.
        self.finished = True
        if self.tcp is not None:
            self.tcp.cancel()
        self.on_done(reply, None)

    def _tcp_done(self, task: asyncio.Task[bytes]) -> None:
        if self.finished or task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._health().succeeded()
            self._end(task.result())
        elif isinstance(error, TimeoutError):
            self.timed_out()
        elif isinstance(error, OSError | asyncio.IncompleteReadError):
            self.failed(error)
        else:
            self._end(None, error)

    def timed_out(self) -> None:
        """The current attempt's time is up (:meth:`Forwarder._expire`, or TCP's)."""
        self._release()
        if self.finished:
            return
        self._health().failed(f"no reply within {self.budget:.2f} s", timeout=True)
        self.next_attempt()

    def failed(self, error: OSError | asyncio.IncompleteReadError) -> None:
        """The current attempt failed (an ICMP error on its socket, a TCP failure)."""
        self._release()
        if self.finished:
            return
        if isinstance(error, OSError):
            if self._stop(error, self._health()):
                return
        else:
            self._health().failed(_describe(error))
        self.next_attempt()

    def _stop(self, error: OSError, health: UpstreamHealth) -> bool:
        """Count ``error`` against ``health``; True (the result is None) when it is local."""
        if error.errno in OUT_OF_DESCRIPTORS:
            if self.forwarder.on_local_error is not None:
                self.forwarder.on_local_error(error)
            self._end(None)
            return True
        health.failed(_describe(error))
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed the TCP connection mid-reply"
    return str(exc) or type(exc).__name__
