"""Issue 6, the leak test: what crosses the client's link during a BlitzMail session.

tcpdump captures on the client's veth towards the gateway while a scripted session runs
(DND ``LOOKUP demo,NAME UID BLITZSERV``, then ``VERS``/``NOOP`` on the server DND named).
Through blitzdns the capture must hold SSH to the gateway and nothing else, and none of
the session's cleartext; the same session without blitzdns (a plain relay on the
gateway, the same capture) must show that cleartext, so the check can fail. With the
link down a connection to a mouth sends nothing towards the servers and is closed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import pytest

from .conftest import MakeBlitzdns
from .lab import (
    AGENT,
    CLIENT_IP,
    DASHER,
    DASHER_IP,
    DND,
    DND_IP,
    GATEWAY_IP,
    PYTHON,
    SERVER_NET,
    SSH_PORT,
    Capture,
    FakeServers,
    Lab,
    Sshd,
    stop_process,
    wait_for,
)
from .pcap import ETHERTYPE_ARP, PROTO_TCP, Frame

pytestmark = pytest.mark.timeout(60)

LOOKUP_LINE = "LOOKUP demo,NAME UID BLITZSERV"
CLEARTEXT: tuple[bytes, ...] = (
    b"220 DND",
    b"LOOKUP",
    b"demo,NAME UID BLITZSERV",
    b"Demo User",
    b"dasher.Dartmouth.EDU@BlitzServ",
    b"VERS blitzdns",
    b"NOOP",
    b"BlitzServ 3.6",
)
"""The session's words: the greeting, the command, the user, field values, the server's."""


def leaked(frames: Sequence[Frame], needles: Sequence[bytes] = CLEARTEXT) -> list[bytes]:
    """The needles found in any frame, or in the payloads joined (a line split in two)."""
    haystacks = [b"".join(f.raw for f in frames), b"".join(f.payload for f in frames)]
    return [n for n in needles if any(n in hay for hay in haystacks)]


def is_ssh_with_gateway(frame: Frame) -> bool:
    """TCP between the client and the gateway's SSH port, either way."""
    if not frame.is_ipv4 or frame.protocol != PROTO_TCP:
        return False
    outbound = (frame.src, frame.dst, frame.dport) == (CLIENT_IP, GATEWAY_IP, SSH_PORT)
    inbound = (frame.src, frame.dst, frame.sport) == (GATEWAY_IP, CLIENT_IP, SSH_PORT)
    return outbound or inbound


def unexpected(frames: Sequence[Frame]) -> list[str]:
    """Every frame that is neither SSH with the gateway nor ARP, described."""
    return [str(f) for f in frames if f.ethertype != ETHERTYPE_ARP and not is_ssh_with_gateway(f)]


def toward_servers(frames: Sequence[Frame]) -> list[str]:
    return [str(f) for f in frames if f.touches(SERVER_NET)]


def assert_session_worked(result: dict[str, object]) -> None:
    account = result["account"]
    replies = result["replies"]
    assert isinstance(account, dict) and isinstance(replies, dict), result
    assert account["blitzserv"] == DASHER
    assert account["name"] == "Demo User"
    assert replies["VERS"]["code"] == 10 and DASHER in replies["VERS"]["text"]
    assert replies["NOOP"]["code"] == 10


def test_session_through_blitzdns_leaves_only_ssh_on_the_link(
    lab: Lab,
    servers: FakeServers,
    sshd: Sshd,
    make_blitzdns: MakeBlitzdns,
    client_capture: Capture,
) -> None:
    client_capture.start()
    daemon = make_blitzdns(sshd).start()
    daemon.wait_ready()
    result = lab["client"].agent("session", "--resolver", "127.0.0.1:53")
    frames = client_capture.stop()

    assert_session_worked(result)
    assert ipaddress.ip_address(result["dnd_address"]).is_loopback
    assert ipaddress.ip_address(result["server_address"]).is_loopback
    # The cleartext did exist: it reached the servers, beyond the gateway.
    wait_for(lambda: LOOKUP_LINE in servers.received("dnd"), "DND to log the LOOKUP")
    wait_for(lambda: "NOOP" in servers.received(DASHER), "dasher to log the NOOP")

    assert any(f.payload.startswith(b"SSH-2.0-") for f in frames), "the capture saw no SSH"
    assert unexpected(frames) == []
    assert toward_servers(frames) == []
    assert leaked(frames) == []


def test_same_session_without_blitzdns_shows_the_cleartext(
    lab: Lab, servers: FakeServers, client_capture: Capture
) -> None:
    out = client_capture.path.with_name("relay.out")
    relay = lab["gw"].spawn_ready(
        PYTHON, AGENT, "relay", f"{GATEWAY_IP}:902={DND_IP}:902",
        f"{GATEWAY_IP}:2151={DASHER_IP}:2151",
        marker='"ready"', log=out.with_suffix(".log"), stdout=out,
    )  # fmt: skip
    try:
        client_capture.start()
        hosts = [f"{DND}={GATEWAY_IP}", f"{DASHER}={GATEWAY_IP}"]
        result = lab["client"].agent("session", "--hosts", *hosts)
        frames = client_capture.stop()
    finally:
        stop_process(relay)

    assert_session_worked(result)
    assert leaked(frames) == list(CLEARTEXT)
    assert unexpected(frames) != [], "the only-SSH check must reject a cleartext session"


def test_link_down_sends_nothing_toward_the_servers_and_closes(
    lab: Lab,
    servers: FakeServers,
    sshd: Sshd,
    make_blitzdns: MakeBlitzdns,
    client_capture: Capture,
) -> None:
    client = lab["client"]
    daemon = make_blitzdns(sshd, wait_for_link_s=0.5).start()
    daemon.wait_ready()
    mouth = daemon.mouth(DND)
    sshd.stop()
    wait_for(lambda: not client.established_to(GATEWAY_IP, SSH_PORT), "the SSH link to drop")
    # A route towards the servers (the gateway still does not forward): any direct
    # attempt at the real address would now leave the client and show in the capture,
    # instead of failing silently with "network unreachable".
    client.ip("route", "add", SERVER_NET, "via", GATEWAY_IP)
    try:
        dnd_connections = servers.connections("dnd")
        client_capture.start()
        held = client.agent("hold", mouth, "902", "--send", LOOKUP_LINE, "--timeout", "12")
        answer = client.dig("127.0.0.1", DND)
        frames = client_capture.stop()
    finally:
        client.ip("route", "del", SERVER_NET, "via", GATEWAY_IP)

    assert held["connected"], held
    assert held["closed_by_peer"] and not held.get("timed_out"), held
    assert held["received"] == "", held
    assert answer["answers"] == [mouth], "the stub must keep answering with the mouth"
    assert toward_servers(frames) == []
    assert unexpected(frames) == []
    assert leaked(frames) == []
    assert servers.connections("dnd") == dnd_connections
