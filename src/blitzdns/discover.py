"""``blitzdns discover USER``: ask DND, through the tunnel, which server holds an account.

It replaces the classic recipe's "open a message, choose verbose headers, read the
Received line". With ``--write`` the answer is recorded in the config file: the tunnel
then protects DND, the user's own BlitzMail server and the bulletin host only.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blitzdns.blitzmail import dnd
from blitzdns.config import Config, Host, parse_config
from blitzdns.errors import BlitzdnsError, ConfigError, UsageError


class DiscoverError(BlitzdnsError):
    """DND could not name one server for the user; the message says why and what to try."""


@dataclass(frozen=True, slots=True)
class Discovery:
    user: str
    account: dnd.Account
    #: The host of the table that stands for the account's server, if any.
    host: Host | None


def dnd_endpoint(config: Config) -> tuple[str, int]:
    """The mouth that reaches DND: the protected host offering the ``dnd`` service."""
    for host in config.hosts:
        if "dnd" in host.services:
            return str(host.mouth), config.services["dnd"].port
    raise UsageError("no protected host offers the 'dnd' service; check `blitzdns plan`")


def host_for_server(config: Config, server: str) -> Host | None:
    """The table's host whose names include ``server`` (a BLITZSERV host name)."""
    wanted = server.lower().rstrip(".")
    for host in config.all_hosts:
        if wanted in host.names:
            return host
    return None


async def discover(config: Config, user: str, *, timeout: float = 10.0) -> Discovery:
    """Look ``user`` up in DND through the mouth; translate every DND outcome to one line."""
    address, port = dnd_endpoint(config)
    try:
        account = await dnd.find_blitzserv(address, port, user, timeout=timeout)
    except dnd.NoMatch:
        raise DiscoverError(
            f"DND has no one matching {user!r}; check the spelling or try the full name"
        ) from None
    except dnd.Ambiguous as exc:
        names = getattr(exc, "candidates", ()) or ()
        listed = f": {', '.join(names)}" if names else ""
        raise DiscoverError(
            f"{user!r} matches several people{listed}; give the full name or the nickname"
        ) from None
    except dnd.TooVague:
        raise DiscoverError(
            f"{user!r} is too vague for DND; give more of the name (first and last)"
        ) from None
    except dnd.NoBlitzServ as exc:
        raise DiscoverError(f"{user!r}: {exc}") from None
    except dnd.DndUnavailable as exc:
        raise DiscoverError(
            f"DND did not answer at the mouth {address}:{port} ({exc}); "
            "is `blitzdns run` up with a working link (`blitzdns status`)?"
        ) from None
    except dnd.DndError as exc:
        raise DiscoverError(f"DND answered something unexpected: {exc}") from None
    return Discovery(user, account, host_for_server(config, account.blitzserv))


_TUNNEL_HEADER = re.compile(r"^\s*\[tunnel\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_HOSTS_LINE = re.compile(r"^\s*hosts\s*=")


def with_hosts(text: str, hosts: list[str]) -> str:
    """``text`` (a config file) with ``[tunnel] hosts`` set, comments and layout kept."""
    line = "hosts = [" + ", ".join(f'"{h}"' for h in hosts) + "]"
    lines = text.splitlines()
    start = next((i for i, raw in enumerate(lines) if _TUNNEL_HEADER.match(raw)), None)
    if start is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"[tunnel]\n{line}\n"
    end = next((i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines))
    for i in range(start + 1, end):
        if _HOSTS_LINE.match(lines[i]) and lines[i].rstrip().endswith("]"):
            lines[i] = line
            break
    else:
        lines.insert(start + 1, line)
    return "\n".join(lines) + "\n"


def write_discovery(config: Config, found: Discovery, path: Path) -> list[str]:
    """Protect only DND, the user's server and the bulletin hosts; write ``path`` atomically."""
    if found.host is None:
        raise DiscoverError(
            f"{found.account.blitzserv} is not in the host table; add a [hosts.X] section "
            "for it first (see `blitzdns config init`)"
        )
    keep = [
        h.key
        for h in config.all_hosts
        if h.key == found.host.key or not ({"mail"} & set(h.services))
    ]
    original = path.read_text(encoding="utf-8") if path.exists() else ""
    updated = with_hosts(original, keep)
    try:
        parse_config(updated, source=path)
    except ConfigError as exc:
        raise DiscoverError(f"not writing {path}: the result would not load ({exc})") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(updated)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except PermissionError:
        from blitzdns.errors import PermissionProblem

        raise PermissionProblem(f"cannot write {path} (permission denied); use sudo") from None
    return keep
