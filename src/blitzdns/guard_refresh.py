"""The guard's addresses: the protected names resolved through the upstreams.

A protected name is asked for A and AAAA at the upstreams (the resolvers the stub forwards
to, which are the ones a client that bypasses the stub would use), following a CNAME chain
the upstream did not follow itself. Each answer's smallest TTL says when to ask again.
A host's ``remote`` that is an address literal is one of its real addresses as it is.

:func:`resolve_all` is the one lookup, used by ``guard show|install`` and by the daemon's
refresh; :class:`~blitzdns.system.guard.AddressBook` keeps the union of recent answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from blitzdns import lookup
from blitzdns.config import Config, Endpoint
from blitzdns.dns.rfc import CNAME, TYPE_NAMES

#: Longest CNAME chain followed (RFC 1034 §3.6.2 allows chains; loops must end).
MAX_CNAME_HOPS = 8
#: Used when nothing answered: ask again this soon.
RETRY_TTL_S = 30


@dataclass(frozen=True, slots=True)
class Resolved:
    """What the upstreams said about one host: its addresses and how long they hold."""

    host: str
    addresses: tuple[str, ...]
    ttl: int
    errors: tuple[str, ...] = ()


def names_to_resolve(config: Config) -> dict[str, tuple[str, ...]]:
    """Per protected host key: its fully qualified names and its remote (when a name)."""
    result: dict[str, tuple[str, ...]] = {}
    for host in config.hosts:
        names = [n for n in host.names if "." in n and not _is_address(n)]
        if not _is_address(host.remote) and host.remote not in names:
            names.append(host.remote)
        result[host.key] = tuple(names)
    return result


def literal_addresses(config: Config) -> dict[str, tuple[str, ...]]:
    """Per host key: the remote, when it is an address rather than a name."""
    return {h.key: (h.remote,) for h in config.hosts if _is_address(h.remote)}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def resolve_name(
    upstreams: Sequence[Endpoint], name: str, qtype: str, *, timeout: float = 2.0
) -> tuple[list[str], int]:
    """``name``'s addresses of ``qtype`` (A or AAAA), CNAMEs followed; and the smallest TTL
    on the way. Each upstream is tried in turn; :class:`lookup.LookupFailed` when none
    answers."""
    failures: list[str] = []
    for upstream in upstreams:
        try:
            return await _follow((upstream.host, upstream.port), name, qtype, timeout)
        except lookup.LookupFailed as exc:
            failures.append(str(exc))
    raise lookup.LookupFailed("; ".join(failures) or "no upstream to ask")


async def _follow(
    server: tuple[str, int], name: str, qtype: str, timeout: float
) -> tuple[list[str], int]:
    wanted = TYPE_NAMES[qtype]
    current = name
    ttls: list[int] = []
    for _ in range(MAX_CNAME_HOPS):
        reply = await lookup.query(server, current, qtype, timeout=timeout)
        if reply.rcode not in ("NOERROR", "NXDOMAIN"):
            raise lookup.LookupFailed(f"{current} {qtype}: {reply.rcode}")
        ttls += [r.ttl for r in reply.answers]
        found = [str(r.value) for r in reply.answers if r.rtype == wanted]
        if found or reply.rcode == "NXDOMAIN":
            return found, min(ttls, default=RETRY_TTL_S)
        # The upstream gave only the alias (or nothing): follow it ourselves.
        aliases = [r.target for r in reply.answers if r.rtype == CNAME]
        following = [t for t in aliases if t]
        if not following:
            return [], min(ttls, default=RETRY_TTL_S)
        current = following[-1]
    raise lookup.LookupFailed(f"{name}: CNAME chain longer than {MAX_CNAME_HOPS}")


async def resolve_host(
    upstreams: Sequence[Endpoint], host: str, names: Sequence[str], *, timeout: float = 2.0
) -> Resolved:
    jobs = [resolve_name(upstreams, n, t, timeout=timeout) for n in names for t in ("A", "AAAA")]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    addresses: list[str] = []
    ttls: list[int] = []
    errors: list[str] = []
    for result in results:
        if isinstance(result, lookup.LookupFailed):
            errors.append(str(result))
        elif isinstance(result, BaseException):
            raise result
        else:
            found, ttl = result
            addresses += [a for a in found if a not in addresses]
            ttls.append(ttl)
    return Resolved(host, tuple(addresses), min(ttls, default=RETRY_TTL_S), tuple(errors))


async def resolve_all(
    config: Config, upstreams: Sequence[Endpoint], *, timeout: float = 2.0
) -> dict[str, Resolved]:
    """Every protected host's real addresses, through ``upstreams``, all at once."""
    literal = literal_addresses(config)
    jobs = [
        resolve_host(upstreams, key, names, timeout=timeout)
        for key, names in names_to_resolve(config).items()
    ]
    found = {r.host: r for r in await asyncio.gather(*jobs)}
    for key, addresses in literal.items():
        old = found.get(key, Resolved(key, (), RETRY_TTL_S))
        merged = tuple(dict.fromkeys([*addresses, *old.addresses]))
        found[key] = Resolved(key, merged, old.ttl, old.errors)
    return found
