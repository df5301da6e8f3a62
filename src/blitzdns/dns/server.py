"""The resolver's asyncio layer: UDP and TCP listeners around :class:`~blitzdns.dns.engine.Engine`.

Each callback is a few lines: read the clock, hand the packet to the engine, send what it
returns, or start the forwarding task it asks for. No exception escapes a callback (an
error while handling becomes SERVFAIL and one log line). Binding is separate from serving
(:meth:`Resolver.bind`, :meth:`Resolver.start`) so the daemon can bind port 53 as root and
drop privileges before serving.

TCP (RFC 7766): length-prefixed messages, several per connection, answered as each is
ready (out of order is allowed, §6.2.1.1), the connection closed after ``dns.tcp_idle_s``
without a query (§6.2.3). A client costs a bounded amount whatever it does: at most
:data:`TCP_PIPELINE_LIMIT` forwarded queries in flight, and no further reading while its
unread replies fill the transport's buffer; a client that neither reads them nor sends
within ``tcp_idle_s``, or stops in the middle of a message that long, is disconnected.

UDP listeners on Linux are two sockets each, the protected names' queries steered by the
kernel to their own one (:mod:`~blitzdns.dns.steer`), so a flood of other names cannot
push them out of a full receive queue; both are read every loop iteration and handled
alike. Loop detection lives in :mod:`~blitzdns.dns.loops`; ``python -m blitzdns.dns`` (see
:mod:`blitzdns.dns.__main__`) runs this resolver alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Protocol, cast

from blitzdns.config import Config, Endpoint
from blitzdns.dns import batchio, steer
from blitzdns.dns.cache import Cache
from blitzdns.dns.engine import Engine, ForwardJob, question_end
from blitzdns.dns.fastpath import error_reply
from blitzdns.dns.listen import (
    Listener,
    bind_error,
    bind_listeners,
    bound_socket,
    close_listeners,
)
from blitzdns.dns.loops import PROBE_WAIT_S, check_loops
from blitzdns.dns.quiet import LogLimiter
from blitzdns.dns.rfc import SERVFAIL
from blitzdns.dns.stats import ResolverStats, UpstreamHealth
from blitzdns.dns.table import Table
from blitzdns.dns.upstream import OUT_OF_DESCRIPTORS, Exchange, Forwarder
from blitzdns.errors import (
    UpstreamLoop,
)

__all__ = ["Resolver", "ResolverStats", "UpstreamHealth"]

_ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

#: Forwarded queries one TCP connection may have in flight (RFC 7766 §6.2.1.1 pipelining);
#: past it the connection is not read until one is answered.
TCP_PIPELINE_LIMIT = 32
#: TCP connections served at once (BIND's ``tcp-clients`` default is 150). Past it a new
#: connection is closed at once: each one is bounded in time and memory already, and the cap
#: keeps a client that leaks connections from using up the descriptors the tunnel needs too.
TCP_CLIENTS_MAX = 128
#: TCP connections one client address may hold (unbound's ``tcp-connection-limit`` idea);
#: well below :data:`TCP_CLIENTS_MAX`, so a handful of clients cannot take every slot.
TCP_PER_CLIENT_MAX = 16
#: Distinct forwarded questions in flight at once (dnsmasq's ``dns-forward-max`` default).
#: Each holds one upstream socket at most, so this bounds the descriptors DNS forwarding
#: can use; past it new questions get SERVFAIL at once, or are dropped under a flood
#: (:meth:`Resolver._overflow`).
FORWARD_MAX = 150
#: Clients waiting on those questions (identical questions share one exchange). Each
#: waiter holds its packet only; the cap bounds the memory a flood of one name can take.
WAITERS_MAX = 4096
#: SERVFAIL replies a second to UDP queries past those caps; the rest are dropped.
OVERFLOW_REPLIES_PER_S = 1000


class Resolver:
    """The DNS stub: answers protected names, forwards the rest, caches."""

    def __init__(
        self,
        config: Config,
        upstreams: Sequence[Endpoint],
        *,
        log: logging.Logger | None = None,
        verbose: bool = False,
        loop_probe: bool = True,
        steer: bool = True,
        batch_io: bool = True,
        linger: bool = True,
    ) -> None:
        self.config = config
        self.log = log or logging.getLogger("blitzdns.dns")
        self.verbose = verbose
        self.loop_probe = loop_probe
        self.stats = ResolverStats()
        #: Every log line a client can provoke goes through this (one per kind per interval).
        self.log_limited = LogLimiter(self.log)
        self.cache = Cache(config.dns.cache_size)
        self.engine = Engine(Table.from_config(config), self.cache, self.stats)
        self.batch_io = batch_io
        self.forwarder = self._forwarder(upstreams, config)
        self._bound: list[tuple[Endpoint, socket.socket, socket.socket]] = []
        #: Per steered UDP listener: its general socket (in ``_bound``) and priority socket.
        self._steered: list[tuple[socket.socket, socket.socket]] = []
        #: Queries read out of a plain UDP socket swapped for the steered pair (bound ahead,
        #: :func:`~blitzdns.dns.listen.bind_listeners`), with the socket that answers them.
        self._held: list[tuple[socket.socket, bytes, Any]] = []
        #: Off (``steer=False``, or refused by the kernel): one plain UDP socket per listener.
        self._steering_off = not steer
        self._transports: list[asyncio.DatagramTransport] = []
        #: Read UDP in batches where the platform allows (:mod:`~blitzdns.dns.batchio`).
        self._readers: list[batchio.BatchReader] = []
        #: Wake-ups shared at a high rate (:class:`~blitzdns.dns.batchio.Linger`); None: never.
        self._linger: batchio.Linger | None = None
        self.linger = linger
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Open TCP connections and their client's address; per address, how many.
        self._connections: dict[asyncio.StreamWriter, str] = {}
        self._tcp_clients: dict[str, int] = {}
        #: Connections waiting between messages with nothing owed, longest idle first.
        self._idle: dict[asyncio.StreamWriter, str] = {}
        #: Forwarded questions in flight (cache key -> the exchange and who waits for it).
        self._pending: dict[bytes, _Flight] = {}
        #: Clients waiting for one of the exchanges in ``_pending``.
        self._waiters = 0
        #: SERVFAIL replies a second to UDP queries past the caps (see ``_overflow``).
        self.overflow_replies_per_s = OVERFLOW_REPLIES_PER_S
        self._overflow_second = 0
        self._overflow_replies = 0
        self._started = False
        self._previous_handler: _ExceptionHandler | None = None

    def _forwarder(self, upstreams: Sequence[Endpoint], config: Config) -> Forwarder:
        self.stats.upstreams = [UpstreamHealth(str(u)) for u in upstreams]
        return Forwarder(
            upstreams,
            self.stats.upstreams,
            config.dns.timeout_s,
            on_local_error=self._local_error,
            batch_io=self.batch_io,
        )

    # ------------------------------------------------------------------ sockets

    @property
    def tcp_unsent(self) -> int:
        """Bytes of replies waiting in this process for TCP clients to read them."""
        return sum(writer.transport.get_write_buffer_size() for writer in self._connections)

    @property
    def bound_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(endpoint for endpoint, _, _ in self._bound)

    async def bind(self, listeners: Sequence[Listener] | None = None) -> None:
        """Bind UDP and TCP on every listen endpoint (and DNS-serving shared addresses), or
        serve on ``listeners`` already bound (:func:`~blitzdns.dns.listen.bind_listeners`,
        which this takes over: closed here if this fails)."""
        if self._bound:
            if listeners is not None:
                close_listeners(list(listeners))  # taken over once; these would leak
            return
        try:
            if listeners is None:
                listeners = bind_listeners(self.config)
            code = None if self._steering_off else self._steering_program()
            for bound, key, udp, tcp in listeners:
                self._bind_listener(bound, key, udp, tcp, code)
        except BaseException:
            close_listeners(list(listeners or ()))
            self._close_sockets()
            raise

    def _bind_listener(
        self,
        bound: Endpoint,
        key: str,
        udp: socket.socket,
        tcp: socket.socket,
        code: Sequence[steer.Instruction] | None,
    ) -> None:
        """Serve on ``bound``'s UDP and TCP sockets; make the UDP side a steered pair.

        The plain UDP bind comes first (no ``SO_REUSEPORT``), so a port another program
        holds is the usual one-line error even when that program allowed port sharing;
        it is then swapped for the :mod:`~blitzdns.dns.steer` pair on the same port.
        Where the kernel refuses the pair, the plain socket serves alone (logged once).
        """
        self._bound.append((bound, udp, tcp))
        if code is None or self._steering_off or sys.platform != "linux":
            return
        family = socket.AF_INET6 if ":" in bound.host else socket.AF_INET
        # Bound ahead (a link-first start), the plain socket may hold queries already:
        # read out before it closes (its queue goes with it), answered once serving.
        held = _read_out(udp)
        udp.close()
        try:
            general, priority = steer.bind_group(family, (bound.host, bound.port), code)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise bind_error(exc, bound, "UDP", key) from None
            self._steering_refused(exc)
            general = bound_socket(bound, socket.SOCK_DGRAM, key)
        else:
            self._steered.append((general, priority))
        self._bound[-1] = (bound, general, tcp)
        self._held.extend((general, data, address) for data, address in held)

    def _steering_program(self) -> tuple[steer.Instruction, ...]:
        code, left_out = steer.fitting_program(self.engine.table.protected)
        if left_out:
            self.log.warning(
                "%d protected names are not steered ahead of other queries (too many "
                "for one steering program the kernel takes); they are answered all the same",
                left_out,
            )
        return code

    def _steering_refused(self, error: OSError) -> None:
        self._steering_off = True
        self.log.warning(
            "the kernel refused UDP steering (%s): protected names share one socket "
            "with other queries, and a flood can crowd them out",
            error.strerror or error,
        )

    async def start(self) -> None:
        """Serve on the bound sockets (binding first if needed)."""
        if self._started:
            return
        await self.bind()
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        for _, udp, tcp in self._bound:
            await self._serve_udp(udp, steered=False)
            for general, priority in self._steered:
                if general is udp:
                    await self._serve_udp(priority, steered=True)
            server = await asyncio.start_server(self._serve_tcp, sock=tcp)
            self._servers.append(server)
        self._started = True
        held, self._held = self._held, []
        for sock, data, address in held:
            _HeldQuery(self, sock).datagram_received(data, address)
        upstreams = ", ".join(str(u) for u in self.forwarder.upstreams) or "none"
        self.log.info(
            "DNS stub listening on %s; forwarding to %s; answering %d protected names",
            ", ".join(str(e) for e in self.bound_endpoints),
            upstreams,
            len(self.engine.table.protected),
        )
        if self.loop_probe and self.forwarder.upstreams:
            self._spawn(self._background_loop_check())

    async def _serve_udp(self, sock: socket.socket, *, steered: bool) -> None:
        """Read ``sock`` in batches (:mod:`~blitzdns.dns.batchio`) where that works, else
        through the loop's datagram transport; ``-v`` (a line per query) takes the latter."""
        loop = asyncio.get_running_loop()
        if self.batch_io and not self.verbose and batchio.available():
            if self._linger is None and self.linger:
                self._linger = batchio.Linger(loop)
            reader = batchio.BatchReader(
                sock,
                self.engine.handle,
                self._batch_other,
                loop.time,
                self.log,
                self.stats,
                steered=steered,
                linger=self._linger,
            )
            loop.add_reader(sock.fileno(), reader.readable)
            self._readers.append(reader)
            return
        protocol = _PriorityUdpProtocol if steered else _UdpProtocol
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol(self), sock=sock)
        self._transports.append(transport)

    def _batch_other(
        self,
        result: object,
        packet: bytes,
        client: str,
        address: bytes,
        reader: batchio.BatchReader,
    ) -> bytes | None:
        """A :class:`~blitzdns.dns.batchio.BatchReader`'s query the engine did not answer at
        once: a forwarding job, nothing, or the exception it raised (logged here)."""
        if result.__class__ is ForwardJob:
            # forward_udp, inline (once per forwarded UDP query).
            if self._join(result, reader, address):
                return None
            return self._overflow(result)
        if isinstance(result, Exception):
            return self._crashed(packet, client, result)
        return None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for reader in self._readers:
            reader.close()
            if reader.sock.fileno() >= 0:
                loop.remove_reader(reader.sock.fileno())
        self._readers.clear()
        self._linger = None
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for writer in list(self._connections):
            _abort(writer)
        self._ground()
        running = [*self._tasks]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        self.forwarder.close()
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() == self._loop_exception:
            loop.set_exception_handler(self._previous_handler)
        self._transports.clear()
        self._servers.clear()
        self._close_sockets()
        if self._started:
            self.log_limited.flush(asyncio.get_running_loop().time())
            self.log.info("DNS stub stopped (%s)", _summary(self.stats))
        self._started = False

    def _close_sockets(self) -> None:
        for _, udp, tcp in self._bound:
            udp.close()
            tcp.close()
        for _, priority in self._steered:
            priority.close()
        self._bound.clear()
        self._steered.clear()

    # ------------------------------------------------------------------ reload

    def update(self, config: Config, upstreams: Sequence[Endpoint] | None = None) -> None:
        """Swap in a new configuration: table and policy at once, cache kept where it may be.

        Names that became protected are answered locally from the next packet on, and
        their cached entries are dropped; names no longer protected are forwarded again.
        New listen addresses need a restart (logged).
        """
        dropped = self.engine.update(Table.from_config(config))
        if self._steered:
            code = self._steering_program()
            for general, _ in self._steered:
                try:
                    steer.attach(general, code)
                except OSError as exc:
                    self.log.warning("UDP steering not updated: %s", exc.strerror or exc)
        self.cache.resize(config.dns.cache_size)
        if upstreams is not None:
            self.forwarder.close()
            self.forwarder = self._forwarder(upstreams, config)
        self.forwarder.timeout_s = config.dns.timeout_s
        if config.dns.listen != self.config.dns.listen or [s for s in config.shared if s.dns] != [
            s for s in self.config.shared if s.dns
        ]:
            self.log.warning("listen addresses changed: restart blitzdns to listen on them")
        self.config = config
        self.log.info(
            "DNS table reloaded: %d protected names, %d cached entries dropped",
            len(self.engine.table.protected),
            dropped,
        )

    # ------------------------------------------------------------------ handling

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _crashed(
        self, packet: bytes, client: str, error: BaseException | None = None
    ) -> bytes | None:
        """An exception while handling: SERVFAIL when the header is readable, and a log line.

        A bug, since no input should raise; the line (with its traceback: ``error``, or
        the exception being handled) is rate-limited all the same, so that a packet that
        provokes it cannot fill the disk.
        """
        from blitzdns.dns import wire  # noqa: PLC0415  (dnslib: loaded when first needed)

        self.stats.errors += 1
        self.log_limited(
            "errors while handling queries",
            asyncio.get_running_loop().time(),
            logging.ERROR,
            "error while handling a query from %s: %s",
            client,
            wire.describe(packet),
            exc_info=error if error is not None else True,
        )
        if len(packet) < 12:
            return None
        self.stats.servfail += 1
        return error_reply(packet, question_end(packet), SERVFAIL, -1)

    def _join(
        self, job: ForwardJob, sink: _ReplySink | asyncio.Future[bytes | None], address: Any
    ) -> bool:
        """Wait for ``job``'s upstream exchange: a new one, or the one its question shares.

        The reply goes to ``sink`` (a UDP transport or batch reader, with ``address``; or a
        TCP query's future) when the exchange ends — possibly before this returns. False
        past the caps (:data:`FORWARD_MAX` questions in flight, :data:`WAITERS_MAX` clients
        waiting on them): the caller answers SERVFAIL at once (:meth:`_overflow`).
        """
        if self._waiters >= WAITERS_MAX:
            return False
        flight = self._pending.get(job.key)
        if flight is not None:
            flight.waiters.append((job, sink, address))
            self._waiters += 1
            return True
        if len(self._pending) >= FORWARD_MAX:
            return False
        # In ``_pending`` before it starts: an exchange with nobody to ask ends at once.
        flight = self._pending[job.key] = _Flight(job.key, (job, sink, address))
        self.stats.forwards_in_flight = len(self._pending)
        self._waiters += 1
        # The engine found where the question ends (tests/dns/test_fastpath.py holds it to
        # what question_of finds).
        # A partial, not a method of the flight's: one Python call less per miss.
        flight.exchange = self.forwarder.ask(job.query, partial(self._landed, flight), job.qend)
        return True

    def _landed(self, flight: _Flight, reply: bytes | None, error: BaseException | None) -> None:
        """``flight``'s exchange ended: every client waiting on it gets its reply."""
        # The exchange holds ``flight`` (its on_done): without this, each miss would leave a
        # reference cycle for the cyclic collector (memory held, and its work).
        flight.exchange = None
        if self._pending.get(flight.key) is flight:
            del self._pending[flight.key]
            self.stats.forwards_in_flight = len(self._pending)
        # The forwarder's loop: asyncio.get_running_loop() costs a system call (3.11).
        now = (self.forwarder.loop or asyncio.get_running_loop()).time()
        finish = self.engine.finish
        for job, sink, address in flight.waiters:
            if isinstance(sink, asyncio.Future):
                if not sink.done():  # else its TCP query was cancelled (and counted)
                    self._waiters -= 1
                    try:
                        out = self._finish(job, reply, error, now)
                    except Exception:  # a bug: this client gets SERVFAIL, the others theirs
                        out = self._crashed(job.packet, job.client)
                    sink.set_result(out)
                continue
            self._waiters -= 1
            # _finish, inline (once per forwarded UDP query).
            if error is None:
                try:
                    out = finish(job, reply, now)
                except Exception:
                    out = self._crashed(job.packet, job.client)
            else:
                out = self._crashed(job.packet, job.client, error)
            # A batch reader's sendto drops a reply once it is closed (no is_closing call).
            if out is not None and (sink.__class__ is batchio.BatchReader or not sink.is_closing()):
                sink.sendto(out, address)
            if self.verbose:
                self._trace(job.client, job.packet, out, True)

    def _ground(self) -> None:
        """Closing: the exchanges in flight are abandoned, their clients get nothing."""
        flights = list(self._pending.values())
        self._pending.clear()
        self.stats.forwards_in_flight = 0
        for flight in flights:
            if flight.exchange is not None:
                flight.exchange.cancel()
                flight.exchange = None
            for _, sink, _ in flight.waiters:
                if isinstance(sink, asyncio.Future) and not sink.done():
                    sink.set_result(None)
        self._waiters = 0

    def _overflow(self, job: ForwardJob, *, udp: bool = True) -> bytes | None:
        """SERVFAIL at once for a query past the caps on forwarding, or nothing.

        Answered rather than left to time out: a real client learns at once and tries its
        next server instead of waiting out its retry timer (glibc: 5 s), and the reply is no
        larger than the query (nothing to amplify). But under a flood a reply per query
        costs a send the resolver cannot spare — the protected names' queries wait in the
        same socket buffer, and the kernel drops from it when it is full — so over UDP at
        most :attr:`overflow_replies_per_s` a second are answered and the rest dropped (as
        BIND's response-rate limiting does). Over TCP (bounded per connection already) the
        client always gets its SERVFAIL.
        """
        self.stats.forward_capped += 1
        now = asyncio.get_running_loop().time()
        self.log_limited(
            "forwarded queries refused",
            now,
            logging.WARNING,
            "%d forwarded queries in flight (the most allowed): refusing new ones "
            "(from %s; %d so far)",
            len(self._pending),
            job.client,
            self.stats.forward_capped,
        )
        if udp:
            second = int(now)
            if second != self._overflow_second:
                self._overflow_second, self._overflow_replies = second, 0
            self._overflow_replies += 1
            if self._overflow_replies > self.overflow_replies_per_s:
                self.stats.dropped += 1
                return None
        self.stats.servfail += 1
        return error_reply(job.packet, job.qend, SERVFAIL, job.edns)

    def _finish(
        self, job: ForwardJob, reply: bytes | None, error: BaseException | None, now: float
    ) -> bytes | None:
        """The client's reply once its exchange ended with ``reply`` (or ``error``: a bug)."""
        if error is not None:
            return self._crashed(job.packet, job.client, error)
        try:
            return self.engine.finish(job, reply, now)
        except Exception:
            return self._crashed(job.packet, job.client)

    async def _answer(self, job: ForwardJob) -> bytes | None:
        """The reply for ``job`` (TCP): identical questions in flight share one exchange."""
        reply: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        if not self._join(job, reply, None):
            return self._overflow(job, udp=False)
        try:
            return await reply
        except asyncio.CancelledError:
            if reply.cancelled():  # not answered: still counted as waiting
                self._waiters -= 1
            raise

    def forward_udp(self, job: ForwardJob, transport: _ReplySink, address: Any) -> bytes | None:
        """Start (or join) the exchange for a UDP query: a reply now only past the caps.

        No task, future or closure per query: the reply is sent when the exchange ends
        (:meth:`_landed`).
        """
        if self._join(job, transport, address):
            return None
        return self._overflow(job)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's own reports: out-of-descriptors ones (``accept`` on the TCP
        listener hits EMFILE) become one rate-limited line; the rest go on as before."""
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in OUT_OF_DESCRIPTORS:
            self._local_error(error)
        elif self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _local_error(self, error: OSError) -> None:
        """The process is out of descriptors (EMFILE / ENFILE): say so, once per interval."""
        self.stats.descriptors_exhausted += 1
        self.log_limited(
            "times out of file descriptors",
            asyncio.get_running_loop().time(),
            logging.ERROR,
            "out of file descriptors (%s): forwarded queries fail (%d times so far); "
            "raise the limit (ulimit -n / LimitNOFILE=) or look for what holds them",
            error.strerror or error,
            self.stats.descriptors_exhausted,
        )

    def _trace(self, client: str, packet: bytes, reply: bytes | None, forwarded: bool) -> None:
        """``-v``: the query's outcome as dnsmasq logs it (called only when verbose)."""
        upstreams = self.forwarder.upstreams
        to = (str(upstreams[0]) if upstreams else "") if forwarded else None
        from blitzdns.dns import wire  # noqa: PLC0415  (dnslib: loaded when first needed)

        for line in wire.query_log(client, packet, reply, self.engine.table.protects, to):
            self.log.info("%s", line)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: read and answer until EOF or idle, then flush and close.

        Any other end (a stalled message, replies nobody reads, an error, ``close``)
        aborts the connection, dropping what is unsent.
        """
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "?"
        if not self._tcp_slot(client):
            _abort(writer)
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        inflight: set[asyncio.Task[None]] = set()
        self._connections[writer] = client
        self._tcp_clients[client] = self._tcp_clients.get(client, 0) + 1
        graceful = False
        try:
            graceful = await self._read_tcp(reader, writer, inflight)
            if graceful and inflight:
                await asyncio.wait(inflight)
            graceful = graceful and await self._flushed(writer)
        finally:
            self._forget_connection(writer)
            for pending in inflight:
                pending.cancel()
            if graceful:
                writer.close()
            else:
                _abort(writer)

    def _tcp_slot(self, client: str) -> bool:
        """Whether a new connection from ``client`` may be served, making room if need be.

        A client holds at most :data:`TCP_PER_CLIENT_MAX` connections, all clients
        :data:`TCP_CLIENTS_MAX`. At either limit the oldest idle connection (between
        messages, nothing in flight or unsent) of that client, or of anyone, is closed to
        make room (RFC 7766 §6.2.3 lets a server close idle connections, sooner when
        short of resources); only when none is idle is the new one refused. So one client
        cannot starve the others, and a client that reconnects does not lock itself out.
        """
        if self._tcp_clients.get(client, 0) >= TCP_PER_CLIENT_MAX:
            if self._close_idle(client):
                return True
            limit = f"{TCP_PER_CLIENT_MAX} TCP connections open from {client}"
        elif len(self._connections) >= TCP_CLIENTS_MAX:
            if self._close_idle(None):
                return True
            limit = f"{TCP_CLIENTS_MAX} TCP connections open"
        else:
            return True
        self.stats.tcp_refused += 1
        self.log_limited(
            "TCP connections refused",
            asyncio.get_running_loop().time(),
            logging.WARNING,
            "%s, none idle: closing new ones (from %s; %d so far)",
            limit,
            client,
            self.stats.tcp_refused,
        )
        return False

    def _close_idle(self, client: str | None) -> bool:
        """Close the longest idle connection (of ``client``, or anyone's); False if none."""
        for writer, owner in self._idle.items():
            if client is None or owner == client:
                self.stats.tcp_idle_closed += 1
                self._forget_connection(writer)
                _abort(writer)
                return True
        return False

    def _forget_connection(self, writer: asyncio.StreamWriter) -> None:
        self._idle.pop(writer, None)
        client = self._connections.pop(writer, None)
        if client is not None:
            left = self._tcp_clients[client] - 1
            if left:
                self._tcp_clients[client] = left
            else:
                del self._tcp_clients[client]

    async def _read_tcp(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        inflight: set[asyncio.Task[None]],
    ) -> bool:
        """Answer queries as they come; True at a clean end (EOF or idle between messages).

        Reading pauses while :data:`TCP_PIPELINE_LIMIT` forwarded queries are in flight,
        and while the unread replies exceed the transport's high-water mark — for at most
        ``tcp_idle_s``, after which the client counts as gone (False). The idle timeout
        runs between messages; a message begun and not finished within it is False too:
        after a partial read there is no telling where the next message starts.
        """
        client = self._connections.get(writer, "?")
        idle = self.config.dns.tcp_idle_s
        transport = writer.transport
        high_water = transport.get_write_buffer_limits()[1]
        loop = asyncio.get_running_loop()
        while True:
            if len(inflight) >= TCP_PIPELINE_LIMIT:
                await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            if transport.get_write_buffer_size() > high_water:
                try:
                    async with asyncio.timeout(idle):
                        await writer.drain()
                except (TimeoutError, ConnectionError):
                    return False
            if not inflight and not transport.get_write_buffer_size():
                self._idle[writer] = client
            try:
                async with asyncio.timeout(idle):
                    prefix = await reader.readexactly(2)
            except TimeoutError:
                if inflight:
                    await asyncio.wait(inflight)
                    continue
                return True
            except asyncio.IncompleteReadError as exc:
                return not exc.partial
            except ConnectionError:
                return False
            finally:
                self._idle.pop(writer, None)
            try:
                async with asyncio.timeout(idle):
                    packet = await reader.readexactly(int.from_bytes(prefix, "big"))
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return False
            try:
                out = self.engine.handle(packet, client, loop.time(), False)
            except Exception:
                out = self._crashed(packet, client)
            if isinstance(out, ForwardJob):
                forward = loop.create_task(self._forward_tcp(out, writer))
                inflight.add(forward)
                forward.add_done_callback(inflight.discard)
                continue
            if out is not None:
                writer.write(len(out).to_bytes(2, "big") + out)
            if self.verbose:
                self._trace(client, packet, out, False)

    async def _flushed(self, writer: asyncio.StreamWriter) -> bool:
        """Wait (up to ``tcp_idle_s``) until every reply is handed to the kernel."""
        transport = writer.transport
        if transport.is_closing():
            return False
        if transport.get_write_buffer_size() == 0:
            return True
        transport.set_write_buffer_limits(high=0)
        try:
            async with asyncio.timeout(self.config.dns.tcp_idle_s):
                await writer.drain()
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _forward_tcp(self, job: ForwardJob, writer: asyncio.StreamWriter) -> None:
        reply = await self._answer(job)
        if reply is not None and not writer.is_closing():
            writer.write(len(reply).to_bytes(2, "big") + reply)
        if self.verbose:
            self._trace(job.client, job.packet, reply, True)

    # ------------------------------------------------------------------ loop detection

    async def check_loops(self, wait_s: float = PROBE_WAIT_S) -> tuple[Endpoint, ...]:
        """Probe the upstreams for forwarding loops (:func:`~blitzdns.dns.loops.check_loops`)."""
        return await check_loops(
            self.forwarder, self.engine, self.config.domains(), self.log, wait_s
        )

    async def _background_loop_check(self) -> None:
        try:
            await self.check_loops()
        except UpstreamLoop as exc:
            self.log.error("%s", exc)


class _ReplySink(Protocol):
    """Where a forwarded query's reply goes: a datagram transport or a batch reader."""

    def sendto(self, data: bytes, address: Any, /) -> None: ...

    def is_closing(self) -> bool: ...


#: A client waiting for a forwarded question: its job, where its reply goes, the address.
_Waiter = tuple[ForwardJob, "_ReplySink | asyncio.Future[bytes | None]", Any]


class _Flight:
    """A forwarded question in flight: its upstream exchange and the clients waiting."""

    __slots__ = ("exchange", "key", "waiters")

    def __init__(self, key: bytes, first: _Waiter) -> None:
        self.key = key
        self.waiters = [first]
        self.exchange: Exchange | None = None


class _UdpProtocol(asyncio.DatagramProtocol):
    """One per UDP socket; everything it does happens in :meth:`datagram_received`."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.verbose = resolver.verbose
        self.handle = resolver.engine.handle
        self.forward_udp = resolver.forward_udp
        self.clock = asyncio.get_running_loop().time
        self.sendto: Callable[[bytes, Any], None] = _not_connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.sendto = self.transport.sendto

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            out = self.handle(data, addr[0], self.clock())
        except Exception:
            out = self.resolver._crashed(data, addr[0])
        if isinstance(out, ForwardJob):
            out = self.forward_udp(out, self.transport, addr)
            if out is None:
                return
        if out is not None:
            self.sendto(out, addr)
        if self.verbose:
            self.resolver._trace(addr[0], data, out, False)

    def error_received(self, exc: Exception) -> None:
        self.resolver.log.debug("UDP error (an earlier reply was not delivered): %s", exc)


class _PriorityUdpProtocol(_UdpProtocol):
    """The priority socket's (:mod:`~blitzdns.dns.steer`): handled alike, and counted."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.resolver.stats.steered += 1
        super().datagram_received(data, addr)


class _HeldQuery(_UdpProtocol):
    """A query read out of a plain UDP socket before it was swapped for the steered pair
    (:meth:`Resolver._bind_listener`): handled as any, answered from the pair's socket."""

    def __init__(self, resolver: Resolver, sock: socket.socket) -> None:
        super().__init__(resolver)
        self.sock = sock
        self.transport = cast(asyncio.DatagramTransport, self)
        self.sendto = self._send

    def _send(self, data: bytes, address: Any, /) -> None:
        try:
            self.sock.sendto(data, address)
        except OSError as exc:
            self.error_received(exc)

    def is_closing(self) -> bool:
        return self.sock.fileno() == -1


HELD_MAX = 1024
"""At most this many queries are read out of a plain UDP socket as it is swapped (its
receive queue, a moment's worth at a start); the rest go with it, as queries past a full
queue do, and the client asks again."""


def _read_out(sock: socket.socket) -> list[tuple[bytes, Any]]:
    """The datagrams waiting in ``sock`` (non-blocking), at most :data:`HELD_MAX`."""
    held: list[tuple[bytes, Any]] = []
    for _ in range(HELD_MAX):
        try:
            held.append(sock.recvfrom(65535))
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            continue  # an earlier reply's ICMP error, reported once: read on
    return held


_LINGER_RESET = struct.pack("ii", 1, 0)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a TCP connection at once with a reset, dropping what is unsent.

    A plain close would leave the unsent replies in the kernel, to be sent (and the FIN
    after them) to a client that does not read: its connection would stay established
    and the kernel would hold up to its send buffer (``tcp_wmem``, MBs) for it. SO_LINGER
    with a zero timeout makes the close a reset (RFC 793 §3.5 ABORT).
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _not_connected(data: bytes, address: Any) -> None:
    raise ConnectionError("the UDP transport is not connected yet")


def _summary(stats: ResolverStats) -> str:
    return (
        f"{stats.answered_local} answered locally, {stats.forwarded} forwarded, "
        f"{stats.cache_hits} cache hits, {stats.servfail} SERVFAIL, {stats.refused} refused"
    )
