"""The effective configuration: the file (or preset), then the location, then the flags.

Every command that runs or shows a configuration builds it here, so the order of the
layers is written once: ``run`` (at start and on every reload), ``plan``, ``config show``,
``check``, ``discover`` and ``resolver-config``. A flag always wins over the location,
and the location over the file (the order once lived in two places and they disagreed).

:func:`layered` is the pure core (a loaded config, a location name, the flags);
:func:`effective_config` loads the file and reads the network for ``--location auto``
first. The daemon calls :func:`layered` itself: it reads the file and the network on its
own schedule (reloads, the location poll).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from blitzdns.config import Config, Endpoint, gateway_problem, load_config
from blitzdns.errors import UsageError

#: ``--location auto``: the location this network matches (none when no rule holds).
AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Flags:
    """The command-line flags that override the file and the location."""

    listen: tuple[str, ...] = ()
    upstreams: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    trust_new_host_key: bool = False


NO_FLAGS = Flags()


def effective_config(
    config_path: Path | None = None,
    *,
    location: str | None = None,
    flags: Flags = NO_FLAGS,
    search: bool = True,
) -> Config:
    """The configuration a command acts on.

    ``config_path`` (else the first default file when ``search``, else the preset alone),
    at ``location`` (a name; ``"auto"``: the one this network matches now; ``None``: no
    location), with ``flags`` on top. A bad file raises :class:`ConfigError`, an unknown
    location or a bad flag :class:`ConfigError` or :class:`UsageError`.
    """
    base = load_config(config_path, search=search)
    return layered(base, detect_location(base) if location == AUTO else location, flags)


def layered(base: Config, location: str | None = None, flags: Flags = NO_FLAGS) -> Config:
    """``base`` (a file merged over its preset) at the named location, flags on top (pure)."""
    return apply_flags(base.at_location(location), flags)


def detect_location(base: Config) -> str | None:
    """The name of the location this network matches now; ``None`` when none does."""
    # Reading the network is for --location auto only: `run` without it never loads it.
    from blitzdns.system import netfacts  # noqa: PLC0415
    from blitzdns.system.locations import match_location  # noqa: PLC0415

    match = match_location(base, netfacts.read_facts())
    return match.name if match else None


def apply_flags(config: Config, flags: Flags) -> Config:
    """``flags`` over ``config``; a malformed value is a :class:`UsageError` naming the flag."""
    dns, tunnel = config.dns, config.tunnel
    if flags.listen:
        dns = replace(dns, listen=_endpoints(flags.listen, "--listen"))
    if flags.upstreams:
        dns = replace(dns, upstreams=_endpoints(flags.upstreams, "--upstream"))
    if flags.gateways:
        for value in flags.gateways:
            problem = gateway_problem(value)
            if problem is not None:
                raise UsageError(f"--gateway {value}: {problem}")
        tunnel = replace(tunnel, gateways=flags.gateways)
    if flags.trust_new_host_key:
        tunnel = replace(tunnel, trust_new_host_key=True)
    return replace(config, dns=dns, tunnel=tunnel)


def _endpoints(values: tuple[str, ...], flag: str) -> tuple[Endpoint, ...]:
    result = []
    for value in values:
        try:
            result.append(Endpoint.parse(value))
        except ValueError as exc:
            raise UsageError(f"{flag} {value}: expected ADDR[:PORT] ({exc})") from None
    return tuple(result)
