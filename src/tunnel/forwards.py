"""Forward and gateway specifications: pure, frozen, validated values.

A :class:`Forward` says "listen on this mouth, carry each connection to this target as the
gateway sees it" — the ``-L mouth_host:mouth_port:target_host:target_port`` of OpenSSH.
A :class:`Gateway` is the ``[user@]host[:port]`` an SSH client is pointed at; ``host`` may
be a ``~/.ssh/config`` alias, so port and user stay ``None`` unless given explicitly and the
config (or the defaults) fill them in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from tunnel.errors import TunnelConfigError

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

# \Z, not $: $ also matches before a trailing newline ("host\n" would pass)
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.%:-]+\Z")
_USERNAME = re.compile(r"^[^\s@:/\[\]]+\Z")


def _check_port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise TunnelConfigError(f"{what}: expected a port number 1-65535, got {value!r}")
    return value


def _check_host(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or not _HOSTNAME.match(value):
        raise TunnelConfigError(f"{what}: expected a host name or IP address, got {value!r}")
    return value


def mouth_ip(host: str) -> IPAddress:
    """The IP address a mouth binds; ``localhost`` means 127.0.0.1."""
    return ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)


def _networks(value: object, what: str) -> tuple[IPNetwork, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TunnelConfigError(f"{what}: expected a list of networks, got {value!r}")
    networks: list[IPNetwork] = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item))
        except (TypeError, ValueError) as exc:
            raise TunnelConfigError(f"{what}: {item!r} is not a network ({exc})") from None
    return tuple(networks)


@dataclass(frozen=True)
class Forward:
    """One mouth → target forward.

    ``allowed_peers``: ``None`` lets anyone that can reach the mouth connect; otherwise a
    connection from an address outside these networks is closed at once, counted as
    rejected and logged with the peer's address.
    """

    mouth_host: str
    """IP literal the mouth listens on (``localhost`` is accepted for 127.0.0.1)."""
    mouth_port: int
    target_host: str
    """The target's name or address as the gateway resolves it."""
    target_port: int
    allowed_peers: tuple[IPNetwork, ...] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        label = f"forward {self.name or self.mouth_host}"
        try:
            mouth = mouth_ip(self.mouth_host)
        except (TypeError, ValueError):
            raise TunnelConfigError(
                f"{label}: mouth_host must be an IP address, got {self.mouth_host!r}"
            ) from None
        object.__setattr__(self, "mouth_host", str(mouth))
        _check_port(self.mouth_port, f"{label}: mouth_port")
        _check_host(self.target_host, f"{label}: target_host")
        _check_port(self.target_port, f"{label}: target_port")
        if self.allowed_peers is not None:
            peers = _networks(self.allowed_peers, f"{label}: allowed_peers")
            object.__setattr__(self, "allowed_peers", peers)
        if not isinstance(self.name, str):
            raise TunnelConfigError(f"{label}: name must be a string, got {self.name!r}")

    @property
    def mouth(self) -> tuple[str, int]:
        """The (address, port) the mouth listens on; the identity of a listener."""
        return (self.mouth_host, self.mouth_port)

    @property
    def is_loopback(self) -> bool:
        """True when the mouth is only reachable from this machine."""
        return mouth_ip(self.mouth_host).is_loopback

    def admits(self, peer: IPAddress) -> bool:
        """Whether a connection from ``peer`` may use this mouth."""
        if self.allowed_peers is None:
            return True
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return any(peer in network for network in self.allowed_peers)

    def __str__(self) -> str:
        mouth = f"[{self.mouth_host}]" if ":" in self.mouth_host else self.mouth_host
        target = f"[{self.target_host}]" if ":" in self.target_host else self.target_host
        return f"{mouth}:{self.mouth_port} → {target}:{self.target_port}"


@dataclass(frozen=True)
class Gateway:
    """An SSH gateway: ``host`` (maybe a ~/.ssh/config alias), optional user and port."""

    host: str
    port: int | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        _check_host(self.host, "gateway host")
        if self.port is not None:
            _check_port(self.port, f"gateway {self.host} port")
        if self.user is not None and (
            not isinstance(self.user, str) or not _USERNAME.match(self.user)
        ):
            raise TunnelConfigError(f"gateway {self.host}: bad user name {self.user!r}")

    @classmethod
    def parse(cls, text: str) -> Gateway:
        """Parse ``[user@]host[:port]``; IPv6 literals go in brackets: ``user@[::1]:2222``.

        A bare IPv6 literal without brackets (``::1``) is taken as a host with no port.
        """
        if not isinstance(text, str) or not text.strip():
            raise TunnelConfigError(f"gateway: expected [user@]host[:port], got {text!r}")
        rest = text.strip()
        user: str | None = None
        if "@" in rest:
            user, _, rest = rest.rpartition("@")
        port_text: str | None = None
        if rest.startswith("["):
            host, bracket, after = rest[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise TunnelConfigError(f"gateway: unbalanced brackets in {text!r}")
            port_text = after[1:] if after else None
        elif rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
        else:
            host = rest
        port: int | None = None
        if port_text is not None:
            if not port_text.isdigit():
                raise TunnelConfigError(f"gateway: port in {text!r} is not a number")
            port = int(port_text)
        if user is not None and not user:
            raise TunnelConfigError(f"gateway: empty user name in {text!r}")
        return cls(host=host, port=port, user=user)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


def parse_gateways(gateways: Iterable[Gateway | str] | Gateway | str) -> tuple[Gateway, ...]:
    """One gateway or a list of them (``Gateway`` values or ``[user@]host[:port]`` texts),
    parsed; :class:`TunnelConfigError` unless there is at least one, all valid."""
    if isinstance(gateways, str | Gateway):
        gateways = (gateways,)
    try:
        parsed = tuple(Gateway.parse(g) if isinstance(g, str) else g for g in gateways)
    except TypeError:
        raise TunnelConfigError(f"gateways: expected a list, got {gateways!r}") from None
    if not parsed or not all(isinstance(g, Gateway) for g in parsed):
        raise TunnelConfigError("gateways: expected at least one gateway")
    return parsed
