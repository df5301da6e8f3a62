"""``blitzdns discover USER``: ask DND, through the tunnel, which server holds an account.

It replaces the classic recipe's "open a message, choose verbose headers, read the
Received line". It also reads ``NOTIFYSERV``, the host that sends the user's new-mail
notices. With ``--write`` the answer is recorded in the config file: the tunnel then
protects DND, the user's own BlitzMail server, the bulletin host and the Notify host
(added to the table, with dartnotify on TCP and notify on UDP, when it is not there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from blitzdns.blitzmail import dnd
from blitzdns.config import Config, Host, parse_config
from blitzdns.errors import BlitzdnsError, ConfigError, PermissionProblem, UsageError
from blitzdns.system.install import atomic_write


class DiscoverError(BlitzdnsError):
    """DND could not name one server for the user; the message says why and what to try."""


@dataclass(frozen=True, slots=True)
class Discovery:
    user: str
    account: dnd.Account
    #: The host of the table that stands for the account's server, if any.
    host: Host | None
    #: The host of the table that stands for the account's Notify server, if any.
    notify_host: Host | None = None


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
        account = await dnd.find_blitzserv(address, port, user, timeout=timeout, notify=True)
    except dnd.NoMatch:
        raise DiscoverError(
            f"DND has no one matching {user!r}; check the spelling or try the full name"
        ) from None
    except dnd.Ambiguous as exc:
        listed = ""
        if exc.candidates:
            more = " and more" if exc.truncated else ""
            listed = f": {', '.join(exc.candidates)}{more}"
        raise DiscoverError(
            f"{user!r} matches several people{listed}; give the full name or the nickname"
        ) from None
    except dnd.TooVague:
        raise DiscoverError(
            f"{user!r} is too vague for DND; give more of the name (first and last)"
        ) from None
    except dnd.NoBlitzServ as exc:
        raise DiscoverError(f"{user!r}: {exc}") from None
    except dnd.InvalidRequest as exc:
        raise DiscoverError(f"{user!r} cannot be asked of DND: {exc}") from None
    except dnd.DndUnavailable as exc:
        raise DiscoverError(
            f"DND did not answer at the mouth {address}:{port} ({exc}); "
            "is `blitzdns run` up with a working link (`blitzdns status`)?"
        ) from None
    except dnd.DndError as exc:
        raise DiscoverError(f"DND answered something unexpected: {exc}") from None
    notify_host = host_for_server(config, account.notifyserv) if account.notifyserv else None
    return Discovery(user, account, host_for_server(config, account.blitzserv), notify_host)


_TUNNEL_HEADER = re.compile(r"^\s*\[\s*tunnel\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_HOSTS_KEY = re.compile(r"^\s*hosts\s*=\s*")


def _array_end(lines: list[str], row: int, column: int) -> tuple[int, int] | None:
    """Where the TOML array opening at ``lines[row][column]`` closes: (row, column after).

    Brackets inside strings and comments do not count; None when it never closes.
    """
    depth = 0
    quote = ""
    for r in range(row, len(lines)):
        line = lines[r]
        c = column if r == row else 0
        while c < len(line):
            char = line[c]
            if quote:
                if char == "\\" and quote == '"':
                    c += 1
                elif char == quote:
                    quote = ""
            elif char in "\"'":
                quote = char
            elif char == "#":
                break
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
                if depth == 0:
                    return r, c + 1
            c += 1
    return None


def with_hosts(text: str, hosts: list[str]) -> str:
    """``text`` (a config file) with ``[tunnel] hosts`` set, comments and layout kept.

    An existing ``hosts = [...]`` in ``[tunnel]`` is replaced in place (also when it spans
    lines; a comment after its ``]`` stays, comments inside it go with it); otherwise the
    key goes right under the header, and a file without ``[tunnel]`` gets the section at
    its end.
    """
    value = "[" + ", ".join(f'"{h}"' for h in hosts) + "]"
    lines = text.splitlines()
    start = next((i for i, raw in enumerate(lines) if _TUNNEL_HEADER.match(raw)), None)
    if start is None:
        return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"[tunnel]\nhosts = {value}\n"
    end = next((i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines))
    for i in range(start + 1, end):
        key = _HOSTS_KEY.match(lines[i])
        if key is None or not lines[i][key.end() :].startswith("["):
            continue
        closing = _array_end(lines, i, key.end())
        if closing is None:
            break
        last, after = closing
        lines[i : last + 1] = [lines[i][: key.end()] + value + lines[last][after:]]
        break
    else:
        lines.insert(start + 1, f"hosts = {value}")
    return "\n".join(lines) + "\n"


NOTIFY_SERVICES = ("dartnotify", "notify")
"""What a Notify host offers: posting on TCP 2152, registrations and notices on UDP 2154."""


def notify_host_key(config: Config, server: str) -> str:
    """A key for a new ``[hosts.X]`` naming the Notify server: its first label, made unique."""
    base = re.sub(r"[^a-z0-9_-]", "-", server.split(".", 1)[0]) or "notify"
    taken = {h.key for h in config.all_hosts}
    key, number = base, 2
    while key in taken:
        key, number = f"{base}-{number}", number + 1
    return key


def with_notify_host(text: str, key: str, server: str) -> str:
    """``text`` with a ``[hosts.KEY]`` for the Notify server appended."""
    names = [server, server.split(".", 1)[0]] if "." in server else [server]
    section = (
        f"[hosts.{key}]  # NOTIFYSERV, added by `blitzdns discover --write`\n"
        f"names = [{', '.join(f'{n!r}' for n in names)}]\n"
        f"services = [{', '.join(f'{s!r}' for s in NOTIFY_SERVICES)}]\n"
    ).replace("'", '"')
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section


def write_discovery(config: Config, found: Discovery, path: Path) -> list[str]:
    """Protect only DND, the user's server, the bulletin hosts and the user's Notify server
    (added to the table when missing); write ``path`` atomically."""
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
    target = path.resolve() if path.is_symlink() else path
    original = target.read_text(encoding="utf-8") if target.exists() else ""
    updated = original
    server = found.account.notifyserv
    if server and found.notify_host is None:
        key = notify_host_key(config, server)
        updated = with_notify_host(updated, key, server)
        keep.append(key)
    elif found.notify_host is not None and found.notify_host.key not in keep:
        keep.append(found.notify_host.key)
    updated = with_hosts(updated, keep)
    try:
        written = parse_config(updated, source=path)
    except ConfigError as exc:
        raise DiscoverError(f"not writing {path}: the result would not load ({exc})") from None
    if list(written.tunnel.hosts) != keep:
        raise DiscoverError(
            f"not writing {path}: [tunnel] hosts is set in a form this edit does not "
            f"recognise; set hosts = {keep} there by hand"
        )
    if updated == original:
        return keep
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, updated.encode(), mode)
    except PermissionError:
        raise PermissionProblem(f"cannot write {path} (permission denied); use sudo") from None
    return keep
