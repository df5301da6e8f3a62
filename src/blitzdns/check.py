"""``blitzdns check``: every step the classic recipe verified by hand, as ✓/✗ with a fix.

The steps come in layers, each resting on the ones before it:

1. a daemon answers on the control socket (its listen addresses, mouths and config file
   are what the later layers test; without one they test what the config says);
2. the stub answers every variant of every protected name with its mouth, and no real
   address for any record type;
3. the mouths listen on loopback only (or on a shared address, as configured);
4. the SSH link is up and the gateway's host key is known;
5. an end-to-end probe through each forward gets the service's own greeting or reply;
6. the system resolver sends those names to the stub (getaddrinfo, not dig).

The first layer that fails stops the check: what follows is shown as skipped (it could not
be tried), and the summary names the one thing to do, as a command that runs as printed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shlex
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blitzdns import lookup
from blitzdns.blitzmail import probes
from blitzdns.config import Config, Endpoint, ForwardSpec, find_config_file
from blitzdns.control import format_clock
from blitzdns.errors import ConfigError
from blitzdns.system.install import detect_target
from blitzdns.system.locations import Facts
from blitzdns.system.netfacts import read_facts
from blitzdns.system.privileges import can_bind_privileged, privileged_ports
from tunnel.errors import TunnelError
from tunnel.forwards import Gateway

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
    #: Not tried, because a layer it rests on failed (``ok`` is False, but it is not
    #: counted as a failure).
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Target:
    """Where the checks look: the running daemon's own addresses, else the config's."""

    stub: tuple[str, int]
    forwards: tuple[ForwardSpec, ...]
    #: False when the daemon runs without the tunnel (``--no-tunnel``).
    tunnel: bool = True


def target_of(config: Config, status: dict[str, Any] | None) -> Target:
    """The daemon's bound listen addresses and mouths (from its status snapshot), so that a
    daemon started with ``--listen`` or another config is checked where it really is; the
    config's when no daemon answers."""
    listen = [str(e) for e in (status or {}).get("dns", {}).get("listen") or []]
    first = Endpoint.parse(listen[0]) if listen else config.dns.listen[0]
    stub = (first.host, first.port)
    if status is None:
        return Target(stub, config.forwards())
    tunnel = status.get("tunnel")
    if not tunnel:
        return Target(stub, (), tunnel=False)
    forwards = []
    for f in tunnel.get("forwards") or []:
        host, _, service = str(f.get("name", "")).partition("/")
        peers = f.get("allowed_peers")
        forwards.append(
            ForwardSpec(
                host,
                service,
                str(f["mouth_host"]),
                int(f["mouth_port"]),
                str(f["target_host"]),
                int(f["target_port"]),
                None if peers is None else tuple(ipaddress.ip_network(p) for p in peers),
            )
        )
    for u in tunnel.get("udp_forwards") or []:
        host, _, service = str(u.get("name", "")).partition("/")
        mouth_host, _, mouth_port = str(u.get("mouth", "")).rpartition(":")
        forwards.append(
            ForwardSpec(
                host,
                service,
                mouth_host,
                int(mouth_port),
                str(u["target_host"]),
                int(u["target_port"]),
                proto="udp",
            )
        )
    return Target(stub, tuple(forwards))


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
                    f"the stub at {format_endpoint(stub)} does not answer ({exc})",
                    "restart `blitzdns run` and read its log (the daemon answers, its stub "
                    "does not)",
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


def check_system_resolver(config: Config, fix: str = "") -> list[Step]:
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
                "" if ok else fix or resolver_fix(config),
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
    """Layer 3: each mouth listens, and nothing listens on its port on a non-loopback
    address."""
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
            fix = "restart `blitzdns run` and read its log: its mouths should listen"
        steps.append(Step(f"mouth {f.host}/{f.service}", ok, detail, fix))
    return steps


def check_link(status: dict[str, Any] | None, gateways: Sequence[str] = ()) -> list[Step]:
    """Layer 4: from the daemon's status: link up, host key known (no final error).

    ``gateways``: the configured ones, for the ``ssh`` line to try while none is in use.
    """
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
        return [Step("SSH link", False, "the daemon runs without the tunnel", NO_TUNNEL_FIX)]
    final = str(tunnel.get("final_error") or "")
    state = str(tunnel.get("status", "")).lower()
    up = state == "up"
    detail = f"up via {tunnel.get('gateway')}" if up else state or "unknown"
    if not up and (final or tunnel.get("last_error")):
        detail += f": {final or tunnel.get('last_error')}"
    if up:
        return [
            Step("SSH link", True, detail),
            Step("gateway host key", True, "known (the link checked it)"),
        ]
    if "host key" in final.lower():
        fix = (
            "compare the fingerprint with one the gateway's administrators publish, "
            "then run the command the message names"
        )
        return [Step("gateway host key", False, final, fix), Step("SSH link", False, state, fix)]
    gateway = str(tunnel.get("gateway") or (gateways[0] if gateways else ""))
    return [
        Step("SSH link", False, detail, ssh_fix(gateway)),
        Step(
            "gateway host key",
            False,
            f"not verified: the link is {state or 'not up'}",
            skipped=True,
        ),
    ]


Prober = Callable[[str, int, float], Awaitable[Any]]


def prober_for(config: Config, forward: ForwardSpec) -> Prober:
    """The dialect probe: by the target's well-known port, else by service name."""
    probe = probes.probe_for_service(forward.remote_port)
    if probe is probes.probe_tcp:
        probe = probes.probe_for_service(forward.service)
    return probe


async def check_end_to_end(
    config: Config, timeout: float = 5.0, *, forwards: Iterable[ForwardSpec] | None = None
) -> list[Step]:
    """Layer 5: through each loopback forward, the service's own greeting or reply."""
    chosen = config.forwards() if forwards is None else forwards
    loopback = [f for f in chosen if f.allowed_peers is None and f.proto == "tcp"]

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


def check_udp_relays(status: dict[str, Any] | None, forwards: Iterable[ForwardSpec]) -> list[Step]:
    """Layer 5 for UDP forwards: the relay on the gateway answered (python3, or socat),
    from the daemon's status; a datagram probe would need the service's own protocol."""
    udp = [f for f in forwards if f.allowed_peers is None and f.proto == "udp"]
    tunnel = (status or {}).get("tunnel") or {}
    relays = {
        str(u.get("mouth")): u for u in tunnel.get("udp_forwards") or [] if isinstance(u, dict)
    }
    steps = []
    for f in udp:
        name = f"end to end {f.host}/{f.service}"
        relay = relays.get(f"{f.mouth}:{f.port}")
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


# --------------------------------------------------------------------------- fixes, as commands

NO_TUNNEL_FIX = "restart `blitzdns run` without --no-tunnel"


def format_endpoint(endpoint: tuple[str, int]) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sudo(ports: Iterable[int] = ()) -> str:
    """``sudo `` when this user lacks what the command needs (root; a port below 1024)."""
    if os.geteuid() == 0:
        return ""
    if ports:
        needed = privileged_ports(ports)
        return "sudo " if needed and not can_bind_privileged(min(needed)) else ""
    return "sudo "


def config_args(config: Config) -> list[str]:
    """``-c FILE`` when the config is not the one the commands find by themselves."""
    if config.source is None:
        return []
    with suppress(ConfigError):
        if find_config_file(None) == config.source:
            return []
    return ["-c", str(config.source.absolute())]


def start_fix(config: Config, control_socket: Path | None = None) -> str:
    """How to start the daemon for this config, runnable as printed."""
    ports = [e.port for e in config.dns.listen] + [f.port for f in config.forwards()]
    words = ["blitzdns", "run", *config_args(config)]
    if control_socket is not None:
        words += ["--control-socket", str(control_socket)]
    command = f"{_sudo(ports)}{shlex.join(words)}"
    if not config.tunnel.gateways:
        where = config.source or "~/.config/blitzdns/config.toml (`blitzdns config init`)"
        return (
            f"set [tunnel] gateways in {where}, then start it: `{command}` "
            f"(or `{command} --gateway USER@GATEWAY`)"
        )
    return f"start it: `{command}`"


def resolver_fix(config: Config, listen: Sequence[str] = ()) -> str:
    """The resolver-config install that points the system at the stub, with its target;
    ``listen``: where the daemon really listens, when a flag moved it from the config's."""
    target = config.resolver_target
    if target == "auto":
        target = detect_target()
    words = ["blitzdns", "resolver-config", "install", *config_args(config)]
    if list(listen) != [str(e) for e in config.dns.listen]:
        words += [word for endpoint in listen for word in ("--listen", endpoint)]
    command = f"{_sudo()}{shlex.join([*words, '--target', target, '--apply'])}"
    fix = f"point the system resolver at the stub: `{command}`"
    if target == "resolvconf":
        fix += (
            " (this replaces /etc/resolv.conf, kept as a backup; "
            f"`{_sudo()}blitzdns resolver-config uninstall --apply` restores it)"
        )
    elif target == "nrpt":
        fix += " (in an elevated PowerShell)"
    return fix


def ssh_fix(gateway: str) -> str:
    """Try the gateway with the ssh client, in the form ssh(1) takes it."""
    try:
        parsed = Gateway.parse(gateway)
    except TunnelError:
        return "check [tunnel] gateways and your SSH access to the gateway (`ssh GATEWAY true`)"
    words = ["ssh", *(["-p", str(parsed.port)] if parsed.port else [])]
    words.append(f"{parsed.user}@{parsed.host}" if parsed.user else parsed.host)
    return f"check your SSH access to the gateway: `{shlex.join([*words, 'true'])}`"


# --------------------------------------------------------------------------- the layers


def check_daemon(
    config: Config, status: dict[str, Any] | None, control_socket: Path | None = None
) -> list[Step]:
    """Layer 1: a daemon answers on the control socket."""
    if status is None:
        where = control_socket or "the control socket"
        fix = start_fix(config, control_socket)
        return [Step("daemon", False, f"no blitzdns daemon answers on {where}", fix)]
    listen = ", ".join(str(e) for e in (status.get("dns") or {}).get("listen") or [])
    source = status.get("config") or "the built-in preset"
    return [
        Step(
            "daemon",
            True,
            f"pid {status.get('pid', '?')}, config {source}, DNS on {listen or 'nothing'}",
        )
    ]


async def run_checks(
    config: Config,
    *,
    status: dict[str, Any] | None,
    system_resolver: bool = True,
    control_socket: Path | None = None,
) -> list[Step]:
    """Every layer in order, stopping at the first that fails; ``status`` is the daemon's
    snapshot (None: no daemon answers). ``system_resolver=False`` skips getaddrinfo."""
    target = target_of(config, status)
    loop = asyncio.get_running_loop()

    async def mouths() -> list[Step]:
        if not target.tunnel:
            return [Step("mouths", False, "the daemon runs without the tunnel", NO_TUNNEL_FIX)]
        return check_mouths(config, target.forwards)

    async def shared() -> list[Step]:
        return check_shared(config, await loop.run_in_executor(None, read_facts))

    async def link() -> list[Step]:
        return check_link(status, config.tunnel.gateways)

    async def resolver() -> list[Step]:
        listen = [str(e) for e in (status or {}).get("dns", {}).get("listen") or []]
        fix = resolver_fix(config, listen) if listen else ""
        return await loop.run_in_executor(None, check_system_resolver, config, fix)

    async def end_to_end() -> list[Step]:
        tcp = await check_end_to_end(config, forwards=target.forwards)
        return tcp + check_udp_relays(status, target.forwards)

    async def daemon() -> list[Step]:
        return check_daemon(config, status, control_socket)

    layers: list[tuple[str, Callable[[], Awaitable[list[Step]]]]] = [
        ("daemon", daemon),
        ("stub", lambda: check_stub(config, target.stub)),
        ("mouths", mouths),
        *([("shared addresses", shared)] if config.shared else []),
        ("SSH link", link),
        ("end to end", end_to_end),
        *([("leak guard", lambda: check_guard(status))] if (status or {}).get("guard") else []),
        *([("system resolver", resolver)] if system_resolver else []),
    ]
    steps: list[Step] = []
    failed: str | None = None
    for layer, run in layers:
        if failed is not None:
            steps.append(Step(layer, False, f"not tried ({failed})", skipped=True))
            continue
        found = await run()
        steps += found
        if not all(s.ok for s in found):
            failed = "no daemon answers" if layer == "daemon" else f"{layer} failed above"
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


#: At most this many ✗ lines for failures that share a fix; the rest are counted.
SHOWN_ALIKE = 3


def render(steps: list[Step]) -> str:
    """One ✓/✗ line per step (failures with the same fix folded after a few), the fix once
    under them, '–' for a layer not tried, and a summary that names the one thing to do."""
    lines: list[str] = []
    index = 0
    while index < len(steps):
        step = steps[index]
        if step.skipped:
            lines.append(f"– {step.name}: {step.detail}")
            index += 1
            continue
        if step.ok:
            lines.append(f"✓ {step.name}: {step.detail}")
        else:
            alike = [step]
            while (
                index + len(alike) < len(steps)
                and not (other := steps[index + len(alike)]).ok
                and not other.skipped
                and other.fix == step.fix
            ):
                alike.append(other)
            lines += [f"✗ {s.name}: {s.detail}" for s in alike[:SHOWN_ALIKE]]
            if len(alike) > SHOWN_ALIKE:
                lines.append(f"✗ … and {len(alike) - SHOWN_ALIKE} more like these")
            if step.fix:
                lines.append(f"    → {step.fix}")
            lines += [f"    ! {s.warning}" for s in alike if s.warning]
            index += len(alike)
            continue
        if step.warning:
            lines.append(f"    ! {step.warning}")
        index += 1
    tried = [s for s in steps if not s.skipped]
    passed = sum(s.ok for s in tried)
    first = next((s for s in tried if not s.ok), None)
    summary = f"check: {passed} of {len(tried)} steps hold"
    if first is None:
        lines.append(f"{summary}; all good")
    else:
        skipped = len(steps) - len(tried)
        lines.append(
            f"{summary}{f', {skipped} not tried' if skipped else ''}; "
            f"next: {first.fix or first.detail}"
        )
    return "\n".join(lines)


def to_json(steps: list[Step]) -> list[dict[str, Any]]:
    """The steps as plain data for ``check --json``."""
    return [asdict(s) for s in steps]
