"""Read a tcpdump ``-w`` capture: just enough of pcap, Ethernet, IPv4 and TCP/UDP.

The leak test asks questions of every frame on the client's link (who talked to whom,
on which port, carrying which bytes), so it parses the file itself instead of scraping
``tcpdump -r`` text. Formats: pcap (libpcap "savefile", microsecond or nanosecond
magic, either byte order), link type 1 (Ethernet, RFC 894 framing), IPv4 (RFC 791),
TCP (RFC 9293 §3.1), UDP (RFC 768). Anything else is kept as an opaque frame.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

LINKTYPE_ETHERNET = 1
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD
PROTO_TCP = 6
PROTO_UDP = 17

_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<",
    b"\xa1\xb2\xc3\xd4": ">",
    b"\x4d\x3c\xb2\xa1": "<",
    b"\xa1\xb2\x3c\x4d": ">",
}


class PcapError(ValueError):
    """The file is not a capture this reader understands."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame; the IP fields are None for anything that is not IPv4."""

    ethertype: int
    raw: bytes
    src: str | None = None
    dst: str | None = None
    protocol: int | None = None
    sport: int | None = None
    dport: int | None = None
    payload: bytes = b""

    @property
    def is_ipv4(self) -> bool:
        return self.ethertype == ETHERTYPE_IPV4

    def touches(self, network: str) -> bool:
        """Whether the source or destination lies in ``network``."""
        net = ipaddress.ip_network(network)
        return any(
            addr is not None and ipaddress.ip_address(addr) in net for addr in (self.src, self.dst)
        )

    def __str__(self) -> str:
        if not self.is_ipv4:
            return f"ethertype 0x{self.ethertype:04x} ({len(self.raw)} bytes)"
        ports = f" {self.sport} > {self.dport}" if self.sport is not None else ""
        return (
            f"{self.src} > {self.dst} proto {self.protocol}{ports} "
            f"payload {len(self.payload)} bytes"
        )


def _ipv4(ethertype: int, frame: bytes, packet: bytes) -> Frame:
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return Frame(ethertype, frame)
    header = (packet[0] & 0x0F) * 4
    total = struct.unpack("!H", packet[2:4])[0]
    body = packet[header : max(header, min(total, len(packet)))]
    protocol = packet[9]
    src = str(ipaddress.IPv4Address(packet[12:16]))
    dst = str(ipaddress.IPv4Address(packet[16:20]))
    sport = dport = None
    payload = body
    if protocol in (PROTO_TCP, PROTO_UDP) and len(body) >= 8:
        sport, dport = struct.unpack("!HH", body[:4])
        offset = ((body[12] >> 4) * 4) if protocol == PROTO_TCP and len(body) >= 20 else 8
        payload = body[offset:]
    return Frame(ethertype, frame, src, dst, protocol, sport, dport, payload)


def read_pcap(data: bytes) -> list[Frame]:
    """Every frame in a pcap file's bytes; raise :class:`PcapError` for another format."""
    if len(data) < 24 or data[:4] not in _MAGICS:
        raise PcapError("not a pcap file (bad magic)")
    order = _MAGICS[data[:4]]
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype} is not Ethernet")
    frames: list[Frame] = []
    offset = 24
    while offset + 16 <= len(data):
        captured = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        frame = data[offset + 16 : offset + 16 + captured]
        offset += 16 + captured
        if len(frame) < 14:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == ETHERTYPE_IPV4:
            frames.append(_ipv4(ethertype, frame, frame[14:]))
        else:
            frames.append(Frame(ethertype, frame))
    return frames
