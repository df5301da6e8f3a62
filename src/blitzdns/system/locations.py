"""Which configured location is this network, and why: a pure function of recorded facts.

The facts (default gateways, this machine's addresses, DNS search domains, Wi-Fi names) are
read from the live system by :mod:`blitzdns.system.netfacts`; this module only decides, so
the decision is a table of cases with no system in the loop.

A location's ``match`` rules are alternatives: the first location in file order with any
rule that holds wins. Inside one rule every key given must hold:

- ``gateway``: one of the default routes goes through exactly this address;
- ``subnet``: a default gateway or one of this machine's addresses lies inside it;
- ``search_domain``: a search domain equals it or lies below it
  (``kiewit.dartmouth.edu`` is below ``dartmouth.edu``);
- ``ssid``: the Wi-Fi network name, compared exactly (SSIDs are case-sensitive octets).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blitzdns.config import Config, IPAddress, Location, MatchRule

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass(frozen=True, slots=True)
class Facts:
    """What this machine knows about the network it is on; equal facts mean an unchanged network.

    Every field is sorted and free of duplicates (see :meth:`make`), so two readings of the
    same network compare equal and a daemon can poll cheaply for a change.
    """

    default_gateways: tuple[IPAddress, ...] = ()
    #: Global (non-loopback, non-link-local) addresses with their prefix length.
    addresses: tuple[IPInterface, ...] = ()
    #: Lower case, without a trailing dot.
    search_domains: tuple[str, ...] = ()
    ssids: tuple[str, ...] = ()

    @classmethod
    def make(
        cls,
        default_gateways: Iterable[IPAddress] = (),
        addresses: Iterable[IPInterface] = (),
        search_domains: Iterable[str] = (),
        ssids: Iterable[str] = (),
    ) -> Facts:
        """Normalise (sort, de-duplicate, lower-case the domains) into comparable facts."""
        domains = {d.strip().lower().rstrip(".") for d in search_domains}
        return cls(
            default_gateways=tuple(sorted(set(default_gateways), key=_ip_key)),
            addresses=tuple(sorted(set(addresses), key=lambda a: _ip_key(a.ip))),
            search_domains=tuple(sorted(d for d in domains if d)),
            ssids=tuple(sorted({s for s in ssids if s})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "default_gateways": [str(g) for g in self.default_gateways],
            "addresses": [str(a) for a in self.addresses],
            "search_domains": list(self.search_domains),
            "ssids": list(self.ssids),
        }


@dataclass(frozen=True, slots=True)
class Match:
    """The chosen location, the rule that recognised it and the facts that satisfied that rule."""

    name: str
    rule: MatchRule
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RuleVerdict:
    """One rule checked against the facts: what held and what did not (for explanations)."""

    location: str
    rule: MatchRule
    held: tuple[str, ...]
    failed: tuple[str, ...]

    @property
    def matched(self) -> bool:
        return not self.failed and bool(self.held)


def match_location(config: Config, facts: Facts) -> Match | None:
    """The first location in file order with a rule that holds on ``facts``; None if none."""
    for verdict in evaluate(config.locations, facts):
        if verdict.matched:
            return Match(verdict.location, verdict.rule, verdict.held)
    return None


def evaluate(locations: Mapping[str, Location], facts: Facts) -> list[RuleVerdict]:
    """Every rule of every location (file order) checked against ``facts``."""
    return [
        check_rule(name, rule, facts)
        for name, location in locations.items()
        for rule in location.match
    ]


def check_rule(location: str, rule: MatchRule, facts: Facts) -> RuleVerdict:
    """Check each key the rule gives; a rule with no keys never matches."""
    held: list[str] = []
    failed: list[str] = []

    def record(reason: str | None, failure: str) -> None:
        if reason is None:
            failed.append(failure)
        else:
            held.append(reason)

    if rule.gateway is not None:
        found = rule.gateway in facts.default_gateways
        record(
            f"default gateway is {rule.gateway}" if found else None,
            f"no default route via {rule.gateway}",
        )
    if rule.subnet is not None:
        record(_subnet_reason(rule.subnet, facts), f"nothing of ours is in {rule.subnet}")
    if rule.search_domain is not None:
        record(
            _domain_reason(rule.search_domain, facts.search_domains),
            f"no search domain at or below {rule.search_domain}",
        )
    if rule.ssid is not None:
        record(
            f"Wi-Fi network is {rule.ssid!r}" if rule.ssid in facts.ssids else None,
            f"not on Wi-Fi network {rule.ssid!r}",
        )
    return RuleVerdict(location, rule, tuple(held), tuple(failed))


def describe_rule(rule: MatchRule) -> str:
    """``gateway=…, subnet=…`` as written in the config."""
    parts = []
    for key in ("gateway", "subnet", "search_domain", "ssid"):
        value = getattr(rule, key)
        if value is not None:
            parts.append(f"{key}={value!r}" if key == "ssid" else f"{key}={value}")
    return ", ".join(parts) or "(empty rule)"


def _subnet_reason(
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network, facts: Facts
) -> str | None:
    for gateway in facts.default_gateways:
        if gateway.version == subnet.version and gateway in subnet:
            return f"default gateway {gateway} is in {subnet}"
    for address in facts.addresses:
        if address.version == subnet.version and address.ip in subnet:
            return f"address {address} is in {subnet}"
    return None


def _domain_reason(wanted: str, domains: Iterable[str]) -> str | None:
    wanted = wanted.lower().rstrip(".")
    for domain in domains:
        if domain == wanted:
            return f"search domain is {domain}"
        if domain.endswith("." + wanted):
            return f"search domain {domain} is within {wanted}"
    return None


def _ip_key(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))
