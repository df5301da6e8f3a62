"""End-to-end probes: does each forward reach the real service behind it?

``check`` connects to a mouth and expects the service's own first words, as
the classic recipe's user did by hand with telnet: DND greets ``220``, the
bulletin server ``200``, NNTP ``200``/``201``, dartnotify ``220``, and a
BlitzMail server, which waits for the client, answers ``VERS`` with a ``0xx``
line. A service with no known dialect gets a plain TCP probe.

A probe returns a :class:`ProbeResult` whenever something answered (``ok``
says whether it was the expected service; ``seen`` is what came back) and
raises a :class:`ProbeError` when nothing did::

    ProbeError
    ├── ProbeUnavailable   retryable: connection refused or unreachable
    ├── ProbeTimeout       retryable: no connection or no first line in time
    ├── ProbeClosed        connected, then the far end hung up without a word
    │                      (through an SSH forward: the gateway could not reach the target)
    └── ProbeMismatch      a reply that is not the dialect (from converse_blitzserv)

The judgements are pure functions; the asyncio part is one helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from blitzdns.blitzmail.dnd import LineReader, LineTooLong, close_stream, decode_line

DEFAULT_TIMEOUT = 5.0
CHECK_CLIENT = "blitzdns-check"
SEEN_LIMIT = 200
"""Longest ``seen`` text kept, so a chatty or binary peer cannot flood a report."""

Clock = Callable[[], float]


class ProbeError(Exception):
    """Base of every probe failure."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, service: str, host: str, port: int) -> None:
        super().__init__(f"{service} at {host}:{port}: {message}")
        self.service = service
        self.host = host
        self.port = port


class ProbeUnavailable(ProbeError):
    """Nothing accepted the connection (refused, unreachable)."""

    retryable = True


class ProbeTimeout(ProbeError):
    """No connection, or no first line, within the time allowed."""

    retryable = True


class ProbeClosed(ProbeError):
    """The connection was accepted, then closed before any line arrived."""


class ProbeMismatch(ProbeError):
    """The peer answered, but not in the expected dialect (``line``: what it said)."""

    def __init__(
        self, message: str, line: str | None = None, *, service: str, host: str, port: int
    ) -> None:
        shown = message if line is None else f"{message}: {line!r}"
        super().__init__(shown, service=service, host=host, port=port)
        self.line = line


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw.

    ``ok``: the peer spoke the expected dialect. ``seen``: its first line (at
    most :data:`SEEN_LIMIT` characters), or a note for a silent peer.
    ``expected``: what would have been ok, in words. ``elapsed``: seconds from
    the start of the connection to the verdict.
    """

    service: str
    host: str
    port: int
    ok: bool
    seen: str
    expected: str
    elapsed: float


# ---------------------------------------------------------------------------
# Pure judgements


_REPLY_CODE = re.compile(r"([0-9]{3})(?: |$)")
_BLITZ_REPLY = re.compile(r"([01])([0-9]{2})(?: (.*))?", re.DOTALL)


def reply_code(line: str) -> int | None:
    """The three-digit code a line starts with (``NNN`` alone or ``NNN text``), else None."""
    match = _REPLY_CODE.match(line)
    return int(match.group(1)) if match else None


def greeting_matches(line: str, codes: Sequence[int]) -> bool:
    """Whether a greeting line carries one of the expected codes."""
    return reply_code(line) in codes


@dataclass(frozen=True)
class BlitzReply:
    """A BlitzServ reply: warning flag digit, two-digit code, text (``010 Ok.``)."""

    warning: bool
    code: int
    text: str

    def __str__(self) -> str:
        return f"{int(self.warning)}{self.code:02d} {self.text}"


class BlitzReplyError(ValueError):
    """A line that is not a BlitzServ reply."""


def parse_blitz_reply(line: str) -> BlitzReply:
    """Parse ``Fcc text``: F is 0, or 1 when warnings are pending; cc is the code."""
    match = _BLITZ_REPLY.fullmatch(line)
    if match is None:
        raise BlitzReplyError(f"not a BlitzServ reply: {line!r}")
    return BlitzReply(match.group(1) == "1", int(match.group(2)), match.group(3) or "")


def blitzserv_answered(line: str) -> bool:
    """Whether a line is a BlitzServ reply (``0xx``/``1xx`` with a warning flag)."""
    try:
        parse_blitz_reply(line)
    except BlitzReplyError:
        return False
    return True


def _clip(text: str) -> str:
    return text if len(text) <= SEEN_LIMIT else text[: SEEN_LIMIT - 1] + "…"


# ---------------------------------------------------------------------------
# asyncio


@dataclass(frozen=True)
class _Target:
    service: str
    host: str
    port: int

    def error(self, kind: type[ProbeError], message: str) -> ProbeError:
        return kind(message, service=self.service, host=self.host, port=self.port)


@dataclass
class _Conversation:
    """An open probe connection: send a line, read a line, say goodbye."""

    target: _Target
    lines: LineReader
    writer: asyncio.StreamWriter

    async def send(self, line: str) -> None:
        if any(ch in line for ch in "\r\n"):
            raise ValueError(f"a command may not contain line breaks: {line!r}")
        self.writer.write(f"{line}\r\n".encode())
        await self.writer.drain()

    async def read(self, after: str = "") -> str:
        raw = await self.lines.readline()
        if raw is None:
            where = f" after {after!r}" if after else " before any reply"
            raise self.target.error(ProbeClosed, f"connection closed{where}")
        return decode_line(raw)

    async def goodbye(self) -> None:
        with contextlib.suppress(OSError):
            await self.send("QUIT")


@contextlib.asynccontextmanager
async def _conversation(target: _Target, timeout: float) -> AsyncIterator[_Conversation]:
    """Connect and yield a conversation; ``timeout`` bounds connect and body together.

    The one place where transport failures become :class:`ProbeError`.
    """
    stage = "connect"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            stage = "read"
            try:
                yield _Conversation(target, LineReader(reader, cr_ends_line=True), writer)
            finally:
                await close_stream(writer)
    except LineTooLong as exc:
        raise target.error(ProbeMismatch, "a line too long for this dialect") from exc
    except TimeoutError as exc:
        what = "no connection" if stage == "connect" else "no reply"
        raise target.error(ProbeTimeout, f"{what} within {timeout:g}s") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if stage == "connect":
            raise target.error(ProbeUnavailable, reason) from exc
        raise target.error(ProbeClosed, f"connection lost: {reason}") from exc


@dataclass(frozen=True, slots=True)
class GreetingProbe:
    """A service that greets first: connect, read its first line, expect one of ``codes``.

    Called like every probe: ``await probe(host, port, timeout)``; ``port`` defaults to the
    service's well-known one.
    """

    service: str
    port: int
    codes: tuple[int, ...]

    async def __call__(
        self,
        host: str,
        port: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        clock: Clock = time.monotonic,
    ) -> ProbeResult:
        port = self.port if port is None else port
        start = clock()
        async with _conversation(_Target(self.service, host, port), timeout) as talk:
            line = await talk.read()
            await talk.goodbye()
        expected = " or ".join(str(code) for code in self.codes)
        ok = greeting_matches(line, self.codes)
        return ProbeResult(
            self.service, host, port, ok, _clip(line), f"a {expected} greeting", clock() - start
        )


#: DND greets first with ``220``.
probe_dnd = GreetingProbe("dnd", 902, (220,))
#: The bulletin server greets first with ``200 <version>``.
probe_bulletins = GreetingProbe("bulletins", 1119, (200,))
#: NNTP greets with ``200`` (posting allowed) or ``201`` (RFC 3977 §5.1.1).
probe_nntp = GreetingProbe("nntp", 119, (200, 201))
#: The dartnotify TCP service greets with ``220``.
probe_dartnotify = GreetingProbe("dartnotify", 2152, (220,))


async def probe_blitzmail(
    host: str, port: int = 2151, timeout: float = DEFAULT_TIMEOUT, *, clock: Clock = time.monotonic
) -> ProbeResult:
    """A BlitzMail server waits for the client: send ``VERS``, expect a ``0xx`` line."""
    start = clock()
    async with _conversation(_Target("blitzmail", host, port), timeout) as talk:
        await talk.send(f"VERS {CHECK_CLIENT}")
        line = await talk.read(after="VERS")
        await talk.goodbye()
    ok = blitzserv_answered(line)
    return ProbeResult(
        "blitzmail", host, port, ok, _clip(line), "a 0xx reply to VERS", clock() - start
    )


async def probe_tcp(
    host: str,
    port: int,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    settle: float = 1.0,
    clock: Clock = time.monotonic,
) -> ProbeResult:
    """A service with no known dialect: connect, and take whatever it says first.

    Silence for ``settle`` seconds is fine (many services wait for the client);
    a connection closed at once is :class:`ProbeClosed`, which through an SSH
    forward means the gateway could not reach the target.
    """
    start = clock()
    async with _conversation(_Target("tcp", host, port), timeout) as talk:
        try:
            async with asyncio.timeout(settle):
                seen = _clip(await talk.read())
        except TimeoutError:
            seen = "(connected; the service waits for the client)"
    return ProbeResult("tcp", host, port, True, seen, "a TCP connection", clock() - start)


class Probe(Protocol):
    """Any of the probes: ``await probe(host, port, timeout)``."""

    def __call__(self, host: str, port: int, timeout: float = ...) -> Awaitable[ProbeResult]: ...


_PROBES_BY_PORT: dict[int, Probe] = {
    **{p.port: p for p in (probe_dnd, probe_bulletins, probe_nntp, probe_dartnotify)},
    2151: probe_blitzmail,
}
_PROBES_BY_NAME: dict[str, Probe] = {
    "dnd": probe_dnd,
    "blitzmail": probe_blitzmail,
    "blitzserv": probe_blitzmail,
    "bulletins": probe_bulletins,
    "nntp": probe_nntp,
    "news": probe_nntp,
    "bulletin-posting": probe_nntp,
    "dartnotify": probe_dartnotify,
}


def probe_for_service(service: str | int) -> Probe:
    """The probe for a service name (``"dnd"``) or well-known port (902, ``"902"``).

    Anything unknown gets :func:`probe_tcp`, so a forward for another service can
    still be checked end to end.
    """
    if isinstance(service, str):
        name = service.strip().lower()
        if name in _PROBES_BY_NAME:
            return _PROBES_BY_NAME[name]
        if not (name.isascii() and name.isdigit()):
            return probe_tcp
        service = int(name)
    return _PROBES_BY_PORT.get(service, probe_tcp)


async def converse_blitzserv(
    host: str,
    port: int,
    commands: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[tuple[str, BlitzReply]]:
    """Send each command to a BlitzMail server and read its one-line reply.

    For the demo (``VERS``, ``NOOP``): returns (command, reply) pairs. ``timeout``
    bounds the whole conversation. A reply that is not BlitzServ's dialect is
    :class:`ProbeMismatch`.
    """
    target = _Target("blitzmail", host, port)
    exchanges: list[tuple[str, BlitzReply]] = []
    async with _conversation(target, timeout) as talk:
        for command in commands:
            await talk.send(command)
            line = await talk.read(after=command)
            try:
                exchanges.append((command, parse_blitz_reply(line)))
            except BlitzReplyError as exc:
                raise ProbeMismatch(
                    "not a BlitzServ reply", line, service="blitzmail", host=host, port=port
                ) from exc
    return exchanges
