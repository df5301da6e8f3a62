"""Apply a resolver :class:`~blitzdns.system.resolvers.Plan` (or the leak guard's
:class:`~blitzdns.system.guard.GuardPlan`) to a machine, and undo it exactly.

Each keeps its own record (``record_file``: the resolver config's ``resolver-state.json``,
the guard's ``guard-state.json``), so either is installed and removed without the other;
both share the lock, the backups and the guarantees below.

Guarantees:

- **Atomic writes.** Each file is written beside its target (``.NAME.blitzdns-new``), fsynced,
  then renamed over it and the directory fsynced: a crash leaves the old file or the new one,
  never half of either (a stale ``-new`` file is overwritten by the next run).
- **Backups first.** Before a file is replaced, its bytes (or its symlink target, or the fact
  that it did not exist) are saved under ``ROOT/var/lib/blitzdns/backup`` and recorded in the
  state file ``ROOT/var/lib/blitzdns/resolver-state.json``, which is written *before* the
  first rename, so every file that may have changed is always on record.
- **Idempotent.** Installing the same plan again writes nothing. Installing another plan
  (another target or location) restores the files the new plan no longer writes.
- **Exact uninstall.** Every file is restored byte for byte with its mode (symlinks as
  symlinks), files blitzdns created are removed, and so are the directories it created, when
  empty. With nothing installed, uninstall does nothing.
- **No half-changes for lack of permission.** Every path is checked before anything is
  written; the error names the file and the ``sudo`` command line.
- **One at a time.** Install and uninstall hold an exclusive lock (``flock``) on the root
  directory itself (:func:`locked`; the commands hold it from reading the record to running
  ``--apply``'s commands), so two of them (say a network hook's and the user's) never
  interleave; a second one waits up to
  ``LOCK_WAIT_S`` and then says so. Locking the directory needs no lock file, so an
  uninstall still leaves the tree as it found it.

``--root DIR`` (``root``) applies everything under another directory, for tests and images.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from blitzdns.errors import (
    DISK_ERRNOS,
    BlitzdnsError,
    CannotWrite,
    PermissionProblem,
    UsageError,
    cannot_write,
)
from blitzdns.system.record import (
    BACKUP_DIR,
    STATE_DIR,
    STATE_FILE,
    State,
    StateCorrupt,
    load_state,
    under,
)
from blitzdns.system.resolvers import FileWrite

TEMP_SUFFIX = ".blitzdns-new"


class ApplyFailed(BlitzdnsError):
    """A reload or NRPT command (``--apply``) failed or its tool is missing."""


@dataclass(frozen=True, slots=True)
class Change:
    """What install or uninstall did to one path (``created``, ``replaced``, ``unchanged``,
    ``restored``, ``removed``)."""

    path: str
    action: str

    def __str__(self) -> str:
        return f"{self.action:<9} {self.path}"


# --------------------------------------------------------------------------- queries


def detect_target(root: Path = Path("/"), platform: str = sys.platform) -> str:
    """The target ``auto`` means here: the split-DNS mechanism the running system uses."""
    return detect_target_why(root, platform)[0]


def detect_target_why(root: Path = Path("/"), platform: str = sys.platform) -> tuple[str, str]:
    """:func:`detect_target` and the fact that decided it (for ``resolver-config`` to say)."""
    if platform == "darwin":
        return "macos", "this is macOS"
    if platform.startswith("win"):
        return "nrpt", "this is Windows"
    resolved = under(root, "/run/systemd/resolve")
    if resolved.is_dir():
        return "systemd-resolved", f"{resolved} exists: systemd-resolved runs"
    manager = under(root, "/run/NetworkManager")
    if manager.is_dir():
        return "networkmanager", f"{manager} exists: NetworkManager runs"
    return "resolvconf", "neither systemd-resolved nor NetworkManager runs"


# --------------------------------------------------------------------------- install


class Busy(BlitzdnsError):
    """Another install or uninstall holds the lock past ``LOCK_WAIT_S``."""


LOCK_WAIT_S = 10.0
LOCK_POLL_S = 0.05


def flock_within(fd: int, wait_s: float, poll_s: float = LOCK_POLL_S) -> bool:
    """Take an exclusive ``flock`` on ``fd``, retrying for up to ``wait_s``; False when
    another process still holds it then (POSIX only)."""
    import fcntl  # noqa: PLC0415  (POSIX only: the NRPT target runs on Windows)

    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


_HELD: set[str] = set()
"""Roots whose lock this process holds (so that a caller holding it can call install)."""


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the install lock of ``root`` (``flock`` on the directory), waiting up to
    ``LOCK_WAIT_S``; re-entrant within this process. A command holds it from reading the
    record to running the commands that go with it. Windows has no ``flock``: there the
    lock is not taken."""
    require_root(root)
    key = os.path.realpath(root)
    if key in _HELD or sys.platform == "win32":
        yield
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not flock_within(fd, LOCK_WAIT_S):
            raise Busy(
                f"another blitzdns is changing the resolver config under {root} "
                f"(it holds the lock on {root}); try again when it has finished"
            )
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)


class Installable(Protocol):
    """What :func:`install` applies: a resolver :class:`~blitzdns.system.resolvers.Plan` or
    the guard's :class:`~blitzdns.system.guard.GuardPlan`."""

    @property
    def target(self) -> str: ...
    @property
    def files(self) -> tuple[FileWrite, ...]: ...
    @property
    def upstreams(self) -> tuple[str, ...]: ...
    @property
    def undo_commands(self) -> tuple[str, ...]: ...
    @property
    def command_shell(self) -> tuple[str, ...]: ...
    @property
    def reload(self) -> tuple[tuple[str, ...], ...]: ...


def install(
    plan: Installable,
    root: Path = Path("/"),
    *,
    sudo_hint: str,
    location: str | None = None,
    record_file: str = STATE_FILE,
) -> list[Change]:
    """Apply ``plan`` under ``root``, recorded in ``record_file`` (the resolver config's
    record, or the guard's); see the module docstring for the guarantees."""
    with locked(root):
        return _install(plan, root, sudo_hint=sudo_hint, location=location, record_file=record_file)


def _install(
    plan: Installable, root: Path, *, sudo_hint: str, location: str | None, record_file: str
) -> list[Change]:
    state = load_state(root, record_file)
    wanted = {f.path: f for f in plan.files}
    dropped = [p for p in (state.files if state else {}) if p not in wanted]
    _check_writable(root, [*wanted, *dropped, record_file], sudo_hint)

    new_state = State(
        target=plan.target,
        location=location,
        files=dict(state.files) if state else {},
        created_dirs=list(state.created_dirs) if state else [],
        upstreams=list(plan.upstreams),
        undo_commands=list(plan.undo_commands),
        command_shell=list(plan.command_shell) if plan.undo_commands else [],
        reload=[list(argv) for argv in plan.reload],
    )
    pending = [f for f in plan.files if not _holds(under(root, f.path), f.content, f.mode)]
    same_record = state is not None and new_state.to_json() == state.to_json()
    if same_record and not pending and not dropped:
        return [Change(p, "unchanged") for p in wanted]

    changes: list[Change] = []
    for item in plan.files:
        if item.path not in new_state.files:
            before = _back_up(root, item.path, new_state)
            new_state.files[item.path] = {"before": before, "written": None}
    # The record lists every file that may change before the first one does.
    _write_state(root, new_state, record_file)

    for path in dropped:
        _restore(root, path, new_state.files.pop(path)["before"])
        changes.append(Change(path, "restored"))
    _remove_empty_dirs(root, new_state)

    for item in plan.files:
        record = new_state.files[item.path]
        record["written"] = hashlib.sha256(item.content).hexdigest()
        if item not in pending:
            changes.append(Change(item.path, "unchanged"))
            continue
        _make_parents(root, item.path, new_state)
        atomic_write(under(root, item.path), item.content, item.mode)
        kind = record["before"]["kind"]
        changes.append(Change(item.path, "created" if kind == "absent" else "replaced"))
    _write_state(root, new_state, record_file)
    return changes


def uninstall(
    root: Path = Path("/"), *, sudo_hint: str, record_file: str = STATE_FILE
) -> tuple[list[Change], State | None]:
    """Restore everything the recorded install changed; harmless when nothing is installed.

    Returns the changes and the record that was undone (its undo commands and reload are
    for the caller to run with ``--apply``).
    """
    with locked(root):
        return _uninstall(root, sudo_hint=sudo_hint, record_file=record_file)


def _uninstall(
    root: Path, *, sudo_hint: str, record_file: str
) -> tuple[list[Change], State | None]:
    state = load_state(root, record_file)
    if state is None:
        return [], None
    _check_writable(root, [*state.files, record_file], sudo_hint)
    changes = []
    for path, entry in list(state.files.items()):
        edited = _edited_since_install(under(root, path), entry.get("written"))
        _restore(root, path, entry["before"])
        action = "removed" if entry["before"]["kind"] == "absent" else "restored"
        changes.append(Change(path, action + (" (it was edited after install)" if edited else "")))
        del state.files[path]
        _write_state(root, state, record_file)
    _remove_empty_dirs(root, state)
    under(root, record_file).unlink()
    for directory in reversed(state.created_dirs):
        _rmdir_if_empty(under(root, directory))
    return changes, state


# --------------------------------------------------------------------------- --apply


def require_tools(argvs: Iterable[Sequence[str]], *, what: str) -> None:
    """Refuse (before anything runs or changes) when a command's program is not installed."""
    missing = sorted({argv[0] for argv in argvs if shutil.which(argv[0]) is None})
    if missing:
        raise ApplyFailed(
            f"--apply needs {', '.join(missing)} to {what}, and this system has no such "
            "command; nothing was changed. Run without --apply and use the printed commands "
            "where they exist"
        )


def run_commands(argvs: Sequence[Sequence[str]], *, what: str) -> list[str]:
    """Run each command in order (after :func:`require_tools`); stop at the first failure.

    Returns one line per command run; raises :class:`ApplyFailed` naming the failed command.
    """
    require_tools(argvs, what=what)
    done = []
    for argv in argvs:
        try:
            result = subprocess.run(
                list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ApplyFailed(f"{shlex.join(argv)} could not start: {exc}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout or "").strip().splitlines()
            raise ApplyFailed(
                f"{shlex.join(argv)} failed (exit {result.returncode})"
                + (f": {detail[-1]}" if detail else "")
            )
        done.append(shlex.join(argv))
    return done


def shell_commands(shell: Sequence[str], lines: Iterable[str]) -> list[list[str]]:
    """Each line as an argv for ``shell`` (PowerShell: ``powershell … -Command LINE``).

    ``pwsh`` stands in for ``powershell`` where only PowerShell 7 is installed.
    """
    prefix = list(shell)
    if prefix[:1] == ["powershell"] and not shutil.which("powershell") and shutil.which("pwsh"):
        prefix[0] = "pwsh"
    return [[*prefix, line] for line in lines]


# --------------------------------------------------------------------------- file primitives


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` beside ``path``, fsync, rename over it, fsync the directory.

    A read-only file system, a full disk or an exhausted quota raises :class:`CannotWrite`
    naming ``path``; ``path`` itself is then untouched and no half-written file is left.
    """
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise cannot_write(exc, path) from None
        raise
    fsync_dir(path.parent)


def _atomic_symlink(path: Path, target: str) -> None:
    temp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    temp.unlink(missing_ok=True)
    os.symlink(target, temp)
    os.replace(temp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _holds(path: Path, content: bytes, mode: int) -> bool:
    try:
        info = path.lstat()
        return (
            stat.S_ISREG(info.st_mode)
            and stat.S_IMODE(info.st_mode) == mode
            and path.read_bytes() == content
        )
    except OSError:
        return False


def _back_up(root: Path, system_path: str, state: State) -> dict[str, Any]:
    """Save what is at ``system_path`` now; return its record for the state file."""
    path = under(root, system_path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {"kind": "absent"}
    if stat.S_ISLNK(info.st_mode):
        return {"kind": "symlink", "target": os.readlink(path)}
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{path} is not a regular file; blitzdns will not replace it")
    data = path.read_bytes()
    backup = f"{BACKUP_DIR}{system_path}"
    _make_parents(root, backup, state)
    atomic_write(under(root, backup), data, 0o600)
    return {
        "kind": "file",
        "backup": backup,
        "mode": stat.S_IMODE(info.st_mode),
        "uid": info.st_uid,
        "gid": info.st_gid,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def _restore(root: Path, system_path: str, before: dict[str, Any]) -> None:
    path = under(root, system_path)
    kind = before["kind"]
    if kind == "absent":
        path.unlink(missing_ok=True)
        return
    if kind == "symlink":
        _atomic_symlink(path, before["target"])
        return
    backup = under(root, before["backup"])
    try:
        data = backup.read_bytes()
    except FileNotFoundError:
        raise StateCorrupt(
            f"the backup {backup} of {system_path} is missing; nothing more was restored "
            f"(restore {system_path} by hand, then delete {under(root, STATE_FILE)})"
        ) from None
    if hashlib.sha256(data).hexdigest() != before["sha256"]:
        raise StateCorrupt(
            f"the backup {backup} of {system_path} does not match its record; "
            "nothing more was restored"
        )
    atomic_write(path, data, int(before["mode"]))
    with contextlib.suppress(PermissionError):
        os.chown(path, int(before["uid"]), int(before["gid"]))
    backup.unlink()


def _edited_since_install(path: Path, written: str | None) -> bool:
    """Whether something else rewrote the file after blitzdns did (said in uninstall's output)."""
    if written is None:
        return False
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() != written
    except OSError:
        return True


def require_root(root: Path) -> None:
    if not root.is_dir():
        raise UsageError(f"--root {root}: not a directory")


def _make_parents(root: Path, system_path: str, state: State) -> None:
    missing = []
    parent = Path(system_path).parent
    while parent != parent.parent and not under(root, str(parent)).exists():
        missing.append(str(parent))
        parent = parent.parent
    for directory in reversed(missing):
        under(root, directory).mkdir(mode=0o755)
        state.created_dirs.append(directory)


def _remove_empty_dirs(root: Path, state: State) -> None:
    """Drop created directories that nothing of ours needs any more, deepest first."""
    needed = {str(Path(p).parent) for p in state.files} | {STATE_DIR, BACKUP_DIR}
    for directory in reversed(list(state.created_dirs)):
        if any(n == directory or n.startswith(directory + "/") for n in needed):
            continue
        if _rmdir_if_empty(under(root, directory)):
            state.created_dirs.remove(directory)


def _rmdir_if_empty(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _write_state(root: Path, state: State, record_file: str = STATE_FILE) -> None:
    _make_parents(root, record_file, state)
    path = under(root, record_file)
    data = state.to_json()
    if not _holds(path, data, 0o600):
        atomic_write(path, data, 0o600)


def _read_only(directory: Path) -> bool:
    """Whether ``directory`` is on a file system mounted read-only (POSIX; else False)."""
    statvfs = getattr(os, "statvfs", None)
    return statvfs is not None and bool(statvfs(directory).f_flag & os.ST_RDONLY)


def _check_writable(root: Path, system_paths: Iterable[str], sudo_hint: str) -> None:
    """Raise PermissionProblem (naming the file) unless every path can be replaced."""
    for system_path in system_paths:
        path = under(root, system_path)
        directory = path.parent
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not directory.is_dir():
            raise UsageError(f"{directory} is not a directory; cannot write {path}")
        if _read_only(directory):
            raise CannotWrite(
                f"cannot write {path}: the file system is read-only; nothing was changed"
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionProblem(
                f"cannot write {path} (permission denied); nothing was changed. "
                f"Run it as root: sudo {sudo_hint}"
            )
