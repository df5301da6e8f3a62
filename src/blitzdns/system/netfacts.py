"""Read the network facts that :mod:`blitzdns.system.locations` matches, from the live system.

Linux: ``ip -j route`` / ``ip -j -6 route`` (default gateways), ``ip -j addr`` (addresses),
``resolvectl domain`` (per-link search domains) or else ``/etc/resolv.conf``, and
``nmcli``/``iw`` for the Wi-Fi network name. macOS: ``route -n get default``, ``ifconfig``,
``scutil --dns`` and ``networksetup -getairportnetwork`` (kept small; not tested here).

A missing tool or an odd output never raises: :func:`read_facts` just knows less. The parsers
are pure functions of the command's text, in :mod:`blitzdns.system.parsers`.

Search domains that blitzdns itself installed must not count as facts (the resolvconf
target adds ``search dartmouth.edu``; a rule ``search_domain = "dartmouth.edu"`` would then
match everywhere). So ``resolvectl``'s global line (where the systemd-resolved drop-in
lands) is skipped, and when blitzdns manages /etc/resolv.conf the backed-up original is read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from blitzdns.system.locations import Facts
from blitzdns.system.parsers import (
    parse_airport_network,
    parse_ifconfig,
    parse_ip_addr,
    parse_ip_route,
    parse_iw_dev,
    parse_macos_route,
    parse_nmcli_ssids,
    parse_resolv_conf_search,
    parse_resolvectl_domain,
    parse_scutil_dns,
)
from blitzdns.system.record import original_bytes

#: A stuck tool must not stall the location poll.
COMMAND_TIMEOUT_S = 2.0


def read_facts(root: Path = Path("/")) -> Facts:
    """The facts of the network this machine is on now; never raises for a missing tool."""
    if sys.platform == "darwin":
        return _read_facts_macos()
    gateways = parse_ip_route(_run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
    gateways += parse_ip_route(_run(["ip", "-j", "-6", "route", "show", "default"]) or "[]")
    addresses = parse_ip_addr(_run(["ip", "-j", "addr"]) or "[]")
    domains = _search_domains_linux(root)
    # --rescan no: this runs every few seconds under `run --location auto`; the default
    # (auto) may start a Wi-Fi scan whenever the cached list is older than 30 s.
    wifi = ["nmcli", "-t", "-f", "active,ssid", "dev", "wifi", "list", "--rescan", "no"]
    ssids = parse_nmcli_ssids(_run(wifi) or "")
    if not ssids:
        ssids = parse_iw_dev(_run(["iw", "dev"]) or "")
    return Facts.make(gateways, addresses, domains, ssids)


# --------------------------------------------------------------------------- the live system


def _search_domains_linux(root: Path) -> tuple[str, ...]:
    from_resolved = _run(["resolvectl", "domain"])
    if from_resolved is not None:
        return parse_resolvectl_domain(from_resolved)
    data = original_bytes(Path("/etc/resolv.conf"), root)
    if data is None:
        return ()
    return parse_resolv_conf_search(data.decode("utf-8", "replace"))


def _read_facts_macos() -> Facts:
    addresses = parse_ifconfig(_run(["ifconfig"]) or "")
    ssids: tuple[str, ...] = ()
    for device in ("en0", "en1"):
        ssids = parse_airport_network(_run(["networksetup", "-getairportnetwork", device]) or "")
        if ssids:
            break
    return Facts.make(
        parse_macos_route(_run(["route", "-n", "get", "default"]) or ""),
        addresses,
        parse_scutil_dns(_run(["scutil", "--dns"]) or ""),
        ssids,
    )


def _run(argv: Sequence[str]) -> str | None:
    """The command's stdout, or None when it is missing, fails or hangs."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None
