"""The rtnetlink codec on bytes built here, and the view it makes of a dump."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tunnel import netlink
from tunnel.netview import NetView, Route

_HEADER = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")


def attribute(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, seq: int, body: bytes) -> bytes:
    raw = _HEADER.pack(_HEADER.size + len(body), kind, 0, seq, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def address_body(index: int, address: str, *, scope: int = 0, flags: int = 0) -> bytes:
    packed = ipaddress.ip_address(address).packed
    family = netlink.AF_INET if len(packed) == 4 else netlink.AF_INET6
    kind = netlink.IFA_LOCAL if family == netlink.AF_INET else netlink.IFA_ADDRESS
    return _IFADDRMSG.pack(family, len(packed) * 8, flags, scope, index) + attribute(kind, packed)


def route_body(
    *,
    family: int = netlink.AF_INET,
    dst_len: int = 0,
    oif: int | None = None,
    gateway: str | None = None,
    source: str | None = None,
    metric: int | None = None,
    table: int = netlink.RT_TABLE_MAIN,
    hops: tuple[tuple[int, str], ...] = (),
) -> bytes:
    body = _RTMSG.pack(family, dst_len, 0, 0, min(table, 255), 0, 0, netlink.RTN_UNICAST, 0)
    body += attribute(netlink.RTA_TABLE, struct.pack("=I", table))
    if oif is not None:
        body += attribute(netlink.RTA_OIF, struct.pack("=i", oif))
    if gateway is not None:
        body += attribute(netlink.RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if source is not None:
        body += attribute(netlink.RTA_PREFSRC, ipaddress.ip_address(source).packed)
    if metric is not None:
        body += attribute(netlink.RTA_PRIORITY, struct.pack("=I", metric))
    if hops:
        nested = b""
        for index, hop_gateway in hops:
            gw = attribute(netlink.RTA_GATEWAY, ipaddress.ip_address(hop_gateway).packed)
            nested += _RTNEXTHOP.pack(_RTNEXTHOP.size + len(gw), 0, 0, index) + gw
        body += attribute(netlink.RTA_MULTIPATH, nested)
    return body


NAMES = {1: "lo", 2: "wlan0", 3: "eth0", 4: "wwan0"}


def parsed_routes(*bodies: bytes) -> list[netlink.RouteMsg]:
    data = b"".join(message(netlink.RTM_NEWROUTE, 7, body) for body in bodies)
    found = [netlink.parse_route(m.body) for m in netlink.messages(data)]
    return [route for route in found if route is not None]


def test_messages_split_a_datagram_and_keep_sequence_numbers() -> None:
    data = message(netlink.RTM_NEWADDR, 5, address_body(2, "10.0.0.2")) + message(
        netlink.NLMSG_DONE, 5, b"\0\0\0\0"
    )
    found = list(netlink.messages(data))
    assert [(m.type, m.seq) for m in found] == [(netlink.RTM_NEWADDR, 5), (netlink.NLMSG_DONE, 5)]


def test_error_message_carries_the_errno() -> None:
    body = struct.pack("=i", -101) + _HEADER.pack(16, netlink.RTM_GETROUTE, 1, 9, 0)
    (error,) = netlink.messages(message(netlink.NLMSG_ERROR, 9, body))
    assert netlink.error_code(error) == 101


def test_requests_carry_their_sequence_number() -> None:
    assert netlink.sequence_of(netlink.dump_routes(41)) == 41
    lookup = next(netlink.messages(netlink.get_route(42, "2001:db8::1")))
    assert lookup.seq == 42
    assert (netlink.RTA_DST, ipaddress.ip_address("2001:db8::1").packed) in list(
        netlink.attributes(lookup.body, _RTMSG.size)
    )


def test_addresses_local_over_peer_and_tentative_flagged() -> None:
    ptp = _IFADDRMSG.pack(netlink.AF_INET, 32, 0, 0, 4) + attribute(
        netlink.IFA_ADDRESS, bytes([10, 64, 0, 1])
    ) + attribute(netlink.IFA_LOCAL, bytes([10, 64, 0, 2]))  # fmt: skip
    parsed = netlink.parse_address(ptp)
    assert parsed is not None and parsed.address == "10.64.0.2" and parsed.usable
    tentative = netlink.parse_address(address_body(2, "2001:db8::5", flags=netlink.IFA_F_TENTATIVE))
    assert tentative is not None and not tentative.usable


def test_view_picks_the_lowest_metric_default_of_the_main_table() -> None:
    routes = parsed_routes(
        route_body(oif=2, gateway="10.0.0.1", metric=600),
        route_body(oif=3, gateway="10.1.0.1", metric=100),
        route_body(oif=4, gateway="10.2.0.1", metric=10, table=200),  # policy table: not main
        route_body(oif=2, dst_len=24),  # on-link subnet: not a default
        route_body(family=netlink.AF_INET6, oif=2, gateway="fe80::1", metric=600),
    )
    addresses = [
        netlink.parse_address(address_body(2, "10.0.0.2")),
        netlink.parse_address(address_body(3, "10.1.0.2")),
        netlink.parse_address(address_body(1, "127.0.0.1", scope=netlink.RT_SCOPE_HOST)),
        netlink.parse_address(address_body(2, "fe80::2", scope=netlink.RT_SCOPE_LINK)),
        netlink.parse_address(address_body(2, "2001:db8::5", flags=netlink.IFA_F_TENTATIVE)),
    ]
    got = netlink.view([a for a in addresses if a], routes, NAMES)
    assert got == NetView(
        addresses=frozenset({("wlan0", "10.0.0.2"), ("eth0", "10.1.0.2")}),
        default_v4=Route("eth0", "10.1.0.1", None),
        default_v6=Route("wlan0", "fe80::1", None),
    )


def test_multipath_default_names_every_interface() -> None:
    (route,) = parsed_routes(route_body(hops=((2, "10.0.0.1"), (3, "10.1.0.1"))))
    assert netlink.view([], [route], NAMES).default_v4 == Route("wlan0+eth0", "10.0.0.1", None)


def test_route_lookup_answer_becomes_the_peer_route() -> None:
    (answer,) = parsed_routes(route_body(dst_len=32, oif=3, gateway="10.1.0.1", source="10.1.0.2"))
    got = netlink.view([], [], NAMES, "203.0.113.9", answer)
    assert (got.peer, got.peer_route) == ("203.0.113.9", Route("eth0", "10.1.0.1", "10.1.0.2"))
    assert got.default_v4 is None


def test_truncated_message_is_an_error_not_a_crash() -> None:
    data = message(netlink.RTM_NEWADDR, 1, address_body(2, "10.0.0.2"))
    with pytest.raises(netlink.NetlinkError):
        list(netlink.messages(data[:-4]))
