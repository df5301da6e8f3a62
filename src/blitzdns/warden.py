"""The privileged half of the guard: load the guard's rules, and put back the resolver config.

Two jobs need root after ``run`` has dropped to the user: replacing ``table inet
blitzdns`` when the protected names' addresses change, and rewriting a resolver file
(/etc/resolv.conf …) that something else rewrote. Both are done by a :class:`Warden`:

- in the daemon's own process while it keeps root (``--user`` not given, no ``SUDO_USER``);
- otherwise in a small root helper (``python -m blitzdns.warden``), started before the
  privilege drop, that talks to the daemon over a socketpair, one JSON line each way.

Why a helper and not a kept capability: the daemon parses what the network sends it (DNS,
SSH); with CAP_NET_ADMIN it could rewrite any routing or firewall state, and restoring
/etc/resolv.conf would need CAP_DAC_OVERRIDE as well (nearly root). The helper accepts two
requests only, validates them, and renders the nftables rules itself (it never loads text
it was sent): ``{"cmd": "guard", "rules": ...}`` and ``{"cmd": "watch"}``. Its worst
misuse is refusing more outbound connections, inside blitzdns's own table.

The resolver watch restores *exactly what blitzdns installed*: the bytes are taken when
the file still matches the install record's hash (at start, or after a new install), and
a file is written back only while the record still names that hash. Nothing else is
ever written.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import socket
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blitzdns.errors import BlitzdnsError
from blitzdns.system import guard_apply, record
from blitzdns.system import install as installer
from blitzdns.system.guard import (
    Block,
    GuardRules,
    PortBlock,
    build_guard_plan,
    usable_address,
)

log = logging.getLogger("blitzdns.warden")


# --------------------------------------------------------------------------- rules as data


def rules_to_json(rules: GuardRules) -> dict[str, Any]:
    return {
        "blocks": [
            {"host": b.host, "proto": b.proto, "ports": list(b.ports),
             "addresses": [str(a) for a in b.addresses]}
            for b in rules.blocks
        ],
        "everywhere": [
            {"service": p.service, "proto": p.proto, "port": p.port} for p in rules.everywhere
        ],
        "unresolved": list(rules.unresolved),
    }  # fmt: skip


class BadRequest(BlitzdnsError):
    """The helper was sent something it does not do."""


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise BadRequest(f"not a port: {value!r}")
    return value


def _proto(value: Any) -> str:
    if value not in ("tcp", "udp"):
        raise BadRequest(f"not a protocol: {value!r}")
    return str(value)


def _label(value: Any) -> str:
    text = str(value)
    if not text or len(text) > 63 or not all(c.isalnum() or c in "-_." for c in text):
        raise BadRequest(f"not a name: {value!r}")
    return text


def rules_from_json(data: Mapping[str, Any]) -> GuardRules:
    """Rules sent by the daemon, each field checked (addresses must be real ones)."""
    blocks = []
    for item in data.get("blocks", []):
        addresses = []
        for text in item["addresses"]:
            address = usable_address(str(text))
            if address is None:
                raise BadRequest(f"not a real address: {text!r}")
            addresses.append(address)
        blocks.append(
            Block(
                _label(item["host"]),
                _proto(item["proto"]),
                tuple(_port(p) for p in item["ports"]),
                tuple(addresses),
            )
        )
    everywhere = [
        PortBlock(_label(p["service"]), _proto(p["proto"]), _port(p["port"]))
        for p in data.get("everywhere", [])
    ]
    unresolved = tuple(_label(h) for h in data.get("unresolved", []))
    return GuardRules(tuple(blocks), tuple(everywhere), unresolved)


# --------------------------------------------------------------------------- the watch


@dataclass(frozen=True, slots=True)
class Drift:
    """One recorded resolver file that no longer holds what blitzdns wrote."""

    path: str
    change: str  # "a rewrite of", "the removal of", "a symlink over"
    restored: bool
    error: str | None = None

    def describe(self) -> str:
        return f"{self.change} {self.path}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Warden:
    """Loads the guard's rules and watches the resolver install under ``root``."""

    root: Path = Path("/")
    #: system path → (bytes, mode) of what blitzdns wrote, taken while it still matched.
    installed_bytes: dict[str, tuple[bytes, int]] = field(default_factory=dict)

    # -- guard

    def load_guard(self, target: str, rules: GuardRules) -> int:
        """Install ``rules`` as ``guard install --apply`` does: the file rewritten under the
        guard's record (so a reboot that loads it finds the same rules) and the running
        table replaced in one transaction. The number of addresses now refused."""
        plan = build_guard_plan(target, rules)
        if plan.ruleset is None:
            raise BadRequest(f"the {target} guard cannot be refreshed while running")
        guard_apply.install(plan, self.root, apply=True, sudo_hint="blitzdns run")
        return rules.address_count

    # -- resolver watch

    def watched_paths(self) -> list[str]:
        """The files of the resolver install record (their directories are worth an
        inotify watch); [] when nothing is installed."""
        try:
            state = record.load_state(self.root)
        except BlitzdnsError:
            return []
        return sorted(state.files) if state else []

    def check_resolver(self) -> list[Drift]:
        """Compare each recorded file with what blitzdns wrote; put back what changed."""
        try:
            state = record.load_state(self.root)
        except BlitzdnsError as exc:
            log.debug("resolver record unreadable: %s", exc)
            return []
        if state is None:
            self.installed_bytes.clear()
            return []
        drifts = []
        for system_path, entry in sorted(state.files.items()):
            written = entry.get("written")
            if not written:
                continue
            path = record.under(self.root, system_path)
            change = _changed(path, written)
            if change is None:
                self._remember(system_path, path, written)
                continue
            drifts.append(self._restore(system_path, path, written, change))
        return drifts

    def _remember(self, system_path: str, path: Path, written: str) -> None:
        kept = self.installed_bytes.get(system_path)
        if kept is not None and _sha(kept[0]) == written:
            return
        data = path.read_bytes()
        self.installed_bytes[system_path] = (data, stat.S_IMODE(path.lstat().st_mode))

    def _restore(self, system_path: str, path: Path, written: str, change: str) -> Drift:
        kept = self.installed_bytes.get(system_path)
        if kept is None or _sha(kept[0]) != written:
            return Drift(
                system_path, change, False,
                "what blitzdns wrote is not known to this daemon (it changed before the "
                "daemon started); run `blitzdns resolver-config install` again",
            )  # fmt: skip
        data, mode = kept
        try:
            if path.is_symlink() or (path.exists() and not path.is_file()):
                path.unlink()
            installer.atomic_write(path, data, mode)
        except OSError as exc:
            return Drift(system_path, change, False, f"cannot write {path}: {exc.strerror}")
        return Drift(system_path, change, True)


def _changed(path: Path, written: str) -> str | None:
    """How ``path`` differs from what blitzdns wrote (hash ``written``), or None."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return "the removal of"
    if stat.S_ISLNK(info.st_mode):
        return "a symlink over"
    try:
        data = path.read_bytes()
    except OSError:
        return "a rewrite of"
    return None if _sha(data) == written else "a rewrite of"


# --------------------------------------------------------------------------- the helper


def serve(warden: Warden, sock: socket.socket) -> None:
    """Answer requests on ``sock`` until the daemon closes it (or dies)."""
    stream = sock.makefile("rwb", buffering=0)
    for line in stream:
        try:
            reply = {"ok": True, "result": handle(warden, json.loads(line))}
        except (BlitzdnsError, OSError, ValueError, KeyError, TypeError) as exc:
            # Answered, never fatal: the helper must outlive one bad request or file.
            reply = {"ok": False, "error": str(exc)}
        stream.write(json.dumps(reply).encode() + b"\n")


def handle(warden: Warden, request: Mapping[str, Any]) -> Any:
    command = request.get("cmd")
    if command == "guard":
        target = request.get("target")
        if target != "nftables":
            raise BadRequest(f"cannot refresh a {target!r} guard")
        return warden.load_guard(target, rules_from_json(request["rules"]))
    if command == "watch":
        return [
            {"path": d.path, "change": d.change, "restored": d.restored, "error": d.error}
            for d in warden.check_resolver()
        ]
    if command == "paths":
        return warden.watched_paths()
    raise BadRequest(f"unknown request {command!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blitzdns.warden")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--root", type=Path, default=Path("/"))
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    warden = Warden(args.root)
    warden.check_resolver()  # take the installed bytes now, while they still match
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(warden, sock)
    return 0


def spawn(root: Path) -> tuple[socket.socket, int]:
    """Start the root helper (before the privilege drop); the daemon's end and its pid."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "blitzdns.warden", "--fd", str(theirs.fileno()),
         "--root", str(root)],
        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    theirs.close()
    return ours, process.pid


if __name__ == "__main__":
    sys.exit(main())
