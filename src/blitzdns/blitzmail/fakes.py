"""Fake DND, BlitzMail and bulletin servers for the demo and the tests.

Real TCP servers on loopback that speak the dialects described in
../../../../shared/reference/blitzmail-protocols.md, enough for a BlitzMail
client's first steps: DND greets ``220`` and answers ``LOOKUP``, ``FIELDS``,
``VALIDATE``/``PASE``; a BlitzServ waits for the client, answers ``VERS``, signs
on with ``UID#``/``USER`` + ``PASE`` (DES challenge-response); bulletins greet
``200``. :class:`ScriptedServer` plays fixed bytes, for misbehaving peers.

Each dialect is a pure session object (a line in, reply lines out, no I/O); one
asyncio server class runs any of them. Every server records the lines it
received and sent, so a test or the demo can show what arrived, and binds only
to loopback (127.0.0.0/8 or ::1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

from blitzdns.blitzmail import challenge as _challenge
from blitzdns.blitzmail.dnd import (
    ClosesOnExit,
    DndError,
    FieldInfo,
    LineReader,
    LineTooLong,
    blitzserv_host,
    close_stream,
    decode_line,
)

RandomBytes = Callable[[int], bytes]

LOOKUP_CAP = 25
"""Most records one LOOKUP returns; more end with ``201`` (reference: LOOKUP)."""

MIN_KEY_CHARS = 2
"""Name keys with fewer letters or digits than this are "too vague" (523)."""


# ---------------------------------------------------------------------------
# Directory records


@dataclass(frozen=True)
class DndRecord:
    """One person in the fake directory.

    ``blitzserv`` is written as DND writes it (``dasher.Dartmouth.EDU@BlitzServ``).
    ``password`` enables ``VALIDATE`` and BlitzServ sign-on; None refuses both.
    ``extra`` sets any other field (upper-case name → value).
    """

    name: str
    uid: int
    blitzserv: str = ""
    nickname: str = ""
    password: str | None = None
    deptclass: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    def value(self, field_name: str) -> str:
        """The value of a field (upper-case name); empty when unset."""
        overrides = dict(self.extra)
        if field_name in overrides:
            return overrides[field_name]
        derived = {
            "NAME": self.name,
            "NICKNAME": self.nickname,
            "UID": str(self.uid),
            "BLITZSERV": self.blitzserv,
            "DEPTCLASS": self.deptclass,
            "EMAIL": f"{'.'.join(self.name.split())}@Dartmouth.EDU",
        }
        return derived.get(field_name, "")

    @property
    def server_host(self) -> str:
        """The BLITZSERV host as the client reads it (:func:`dnd.blitzserv_host`); ``""``
        when the record names none."""
        try:
            return blitzserv_host(self.blitzserv)
        except DndError:
            return ""


FIELD_TABLE: tuple[FieldInfo, ...] = (
    FieldInfo("NAME", "T", "A"),
    FieldInfo("NICKNAME", "U", "A"),
    FieldInfo("UID", "N", "A"),
    FieldInfo("GID", "N", "A"),
    FieldInfo("EMAIL", "U", "A"),
    FieldInfo("MAILADDR", "U", "A"),
    FieldInfo("BLITZSERV", "T", "A"),
    FieldInfo("BLITZINFO", "U", "U"),
    FieldInfo("BULLSERV", "T", "A"),
    FieldInfo("NOTIFYSERV", "T", "A"),
    FieldInfo("DEPTCLASS", "T", "A"),
    FieldInfo("EXPIRES", "T", "U"),
    FieldInfo("PERM", "T", "T"),
    FieldInfo("DUP", "T", "A"),
)
"""The directory's fields and permissions (reference: FIELDS; A anyone, U user, T trusted)."""

DEMO_PASSWORD = "reindeer"
DEMO_RECORDS: tuple[DndRecord, ...] = (
    DndRecord(
        "Demo User",
        1001,
        "dasher.Dartmouth.EDU@BlitzServ",
        nickname="demo",
        password=DEMO_PASSWORD,
        deptclass="Staff",
    ),
    DndRecord(
        "Demo Reindeer",
        1002,
        "dasher.Dartmouth.EDU@BlitzServ",
        password=DEMO_PASSWORD,
        deptclass="Staff",
    ),
    DndRecord(
        "Eleazar Wheelock",
        1769,
        "prancer.Dartmouth.EDU@BlitzServ",
        nickname="wheelock",
        password="hanover",
        deptclass="Founder",
    ),
)
"""The demo directory: two users on dasher, one on prancer.

``demo`` (a nickname) finds Demo User on dasher; ``wheelock`` finds the prancer
user; ``dem`` is ambiguous (two Demo records); ``d`` is too vague; Demo Reindeer
has an empty NICKNAME.
"""
DEMO_USER = "demo"
DEMO_SECOND_USER = "wheelock"
DEMO_SERVERS = ("dasher.dartmouth.edu", "prancer.dartmouth.edu")


def _words(text: str) -> list[str]:
    return text.lower().split()


def _prefix_match(key_words: list[str], name: str) -> bool:
    """Each key word begins a different word of the name, in order (``dem us``)."""
    name_words = _words(name)
    position = 0
    for word in key_words:
        while position < len(name_words) and not name_words[position].startswith(word):
            position += 1
        if position == len(name_words):
            return False
        position += 1
    return True


def match_records(records: Sequence[DndRecord], key: str) -> list[DndRecord] | int:
    """The records a DND key names, or the refusal code (520 none, 523 too vague).

    ``#uid`` matches the UID; an exact name or nickname wins over prefixes;
    otherwise every key word must begin a word of the name (or the key begins the
    nickname). ``*`` ID numbers are not modelled and never match.
    """
    key = " ".join(_words(key))
    if key.startswith("#"):
        found = [record for record in records if key[1:].strip() == str(record.uid)]
        return found or 520
    if key.startswith("*"):
        return 520
    if sum(ch.isalnum() for ch in key) < MIN_KEY_CHARS:
        return 523
    exact = [
        record
        for record in records
        if key in (" ".join(_words(record.name)), record.nickname.lower())
    ]
    if exact:
        return exact
    prefixed = [
        record
        for record in records
        if _prefix_match(key.split(), record.name)
        or (record.nickname and record.nickname.lower().startswith(key))
    ]
    return prefixed or 520


# ---------------------------------------------------------------------------
# Sessions: one per connection, pure


@dataclass
class Answer:
    """What a session says to one line: reply lines, and whether to hang up after."""

    lines: list[str]
    close: bool = False


class _Challenge:
    """The one challenge a session has out (DND's VALIDATE, BlitzServ's sign-on, the bulletin
    server's ``UID#``): issued for a record, then spent by the next answer, right or wrong."""

    def __init__(self, random_bytes: RandomBytes) -> None:
        self._random_bytes = random_bytes
        self._out: tuple[DndRecord, str] | None = None

    @property
    def out(self) -> bool:
        return self._out is not None

    def issue(self, record: DndRecord) -> str:
        challenge = _challenge.new_challenge(self._random_bytes(_challenge.CHALLENGE_BYTES))
        self._out = (record, challenge)
        return challenge

    def cancel(self) -> None:
        self._out = None

    def answer(self, answer: str, *, plain: bool = False) -> tuple[DndRecord, bool] | None:
        """Spend the challenge: its record and whether ``answer`` is right (never for a record
        without a password); None when none is out. ``plain``: ``answer`` is the password
        itself (DND's ``PASS``), not the answer to the challenge."""
        if self._out is None:
            return None
        (record, challenge), self._out = self._out, None
        password = record.password
        if password is None:
            return record, False
        if plain:
            return record, answer == password
        return record, _challenge.check_answer(challenge, answer, password)


class Session(Protocol):
    """A dialect: greeting lines on connect, then an :class:`Answer` per line."""

    def greeting(self) -> list[str]: ...

    def handle(self, line: str) -> Answer: ...


def _split_command(line: str) -> tuple[str, str]:
    verb, _, rest = line.strip().partition(" ")
    return verb.upper(), rest.strip()


class DndSession:
    """DND (TCP 902) as one connection sees it.

    ``ambiguous="refuse"`` answers ``522`` when a key matches several records;
    ``"list"`` returns them all as real servers do for LOOKUP, at most
    :data:`LOOKUP_CAP`, ending with ``201`` when more matched.
    """

    def __init__(
        self,
        records: Sequence[DndRecord],
        *,
        ambiguous: Literal["refuse", "list"] = "refuse",
        random_bytes: RandomBytes = os.urandom,
        greeting: str = "220 DND server here.",
    ) -> None:
        self._records = records
        self._ambiguous = ambiguous
        self._greeting = greeting
        self._challenge = _Challenge(random_bytes)
        #: The fields the VALIDATE under way asked for (sent once its challenge is answered).
        self._asked: tuple[str, ...] = ()

    def greeting(self) -> list[str]:
        return [self._greeting]

    def handle(self, line: str) -> Answer:
        verb, argument = _split_command(line)
        if verb in ("PASE", "PASS"):
            return Answer(self._answer_challenge(verb, argument))
        if self._challenge.out:
            self._challenge.cancel()
            return Answer(["502 Bad sequence of commands."])
        if verb == "LOOKUP":
            return Answer(self._lookup(argument))
        if verb == "VALIDATE":
            return Answer(self._validate(argument))
        if verb == "FIELDS":
            return Answer(self._fields(argument.split()))
        if verb == "NOOP":
            return Answer(["200 Ok."])
        if verb == "QUIT":
            return Answer(["200 Ok."], close=True)
        return Answer(["500 Unknown command."])

    def _parse_query(self, argument: str) -> tuple[str, tuple[str, ...]] | list[str]:
        key, _, field_text = argument.partition(",")
        if not key.strip():
            return ["503 Missing argument."]
        fields = tuple(name.upper() for name in field_text.split())
        known = {info.name: info for info in FIELD_TABLE}
        for name in fields:
            if name not in known:
                return [f"501 No such field: {name}."]
            if known[name].read != "A":
                return [f"521 Field access denied: {name}."]
        return key, fields

    def _fields(self, names: list[str]) -> list[str]:
        known = {info.name: info for info in FIELD_TABLE}
        wanted = [name.upper() for name in names] or list(known)
        for name in wanted:
            if name not in known:
                return [f"501 No such field: {name}."]
        lines = [f"102 {len(wanted)}"]
        lines += [f"120 {name} {known[name].write} {known[name].read}" for name in wanted]
        return [*lines, "200 Ok."]

    def _refusal(self, code: int) -> list[str]:
        text = {
            520: "No match for that name.",
            522: "Ambiguous name.",
            523: "Query too vague.",
        }[code]
        return [f"{code} {text}"]

    def _records_reply(self, found: Sequence[DndRecord], fields: tuple[str, ...]) -> list[str]:
        shown = found[:LOOKUP_CAP]
        lines = [f"101 {len(shown)} {len(fields)}"]
        lines += [f"110 {record.value(name)}" for record in shown for name in fields]
        if len(found) > len(shown):
            lines.append("201 Additional matching records not returned.")
        else:
            lines.append("200 Ok.")
        return lines

    def _resolve(
        self, argument: str, *, unique: bool
    ) -> tuple[list[DndRecord], tuple[str, ...]] | list[str]:
        """The records and fields a query names, or the refusal lines to send."""
        query = self._parse_query(argument)
        if isinstance(query, list):
            return query
        key, fields = query
        found = match_records(self._records, key)
        if isinstance(found, int):
            return self._refusal(found)
        if len(found) > 1 and (unique or self._ambiguous == "refuse"):
            return self._refusal(522)
        return found, fields

    def _lookup(self, argument: str) -> list[str]:
        resolved = self._resolve(argument, unique=False)
        if isinstance(resolved, list):
            return resolved
        return self._records_reply(*resolved)

    def _validate(self, argument: str) -> list[str]:
        resolved = self._resolve(argument, unique=True)
        if isinstance(resolved, list):
            return resolved
        (record,), self._asked = resolved
        return [f"300 {self._challenge.issue(record)}"]

    def _answer_challenge(self, verb: str, argument: str) -> list[str]:
        answered = self._challenge.answer(argument, plain=verb == "PASS")
        if answered is None:
            return ["502 Bad sequence of commands."]
        record, right = answered
        if not right:
            return ["530 Incorrect password."]
        return self._records_reply([record], self._asked)


def _same_server(host: str, server_name: str) -> bool:
    """Whether a BLITZSERV host is this server (full names, or first labels if one is short)."""
    wanted = server_name.lower().rstrip(".")
    if "." in wanted and "." in host:
        return host == wanted
    return host.split(".", 1)[0] == wanted.split(".", 1)[0]


class BlitzServSession:
    """A BlitzMail server (TCP 2151): the client speaks first.

    Replies are a warning digit (always 0 here), a two-digit code and text.
    Sign-on is ``UID# n`` or ``USER name`` → ``033 <challenge>``, then
    ``PASE <answer>`` → ``030 uid``, ``032`` wrong answer, or ``036 <BLITZSERV>``
    when the account lives on another server.
    """

    def __init__(
        self,
        server_name: str,
        records: Sequence[DndRecord],
        *,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._server_name = server_name
        self._records = records
        self._challenge = _Challenge(random_bytes)
        self.validated: DndRecord | None = None

    def greeting(self) -> list[str]:
        return []

    def handle(self, line: str) -> Answer:
        verb, argument = _split_command(line)
        if verb == "VERS":
            return Answer([f"010 BlitzServ 3.6 (blitzdns fake {self._server_name})"])
        if verb in ("NOOP", "QUIT"):
            return Answer(["010 Ok."], close=verb == "QUIT")
        if verb in ("UID#", "USER"):
            return Answer([self._sign_on(verb, argument)])
        if verb == "PASE":
            return Answer([self._check(argument)])
        return Answer(["011 Unknown command."])

    def _sign_on(self, verb: str, argument: str) -> str:
        if self.validated is not None:
            return "023 Already validated."
        if not argument:
            return "013 Missing argument."
        key = f"#{argument}" if verb == "UID#" else argument
        found = match_records(self._records, key)
        if isinstance(found, int) or not found:
            return "031 No such user."
        if len(found) > 1:
            return "035 Ambiguous name."
        return f"033 {self._challenge.issue(found[0])}"

    def _check(self, argument: str) -> str:
        if self.validated is not None:
            return "023 Already validated."
        answered = self._challenge.answer(argument)
        if answered is None:
            return "022 User not specified."
        record, right = answered
        if not right:
            return "032 Validation error."
        if not _same_server(record.server_host, self._server_name):
            return f"036 {record.blitzserv}"
        self.validated = record
        return f"030 {record.uid}"


class BulletinsSession:
    """The bulletin server (TCP 1119): greets ``200 <version>``, NNTP-like after that."""

    def __init__(
        self,
        records: Sequence[DndRecord] = (),
        *,
        version: str = "BlitzMail bulletins 3.6 (blitzdns fake)",
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        self._records = records
        self._version = version
        self._challenge = _Challenge(random_bytes)

    def greeting(self) -> list[str]:
        return [f"200 {self._version}"]

    def handle(self, line: str) -> Answer:
        verb, argument = _split_command(line)
        if verb == "QUIT":
            return Answer(["205 Goodbye."], close=True)
        if verb == "NOOP":
            return Answer(["200 Ok."])
        if verb == "UID#":
            found = match_records(self._records, f"#{argument}")
            if isinstance(found, int) or len(found) != 1:
                return Answer(["520 No such user."])
            return Answer([f"300 {self._challenge.issue(found[0])}"])
        if verb == "PASE":
            answered = self._challenge.answer(argument)
            if answered is None:
                return Answer(["502 Bad sequence of commands."])
            return Answer(["210 Ok." if answered[1] else "530 Incorrect password."])
        return Answer(["500 Unknown command."])


# ---------------------------------------------------------------------------
# The asyncio server around a session


def check_loopback(host: str) -> str:
    """Refuse to listen anywhere but loopback (the project's network rule)."""
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ValueError(f"fake servers listen on a loopback IP literal, not {host!r}") from exc
    if not address.is_loopback:
        raise ValueError(f"fake servers listen on loopback only, not {host}")
    return host


@dataclass(frozen=True)
class Exchange:
    """One line a fake server received or sent, in order, with its connection number."""

    connection: int
    direction: Literal["in", "out"]
    line: str


class FakeServer(ClosesOnExit):
    """A loopback TCP server that runs one :class:`Session` per connection.

    Start with ``async with`` (or :meth:`start` / :meth:`close`); ``port`` may
    be 0, and :attr:`port` is then the port actually bound. Closing stops the
    listener and hangs up on every client, so nothing is left listening.
    """

    cr_ends_line = False

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        line_end: str = "\r\n",
    ) -> None:
        self.host = check_loopback(host)
        self._requested_port = port
        self.line_end = line_end
        self.transcript: list[Exchange] = []
        self.errors: list[Exception] = []
        """Exceptions a session raised (each hung up on its client); empty when healthy."""
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def new_session(self) -> Session:
        raise NotImplementedError

    @property
    def received(self) -> list[str]:
        """Every line clients sent, across connections, in arrival order."""
        return [entry.line for entry in self.transcript if entry.direction == "in"]

    @property
    def sent(self) -> list[str]:
        """Every line this server sent, across connections."""
        return [entry.line for entry in self.transcript if entry.direction == "out"]

    @property
    def port(self) -> int:
        """The bound port (meaningful once started)."""
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self._requested_port)
        return self

    async def close(self) -> None:
        """Stop listening and hang up on every client."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        number = self.connections
        try:
            await self._converse(number, reader, writer)
        except (OSError, LineTooLong, asyncio.CancelledError):
            pass
        except Exception as exc:  # a defect in a session: hang up, keep it for the test
            self.errors.append(exc)
        finally:
            self._handlers.discard(task)
            await close_stream(writer)

    async def _send(self, number: int, writer: asyncio.StreamWriter, lines: Iterable[str]) -> None:
        for line in lines:
            self.transcript.append(Exchange(number, "out", line))
            writer.write((line + self.line_end).encode("utf-8"))
        await writer.drain()

    async def _converse(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        session = self.new_session()
        await self._send(number, writer, session.greeting())
        lines = LineReader(reader, cr_ends_line=self.cr_ends_line)
        while (raw := await lines.readline()) is not None:
            text = decode_line(raw)
            if not text.strip():
                continue
            self.transcript.append(Exchange(number, "in", text))
            answer = session.handle(text)
            await self._send(number, writer, answer.lines)
            if answer.close:
                return


class FakeDnd(FakeServer):
    """A DND server over ``records`` (see :class:`DndSession` for ``ambiguous``)."""

    def __init__(
        self,
        records: Sequence[DndRecord] = DEMO_RECORDS,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ambiguous: Literal["refuse", "list"] = "refuse",
        line_end: str = "\r\n",
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        super().__init__(host, port, line_end=line_end)
        self.records = tuple(records)
        self.ambiguous: Literal["refuse", "list"] = ambiguous
        self._random_bytes = random_bytes

    def new_session(self) -> Session:
        return DndSession(self.records, ambiguous=self.ambiguous, random_bytes=self._random_bytes)


class FakeBlitzServer(FakeServer):
    """A BlitzMail server named ``server_name`` (e.g. ``dasher.dartmouth.edu``).

    ``users`` are the directory records it signs on (its own and others', so it
    can answer ``036`` for an account that lives elsewhere). Lines may end in
    CR, LF or CRLF, as real clients send them.
    """

    cr_ends_line = True

    def __init__(
        self,
        server_name: str,
        users: Sequence[DndRecord] = DEMO_RECORDS,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        line_end: str = "\r\n",
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        super().__init__(host, port, line_end=line_end)
        self.server_name = server_name
        self.users = tuple(users)
        self._random_bytes = random_bytes

    def new_session(self) -> Session:
        return BlitzServSession(self.server_name, self.users, random_bytes=self._random_bytes)


class FakeBulletins(FakeServer):
    """The bulletin server: greets ``200 <version>``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        version: str = "BlitzMail bulletins 3.6 (blitzdns fake)",
        users: Sequence[DndRecord] = DEMO_RECORDS,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        super().__init__(host, port)
        self.version = version
        self.users = tuple(users)
        self._random_bytes = random_bytes

    def new_session(self) -> Session:
        return BulletinsSession(self.users, version=self.version, random_bytes=self._random_bytes)


Step = bytes | None


class _ScriptSession:
    """Placeholder session: :class:`ScriptedServer` drives its own conversation."""

    def greeting(self) -> list[str]:
        return []

    def handle(self, line: str) -> Answer:
        return Answer([])


class ScriptedServer(FakeServer):
    """A peer that plays fixed bytes: for servers that misbehave on purpose.

    ``steps`` run in order on each connection: bytes are sent as they are (no
    line end added); ``None`` waits for one line from the client. Then
    ``then="close"`` hangs up, ``"hang"`` stays silent until the server closes.
    ``[]`` with ``"hang"`` is a server that accepts and never speaks.
    """

    def __init__(
        self,
        steps: Sequence[Step] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        then: Literal["close", "hang"] = "close",
    ) -> None:
        super().__init__(host, port)
        self.steps = tuple(steps)
        self.then = then
        self._closing = asyncio.Event()

    def new_session(self) -> Session:
        return _ScriptSession()

    async def close(self) -> None:
        self._closing.set()
        await super().close()

    async def _converse(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lines = LineReader(reader, cr_ends_line=True)
        for step in self.steps:
            if step is None:
                raw = await lines.readline()
                if raw is None:
                    return
                self.transcript.append(Exchange(number, "in", decode_line(raw)))
            else:
                self.transcript.append(Exchange(number, "out", decode_line(step)))
                writer.write(step)
                await writer.drain()
        if self.then == "hang":
            await self._closing.wait()


@dataclass
class DemoFleet(ClosesOnExit):
    """The demo's fake servers on one host each: DND, every reindeer, bulletins.

    ``addresses`` maps a role to the loopback IP it listens on: ``"dnd"``,
    ``"bulletins"`` and each server name in ``servers``; missing roles use
    127.0.0.1. Ports are chosen by the system (see each server's ``port``).
    """

    records: Sequence[DndRecord] = DEMO_RECORDS
    servers: Sequence[str] = DEMO_SERVERS
    addresses: Mapping[str, str] = field(default_factory=dict)
    dnd: FakeDnd = field(init=False)
    blitzservers: dict[str, FakeBlitzServer] = field(init=False)
    bulletins: FakeBulletins = field(init=False)
    _stack: contextlib.AsyncExitStack = field(init=False)

    def __post_init__(self) -> None:
        where = self.addresses.get
        self.dnd = FakeDnd(self.records, where("dnd", "127.0.0.1"))
        self.blitzservers = {
            name: FakeBlitzServer(name, self.records, where(name, "127.0.0.1"))
            for name in self.servers
        }
        self.bulletins = FakeBulletins(where("bulletins", "127.0.0.1"), users=self.records)
        self._stack = contextlib.AsyncExitStack()

    @property
    def all(self) -> list[FakeServer]:
        return [self.dnd, *self.blitzservers.values(), self.bulletins]

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            for server in self.all:
                await stack.enter_async_context(server)
            self._stack = stack.pop_all()
        return self

    async def close(self) -> None:
        """Stop every server."""
        await self._stack.aclose()
