"""The built-in ``blitzmail`` preset: Dartmouth's DND, BlitzMail and bulletin hosts.

This is the only place that knows about BlitzMail's names and ports; everything else
reads the generic host and service table (see :mod:`blitzdns.config`). Ports come from
the BlitzMail server's own /etc/services (../shared/reference/blitzmail-protocols.md).

Each preset host is pinned to a fixed offset inside the mouth block, so its mouth address
does not move when hosts are added to or removed from the configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DOMAIN = "dartmouth.edu"

#: The BlitzMail servers are named after reindeer.
REINDEER = ("dasher", "dancer", "prancer", "vixen", "comet", "cupid", "donner", "blitzen")


def _host(short: str, *, services: list[str], offset: int, aliases: tuple[str, ...] = ()) -> Any:
    names = [f"{short}.{DOMAIN}", *(f"{a}.{DOMAIN}" for a in aliases), short, *aliases]
    return {
        "names": names,
        "services": services,
        "remote": f"{short}.{DOMAIN}",
        "mouth_offset": offset,
    }


def preset_table() -> dict[str, Any]:
    """The preset as raw config data, merged under the user's file by :mod:`blitzdns.config`."""
    hosts: dict[str, Any] = {
        "dnd": _host("dnd", services=["dnd"], offset=1, aliases=("kringle",)),
    }
    for index, name in enumerate(REINDEER, start=2):
        hosts[name] = _host(name, services=["mail"], offset=index)
    hosts["newshost"] = _host(
        "newshost", services=["bulletins", "posting"], offset=len(REINDEER) + 2
    )
    return {
        "services": {
            "dnd": {"port": 902},
            "mail": {"port": 2151},
            "bulletins": {"port": 1119},
            "posting": {"port": 119},
            "dartnotify": {"port": 2152},
            "notify": {"port": 2154, "proto": "udp", "step": "notify", "idle_s": 900},
        },
        "hosts": hosts,
    }


def empty_table() -> dict[str, Any]:
    """The ``none`` preset: no services, no hosts; the file defines everything."""
    return {"services": {}, "hosts": {}}


PRESETS: dict[str, Callable[[], dict[str, Any]]] = {"blitzmail": preset_table, "none": empty_table}
