"""The status contract: what ``{"cmd": "status"}`` returns and ``status --json`` prints.

Built only here, from the daemon's typed state, as :class:`~typing.TypedDict` values that
``mypy --strict`` checks: a counter renamed in the resolver or the tunnel breaks the type
check rather than a script reading the JSON. The tunnel's part is the standalone tunnel
package's own typed status (``TunnelStatus`` of :mod:`tunnel.state`, built by
``TunnelState.to_dict``), taken as it is: one mapping, checked where the counters live.
``schema`` is the version of this whole shape, the tunnel's part included: a key is only
ever added within one version; renaming or removing one raises it. Times are Unix epoch
seconds (wall clock), because the reader is another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypedDict

from blitzdns import __version__
from blitzdns.config import Endpoint
from blitzdns.dns.stats import ResolverStats, UpstreamHealth
from tunnel.state import ForwardStatus, TunnelState, TunnelStatus, UdpForwardStatus

__all__ = [
    "SCHEMA",
    "DnsStatus",
    "ForwardStatus",
    "GuardStatus",
    "Snapshot",
    "TunnelStatus",
    "UdpForwardStatus",
    "UpstreamStatus",
    "WatchStatus",
    "dns_status",
    "snapshot",
    "tunnel_status",
    "upstream_status",
]

#: The version of the shape below.
SCHEMA = 1


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
    #: UDP queries too long to read whole, dropped; UDP replies the kernel did not take.
    oversized: int
    unsent: int
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
    """The tunnel's own typed status (:meth:`tunnel.state.TunnelState.to_dict`), as it is."""
    return state.to_dict()


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
        "oversized": stats.oversized,
        "unsent": stats.unsent,
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
