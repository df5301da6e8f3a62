"""The UDP side of a Notify client: register with a server, receive and answer notices.

Used by the demo's client session, by ``check``-style probes and by the tests, against the
fake server directly or through a UDP mouth. It follows the ATP exchange of
:mod:`blitzdns.blitzmail.atp`: NR02 request → response → release; the server's NOTI
request → our response → its release. The side that waits re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Self, cast

from blitzdns.blitzmail.atp import (
    EOM,
    NOTICE,
    REGISTER,
    RELEASE,
    REQUEST,
    RESPONSE,
    SERVICE_MAIL,
    AtpError,
    AtpPacket,
    Notice,
    Registration,
)
from blitzdns.blitzmail.challenge import answer_challenge
from blitzdns.blitzmail.dnd import ClosesOnExit

Address = tuple[str, int]

RESEND_S = 1.0


class NotifyClient(asyncio.DatagramProtocol, ClosesOnExit):
    """One UDP socket on loopback that registers ``#uid`` and collects notices.

    ``notices`` holds each notice once (a re-sent NOTI is answered again, not kept twice);
    ``released`` the transaction ids the server released after our response.
    """

    def __init__(self) -> None:
        self.notices: list[Notice] = []
        self.released: set[int] = set()
        self.registered = asyncio.Event()
        self.changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._seen: set[tuple[Address, int]] = set()
        self._register_tid: int | None = None
        self._tids = itertools.count(0x100)

    async def start(self, host: str = "127.0.0.1") -> Self:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> Address:
        assert self._transport is not None, "not started"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def register(
        self,
        server: Address,
        uid: int,
        *,
        services: tuple[int, ...] = (SERVICE_MAIL,),
        port: int | None = None,
        timeout_s: float = 20.0,
    ) -> None:
        """Send NR02 (re-sent until answered, at most ``timeout_s``), then release it.

        ``port`` is the port written inside the registration; default: our own."""
        assert self._transport is not None, "not started"
        tid = next(self._tids) & 0xFFFF
        self._register_tid = tid
        self.registered.clear()
        registration = Registration(f"#{uid}", self.address[1] if port is None else port, services)
        request = AtpPacket(REQUEST, tid, REGISTER, registration.encode(), flags=EOM)
        async with asyncio.timeout(timeout_s):
            while not self.registered.is_set():
                self._transport.sendto(request.encode(), server)
                try:
                    async with asyncio.timeout(RESEND_S):
                        await self.registered.wait()
                except TimeoutError:
                    continue
        self._transport.sendto(request.answer(RELEASE).encode(), server)

    async def next_notice(self, count: int = 1) -> Notice:
        """The ``count``-th notice received (waits for it)."""
        while len(self.notices) < count:
            self.changed.clear()
            await self.changed.wait()
        return self.notices[count - 1]

    async def wait_released(self, count: int = 1) -> None:
        while len(self.released) < count:
            self.changed.clear()
            await self.changed.wait()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        try:
            packet = AtpPacket.parse(data)
        except AtpError:
            return
        if packet.kind == RESPONSE and packet.tid == self._register_tid:
            self.registered.set()
        elif packet.kind == REQUEST and packet.command == NOTICE:
            try:
                notice = Notice.parse(packet.data)
            except AtpError:
                return
            if (peer, packet.tid) not in self._seen:
                self._seen.add((peer, packet.tid))
                self.notices.append(notice)
            assert self._transport is not None
            self._transport.sendto(packet.answer(RESPONSE).encode(), peer)
        elif packet.kind == RELEASE and packet.command == NOTICE:
            self.released.add(packet.tid)
        self.changed.set()


class PostRefused(Exception):
    """The posting side (TCP 2152) did not accept the sign-on or the notice."""


async def post_notice(
    address: Address,
    user: str,
    password: str,
    uid: int,
    text: bytes,
    *,
    service: int = SERVICE_MAIL,
    message_id: int = 1,
    timeout_s: float = 10.0,
) -> list[str]:
    """Sign on at a Notify server's posting side (``USER``, ``PASE`` with the DES answer)
    and post one notice with ``NOTIFY``; return the server's reply lines, in order.

    Raises :class:`PostRefused` on a refusal, ``OSError`` or ``TimeoutError`` otherwise.
    """
    replies: list[str] = []
    reader, writer = await asyncio.open_connection(*address)
    try:
        async with asyncio.timeout(timeout_s):

            async def reply(expected: str) -> str:
                line = (await reader.readline()).decode("latin-1").strip()
                replies.append(line)
                if not line.startswith(expected):
                    raise PostRefused(f"expected {expected}, got {line!r}")
                return line

            await reply("220")
            writer.write(f"USER {user}\r\n".encode("latin-1"))
            challenge = (await reply("300")).split()[1]
            answer = answer_challenge(challenge, password)
            writer.write(f"PASE {answer}\r\n".encode("ascii"))
            await reply("200")
            writer.write(f"NOTIFY {len(text)},{uid},{service},{message_id},0\r\n".encode() + text)
            await reply("200")
            writer.write(b"QUIT\r\n")
            await reply("221")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return replies
