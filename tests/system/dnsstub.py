"""A tiny UDP DNS answerer for the resolver-config tests, standing in for the blitzdns stub.

It answers A for the names it is given, NOERROR/NODATA for their other types (as the real
stub does for AAAA, so glibc falls back to A), NXDOMAIN for anything else, and records every
question it sees. Run as a thread (:class:`Stub`) or as a script inside a namespace:
``python dnsstub.py ADDR PORT NAME=IP ...`` (prints ``ready`` once bound).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Mapping

from dnslib import QTYPE, RR, A, DNSRecord


class Stub:
    """Answers ``answers`` (lower-case name → IPv4) on ``address``:``port`` (0: a free port)."""

    def __init__(self, answers: Mapping[str, str], address: str = "127.0.0.1", port: int = 0):
        self.answers = {k.lower().rstrip("."): v for k, v in answers.items()}
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.bind((address, port))
        self.address = address
        self.port: int = self.sock.getsockname()[1]
        self.questions: list[tuple[str, str]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Stub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(data), peer)
            except Exception:  # a test stub answers what it can and keeps going
                continue

    def answer(self, data: bytes) -> bytes:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).lower().rstrip(".")
        qtype = QTYPE[query.q.qtype]
        self.questions.append((name, qtype))
        reply = query.reply()
        if name not in self.answers:
            reply.header.rcode = 3
        elif qtype == "A":
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(self.answers[name]), ttl=0))
        return bytes(reply.pack())


def main(argv: list[str]) -> None:
    address, port, *pairs = argv
    answers = dict(pair.split("=", 1) for pair in pairs)
    with Stub(answers, address, int(port)):
        print("ready", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1:])
