"""Configuration: TOML (plus preset, plus flags) → validated, frozen dataclasses.

Everything is checked once, here; the rest of the program trusts the :class:`Config`.
A mistake raises :class:`~blitzdns.errors.ConfigError` naming the file, the key and what
was expected. Unknown keys are errors, never silently ignored.

The shape of the file is written once, as the dataclasses below: each field's metadata
(:func:`_meta`) gives its key, its meaning and an example. The allowed keys of every table
(:func:`toml_keys`), :meth:`Config.to_dict` (:func:`plain`) and the commented file that
``blitzdns config init`` writes (:mod:`blitzdns.config_template`) are read from them.
Mouth addresses are allocated by the pure :func:`blitzdns.mouths.allocate_mouths`.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from blitzdns.blitzmail.preset import PRESETS
from blitzdns.errors import ConfigError
from blitzdns.mouths import MouthRequest, allocate_mouths
from tunnel.errors import TunnelConfigError
from tunnel.forwards import Gateway

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MOUTHS = "127.77.0.0/24"
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
RESOLVER_TARGETS = ("auto", "macos", "systemd-resolved", "networkmanager", "resolvconf", "nrpt")
GUARD_TARGETS = ("auto", "nftables", "pf", "windows")

#: A whole label (``\Z``: ``$`` would also match before a final newline).
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port: ``127.0.0.1:53``, ``[::1]:53``; a bare address takes a default."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, default_port: int = 53) -> Endpoint:
        """Parse ``ADDR[:PORT]`` or ``[V6ADDR][:PORT]``; raise ValueError with the reason."""
        text = text.strip()
        host, port_text = text, ""
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise ValueError(f"missing ']' in {text!r}")
            host, rest = text[1:close], text[close + 1 :]
            if rest and not rest.startswith(":"):
                raise ValueError(f"expected ':PORT' after ']' in {text!r}")
            port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{port_text!r} is not a port (1-65535)")
            port = int(port_text)
        return cls(str(address), port)

    @property
    def address(self) -> IPAddress:
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _meta(doc: str, *, example: str | None = None, toml: str | None = "") -> dict[str, Any]:
    """A key's entry in the one schema (dataclass field metadata).

    ``doc``: what the key means (the comment ``config init`` writes above it); ``example``:
    a TOML value shown commented out where the default is empty or absent; ``toml``: the
    key's name in the file when it differs from the field's, ``None`` for a field the file
    does not set (a table's own name). The allowed keys, :meth:`Config.to_dict` and the
    template are read from these, so a key is added in one place.
    """
    return {"doc": doc, "example": example, "toml": toml}


@dataclass(frozen=True, slots=True)
class Service:
    """A service a host offers: the mouth listens on ``port``, the target on ``remote_port``."""

    name: str = field(metadata=_meta("The table's own name.", toml=None))
    port: int = field(metadata=_meta("The port the mouth listens on."))
    proto: Literal["tcp", "udp"] = field(
        default="tcp",
        metadata=_meta(
            '"tcp" or "udp" (UDP goes through a small relay the tunnel starts on the gateway '
            "over SSH: python3, else socat)."
        ),
    )
    remote_port: int = field(
        default=0, metadata=_meta("The target's port when it differs (0: the same as port).")
    )
    step: Literal["", "notify"] = field(
        default="",
        metadata=_meta(
            'UDP only: a protocol-aware step; "notify" writes the relay\'s port inside '
            "BlitzMail Notify registrations (NR02), so notices find their way back."
        ),
    )
    idle_s: float = field(
        default=120.0,
        metadata=_meta(
            "UDP only: a sender's association ends after this many seconds without a "
            "datagram either way (Notify registrations live 10 minutes: the preset keeps 900)."
        ),
    )
    max_datagram: int = field(
        default=8192,
        metadata=_meta("UDP only: larger datagrams are dropped and counted, never carried."),
    )

    @property
    def target_port(self) -> int:
        return self.remote_port or self.port


@dataclass(frozen=True, slots=True)
class Host:
    """One protected host: the names the stub answers and the mouth that stands in for it."""

    key: str = field(metadata=_meta("The table's own name.", toml=None))
    names: tuple[str, ...] = field(
        metadata=_meta(
            "Names the stub answers (normalised: lower case, no trailing dot), fully "
            "qualified and short."
        )
    )
    services: tuple[str, ...] = field(metadata=_meta("The services tunneled for the host."))
    mouth: ipaddress.IPv4Address = field(
        metadata=_meta("The loopback address standing in for it (default: allocated).")
    )
    remote: str = field(
        metadata=_meta("The target's name as the gateway resolves it (default: the first name).")
    )
    mouth6: ipaddress.IPv6Address | None = field(
        default=None, metadata=_meta("Optional IPv6 mouth (::1); without one, AAAA is NODATA.")
    )

    @property
    def canonical_name(self) -> str:
        return self.names[0]


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """A (mouth address, port) → (target as the gateway sees it, port) pair."""

    host: str
    service: str
    mouth: str
    port: int
    remote: str
    remote_port: int
    #: Client networks allowed on this mouth; None: loopback mouth, anyone local.
    allowed_peers: tuple[IPNetwork, ...] | None = None
    proto: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The resolver half."""

    listen: tuple[Endpoint, ...] = field(
        default=(Endpoint("127.0.0.1", 53),),
        metadata=_meta(
            "Where the stub listens. Port 53 needs root or CAP_NET_BIND_SERVICE; with an "
            "unprivileged port, point a split-DNS resolver config at it (macOS, "
            "systemd-resolved and NetworkManager support a port)."
        ),
    )
    upstreams: tuple[Endpoint, ...] = field(
        default=(),
        metadata=_meta(
            "Where other names go. Empty: read from the system at start "
            "(/run/systemd/resolve/resolv.conf, else /etc/resolv.conf), never from this stub "
            "itself."
        ),
    )
    ttl: int = field(
        default=5,
        metadata=_meta(
            "TTL of the local answers, in seconds: low, so a stopped tunnel leaves no stale "
            "answers."
        ),
    )
    cache_size: int = field(
        default=10000,
        metadata=_meta(
            "Forwarded answers cached (RFC 2308 negative caching included); 0 switches the "
            "cache off."
        ),
    )
    allow: tuple[IPNetwork, ...] = field(
        default=tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOW),
        metadata=_meta(
            "Clients that may use the stub; everyone else is REFUSED (no open resolver)."
        ),
    )
    timeout_s: float = field(
        default=2.0, metadata=_meta("A dead upstream answers SERVFAIL within this many seconds.")
    )
    tcp_idle_s: float = field(
        default=10.0,
        metadata=_meta("Idle TCP clients are closed after this many seconds (RFC 7766 §6.2.3)."),
    )


@dataclass(frozen=True, slots=True)
class TunnelConfig:
    """The SSH half."""

    gateways: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "SSH gateways, tried in order; ~/.ssh/config (Host aliases, User, Port, "
            "IdentityFile, ProxyJump) applies.",
            example='["jsmith@nimbus.dartmouth.edu"]',
        ),
    )
    mouths: ipaddress.IPv4Network = field(
        default=ipaddress.IPv4Network(DEFAULT_MOUTHS),
        metadata=_meta("The loopback block the per-host mouth addresses come from."),
    )
    hosts: tuple[str, ...] = field(
        default=(),
        metadata=_meta("Only these hosts are protected (empty: all of the table)."),
    )
    known_hosts: Path | None = field(
        default=None,
        metadata=_meta(
            "Host keys are always checked; default: ~/.ssh/known_hosts.",
            example='"~/.ssh/known_hosts"',
        ),
    )
    ssh_config: Path | None = field(
        default=None,
        metadata=_meta(
            "The ssh_config file to read (default: ~/.ssh/config).", example='"~/.ssh/config"'
        ),
    )
    identity_files: tuple[Path, ...] = field(
        default=(),
        metadata=_meta(
            "Private keys to offer (like ssh -i); empty: ssh_config's IdentityFile, the "
            "agent, ~/.ssh/id_*."
        ),
    )
    keepalive_s: float = field(
        default=15.0, metadata=_meta("Seconds between keepalives (3 missed: the link is dead).")
    )
    wait_for_link_s: float = field(
        default=10.0,
        metadata=_meta("How long a new connection waits for a link that is down, then closes."),
    )
    trust_new_host_key: bool = field(
        default=False,
        metadata=_meta(
            "Accept and record an unknown gateway host key (trust on first use, by choice)."
        ),
    )
    backend: Literal["asyncssh", "openssh"] = field(
        default="asyncssh",
        metadata=_meta(
            '"asyncssh": the link runs in blitzdns (password and passphrase prompts). '
            '"openssh": an `ssh -M` master carries the data at OpenSSH\'s speed (keys or '
            "ssh-agent only; byte counts in `status` come from the kernel, Linux only)."
        ),
    )


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """The leak guard (issue 14): firewall rules that refuse the protected hosts' real
    addresses, and the watch over the installed resolver config."""

    enabled: bool = field(
        default=False,
        metadata=_meta(
            "`run` installs the guard at start (as root) and keeps it refreshed; the rules "
            "stay in force when it stops. `blitzdns guard show` prints them."
        ),
    )
    target: str = field(
        default="auto",
        metadata=_meta(
            "The firewall: " + ", ".join(GUARD_TARGETS) + " (auto: this platform's own)."
        ),
    )
    everywhere: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "Services whose port is refused towards every address, not only the real ones "
            "(for ports nothing else on this machine uses).",
            example='["dnd"]',
        ),
    )
    keep_s: float = field(
        default=86400.0,
        metadata=_meta(
            "Seconds an address stays refused after it was last seen (a name that moves "
            "leaves no gap)."
        ),
    )
    watch_s: float = field(
        default=3.0,
        metadata=_meta(
            "Seconds between checks that the installed resolver config still sends the "
            "protected names to the stub (inotify wakes it sooner on Linux)."
        ),
    )


@dataclass(frozen=True, slots=True)
class SharedAddress:
    """Local-IP mode: mouths also on a LAN/bridge address, for the listed client networks."""

    address: IPAddress = field(metadata=_meta("An address this machine holds."))
    allow: tuple[IPNetwork, ...] = field(metadata=_meta("The client networks served."))
    hosts: tuple[str, ...] = field(metadata=_meta("The hosts offered there."))
    dns: bool = field(
        default=False,
        metadata=_meta("Also serve DNS on this address (port of the first listen endpoint)."),
    )


@dataclass(frozen=True, slots=True)
class MatchRule:
    """Facts that recognise a network; every key given must hold (an empty rule never matches)."""

    gateway: IPAddress | None = field(default=None, metadata=_meta("The default gateway."))
    subnet: IPNetwork | None = field(default=None, metadata=_meta("A subnet this machine is on."))
    search_domain: str | None = field(default=None, metadata=_meta("A DNS search domain."))
    ssid: str | None = field(default=None, metadata=_meta("The Wi-Fi network's name."))


@dataclass(frozen=True, slots=True)
class Location:
    """Overrides that apply on one network; ``match`` rules are alternatives (any may match)."""

    name: str = field(metadata=_meta("The table's own name.", toml=None))
    match: tuple[MatchRule, ...] = field(
        default=(), metadata=_meta("Rules, any of which may match.")
    )
    gateways: tuple[str, ...] | None = field(default=None, metadata=_meta("tunnel.gateways here."))
    upstreams: tuple[Endpoint, ...] | None = field(
        default=None, metadata=_meta("dns.upstreams here.")
    )
    hosts: tuple[str, ...] | None = field(default=None, metadata=_meta("tunnel.hosts here."))
    resolver_target: str | None = field(default=None, metadata=_meta("resolver.target here."))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. Derived views are methods, never stored twice.

    The fields' metadata is the file's schema (see :func:`_meta`); a section's example is
    shown commented out by ``config init`` (a test uncomments and loads every one).
    """

    preset: str = field(
        default="blitzmail",
        metadata=_meta(
            'The built-in table of hosts and services: "blitzmail" (Dartmouth\'s DND, '
            'BlitzMail reindeer servers and newshost) or "none" to start empty.'
        ),
    )
    source: Path | None = field(default=None, metadata=_meta("The file read.", toml=None))
    #: The location whose overrides are applied, if any.
    location: str | None = field(default=None, metadata=_meta("The location applied.", toml=None))
    dns: DnsConfig = field(default_factory=DnsConfig, metadata=_meta("The resolver half."))
    tunnel: TunnelConfig = field(default_factory=TunnelConfig, metadata=_meta("The SSH half."))
    resolver_target: str = field(
        default="auto",
        metadata=_meta(
            "Which resolver config `blitzdns resolver-config` writes by default: "
            + ", ".join(RESOLVER_TARGETS)
            + ".",
            toml="resolver.target",
        ),
    )
    services: Mapping[str, Service] = field(
        default_factory=dict,
        metadata=_meta(
            "Services: a name, the port the mouth listens on, and optionally the target's "
            "port when it differs (remote_port). The preset defines dnd (902), mail (2151), "
            "bulletins (1119), posting (119), dartnotify (2152) and notify (2154, UDP).",
            example="[services]\nimap = { port = 143 }",
        ),
    )
    #: Every host of the table, in definition order, active or not.
    all_hosts: tuple[Host, ...] = field(
        default=(),
        metadata=_meta(
            "Hosts: names the stub answers (any letter case, with or without a trailing "
            "dot), the services tunneled for them, an optional pinned mouth, and the target "
            "as the gateway resolves it (default: the first name). A [hosts.X] here extends "
            "or overrides the preset's X.",
            example=(
                "[hosts.dasher]\n"
                'names = ["dasher.dartmouth.edu", "dasher"]\n'
                'services = ["mail"]\n'
                'mouth = "127.77.0.2"\n'
                'remote = "dasher.dartmouth.edu"'
            ),
            toml="hosts",
        ),
    )
    shared: tuple[SharedAddress, ...] = field(
        default=(),
        metadata=_meta(
            "Local-IP mode: also offer some hosts on an address of this machine's LAN or VM "
            "bridge, to the client networks listed (one host per port on each address).",
            example=(
                "[[shared]]\n"
                'address = "192.168.64.1"\n'
                'allow = ["192.168.64.0/24"]\n'
                'hosts = ["dnd", "dasher"]\n'
                "dns = true"
            ),
        ),
    )
    guard: GuardConfig = field(
        default_factory=GuardConfig,
        metadata=_meta("The leak guard and the resolver watch."),
    )
    locations: Mapping[str, Location] = field(
        default_factory=dict,
        metadata=_meta(
            "Network locations: overrides that apply where a rule matches (any rule; every "
            "key of a rule must hold). `blitzdns location` shows which one matches now.",
            example=(
                "[locations.campus]\n"
                'match = [{ subnet = "129.170.0.0/16" }, { search_domain = "dartmouth.edu" }]\n'
                'gateways = ["jsmith@gateway-near-the-servers.dartmouth.edu"]\n'
                "[locations.home]\n"
                'match = [{ ssid = "MyHomeWifi" }]\n'
                'gateways = ["jsmith@nimbus.dartmouth.edu"]'
            ),
        ),
    )

    @property
    def hosts(self) -> tuple[Host, ...]:
        """The protected hosts: all of the table, or those ``tunnel.hosts`` selects."""
        if not self.tunnel.hosts:
            return self.all_hosts
        chosen = set(self.tunnel.hosts)
        return tuple(h for h in self.all_hosts if h.key in chosen)

    def host(self, key: str) -> Host:
        for host in self.all_hosts:
            if host.key == key:
                return host
        raise KeyError(key)

    def forwards(self) -> tuple[ForwardSpec, ...]:
        """Each protected host's mouth × its services (TCP and UDP), plus the shared-address
        mouths."""
        result: list[ForwardSpec] = []
        protected = {h.key for h in self.hosts}
        for host in self.hosts:
            mouths = [str(host.mouth), *([str(host.mouth6)] if host.mouth6 else [])]
            for name in host.services:
                svc = self.services[name]
                result.extend(
                    ForwardSpec(
                        host.key,
                        name,
                        mouth,
                        svc.port,
                        host.remote,
                        svc.target_port,
                        proto=svc.proto,
                    )
                    for mouth in mouths
                )
        for shared in self.shared:
            for key in shared.hosts:
                if key not in protected:
                    continue
                host = self.host(key)
                for name in host.services:
                    svc = self.services[name]
                    result.append(
                        ForwardSpec(
                            host.key,
                            name,
                            str(shared.address),
                            svc.port,
                            host.remote,
                            svc.target_port,
                            allowed_peers=shared.allow,
                            proto=svc.proto,
                        )
                    )
        return tuple(result)

    def domains(self) -> tuple[str, ...]:
        """The DNS domains the protected names live in (for split-DNS resolver configs)."""
        found: list[str] = []
        for host in self.hosts:
            for name in host.names:
                if "." in name:
                    parent = name.split(".", 1)[1]
                    if parent not in found:
                        found.append(parent)
        return tuple(found)

    def short_names(self) -> tuple[str, ...]:
        return tuple(n for h in self.hosts for n in h.names if "." not in n)

    def at_location(self, name: str | None) -> Config:
        """This configuration with the named location's overrides applied."""
        if name is None:
            return replace(self, location=None)
        if name not in self.locations:
            known = ", ".join(self.locations) or "none defined"
            raise ConfigError(f"no location named {name!r} (known: {known})", key="locations")
        loc = self.locations[name]
        dns, tunnel = self.dns, self.tunnel
        if loc.upstreams is not None:
            dns = replace(dns, upstreams=loc.upstreams)
        if loc.gateways is not None:
            tunnel = replace(tunnel, gateways=loc.gateways)
        if loc.hosts is not None:
            tunnel = replace(tunnel, hosts=loc.hosts)
        return replace(
            self,
            dns=dns,
            tunnel=tunnel,
            resolver_target=loc.resolver_target or self.resolver_target,
            location=name,
        )

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (``config show``, ``plan --json``): the
        file's keys (:func:`plain`), plus where it came from and which hosts are protected."""
        data: dict[str, Any] = {
            "source": str(self.source) if self.source else None,
            "location": self.location,
            **plain(self),
        }
        data["hosts"] = {h.key: {**plain(h), "protected": h in self.hosts} for h in self.all_hosts}
        return data


# --------------------------------------------------------------------------- schema

#: Tables whose keys are overrides: a key not given is left out of :func:`plain`.
_SPARSE = (Location, MatchRule)
_AS_TEXT = (
    Endpoint,
    Path,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
)


def toml_name(item: Field[Any]) -> str | None:
    """A field's key in the file (dotted: ``table.key``); ``None``: not set from the file."""
    name: str | None = item.metadata.get("toml", "")
    return item.name if name == "" else name


def toml_keys(cls: type[Any], within: str = "") -> tuple[str, ...]:
    """The keys a table of ``cls`` may hold (``within``: those of its sub-table)."""
    names = [name for f in fields(cls) if (name := toml_name(f)) is not None]
    if within:
        return tuple(n.removeprefix(f"{within}.") for n in names if n.startswith(f"{within}."))
    return tuple(dict.fromkeys(n.split(".")[0] for n in names))


def plain(value: Any) -> Any:
    """A config value as JSON-ready data under the file's keys: addresses, networks and
    paths as text, tuples as lists, a dataclass as a table (``table.key`` names nested)."""
    if isinstance(value, _AS_TEXT):
        return str(value)
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    if not is_dataclass(value):
        return value
    result: dict[str, Any] = {}
    for item in fields(value):
        name = toml_name(item)
        content = getattr(value, item.name)
        if name is None or (content is None and isinstance(value, _SPARSE)):
            continue
        table, _, key = name.rpartition(".")
        (result.setdefault(table, {}) if table else result)[key] = plain(content)
    return result


def gateway_problem(text: str) -> str | None:
    """What is wrong with an SSH gateway ``[user@]host[:port]``; None when the tunnel
    accepts it (the one parser: :meth:`tunnel.Gateway.parse`)."""
    try:
        Gateway.parse(text)
    except TunnelConfigError as exc:
        return f"expected [user@]host[:port] (an SSH gateway): {exc}"
    return None


# --------------------------------------------------------------------------- names


def normalise_name(name: str) -> str:
    """Lower-case, strip one trailing dot; raise ValueError when not a valid host name."""
    text = name.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > 253:
        raise ValueError(f"{name!r} is not a host name")
    for label in text.split("."):
        if not _LABEL.match(label):
            raise ValueError(f"{name!r} is not a host name (bad label {label!r})")
    return text


# --------------------------------------------------------------------------- loading


def default_config_paths() -> tuple[Path, ...]:
    """Where ``run`` looks for a file when ``--config`` is not given, in order.

    Under sudo, the invoking user's file comes first: ``blitzdns config init`` then
    ``sudo blitzdns run`` must find the file the user just wrote, not root's.
    """
    paths = []
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        try:
            home = pwd.getpwnam(sudo_user).pw_dir
        except KeyError:
            home = ""
        if home:
            paths.append(Path(home) / ".config" / "blitzdns" / "config.toml")
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(xdg) / "blitzdns" / "config.toml")
    paths.append(Path("/etc/blitzdns/config.toml"))
    return tuple(dict.fromkeys(paths))


def find_config_file(explicit: Path | None = None) -> Path | None:
    """``--config FILE``, else the first existing default path, else None (preset alone)."""
    if explicit is not None:
        return explicit
    for path in default_config_paths():
        try:
            if path.is_file():
                return path
        except OSError as exc:
            raise ConfigError(f"cannot look at the file ({exc.strerror})", file=str(path)) from None
    return None


def load_config(path: Path | None = None, *, search: bool = True) -> Config:
    """Load and validate ``path`` (or the default file when ``search``), merged over its preset."""
    chosen = find_config_file(path) if search else path
    if chosen is None:
        return build_config({}, source=None)
    try:
        text = chosen.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(chosen)) from None
    except PermissionError:
        raise ConfigError("cannot read the file (permission denied)", file=str(chosen)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file ({exc})", file=str(chosen)) from None
    return parse_config(text, source=chosen)


#: Documents longer than this (characters) are parsed with tomllib's key flags kept small
#: (:mod:`blitzdns.tomlflags`: a 10,000-host table's parse peaked at 21 MB of them).
_LARGE_TOML = 32_768


def parse_config(text: str, *, source: Path | None = None) -> Config:
    """Parse TOML text into a :class:`Config` (``source`` only names the file in errors)."""
    try:
        if len(text) > _LARGE_TOML:
            from blitzdns import tomlflags  # noqa: PLC0415  (large documents only)

            data = tomlflags.loads(text)
        else:
            data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(source) if source else None) from None
    return build_config(data, source=source)


def build_config(data: Mapping[str, Any], *, source: Path | None) -> Config:
    """Validate raw data (already parsed TOML) merged over its preset."""
    return _Builder(str(source) if source else None).build(data, source)


class _Builder:
    """Walks the raw data once, naming the file and dotted key in every error."""

    def __init__(self, file: str | None):
        self.file = file

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    # -- primitive readers

    def table(self, data: Mapping[str, Any], key: str, allowed: Iterable[str]) -> Mapping[str, Any]:
        if not isinstance(data, Mapping):
            raise self.fail(key, f"expected a table, got {type(data).__name__}")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise self.fail(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        return data

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        return tuple(self.string(v, f"{key}[{i}]") for i, v in enumerate(value))

    def integer(self, value: Any, key: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    def number(self, value: Any, key: str, low: float, high: float) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise self.fail(key, f"expected a number from {low} to {high}, got {value!r}")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def endpoints(self, value: Any, key: str) -> tuple[Endpoint, ...]:
        result = []
        for i, text in enumerate(self.strings(value, key)):
            try:
                result.append(Endpoint.parse(text))
            except ValueError as exc:
                raise self.fail(f"{key}[{i}]", f"expected ADDR[:PORT]: {exc}") from None
        return tuple(result)

    def networks(self, value: Any, key: str) -> tuple[IPNetwork, ...]:
        result = []
        for i, text in enumerate(self.strings(value, key)):
            try:
                result.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise self.fail(
                    f"{key}[{i}]", f"expected a network like 10.0.0.0/8, got {text!r}"
                ) from None
        return tuple(result)

    def address(self, value: Any, key: str) -> IPAddress:
        try:
            return ipaddress.ip_address(self.string(value, key))
        except ValueError:
            raise self.fail(key, f"expected an IP address, got {value!r}") from None

    def gateways(self, value: Any, key: str) -> tuple[str, ...]:
        """``[user@]host[:port]`` each (host may be a ~/.ssh/config alias or ``[v6]``), as
        the tunnel parses them (:meth:`tunnel.Gateway.parse`)."""
        result = self.strings(value, key)
        for i, text in enumerate(result):
            problem = gateway_problem(text)
            if problem is not None:
                raise self.fail(f"{key}[{i}]", problem)
        return result

    def existing_file(self, value: Any, key: str) -> Path:
        path = self.path(value, key)
        if not path.is_file():
            raise self.fail(key, f"no such file: {path}")
        return path

    def path(self, value: Any, key: str) -> Path:
        text = self.string(value, key)
        try:
            return Path(text).expanduser()
        except RuntimeError:  # ~name of a user this machine does not know
            raise self.fail(key, f"no such user's home directory: {text!r}") from None

    # -- sections

    def build(self, data: Mapping[str, Any], source: Path | None) -> Config:
        top = self.table(data, "", toml_keys(Config))
        preset = self.string(top.get("preset", "blitzmail"), "preset")
        if preset not in PRESETS:
            raise self.fail("preset", f"expected one of {', '.join(PRESETS)}, got {preset!r}")
        base = PRESETS[preset]()
        dns = self.dns(top.get("dns", {}))
        tunnel = self.tunnel(top.get("tunnel", {}))
        services = self.services({**base["services"], **self._mapping(top, "services")})
        hosts = self.hosts(base["hosts"], self._mapping(top, "hosts"), services, tunnel.mouths)
        keys = {h.key for h in hosts}
        for i, key in enumerate(tunnel.hosts):
            if key not in keys:
                raise self.fail(f"tunnel.hosts[{i}]", f"no host named {key!r}")
        shared = self.shared(top.get("shared", []), hosts, services)
        resolver = self.table(
            top.get("resolver", {}), "resolver", toml_keys(Config, within="resolver")
        )
        target = self.string(resolver.get("target", "auto"), "resolver.target")
        if target not in RESOLVER_TARGETS:
            raise self.fail("resolver.target", f"expected one of {', '.join(RESOLVER_TARGETS)}")
        locations = self.locations(self._mapping(top, "locations"), keys)
        guard = self.guard(top.get("guard", {}), services)
        return Config(
            preset=preset,
            source=source,
            dns=dns,
            tunnel=tunnel,
            services=services,
            all_hosts=hosts,
            shared=shared,
            locations=locations,
            resolver_target=target,
            guard=guard,
        )

    def guard(self, raw: Any, services: Mapping[str, Service]) -> GuardConfig:
        t = self.table(raw, "guard", toml_keys(GuardConfig))
        d = GuardConfig()
        target = self.string(t.get("target", d.target), "guard.target")
        if target not in GUARD_TARGETS:
            raise self.fail("guard.target", f"expected one of {', '.join(GUARD_TARGETS)}")
        everywhere = self.strings(t.get("everywhere", []), "guard.everywhere")
        for i, name in enumerate(everywhere):
            if name not in services:
                raise self.fail(
                    f"guard.everywhere[{i}]",
                    f"no service named {name!r} (defined: {', '.join(services) or 'none'})",
                )
        return GuardConfig(
            enabled=self.boolean(t.get("enabled", d.enabled), "guard.enabled"),
            target=target,
            everywhere=everywhere,
            keep_s=self.number(t.get("keep_s", d.keep_s), "guard.keep_s", 0, 30 * 86400),
            watch_s=self.number(t.get("watch_s", d.watch_s), "guard.watch_s", 0.1, 3600),
        )

    def _mapping(self, top: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = top.get(key, {})
        if not isinstance(value, Mapping):
            raise self.fail(key, "expected a table")
        return value

    def dns(self, raw: Any) -> DnsConfig:
        t = self.table(raw, "dns", toml_keys(DnsConfig))
        d = DnsConfig()
        listen = self.endpoints(t["listen"], "dns.listen") if "listen" in t else d.listen
        if not listen:
            raise self.fail("dns.listen", "expected at least one ADDR:PORT")
        return DnsConfig(
            listen=listen,
            upstreams=self.endpoints(t["upstreams"], "dns.upstreams") if "upstreams" in t else (),
            ttl=self.integer(t.get("ttl", d.ttl), "dns.ttl", 0, 86400),
            cache_size=self.integer(
                t.get("cache_size", d.cache_size), "dns.cache_size", 0, 10_000_000
            ),
            allow=self.networks(t["allow"], "dns.allow") if "allow" in t else d.allow,
            timeout_s=self.number(t.get("timeout_s", d.timeout_s), "dns.timeout_s", 0.1, 30),
            tcp_idle_s=self.number(t.get("tcp_idle_s", d.tcp_idle_s), "dns.tcp_idle_s", 0.1, 3600),
        )

    def tunnel(self, raw: Any) -> TunnelConfig:
        t = self.table(raw, "tunnel", toml_keys(TunnelConfig))
        d = TunnelConfig()
        backend = t.get("backend", "asyncssh")
        if backend not in ("asyncssh", "openssh"):
            raise self.fail("tunnel.backend", f'expected "asyncssh" or "openssh", got {backend!r}')
        mouths = d.mouths
        if "mouths" in t:
            text = self.string(t["mouths"], "tunnel.mouths")
            try:
                mouths = ipaddress.IPv4Network(text, strict=False)
            except ValueError:
                raise self.fail(
                    "tunnel.mouths", f"expected an IPv4 block like {DEFAULT_MOUTHS}"
                ) from None
            if not mouths.is_loopback:
                raise self.fail(
                    "tunnel.mouths", "expected a block inside 127.0.0.0/8 (loopback only)"
                )
            if mouths.num_addresses < 4:
                raise self.fail("tunnel.mouths", "expected a block of at least 4 addresses (/30)")
        return TunnelConfig(
            gateways=self.gateways(t.get("gateways", []), "tunnel.gateways"),
            mouths=mouths,
            hosts=self.strings(t.get("hosts", []), "tunnel.hosts"),
            known_hosts=self.path(t["known_hosts"], "tunnel.known_hosts")
            if "known_hosts" in t
            else None,
            ssh_config=self.existing_file(t["ssh_config"], "tunnel.ssh_config")
            if "ssh_config" in t
            else None,
            identity_files=tuple(
                self.existing_file(p, f"tunnel.identity_files[{i}]")
                for i, p in enumerate(
                    self.strings(t.get("identity_files", []), "tunnel.identity_files")
                )
            ),
            keepalive_s=self.number(
                t.get("keepalive_s", d.keepalive_s), "tunnel.keepalive_s", 1, 3600
            ),
            wait_for_link_s=self.number(
                t.get("wait_for_link_s", d.wait_for_link_s), "tunnel.wait_for_link_s", 0.1, 600
            ),
            trust_new_host_key=self.boolean(
                t.get("trust_new_host_key", False), "tunnel.trust_new_host_key"
            ),
            backend=backend,
        )

    def services(self, raw: Mapping[str, Any]) -> dict[str, Service]:
        result = {}
        for name, spec in raw.items():
            key = f"services.{name}"
            t = self.table(spec, key, toml_keys(Service))
            if "port" not in t:
                raise self.fail(f"{key}.port", "missing (expected a port number)")
            proto = t.get("proto", "tcp")
            if proto not in ("tcp", "udp"):
                raise self.fail(f"{key}.proto", f'expected "tcp" or "udp", got {proto!r}')
            port = self.integer(t["port"], f"{key}.port", 1, 65535)
            remote_port = self.integer(t.get("remote_port", 0), f"{key}.remote_port", 0, 65535)
            step = t.get("step", "")
            if step not in ("", "notify"):
                raise self.fail(f"{key}.step", f'expected "notify" (or nothing), got {step!r}')
            if proto != "udp":
                for udp_only in ("step", "idle_s", "max_datagram"):
                    if udp_only in t:
                        raise self.fail(f"{key}.{udp_only}", 'applies to proto = "udp" only')
            defaults = Service(name=name, port=port)
            result[name] = Service(
                name=name,
                port=port,
                proto=proto,
                remote_port=remote_port or port,
                step=step,
                idle_s=self.number(t.get("idle_s", defaults.idle_s), f"{key}.idle_s", 1, 86400),
                max_datagram=self.integer(
                    t.get("max_datagram", defaults.max_datagram),
                    f"{key}.max_datagram",
                    1,
                    65507,
                ),
            )
        return result

    def hosts(
        self,
        preset: Mapping[str, Any],
        user: Mapping[str, Any],
        services: Mapping[str, Service],
        block: ipaddress.IPv4Network,
    ) -> tuple[Host, ...]:
        merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in preset.items()}
        for key, spec in user.items():
            self.table(spec, f"hosts.{key}", toml_keys(Host))
            entry = merged.setdefault(key, {})
            entry.update(spec)
            if "mouth" in spec:
                entry.pop("mouth_offset", None)
        requests = [self.mouth_request(key, entry) for key, entry in merged.items()]
        try:
            mouths = allocate_mouths(requests, block)
        except ConfigError as exc:
            raise self.fail(exc.key or "hosts", exc.detail) from None

        seen_names: dict[str, str] = {}
        mouth6_ports: dict[int, str] = {}
        hosts = []
        for key, entry in merged.items():
            where = f"hosts.{key}"
            if not _LABEL.match(key):
                raise self.fail(where, "a host key is one word of letters, digits, '-' or '_'")
            raw_names = self.strings(entry.get("names", []), f"{where}.names")
            if not raw_names:
                raise self.fail(f"{where}.names", "expected at least one name")
            names: list[str] = []
            for i, raw_name in enumerate(raw_names):
                try:
                    name = normalise_name(raw_name)
                except ValueError as exc:
                    raise self.fail(f"{where}.names[{i}]", str(exc)) from None
                if name in seen_names and seen_names[name] != key:
                    raise self.fail(
                        f"{where}.names[{i}]",
                        f"{name!r} already belongs to host {seen_names[name]!r}",
                    )
                seen_names[name] = key
                if name not in names:
                    names.append(name)
            host_services = self.strings(entry.get("services", []), f"{where}.services")
            for i, svc in enumerate(host_services):
                if svc not in services:
                    raise self.fail(
                        f"{where}.services[{i}]",
                        f"no service named {svc!r} (defined: {', '.join(services) or 'none'})",
                    )
            mouth6 = None
            if "mouth6" in entry:
                address = self.address(entry["mouth6"], f"{where}.mouth6")
                if not isinstance(address, ipaddress.IPv6Address) or not address.is_loopback:
                    raise self.fail(
                        f"{where}.mouth6", "expected ::1 (the only IPv6 loopback address)"
                    )
                # ::1 is one address: like a shared address, it serves one host per port.
                for svc in host_services:
                    port = services[svc].port
                    if port in mouth6_ports and mouth6_ports[port] != key:
                        raise self.fail(
                            f"{where}.mouth6",
                            f"{key!r} and {mouth6_ports[port]!r} would both need [::1] port "
                            f"{port}; ::1 serves one host per port (leave mouth6 unset: AAAA "
                            "then answers NODATA and clients use the IPv4 mouth)",
                        )
                    mouth6_ports[port] = key
                mouth6 = address
            remote = entry.get("remote", names[0])
            try:
                remote = normalise_name(self.string(remote, f"{where}.remote"))
            except ValueError as exc:
                raise self.fail(f"{where}.remote", str(exc)) from None
            hosts.append(
                Host(
                    key=key,
                    names=tuple(names),
                    services=host_services,
                    mouth=mouths[key],
                    remote=remote,
                    mouth6=mouth6,
                )
            )
        return tuple(hosts)

    def mouth_request(self, key: str, entry: Mapping[str, Any]) -> MouthRequest:
        """What host ``key`` asks of :func:`~blitzdns.mouths.allocate_mouths`."""
        offset = entry.get("mouth_offset")
        request = MouthRequest(key, offset=int(offset) if offset is not None else None)
        if "mouth" not in entry:
            return request
        pinned = self.address(entry["mouth"], f"hosts.{key}.mouth")
        if not isinstance(pinned, ipaddress.IPv4Address) or not pinned.is_loopback:
            raise self.fail(f"hosts.{key}.mouth", "expected an IPv4 address in 127.0.0.0/8")
        return replace(request, pinned=pinned)

    def shared(
        self, raw: Any, hosts: Sequence[Host], services: Mapping[str, Service]
    ) -> tuple[SharedAddress, ...]:
        if not isinstance(raw, list):
            raise self.fail("shared", "expected an array of tables ([[shared]])")
        by_key = {h.key: h for h in hosts}
        used: dict[tuple[str, int], str] = {}
        result = []
        for i, spec in enumerate(raw):
            where = f"shared[{i}]"
            t = self.table(spec, where, toml_keys(SharedAddress))
            if "address" not in t or "allow" not in t:
                raise self.fail(where, "expected both 'address' and 'allow'")
            address = self.address(t["address"], f"{where}.address")
            if address.is_unspecified or address.is_multicast:
                raise self.fail(
                    f"{where}.address", "expected one address this machine holds, not a wildcard"
                )
            allow = self.networks(t["allow"], f"{where}.allow")
            if not allow:
                raise self.fail(f"{where}.allow", "expected at least one client network")
            chosen = self.strings(t.get("hosts", []), f"{where}.hosts")
            for j, key in enumerate(chosen):
                if key not in by_key:
                    raise self.fail(f"{where}.hosts[{j}]", f"no host named {key!r}")
                for svc in by_key[key].services:
                    pair = (str(address), services[svc].port)
                    if pair in used and used[pair] != key:
                        raise self.fail(
                            f"{where}.hosts[{j}]",
                            f"{key!r} and {used[pair]!r} would both need {address} port "
                            f"{pair[1]}; one shared address serves one host per port",
                        )
                    used[pair] = key
            result.append(
                SharedAddress(
                    address=address,
                    allow=allow,
                    hosts=chosen,
                    dns=self.boolean(t.get("dns", False), f"{where}.dns"),
                )
            )
        return tuple(result)

    def locations(self, raw: Mapping[str, Any], host_keys: set[str]) -> dict[str, Location]:
        result = {}
        for name, spec in raw.items():
            where = f"locations.{name}"
            t = self.table(spec, where, toml_keys(Location))
            rules_raw = t.get("match", [])
            if isinstance(rules_raw, Mapping):
                rules_raw = [rules_raw]
            if not isinstance(rules_raw, list):
                raise self.fail(f"{where}.match", "expected a table or a list of tables")
            rules = tuple(self.rule(r, f"{where}.match[{i}]") for i, r in enumerate(rules_raw))
            hosts = None
            if "hosts" in t:
                hosts = self.strings(t["hosts"], f"{where}.hosts")
                for i, key in enumerate(hosts):
                    if key not in host_keys:
                        raise self.fail(f"{where}.hosts[{i}]", f"no host named {key!r}")
            target = None
            if "resolver_target" in t:
                target = self.string(t["resolver_target"], f"{where}.resolver_target")
                if target not in RESOLVER_TARGETS:
                    raise self.fail(
                        f"{where}.resolver_target", f"expected one of {', '.join(RESOLVER_TARGETS)}"
                    )
            result[name] = Location(
                name=name,
                match=rules,
                gateways=self.gateways(t["gateways"], f"{where}.gateways")
                if "gateways" in t
                else None,
                upstreams=self.endpoints(t["upstreams"], f"{where}.upstreams")
                if "upstreams" in t
                else None,
                hosts=hosts,
                resolver_target=target,
            )
        return result

    def rule(self, raw: Any, where: str) -> MatchRule:
        t = self.table(raw, where, toml_keys(MatchRule))
        if not t:
            raise self.fail(where, "an empty match rule would never match; give at least one key")
        subnet = None
        if "subnet" in t:
            nets = self.networks([t["subnet"]], f"{where}.subnet")
            subnet = nets[0]
        domain = None
        if "search_domain" in t:
            try:
                domain = normalise_name(self.string(t["search_domain"], f"{where}.search_domain"))
            except ValueError as exc:
                raise self.fail(f"{where}.search_domain", str(exc)) from None
        return MatchRule(
            gateway=self.address(t["gateway"], f"{where}.gateway") if "gateway" in t else None,
            subnet=subnet,
            search_domain=domain,
            ssid=self.string(t["ssid"], f"{where}.ssid") if "ssid" in t else None,
        )
