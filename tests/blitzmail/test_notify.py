"""Notify: the ATP codec and the notify step (pure), the fake server and the client over
real loopback sockets: registration, a notice posted on the TCP side, its response and
release; re-sending when a packet is lost."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blitzdns.blitzmail.atp import (
    EOM,
    NOTICE,
    REGISTER,
    RELEASE,
    REQUEST,
    RESPONSE,
    SERVICE_BULLETINS,
    SERVICE_MAIL,
    AtpError,
    AtpPacket,
    Notice,
    NotifyStep,
    Registration,
)
from blitzdns.blitzmail.fake_notify import FakeNotify, NotifyCore
from blitzdns.blitzmail.fakes import DEMO_PASSWORD
from blitzdns.blitzmail.notify import NotifyClient, post_notice

WAIT_S = 20.0

packets = st.builds(
    AtpPacket,
    kind=st.sampled_from([REQUEST, RESPONSE, RELEASE]),
    tid=st.integers(0, 0xFFFF),
    command=st.binary(min_size=4, max_size=4),
    data=st.binary(max_size=100),
    flags=st.sampled_from([0, EOM, 0x20 | EOM, 0x08]),
    bitmap=st.integers(0, 255),
)
registrations = st.builds(
    Registration,
    uid=st.from_regex(r"#[0-9]{1,9}", fullmatch=True),
    port=st.integers(0, 65535),
    services=st.lists(st.integers(1, 3), max_size=4).map(tuple),
)


@given(packets)
def test_atp_packets_round_trip(packet: AtpPacket) -> None:
    assert AtpPacket.parse(packet.encode()) == packet


@given(registrations)
def test_registrations_round_trip(registration: Registration) -> None:
    assert Registration.parse(registration.encode()) == registration


def test_the_wire_layout_of_a_registration() -> None:
    """Byte for byte as the reference describes NR02: 0x03, type|flags, bitmap, TID, user
    bytes; data = length byte, "#uid", 2-byte port, 4-byte count, 4-byte codes."""
    packet = AtpPacket(REQUEST, 0x1234, REGISTER, Registration("#1001", 2154, (1,)).encode())
    assert packet.encode() == (
        b"\x03\x40\x00\x12\x34NR02" + b"\x05#1001" + b"\x08\x6a" + b"\0\0\0\x01" + b"\0\0\0\x01"
    )


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x03\x40\x00", b"\x02\x40\x00\x00\x01NR02", b"\x03\x00\x00\x00\x01NR02"],
)
def test_malformed_atp_is_refused(datagram: bytes) -> None:
    with pytest.raises(AtpError):
        AtpPacket.parse(datagram)


@given(registrations, st.integers(1, 65535), st.integers(0, 0xFFFF), st.binary(max_size=8))
def test_the_step_writes_the_relay_port_into_a_registration(
    registration: Registration, relay_port: int, tid: int, trailer: bytes
) -> None:
    datagram = AtpPacket(REQUEST, tid, REGISTER, registration.encode() + trailer).encode()
    rewritten, asked = NotifyStep().upstream(datagram, relay_port)
    packet = AtpPacket.parse(rewritten)
    assert asked == registration.port
    assert Registration.parse(packet.data) == registration.with_port(relay_port)
    assert packet.data.endswith(trailer) and packet.tid == tid
    assert len(rewritten) == len(datagram)


@given(st.binary(max_size=40))
def test_the_step_passes_everything_else_unchanged(datagram: bytes) -> None:
    if datagram[5:9] == REGISTER:
        datagram = datagram[:5] + b"XXXX" + datagram[9:]
    assert NotifyStep().upstream(datagram, 999) == (datagram, None)


def test_the_step_sends_server_requests_to_the_notice_port() -> None:
    step = NotifyStep()
    notice = AtpPacket(REQUEST, 1, NOTICE, Notice(1, 1001, 7, b"hi").encode())
    assert step.server_initiated(notice.encode())
    assert step.server_initiated(notice.answer(RELEASE).encode())
    assert not step.server_initiated(notice.answer(RESPONSE).encode())
    assert not step.server_initiated(b"not atp")


def test_core_sends_notices_where_the_registration_says() -> None:
    core = NotifyCore()
    source = ("127.0.0.5", 4000)
    register = AtpPacket(REQUEST, 9, REGISTER, Registration("#1001", 5000).encode())
    [(reply, to)] = core.datagram(register.encode(), source, now=0)
    assert to == source and AtpPacket.parse(reply) == register.answer(RESPONSE)
    [(sent, notice_to)] = core.post(1001, SERVICE_MAIL, 42, b"You have mail", now=1)
    assert notice_to == ("127.0.0.5", 5000)
    assert core.post(1001, SERVICE_BULLETINS, 43, b"not registered for this", now=1) == []
    noti = AtpPacket.parse(sent)
    assert Notice.parse(noti.data) == Notice(SERVICE_MAIL, 1001, 42, b"You have mail")
    assert core.tick(now=1.5) == []
    assert core.tick(now=2.1) == [(sent, notice_to)]  # not answered: sent again
    [(release, _)] = core.datagram(noti.answer(RESPONSE).encode(), notice_to, now=2.2)
    assert AtpPacket.parse(release).kind == RELEASE
    assert core.tick(now=10) == []


def test_port_zero_means_the_source_port() -> None:
    core = NotifyCore()
    register = AtpPacket(REQUEST, 9, REGISTER, Registration("#1001", 0).encode())
    core.datagram(register.encode(), ("127.0.0.5", 4000), now=0)
    assert core.registered(1001) == [("127.0.0.5", 4000)]


async def test_register_post_and_receive_a_notice_on_loopback() -> None:
    async with FakeNotify() as server, NotifyClient() as client:
        async with asyncio.timeout(WAIT_S):
            await client.register((server.host, server.udp_port), 1001)
            assert server.core.registered(1001) == [client.address]
            replies = await post_notice(
                (server.host, server.tcp_port),
                "#1001",
                DEMO_PASSWORD,
                1001,
                b"New mail from Demo Reindeer",
                message_id=77,
            )
            assert [r[:3] for r in replies] == ["220", "300", "200", "200", "221"]
            notice = await client.next_notice()
            assert notice == Notice(SERVICE_MAIL, 1001, 77, b"New mail from Demo Reindeer")
            await client.wait_released()
            await server.wait_for("answered")


async def test_posting_needs_a_signed_on_user() -> None:
    async with FakeNotify() as server:
        reader, writer = await asyncio.open_connection(server.host, server.tcp_port)
        await reader.readline()
        writer.write(b"NOTIFY 2,1001,1,1,0\r\nhi")
        assert (await reader.readline()).startswith(b"503")
        writer.write(b"USER #1001\r\nPASE 000000000000000000000000\r\n")
        await reader.readline()
        assert (await reader.readline()).startswith(b"550")
        writer.close()
        await writer.wait_closed()
