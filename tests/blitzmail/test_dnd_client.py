"""The DND client against real fake servers over loopback TCP."""

from __future__ import annotations

import pytest

from blitzdns.blitzmail import dnd
from blitzdns.blitzmail.dnd import (
    Ambiguous,
    ConnectionClosed,
    DndClient,
    DndTimeout,
    DndUnavailable,
    FieldDenied,
    InvalidRequest,
    NoBlitzServ,
    NoMatch,
    ProtocolError,
    TooVague,
    find_blitzserv,
)
from blitzdns.blitzmail.fakes import DEMO_PASSWORD, DndRecord, FakeDnd, ScriptedServer

from .conftest import LOOPBACK, SHORT


async def test_find_blitzserv_follows_the_recipe(fake_dnd: FakeDnd) -> None:
    account = await find_blitzserv(LOOPBACK, fake_dnd.port, "demo", timeout=5)
    assert account == dnd.Account(
        "Demo User", "1001", "dasher.dartmouth.edu", "dasher.Dartmouth.EDU@BlitzServ"
    )
    assert fake_dnd.received == ["LOOKUP demo,NAME UID BLITZSERV", "QUIT"]


async def test_find_blitzserv_second_server(fake_dnd: FakeDnd) -> None:
    account = await find_blitzserv(LOOPBACK, fake_dnd.port, "Eleazar Wheelock", timeout=5)
    assert account.blitzserv == "prancer.dartmouth.edu"
    assert account.uid == "1769"


@pytest.mark.parametrize(
    ("user", "kind"),
    [("nobody here", NoMatch), ("dem", Ambiguous), ("d", TooVague), ("#4242", NoMatch)],
)
async def test_find_blitzserv_refusals_are_typed(
    fake_dnd: FakeDnd, user: str, kind: type[dnd.DndRefusal]
) -> None:
    with pytest.raises(kind) as caught:
        await find_blitzserv(LOOPBACK, fake_dnd.port, user, timeout=5)
    assert not caught.value.retryable
    assert fake_dnd.received[-1] == "QUIT", "a refusal leaves the session in step"


async def test_ambiguous_listing_carries_candidates() -> None:
    async with FakeDnd(ambiguous="list") as server:
        with pytest.raises(Ambiguous) as caught:
            await find_blitzserv(LOOPBACK, server.port, "dem", timeout=5)
    assert caught.value.candidates == ("Demo User", "Demo Reindeer")
    assert not caught.value.truncated


async def test_lookup_caps_at_25_with_201() -> None:
    crowd = [DndRecord(f"Rudolph Reindeer{n:02d}", 2000 + n, "vixen@BlitzServ") for n in range(30)]
    async with FakeDnd(crowd, ambiguous="list") as server:
        async with dnd.dnd_session(LOOPBACK, server.port, timeout=5) as client:
            result = await client.lookup("rudolph", ["NAME", "UID"])
            without_fields = await client.lookup("rudolph")
        with pytest.raises(Ambiguous) as caught:
            await find_blitzserv(LOOPBACK, server.port, "rudolph", timeout=5)
    assert result.truncated
    assert len(result.rows) == 25
    assert result.records[24] == {"NAME": "Rudolph Reindeer24", "UID": "2024"}
    assert without_fields.truncated
    assert len(without_fields.rows) == 25
    assert caught.value.truncated
    assert len(caught.value.candidates) == 25


async def test_empty_values_survive(fake_dnd: FakeDnd) -> None:
    async with dnd.dnd_session(LOOPBACK, fake_dnd.port, timeout=5) as client:
        record = await client.lookup_unique("demo reindeer", ["nickname", "NAME", "MAILADDR"])
    assert record == {"NICKNAME": "", "NAME": "Demo Reindeer", "MAILADDR": ""}
    assert "110 " in fake_dnd.sent


async def test_bare_lf_server() -> None:
    async with FakeDnd(line_end="\n") as server:
        account = await find_blitzserv(LOOPBACK, server.port, "wheelock", timeout=5)
    assert account.blitzserv == "prancer.dartmouth.edu"


async def test_fields_noop_and_denied_fields(fake_dnd: FakeDnd) -> None:
    async with dnd.dnd_session(LOOPBACK, fake_dnd.port, timeout=5) as client:
        assert client.greeting == dnd.Reply(220, "DND server here.")
        infos = await client.fields()
        assert (await client.noop()).code == 200
        with pytest.raises(FieldDenied) as denied:
            await client.lookup("demo", ["PERM"])
        with pytest.raises(FieldDenied) as unknown:
            await client.lookup("demo", ["SHOESIZE"])
        assert (await client.fields(["uid"]))[0].name == "UID"
    assert {info.name for info in infos} >= {"NAME", "UID", "BLITZSERV"}
    assert denied.value.reply.code == 521
    assert unknown.value.reply.code == 501
    assert fake_dnd.received[-1] == "QUIT"


async def test_validate_with_des_challenge(fake_dnd: FakeDnd) -> None:
    async with dnd.dnd_session(LOOPBACK, fake_dnd.port, timeout=5) as client:
        record = await client.validate("demo", DEMO_PASSWORD, ["NAME", "UID"])
        with pytest.raises(dnd.BadPassword):
            await client.validate("demo", "not-it", ["NAME"])
    assert record == {"NAME": "Demo User", "UID": "1001"}
    pase_lines = [line for line in fake_dnd.received if line.startswith("PASE ")]
    assert len(pase_lines) == 2
    assert all(DEMO_PASSWORD not in line for line in fake_dnd.received)


async def test_invalid_key_is_refused_before_connecting(refused_port: int) -> None:
    with pytest.raises(InvalidRequest):
        await find_blitzserv(LOOPBACK, refused_port, "demo\r\nQUIT", timeout=5)


async def test_nothing_listening_is_unavailable(refused_port: int) -> None:
    with pytest.raises(DndUnavailable) as caught:
        await find_blitzserv(LOOPBACK, refused_port, "demo", timeout=5)
    assert caught.value.retryable


async def test_server_closing_mid_reply() -> None:
    steps = [b"220 DND server here.\r\n", None, b"101 1 3\r\n110 Demo User\r\n"]
    async with ScriptedServer(steps) as server:
        with pytest.raises(ConnectionClosed) as caught:
            await find_blitzserv(LOOPBACK, server.port, "demo", timeout=5)
    assert caught.value.retryable


async def test_server_closing_before_greeting() -> None:
    async with ScriptedServer([]) as server:
        with pytest.raises(ConnectionClosed):
            await DndClient.connect(LOOPBACK, server.port, timeout=5)


async def test_silent_server_times_out() -> None:
    async with ScriptedServer([], then="hang") as server:
        with pytest.raises(DndTimeout) as caught:
            await find_blitzserv(LOOPBACK, server.port, "demo", timeout=SHORT)
    assert caught.value.retryable


async def test_server_stalling_mid_reply_times_out() -> None:
    steps = [b"220 DND server here.\r\n", None, b"101 1 3\r\n110 Demo User\r\n"]
    async with ScriptedServer(steps, then="hang") as server:
        with pytest.raises(DndTimeout):
            await find_blitzserv(LOOPBACK, server.port, "demo", timeout=SHORT)


BAD_HOST_ANSWER = b"101 1 3\r\n110 A\r\n110 1\r\n110 not a host!\r\n200 Ok.\r\n"


@pytest.mark.parametrize(
    "steps",
    [
        [b"SSH-2.0-OpenSSH_9.2\r\n"],
        [b"500 go away\r\n"],
        [b"220 hi\r\n", None, b"101 1 3\r\n110 a\r\n200 Ok.\r\n"],
        [b"220 hi\r\n", None, b"hello there\r\n"],
        [b"220 hi\r\n", None, BAD_HOST_ANSWER, None, b"200 Ok.\r\n"],
        [b"220 hi\r\n", None, b"x" * 5000],
    ],
)
async def test_protocol_violations_carry_the_line(steps: list[bytes | None]) -> None:
    async with ScriptedServer(steps, then="hang") as server:
        with pytest.raises(ProtocolError):
            await find_blitzserv(LOOPBACK, server.port, "demo", timeout=5)


async def test_silence_after_quit_does_not_spoil_the_answer() -> None:
    answer = b"101 1 3\r\n110 A B\r\n110 9\r\n110 Vixen@BlitzServ\r\n200 Ok.\r\n"
    async with ScriptedServer([b"220 hi\r\n", None, answer, None], then="hang") as server:
        account = await find_blitzserv(LOOPBACK, server.port, "a b", timeout=5)
    assert account.blitzserv == "vixen"
    assert server.received == ["LOOKUP a b,NAME UID BLITZSERV", "QUIT"]


async def test_account_without_server() -> None:
    async with FakeDnd([DndRecord("Guest Account", 7)]) as server:
        with pytest.raises(NoBlitzServ):
            await find_blitzserv(LOOPBACK, server.port, "guest", timeout=5)


async def test_connection_is_refused_after_an_error() -> None:
    steps = [b"220 hi\r\n", None, b"999 what\r\n"]
    async with ScriptedServer(steps, then="hang") as server:
        client = await DndClient.connect(LOOPBACK, server.port, timeout=5)
        async with client:
            with pytest.raises(ProtocolError):
                await client.noop()
            with pytest.raises(ConnectionClosed):
                await client.noop()
        assert server.received == ["NOOP"], "a broken session sends no QUIT"
