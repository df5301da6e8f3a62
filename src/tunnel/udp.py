"""UDP through an SSH exec channel: datagram framing and the gateway-side relay's commands.

SSH carries byte streams only, so datagrams cross the link in frames, each tagged with the
*association* (one local sender) it belongs to. The gateway side is a small relay started
over an exec channel: :data:`RELAY_PROGRAM` (``udp_relay.py`` beside this module, shipped as
package data) sent as the command's input to ``python3``, which opens one UDP socket per
association towards the target and expires it after an idle time. Where the gateway has no
python3, ``socat`` carries one association per exec channel instead (see
:class:`SocatTranscript` for how datagram boundaries survive that).

A frame, both directions (all integers big-endian)::

    kind (1 byte)  association (4 bytes)  length (2 bytes)  payload (length bytes)

=========  =========================  ==============================================
kind       sent by                    payload
=========  =========================  ==============================================
``H``      relay, once at start       ``blitzdns-udp-relay <version> python <x.y>``
``O``      local: open an association  empty
``O``      relay: it is open          the association socket's ``<address> <port>``
``D``      both                       one datagram
``C``      local: close it            empty
``C``      relay: it was closed       the reason (``idle``, ``cannot reach …``)
``X``      relay: a datagram dropped  the reason (``oversize``)
=========  =========================  ==============================================

Everything here is pure (bytes in, frames and bytes out); the asyncio layers feed it.
"""

from __future__ import annotations

import functools
import re
import shlex
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from tunnel.errors import TunnelConfigError, TunnelError
from tunnel.forwards import Forward

HEADER: Final = struct.Struct(">BIH")
"""kind, association id, payload length."""

KIND_HELLO: Final = ord("H")
KIND_OPEN: Final = ord("O")
KIND_DATA: Final = ord("D")
KIND_CLOSE: Final = ord("C")
KIND_DROPPED: Final = ord("X")
KINDS: Final = frozenset({KIND_HELLO, KIND_OPEN, KIND_DATA, KIND_CLOSE, KIND_DROPPED})

MAX_DATAGRAM: Final = 65507
"""The largest UDP payload over IPv4 (65535 − 20 IP − 8 UDP); no frame carries more."""

DEFAULT_MAX_DATAGRAM: Final = 8192
"""The default size limit: larger datagrams are dropped and counted, not carried."""

DEFAULT_IDLE_S: Final = 120.0
"""A plain association with no datagram either way for this long is closed (both sides)."""

DEFAULT_MAX_ASSOCIATIONS: Final = 256
"""Associations one relay holds at once; more are refused (closed with a reason)."""

RELAY_VERSION: Final = 1
"""The framing version the relay announces in its hello; a mismatch is refused."""

MAX_ASSOCIATION: Final = 0xFFFFFFFF


class FramingError(TunnelError):
    """The byte stream is not a sequence of frames (corrupt, or not our relay talking)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: what it is, which association it belongs to, its payload."""

    kind: int
    association: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown frame kind {self.kind!r}")
        if not 0 <= self.association <= MAX_ASSOCIATION:
            raise ValueError(f"association id {self.association} out of range")
        if len(self.payload) > MAX_DATAGRAM:
            raise ValueError(f"frame payload of {len(self.payload)} bytes exceeds {MAX_DATAGRAM}")

    @property
    def text(self) -> str:
        """The payload as text (hello, open, close and drop reasons)."""
        return self.payload.decode("utf-8", "replace")

    def encode(self) -> bytes:
        return HEADER.pack(self.kind, self.association, len(self.payload)) + self.payload


def encode(kind: int, association: int, payload: bytes = b"") -> bytes:
    """One frame's bytes (the hot path: no :class:`Frame` object)."""
    return HEADER.pack(kind, association, len(payload)) + payload


class FrameDecoder:
    """Incremental: :meth:`feed` any chunking of the stream, get whole frames back in order.

    ``max_payload`` bounds what one frame may claim; a longer claim, or an unknown kind,
    means the stream is not ours (or corrupt) and raises :class:`FramingError`: the
    channel must then be closed, since no later byte can be trusted to start a frame.
    """

    def __init__(self, max_payload: int = MAX_DATAGRAM) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        offset = 0
        size = HEADER.size
        while len(buffer) - offset >= size:
            kind, association, length = HEADER.unpack_from(buffer, offset)
            if kind not in KINDS:
                raise FramingError(f"relay stream: unknown frame kind 0x{kind:02x}")
            if length > self._max_payload:
                raise FramingError(
                    f"relay stream: a frame claims {length} bytes, over the {self._max_payload} "
                    "limit"
                )
            end = offset + size + length
            if len(buffer) < end:
                break
            frames.append(Frame(kind, association, bytes(buffer[offset + size : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames


# ---------------------------------------------------------------------------
# The relay program and the commands that start it


def relay_program() -> bytes:
    """The gateway-side relay's source (``udp_relay.py``), as sent to ``python3``.

    Read beside this file: ``importlib.resources`` would load tempfile, shutil and zipfile
    into every ``blitzdns run`` (about 5 ms of its start) for one read."""
    return Path(__file__).with_name("udp_relay.py").read_bytes()


RELAY_PROGRAM: Final = relay_program()

BOOTSTRAP: Final = (
    "import os,sys;n=int(sys.argv[1]);"
    "r=lambda k:(lambda c:c+r(k-len(c)) if c and len(c)<k else c)(os.read(0,k));"
    "s=r(n);len(s)==n or sys.exit(9);"
    'exec(compile(s,"blitzdns-udp-relay","exec"))'
)
"""What ``python3 -c`` runs: read exactly the program's length from stdin, run it. The rest
of stdin is left unread for the program (``os.read``, no buffering), so one channel carries
the program and then the frames; nothing is written to the gateway's disk. One line, no
``!`` and only double quotes inside, so sh, bash, zsh and csh all pass it on unchanged."""


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What the relay enforces on the gateway side (passed on its command line)."""

    max_datagram: int = DEFAULT_MAX_DATAGRAM
    idle_s: float = DEFAULT_IDLE_S
    max_associations: int = DEFAULT_MAX_ASSOCIATIONS

    def __post_init__(self) -> None:
        if not 1 <= self.max_datagram <= MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be 1-{MAX_DATAGRAM}, got {self.max_datagram}")
        if not self.idle_s > 0:
            raise ValueError(f"idle_s must be positive, got {self.idle_s}")
        if not self.max_associations >= 1:
            raise ValueError(f"max_associations must be at least 1, got {self.max_associations}")


class DatagramStep(Protocol):
    """A protocol-aware step on a forward's datagrams (the notify preset's NR02 rewrite).

    ``upstream`` may rewrite a sender's datagram given the port of its association's socket
    on the gateway, and may name a local *notice port*: the port on the sender's address
    where the target's own requests should go (0: the sender's port). ``server_initiated``
    tells those requests from replies, which always go back to the sender.
    """

    def upstream(self, datagram: bytes, relay_port: int) -> tuple[bytes, int | None]: ...

    def server_initiated(self, datagram: bytes) -> bool: ...


@dataclass(frozen=True)
class UdpForward(Forward):
    """A UDP forward: datagrams to the mouth reach the target as the gateway sees it,
    through a relay on the gateway (:mod:`tunnel.udp_mouth`); ``limits`` bound it."""

    limits: RelayLimits = RelayLimits()
    step: DatagramStep | None = None
    """A protocol-aware step for this service (e.g. Notify's registration rewrite); it
    must compare equal to an equivalent step (a frozen dataclass), so a reload that keeps
    it keeps the forward."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.limits, RelayLimits):
            raise TunnelConfigError(f"forward {self.name or self.mouth_host}: bad UDP limits")

    def __str__(self) -> str:
        return f"udp {super().__str__()}"


def python_relay_command(
    target_host: str, target_port: int, limits: RelayLimits = RelayLimits(), python: str = "python3"
) -> str:
    """The exec command that starts the relay; send :data:`RELAY_PROGRAM` first on its stdin."""
    words = [
        python,
        "-c",
        BOOTSTRAP,
        str(len(RELAY_PROGRAM)),
        target_host,
        str(target_port),
        str(limits.max_datagram),
        f"{limits.idle_s:g}",
        str(limits.max_associations),
    ]
    return " ".join(shlex.quote(word) for word in words)


def socat_command(
    target_host: str, target_port: int, limits: RelayLimits = RelayLimits(), socat: str = "socat"
) -> str:
    """The exec command for one association through ``socat`` (the fallback).

    ``-d -d`` logs the local address of the association's socket (``successfully connected
    from local address``), ``-x`` logs every transfer with its length, ``-b`` lets one read
    take a whole datagram, ``-T`` ends the association after the idle time. socat exits
    (within its 0.5 s ``-t``) once the channel's stdin closes.
    """
    host = f"[{target_host}]" if ":" in target_host else target_host
    words = [
        socat,
        "-d",
        "-d",
        "-x",
        "-b",
        str(MAX_DATAGRAM),
        "-T",
        f"{limits.idle_s:g}",
        "STDIO",
        f"UDP:{host}:{target_port}",
    ]
    return " ".join(shlex.quote(word) for word in words)


SOCAT_MAX_DATAGRAM: Final = 4096
"""The largest datagram the socat fallback carries upstream: a pipe write of at most
PIPE_BUF bytes (4096 on Linux, at least 512 by POSIX) reaches socat whole, in one read."""


# ---------------------------------------------------------------------------
# The socat fallback: datagram boundaries from socat's own transfer log


_TRANSFER = rb"^([<>]) \S+ \S+\s+length=(\d+) from=\d+ to=-?\d+"
_CONNECTED = (
    rb"successfully connected from local address AF=\d+ (?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+)):(\d+)"
)


@functools.cache
def _socat_patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """:data:`_TRANSFER` and :data:`_CONNECTED`, compiled at the first line parsed: ~0.8 ms
    of every daemon's start otherwise (re's compiler is Python), and most forward no UDP."""
    return re.compile(_TRANSFER), re.compile(_CONNECTED)


@dataclass(frozen=True, slots=True)
class SocatConnected:
    """socat's association socket on the gateway: where the target sees datagrams from."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class SocatTransfer:
    """One transfer socat made: ``up`` (channel → target) or ``down``, of ``length`` bytes."""

    direction: Literal["up", "down"]
    length: int


@dataclass(frozen=True, slots=True)
class SocatDatagram:
    """One datagram from the target, cut out of socat's stdout."""

    payload: bytes


SocatEvent = SocatConnected | SocatTransfer | SocatDatagram


class SocatTranscript:
    """Turns socat's stdout and its ``-x`` stderr log back into datagrams.

    A channel's stdout is a byte stream: two datagrams socat wrote quickly may arrive as one
    chunk. But socat logs every transfer on stderr with its length (``< … length=7 …``), and
    from a UDP socket every read is exactly one datagram; so the down lengths, in order,
    cut stdout back into datagrams. Upstream, the sender keeps one datagram in flight and
    waits for its ``>`` transfer line, so each pipe read on the gateway holds one datagram.

    Feed both streams as they arrive, in any interleaving; each call returns the events
    now complete (a :class:`SocatDatagram` once both its bytes and its length are in).
    """

    def __init__(self) -> None:
        self._log = b""
        self._output = bytearray()
        self._down_lengths: list[int] = []

    def feed_log(self, data: bytes) -> list[SocatEvent]:
        *lines, self._log = (self._log + data).split(b"\n")
        events: list[SocatEvent] = []
        for line in lines:
            event = parse_socat_line(line)
            if isinstance(event, SocatTransfer) and event.direction == "down":
                self._down_lengths.append(event.length)
            elif event is not None:
                events.append(event)
        events.extend(self._cut())
        return events

    def feed_output(self, data: bytes) -> list[SocatEvent]:
        self._output += data
        return list(self._cut())

    def _cut(self) -> Iterator[SocatDatagram]:
        while self._down_lengths and len(self._output) >= self._down_lengths[0]:
            length = self._down_lengths.pop(0)
            datagram = bytes(self._output[:length])
            del self._output[:length]
            yield SocatDatagram(datagram)


def parse_socat_line(line: bytes) -> SocatEvent | None:
    """One line of socat's ``-d -d -x`` stderr; ``None`` for lines that say nothing we use."""
    transfer_pattern, connected_pattern = _socat_patterns()
    transfer = transfer_pattern.match(line)
    if transfer is not None:
        direction: Literal["up", "down"] = "up" if transfer.group(1) == b">" else "down"
        return SocatTransfer(direction, int(transfer.group(2)))
    connected = connected_pattern.search(line)
    if connected is not None:
        address = (connected.group(1) or connected.group(2)).decode("ascii")
        return SocatConnected(address, int(connected.group(3)))
    return None
