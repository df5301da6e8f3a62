"""A minimal DNS client for ``demo`` and ``check``: one question over UDP, the answer's records.

Deliberately independent of the server's wire code (it uses no dnslib): ``check`` asks the
stub with a second implementation, as a real client would, so a bug shared by the
server's encoder and decoder cannot hide itself (only the protocol's numbers,
:mod:`blitzdns.dns.rfc`, are shared). RFC 1035 §4.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import struct
from dataclasses import dataclass

from blitzdns.dns.rfc import AAAA, CLASS_IN, CNAME, QR, RCODE_MASK, RCODE_NAMES, RD, TYPE_NAMES, A


class LookupFailed(Exception):
    """No usable answer: timeout, or a reply that does not parse."""


@dataclass(frozen=True, slots=True)
class Record:
    rtype: int
    ttl: int
    #: Addresses for A/AAAA as text; the raw RDATA otherwise.
    value: str | bytes
    #: The record's owner name, and for a CNAME the name it points to.
    owner: str = ""
    target: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    rcode: str
    question: str
    answers: tuple[Record, ...]

    def addresses(self) -> list[str]:
        return [r.value for r in self.answers if isinstance(r.value, str)]


def build_query(name: str, qtype: str, query_id: int) -> bytes:
    """A standard recursive query for ``name`` (kept in its exact letter case)."""
    header = struct.pack("!HHHHHH", query_id, RD, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split(".") if p)
    return header + labels + b"\x00" + struct.pack("!HH", TYPE_NAMES[qtype], CLASS_IN)


def _skip_name(packet: bytes, offset: int) -> int:
    while True:
        if offset >= len(packet):
            raise LookupFailed("truncated name")
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def _read_name(packet: bytes, offset: int) -> str:
    labels: list[str] = []
    jumps = 0
    while True:
        length = packet[offset]
        if length == 0:
            return ".".join(labels)
        if length & 0xC0 == 0xC0:
            jumps += 1
            if jumps > 16:
                raise LookupFailed("compression loop")
            offset = struct.unpack_from("!H", packet, offset)[0] & 0x3FFF
            continue
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def parse_reply(packet: bytes, query_id: int) -> Reply:
    """The rcode, the question as echoed, and the answer section's records."""
    try:
        rid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", packet)
        if rid != query_id or not flags & QR:
            raise LookupFailed("not the reply to our query")
        offset = 12
        question = _read_name(packet, offset) if qd else ""
        for _ in range(qd):
            offset = _skip_name(packet, offset) + 4
        answers = []
        for _ in range(an):
            owner = _read_name(packet, offset)
            offset = _skip_name(packet, offset)
            rtype, _cls, ttl, length = struct.unpack_from("!HHIH", packet, offset)
            if ttl & 0x80000000:
                ttl = 0  # RFC 2181 §8: a TTL with the top bit set is to be treated as zero
            offset += 10
            rdata = packet[offset : offset + length]
            target = _read_name(packet, offset) if rtype == CNAME else None
            offset += length
            value: str | bytes = rdata
            if rtype in (A, AAAA) and len(rdata) in (4, 16):
                value = str(ipaddress.ip_address(rdata))
            answers.append(Record(rtype, ttl, value, owner, target))
    except (struct.error, IndexError, UnicodeError) as exc:
        raise LookupFailed(f"unparseable reply: {exc}") from None
    rcode = flags & RCODE_MASK
    return Reply(RCODE_NAMES.get(rcode, str(rcode)), question, tuple(answers))


class _Once(asyncio.DatagramProtocol):
    def __init__(self, query_id: int):
        self.query_id = query_id
        self.done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.done.done():
            return
        with contextlib.suppress(LookupFailed):
            self.done.set_result(parse_reply(data, self.query_id))

    def error_received(self, exc: Exception) -> None:
        """The socket is connected, so the server's ICMP "port unreachable" comes back as
        ``ECONNREFUSED``: nothing listens there; say so now instead of waiting it out."""
        if not self.done.done():
            self.done.set_exception(LookupFailed(f"nothing answers there ({exc})"))


async def query(
    server: tuple[str, int], name: str, qtype: str = "A", *, timeout: float = 2.0
) -> Reply:
    """Ask ``server`` one question over UDP; raise LookupFailed when nothing usable comes."""
    query_id = secrets.randbelow(65536)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Once(query_id), remote_addr=server
    )
    try:
        transport.sendto(build_query(name, qtype, query_id))
        async with asyncio.timeout(timeout):
            return await protocol.done
    except TimeoutError:
        raise LookupFailed(f"no answer from {server[0]}:{server[1]} in {timeout:g}s") from None
    except LookupFailed as exc:
        raise LookupFailed(f"no answer from {server[0]}:{server[1]}: {exc}") from None
    finally:
        transport.close()
