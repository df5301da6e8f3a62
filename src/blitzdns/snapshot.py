"""The status contract: what ``{"cmd": "status"}`` returns and ``status --json`` prints.

Built only here, from the daemon's typed state, as :class:`~typing.TypedDict` values that
``mypy --strict`` checks: a counter renamed in the resolver or the tunnel breaks the type
check here rather than a script reading the JSON. ``schema`` is the version of this shape:
a key is only ever added within one version; renaming or removing one raises it. Times
are Unix epoch seconds (wall clock), because the reader is another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypedDict

from blitzdns import __version__
from blitzdns.config import Endpoint
from blitzdns.dns.stats import ResolverStats, UpstreamHealth
from tunnel.state import ForwardState, TunnelState, UdpForwardState

#: The version of the shape below.
SCHEMA = 1


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


class UpstreamStatus(TypedDict):
    """One upstream resolver as the forwarder has seen it (``ok``: its last answer)."""

    address: str
    ok: bool
    last_error: str | None
    answered: int
    timeouts: int
    errors: int
    mismatched: int
    loops: bool


class DnsStatus(TypedDict):
    """The stub's listeners and counters since start."""

    listen: list[str]
    answered_local: int
    forwarded: int
    cache_hits: int
    servfail: int
    refused: int
    formerr: int
    notimp: int
    truncated: int
    dropped: int
    rewritten: int
    errors: int
    tcp_refused: int
    tcp_idle_closed: int
    forward_capped: int
    forwards_in_flight: int
    descriptors_exhausted: int
    #: UDP queries the kernel steered to the protected names' own socket.
    steered: int
    upstreams: list[UpstreamStatus]


class WatchStatus(TypedDict):
    """The resolver watch: the recorded files, and how often something else changed them."""

    files: list[str]
    interval_s: float
    reverted: int
    last: float | None
    last_change: str | None
    last_error: str | None


class GuardStatus(TypedDict):
    """The leak guard (issue 14); ``probe`` is one refused [host, address, port].

    Built by :meth:`blitzdns.guard_service.GuardService.to_dict`, typed against this."""

    enabled: bool
    target: str | None
    installed: bool
    addresses: int
    unresolved: list[str]
    refreshed: float | None
    next_refresh: float | None
    last_error: str | None
    probe: list[Any] | None
    watch: WatchStatus


class Snapshot(TypedDict):
    """The whole status; ``tunnel`` is None when run with ``--no-tunnel``; ``guard`` is None
    when there is neither a guard nor a resolver config to watch."""

    schema: int
    version: str
    pid: int
    started: float
    location: str | None
    #: The config file the daemon read (reloads re-read it); None: the built-in preset.
    config: str | None
    tunnel: TunnelStatus | None
    dns: DnsStatus
    guard: GuardStatus | None


def snapshot(
    *,
    started: float,
    location: str | None,
    tunnel: TunnelState | None,
    stats: ResolverStats,
    listen: Iterable[Endpoint],
    guard: GuardStatus | None = None,
    config: str | None = None,
) -> Snapshot:
    """The status of this process from its parts."""
    return {
        "schema": SCHEMA,
        "version": __version__,
        "pid": os.getpid(),
        "started": started,
        "location": location,
        "config": config,
        "tunnel": tunnel_status(tunnel) if tunnel is not None else None,
        "dns": dns_status(stats, listen),
        "guard": guard,
    }


def tunnel_status(state: TunnelState) -> TunnelStatus:
    return {
        "status": state.status.value,
        "since": state.since,
        "gateway": state.gateway,
        "last_error": state.last_error,
        "final_error": state.final_error,
        "attempts": state.attempts,
        "down_since": state.down_since,
        "attempts_since_up": state.attempts_since_up,
        "next_retry": state.next_retry,
        "last_relink": state.last_relink,
        "forwards": [forward_status(f) for f in state.forwards],
        "udp_forwards": [udp_forward_status(f) for f in state.udp_forwards],
    }


def udp_forward_status(state: UdpForwardState) -> UdpForwardStatus:
    f = state.forward
    return {
        "name": f.name,
        "proto": "udp",
        "mouth": f"{f.mouth_host}:{f.mouth_port}",
        "target_host": f.target_host,
        "target_port": f.target_port,
        "relay": state.relay.value,
        "reason": state.reason,
        "associations": state.associations,
        "associations_total": state.associations_total,
        "datagrams_out": state.datagrams_out,
        "bytes_out": state.bytes_out,
        "datagrams_in": state.datagrams_in,
        "bytes_in": state.bytes_in,
        "dropped": dict(state.dropped),
        "rejected": state.rejected,
    }


def forward_status(state: ForwardState) -> ForwardStatus:
    f = state.forward
    peers = None if f.allowed_peers is None else [str(n) for n in f.allowed_peers]
    return {
        "name": f.name,
        "mouth": f"{f.mouth_host}:{f.mouth_port}",
        "mouth_host": f.mouth_host,
        "mouth_port": f.mouth_port,
        "target_host": f.target_host,
        "target_port": f.target_port,
        "allowed_peers": peers,
        "open": state.open,
        "total": state.total,
        "rejected": state.rejected,
        "cut": state.cut,
        "bytes_in": state.bytes_in,
        "bytes_out": state.bytes_out,
    }


def dns_status(stats: ResolverStats, listen: Iterable[Endpoint]) -> DnsStatus:
    return {
        "listen": [str(e) for e in listen],
        "answered_local": stats.answered_local,
        "forwarded": stats.forwarded,
        "cache_hits": stats.cache_hits,
        "servfail": stats.servfail,
        "refused": stats.refused,
        "formerr": stats.formerr,
        "notimp": stats.notimp,
        "truncated": stats.truncated,
        "dropped": stats.dropped,
        "rewritten": stats.rewritten,
        "errors": stats.errors,
        "tcp_refused": stats.tcp_refused,
        "tcp_idle_closed": stats.tcp_idle_closed,
        "forward_capped": stats.forward_capped,
        "forwards_in_flight": stats.forwards_in_flight,
        "descriptors_exhausted": stats.descriptors_exhausted,
        "steered": stats.steered,
        "upstreams": [upstream_status(u) for u in stats.upstreams],
    }


def upstream_status(health: UpstreamHealth) -> UpstreamStatus:
    return {
        "address": health.address,
        "ok": health.ok,
        "last_error": health.last_error,
        "answered": health.answered,
        "timeouts": health.timeouts,
        "errors": health.errors,
        "mismatched": health.mismatched,
        "loops": health.loops,
    }
