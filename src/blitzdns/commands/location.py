"""``blitzdns location``: which configured location matches this network now, and why.

Prints the facts read from the system, every rule of every location checked against them
(what held, what did not), the winner, and the overrides it applies. ``--location NAME``
forces a location (``auto``: the detected one) and still shows what the network says.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from blitzdns.commands.options import (
    ConfigOption,
    GatewayOption,
    JsonOption,
    UpstreamOption,
    flags,
)
from blitzdns.config import Config, load_config
from blitzdns.effective import NO_FLAGS, Flags, layered
from blitzdns.system.locations import Facts, describe_rule, evaluate, match_location
from blitzdns.system.netfacts import read_facts

LocationOption = Annotated[
    str | None,
    typer.Option("--location", help="Force this location ('auto': the detected one)."),
]


def location(
    config_path: ConfigOption = None,
    forced: LocationOption = None,
    gateway: GatewayOption = None,
    upstream: UpstreamOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show which location matches this network now, and why (the facts and the rule).

    The effective settings it ends with are the location's, then the flags' (as in run).
    """
    config = load_config(config_path)
    facts = read_facts()
    report = location_report(config, facts, forced, flags(None, upstream, gateway))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo("\n".join(render_report(report)))


def location_report(
    config: Config, facts: Facts, forced: str | None, overrides: Flags = NO_FLAGS
) -> dict[str, Any]:
    """Everything ``location`` prints, as plain data (pure: facts in, report out)."""
    match = match_location(config, facts)
    chosen_name = match.name if match else None
    if forced is not None and forced != "auto":
        chosen_name = config.at_location(forced).location
    effective = layered(config, chosen_name, overrides)
    return {
        "facts": facts.to_dict(),
        "rules": [
            {
                "location": v.location,
                "rule": describe_rule(v.rule),
                "matched": v.matched,
                "held": list(v.held),
                "failed": list(v.failed),
            }
            for v in evaluate(config.locations, facts)
        ],
        "match": {
            "location": match.name,
            "rule": describe_rule(match.rule),
            "reasons": list(match.reasons),
        }
        if match
        else None,
        # Locations with no match rule: only --location NAME selects them.
        "unmatched": [name for name, loc in config.locations.items() if not loc.match],
        "forced": forced if forced not in (None, "auto") else None,
        "location": chosen_name,
        "effective": {
            "gateways": list(effective.tunnel.gateways),
            "upstreams": [str(e) for e in effective.dns.upstreams],
            "hosts": [h.key for h in effective.hosts],
            "resolver_target": effective.resolver_target,
        },
    }


FACT_LABELS = (
    ("default_gateways", "default gateways"),
    ("addresses", "addresses"),
    ("search_domains", "search domains"),
    ("ssids", "Wi-Fi networks"),
)


def render_report(report: dict[str, Any]) -> list[str]:
    """The report as the lines ``blitzdns location`` prints."""
    lines = ["The network, as this machine sees it:"]
    for key, label in FACT_LABELS:
        lines.append(f"  {label + ':':<18}{', '.join(report['facts'][key]) or '(none found)'}")
    lines.append("")
    unmatched = report.get("unmatched") or []
    if not report["rules"] and not unmatched:
        lines.append("No [locations.*] in the configuration: the base configuration applies.")
    if report["rules"] or unmatched:
        lines.append("Rules, in file order (the first location with a rule that holds wins):")
        for rule in report["rules"]:
            verdict = "matches" if rule["matched"] else "no"
            why = rule["held"] if rule["matched"] else rule["failed"]
            lines.append(f"  {rule['location']}: {rule['rule']} → {verdict} ({'; '.join(why)})")
    for name in unmatched:
        lines.append(f"  {name}: no match rule; only `--location {name}` selects it")
    lines.append("")
    match = report["match"]
    detected = match["location"] if match else None
    if report["forced"]:
        lines.append(
            f"Location: {report['forced']} (forced by --location; the network says "
            f"{detected or 'no location'})"
        )
    elif match:
        lines.append(f"Location: {detected}, because {'; '.join(match['reasons'])}")
    else:
        lines.append("Location: none matches; the base configuration applies")
    effective = report["effective"]
    lines += [
        f"  gateways:        {', '.join(effective['gateways']) or '(none)'}",
        f"  upstreams:       {', '.join(effective['upstreams']) or '(detected at start)'}",
        f"  protected hosts: {', '.join(effective['hosts']) or '(none)'}",
        f"  resolver target: {effective['resolver_target']}",
    ]
    return lines
