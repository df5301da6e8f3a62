"""End-to-end probes against the fakes, wrong services and dead ports."""

from __future__ import annotations

import pytest

from blitzdns.blitzmail import probes
from blitzdns.blitzmail.fakes import FakeBlitzServer, FakeBulletins, FakeDnd, ScriptedServer
from blitzdns.blitzmail.probes import (
    ProbeClosed,
    ProbeMismatch,
    ProbeTimeout,
    ProbeUnavailable,
    converse_blitzserv,
    probe_blitzmail,
    probe_bulletins,
    probe_dnd,
    probe_for_service,
    probe_nntp,
    probe_tcp,
)

from .conftest import LOOPBACK, SHORT


async def test_each_probe_recognises_its_service(fake_dnd: FakeDnd) -> None:
    async with FakeBlitzServer("dasher") as blitz, FakeBulletins() as bulletins:
        dnd_result = await probe_dnd(LOOPBACK, fake_dnd.port, 5)
        blitz_result = await probe_blitzmail(LOOPBACK, blitz.port, 5)
        bulletins_result = await probe_bulletins(LOOPBACK, bulletins.port, 5)
    assert dnd_result.ok
    assert dnd_result.seen == "220 DND server here."
    assert dnd_result.elapsed >= 0
    assert blitz_result.ok
    assert blitz_result.seen.startswith("010 BlitzServ 3.6")
    assert blitz.received == [f"VERS {probes.CHECK_CLIENT}", "QUIT"]
    assert bulletins_result.ok
    assert bulletins_result.service == "bulletins"
    assert fake_dnd.received == ["QUIT"]


async def test_wrong_service_is_seen_not_ok(fake_dnd: FakeDnd) -> None:
    async with FakeBulletins() as bulletins, FakeBlitzServer("dasher") as blitz:
        dnd_on_bulletins = await probe_dnd(LOOPBACK, bulletins.port, 5)
        bulletins_on_dnd = await probe_bulletins(LOOPBACK, fake_dnd.port, 5)
        blitz_on_dnd = await probe_blitzmail(LOOPBACK, fake_dnd.port, 5)
        with pytest.raises(ProbeTimeout):
            await probe_dnd(LOOPBACK, blitz.port, SHORT)
    assert not dnd_on_bulletins.ok
    assert dnd_on_bulletins.seen.startswith("200 ")
    assert dnd_on_bulletins.expected == "a 220 greeting"
    assert not bulletins_on_dnd.ok
    assert not blitz_on_dnd.ok
    assert blitz_on_dnd.seen == "220 DND server here."


async def test_nntp_accepts_200_and_201() -> None:
    for greeting, ok in ((b"201 no posting\r\n", True), (b"502 go away\r\n", False)):
        async with ScriptedServer([greeting]) as server:
            assert (await probe_nntp(LOOPBACK, server.port, 5)).ok is ok


async def test_nothing_listening(refused_port: int) -> None:
    for probe in (probe_dnd, probe_blitzmail, probe_bulletins, probe_tcp):
        with pytest.raises(ProbeUnavailable) as caught:
            await probe(LOOPBACK, refused_port, 5)
        assert caught.value.retryable
        assert caught.value.port == refused_port


async def test_forward_that_hangs_up_at_once_is_closed() -> None:
    async with ScriptedServer([]) as server:
        for probe in (probe_dnd, probe_blitzmail, probe_tcp):
            with pytest.raises(ProbeClosed):
                await probe(LOOPBACK, server.port, 5)


async def test_silent_service() -> None:
    async with ScriptedServer([], then="hang") as server:
        with pytest.raises(ProbeTimeout, match="no reply"):
            await probe_dnd(LOOPBACK, server.port, SHORT)
        result = await probe_tcp(LOOPBACK, server.port, 5, settle=0.1)
    assert result.ok
    assert "waits for the client" in result.seen


async def test_tcp_probe_reports_what_a_talkative_service_says() -> None:
    async with ScriptedServer([b"SSH-2.0-OpenSSH_9.2\r\n"], then="hang") as server:
        result = await probe_tcp(LOOPBACK, server.port, 5)
    assert result.ok
    assert result.seen == "SSH-2.0-OpenSSH_9.2"


async def test_junk_and_huge_lines() -> None:
    async with ScriptedServer([b"\xff\xfe binary \x00\r\n"]) as junk:
        result = await probe_dnd(LOOPBACK, junk.port, 5)
    assert not result.ok
    async with ScriptedServer([b"2" * 10000], then="hang") as huge:
        with pytest.raises(ProbeMismatch):
            await probe_dnd(LOOPBACK, huge.port, 5)
    async with ScriptedServer([b"220 " + b"x" * 1000 + b"\r\n"]) as long_line:
        result = await probe_dnd(LOOPBACK, long_line.port, 5)
    assert result.ok
    assert len(result.seen) == probes.SEEN_LIMIT


@pytest.mark.parametrize(
    ("service", "probe"),
    [
        (902, probe_dnd),
        ("dnd", probe_dnd),
        (" DND ", probe_dnd),
        (2151, probe_blitzmail),
        ("2151", probe_blitzmail),
        ("blitzmail", probe_blitzmail),
        (1119, probe_bulletins),
        (119, probe_nntp),
        ("nntp", probe_nntp),
        (2152, probes.probe_dartnotify),
        (22, probe_tcp),
        ("ssh", probe_tcp),
        ("٩٠٢", probe_tcp),
    ],
)
def test_probe_for_service(service: str | int, probe: probes.Probe) -> None:
    assert probe_for_service(service) is probe


async def test_converse_blitzserv() -> None:
    async with FakeBlitzServer("prancer.dartmouth.edu") as server:
        exchanges = await converse_blitzserv(LOOPBACK, server.port, ["VERS demo", "NOOP"])
    assert [(command, reply.code) for command, reply in exchanges] == [
        ("VERS demo", 10),
        ("NOOP", 10),
    ]
    assert not exchanges[0][1].warning
    assert server.received == ["VERS demo", "NOOP"]


async def test_converse_blitzserv_with_the_wrong_peer(fake_dnd: FakeDnd) -> None:
    with pytest.raises(ProbeMismatch) as caught:
        await converse_blitzserv(LOOPBACK, fake_dnd.port, ["VERS demo"])
    assert caught.value.line == "220 DND server here."


@pytest.mark.parametrize(
    ("line", "flag", "code"),
    [("010 Ok.", False, 10), ("130 uid", True, 30), ("011", False, 11)],
)
def test_parse_blitz_reply(line: str, flag: bool, code: int) -> None:
    reply = probes.parse_blitz_reply(line)
    assert (reply.warning, reply.code) == (flag, code)


@pytest.mark.parametrize("line", ["220 DND", "2 x", "", "01", "0100 x", "٠١٠ x"])
def test_parse_blitz_reply_rejects(line: str) -> None:
    with pytest.raises(probes.BlitzReplyError):
        probes.parse_blitz_reply(line)
