"""Counters the resolver keeps, read by ``status`` and the tests (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class UpstreamHealth:
    """One upstream as the forwarder has seen it."""

    address: str
    ok: bool = True
    last_error: str | None = None
    answered: int = 0
    timeouts: int = 0
    #: Refused connections, unusable replies, TCP failures (timeouts counted apart).
    errors: int = 0
    #: Replies that did not match the query asked (wrong ID or question): ignored.
    mismatched: int = 0
    #: Our own listener received a loop probe sent to this upstream (see ``check_loops``).
    loops: bool = False

    def succeeded(self) -> None:
        # Copied inline in upstream.Exchange.received (an answered UDP exchange's end):
        # change both together.
        self.ok = True
        self.answered += 1

    def failed(self, error: str, *, timeout: bool = False) -> None:
        self.ok = False
        self.last_error = error
        if timeout:
            self.timeouts += 1
        else:
            self.errors += 1


@dataclass(slots=True)
class ResolverStats:
    """What the resolver did since it started (counters only grow, but ``forwards_in_flight``)."""

    answered_local: int = 0
    forwarded: int = 0
    cache_hits: int = 0
    servfail: int = 0
    refused: int = 0
    formerr: int = 0
    notimp: int = 0
    truncated: int = 0
    dropped: int = 0
    #: Forwarded replies rewritten because they led to a protected name (see ``guard``).
    rewritten: int = 0
    #: Handler exceptions (each answered SERVFAIL and logged).
    errors: int = 0
    #: TCP connections closed unserved: a limit (all, or per client) reached, none idle.
    tcp_refused: int = 0
    #: Idle TCP connections closed early to make room for a new one (a limit was reached).
    tcp_idle_closed: int = 0
    #: Forwarded queries answered SERVFAIL at once because ``FORWARD_MAX`` were in flight.
    forward_capped: int = 0
    #: Forwarded questions waiting for an upstream now (shared ones count once).
    forwards_in_flight: int = 0
    #: Times a socket could not be made because the process was out of descriptors.
    descriptors_exhausted: int = 0
    #: UDP queries the kernel steered to the protected names' own socket (``steer``).
    steered: int = 0
    #: UDP queries too long to read whole (``batchio.MAX_QUERY``), dropped.
    oversized: int = 0
    #: UDP replies the kernel did not take (send buffer full, an error), dropped.
    unsent: int = 0
    upstreams: list[UpstreamHealth] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
