"""The few rtnetlink messages :mod:`tunnel.netwatch` needs, encoded and decoded as bytes.

Pure: no socket here, so the codec is tested on bytes. What it reads (RFC 3549 describes the
framing; the layouts are Linux's ``<linux/netlink.h>`` and ``<linux/rtnetlink.h>``):

- ``RTM_NEWADDR`` (``ifaddrmsg``): the global addresses of each interface;
- ``RTM_NEWROUTE`` (``rtmsg``): the default routes of the main table, and the answer to a
  route lookup (``ip route get``) for the gateway's address;
- the ``NLMSG_DONE`` / ``NLMSG_ERROR`` ends of a dump or a request.

A hand-written codec rather than pyroute2: four fixed structs and one attribute walk are
about a hundred lines, while pyroute2 is a large package whose asyncio API is still moving;
the daemon would carry it for this one read.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from tunnel.netview import NetView, Route

AF_INET = 2
AF_INET6 = 10

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
#: Every group whose messages can move the gateway's path: links, addresses, routes.
WATCH_GROUPS = (
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
)

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_PREFSRC = 7
RTA_MULTIPATH = 9
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
_RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex
_ERRNO = struct.Struct("=i")


class NetlinkError(Exception):
    """The kernel refused a request (``errno``) or sent bytes this codec cannot frame."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Message:
    type: int
    seq: int
    body: bytes


@dataclass(frozen=True)
class AddressMsg:
    """One address of an interface (``RTM_NEWADDR``/``RTM_DELADDR``)."""

    index: int
    address: str
    scope: int
    usable: bool
    """False while tentative (IPv6 duplicate address detection) or after DAD failed."""


@dataclass(frozen=True)
class RouteMsg:
    """One route (``RTM_NEWROUTE``), reduced to what a path is made of."""

    family: int
    dst_len: int
    table: int
    type: int
    oifs: tuple[int, ...]
    """Output interfaces: one, or each next hop's of a multipath route."""
    gateway: str | None
    source: str | None
    metric: int


def _align(length: int) -> int:
    return (length + 3) & ~3


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages of one datagram, in order."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            raise NetlinkError(f"netlink message of length {length} does not fit")
        yield Message(kind, seq, data[offset + _HEADER.size : offset + length])
        offset += _align(length)


def attributes(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each ``rtattr`` from ``offset`` on; nested flag bits cleared."""
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            return
        yield kind & 0x3FFF, data[offset + _ATTR.size : offset + length]
        offset += _align(length)


def sequence_of(request: bytes) -> int:
    """The sequence number of a request built here."""
    return int(_HEADER.unpack_from(request)[3])


def error_code(message: Message) -> int:
    """The (positive) errno of an ``NLMSG_ERROR``; 0 is an acknowledgement."""
    return -_ERRNO.unpack_from(message.body)[0] if len(message.body) >= 4 else 0


def _address_text(raw: bytes) -> str | None:
    if len(raw) not in (4, 16):
        return None
    return str(ipaddress.ip_address(raw))


def parse_address(body: bytes) -> AddressMsg | None:
    """An ``ifaddrmsg`` and its attributes; None when it carries no address."""
    if len(body) < _IFADDRMSG.size:
        return None
    family, _prefix, flags, scope, index = _IFADDRMSG.unpack_from(body)
    found: dict[int, bytes] = dict(attributes(body, _IFADDRMSG.size))
    # IPv4 point-to-point links put the peer in IFA_ADDRESS and our own in IFA_LOCAL.
    raw = found.get(IFA_LOCAL) if family == AF_INET else None
    address = _address_text(raw or found.get(IFA_ADDRESS, b""))
    if address is None:
        return None
    usable = not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    return AddressMsg(index, address, scope, usable)


def parse_route(body: bytes) -> RouteMsg | None:
    """An ``rtmsg`` and its attributes; None when too short to be one."""
    if len(body) < _RTMSG.size:
        return None
    family, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = _RTMSG.unpack_from(body)
    oifs: list[int] = []
    gateway = source = None
    metric = 0
    for attr, payload in attributes(body, _RTMSG.size):
        if attr == RTA_TABLE and len(payload) >= 4:
            table = struct.unpack_from("=I", payload)[0]
        elif attr == RTA_OIF and len(payload) >= 4:
            oifs.append(struct.unpack_from("=i", payload)[0])
        elif attr == RTA_GATEWAY:
            gateway = _address_text(payload)
        elif attr == RTA_PREFSRC:
            source = _address_text(payload)
        elif attr == RTA_PRIORITY and len(payload) >= 4:
            metric = struct.unpack_from("=I", payload)[0]
        elif attr == RTA_MULTIPATH:
            offset = 0
            while offset + _RTNEXTHOP.size <= len(payload):
                length, _f, _hops, index = _RTNEXTHOP.unpack_from(payload, offset)
                if length < _RTNEXTHOP.size:
                    break
                oifs.append(index)
                for hop_attr, hop_payload in attributes(
                    payload[offset + _RTNEXTHOP.size : offset + length]
                ):
                    if hop_attr == RTA_GATEWAY and gateway is None:
                        gateway = _address_text(hop_payload)
                offset += _align(length)
    return RouteMsg(family, dst_len, table, kind, tuple(oifs), gateway, source, metric)


def _request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def dump_addresses(seq: int) -> bytes:
    """``RTM_GETADDR`` dump of every family."""
    return _request(RTM_GETADDR, NLM_F_DUMP, seq, _IFADDRMSG.pack(0, 0, 0, 0, 0))


def dump_routes(seq: int) -> bytes:
    """``RTM_GETROUTE`` dump of every family (the kernel sends the main table's and more)."""
    return _request(RTM_GETROUTE, NLM_F_DUMP, seq, _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0))


def get_route(seq: int, destination: str) -> bytes:
    """``RTM_GETROUTE`` for one destination: the kernel's own route lookup (``ip route get``)."""
    packed = ipaddress.ip_address(destination).packed
    family = AF_INET if len(packed) == 4 else AF_INET6
    attr = _ATTR.pack(_ATTR.size + len(packed), RTA_DST) + packed
    return _request(
        RTM_GETROUTE, 0, seq, _RTMSG.pack(family, len(packed) * 8, 0, 0, 0, 0, 0, 0, 0) + attr
    )


def _route(route: RouteMsg, names: Mapping[int, str]) -> Route:
    interface = "+".join(names.get(index, f"if{index}") for index in route.oifs) or None
    return Route(interface, route.gateway, route.source)


def view(
    addresses: Iterable[AddressMsg],
    routes: Iterable[RouteMsg],
    names: Mapping[int, str],
    peer: str | None = None,
    peer_route: RouteMsg | None = None,
) -> NetView:
    """The :class:`NetView` of an address dump, a route dump and the interface names.

    The default route in use of each family is the main table's unicast one of lowest
    metric (ties: the first listed, as the kernel picks).
    """
    own = frozenset(
        (names.get(a.index, f"if{a.index}"), a.address)
        for a in addresses
        if a.usable and a.scope not in (RT_SCOPE_LINK, RT_SCOPE_HOST)
    )
    best: dict[int, RouteMsg] = {}
    for route in routes:
        if route.dst_len or route.table != RT_TABLE_MAIN or route.type != RTN_UNICAST:
            continue
        if route.family not in best or route.metric < best[route.family].metric:
            best[route.family] = route
    v4, v6 = best.get(AF_INET), best.get(AF_INET6)
    return NetView(
        addresses=own,
        default_v4=_route(v4, names) if v4 is not None else None,
        default_v6=_route(v6, names) if v6 is not None else None,
        peer=peer,
        peer_route=_route(peer_route, names) if peer_route is not None else None,
    )
