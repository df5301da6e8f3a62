"""DNS peers for the resolver-config tests.

:func:`blitzdns_stub` starts the real blitzdns resolver (``python -m blitzdns.dns``)
as a subprocess. :class:`Stub` is a tiny UDP answerer standing in for the *other* servers
(a machine's usual upstream): A for the names it is given, NOERROR/NODATA for their other
types, NXDOMAIN for anything else, and a record of every question it saw.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping

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


@contextlib.contextmanager
def blitzdns_stub(listen: str, upstream: str, *extra: str) -> Iterator[str]:
    """Run the real blitzdns resolver on ``listen`` (port 0: any free port); yield ADDR:PORT."""
    argv = [sys.executable, "-m", "blitzdns.dns", "--listen", listen]
    argv += ["--upstream", upstream, "--no-loop-probe", *extra]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and not line:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
            elif process.poll() is not None:
                break
        if not line.startswith("ready "):
            process.kill()
            _, errors = process.communicate(timeout=10)
            raise RuntimeError(f"the blitzdns stub did not start: {line!r} {errors[-800:]}")
        yield line.split()[1]
    finally:
        process.terminate()
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
