"""Per-platform resolver configs: a pure function from the effective config to a :class:`Plan`.

A plan says exactly what ``resolver-config install`` would do on one platform: the files it
writes (path, bytes, mode), the commands it runs (NRPT has no files, only PowerShell lines),
how to reload the system resolver and how to test it, and what the target can and cannot do
for the short names (``dnd``, ``dasher``). :mod:`blitzdns.system.install` applies plans; this
module touches nothing, so every target is testable here, including macOS and Windows.

Split DNS wherever the platform allows it, so a stopped stub only breaks the protected
domains, never the rest of the machine's DNS:

==================  =====================================================  ===========
target              how                                                    port
==================  =====================================================  ===========
macos               /etc/resolver/<domain> (resolver(5))                   any
systemd-resolved    resolved.conf.d drop-in: ``DNS=`` and ``Domains=``     any (≥ 246)
networkmanager      NetworkManager's dnsmasq: ``server=/domain/ip#port``   any
resolvconf          /etc/resolv.conf: the stub is the only nameserver      53 only
nrpt                Windows NRPT rule per domain (Add-DnsClientNrptRule)   53 only
==================  =====================================================  ===========

The two targets without a port field need the stub on port 53; resolvconf replaces every
nameserver, so the previous ones are kept (:attr:`Plan.upstreams`) for ``run`` to forward to.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from blitzdns.config import Config, Endpoint
from blitzdns.errors import ConfigError, UsageError
from blitzdns.system.parsers import parse_resolv_conf_search

TARGETS = ("macos", "systemd-resolved", "networkmanager", "resolvconf", "nrpt")
#: Targets that have no port field: the stub must listen on 53.
PORT_53_TARGETS = ("resolvconf", "nrpt")

RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_DROPIN = "/etc/systemd/resolved.conf.d/50-blitzdns.conf"
NM_MAIN_DROPIN = "/etc/NetworkManager/conf.d/90-blitzdns.conf"
NM_DNSMASQ_SNIPPET = "/etc/NetworkManager/dnsmasq.d/blitzdns.conf"
MACOS_RESOLVER_DIR = "/etc/resolver"
#: Marks our NRPT rules, so uninstall removes ours and never a rule someone else added.
NRPT_COMMENT = "blitzdns"
#: resolv.conf(5) and resolver(5): MAXNS is 3.
MAX_NAMESERVERS = 3
#: Seconds macOS waits for the stub before giving up on a query (resolver(5) ``timeout``).
MACOS_TIMEOUT_S = 2

POWERSHELL = ("powershell", "-NoProfile", "-NonInteractive", "-Command")


@dataclass(frozen=True, slots=True)
class FileWrite:
    """One file the plan writes: an absolute path as on the target system, its bytes, its mode."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Names:
    """What a target routes to the stub, and the names its test commands use."""

    stub: tuple[Endpoint, ...]
    domains: tuple[str, ...]
    short: tuple[str, ...]
    #: A protected dotted name, and the same host's short name if it has one.
    example: str
    short_example: str | None
    #: Every protected dotted name (routed one by one where a platform needs it).
    dotted: tuple[str, ...] = ()

    @property
    def examples(self) -> tuple[str, ...]:
        """The names the printed test commands look up."""
        return (self.example, self.short_example) if self.short_example else (self.example,)


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything ``install`` does for one target, and what ``show`` prints."""

    target: str
    names: Names
    files: tuple[FileWrite, ...] = ()
    #: Lines run (in :attr:`command_shell`) by ``install --apply``; NRPT only.
    commands: tuple[str, ...] = ()
    #: Lines that undo :attr:`commands`, run by ``uninstall --apply``.
    undo_commands: tuple[str, ...] = ()
    command_shell: tuple[str, ...] = ()
    #: Commands that make the running system pick the change up (``--apply`` runs them).
    reload: tuple[tuple[str, ...], ...] = ()
    #: Commands the user can run to see the result (printed, never run).
    checks: tuple[str, ...] = ()
    can: tuple[str, ...] = ()
    cannot: tuple[str, ...] = ()
    #: Whole-resolver targets: the nameservers this plan replaces, for ``run`` to forward to.
    upstreams: tuple[str, ...] = ()
    #: Whether every lookup on the machine goes through the stub once installed.
    whole_resolver: bool = False

    def reload_lines(self) -> tuple[str, ...]:
        return tuple(shlex.join(argv) for argv in self.reload)


def build_plan(config: Config, target: str, *, current_resolv_conf: bytes | None = None) -> Plan:
    """The plan for ``target`` from the effective ``config``.

    ``current_resolv_conf`` is the machine's resolv.conf as it was before blitzdns touched it
    (the resolvconf target keeps its search domains and options and saves its nameservers).
    """
    if target not in TARGETS:
        raise UsageError(f"unknown target {target!r} (expected one of: {', '.join(TARGETS)})")
    domains = config.domains()
    short_names = config.short_names()
    if not domains and not short_names:
        raise ConfigError("no protected names: nothing to send to the stub", key="hosts")
    dotted = tuple(n for h in config.hosts for n in h.names if "." in n)
    names = Names(
        stub_endpoints(config, target), domains, short_names, *_examples(config), dotted=dotted
    )
    if target == "macos":
        return _macos(names)
    if target == "systemd-resolved":
        return _systemd_resolved(names)
    if target == "networkmanager":
        return _networkmanager(names)
    if target == "resolvconf":
        return _resolvconf(names, current_resolv_conf)
    return _nrpt(names)


def stub_endpoints(config: Config, target: str) -> tuple[Endpoint, ...]:
    """The stub's listen endpoints as the system resolver should address them.

    A wildcard listen address is reached through loopback; loopback endpoints come first.
    For a target without a port field only port-53 endpoints qualify; none is a config error
    that says how to fix it.
    """
    found: list[Endpoint] = []
    for endpoint in config.dns.listen:
        address = endpoint.address
        if address.is_unspecified:
            address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
        if target in PORT_53_TARGETS and endpoint.port != 53:
            continue
        candidate = Endpoint(str(address), endpoint.port)
        if candidate not in found:
            found.append(candidate)
    found.sort(key=lambda e: not e.address.is_loopback)
    if found:
        return tuple(found[:MAX_NAMESERVERS])
    listening = ", ".join(str(e) for e in config.dns.listen) or "nothing"
    if target in PORT_53_TARGETS:
        raise ConfigError(
            f"the {target} target has no port field, so the stub must listen on port 53, "
            f'but dns.listen is {listening}. Set dns.listen = ["127.0.0.1:53"] (run starts '
            "as root and drops privileges after binding), or pick a split-DNS target that "
            "takes a port: systemd-resolved, networkmanager or macos",
            key="dns.listen",
        )
    raise ConfigError("the stub listens nowhere; give dns.listen an address", key="dns.listen")


# --------------------------------------------------------------------------- targets


def _macos(n: Names) -> Plan:
    if not n.domains:
        raise ConfigError(
            "the macos target routes whole domains, but no protected name has one", key="hosts"
        )
    port = n.stub[0].port
    servers = [
        f"nameserver {e.host}" if e.port == port else f"nameserver {e.host}.{e.port}"
        for e in n.stub
    ]
    body = _text(*servers, f"port {port}", f"timeout {MACOS_TIMEOUT_S}")
    cannot: tuple[str, ...] = ()
    if n.short:
        cannot = (
            f"route bare names ({_listing(n.short)}): /etc/resolver files only see names "
            "inside their domain. macOS first qualifies a bare name with the primary "
            f"resolver's search domains, so add {n.domains[0]} there: `networksetup "
            f"-setsearchdomains Wi-Fi {' '.join(n.domains)}` (this replaces the list: keep "
            "what `networksetup -getsearchdomains Wi-Fi` shows), or per network location in "
            "System Settings → Network → the service → Details → DNS → Search Domains "
            "(`networksetup -switchtolocation NAME` switches locations)",
        )
    return Plan(
        target="macos",
        names=n,
        files=tuple(FileWrite(f"{MACOS_RESOLVER_DIR}/{d}", body) for d in n.domains),
        reload=(("dscacheutil", "-flushcache"), ("killall", "-HUP", "mDNSResponder")),
        checks=(
            *(f"dscacheutil -q host -a name {name}" for name in n.examples),
            "scutil --dns",
        ),
        can=(
            f"send names in {_listing(n.domains)} to the stub at {_listing(n.stub)} (one "
            "/etc/resolver file per domain; the most specific file wins); every other name "
            "keeps the machine's own DNS",
            "be tested with dscacheutil or scutil (dig and nslookup read /etc/resolv.conf and "
            "skip these files)",
        ),
        cannot=cannot,
    )


def _systemd_resolved(n: Names) -> Plan:
    if not n.domains:
        raise ConfigError(
            "the systemd-resolved target routes domains, but no protected name has one",
            key="hosts",
        )
    servers = " ".join(str(e) if e.port != 53 else e.host for e in n.stub)
    body = _text(
        "# Written by blitzdns (resolver-config install): send the protected domains to the",
        "# blitzdns stub. A domain without '~' is also a search domain, so a bare name expands",
        "# into it: systemd-resolved sends no single-label name to unicast DNS by itself.",
        "# Each protected name is also routed on its own ('~name'): a network whose own",
        "# search domain equals ours would otherwise tie with this scope, and resolved would",
        "# race both, letting the real address win. resolved.conf(5).",
        "[Resolve]",
        f"DNS={servers}",
        f"Domains={' '.join([*n.domains, *(f'~{name}' for name in n.dotted)])}",
    )
    can = [f"send names in {_listing(n.domains)} to the stub at {_listing(n.stub)}"]
    if n.short:
        can.append(
            f"expand bare names ({_listing(n.short)}): Domains= without '~' also makes "
            f"{_listing(n.domains)} search domains, for every lookup on this machine, not "
            "only blitzdns's names"
        )
    cannot = [
        "keep other names away from the stub entirely: a global DNS= server may also serve "
        "as a default route, so other names can reach the stub, which forwards them upstream",
    ]
    if any(e.port != 53 for e in n.stub):
        cannot.append("work before systemd 246: a port in DNS= needs systemd 246 or later")
    return Plan(
        target="systemd-resolved",
        names=n,
        files=(FileWrite(RESOLVED_DROPIN, body),),
        reload=(("systemctl", "restart", "systemd-resolved"),),
        checks=(*(f"resolvectl query {name}" for name in n.examples), "resolvectl status"),
        can=tuple(can),
        cannot=tuple(cannot),
    )


def _networkmanager(n: Names) -> Plan:
    main = _text(
        "# Written by blitzdns (resolver-config install): let NetworkManager run its dnsmasq",
        "# plugin, which reads /etc/NetworkManager/dnsmasq.d/. NetworkManager.conf(5).",
        "[main]",
        "dns=dnsmasq",
    )
    snippet = _text(
        "# Written by blitzdns (resolver-config install): the protected domains, and each bare",
        "# protected name, go to the blitzdns stub; everything else goes where it went before.",
        "# dnsmasq(8) --server=/<domain>/<ipaddr>#<port>; the most specific domain wins.",
        *(f"server=/{name}/{e.host}#{e.port}" for name in (*n.domains, *n.short) for e in n.stub),
    )
    can = [f"send names in {_listing(n.domains)} to the stub at {_listing(n.stub)}"]
    if n.short:
        can.append(
            f"send the bare names {_listing(n.short)} to the stub too (a server=/dnd/ line "
            "matches the name dnd itself), without touching the search domains"
        )
    return Plan(
        target="networkmanager",
        names=n,
        files=(FileWrite(NM_MAIN_DROPIN, main), FileWrite(NM_DNSMASQ_SNIPPET, snippet)),
        reload=(("nmcli", "general", "reload"),),
        checks=tuple(f"getent hosts {name}" for name in n.examples),
        can=tuple(can),
        cannot=(
            "leave NetworkManager's DNS mode alone: dns=dnsmasq replaces dns=systemd-resolved "
            "or dns=default if one was set",
        ),
    )


def _resolvconf(n: Names, current: bytes | None) -> Plan:
    old_text = current.decode("utf-8", "replace") if current else ""
    ours = {e.host for e in n.stub}
    upstreams: list[str] = []
    kept: list[str] = []
    for line in old_text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            if words[1] not in ours:
                upstreams.append(words[1])
        elif words and words[0] in ("options", "sortlist"):
            kept.append(line.strip())
    search = _unique([*n.domains, *parse_resolv_conf_search(old_text)])
    body = _text(
        "# Written by blitzdns (resolver-config install --target resolvconf). Every lookup goes",
        "# to the blitzdns stub, which forwards what it does not answer to the nameservers this",
        "# file listed before (kept in /var/lib/blitzdns). `blitzdns resolver-config uninstall`",
        "# puts the previous file back. resolv.conf(5).",
        *([f"search {' '.join(search)}"] if search else []),
        *(f"nameserver {e.host}" for e in n.stub),
        *kept,
    )
    previous = _listing(_unique(upstreams)) if upstreams else "none found"
    can = [
        f"answer every name through the stub at {_listing(n.stub)} (resolv.conf has no port "
        f"field); the previous nameservers ({previous}) are kept for run to forward to",
    ]
    if n.short and search:
        can.append(f"expand bare names ({_listing(n.short)}) with `search {' '.join(search)}`")
    return Plan(
        target="resolvconf",
        names=n,
        files=(FileWrite(RESOLV_CONF, body),),
        checks=tuple(f"getent hosts {name}" for name in n.examples),
        can=tuple(can),
        cannot=(
            "survive a stopped stub: while it is down every lookup on this machine fails, "
            "until `blitzdns resolver-config uninstall`",
            "stay put if another program manages /etc/resolv.conf (systemd-resolved, "
            "NetworkManager, resolvconf(8), a DHCP client): it may rewrite the file; prefer "
            "the systemd-resolved or networkmanager target there",
        ),
        upstreams=tuple(_unique(upstreams)),
        whole_resolver=True,
    )


def _nrpt(n: Names) -> Plan:
    if not n.domains:
        raise ConfigError(
            "the nrpt target routes namespaces, but no protected name has a domain", key="hosts"
        )
    servers = ", ".join(_ps(e.host) for e in n.stub)
    remove = (
        f"Get-DnsClientNrptRule | Where-Object Comment -eq {_ps(NRPT_COMMENT)} "
        "| ForEach-Object { Remove-DnsClientNrptRule -Name $_.Name -Force }"
    )
    adds = tuple(
        f"Add-DnsClientNrptRule -Namespace {_ps('.' + d)} -NameServers {servers} "
        f"-Comment {_ps(NRPT_COMMENT)} -DisplayName {_ps('blitzdns ' + d)}"
        for d in n.domains
    )
    cannot = [
        "use a port other than 53: NRPT rules name servers by address only",
        "be tested with nslookup, which ignores NRPT: use Resolve-DnsName",
    ]
    if n.short:
        cannot.append(
            f"route bare names ({_listing(n.short)}) by itself: Windows qualifies a bare name "
            f"with its DNS suffix search list first; if {n.domains[0]} is not in "
            "(Get-DnsClientGlobalSetting).SuffixSearchList, add it there "
            "(Set-DnsClientGlobalSetting -SuffixSearchList replaces the whole list)"
        )
    return Plan(
        target="nrpt",
        names=n,
        commands=(remove, *adds, "Clear-DnsClientCache"),
        undo_commands=(remove, "Clear-DnsClientCache"),
        command_shell=POWERSHELL,
        checks=(*(f"Resolve-DnsName {name}" for name in n.examples), "Get-DnsClientNrptPolicy"),
        can=(
            f"send names in {_listing(n.domains)} to the stub at {_listing(n.stub)} (one NRPT "
            f"rule per namespace, marked with the comment {NRPT_COMMENT!r}); other names keep "
            "the machine's own DNS",
        ),
        cannot=tuple(cannot),
        whole_resolver=True,
    )


# --------------------------------------------------------------------------- helpers


def _text(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _listing(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items) or "none"


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _examples(config: Config) -> tuple[str, str | None]:
    """The first protected host's dotted name (or its only name) and its short name."""
    for host in config.hosts:
        dotted = [n for n in host.names if "." in n]
        bare = [n for n in host.names if "." not in n]
        if dotted:
            return dotted[0], (bare[0] if bare else None)
    return config.hosts[0].names[0], None


def _ps(text: str) -> str:
    """A PowerShell string literal; config names are letters, digits, '-', '_' and dots only."""
    return f'"{text}"'
