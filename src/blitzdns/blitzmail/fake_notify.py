"""A fake Notify server: TCP "dartnotify" (2152) for posting, UDP "dartnotify-me" (2154) for
ATP registrations and notices, following "Notify in detail" in
../../../../shared/reference/blitzmail-protocols.md.

:class:`NotifyCore` is the pure server (datagrams and posts in, datagrams out, ``now``
passed in); :class:`FakeNotify` runs it on loopback sockets. A notice is sent to the
*source address* of the registration and the *port written inside it* (0: the source
port), as a ``NOTI`` request re-sent until the client's response arrives, then released.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Self

from blitzdns.blitzmail import challenge as _challenge
from blitzdns.blitzmail.atp import (
    CLEAR,
    EOM,
    NOTICE,
    REGISTER,
    RELEASE,
    REQUEST,
    RESPONSE,
    AtpError,
    AtpPacket,
    Notice,
    Registration,
    parse_clear,
)
from blitzdns.blitzmail.dnd import ClosesOnExit, close_stream
from blitzdns.blitzmail.fakes import (
    DEMO_RECORDS,
    DndRecord,
    RandomBytes,
    check_loopback,
    match_records,
)

Address = tuple[str, int]
Outgoing = list[tuple[bytes, Address]]

RESEND_S = 1.0
"""A notice not answered within this long is sent again ("the side that waits re-sends")."""
RESENDS_MAX = 5
REGISTRATION_S = 600.0
"""A registration lives this long without a new NR02 (10 minutes in one implementation)."""
MAX_POST = 578
"""Most data one NOTIFY carries (reference: "Data up to 578 bytes")."""


@dataclass
class _Registered:
    registration: Registration
    source: Address
    notices_to: Address
    expires: float


@dataclass
class _Pending:
    packet: AtpPacket
    to: Address
    resend_at: float
    resends: int = 0


@dataclass(frozen=True)
class NotifyEvent:
    """What the fake server saw or did, in order, for tests and the demo to show."""

    what: Literal["registered", "posted", "notice-sent", "answered", "cleared", "dropped"]
    detail: str
    peer: Address | None = None


@dataclass
class NotifyCore:
    """The pure server: one call per datagram, post or clock tick; each returns the
    datagrams to send. ``now`` is seconds on any monotonic clock."""

    registrations: dict[int, list[_Registered]] = field(default_factory=dict)
    pending: dict[int, _Pending] = field(default_factory=dict)
    events: list[NotifyEvent] = field(default_factory=list)
    _tids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def datagram(self, data: bytes, source: Address, now: float) -> Outgoing:
        try:
            packet = AtpPacket.parse(data)
        except AtpError as exc:
            self.events.append(NotifyEvent("dropped", str(exc), source))
            return []
        if packet.kind == REQUEST and packet.command == REGISTER:
            return self._register(packet, source, now)
        if packet.kind == REQUEST and packet.command == CLEAR:
            try:
                uid, service = parse_clear(packet.data)
            except AtpError as exc:
                self.events.append(NotifyEvent("dropped", str(exc), source))
                return []
            self.events.append(NotifyEvent("cleared", f"uid {uid} service {service}", source))
            return [(packet.answer(RESPONSE).encode(), source)]
        if packet.kind == RESPONSE and packet.tid in self.pending:
            pending = self.pending.pop(packet.tid)
            self.events.append(NotifyEvent("answered", f"tid {packet.tid}", source))
            return [(pending.packet.answer(RELEASE).encode(), pending.to)]
        if packet.kind == RELEASE:
            return []
        self.events.append(NotifyEvent("dropped", f"unexpected {packet.command!r}", source))
        return []

    def _register(self, packet: AtpPacket, source: Address, now: float) -> Outgoing:
        try:
            registration = Registration.parse(packet.data)
        except AtpError as exc:
            self.events.append(NotifyEvent("dropped", str(exc), source))
            return []
        uid = registration.uid_number
        if uid is None:
            self.events.append(NotifyEvent("dropped", f"bad uid {registration.uid!r}", source))
            return []
        notices_to = (source[0], registration.port or source[1])
        entries = [e for e in self.registrations.get(uid, []) if e.notices_to != notices_to]
        entries.append(_Registered(registration, source, notices_to, now + REGISTRATION_S))
        self.registrations[uid] = entries
        self.events.append(
            NotifyEvent(
                "registered", f"uid {uid} notices to {notices_to[0]}:{notices_to[1]}", source
            )
        )
        return [(packet.answer(RESPONSE).encode(), source)]

    def post(self, uid: int, service: int, message_id: int, text: bytes, now: float) -> Outgoing:
        """A notice posted on the TCP side: a ``NOTI`` to each live registration for it."""
        self.events.append(NotifyEvent("posted", f"uid {uid} service {service} id {message_id}"))
        out: Outgoing = []
        for entry in self.registrations.get(uid, []):
            if entry.expires <= now or service not in entry.registration.services:
                continue
            tid = next(self._tids) & 0xFFFF
            data = Notice(service, uid, message_id, text).encode()
            packet = AtpPacket(REQUEST, tid, NOTICE, data, flags=EOM)
            self.pending[tid] = _Pending(packet, entry.notices_to, now + RESEND_S)
            self.events.append(NotifyEvent("notice-sent", f"tid {tid}", entry.notices_to))
            out.append((packet.encode(), entry.notices_to))
        return out

    def tick(self, now: float) -> Outgoing:
        """Re-send notices still unanswered; give up after :data:`RESENDS_MAX`."""
        out: Outgoing = []
        for tid, pending in list(self.pending.items()):
            if pending.resend_at > now:
                continue
            if pending.resends >= RESENDS_MAX:
                del self.pending[tid]
                continue
            pending.resends += 1
            pending.resend_at = now + RESEND_S
            out.append((pending.packet.encode(), pending.to))
        for uid, entries in list(self.registrations.items()):
            self.registrations[uid] = [e for e in entries if e.expires > now]
        return out

    def registered(self, uid: int) -> list[Address]:
        """Where notices for ``uid`` go now."""
        return [entry.notices_to for entry in self.registrations.get(uid, [])]


class PostingSession:
    """The TCP side (2152): ``USER``/``PASE`` then ``NOTIFY``, ``CLEAR``, ``NOOP``, ``QUIT``."""

    def __init__(
        self, records: Sequence[DndRecord], random_bytes: RandomBytes = os.urandom
    ) -> None:
        self._records = records
        self._random_bytes = random_bytes
        self._pending: tuple[DndRecord, str] | None = None
        self.validated = False

    def user(self, argument: str) -> str:
        found = match_records(self._records, argument)
        if isinstance(found, int) or len(found) != 1:
            return "550 No such user."
        challenge = _challenge.new_challenge(self._random_bytes(_challenge.CHALLENGE_BYTES))
        self._pending = (found[0], challenge)
        return f"300 {challenge}"

    def pase(self, argument: str) -> str:
        pending, self._pending = self._pending, None
        if pending is None:
            return "503 Send USER first."
        record, challenge = pending
        if record.password is None or not _challenge.check_answer(
            challenge, argument, record.password
        ):
            return "550 Wrong password."
        self.validated = True
        return "200 Ok."


def parse_notify(argument: str) -> tuple[int, int, int, int, int]:
    """``<len>,<uid>,<type>,<msgid>,<sticky>`` → the five numbers; ValueError otherwise."""
    parts = argument.split(",")
    if len(parts) != 5:
        raise ValueError("expected <len>,<uid>,<type>,<msgid>,<sticky>")
    length, uid, service, message_id, sticky = (int(part) for part in parts)
    if not 0 <= length <= MAX_POST:
        raise ValueError(f"length {length} outside 0-{MAX_POST}")
    return length, uid, service, message_id, sticky


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeNotify) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.owner.receive(data, (str(addr[0]), int(addr[1])))


class FakeNotify(ClosesOnExit):
    """The fake Notify server on one loopback address: TCP posting and UDP ATP ports.

    Ports may be 0 (the system picks; see :attr:`tcp_port`, :attr:`udp_port`).
    :meth:`post` is the TCP ``NOTIFY`` without a connection, for tests and the demo.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        tcp_port: int = 0,
        udp_port: int = 0,
        *,
        records: Sequence[DndRecord] = DEMO_RECORDS,
    ) -> None:
        self.host = check_loopback(host)
        self._ports = (tcp_port, udp_port)
        self.records = tuple(records)
        self.core = NotifyCore()
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def tcp_port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def udp_port(self) -> int:
        assert self._transport is not None, "not started"
        return int(self._transport.get_extra_info("sockname")[1])

    @property
    def events(self) -> list[NotifyEvent]:
        return self.core.events

    async def start(self) -> Self:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(self.host, self._ports[1])
        )
        self._transport = transport
        self._server = await asyncio.start_server(self._accept, self.host, self._ports[0])
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _send(self, outgoing: Outgoing) -> None:
        if self._transport is not None:
            for data, peer in outgoing:
                self._transport.sendto(data, peer)
        self.changed.set()

    def receive(self, data: bytes, source: Address) -> None:
        self._send(self.core.datagram(data, source, asyncio.get_running_loop().time()))

    def post(self, uid: int, text: bytes, *, service: int = 1, message_id: int = 1) -> int:
        """Post a notice; returns how many registrations it was sent to."""
        out = self.core.post(uid, service, message_id, text, asyncio.get_running_loop().time())
        self._send(out)
        return len(out)

    async def wait_for(self, what: str, count: int = 1) -> NotifyEvent:
        """The ``count``-th event of kind ``what`` (waits until it happened)."""
        while True:
            found = [event for event in self.events if event.what == what]
            if len(found) >= count:
                return found[count - 1]
            self.changed.clear()
            await self.changed.wait()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(RESEND_S / 4)
            self._send(self.core.tick(loop.time()))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._converse(reader, writer)
        except (
            OSError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            self._handlers.discard(task)
            await close_stream(writer)

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = PostingSession(self.records)

        async def reply(line: str) -> None:
            writer.write(line.encode("ascii") + b"\r\n")
            await writer.drain()

        await reply("220 DartNotify (blitzdns fake) ready.")
        while line := await reader.readline():
            verb, _, argument = line.decode("latin-1").strip().partition(" ")
            verb = verb.upper()
            if verb == "USER":
                await reply(session.user(argument.strip()))
            elif verb == "PASE":
                await reply(session.pase(argument.strip()))
            elif verb == "NOOP":
                await reply("200 Ok.")
            elif verb == "QUIT":
                await reply("221 Bye.")
                return
            elif verb == "NOTIFY":
                try:
                    length, uid, service, message_id, _sticky = parse_notify(argument)
                except ValueError as exc:
                    await reply(f"501 {exc}.")
                    continue
                text = await reader.readexactly(length)
                if not session.validated:
                    await reply("503 Validate first.")
                    continue
                self.post(uid, text, service=service, message_id=message_id)
                await reply("200 Ok.")
            elif verb == "CLEAR":
                await reply("200 Ok." if session.validated else "503 Validate first.")
            else:
                await reply("500 Unknown command.")
