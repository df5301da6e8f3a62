"""Link state and per-forward counters, published as immutable snapshots.

The hot path increments plain integer attributes of :class:`ForwardCounters`; readers get a
:class:`TunnelState` built on demand, so status polling costs the data path nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypedDict

from tunnel.forwards import Forward
from tunnel.udp import UdpForward


class LinkStatus(enum.Enum):
    """Where the SSH link stands."""

    CONNECTING = "connecting"
    """An attempt is under way (first start, or after a drop)."""
    UP = "up"
    DOWN = "down"
    """Lost or not reachable; waiting for the next attempt."""
    STOPPED = "stopped"
    """Not started yet, or closed."""
    FAILED = "failed"
    """Stopped for good by a final error (authentication, host key); see ``final_error``."""


class ForwardStatus(TypedDict):
    """One mouth → target forward and its counters (``bytes_out``: client → target)."""

    name: str
    mouth: str
    mouth_host: str
    mouth_port: int
    target_host: str
    target_port: int
    #: Client networks allowed on a shared-address mouth; None: a loopback mouth.
    allowed_peers: list[str] | None
    open: int
    total: int
    rejected: int
    #: Connections cut because the link they rode went away.
    cut: int
    bytes_in: int
    bytes_out: int


class UdpForwardStatus(TypedDict):
    """One UDP forward: its relay on the gateway (``python3``, ``socat``, ``starting``,
    ``down`` or ``unavailable``, with ``reason``), associations, datagrams and bytes each
    way (``_out``: client → target), drops by reason."""

    name: str
    proto: str
    mouth: str
    target_host: str
    target_port: int
    relay: str
    reason: str
    associations: int
    associations_total: int
    datagrams_out: int
    bytes_out: int
    datagrams_in: int
    bytes_in: int
    dropped: dict[str, int]
    rejected: int


class TunnelStatus(TypedDict):
    """The SSH link: ``status`` is connecting, up, down, stopped or failed."""

    status: str
    since: float
    gateway: str | None
    last_error: str | None
    final_error: str | None
    attempts: int
    #: While the link is not up: the first failure (``since`` moves at every retry), the
    #: attempts since it was last up, and when the next one is due (None: none awaited).
    down_since: float | None
    attempts_since_up: int
    next_retry: float | None
    #: Why the link was last replaced on a network change, or None.
    last_relink: str | None
    forwards: list[ForwardStatus]
    udp_forwards: list[UdpForwardStatus]


class ForwardCounters:
    """Mutable counters for one mouth, written by the data path."""

    __slots__ = ("bytes_in", "bytes_out", "cut", "open", "rejected", "total")

    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.rejected = 0
        self.cut = 0
        self.bytes_in = 0
        self.bytes_out = 0


@dataclass(frozen=True)
class ForwardState:
    """One forward's counters at the time of the snapshot.

    ``bytes_out`` went from local clients out through the tunnel to the target;
    ``bytes_in`` came back in from the target to the clients. With
    ``TunnelOptions.backend="openssh"`` the bytes never pass through this process: they are
    the kernel's counts for the client sockets (Linux ``TCP_INFO``; 0 where unavailable).
    """

    forward: Forward
    open: int
    total: int
    rejected: int
    bytes_in: int
    bytes_out: int
    cut: int = 0
    """Connections the tunnel could not finish (link lost, channel refused, no link in
    time, forward or tunnel closed): ended here, not by their target or client."""

    @classmethod
    def of(cls, forward: Forward, counters: ForwardCounters) -> ForwardState:
        return cls(
            forward=forward,
            open=counters.open,
            total=counters.total,
            rejected=counters.rejected,
            bytes_in=counters.bytes_in,
            bytes_out=counters.bytes_out,
            cut=counters.cut,
        )

    def to_dict(self) -> ForwardStatus:
        f = self.forward
        return {
            "name": f.name,
            "mouth": f"{f.mouth_host}:{f.mouth_port}",
            "mouth_host": f.mouth_host,
            "mouth_port": f.mouth_port,
            "target_host": f.target_host,
            "target_port": f.target_port,
            "allowed_peers": (
                None if f.allowed_peers is None else [str(n) for n in f.allowed_peers]
            ),
            "open": self.open,
            "total": self.total,
            "rejected": self.rejected,
            "cut": self.cut,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class RelayState(enum.Enum):
    """Where a UDP forward's gateway side stands (shown by ``status``)."""

    DOWN = "down"
    """No link: datagrams are dropped."""
    STARTING = "starting"
    PYTHON = "python3"
    SOCAT = "socat"
    UNAVAILABLE = "unavailable"
    """Neither python3 nor socat answered on the gateway; see the reason."""


@dataclass(frozen=True)
class UdpForwardState:
    """One UDP forward at the time of the snapshot (``status``)."""

    forward: UdpForward
    relay: RelayState
    reason: str
    """Why the relay is unavailable or down ("" when it runs)."""
    associations: int
    associations_total: int
    datagrams_out: int
    bytes_out: int
    datagrams_in: int
    bytes_in: int
    dropped: dict[str, int]
    rejected: int

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> UdpForwardStatus:
        f = self.forward
        return {
            "name": f.name,
            "proto": "udp",
            "mouth": f"{f.mouth_host}:{f.mouth_port}",
            "target_host": f.target_host,
            "target_port": f.target_port,
            "relay": self.relay.value,
            "reason": self.reason,
            "associations": self.associations,
            "associations_total": self.associations_total,
            "datagrams_out": self.datagrams_out,
            "bytes_out": self.bytes_out,
            "datagrams_in": self.datagrams_in,
            "bytes_in": self.bytes_in,
            "dropped": dict(self.dropped),
            "rejected": self.rejected,
        }


@dataclass(frozen=True)
class TunnelState:
    """An immutable snapshot of the tunnel: link status and every forward's counters."""

    status: LinkStatus
    since: float
    """Wall-clock time (epoch seconds) of the last status change."""
    gateway: str | None
    """The gateway in use (when UP) or being tried (when CONNECTING)."""
    last_error: str | None
    final_error: str | None
    forwards: tuple[ForwardState, ...]
    attempts: int = 0
    """Connection attempts made since start (one per gateway tried)."""
    last_relink: str | None = None
    """Why the link was last replaced on a network change ("network changed: wlan0 → eth0")."""
    down_since: float | None = None
    """Wall-clock time of the first failure since the link was last up (None while up):
    unlike ``since`` it does not move when a retry begins."""
    attempts_since_up: int = 0
    """Attempts made since the link was last up (the one under way included)."""
    next_retry: float | None = None
    """Wall-clock time the next attempt is due, while waiting for it (else None)."""
    udp_forwards: tuple[UdpForwardState, ...] = ()

    def to_dict(self) -> TunnelStatus:
        """Plain JSON-ready data, typed (the daemon's ``status`` shows it as it is)."""
        return {
            "status": self.status.value,
            "since": self.since,
            "gateway": self.gateway,
            "last_error": self.last_error,
            "final_error": self.final_error,
            "attempts": self.attempts,
            "down_since": self.down_since,
            "attempts_since_up": self.attempts_since_up,
            "next_retry": self.next_retry,
            "last_relink": self.last_relink,
            "forwards": [f.to_dict() for f in self.forwards],
            "udp_forwards": [f.to_dict() for f in self.udp_forwards],
        }
