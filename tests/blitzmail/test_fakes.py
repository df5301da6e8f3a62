"""The fake servers speak their dialects over real TCP and clean up after themselves."""

from __future__ import annotations

import asyncio

import pytest

from blitzdns.blitzmail import challenge
from blitzdns.blitzmail.dnd import LineReader, close_stream, decode_line
from blitzdns.blitzmail.fakes import (
    DEMO_PASSWORD,
    DEMO_RECORDS,
    Answer,
    DemoFleet,
    DndRecord,
    DndSession,
    FakeBlitzServer,
    FakeBulletins,
    FakeDnd,
    ScriptedServer,
    Session,
    match_records,
)

from .conftest import LOOPBACK

FIXED = bytes(range(1, 9))


def fixed_bytes(count: int) -> bytes:
    return FIXED[:count]


class Peer:
    """A raw line client: what a BlitzMail client does, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.lines = LineReader(reader, cr_ends_line=True)
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Peer:
        return cls(*await asyncio.open_connection(LOOPBACK, port))

    async def say(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def hear(self) -> str | None:
        async with asyncio.timeout(5):
            raw = await self.lines.readline()
        return None if raw is None else decode_line(raw)

    async def ask(self, line: str, end: bytes = b"\r\n") -> str | None:
        await self.say(line.encode() + end)
        return await self.hear()

    async def close(self) -> None:
        await close_stream(self.writer)


async def test_blitzserv_sign_on_with_des() -> None:
    async with FakeBlitzServer("dasher.dartmouth.edu", random_bytes=fixed_bytes) as server:
        peer = await Peer.open(server.port)
        assert (await peer.ask("vers TestClient 1.0")) == (
            "010 BlitzServ 3.6 (blitzdns fake dasher.dartmouth.edu)"
        )
        offered = await peer.ask("UID# 1001", end=b"\r")
        assert offered == "033 " + challenge.new_challenge(FIXED)
        answer = challenge.answer_challenge(offered[4:], DEMO_PASSWORD)
        assert (await peer.ask(f"PASE {answer}", end=b"\n")) == "030 1001"
        assert (await peer.ask("PASE " + answer)) == "023 Already validated."
        assert (await peer.ask("NOOP")) == "010 Ok."
        assert (await peer.ask("FROB")) == "011 Unknown command."
        assert (await peer.ask("QUIT")) == "010 Ok."
        assert await peer.hear() is None
        await peer.close()
    assert server.received[:2] == ["vers TestClient 1.0", "UID# 1001"]
    assert DEMO_PASSWORD not in " ".join(server.received)


async def test_blitzserv_refuses_wrong_answers_and_other_servers_accounts() -> None:
    async with FakeBlitzServer("prancer") as server:
        peer = await Peer.open(server.port)
        assert (await peer.ask("PASE 000")) == "022 User not specified."
        offered = await peer.ask("USER Demo User")
        assert offered is not None
        assert offered.startswith("033 ")
        wrong = challenge.answer_challenge(offered[4:], "guess")
        assert (await peer.ask(f"PASE {wrong}")) == "032 Validation error."
        offered = await peer.ask("USER demo")
        assert offered is not None
        right = challenge.answer_challenge(offered[4:], DEMO_PASSWORD)
        assert (await peer.ask(f"PASE {right}")) == "036 dasher.Dartmouth.EDU@BlitzServ"
        assert (await peer.ask("USER nobody at all")) == "031 No such user."
        assert (await peer.ask("USER dem")) == "035 Ambiguous name."
        assert (await peer.ask("UID#")) == "013 Missing argument."
        await peer.close()


async def test_bulletins_greet_200_and_validate() -> None:
    async with FakeBulletins(random_bytes=fixed_bytes) as server:
        peer = await Peer.open(server.port)
        assert (await peer.hear()) == "200 BlitzMail bulletins 3.6 (blitzdns fake)"
        offered = await peer.ask("UID# 1769")
        assert offered == "300 " + challenge.new_challenge(FIXED)
        assert (await peer.ask("PASE " + challenge.answer_challenge(offered[4:], "hanover"))) == (
            "210 Ok."
        )
        assert (await peer.ask("QUIT")) == "205 Goodbye."
        await peer.close()


async def test_dnd_lines_are_case_insensitive_and_may_end_in_bare_lf(fake_dnd: FakeDnd) -> None:
    peer = await Peer.open(fake_dnd.port)
    assert (await peer.hear()) == "220 DND server here."
    assert (await peer.ask("lookup DEMO,uid", end=b"\n")) == "101 1 1"
    assert (await peer.hear()) == "110 1001"
    assert (await peer.hear()) == "200 Ok."
    assert (await peer.ask("pase 1")) == "502 Bad sequence of commands."
    assert (await peer.ask("BOGUS")) == "500 Unknown command."
    assert (await peer.ask("LOOKUP")) == "503 Missing argument."
    assert (await peer.ask("QUIT")) == "200 Ok."
    assert await peer.hear() is None
    await peer.close()


def test_dnd_session_validate_then_anything_else_is_bad_sequence() -> None:
    session = DndSession(DEMO_RECORDS, random_bytes=fixed_bytes)
    assert session.handle("VALIDATE demo,NAME").lines == ["300 " + challenge.new_challenge(FIXED)]
    assert session.handle("NOOP").lines == ["502 Bad sequence of commands."]
    assert session.handle("VALIDATE dem").lines == ["522 Ambiguous name."]
    session.handle("VALIDATE wheelock,UID")
    assert session.handle("PASS hanover").lines == ["101 1 1", "110 1769", "200 Ok."]


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("demo", ["Demo User"]),
        ("DEMO  user", ["Demo User"]),
        ("dem us", ["Demo User"]),
        ("dem", ["Demo User", "Demo Reindeer"]),
        ("whee", ["Eleazar Wheelock"]),
        ("#1769", ["Eleazar Wheelock"]),
        ("user demo", []),
        ("*12345", []),
    ],
)
def test_match_records(key: str, names: list[str]) -> None:
    found = match_records(DEMO_RECORDS, key)
    if names:
        assert isinstance(found, list)
        assert [record.name for record in found] == names
    else:
        assert found == 520


def test_short_keys_are_too_vague() -> None:
    assert match_records(DEMO_RECORDS, "d") == 523
    assert match_records(DEMO_RECORDS, " . ") == 523


def test_record_extra_fields_override() -> None:
    record = DndRecord("A B", 1, extra=(("DEPTCLASS", "Faculty"), ("DUP", "x")))
    assert record.value("DEPTCLASS") == "Faculty"
    assert record.value("EMAIL") == "A.B@Dartmouth.EDU"


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.org"])
def test_fakes_refuse_non_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeDnd(host=host)


async def test_close_leaves_nothing_listening_and_hangs_up_on_clients() -> None:
    server = await ScriptedServer([b"hello\r\n"], then="hang").start()
    port = server.port
    peer = await Peer.open(port)
    assert (await peer.hear()) == "hello"
    await server.close()
    assert await peer.hear() is None
    await peer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(LOOPBACK, port)


async def test_demo_fleet_starts_every_role_and_stops_them() -> None:
    fleet = DemoFleet()
    async with fleet:
        assert set(fleet.blitzservers) == {"dasher.dartmouth.edu", "prancer.dartmouth.edu"}
        ports = [server.port for server in fleet.all]
        assert len(set(ports)) == len(ports) == 4
        for server in fleet.all:
            _, writer = await asyncio.open_connection(LOOPBACK, server.port)
            await close_stream(writer)
    for port in ports:
        with pytest.raises(OSError):
            await asyncio.open_connection(LOOPBACK, port)


async def test_two_users_on_two_servers_at_once() -> None:
    from blitzdns.blitzmail.dnd import find_blitzserv
    from blitzdns.blitzmail.probes import converse_blitzserv

    async with DemoFleet() as fleet:
        accounts = await asyncio.gather(
            *(
                find_blitzserv(LOOPBACK, fleet.dnd.port, user, timeout=5)
                for user in ("demo", "wheelock")
            )
        )
        talks = await asyncio.gather(
            *(
                converse_blitzserv(
                    LOOPBACK, fleet.blitzservers[a.blitzserv].port, ["VERS x", "NOOP"]
                )
                for a in accounts
            )
        )
    assert [a.blitzserv for a in accounts] == ["dasher.dartmouth.edu", "prancer.dartmouth.edu"]
    assert [str(reply) for _, reply in talks[1]] == [
        "010 BlitzServ 3.6 (blitzdns fake prancer.dartmouth.edu)",
        "010 Ok.",
    ]
    assert {entry.connection for entry in fleet.dnd.transcript} == {1, 2}
    assert all(not server.errors for server in fleet.all)


class BrokenSession:
    def greeting(self) -> list[str]:
        return ["200 hi"]

    def handle(self, line: str) -> Answer:
        raise RuntimeError("defect")


class BrokenServer(FakeDnd):
    def new_session(self) -> Session:
        return BrokenSession()


async def test_a_session_defect_hangs_up_and_is_kept() -> None:
    async with BrokenServer() as server:
        peer = await Peer.open(server.port)
        assert (await peer.hear()) == "200 hi"
        assert (await peer.ask("NOOP")) is None
        await peer.close()
    assert [str(error) for error in server.errors] == ["defect"]
