"""A small client for the Dartmouth Name Directory (DND, TCP 902).

What ``discover`` and ``check`` need from DND: read the ``220`` greeting, ask
``LOOKUP key,FIELD ...`` and learn which BlitzMail server holds an account
(``BLITZSERV``). Facts: ../../../../shared/reference/blitzmail-protocols.md.

The module has two layers, like h11: a pure core (line splitting, reply parsing,
command formatting, one small state machine per reply shape) that never touches a
socket or the event loop, and a thin asyncio client (:class:`DndClient`,
:func:`find_blitzserv`) that feeds it and translates transport failures once.

Errors (one base, :class:`DndError`)::

    DndError
    ├── DndUnavailable        retryable: cannot connect, or the connection failed
    │   ├── DndTimeout        no (complete) answer in time
    │   └── ConnectionClosed  the server closed before its reply was complete
    ├── ProtocolError         final: a line the protocol does not allow here (.line)
    ├── InvalidRequest        final: a key, field or password that cannot be sent
    ├── NoBlitzServ           final: the account has no BLITZSERV value
    └── DndRefusal            final: the server answered with an error code (.reply)
        ├── NoMatch           520, or 101 with zero records where one was required
        ├── FieldDenied       521 (and 501, no such field)
        ├── Ambiguous         522, or 101 with several records (.candidates)
        ├── TooVague          523
        └── BadPassword       530
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import ClassVar, Generic, TypeVar

from blitzdns.blitzmail import challenge as _challenge

DND_PORT = 902
DEFAULT_TIMEOUT = 10.0
MAX_LINE = 4096
"""Longest line either side accepts; DND lines are short, so more is an attack or junk."""

QUIT_GRACE = 1.0
"""Longest wait for the ``200`` after ``QUIT``; the answer is a courtesy."""

BLITZSERV_FIELDS = ("NAME", "UID", "BLITZSERV")

# Reply codes (reference: "Codes").
RECORDS = 101
FIELD_COUNT = 102
VALUE = 110
FIELD_INFO = 120
OK = 200
OK_TRUNCATED = 201
GREETING = 220
CHALLENGE = 300
NO_SUCH_FIELD = 501
NO_MATCH = 520
FIELD_DENIED = 521
AMBIGUOUS = 522
TOO_VAGUE = 523
BAD_PASSWORD = 530


# ---------------------------------------------------------------------------
# Errors


class DndError(Exception):
    """Base of every error this module raises."""

    retryable: ClassVar[bool] = False


class DndUnavailable(DndError):
    """The server could not be reached or the connection failed; try again later."""

    retryable = True


class DndTimeout(DndUnavailable):
    """The server did not answer (completely) within the time allowed."""


class ConnectionClosed(DndUnavailable):
    """The server closed the connection before its reply was complete."""


class ProtocolError(DndError):
    """The server sent a line the protocol does not allow at this point."""

    def __init__(self, message: str, line: str | None = None) -> None:
        super().__init__(message if line is None else f"{message}: {line!r}")
        self.line = line


class InvalidRequest(DndError, ValueError):
    """A key, field name or password that cannot be put on a DND command line."""


class NoBlitzServ(DndError):
    """The account exists but names no BlitzMail server (empty ``BLITZSERV``)."""


class DndRefusal(DndError):
    """The server answered with an error code; the connection stays usable."""

    def __init__(self, reply: Reply, message: str | None = None) -> None:
        super().__init__(message or f"DND refused: {reply.code} {reply.text}".rstrip())
        self.reply = reply


class NoMatch(DndRefusal):
    """No record matches the key (520)."""


class FieldDenied(DndRefusal):
    """A field asked for is not readable (521) or does not exist (501)."""


class Ambiguous(DndRefusal):
    """The key names several records where one was required.

    ``candidates`` holds the records' names when the reply gave them (a ``101``
    with several records and ``NAME`` among the fields); ``truncated`` is true
    when the server said more matched than it returned (``201``).
    """

    def __init__(
        self,
        reply: Reply,
        candidates: tuple[str, ...] = (),
        *,
        truncated: bool = False,
    ) -> None:
        shown = ", ".join(candidates)
        more = " and more" if truncated else ""
        message = f"ambiguous name: matches {shown}{more}" if candidates else None
        super().__init__(reply, message)
        self.candidates = candidates
        self.truncated = truncated


class TooVague(DndRefusal):
    """The key would match too many records to search (523)."""


class BadPassword(DndRefusal):
    """Validation failed: wrong password (530)."""


_REFUSALS: dict[int, type[DndRefusal]] = {
    NO_SUCH_FIELD: FieldDenied,
    NO_MATCH: NoMatch,
    FIELD_DENIED: FieldDenied,
    AMBIGUOUS: Ambiguous,
    TOO_VAGUE: TooVague,
    BAD_PASSWORD: BadPassword,
}


# ---------------------------------------------------------------------------
# Lines and replies (pure)


class LineTooLong(ValueError):
    """A peer sent more than ``max_line`` bytes without a line end."""


class LineSplitter:
    """Cut a byte stream into lines, whatever chunks it arrives in.

    DND lines end in CRLF or a bare LF; BlitzServ also accepts a bare CR
    (``cr_ends_line=True``), where a CR followed by LF (even in the next chunk)
    still ends just one line. Lines come out without their terminator.
    """

    def __init__(self, *, cr_ends_line: bool = False, max_line: int = MAX_LINE) -> None:
        self._cr_ends_line = cr_ends_line
        self._max_line = max_line
        self._buffer = bytearray()
        self._after_cr = False

    @property
    def pending(self) -> bytes:
        """Bytes received after the last complete line."""
        return bytes(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the lines they complete."""
        if self._cr_ends_line:
            lines = self._feed_any(data)
        else:
            self._buffer += data
            *complete, rest = self._buffer.split(b"\n")
            self._buffer = bytearray(rest)
            lines = [bytes(line[:-1] if line.endswith(b"\r") else line) for line in complete]
        if len(self._buffer) > self._max_line:
            raise LineTooLong(f"line longer than {self._max_line} bytes")
        return [bytes(line) for line in lines]

    def _feed_any(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        for byte in data:
            if byte == 0x0A and self._after_cr:
                self._after_cr = False
                continue
            self._after_cr = byte == 0x0D
            if byte in (0x0A, 0x0D):
                lines.append(bytes(self._buffer))
                self._buffer.clear()
            else:
                self._buffer.append(byte)
                if len(self._buffer) > self._max_line:
                    raise LineTooLong(f"line longer than {self._max_line} bytes")
        return lines


def decode_line(raw: bytes) -> str:
    """Text of a received line: UTF-8 when it is valid, else Latin-1 (never fails)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True)
class Reply:
    """One DND reply line: a three-digit code and the text after the first space."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code:03d} {self.text}"


_REPLY_LINE = re.compile(r"([0-9]{3})(?: (.*))?", re.DOTALL)


def parse_reply(line: str) -> Reply:
    """Parse ``NNN text`` (the text may be empty, with or without the space).

    Everything after the first space is the text, kept verbatim: a ``110``
    value may itself begin or end with spaces.
    """
    match = _REPLY_LINE.fullmatch(line)
    if match is None:
        raise ProtocolError("not a DND reply line", line)
    return Reply(int(match.group(1)), match.group(2) or "")


def refusal_for(reply: Reply) -> DndError:
    """The typed error for an error reply, or a ProtocolError for any other code."""
    kind = _REFUSALS.get(reply.code)
    if kind is not None:
        return kind(reply)
    if 500 <= reply.code < 600:
        return DndRefusal(reply)
    return ProtocolError("unexpected reply", str(reply))


# ---------------------------------------------------------------------------
# Commands (pure)

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _check_argument(what: str, value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise InvalidRequest(f"{what} may not contain line breaks or NUL: {value!r}")
    return value


def normalise_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """Upper-case field names after checking each is a plain word."""
    if isinstance(fields, str):
        raise InvalidRequest("fields must be a sequence of names, not one string")
    out = []
    for name in fields:
        if not _FIELD_NAME.fullmatch(name):
            raise InvalidRequest(f"not a DND field name: {name!r}")
        out.append(name.upper())
    return tuple(out)


def _key_argument(key: str) -> str:
    key = _check_argument("a DND key", key).strip()
    if not key:
        raise InvalidRequest("a DND key may not be empty")
    if "," in key:
        raise InvalidRequest(f"a DND key may not contain a comma: {key!r}")
    return key


def _with_fields(verb: str, key: str, fields: tuple[str, ...]) -> str:
    return f"{verb} {_key_argument(key)}" + (f",{' '.join(fields)}" if fields else "")


def lookup_command(key: str, fields: Sequence[str] = ()) -> str:
    """``LOOKUP key[,FIELD ...]`` (without line end)."""
    return _with_fields("LOOKUP", key, normalise_fields(fields))


def validate_command(key: str, fields: Sequence[str] = ()) -> str:
    """``VALIDATE key[,FIELD ...]``: asks the server for a challenge."""
    return _with_fields("VALIDATE", key, normalise_fields(fields))


def fields_command(names: Sequence[str] = ()) -> str:
    """``FIELDS [name ...]``."""
    return " ".join(("FIELDS", *normalise_fields(names)))


# ---------------------------------------------------------------------------
# Reply readers (pure state machines, one per reply shape)

T = TypeVar("T")


class ReplyReader(Generic[T]):
    """Consumes replies one at a time; :meth:`feed` returns the result when complete."""

    def feed(self, reply: Reply) -> T | None:
        raise NotImplementedError


class StatusReader(ReplyReader[Reply]):
    """A one-line answer whose code must be one of ``expected``."""

    def __init__(self, *expected: int) -> None:
        self._expected = expected

    def feed(self, reply: Reply) -> Reply:
        if reply.code not in self._expected:
            raise refusal_for(reply)
        return reply


@dataclass(frozen=True)
class LookupResult:
    """Records from ``LOOKUP``/``VALIDATE``: values in the order of ``fields``.

    ``truncated`` is set when the server ended with ``201`` (more records
    matched than it returns; servers cap at 25).
    """

    fields: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    truncated: bool = False

    @property
    def records(self) -> list[dict[str, str]]:
        """Each row as a mapping from field name to value."""
        return [dict(zip(self.fields, row, strict=True)) for row in self.rows]

    def unique(self) -> dict[str, str]:
        """The one record; :class:`NoMatch` or :class:`Ambiguous` otherwise.

        A single record followed by ``201`` is not unique: others matched too.
        """
        summary = Reply(RECORDS, f"{len(self.rows)} {len(self.fields)}")
        if not self.rows:
            raise NoMatch(summary, "no record matches")
        if len(self.rows) > 1 or self.truncated:
            names: tuple[str, ...] = ()
            if "NAME" in self.fields:
                column = self.fields.index("NAME")
                names = tuple(row[column] for row in self.rows)
            raise Ambiguous(summary, names, truncated=self.truncated)
        return self.records[0]


_COUNTS = re.compile(r"([0-9]{1,6}) ([0-9]{1,4})")


class LookupReader(ReplyReader[LookupResult]):
    """``101 n m``, then n×m ``110`` values (record by record), then ``200``/``201``."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self._fields = fields
        self._record_count = 0
        self._expected_values: int | None = None
        self._values: list[str] = []

    def feed(self, reply: Reply) -> LookupResult | None:
        if self._expected_values is None:
            self._feed_header(reply)
            return None
        if len(self._values) < self._expected_values:
            if reply.code != VALUE:
                raise ProtocolError(
                    f"expected value {len(self._values) + 1} of {self._expected_values}",
                    str(reply),
                )
            self._values.append(reply.text)
            return None
        if reply.code not in (OK, OK_TRUNCATED):
            raise ProtocolError("expected 200 or 201 after the values", str(reply))
        width = len(self._fields)
        rows = tuple(
            tuple(self._values[index * width : (index + 1) * width])
            for index in range(self._record_count)
        )
        return LookupResult(self._fields, rows, truncated=reply.code == OK_TRUNCATED)

    def _feed_header(self, reply: Reply) -> None:
        if reply.code != RECORDS:
            raise refusal_for(reply)
        counts = _COUNTS.fullmatch(reply.text.strip())
        if counts is None:
            raise ProtocolError("malformed record count", str(reply))
        self._record_count, field_count = int(counts.group(1)), int(counts.group(2))
        if field_count != len(self._fields):
            raise ProtocolError(
                f"asked for {len(self._fields)} fields, server announced {field_count}",
                str(reply),
            )
        self._expected_values = self._record_count * field_count


@dataclass(frozen=True)
class FieldInfo:
    """One ``120`` line of ``FIELDS``: a field and who may write and read it.

    Permissions: A anyone, U the user, N nobody, T trusted users.
    """

    name: str
    write: str
    read: str


class FieldsReader(ReplyReader[tuple[FieldInfo, ...]]):
    """``102 n``, n ``120 NAME write read`` lines, then ``200``."""

    def __init__(self) -> None:
        self._count: int | None = None
        self._infos: list[FieldInfo] = []

    def feed(self, reply: Reply) -> tuple[FieldInfo, ...] | None:
        if self._count is None:
            if reply.code != FIELD_COUNT:
                raise refusal_for(reply)
            count = re.fullmatch(r"[0-9]{1,4}", reply.text.strip())
            if count is None:
                raise ProtocolError("malformed field count", str(reply))
            self._count = int(count.group())
            return None
        if len(self._infos) < self._count:
            parts = reply.text.split()
            if reply.code != FIELD_INFO or len(parts) != 3:
                raise ProtocolError("expected '120 NAME write read'", str(reply))
            self._infos.append(FieldInfo(parts[0].upper(), parts[1], parts[2]))
            return None
        if reply.code != OK:
            raise ProtocolError("expected 200 after the field list", str(reply))
        return tuple(self._infos)


# ---------------------------------------------------------------------------
# Which server holds an account (pure)


@dataclass(frozen=True)
class Account:
    """A DND account and the BlitzMail server that holds its mailbox.

    ``blitzserv`` is the host name alone, lower-cased (``dasher.dartmouth.edu``);
    ``blitzserv_raw`` is the field as DND gave it (``dasher.Dartmouth.EDU@BlitzServ``).
    ``notifyserv`` is the host that sends the account's new-mail notices (``NOTIFYSERV``,
    zone dropped), when it was asked for and is set; ``""`` otherwise.
    """

    name: str
    uid: str
    blitzserv: str
    blitzserv_raw: str
    notifyserv: str = ""

    @property
    def short_server(self) -> str:
        """The server's first label (``dasher``), as users call it."""
        return self.blitzserv.split(".", 1)[0]


_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?")


def blitzserv_host(value: str) -> str:
    """The host part of a ``BLITZSERV`` value: drop the ``@zone``, lower-case it.

    The part after ``@`` is an AppleTalk zone, meaningless to TCP/IP.
    """
    host = value.split("@", 1)[0].strip().lower().rstrip(".")
    if not host:
        raise NoBlitzServ(f"the account names no BlitzMail server (BLITZSERV is {value!r})")
    if len(host) > 253 or not _HOST_NAME.fullmatch(host):
        raise ProtocolError("BLITZSERV is not a host name", value)
    return host


def notifyserv_host(value: str) -> str:
    """The host part of a ``NOTIFYSERV`` value (``host@zone``); ``""`` when unset or not a
    host name (notices are optional: a bad value must not spoil the BLITZSERV answer)."""
    host = value.split("@", 1)[0].strip().lower().rstrip(".")
    return host if len(host) <= 253 and _HOST_NAME.fullmatch(host) else ""


def account_from_record(record: dict[str, str]) -> Account:
    """Build an :class:`Account` from a record holding NAME, UID and BLITZSERV."""
    raw = record["BLITZSERV"]
    return Account(record["NAME"], record["UID"], blitzserv_host(raw), raw)


# ---------------------------------------------------------------------------
# asyncio layer


class LineReader:
    """Read whole lines from a stream through a :class:`LineSplitter`.

    Shared by the DND client, the probes and the fakes; errors here are plain
    (``LineTooLong``, ``OSError``) so each caller translates them once.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        cr_ends_line: bool = False,
        max_line: int = MAX_LINE,
    ) -> None:
        self._reader = reader
        self._splitter = LineSplitter(cr_ends_line=cr_ends_line, max_line=max_line)
        self._ready: list[bytes] = []

    async def readline(self) -> bytes | None:
        """The next line without its end, or None at end of stream."""
        while not self._ready:
            data = await self._reader.read(4096)
            if not data:
                return None
            self._ready.extend(self._splitter.feed(data))
        return self._ready.pop(0)


class ClosesOnExit:
    """``async with`` support for anything with an ``async close()``."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def open_stream(
    host: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` bounded by ``timeout``; errors left untranslated."""
    async with asyncio.timeout(timeout):
        return await asyncio.open_connection(host, port)


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a stream, ignoring a peer that already went away."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


@dataclass
class DndClient(ClosesOnExit):
    """One DND connection. Make it with :meth:`connect`; use it as ``async with``.

    Each command and its whole reply are bounded by ``timeout`` seconds. After a
    refusal (5xx) the connection stays usable; after any other error it is
    marked broken and :meth:`quit` only closes it.
    """

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: Reply
    timeout: float = DEFAULT_TIMEOUT
    _lines: LineReader = field(init=False, repr=False)
    _broken: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._lines = LineReader(self.reader)

    @classmethod
    async def connect(
        cls, host: str, port: int = DND_PORT, *, timeout: float = DEFAULT_TIMEOUT
    ) -> DndClient:
        """Connect and read the ``220`` greeting."""
        try:
            reader, writer = await open_stream(host, port, timeout)
        except TimeoutError as exc:
            raise DndTimeout(f"DND at {host}:{port}: no connection in {timeout:g}s") from exc
        except OSError as exc:
            raise DndUnavailable(f"DND at {host}:{port}: {exc.strerror or exc}") from exc
        client = cls(reader, writer, Reply(0, ""), timeout)
        try:
            greeting = await client._exchange(None, StatusReader(GREETING))
        except DndRefusal as exc:
            await close_stream(writer)
            raise ProtocolError("expected a 220 greeting", str(exc.reply)) from exc
        except BaseException:
            await close_stream(writer)
            raise
        client.greeting = greeting
        return client

    async def __aenter__(self) -> DndClient:
        return self

    async def close(self) -> None:
        """The same as :meth:`quit`: polite when possible, closed in any case."""
        await self.quit()

    async def _read_reply(self) -> Reply:
        try:
            raw = await self._lines.readline()
        except LineTooLong as exc:
            raise ProtocolError(str(exc)) from exc
        except OSError as exc:
            raise ConnectionClosed(f"DND connection failed: {exc.strerror or exc}") from exc
        if raw is None:
            raise ConnectionClosed("DND server closed the connection mid-reply")
        return parse_reply(decode_line(raw))

    async def _exchange(
        self, command: str | None, machine: ReplyReader[T], *, timeout: float | None = None
    ) -> T:
        """Send ``command`` (None: only read) and feed replies to ``machine``."""
        if self._broken:
            raise ConnectionClosed("this DND connection failed earlier")
        timeout = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                if command is not None:
                    self.writer.write(command.encode("utf-8") + b"\r\n")
                    await self.writer.drain()
                while True:
                    result = machine.feed(await self._read_reply())
                    if result is not None:
                        return result
        except DndRefusal:
            raise
        except TimeoutError as exc:
            self._broken = True
            raise DndTimeout(f"DND gave no complete reply in {timeout:g}s") from exc
        except OSError as exc:
            self._broken = True
            raise ConnectionClosed(f"DND connection failed: {exc.strerror or exc}") from exc
        except BaseException:
            self._broken = True
            raise

    async def lookup(self, key: str, fields: Sequence[str] = ()) -> LookupResult:
        """``LOOKUP``: every matching record the server returns (it caps at 25)."""
        names = normalise_fields(fields)
        return await self._exchange(lookup_command(key, names), LookupReader(names))

    async def lookup_unique(self, key: str, fields: Sequence[str]) -> dict[str, str]:
        """``LOOKUP`` that must match exactly one record; field → value."""
        return (await self.lookup(key, fields)).unique()

    async def fields(self, names: Sequence[str] = ()) -> tuple[FieldInfo, ...]:
        """``FIELDS``: the directory's fields and their permissions."""
        return await self._exchange(fields_command(names), FieldsReader())

    async def noop(self) -> Reply:
        """``NOOP`` → ``200``; keeps an idle connection alive."""
        return await self._exchange("NOOP", StatusReader(OK))

    async def validate(self, key: str, password: str, fields: Sequence[str] = ()) -> dict[str, str]:
        """Prove ``password`` by challenge-response (``VALIDATE``/``PASE``).

        Only the DES answer crosses the wire. Returns the validated record's fields.
        """
        names = normalise_fields(fields)
        _check_argument("a password", password)
        challenge = await self._exchange(validate_command(key, names), StatusReader(CHALLENGE))
        try:
            answer = _challenge.answer_challenge(challenge.text.strip(), password)
        except _challenge.ChallengeError as exc:
            self._broken = True
            raise ProtocolError("malformed challenge", str(challenge)) from exc
        return (await self._exchange(f"PASE {answer}", LookupReader(names))).unique()

    async def quit(self) -> None:
        """Say ``QUIT`` (when the connection is still in step) and close it.

        Never fails: the answer to QUIT is awaited for at most :data:`QUIT_GRACE`.
        """
        try:
            if not self._broken and not self.writer.is_closing():
                with contextlib.suppress(DndError):
                    grace = min(self.timeout, QUIT_GRACE)
                    await self._exchange("QUIT", StatusReader(OK), timeout=grace)
        finally:
            await close_stream(self.writer)


@contextlib.asynccontextmanager
async def dnd_session(
    host: str, port: int = DND_PORT, *, timeout: float = DEFAULT_TIMEOUT
) -> AsyncIterator[DndClient]:
    """``async with dnd_session(host, port) as dnd:`` connect, greet, and QUIT at the end."""
    client = await DndClient.connect(host, port, timeout=timeout)
    async with client:
        yield client


async def find_blitzserv(
    host: str, port: int, user: str, *, timeout: float = DEFAULT_TIMEOUT, notify: bool = False
) -> Account:
    """Ask DND which BlitzMail server holds ``user``'s mailbox.

    The recipe: connect, read ``220``, ``LOOKUP <user>,NAME UID BLITZSERV``,
    expect ``101 1 3``, three ``110`` values, ``200``; ``QUIT``. ``timeout``
    bounds the whole conversation. Raises :class:`NoMatch`, :class:`Ambiguous`
    (with the candidates' names), :class:`TooVague`, :class:`NoBlitzServ`, or a
    :class:`DndUnavailable` / :class:`ProtocolError`. With ``notify``, a second
    ``LOOKUP #<uid>,NOTIFYSERV`` names the account's Notify server too.
    """
    lookup_command(user, BLITZSERV_FIELDS)
    client: DndClient | None = None
    try:
        async with asyncio.timeout(timeout):
            client = await DndClient.connect(host, port, timeout=timeout)
            record = await client.lookup_unique(user, BLITZSERV_FIELDS)
            if notify:
                found = await client.lookup_unique(f"#{record['UID']}", ("NOTIFYSERV",))
                account = account_from_record(record)
                return replace(account, notifyserv=notifyserv_host(found["NOTIFYSERV"]))
    except TimeoutError as exc:
        raise DndTimeout(f"DND at {host}:{port} gave no complete answer in {timeout:g}s") from exc
    finally:
        if client is not None:
            await client.quit()
    return account_from_record(record)
