"""Pure parsers of what the system says about its network: command outputs and files.

Each is a function of the text alone (tested on recorded outputs); nothing here runs a
command or reads a file. :mod:`blitzdns.system.netfacts` runs the commands and feeds them
here; :mod:`blitzdns.system.resolvers` reads the search line of a resolv.conf.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable

from blitzdns.config import IPAddress
from blitzdns.system.locations import IPInterface


def parse_ip_route(text: str) -> tuple[IPAddress, ...]:
    """Gateways of the default routes in ``ip -j route`` output (multipath included)."""
    found: list[IPAddress] = []
    for route in _json_list(text):
        if route.get("dst") != "default":
            continue
        hops = route.get("nexthops")
        candidates = [route.get("gateway")]
        if isinstance(hops, list):
            candidates += [h.get("gateway") for h in hops if isinstance(h, dict)]
        for text_address in candidates:
            address = _address(text_address)
            if address is not None and address not in found:
                found.append(address)
    return tuple(found)


def parse_ip_addr(text: str) -> tuple[IPInterface, ...]:
    """Global addresses in ``ip -j addr``; loopback and link-local say nothing of the network."""
    found: list[IPInterface] = []
    for link in _json_list(text):
        infos = link.get("addr_info")
        for info in infos if isinstance(infos, list) else ():
            if not isinstance(info, dict) or info.get("scope") in ("host", "link"):
                continue
            try:
                interface = ipaddress.ip_interface(f"{info['local']}/{int(info['prefixlen'])}")
            except (KeyError, TypeError, ValueError):
                continue
            if interface.ip.is_loopback or interface.ip.is_link_local:
                continue
            found.append(interface)
    return tuple(found)


def parse_resolv_conf_search(text: str) -> tuple[str, ...]:
    """A resolv.conf's ``search`` list (or ``domain``); the last such line wins (resolv.conf(5))."""
    domains: tuple[str, ...] = ()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] in ("search", "domain"):
            domains = tuple(w.lower().rstrip(".") for w in words[1:] if w != ".")
    return domains


def parse_resolvectl_domain(text: str) -> tuple[str, ...]:
    """Per-link search domains from ``resolvectl domain``; routing-only ``~`` and Global skipped."""
    found: list[str] = []
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().startswith("Link"):
            continue
        for word in rest.split():
            if not word.startswith("~") and word.rstrip(".") and word not in found:
                found.append(word.lower().rstrip("."))
    return tuple(found)


def parse_nmcli_ssids(text: str) -> tuple[str, ...]:
    """Active Wi-Fi names from ``nmcli -t -f active,ssid dev wifi`` (``\\:`` escapes a colon)."""
    found = []
    for line in text.splitlines():
        active, sep, ssid = line.partition(":")
        if sep and active == "yes" and ssid:
            found.append(re.sub(r"\\(.)", r"\1", ssid))
    return tuple(found)


def parse_iw_dev(text: str) -> tuple[str, ...]:
    """Connected SSIDs from ``iw dev`` (an ``ssid NAME`` line under each associated interface)."""
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("ssid "):
            found.append(stripped[len("ssid ") :])
    return tuple(found)


def parse_macos_route(text: str) -> tuple[IPAddress, ...]:
    """``gateway: 192.168.1.1`` from ``route -n get default``."""
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "gateway":
            address = _address(value.strip())
            return (address,) if address is not None else ()
    return ()


def parse_ifconfig(text: str) -> tuple[IPInterface, ...]:
    """``inet A netmask 0xffffff00`` and ``inet6 A prefixlen N`` lines of BSD ``ifconfig``."""
    found: list[IPInterface] = []
    for line in text.splitlines():
        words = line.split()
        try:
            if len(words) >= 4 and words[0] == "inet" and words[2] == "netmask":
                prefix = bin(int(words[3], 16)).count("1")
                interface: IPInterface = ipaddress.IPv4Interface(f"{words[1]}/{prefix}")
            elif len(words) >= 4 and words[0] == "inet6" and "prefixlen" in words:
                length = words[words.index("prefixlen") + 1]
                interface = ipaddress.IPv6Interface(f"{words[1].split('%')[0]}/{length}")
            else:
                continue
        except (ValueError, IndexError):
            continue
        if not (interface.ip.is_loopback or interface.ip.is_link_local):
            found.append(interface)
    return tuple(found)


def parse_scutil_dns(text: str) -> tuple[str, ...]:
    """``search domain[0] : example.edu`` lines of ``scutil --dns``."""
    found: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().startswith("search domain"):
            domain = value.strip().lower().rstrip(".")
            if domain and domain not in found:
                found.append(domain)
    return tuple(found)


def parse_airport_network(text: str) -> tuple[str, ...]:
    """``Current Wi-Fi Network: NAME`` from ``networksetup -getairportnetwork en0``."""
    prefix = "Current Wi-Fi Network: "
    for line in text.splitlines():
        if line.startswith(prefix):
            return (line[len(prefix) :].strip(),)
    return ()


def _json_list(text: str) -> Iterable[dict[str, object]]:
    try:
        data = json.loads(text)
    except ValueError:
        return []
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _address(text: object) -> IPAddress | None:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
