"""What blitzdns will do with a configuration: names, mouths, forwards (``blitzdns plan``)."""

from __future__ import annotations

from typing import Any

from blitzdns.config import Config, plain


def plan_dict(config: Config) -> dict[str, Any]:
    """The plan as plain data: each protected host, its names, its mouth, and every forward."""
    return {
        "location": config.location,
        "listen": [str(e) for e in config.dns.listen],
        "upstreams": [str(e) for e in config.dns.upstreams],
        "gateways": list(config.tunnel.gateways),
        "hosts": [
            {
                "host": h.key,
                "names": list(h.names),
                "mouth": str(h.mouth),
                "mouth6": str(h.mouth6) if h.mouth6 else None,
                "remote": h.remote,
            }
            for h in config.hosts
        ],
        "forwards": [plain(f) for f in config.forwards()],
        "notes": notes(config),
        "shared": [
            {
                "address": str(s.address),
                "allow": [str(n) for n in s.allow],
                "hosts": [k for k in s.hosts if k in {h.key for h in config.hosts}],
                "dns": s.dns,
            }
            for s in config.shared
        ],
    }


def render_plan(config: Config) -> str:
    """A human-readable plan: the table a user checks before pointing a resolver at the stub."""
    lines = []
    where = f" (location {config.location})" if config.location else ""
    lines.append(f"DNS stub{where} on {', '.join(str(e) for e in config.dns.listen)}")
    upstreams = ", ".join(str(e) for e in config.dns.upstreams) or "detected from the system"
    lines.append(f"  other names are forwarded to: {upstreams}")
    gateways = ", ".join(config.tunnel.gateways) or "none configured (--gateway)"
    lines.append(f"SSH gateways, in order: {gateways}")
    lines.append("")
    name_width = max((len(", ".join(h.names)) for h in config.hosts), default=5)
    lines.append(f"  {'mouth':<15} {'names':<{name_width}}  AAAA")
    for h in config.hosts:
        aaaa = str(h.mouth6) if h.mouth6 else "none (NODATA)"
        lines.append(f"  {h.mouth!s:<15} {', '.join(h.names):<{name_width}}  {aaaa}")
    lines.append("")
    lines.append("Forwards (mouth → target as the gateway resolves it):")
    for f in config.forwards():
        who = f"  [only {', '.join(str(n) for n in f.allowed_peers)}]" if f.allowed_peers else ""
        udp = " UDP" if f.proto == "udp" else ""
        target = f"{f.remote}:{f.remote_port}{udp}"
        lines.append(f"  {f.mouth}:{f.port:<5} → {target}  ({f.host}/{f.service}){who}")
    if not config.forwards():
        lines.append("  none")
    for s in config.shared:
        served = [k for k in s.hosts if k in {h.key for h in config.hosts}]
        lines.append(
            f"Shared address {s.address} for {', '.join(str(n) for n in s.allow)}: "
            f"{', '.join(served) or 'no hosts'}{'; DNS too' if s.dns else ''}"
        )
    lines += [f"note: {note}" for note in notes(config)]
    return "\n".join(lines)


def notes(config: Config) -> list[str]:
    """What the config allows but a user should know: a pinned mouth outside the mouth block
    (whatever is keyed on the block, such as a firewall rule, does not cover it)."""
    block = config.tunnel.mouths
    return [
        f"hosts.{h.key}.mouth {h.mouth} is outside tunnel.mouths {block}"
        for h in config.hosts
        if h.mouth not in block
    ]
