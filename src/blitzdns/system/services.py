"""Service files that start ``blitzdns run`` at boot: a systemd unit, a launchd plist.

The renderers are pure: a :class:`ServicePlan` in, the file's bytes out. :func:`install`
writes exactly one file, atomically, under ``plan.root`` (``/`` unless ``--root``), and
records nothing else; :func:`uninstall` removes exactly that file. Neither creates or
removes directories: /etc/systemd/system and /Library/LaunchDaemons exist on the systems
that use them, and a tree we did not make stays as it was. A file at our path that
blitzdns did not write is never overwritten or removed.

**systemd** (systemd.service(5), systemd.exec(5)): ``Type=notify`` (the daemon sends
READY=1 once both halves are up), ``Restart=on-failure``, ``ExecReload`` sends SIGHUP.
It runs as ``User=`` from the start, with CAP_NET_BIND_SERVICE as its only capability
(``AmbientCapabilities=`` plus ``CapabilityBoundingSet=``), so it never holds root.
The sandbox keeps what an SSH client needs: ~/.ssh is readable (``ProtectHome=read-only``),
the rest of the file system is read-only (``ProtectSystem=strict``), /tmp is private, and
``RuntimeDirectory=blitzdns`` gives it /run/blitzdns for the control socket.

**launchd** (launchd.plist(5)): a LaunchDaemon runs as root; the daemon binds its ports,
then drops to ``--user`` itself. ``KeepAlive`` restarts it after a failure
(``SuccessfulExit = false``, like ``Restart=on-failure``), ``RunAtLoad`` starts it at boot.
"""

from __future__ import annotations

import contextlib
import enum
import os
import plistlib
import pwd
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from blitzdns.errors import ConfigError, PermissionProblem, UsageError
from blitzdns.system.install import atomic_write, fsync_dir

UNIT_NAME = "blitzdns.service"
LAUNCHD_LABEL = "io.github.blitzdns"
SYSTEMD_DIR = Path("etc/systemd/system")
LAUNCHD_DIR = Path("Library/LaunchDaemons")
LAUNCHD_LOG = "/Library/Logs/blitzdns.log"
SYSTEM_CONFIG = Path("/etc/blitzdns/config.toml")
UNIT_MARKER = "# Written by `blitzdns service install`; `blitzdns service uninstall` removes it."

_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?\Z")  # \Z: "alice\n" is not one


class Target(enum.StrEnum):
    """The service manager a file is written for."""

    SYSTEMD = "systemd"
    LAUNCHD = "launchd"

    @classmethod
    def native(cls) -> Target:
        return cls.LAUNCHD if sys.platform == "darwin" else cls.SYSTEMD


class Outcome(enum.Enum):
    """What :func:`install` or :func:`uninstall` did."""

    WROTE = "wrote"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"
    REMOVED = "removed"
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """Everything a service file says, and where it goes."""

    target: Target
    #: The command that starts blitzdns, absolute: usually the installed ``blitzdns`` script.
    program: tuple[str, ...]
    #: The configuration file ``run`` is given (absolute).
    config: Path
    #: The user the daemon runs as; None: root.
    user: str | None
    #: Files go under this directory instead of ``/`` (tests, images, chroots).
    root: Path = Path("/")

    @property
    def relative_path(self) -> Path:
        """Where the file lives on the target system."""
        if self.target is Target.SYSTEMD:
            return SYSTEMD_DIR / UNIT_NAME
        return LAUNCHD_DIR / f"{LAUNCHD_LABEL}.plist"

    @property
    def path(self) -> Path:
        """Where :func:`install` writes: :attr:`relative_path` under :attr:`root`."""
        return self.root / self.relative_path

    def render(self) -> bytes:
        if self.target is Target.SYSTEMD:
            return render_systemd_unit(self.program, self.config, self.user).encode()
        return render_launchd_plist(self.program, self.config, self.user)

    def command_line(self, verb: str) -> str:
        """The ``blitzdns service VERB …`` line that reproduces this plan (for hints)."""
        words = ["blitzdns", "service", verb, "--target", self.target.value]
        if self.root != Path("/"):
            words += ["--root", str(self.root)]
        if self.user:
            words += ["--user", self.user]
        words += ["--config", str(self.config)]
        return shlex.join(words)


# --------------------------------------------------------------------------- renderers


def systemd_quote(word: str) -> str:
    """One ExecStart= word, per systemd.syntax(7) and systemd.service(5) "Command lines".

    ``%`` starts a specifier and ``$`` a variable, so both are doubled; a word with
    white space, quotes or backslashes is double-quoted with C-style escapes.
    """
    text = word.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def run_arguments(config: Path, user: str | None = None) -> list[str]:
    """The arguments after the program: ``run --config FILE [--user NAME]``."""
    return ["run", "--config", str(config), *(["--user", user] if user else [])]


def render_systemd_unit(program: tuple[str, ...], config: Path, user: str | None) -> str:
    """The unit file; ``user`` None runs as root (still with the one capability only)."""
    exec_start = " ".join(systemd_quote(w) for w in (*program, *run_arguments(config)))
    if user:
        who = f"User={user}"
    else:
        who = "# No User=: runs as root. `--user NAME` makes it run as NAME with your ~/.ssh."
    return f"""{UNIT_MARKER}
[Unit]
Description=blitzdns: DNS stub and SSH tunnel for legacy cleartext services
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# A config error (exit {ConfigError.exit_code}): starting again will not fix it, so stop.
RestartPreventExitStatus={ConfigError.exit_code}
TimeoutStopSec=5s
{who}
# Ports below 1024 (53, 902, 119…) without root, and no other privilege.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
# /run/blitzdns/control.sock is the status socket (`blitzdns status`).
RuntimeDirectory=blitzdns
RuntimeDirectoryMode=0700
# Everything read-only, ~/.ssh included (config, keys, known_hosts are read, not written).
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictSUIDSGID=yes
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""


def render_launchd_plist(program: tuple[str, ...], config: Path, user: str | None) -> bytes:
    """The LaunchDaemon plist (XML, keys sorted, so the bytes are stable)."""
    document = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [*program, *run_arguments(config, user)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": LAUNCHD_LOG,
        "StandardErrorPath": LAUNCHD_LOG,
    }
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=True)


def written_by_us(target: Target, content: bytes) -> bool:
    """Whether ``content`` is a file :func:`install` could have written (any version)."""
    if target is Target.SYSTEMD:
        return content.startswith(UNIT_MARKER.encode())
    try:
        document = plistlib.loads(content)
    except Exception:
        return False
    return isinstance(document, dict) and document.get("Label") == LAUNCHD_LABEL


# --------------------------------------------------------------------------- choosing


def find_program() -> tuple[str, ...]:
    """The absolute command that starts this blitzdns.

    The script this process was started as, else the one beside the interpreter (a
    virtualenv), else the one on PATH, else ``python -m blitzdns``.
    """
    started_as = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates = [
        started_as if started_as is not None and started_as.name == "blitzdns" else None,
        Path(sys.executable).parent / "blitzdns",
        Path(found) if (found := shutil.which("blitzdns")) else None,
    ]
    for candidate in candidates:
        if candidate is not None and candidate.is_file() and os.access(candidate, os.X_OK):
            return (str(candidate.absolute()),)
    return (str(Path(sys.executable).absolute()), "-m", "blitzdns")


def choose_user(explicit: str | None, *, check_exists: bool = True) -> str | None:
    """``--user``, else ``SUDO_USER``, else whoever runs this; None when that is root.

    ``check_exists``: the name must be a user of this machine (off when the file is for
    another system, under ``--root``).
    """
    if explicit is not None:
        name = explicit
        if not _USER_NAME.match(name):
            raise UsageError(f"--user {name!r}: not a valid user name")
        if check_exists:
            try:
                pwd.getpwnam(name)
            except KeyError:
                raise UsageError(f"--user {name}: no such user on this machine") from None
    else:
        name = os.environ.get("SUDO_USER", "")
        if not name:
            try:
                name = pwd.getpwuid(os.getuid()).pw_name
            except KeyError:
                return None
    return None if name == "root" else name


def choose_config(explicit: Path | None, user: str | None, root: Path = Path("/")) -> Path:
    """``--config`` (made absolute), else the service user's file if it exists, else /etc's."""
    if explicit is not None:
        return explicit.expanduser().absolute()
    if root == Path("/") and user:
        with contextlib.suppress(KeyError):
            personal = Path(pwd.getpwnam(user).pw_dir) / ".config" / "blitzdns" / "config.toml"
            if personal.is_file():
                return personal
    return SYSTEM_CONFIG


def make_plan(
    target: Target | None = None,
    *,
    root: Path = Path("/"),
    user: str | None = None,
    config: Path | None = None,
    program: tuple[str, ...] | None = None,
) -> ServicePlan:
    """A plan from the command-line choices, with the defaults filled in."""
    if not root.is_absolute():
        root = root.absolute()
    chosen_user = choose_user(user, check_exists=root == Path("/"))
    return ServicePlan(
        target=target or Target.native(),
        program=program or find_program(),
        config=choose_config(config, chosen_user, root),
        user=chosen_user,
        root=root,
    )


# --------------------------------------------------------------------------- install


def install(plan: ServicePlan) -> Outcome:
    """Write the file atomically; UNCHANGED when it already says the same."""
    path = plan.path
    content = plan.render()
    if not path.parent.is_dir():
        raise UsageError(
            f"{path.parent} does not exist: is {plan.target.value} this system's service "
            "manager? (with --root, create the directory under the root first)"
        )
    existing = _read(path, plan, "install")
    if existing == content:
        return Outcome.UNCHANGED
    if existing is not None and not written_by_us(plan.target, existing):
        raise UsageError(f"{path} exists and was not written by blitzdns: move it away first")
    try:
        atomic_write(path, content, 0o644)
    except PermissionError:
        raise _permission(path, plan, "install") from None
    return Outcome.WROTE if existing is None else Outcome.REPLACED


def uninstall(plan: ServicePlan) -> Outcome:
    """Remove the file install wrote; ABSENT (and nothing touched) when there is none."""
    path = plan.path
    existing = _read(path, plan, "uninstall")
    if existing is None:
        return Outcome.ABSENT
    if not written_by_us(plan.target, existing):
        raise UsageError(f"{path} was not written by blitzdns: leaving it alone")
    if plan.target is Target.SYSTEMD:
        links = enable_links(plan)
        if links:
            prefix = "" if plan.root == Path("/") else f"--root={shlex.quote(str(plan.root))} "
            raise UsageError(
                f"blitzdns is still enabled ({links[0]}): run "
                f"`{_sudo()}systemctl {prefix}disable --now blitzdns` first"
            )
    try:
        path.unlink()
        fsync_dir(path.parent)
    except PermissionError:
        raise _permission(path, plan, "uninstall") from None
    return Outcome.REMOVED


def enable_links(plan: ServicePlan) -> list[Path]:
    """``*.wants/blitzdns.service`` links under the unit directory (made by systemctl enable)."""
    directory = plan.root / SYSTEMD_DIR
    links = (wants / UNIT_NAME for wants in directory.glob("*.wants"))
    return sorted(link for link in links if link.is_symlink())


def next_steps(plan: ServicePlan, outcome: Outcome) -> list[str]:
    """What to run after install or uninstall (systemctl, launchctl)."""
    sudo = _sudo()
    on_target = [] if plan.root == Path("/") else [f"(written under {plan.root})"]
    target = f"system/{LAUNCHD_LABEL}"
    live = Path("/") / plan.relative_path
    if plan.target is Target.SYSTEMD:
        steps = {
            Outcome.WROTE: f"start it: {sudo}systemctl daemon-reload && "
            f"{sudo}systemctl enable --now blitzdns",
            Outcome.REPLACED: f"apply it: {sudo}systemctl daemon-reload && "
            f"{sudo}systemctl restart blitzdns",
            Outcome.UNCHANGED: f"enable it if not yet: {sudo}systemctl enable --now blitzdns",
            Outcome.REMOVED: f"stop it if it still runs: {sudo}systemctl stop blitzdns; "
            f"{sudo}systemctl daemon-reload",
            Outcome.ABSENT: "",
        }
    else:
        steps = {
            Outcome.WROTE: f"start it: {sudo}launchctl bootstrap system {live}",
            Outcome.REPLACED: f"apply it: {sudo}launchctl bootout {target}; "
            f"{sudo}launchctl bootstrap system {live}",
            Outcome.UNCHANGED: f"load it if not yet: {sudo}launchctl bootstrap system {live}",
            Outcome.REMOVED: f"unload it if still loaded: {sudo}launchctl bootout {target}",
            Outcome.ABSENT: "",
        }
    return [line for line in (*on_target, steps[outcome]) if line]


def _sudo() -> str:
    return "" if os.geteuid() == 0 else "sudo "


def _permission(path: Path, plan: ServicePlan, verb: str) -> PermissionProblem:
    return PermissionProblem(
        f"cannot {verb} {path} (permission denied): run `sudo {plan.command_line(verb)}`"
    )


def _read(path: Path, plan: ServicePlan, verb: str) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise _permission(path, plan, verb) from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory: move it away first") from None
    except NotADirectoryError:
        raise UsageError(f"{path.parent} is not a directory (check --root)") from None
