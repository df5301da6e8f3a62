"""The resolver install record, read side: what blitzdns installed and what was there before.

The record (``ROOT/var/lib/blitzdns/resolver-state.json``) and the backups beside it are
written by :mod:`blitzdns.system.install`; this module only reads them, so the parts that
only need to know what the system looked like before blitzdns touched it (the location
facts, ``run``'s saved upstreams) depend on no installer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blitzdns.errors import BlitzdnsError, PermissionProblem, UsageError

STATE_DIR = "/var/lib/blitzdns"
STATE_FILE = f"{STATE_DIR}/resolver-state.json"
BACKUP_DIR = f"{STATE_DIR}/backup"
STATE_VERSION = 1


class StateCorrupt(UsageError):
    """The state file exists but cannot be read back; the message names it."""


@dataclass(slots=True)
class State:
    """The record of one installation (JSON on disk; see the module docstring)."""

    target: str
    location: str | None = None
    #: system path → {"before": what was there ({"kind": "absent" | "file" | "symlink", …}),
    #: "written": sha256 of what blitzdns wrote (None until written)}.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Directories install created, in creation order (removed in reverse when empty).
    created_dirs: list[str] = field(default_factory=list)
    upstreams: list[str] = field(default_factory=list)
    undo_commands: list[str] = field(default_factory=list)
    command_shell: list[str] = field(default_factory=list)
    reload: list[list[str]] = field(default_factory=list)

    def to_json(self) -> bytes:
        import json  # noqa: PLC0415  (see from_json)

        data = {
            "version": STATE_VERSION,
            "target": self.target,
            "location": self.location,
            "files": self.files,
            "created_dirs": self.created_dirs,
            "upstreams": self.upstreams,
            "undo_commands": self.undo_commands,
            "command_shell": self.command_shell,
            "reload": self.reload,
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, where: Path) -> State:
        # Only where a record exists: every `run` asks whether one does, and most find
        # none (json: ~1.3 ms of the start; preloaded before a privilege drop).
        import json  # noqa: PLC0415

        try:
            raw = json.loads(data)
            if raw.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            return cls(
                target=str(raw["target"]),
                location=raw.get("location"),
                files={str(k): _checked_record(v) for k, v in raw["files"].items()},
                created_dirs=[str(d) for d in raw.get("created_dirs", [])],
                upstreams=[str(u) for u in raw.get("upstreams", [])],
                undo_commands=[str(c) for c in raw.get("undo_commands", [])],
                command_shell=[str(c) for c in raw.get("command_shell", [])],
                reload=[[str(a) for a in argv] for argv in raw.get("reload", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateCorrupt(
                f"{where}: cannot read blitzdns's install record ({exc}); restore the files "
                f"from {where.parent / 'backup'} by hand, then delete {where}"
            ) from None


_BEFORE_FIELDS: dict[str, dict[str, type]] = {
    "absent": {},
    "symlink": {"target": str},
    "file": {"backup": str, "sha256": str, "mode": int, "uid": int, "gid": int},
}


def _checked_record(record: Any) -> dict[str, Any]:
    """One ``files`` entry, checked to hold what :func:`_restore` reads (``ValueError``)."""
    before = record.get("before") if isinstance(record, dict) else None
    kind = before.get("kind") if isinstance(before, dict) else None
    if not isinstance(before, dict) or kind not in _BEFORE_FIELDS:
        raise ValueError(f"a file entry without a valid 'before': {record!r}")
    for name, kind_of in _BEFORE_FIELDS[kind].items():
        if not isinstance(before.get(name), kind_of):
            raise ValueError(f"a {kind} entry without {name!r}: {record!r}")
    return dict(record)


def load_state(root: Path = Path("/"), record_file: str = STATE_FILE) -> State | None:
    """The current installation record (``record_file``: the resolver config's, by default,
    or the guard's), or None when nothing is installed."""
    path = under(root, record_file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise PermissionProblem(f"cannot read {path} (permission denied); use sudo") from None
    return State.from_json(data, path)


def resolver_installed(root: Path = Path("/")) -> bool:
    """Whether a resolver config is installed here (an unreadable record: no)."""
    try:
        return load_state(root) is not None
    except BlitzdnsError:
        return False


def saved_upstreams(root: Path = Path("/")) -> tuple[str, ...]:
    """The nameservers a whole-resolver install replaced, for ``run`` to forward to; () if none.

    Never raises: a missing or unreadable record just means there is nothing saved.
    """
    try:
        state = load_state(root)
    except BlitzdnsError:
        return ()
    return tuple(state.upstreams) if state else ()


def original_bytes(
    path: Path, root: Path = Path("/"), record_file: str = STATE_FILE
) -> bytes | None:
    """``path``'s content as it was before blitzdns touched it (the live file if untouched).

    None when the file did not exist (or cannot be read). A symlink is followed inside
    ``root``, as the system would.
    """
    system_path = str(path)
    try:
        state = load_state(root, record_file)
    except BlitzdnsError:
        state = None
    record = state.files.get(system_path) if state else None
    before = record["before"] if record else None
    try:
        if before is None:
            return read_in_root(root, system_path)
        if before["kind"] == "file":
            return under(root, before["backup"]).read_bytes()
        if before["kind"] == "symlink":
            return read_in_root(root, link_target(system_path, before["target"]))
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- paths under a root


def under(root: Path, system_path: str) -> Path:
    return root / system_path.lstrip("/")


def link_target(system_path: str, target: str) -> str:
    return target if target.startswith("/") else str(Path(system_path).parent / target)


def read_in_root(root: Path, system_path: str, depth: int = 0) -> bytes:
    """Read a file under ``root``, following absolute symlinks inside ``root`` (not the host)."""
    path = under(root, system_path)
    if path.is_symlink() and depth < 8:
        return read_in_root(root, link_target(system_path, os.readlink(path)), depth + 1)
    return path.read_bytes()
