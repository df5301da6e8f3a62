"""The leak guard: firewall rules that refuse the protected services' real addresses, rendered
purely per platform.

The stub answers the protected names with loopback mouths, but an application that skips
the system resolver, caches an old address, or runs while a DHCP client has rewritten
/etc/resolv.conf reaches the real server directly, in the clear. The guard closes that path
in the system's own firewall: outgoing connections from this machine to each protected
host's real addresses, on its protected ports, are *refused* (a TCP reset, or ICMP port
unreachable for UDP), never silently dropped, so a client fails at once instead of hanging.
Traffic to the mouths (loopback), to the SSH gateway and everything else is untouched.
Where a service's port is used by nothing else (``[guard] everywhere``), that port is
refused towards every non-local address.

==========  ===================================================  ============================
target      where the rules live                                 how they load
==========  ===================================================  ============================
nftables    ``table inet blitzdns`` (/etc/blitzdns/guard.nft)     ``nft -f``: one transaction
pf          anchor ``blitzdns`` (/etc/pf.anchors/blitzdns), plus   ``pfctl -f /etc/pf.conf``
            its two reference lines in /etc/pf.conf
windows     Windows Firewall rules in the group ``blitzdns``      PowerShell (NetSecurity)
==========  ===================================================  ============================

The rules stay in force when the daemon stops or crashes (fail closed); only
``blitzdns guard uninstall`` removes them, and exactly them. Installation goes through
:mod:`blitzdns.system.install` (atomic, recorded, idempotent, one lock) with its own
record, so the resolver config and the guard are installed and removed independently.

This module only renders; the addresses come in as an argument (see
:mod:`blitzdns.guard_refresh` for how they are resolved, and :class:`AddressBook` for the
union of recently seen ones that keeps a rotation from opening a gap).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from blitzdns.config import Config, IPAddress
from blitzdns.errors import UsageError
from blitzdns.system.resolvers import POWERSHELL, FileWrite

GUARD_TARGETS = ("nftables", "pf", "windows")
#: The install record of the guard (beside the resolver config's own).
GUARD_STATE_FILE = "/var/lib/blitzdns/guard-state.json"

NFT_TABLE = "blitzdns"
NFT_FILE = "/etc/blitzdns/guard.nft"
#: Removes the table whether or not it exists, in one transaction (nft(8) has no
#: ``destroy`` before 1.0.8).
NFT_REMOVE = f"add table inet {NFT_TABLE}; delete table inet {NFT_TABLE}"

PF_ANCHOR = "blitzdns"
PF_ANCHOR_FILE = f"/etc/pf.anchors/{PF_ANCHOR}"
PF_CONF = "/etc/pf.conf"
PF_ANCHOR_LINE = f'anchor "{PF_ANCHOR}"'
PF_LOAD_LINE = f'load anchor "{PF_ANCHOR}" from "{PF_ANCHOR_FILE}"'

WINDOWS_GROUP = "blitzdns"

Proto = str  # "tcp" | "udp"


# --------------------------------------------------------------------------- the rules


@dataclass(frozen=True, slots=True)
class Block:
    """Refuse ``proto`` to ``ports`` on ``addresses`` (one protected host's real addresses)."""

    host: str
    proto: Proto
    ports: tuple[int, ...]
    addresses: tuple[IPAddress, ...]

    def family(self, version: int) -> tuple[IPAddress, ...]:
        return tuple(a for a in self.addresses if a.version == version)


@dataclass(frozen=True, slots=True)
class PortBlock:
    """Refuse ``proto`` to ``port`` towards every address that is not this machine's own."""

    service: str
    proto: Proto
    port: int


@dataclass(frozen=True, slots=True)
class GuardRules:
    """What the guard refuses, independent of the platform."""

    blocks: tuple[Block, ...] = ()
    everywhere: tuple[PortBlock, ...] = ()
    #: Protected hosts for which no real address is known (yet): covered only by
    #: ``everywhere`` ports, if any. ``show`` and ``check`` say so.
    unresolved: tuple[str, ...] = ()

    @property
    def address_count(self) -> int:
        return len({a for b in self.blocks for a in b.addresses})


def usable_address(text: str) -> IPAddress | None:
    """A real address worth refusing: not loopback (the mouths live there), not a wildcard,
    not multicast. None for anything else, including text that is not an address."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified or address.is_multicast:
        return None
    return address


def guard_rules(
    config: Config,
    addresses: Mapping[str, Iterable[str]],
    everywhere: Iterable[str] = (),
) -> GuardRules:
    """The rules for ``config``'s protected hosts, given each host key's real addresses.

    Each host's ports are its services' ports as clients dial them and, where the target's
    differs, the target's port too (a client that bypasses the stub may use either).
    ``everywhere`` names services whose port is refused towards every address.
    """
    blocks: list[Block] = []
    unresolved: list[str] = []
    for host in config.hosts:
        found = sorted(
            {a for a in (usable_address(t) for t in addresses.get(host.key, ())) if a},
            key=lambda a: (a.version, int(a)),
        )
        if not found:
            unresolved.append(host.key)
            continue
        by_proto: dict[Proto, set[int]] = {}
        for name in host.services:
            service = config.services[name]
            by_proto.setdefault(service.proto, set()).update({service.port, service.target_port})
        for proto in sorted(by_proto):
            blocks.append(Block(host.key, proto, tuple(sorted(by_proto[proto])), tuple(found)))
    ports: list[PortBlock] = []
    for name in everywhere:
        if name not in config.services:
            known = ", ".join(config.services) or "none"
            raise UsageError(f"[guard] everywhere: no service named {name!r} (known: {known})")
        service = config.services[name]
        for port in sorted({service.port, service.target_port}):
            ports.append(PortBlock(name, service.proto, port))
    return GuardRules(tuple(blocks), tuple(ports), tuple(unresolved))


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True, slots=True)
class GuardPlan:
    """Everything ``guard install`` does for one target, and what ``show`` prints.

    The fields :mod:`blitzdns.system.install` reads (``target``, ``files``, ``upstreams``,
    ``undo_commands``, ``command_shell``, ``reload``) mean what they mean for a resolver
    plan: lines run in ``command_shell`` by ``--apply`` (``commands`` at install,
    ``undo_commands`` at uninstall), then the ``reload`` commands.
    """

    target: str
    rules: GuardRules
    files: tuple[FileWrite, ...] = ()
    commands: tuple[str, ...] = ()
    undo_commands: tuple[str, ...] = ()
    command_shell: tuple[str, ...] = ()
    reload: tuple[tuple[str, ...], ...] = ()
    #: nftables: the rule set that ``--apply`` (and the daemon's refresh) loads in one
    #: transaction; the same text as the file.
    ruleset: str | None = None
    #: Commands the user can run to see the rules (printed, never run).
    checks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = field(default=())


def build_guard_plan(
    target: str, rules: GuardRules, *, current_pf_conf: bytes | None = None
) -> GuardPlan:
    """The plan for ``target``. ``current_pf_conf`` is /etc/pf.conf as it was before
    blitzdns touched it (the pf target adds its two reference lines to it)."""
    if target not in GUARD_TARGETS:
        raise UsageError(f"unknown target {target!r} (expected one of: {', '.join(GUARD_TARGETS)})")
    if target == "nftables":
        return _nftables(rules)
    if target == "pf":
        return _pf(rules, current_pf_conf)
    return _windows(rules)


def _comment(block: Block) -> str:
    return f"{block.host} {block.proto}"


def render_nftables(rules: GuardRules) -> str:
    """The nftables rule set: declares, deletes and redefines ``table inet blitzdns`` in one
    file, so ``nft -f`` replaces the whole table in one transaction (nft(8), "ATOMIC RULE
    REPLACEMENT")."""
    lines = [
        "#!/usr/sbin/nft -f",
        "# Written by blitzdns (guard install): refuse connections from this machine to the",
        "# protected services' real addresses, so nothing reaches them in the clear when the",
        "# system resolver is bypassed or reverted. `blitzdns guard uninstall` removes exactly",
        "# this table. The first two lines make reloading this file replace the table whole.",
        f"table inet {NFT_TABLE}",
        f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
    ]
    for block in rules.blocks:
        reject = "reject with tcp reset" if block.proto == "tcp" else _NFT_UDP_REJECT
        ports = ", ".join(str(p) for p in block.ports)
        for family, version in (("ip", 4), ("ip6", 6)):
            addresses = block.family(version)
            if addresses:
                listed = ", ".join(str(a) for a in addresses)
                lines.append(
                    f"\t\t{family} daddr {{ {listed} }} {block.proto} dport {{ {ports} }} "
                    f'{reject} comment "{_comment(block)}"'
                )
    for port in rules.everywhere:
        reject = "reject with tcp reset" if port.proto == "tcp" else _NFT_UDP_REJECT
        # Loopback carries the mouths and this machine's own addresses: never refused.
        lines.append(
            f'\t\toifname != "lo" {port.proto} dport {port.port} {reject} '
            f'comment "{port.service} {port.proto} everywhere"'
        )
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


_NFT_UDP_REJECT = "reject with icmpx type port-unreachable"


def _nftables(rules: GuardRules) -> GuardPlan:
    text = render_nftables(rules)
    return GuardPlan(
        target="nftables",
        rules=rules,
        files=(FileWrite(NFT_FILE, text.encode(), 0o644),),
        undo_commands=(NFT_REMOVE,),
        command_shell=("nft",),
        ruleset=text,
        checks=(f"nft list table inet {NFT_TABLE}",),
        notes=(
            f"--apply loads {NFT_FILE} with `nft -f` (one transaction: the table is replaced "
            "whole, never half-loaded)",
            f"the table survives the daemon; after a reboot it is back once `run` starts with "
            f'[guard] enabled = true, or add `include "{NFT_FILE}"` to /etc/nftables.conf',
        ),
    )


def render_pf_anchor(rules: GuardRules) -> str:
    """The pf anchor's rules: ``block return out quick`` answers a TCP packet with a reset
    and anything else with ICMP unreachable (pf.conf(5), "return")."""
    lines = [
        "# Written by blitzdns (guard install): refuse connections from this machine to the",
        '# protected services\' real addresses. Loaded into the anchor "blitzdns" by',
        "# /etc/pf.conf; `blitzdns guard uninstall` removes this file and those two lines.",
    ]
    for block in rules.blocks:
        listed = ", ".join(str(a) for a in block.addresses)
        ports = ", ".join(str(p) for p in block.ports)
        lines.append(
            f"block return out quick proto {block.proto} from any to {{ {listed} }} "
            f"port {{ {ports} }}"
        )
    for port in rules.everywhere:
        lines.append(f"block return out quick on ! lo0 proto {port.proto} to any port {port.port}")
    return "\n".join(lines) + "\n"


def pf_conf_with_anchor(current: bytes | None) -> bytes:
    """/etc/pf.conf with the anchor's two reference lines added (once).

    The filter anchor goes after the last ``anchor`` line and the load line after the last
    ``load anchor`` line (pf.conf(5) wants the rule types in order; macOS's own file ends
    with ``anchor "com.apple/*"`` then ``load anchor "com.apple" …``); at the end of the
    file when there are none.
    """
    text = current.decode("utf-8", "replace") if current else ""
    lines = text.splitlines()
    if PF_ANCHOR_LINE not in lines:
        at = _after_last(lines, "anchor ")
        lines.insert(at, PF_ANCHOR_LINE)
    if PF_LOAD_LINE not in lines:
        at = _after_last(lines, "load anchor ")
        lines.insert(at, PF_LOAD_LINE)
    return ("\n".join(lines) + "\n").encode()


def _after_last(lines: list[str], prefix: str) -> int:
    found = [i for i, line in enumerate(lines) if line.strip().startswith(prefix)]
    return found[-1] + 1 if found else len(lines)


def _pf(rules: GuardRules, current: bytes | None) -> GuardPlan:
    return GuardPlan(
        target="pf",
        rules=rules,
        files=(
            FileWrite(PF_ANCHOR_FILE, render_pf_anchor(rules).encode(), 0o644),
            FileWrite(PF_CONF, pf_conf_with_anchor(current), 0o644),
        ),
        commands=("pfctl -E",),
        undo_commands=(f"pfctl -a {PF_ANCHOR} -F rules",),
        command_shell=("/bin/sh", "-c"),
        reload=(("pfctl", "-f", PF_CONF),),
        checks=(f"pfctl -a {PF_ANCHOR} -s rules", "pfctl -s info"),
        notes=(
            "pf must be enabled for the rules to act: --apply runs `pfctl -E` (macOS: it "
            "takes a reference, so pf stays enabled for as long as blitzdns wants it)",
        ),
    )


def _ps(text: str) -> str:
    return f'"{text}"'


def render_windows(rules: GuardRules) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The PowerShell lines that install the rules, and those that remove them.

    Removal selects by group, so a rule somebody else made is never touched; running it
    first makes install idempotent. An outbound Block rule fails the socket call at once
    (Windows Filtering Platform), it does not let the connection hang.
    """
    remove = (
        f"Get-NetFirewallRule -Group {_ps(WINDOWS_GROUP)} -ErrorAction SilentlyContinue "
        "| Remove-NetFirewallRule"
    )
    adds = []
    for block in rules.blocks:
        listed = ", ".join(_ps(str(a)) for a in block.addresses)
        ports = ", ".join(_ps(str(p)) for p in block.ports)
        adds.append(
            f"New-NetFirewallRule -DisplayName {_ps(f'blitzdns {block.host} {block.proto}')} "
            f"-Group {_ps(WINDOWS_GROUP)} -Direction Outbound -Action Block "
            f"-Protocol {block.proto.upper()} -RemoteAddress {listed} -RemotePort {ports}"
        )
    for port in rules.everywhere:
        adds.append(
            f"New-NetFirewallRule -DisplayName "
            f"{_ps(f'blitzdns {port.service} {port.proto} everywhere')} "
            f"-Group {_ps(WINDOWS_GROUP)} -Direction Outbound -Action Block "
            f"-Protocol {port.proto.upper()} -RemotePort {_ps(str(port.port))}"
        )
    return (remove, *adds), (remove,)


def _windows(rules: GuardRules) -> GuardPlan:
    install, undo = render_windows(rules)
    return GuardPlan(
        target="windows",
        rules=rules,
        commands=install,
        undo_commands=undo,
        command_shell=POWERSHELL,
        checks=(f"Get-NetFirewallRule -Group {_ps(WINDOWS_GROUP)}",),
        notes=(
            "Windows Firewall does not filter loopback, so the mouths stay reachable; the "
            "rules act only while the firewall profile is on",
        ),
    )


# --------------------------------------------------------------------------- the address book


@dataclass(frozen=True, slots=True)
class Sighting:
    """One address seen for a host, and until when it stays in the rules."""

    address: str
    until: float


@dataclass(frozen=True, slots=True)
class AddressBook:
    """The union of addresses seen recently per host key (pure: ``now`` is passed in).

    An address stays for ``keep_s`` after it was last seen, so when a name rotates between
    addresses (round-robin, a CDN, a migration) the old one is still refused while clients
    may have it cached. ``keep_s`` is at least the record's TTL.
    """

    seen: Mapping[str, tuple[Sighting, ...]] = field(default_factory=dict)

    def add(
        self, host: str, addresses: Iterable[str], *, now: float, ttl: float, keep_s: float
    ) -> AddressBook:
        until = now + max(ttl, keep_s)
        current = {s.address: s for s in self.seen.get(host, ()) if s.until > now}
        for address in addresses:
            current[address] = Sighting(
                address, max(until, current.get(address, Sighting("", 0)).until)
            )
        merged = dict(self.seen)
        merged[host] = tuple(sorted(current.values(), key=lambda s: s.address))
        return AddressBook(merged)

    def expire(self, now: float, hosts: Iterable[str] | None = None) -> AddressBook:
        """Drop addresses not seen for their keep time (and hosts no longer protected)."""
        keys = set(self.seen) if hosts is None else set(hosts)
        return AddressBook(
            {
                host: kept
                for host, sightings in self.seen.items()
                if host in keys and (kept := tuple(s for s in sightings if s.until > now))
            }
        )

    def addresses(self) -> dict[str, tuple[str, ...]]:
        return {host: tuple(s.address for s in sightings) for host, sightings in self.seen.items()}

    def count(self) -> int:
        return len({s.address for sightings in self.seen.values() for s in sightings})
