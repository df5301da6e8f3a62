"""Finding the upstream resolvers when none is given, without ever picking ourselves.

Order (issue 2): the nameservers a whole-resolver install backed up (``saved``), else the
first resolv.conf that exists — /run/systemd/resolve/resolv.conf (systemd-resolved's real
upstreams) before /etc/resolv.conf. A candidate is rejected when it is one of our own
listen endpoints, or systemd-resolved's stub (127.0.0.53 / 127.0.0.54), which may route the
protected domain straight back to us. When every candidate is rejected the result is
:class:`~blitzdns.errors.UpstreamLoop`; when there is none at all, :class:`NoUpstreams`.

This is the static half of loop detection; the dynamic half is
:func:`blitzdns.dns.loops.check_loops`, which sends each upstream a query for a
random name and sees whether it comes back to our own listener (dnsmasq's
``--dns-loop-detect``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from blitzdns.config import Endpoint
from blitzdns.dns.errors import NoUpstreams
from blitzdns.errors import UpstreamLoop

DEFAULT_RESOLV_PATHS = (Path("/run/systemd/resolve/resolv.conf"), Path("/etc/resolv.conf"))
#: systemd-resolved's stub listeners (resolved.conf(5)).
RESOLVED_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})


def read_nameservers(path: Path) -> tuple[Endpoint, ...]:
    """The ``nameserver`` lines of a resolv.conf(5) file (port 53; ``0.0.0.0`` = localhost)."""
    found: list[Endpoint] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        text = words[1]
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if address.is_unspecified:
            text = "127.0.0.1" if address.version == 4 else "::1"
        endpoint = Endpoint(text, 53)
        if endpoint not in found:
            found.append(endpoint)
    return tuple(found)


def rejection(candidate: Endpoint, listen: Sequence[Endpoint]) -> str | None:
    """Why forwarding to ``candidate`` would loop back to us; None when it would not."""
    address = ipaddress.ip_address(candidate.host.split("%", 1)[0])
    for own in listen:
        own_address = ipaddress.ip_address(own.host)
        if own.port != candidate.port:
            continue
        if own_address == address:
            return f"it is this stub's own listen address {own}"
        if own_address.is_unspecified and address.is_loopback:
            return f"this stub listens on {own}, which includes it"
    if candidate.host in RESOLVED_STUBS:
        return (
            "it is systemd-resolved's stub, which can route the protected domain back here "
            "(the real upstreams are in /run/systemd/resolve/resolv.conf)"
        )
    return None


def detect_upstreams(
    listen: Sequence[Endpoint],
    *,
    saved: Sequence[Endpoint] = (),
    resolv_paths: Sequence[Path] = DEFAULT_RESOLV_PATHS,
) -> tuple[Endpoint, ...]:
    """The upstreams to forward to; see the module docstring for the order and the checks."""
    sources: list[tuple[str, tuple[Endpoint, ...]]] = []
    if saved:
        sources.append(("the nameservers saved at install", tuple(saved)))
    for path in resolv_paths:
        try:
            servers = read_nameservers(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            sources.append((f"{path} (unreadable: {exc.strerror or exc})", ()))
            continue
        sources.append((str(path), servers))
        break
    rejected: list[str] = []
    for source, servers in sources:
        usable = []
        for server in servers:
            reason = rejection(server, listen)
            if reason is None:
                usable.append(server)
            else:
                rejected.append(f"{server} from {source}: {reason}")
        if usable:
            return tuple(usable)
    if rejected:
        raise UpstreamLoop(
            "no upstream resolver to forward to without a loop: "
            + "; ".join(rejected)
            + ". Give a real one with --upstream ADDR[:PORT]"
        )
    looked = ", ".join(str(p) for p in resolv_paths) or "no resolv.conf paths"
    raise NoUpstreams(
        f"no upstream resolver found (looked in {looked}"
        + (" and the saved nameservers" if saved else "")
        + "): pass one with --upstream ADDR[:PORT]"
    )
