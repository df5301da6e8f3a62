"""Privileged ports and the switch to an ordinary user after binding them.

The stub listens on port 53 and the mouths on 902, 119…: ports below
``net.ipv4.ip_unprivileged_port_start`` (1024 unless changed), which need root or
CAP_NET_BIND_SERVICE (capabilities(7)). ``run`` binds every socket first, then calls
:func:`drop_privileges`, so that the SSH link reads the *user's* ~/.ssh and the process no
longer runs as root. On Linux it keeps CAP_NET_BIND_SERVICE (and nothing else) in its
permitted, effective, inheritable and ambient sets, so that a reload can still open a new
mouth on a privileged port. Elsewhere (macOS) the switch is a plain setuid.

The Linux sequence (capabilities(7), "Effect of user ID changes on capabilities"):
``prctl(PR_SET_KEEPCAPS)`` so setuid keeps the permitted set, initgroups/setgid/setuid,
``capset`` down to the one capability, then ``PR_CAP_AMBIENT_RAISE``. KEEPCAPS is a
per-thread flag and ``capset`` acts on the calling thread: call this from the thread that
binds (the event loop's), before other threads exist; threads started earlier lose every
capability at the setuid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import sys
from collections.abc import Iterable
from pathlib import Path

from blitzdns.errors import PermissionProblem, UsageError

CAP_NET_BIND_SERVICE = 10
"""linux/capability.h"""

_PR_SET_KEEPCAPS = 8
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_RAISE = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_UNPRIVILEGED_PORT_SYSCTL = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
_DEFAULT_UNPRIVILEGED_START = 1024


# --------------------------------------------------------------------------- facts


def unprivileged_port_start(sysctl: Path = _UNPRIVILEGED_PORT_SYSCTL) -> int:
    """The lowest port anyone may bind: the Linux sysctl, else the classic 1024."""
    try:
        return int(sysctl.read_text().strip())
    except (OSError, ValueError):
        return _DEFAULT_UNPRIVILEGED_START


def privileged_ports(ports: Iterable[int], *, start: int | None = None) -> list[int]:
    """The distinct ports among ``ports`` that need privileges, in ascending order.

    Port 0 (any free port) never does. ``start`` defaults to :func:`unprivileged_port_start`.
    """
    limit = unprivileged_port_start() if start is None else start
    return sorted({p for p in ports if 0 < p < limit})


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int | None:
    """The ``CapEff`` bit mask of this process (proc(5)), or None where there is no /proc."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    return None


def can_bind_privileged(port: int | None = None) -> bool:
    """True when this process may bind ``port`` (or any privileged port, when None).

    Root, CAP_NET_BIND_SERVICE in the effective set, or ``port`` at or above
    ``net.ipv4.ip_unprivileged_port_start``.
    """
    if os.geteuid() == 0:
        return True
    caps = effective_capabilities()
    if caps is not None and caps & (1 << CAP_NET_BIND_SERVICE):
        return True
    return port is not None and port >= unprivileged_port_start()


def explain_privileged(ports: Iterable[int]) -> str:
    """One line: which ports need privileges, and the three ways out."""
    listed = ", ".join(str(p) for p in sorted(set(ports)))
    plural = "s" if "," in listed else ""
    python = os.path.realpath(sys.executable)
    return (
        f"port{plural} {listed} need{'' if plural else 's'} root or CAP_NET_BIND_SERVICE: "
        f"run with sudo (blitzdns drops to your user once its sockets are bound), "
        f"or grant the capability to the interpreter with "
        f"`sudo setcap cap_net_bind_service=+ep {python}`, "
        f"or choose ports from {unprivileged_port_start()} up in the config "
        f"and give the resolver config that port"
    )


# --------------------------------------------------------------------------- the user


def target_user(explicit: str | None) -> pwd.struct_passwd | None:
    """The user to become after binding, or None to stay as we are.

    ``explicit`` (``--user``) wins; else ``SUDO_USER`` when we run as root through sudo;
    else None. Becoming the user we already are is None too. Raises
    :class:`~blitzdns.errors.UsageError` for an unknown name and
    :class:`~blitzdns.errors.PermissionProblem` when a switch is asked for without root.
    """
    name = explicit
    if name is None:
        sudo_user = os.environ.get("SUDO_USER", "")
        if os.geteuid() != 0 or not sudo_user or sudo_user == "root":
            return None
        name = sudo_user
    entry = lookup_user(name, flag="--user" if explicit is not None else "SUDO_USER")
    if entry.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise PermissionProblem(
            f"cannot switch to user {entry.pw_name!r}: only root can; "
            f"run with sudo, or leave out --user to stay {_current_name()!r}"
        )
    return entry


def lookup_user(name: str, *, flag: str = "--user") -> pwd.struct_passwd:
    """The password entry for ``name`` (or a numeric uid); UsageError naming ``flag`` if none."""
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"{flag} {name}: no such user on this machine") from None


def _current_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# --------------------------------------------------------------------------- the switch


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _set_capabilities(libc: ctypes.CDLL, mask: int) -> None:
    """capset(2): this thread's effective, permitted and inheritable sets all become ``mask``."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = data[1].inheritable = mask >> 32
    _check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def _keep_only_bind_capability(libc: ctypes.CDLL) -> bool:
    """Keep CAP_NET_BIND_SERVICE alone (also ambient, for exec'd children); else keep none.

    After a setuid under KEEPCAPS the permitted set still holds everything root had, so
    failing to narrow it must empty it: never leave a non-root process with root's set.
    """
    try:
        _set_capabilities(libc, 1 << CAP_NET_BIND_SERVICE)
    except OSError:
        _set_capabilities(libc, 0)
        return False
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0)
    return True


def drop_privileges(user: pwd.struct_passwd | str, *, keep_bind_capability: bool = True) -> bool:
    """Become ``user`` for good; True when CAP_NET_BIND_SERVICE was kept.

    Call once every socket is bound. Sets the groups, gid and uid (real, effective, saved),
    then ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` so that ~/.ssh is the user's.
    ``SSH_AUTH_SOCK`` stays only when the user can use that agent socket. Raises
    :class:`~blitzdns.errors.PermissionProblem` when not root or the user does not exist.
    """
    if isinstance(user, str):
        try:
            user = lookup_user(user)
        except UsageError as exc:
            raise PermissionProblem(f"cannot drop privileges: {exc}") from None
    if os.geteuid() != 0:
        raise PermissionProblem(
            f"cannot switch to user {user.pw_name!r}: running as {_current_name()!r}, not root"
        )
    linux = sys.platform.startswith("linux")
    libc = _libc() if linux else None
    if libc is not None and keep_bind_capability:
        _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    try:
        os.initgroups(user.pw_name, user.pw_gid)
        if linux:
            os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
            os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
        else:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
    except OSError as exc:
        raise PermissionProblem(f"cannot switch to user {user.pw_name!r}: {exc}") from None
    kept = False
    if libc is not None and keep_bind_capability:
        kept = _keep_only_bind_capability(libc)
        libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
    if user.pw_uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PermissionProblem("privilege drop failed: the process could become root again")
    _adopt_environment(user)
    return kept


def _adopt_environment(user: pwd.struct_passwd) -> None:
    os.environ["HOME"] = user.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
    if user.pw_shell:
        os.environ["SHELL"] = user.pw_shell
    agent = os.environ.get("SSH_AUTH_SOCK")
    if agent and not os.access(agent, os.R_OK | os.W_OK):
        del os.environ["SSH_AUTH_SOCK"]
