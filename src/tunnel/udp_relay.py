"""blitzdns UDP relay: the gateway side of a UDP forward, run by ``python3`` over SSH.

Sent as the input of an exec channel (see ``tunnel.udp.BOOTSTRAP``), never written to the
gateway's disk; standard library only; Python 3.6 or later. Command line (after the
bootstrap's program length): ``TARGET_HOST TARGET_PORT MAX_DATAGRAM IDLE_S MAX_ASSOCIATIONS``.

Frames on stdin and stdout (``>BIH`` kind, association, length; then the payload; the
table is in ``tunnel/udp.py``). One UDP socket per association, connected to the target,
so only the target's datagrams come back and each goes to the association that sent to it.
An association with no datagram either way for IDLE_S seconds is closed. When stdin closes
(the channel, or the whole SSH connection, ended) every socket is closed and the process
exits: nothing stays behind on the gateway.
"""

import contextlib
import os
import selectors
import socket
import struct
import sys
import time

VERSION = 1
HEADER = struct.Struct(">BIH")
HELLO, OPEN, DATA, CLOSE, DROPPED = (ord(kind) for kind in "HODCX")
KINDS = (HELLO, OPEN, DATA, CLOSE, DROPPED)
MAX_DATAGRAM = 65507


class Relay:
    """The association table and the two loops (stdin frames, target datagrams)."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        max_datagram: int,
        idle_s: float,
        max_associations: int,
        out_fd: int = 1,
    ) -> None:
        self.target = (target_host, target_port)
        self.max_datagram = max_datagram
        self.idle_s = idle_s
        self.max_associations = max_associations
        self.out_fd = out_fd
        self.selector = selectors.DefaultSelector()
        self.sockets = {}  # type: dict[int, socket.socket]
        self.last_used = {}  # type: dict[int, float]
        self.buffer = b""

    def send(self, kind: int, association: int, payload: bytes = b"") -> None:
        data = memoryview(HEADER.pack(kind, association, len(payload)) + payload)
        while data:
            data = data[os.write(self.out_fd, data) :]

    def open(self, association: int) -> None:
        if association in self.sockets:
            return
        if len(self.sockets) >= self.max_associations:
            self.send(CLOSE, association, b"too many associations")
            return
        try:
            infos = socket.getaddrinfo(self.target[0], self.target[1], 0, socket.SOCK_DGRAM)
            family, kind, proto, _name, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self.send(CLOSE, association, describe("cannot reach the target", exc))
            return
        try:
            sock.connect(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            self.send(CLOSE, association, describe("cannot reach the target", exc))
            return
        self.sockets[association] = sock
        self.last_used[association] = time.monotonic()
        self.selector.register(sock, selectors.EVENT_READ, association)
        local = sock.getsockname()
        self.send(OPEN, association, f"{local[0]} {local[1]}".encode("ascii"))

    def close(self, association: int, reason: bytes = b"") -> None:
        sock = self.sockets.pop(association, None)
        self.last_used.pop(association, None)
        if sock is None:
            return
        self.selector.unregister(sock)
        sock.close()
        if reason:
            self.send(CLOSE, association, reason)

    def forward_up(self, association: int, datagram: bytes) -> None:
        if association not in self.sockets:
            self.open(association)
        sock = self.sockets.get(association)
        if sock is None:
            return
        if len(datagram) > self.max_datagram:
            self.send(DROPPED, association, b"oversize")
            return
        self.last_used[association] = time.monotonic()
        try:
            sock.send(datagram)
        except (BlockingIOError, ConnectionRefusedError):
            self.send(DROPPED, association, b"target not reachable")
        except OSError as exc:
            self.close(association, describe("target not reachable", exc))

    def forward_down(self, association: int, sock: socket.socket) -> None:
        try:
            datagram = sock.recv(self.max_datagram + 1)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionRefusedError:
            return  # an ICMP port unreachable for an earlier datagram: UDP semantics
        except OSError as exc:
            self.close(association, describe("target not reachable", exc))
            return
        if len(datagram) > self.max_datagram:
            self.send(DROPPED, association, b"oversize")
            return
        self.last_used[association] = time.monotonic()
        self.send(DATA, association, datagram)

    def feed(self, data: bytes) -> None:
        """Frames from stdin; a stream that is not ours ends the relay."""
        buffer = self.buffer + data
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            kind, association, length = HEADER.unpack_from(buffer, offset)
            if kind not in KINDS or length > MAX_DATAGRAM:
                raise SystemExit("blitzdns udp relay: corrupt frame stream")
            end = offset + HEADER.size + length
            if len(buffer) < end:
                break
            payload = buffer[offset + HEADER.size : end]
            offset = end
            if kind == DATA:
                self.forward_up(association, payload)
            elif kind == OPEN:
                self.open(association)
            elif kind == CLOSE:
                self.close(association)
        self.buffer = buffer[offset:]

    def expire(self, now: float) -> float:
        """Close idle associations; return seconds until the next one could expire."""
        wait = self.idle_s
        for association, last in list(self.last_used.items()):
            left = last + self.idle_s - now
            if left <= 0:
                self.close(association, b"idle")
            else:
                wait = min(wait, left)
        return wait

    def run(self, in_fd: int = 0) -> None:
        python = "{}.{}".format(*sys.version_info[:2])
        self.send(HELLO, 0, f"blitzdns-udp-relay {VERSION} python {python}".encode("ascii"))
        self.selector.register(in_fd, selectors.EVENT_READ, None)
        try:
            while True:
                timeout = self.expire(time.monotonic())
                for key, _events in self.selector.select(timeout):
                    if key.data is None:
                        data = os.read(in_fd, 65536)
                        if not data:
                            return
                        self.feed(data)
                    elif key.data in self.sockets:
                        self.forward_down(key.data, self.sockets[key.data])
        finally:
            for association in list(self.sockets):
                self.close(association)
            self.selector.close()


def describe(what: str, exc: OSError) -> bytes:
    return f"{what}: {exc.strerror or exc}".encode("utf-8", "replace")


def main(argv: "list[str]") -> None:
    host, port, max_datagram, idle_s, max_associations = argv
    relay = Relay(host, int(port), int(max_datagram), float(idle_s), int(max_associations))
    with contextlib.suppress(BrokenPipeError):  # the channel is gone, and whoever read us
        relay.run()


if __name__ == "__main__":
    main(sys.argv[2:])
