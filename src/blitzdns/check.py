"""``blitzdns check``: every step the classic recipe verified by hand, as ✓/✗ with a fix.

1. the stub answers every variant of every protected name with its mouth, and no real
   address for any record type;
2. the system resolver sends those names to the stub (getaddrinfo, not dig);
3. the mouths listen on loopback only (or on a shared address, as configured);
4. the SSH link is up and the gateway's host key is known;
5. an end-to-end probe through each forward gets the service's own greeting or reply.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blitzdns import lookup
from blitzdns.blitzmail import probes
from blitzdns.config import Config, ForwardSpec
from blitzdns.control import format_clock
from blitzdns.system.locations import Facts
from blitzdns.system.netfacts import read_facts

PROBE_TYPES = ("A", "AAAA", "ANY", "MX", "TXT", "HTTPS")


@dataclass(frozen=True, slots=True)
class Step:
    """One verdict: what was checked, whether it held, what was seen, what to do if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: A risk worth a look that does not fail the check (printed with '!').
    warning: str = ""


def check_shared(config: Config, facts: Facts) -> list[Step]:
    """Local-IP mode: what is exposed where; warn when a shared address carries the default
    route (its network is then the one that reaches the internet, not a VM bridge or LAN)."""
    steps = []
    protected = {h.key for h in config.hosts}
    for shared in config.shared:
        networks = [i.network for i in facts.addresses if i.ip == shared.address]
        routed = [g for g in facts.default_gateways if any(g in n for n in networks)]
        hosts = [k for k in shared.hosts if k in protected]
        detail = (
            f"{shared.address} offers {', '.join(hosts) or 'no hosts'}"
            f"{' and DNS' if shared.dns else ''} to {', '.join(str(n) for n in shared.allow)}"
        )
        warning = ""
        if routed:
            warning = (
                f"{shared.address} is on the interface of the default route (via "
                f"{', '.join(str(g) for g in routed)}): only the allowed networks get in, but "
                "prefer a VM bridge or a dedicated LAN address"
            )
        steps.append(
            Step(
                f"shared address {shared.address}",
                bool(networks),
                detail if networks else f"{detail}; this machine does not hold the address",
                "" if networks else "add the address to an interface, or fix [[shared]] address",
                warning,
            )
        )
    return steps


def name_variants(name: str) -> list[str]:
    """The spellings a client may use: as is, upper, mixed case; each with and without a dot."""
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(name))
    return [v + dot for v in dict.fromkeys((name, name.upper(), mixed)) for dot in ("", ".")]


async def check_stub(config: Config, stub: tuple[str, int]) -> list[Step]:
    """Step 1: A → the mouth for every variant; no other type carries a non-mouth address."""
    steps = []
    for host in config.hosts:
        mouths = {str(host.mouth), *([str(host.mouth6)] if host.mouth6 else [])}
        wrong: list[str] = []
        try:
            for name in host.names:
                for variant in name_variants(name):
                    reply = await lookup.query(stub, variant, "A")
                    if reply.rcode != "NOERROR" or reply.addresses() != [str(host.mouth)]:
                        wrong.append(f"{variant} A → {reply.rcode} {reply.addresses()}")
                for qtype in PROBE_TYPES[1:]:
                    reply = await lookup.query(stub, name, qtype)
                    leaked = [a for a in reply.addresses() if a not in mouths]
                    if leaked or reply.rcode not in ("NOERROR",):
                        wrong.append(f"{name} {qtype} → {reply.rcode} {leaked}")
        except lookup.LookupFailed as exc:
            return [
                Step(
                    "stub answers",
                    False,
                    f"the stub at {stub[0]}:{stub[1]} does not answer ({exc})",
                    "start it: `sudo blitzdns run` (or check [dns] listen)",
                )
            ]
        steps.append(
            Step(
                f"stub: {host.key}",
                not wrong,
                f"{len(host.names)} names × case/dot variants → {host.mouth}; other types local"
                if not wrong
                else "; ".join(wrong[:3]),
                ""
                if not wrong
                else "the stub is not answering this host itself; check `blitzdns plan`",
            )
        )
    return steps


def system_lookup(name: str) -> list[str]:
    """What the platform's own resolver (getaddrinfo, as every program calls it) returns."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        return [f"error: {exc}"]
    return sorted({str(info[4][0]) for info in infos})


def check_system_resolver(config: Config) -> list[Step]:
    """Step 2: the platform's own lookup (getaddrinfo) yields the mouths and nothing else.

    Each name is looked up in its own thread: a resolver that is not pointed at the stub
    may time out, and those waits should not add up.
    """
    hosts = config.hosts
    if not hosts:
        return []
    with ThreadPoolExecutor(max_workers=min(len(hosts), 16)) as pool:
        seen_by_host = list(pool.map(lambda h: system_lookup(h.canonical_name), hosts))
    steps = []
    for host, seen in zip(hosts, seen_by_host, strict=True):
        mouths = {str(host.mouth), *([str(host.mouth6)] if host.mouth6 else [])}
        ok = str(host.mouth) in seen and set(seen) <= mouths
        steps.append(
            Step(
                f"system resolver: {host.canonical_name}",
                ok,
                f"getaddrinfo → {', '.join(seen)}",
                ""
                if ok
                else "point the system resolver at the stub: "
                "`blitzdns resolver-config show` then `sudo blitzdns resolver-config install`",
            )
        )
    return steps


def listening_sockets(port: int, proto: str = "tcp") -> list[str]:
    """Local addresses listening on TCP ``port`` (Linux /proc/net/tcp{,6}), or with a UDP
    socket bound and unconnected on it (``proto="udp"``: /proc/net/udp{,6})."""
    found = []
    listen_state = "0A" if proto == "tcp" else "07"
    for path, family in ((f"/proc/net/{proto}", 4), (f"/proc/net/{proto}6", 6)):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state != listen_state:
                continue
            addr_hex, port_hex = local.split(":")
            if int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            if family == 4:
                address = str(ipaddress.IPv4Address(raw[::-1]))
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = str(ipaddress.IPv6Address(words))
            found.append(address)
    return found


def check_mouths(config: Config, forwards: Iterable[ForwardSpec] | None = None) -> list[Step]:
    """Step 3: each mouth listens, and nothing listens on its port on a non-loopback address."""
    steps = []
    allowed_shared = {str(s.address) for s in config.shared}
    for f in forwards if forwards is not None else config.forwards():
        addresses = listening_sockets(f.port, f.proto)
        exposed = [
            a
            for a in addresses
            if a not in allowed_shared and not ipaddress.ip_address(a).is_loopback
        ]
        listening = f.mouth in addresses
        ok = listening and not exposed
        udp = " (UDP)" if f.proto == "udp" else ""
        detail = (
            f"{f.mouth}:{f.port}{udp} listening"
            if listening
            else f"{f.mouth}:{f.port}{udp} not listening"
        )
        if exposed:
            detail += f"; ALSO on {', '.join(exposed)} (reachable from the network)"
        fix = ""
        if exposed:
            fix = (
                "something (an `ssh -g -L`?) listens on all interfaces: stop it; "
                "blitzdns binds loopback only"
            )
        elif not listening:
            fix = "start `blitzdns run` with the tunnel (not --no-tunnel)"
        steps.append(Step(f"mouth {f.host}/{f.service}", ok, detail, fix))
    return steps


def check_link(status: dict[str, Any] | None) -> list[Step]:
    """Step 4: from the daemon's status: link up, host key known (no final error)."""
    if status is None:
        return [
            Step(
                "SSH link",
                False,
                "no daemon answers on the control socket",
                "start `sudo blitzdns run` (see `blitzdns status`)",
            )
        ]
    tunnel = status.get("tunnel")
    if not tunnel:
        return [Step("SSH link", False, "the daemon runs without the tunnel", "drop --no-tunnel")]
    final = str(tunnel.get("final_error") or "")
    state = str(tunnel.get("status", "")).lower()
    up = state == "up"
    detail = f"up via {tunnel.get('gateway')}" if up else state or "unknown"
    if not up and (final or tunnel.get("last_error")):
        detail += f": {final or tunnel.get('last_error')}"
    link_step = Step(
        "SSH link",
        up,
        detail,
        "" if up else "check the gateway name and your SSH access (`ssh GATEWAY true`)",
    )
    if "host key" in final.lower():
        key_step = Step(
            "gateway host key",
            False,
            final,
            "compare the fingerprint with one the gateway's administrators publish, "
            "then run the command the message names",
        )
    elif up:
        key_step = Step("gateway host key", True, "known (the link checked it)")
    else:
        key_step = Step(
            "gateway host key",
            False,
            f"not verified: the link is {state or 'not up'}",
            "fix the SSH link first",
        )
    return [link_step, key_step]


def link_is_up(status: dict[str, Any] | None) -> bool | None:
    """True/False from a daemon's status; None without a daemon (the probes then decide)."""
    if status is None:
        return None
    tunnel = status.get("tunnel") or {}
    return str(tunnel.get("status", "")).lower() == "up"


Prober = Callable[[str, int, float], Awaitable[Any]]


def prober_for(config: Config, forward: ForwardSpec) -> Prober:
    """The dialect probe: by the target's well-known port, else by service name."""
    probe = probes.probe_for_service(forward.remote_port)
    if probe is probes.probe_tcp:
        probe = probes.probe_for_service(forward.service)
    return probe


async def check_end_to_end(
    config: Config, timeout: float = 5.0, *, link_up: bool | None = None
) -> list[Step]:
    """Step 5: through each loopback forward, the service's own greeting or reply.

    With ``link_up=False`` (the daemon says the link is down) nothing is tried: a mouth
    would hold each probe for ``wait_for_link_s`` and then close it, which says no more.
    """
    loopback = [f for f in config.forwards() if f.allowed_peers is None and f.proto == "tcp"]
    if link_up is False:
        return [
            Step(
                f"end to end {f.host}/{f.service}",
                False,
                "not tried: the SSH link is not up",
                "fix the SSH link first",
            )
            for f in loopback
        ]

    async def one(f: ForwardSpec) -> Step:
        try:
            result = await prober_for(config, f)(f.mouth, f.port, timeout)
        except probes.ProbeError as exc:
            return Step(
                f"end to end {f.host}/{f.service}",
                False,
                str(exc),
                "the gateway could not reach the target, or the link is down: `blitzdns status`",
            )
        return Step(
            f"end to end {f.host}/{f.service}",
            result.ok,
            f"{f.mouth}:{f.port} → {result.seen}",
            ""
            if result.ok
            else f"expected {result.expected}; is {f.remote}:{f.remote_port} right?",
        )

    return list(await asyncio.gather(*(one(f) for f in loopback)))


def check_udp_relays(config: Config, status: dict[str, Any] | None) -> list[Step]:
    """Step 5 for UDP forwards: the relay on the gateway answered (python3, or socat),
    from the daemon's status; a datagram probe would need the service's own protocol."""
    udp = [f for f in config.forwards() if f.allowed_peers is None and f.proto == "udp"]
    tunnel = (status or {}).get("tunnel") or {}
    relays = {
        str(u.get("mouth")): u for u in tunnel.get("udp_forwards") or [] if isinstance(u, dict)
    }
    steps = []
    for f in udp:
        name = f"end to end {f.host}/{f.service}"
        relay = relays.get(f"{f.mouth}:{f.port}")
        if link_is_up(status) is False:
            steps.append(Step(name, False, "not tried: the SSH link is not up", "fix it first"))
            continue
        if status is None or relay is None:
            steps.append(Step(name, False, "no daemon reports this UDP forward", "start it"))
            continue
        state = str(relay.get("relay", "?"))
        ok = state in ("python3", "socat")
        detail = f"{f.mouth}:{f.port} (UDP) → relay on the gateway: {state}"
        if relay.get("reason"):
            detail += f" ({relay['reason']})"
        fix = ""
        if state == "unavailable":
            fix = "the gateway needs python3 (or socat) on the PATH of your login shell"
        elif not ok:
            fix = "fix the SSH link first (`blitzdns status`)"
        steps.append(Step(name, ok, detail, fix))
    return steps


async def run_checks(
    config: Config, *, status: dict[str, Any] | None, system_resolver: bool = True
) -> list[Step]:
    """Every step in the order the classic recipe took them; ``status`` is the daemon's
    snapshot (None: no daemon answers). ``system_resolver=False`` skips getaddrinfo."""
    stub_endpoint = config.dns.listen[0]
    stub = (stub_endpoint.host, stub_endpoint.port)
    steps = await check_stub(config, stub)
    if system_resolver:
        loop = asyncio.get_running_loop()
        steps += await loop.run_in_executor(None, check_system_resolver, config)
    steps += check_mouths(config)
    if config.shared:
        loop = asyncio.get_running_loop()
        steps += check_shared(config, await loop.run_in_executor(None, read_facts))
    steps += check_link(status)
    steps += await check_end_to_end(config, link_up=link_is_up(status))
    steps += check_udp_relays(config, status)
    steps += await check_guard(status)
    return steps


# --------------------------------------------------------------------------- the guard (issue 14)


async def direct_connection(address: str, port: int, timeout: float = 3.0) -> str:
    """Try the protected service's real address directly, as a client that bypassed the
    stub would: "refused" is what the guard does; anything else is said as it happened."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address, port)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return f"not answered within {timeout:g} s (dropped or unreachable, not refused)"
    except OSError as exc:
        return f"failed: {exc.strerror or exc}"
    writer.close()
    return "ACCEPTED: the connection went out in the clear"


async def check_guard(status: dict[str, Any] | None) -> list[Step]:
    """The leak guard from the daemon's status, proved by a direct connection to one
    protected real address; and the resolver watch's count of reverts."""
    guard = (status or {}).get("guard")
    if not guard:
        return []
    steps = []
    if guard.get("enabled"):
        installed = bool(guard.get("installed"))
        detail = f"{guard.get('target')}, {guard.get('addresses', 0)} real addresses refused"
        if isinstance(guard.get("refreshed"), int | float):
            detail += f", refreshed {format_clock(guard['refreshed'])}"
        steps.append(
            Step(
                "leak guard",
                installed,
                detail if installed else "not installed",
                "" if installed else "see the daemon's log; `sudo blitzdns guard install --apply`",
                f"no real address known yet for {', '.join(guard['unresolved'])}"
                if guard.get("unresolved")
                else "",
            )
        )
        probe = guard.get("probe")
        if probe:
            host, address, port = probe
            seen = await direct_connection(str(address), int(port))
            steps.append(
                Step(
                    f"leak guard proof: {host}",
                    seen == "refused",
                    f"a direct connection to {address}:{port} was {seen}",
                    ""
                    if seen == "refused"
                    else "the firewall does not refuse it: "
                    "`blitzdns guard show`, then `sudo blitzdns guard install --apply`",
                )
            )
        else:
            steps.append(
                Step(
                    "leak guard proof",
                    False,
                    "no real address of a protected host to try",
                    "the upstreams did not resolve the protected names; check [dns] upstreams",
                )
            )
    watch = guard.get("watch") or {}
    if watch.get("files"):
        reverted = int(watch.get("reverted", 0))
        detail = f"{', '.join(watch['files'])} checked every {watch.get('interval_s')} s"
        warning = ""
        if reverted and isinstance(watch.get("last"), int | float):
            detail += f"; reverted {reverted} times"
            warning = (
                f"something rewrites the resolver config (last {format_clock(watch['last'])}, "
                f"{watch.get('last_change')}); find it (a DHCP client, NetworkManager, a VPN) "
                "or pick a split-DNS target it leaves alone"
            )
        error = watch.get("last_error")
        steps.append(
            Step(
                "resolver watch",
                not error,
                detail if not error else f"{detail}; not put back: {error}",
                "" if not error else "`sudo blitzdns resolver-config install` again",
                warning,
            )
        )
    return steps


def render(steps: list[Step]) -> str:
    """One ✓/✗ line per step, the fix under each ✗, and a summary line."""
    lines = []
    for step in steps:
        lines.append(f"{'✓' if step.ok else '✗'} {step.name}: {step.detail}")
        if not step.ok and step.fix:
            lines.append(f"    → {step.fix}")
        if step.warning:
            lines.append(f"    ! {step.warning}")
    passed = sum(s.ok for s in steps)
    verdict = "all good" if passed == len(steps) else "see the ✗ steps above"
    lines.append(f"check: {passed} of {len(steps)} steps hold; {verdict}")
    return "\n".join(lines)


def to_json(steps: list[Step]) -> list[dict[str, Any]]:
    """The steps as plain data for ``check --json``."""
    return [asdict(s) for s in steps]
