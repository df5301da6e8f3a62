"""Fuzz the resolver as a hostile client would: malformed UDP packets and TCP abuse.

    .venv/bin/python bench/fuzz_dns.py [--packets 1000000] [--batch 20000] [--rate 40000]

The resolver runs as its own process on 127.0.0.1, forwarding to a dnsmasq there. The
run sends ``--packets`` malformed packets in 16 kinds (below) at about ``--rate`` per
second, and after every batch some TCP abuse (garbage, short and long length prefixes,
a zero length, pipelining, a slow client), then checks that a protected and a forwarded
name still get their correct answers. Every reply is checked: parseable by dnspython
(an implementation independent of the server's), no larger than the client may take,
and none at all to a packet with QR set (those go from a socket of their own). It
prints the counts, the resolver's tracebacks, and its RSS and descriptors before and
after; the last line is ``RESULT {json}``. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message

from dnsabuse import (
    FORWARDED_SUFFIX,
    PROTECTED_NAME,
    descriptors,
    healthy,
    rss_kib,
    start_dnsmasq,
    start_stub,
)

Generator = Callable[[random.Random], bytes]


def name_wire(name: str) -> bytes:
    return b"".join(bytes((len(p),)) + p.encode() for p in name.split(".") if p) + b"\x00"


def header(
    rng: random.Random, flags: int = 0x0100, counts: tuple[int, ...] = (1, 0, 0, 0)
) -> bytes:
    return struct.pack(">HH4H", rng.getrandbits(16), flags, *counts)


def valid(rng: random.Random, *, protected: bool | None = None) -> bytes:
    if protected is None:
        protected = rng.random() < 0.5
    name = PROTECTED_NAME if protected else f"f{rng.getrandbits(20)}.{FORWARDED_SUFFIX}"
    return header(rng) + name_wire(name) + struct.pack(">HH", rng.choice((1, 28, 255)), 1)


def random_case(rng: random.Random, data: bytes) -> bytes:
    return bytes(b ^ 0x20 if 97 <= (b | 0x20) <= 122 and rng.random() < 0.5 else b for b in data)


def opt(payload: int, version: int = 0, flags: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00" + struct.pack(">HHBBHH", 41, payload, 0, version, flags, len(rdata)) + rdata


def cut(rng: random.Random, packet: bytes) -> bytes:
    return packet[: rng.randrange(12, len(packet))]


def as_response(packet: bytes) -> bytes:
    return packet[:2] + bytes((packet[2] | 0x80,)) + packet[3:]


def flipped(rng: random.Random, packet: bytes, flips: int = 3) -> bytes:
    data = bytearray(packet)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.getrandbits(8)
    return bytes(data)


KINDS: dict[str, Generator] = {
    "short header": lambda r: r.randbytes(r.randrange(12)),
    "random bytes": lambda r: r.randbytes(r.randrange(12, 600)),
    "cut question": lambda r: cut(r, valid(r)),
    "label over 63": lambda r: (
        header(r) + bytes((r.randrange(64, 192),)) + r.randbytes(70) + b"\x00\x00\x01\x00\x01"
    ),
    "name over 255": lambda r: (
        header(r)
        + b"".join(b"\x3f" + b"a" * 63 for _ in range(r.randrange(4, 6)))
        + b"\x00\x00\x01\x00\x01"
    ),
    "compression in question": lambda r: (
        header(r)
        + r.choice((b"\xc0\x0c", b"\x03abc\xc0\x0c", b"\xc0\xff", b"\xff\xff"))
        + b"\x00\x01\x00\x01"
    ),
    "qr set": lambda r: as_response(valid(r)),
    "bad counts": lambda r: (
        header(
            r,
            counts=(
                r.choice((0, 2, 3, 0xFFFF)),
                r.getrandbits(16),
                r.getrandbits(16),
                r.getrandbits(16),
            ),
        )
        + name_wire(PROTECTED_NAME)
        + b"\x00\x01\x00\x01"
    ),
    "odd opcode": lambda r: (
        header(r, flags=(r.randrange(1, 16) << 11) | 0x0100)
        + name_wire(PROTECTED_NAME)
        + b"\x00\x01\x00\x01"
    ),
    "odd edns": lambda r: (
        header(r, counts=(1, 0, 0, r.choice((1, 2))))
        + name_wire(r.choice((PROTECTED_NAME, f"e.{FORWARDED_SUFFIX}")))
        + b"\x00\x01\x00\x01"
        + r.choice(
            (
                opt(r.getrandbits(16), version=r.randrange(1, 256)),
                opt(4096) + opt(512),
                opt(0),
                opt(65535, rdata=r.randbytes(r.randrange(0, 40))),
                opt(1232)[:-2] + b"\xff\xff",
            )
        )
    ),
    "trailing garbage": lambda r: valid(r) + r.randbytes(r.randrange(1, 40)),
    "odd type or class": lambda r: (
        header(r)
        + name_wire(r.choice((PROTECTED_NAME, "1.0.77.127.in-addr.arpa", f"t.{FORWARDED_SUFFIX}")))
        + struct.pack(
            ">HH",
            r.choice((0, 41, 251, 252, 65535, r.getrandbits(16))),
            r.choice((0, 3, 254, 255, 1)),
        )
    ),
    "flipped protected": lambda r: flipped(r, valid(r, protected=True)),
    "flipped forwarded": lambda r: flipped(r, valid(r, protected=False)),
    "records in a query": lambda r: (
        header(r, counts=(1, r.randrange(1, 3), r.randrange(0, 2), 0))
        + name_wire(PROTECTED_NAME)
        + b"\x00\x01\x00\x01"
        + r.randbytes(r.randrange(0, 60))
    ),
    "odd labels": lambda r: (
        header(r)
        + b"".join(
            bytes((n,)) + r.randbytes(n)
            for n in (r.randrange(0, 20) for _ in range(r.randrange(1, 6)))
        )
        + b"\x00\x00\x01\x00\x01"
    ),
}
assert len(KINDS) == 16


class Tally:
    """What the run saw."""

    def __init__(self) -> None:
        self.packets = 0
        self.replies = 0
        self.replies_to_qr = 0
        self.oversize = 0
        self.unparseable = 0
        self.tcp_sessions = 0
        self.checks = 0
        self.failed_checks: list[str] = []

    def reply(self, data: bytes, *, udp: bool) -> None:
        self.replies += 1
        try:
            message = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError):
            self.unparseable += 1
            return
        limit = 512 if message.edns < 0 else max(512, message.payload)
        if udp and len(data) > limit:
            self.oversize += 1


def drain(sock: socket.socket, tally: Tally, *, qr: bool, quiet_s: float = 0.2) -> None:
    """Read replies until none has come for ``quiet_s``."""
    sock.settimeout(quiet_s)
    while True:
        try:
            data = sock.recv(65535)
        except (TimeoutError, BlockingIOError):
            return
        except OSError:
            continue
        if qr:
            tally.replies_to_qr += 1
        tally.reply(data, udp=True)


def recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def tcp_abuse(port: int, rng: random.Random, tally: Tally) -> None:
    """One round of each kind of TCP abuse; replies that come are checked."""
    address = ("127.0.0.1", port)

    def session(action: Callable[[socket.socket], None]) -> None:
        tally.tcp_sessions += 1
        try:
            with socket.create_connection(address, timeout=3) as conn:
                action(conn)
        except OSError:
            pass  # closed or reset by the server: allowed for abuse

    def read_replies(conn: socket.socket, count: int) -> None:
        for _ in range(count):
            size = int.from_bytes(recv_exactly(conn, 2), "big")
            tally.reply(recv_exactly(conn, size), udp=False)

    session(lambda c: c.sendall(rng.randbytes(rng.randrange(1, 300))))
    session(lambda c: c.sendall(b"\x00\x64" + rng.randbytes(10)))  # short: 100 promised
    session(lambda c: c.sendall(b"\xff\xff" + rng.randbytes(100)))  # long prefix, cut
    session(lambda c: (c.sendall(b"\x00\x00" + framed(valid(rng))), read_replies(c, 1)))

    def pipelined(conn: socket.socket) -> None:
        conn.sendall(b"".join(framed(valid(rng, protected=True)) for _ in range(50)))
        read_replies(conn, 50)

    def slow(conn: socket.socket) -> None:
        for byte in framed(valid(rng, protected=True)):
            conn.sendall(bytes((byte,)))
            time.sleep(0.005)
        read_replies(conn, 1)

    def malformed_in_frame(conn: socket.socket) -> None:
        for kind in ("label over 63", "name over 255", "bad counts", "odd edns"):
            conn.sendall(framed(KINDS[kind](rng)))
        read_replies(conn, 4)

    session(pipelined)
    session(slow)
    session(malformed_in_frame)


def framed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def run(packets: int, batch: int, rate: int, seed: int, directory: Path) -> dict[str, object]:
    rng = random.Random(seed)
    upstream, upstream_port = start_dnsmasq()
    stub = start_stub([f"127.0.0.1:{upstream_port}"], directory / "resolver.log")
    tally = Tally()
    crashes = 0
    try:
        warm = healthy(stub.port)
        if warm != (True, True):
            raise SystemExit(f"the resolver does not answer correctly before the run: {warm}")
        before = (rss_kib(stub.pid), descriptors(stub.pid))
        kinds = list(KINDS.items())
        started = time.monotonic()
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as qr_sender,
        ):
            for sock in (sender, qr_sender):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
                sock.setblocking(False)
            target = ("127.0.0.1", stub.port)
            while tally.packets < packets:
                for i in range(min(batch, packets - tally.packets)):
                    name, make = kinds[i % len(kinds)]
                    sock = qr_sender if name == "qr set" else sender
                    with contextlib.suppress(BlockingIOError):
                        sock.sendto(make(rng), target)
                    tally.packets += 1
                    if tally.packets % 500 == 0:
                        ahead = tally.packets / rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                        drain(sender, tally, qr=False, quiet_s=0)
                        drain(qr_sender, tally, qr=True, quiet_s=0)
                drain(sender, tally, qr=False)
                drain(qr_sender, tally, qr=True)
                if not stub.alive():
                    crashes += 1
                    break
                tcp_abuse(stub.port, rng, tally)
                tally.checks += 1
                protected_ok, forwarded_ok = healthy(stub.port)
                if not (protected_ok and forwarded_ok):
                    tally.failed_checks.append(
                        f"after {tally.packets}: protected {protected_ok}, forwarded {forwarded_ok}"
                    )
        elapsed = time.monotonic() - started
        after = (rss_kib(stub.pid), descriptors(stub.pid)) if stub.alive() else (0, 0)
        if not stub.alive():
            crashes = max(crashes, 1)
    finally:
        stub.stop()
        upstream.terminate()
        upstream.wait()
    log = stub.log_text()
    return {
        "packets": tally.packets,
        "seconds": round(elapsed, 1),
        "replies": tally.replies,
        "tcp_sessions": tally.tcp_sessions,
        "checks": tally.checks,
        "failed_checks": tally.failed_checks,
        "crashes": crashes,
        "tracebacks": log.count("Traceback"),
        "log_lines": len(log.splitlines()),
        "replies_to_qr": tally.replies_to_qr,
        "oversize": tally.oversize,
        "unparseable": tally.unparseable,
        "rss_kib_before": before[0],
        "rss_kib_after": after[0],
        "fds_before": before[1],
        "fds_after": after[1],
        "resolver_errors": stub.stats.get("errors"),
        "formerr": stub.stats.get("formerr"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=40_000, help="packets per second")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="blitzdns-fuzz-") as directory:
        result = run(args.packets, args.batch, args.rate, args.seed, Path(directory))
    bad = (
        result["crashes"],
        result["tracebacks"],
        result["replies_to_qr"],
        result["oversize"],
        result["unparseable"],
        len(result["failed_checks"]),  # type: ignore[arg-type]
    )
    for key, value in result.items():
        print(f"{key:>16}  {value}")
    print("RESULT " + json.dumps(result), flush=True)
    return 1 if any(bad) else 0


if __name__ == "__main__":
    sys.exit(main())
