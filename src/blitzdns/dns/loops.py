"""Forwarding-loop detection: does an upstream send our queries back to us?

Like dnsmasq's ``--dns-loop-detect``: each upstream is asked for random names; if one of
them reaches our own listener, that upstream forwards to this stub (directly or through
another resolver) and every query sent to it would circle until it timed out. Probe
names lie in every protected domain (a split-DNS stub sends exactly those to us) and in
a name of our own. The engine drops a probe it receives and notes it
(:attr:`~blitzdns.dns.engine.Engine.probes_seen`), which is how a loop shows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence

from blitzdns.config import Endpoint
from blitzdns.dns.engine import Engine
from blitzdns.dns.rfc import TXT
from blitzdns.dns.stats import UpstreamHealth
from blitzdns.dns.table import labels_of, to_wire
from blitzdns.dns.upstream import Forwarder
from blitzdns.errors import UpstreamLoop

#: A name of our own to probe with, besides the protected domains.
OWN_SUFFIX = "blitzdns-loop-check.test"
#: How long one loop probe waits for its query to come back to us.
PROBE_WAIT_S = 1.0


async def check_loops(
    forwarder: Forwarder,
    engine: Engine,
    domains: Sequence[str],
    log: logging.Logger,
    wait_s: float = PROBE_WAIT_S,
) -> tuple[Endpoint, ...]:
    """Probe every upstream of ``forwarder``; the looping ones, marked never to be used again.

    Raise :class:`UpstreamLoop` when every upstream loops.
    """
    suffixes = (*domains, OWN_SUFFIX)
    looping: list[Endpoint] = []
    for endpoint, health in zip(forwarder.upstreams, forwarder.health, strict=True):
        names = [f"{secrets.token_hex(8)}.{suffix}" for suffix in suffixes]
        wires = [to_wire(labels_of(name)) for name in names]
        engine.probes.update(wires)
        try:
            await asyncio.gather(
                *(_probe(endpoint, name, wait_s) for name in names),
                return_exceptions=True,
            )
        finally:
            engine.probes.difference_update(wires)
        if engine.probes_seen.intersection(wires):
            health.loops = True
            health.failed("routes queries back to this stub (forwarding loop)")
            looping.append(endpoint)
            log.error(
                "upstream %s sends queries back to this stub (a forwarding loop); not using it",
                endpoint,
            )
    if looping and len(looping) == len(forwarder.upstreams):
        raise UpstreamLoop(
            "every upstream resolver sends queries back to this stub ("
            + ", ".join(str(e) for e in looping)
            + "): give a real one with --upstream ADDR[:PORT]"
        )
    return tuple(looping)


async def _probe(endpoint: Endpoint, name: str, wait_s: float) -> None:
    single = Forwarder((endpoint,), [UpstreamHealth(str(endpoint))], wait_s)
    try:
        await single.resolve(probe_query(name))
    finally:
        single.close()


def probe_query(name: str) -> bytes:
    """A TXT query for ``name`` with ID 0 and RD set (the forwarder sets the ID)."""
    return (
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + to_wire(labels_of(name))
        + TXT.to_bytes(2, "big")
        + b"\x00\x01"
    )
