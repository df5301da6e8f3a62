"""The capture reader the leak test relies on, checked on frames built by hand (no root)."""

from __future__ import annotations

import struct

import pytest

from .pcap import ETHERTYPE_ARP, PROTO_TCP, PcapError, read_pcap


def _header(magic: bytes = b"\xd4\xc3\xb2\xa1", linktype: int = 1) -> bytes:
    order = "<" if magic[0] == 0xD4 else ">"
    return magic + struct.pack(order + "HHiIII", 2, 4, 0, 0, 65535, linktype)


def _record(frame: bytes) -> bytes:
    return struct.pack("<IIII", 1, 0, len(frame), len(frame)) + frame


def _tcp_frame(payload: bytes, sport: int = 40000, dport: int = 22) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, 20 + len(tcp), 0, 0, 64, PROTO_TCP, 0,
        bytes([192, 0, 2, 2]), bytes([192, 0, 2, 1]),
    )  # fmt: skip
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


def test_reads_tcp_fields_and_payload_and_keeps_other_frames() -> None:
    arp = b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + b"\x00" * 28
    data = _header() + _record(_tcp_frame(b"SSH-2.0-OpenSSH\r\n")) + _record(arp)

    tcp, other = read_pcap(data)

    assert (tcp.src, tcp.dst, tcp.sport, tcp.dport) == ("192.0.2.2", "192.0.2.1", 40000, 22)
    assert tcp.payload == b"SSH-2.0-OpenSSH\r\n"
    assert tcp.touches("192.0.2.0/24") and not tcp.touches("198.51.100.0/24")
    assert other.ethertype == ETHERTYPE_ARP and not other.is_ipv4


def test_big_endian_files_read_the_same() -> None:
    data = _header(b"\xa1\xb2\xc3\xd4") + struct.pack(">IIII", 1, 0, 60, 60) + _tcp_frame(b"x" * 6)
    assert read_pcap(data)[0].payload == b"x" * 6


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not a capture at all....", "bad magic"), (_header(linktype=113), "not Ethernet")],
)
def test_other_formats_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(PcapError, match=reason):
        read_pcap(data)
