"""The blitzdns error tree, and the one place it becomes a line and an exit code.

::

    BlitzdnsError                 exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2: names the file, the key and what was expected
    ├── UsageError                exit 2: a bad flag or argument
    │   └── StateCorrupt          (system.record) the install record cannot be read back
    ├── PermissionProblem         exit 1: says which file or port, and how to get the right
    ├── CannotWrite               exit 1: read-only file system, full disk or quota; names the file
    ├── AddressInUse              exit 1: a socket we must bind is taken
    ├── UpstreamLoop              exit 1: the upstream would route back to us
    ├── NotRunning                exit 3: no daemon answers on the control socket
    ├── ControlError              (control) the daemon answered, but with an error
    ├── StatusUnknown             exit 4 (control) `status` could not read the daemon's state
    ├── NoUpstreams               (dns.errors) nothing to forward to; pass --upstream
    ├── DiscoverError             (discover) DND could not name one server for the user
    ├── ApplyFailed               (system.install) a reload or NRPT command failed
    ├── Busy                      (system.install) another install holds the lock
    ├── NftFailed                 (system.nft) nftables refused the guard's rules, or is missing
    └── BadRequest                (warden) the root helper was sent something it does not do

:func:`explain` is the one translation to what the user is told, used by the CLI edge
(:mod:`blitzdns.entry`), the daemon's reload and the debugging server
(``python -m blitzdns.dns``). Besides this tree it knows the tunnel's own
(:mod:`tunnel.errors`: a ``TunnelConfigError`` is exit 2, the rest exit 1) and the
system's write failures (EROFS, ENOSPC, EDQUOT: worded as :class:`CannotWrite`).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from tunnel.errors import TunnelConfigError, TunnelError


class BlitzdnsError(Exception):
    """Base of every error a user can cause or fix; the CLI prints ``str(err)`` only."""

    exit_code: int = 1


class ConfigError(BlitzdnsError):
    """The configuration is invalid: which file, which key, what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class UsageError(BlitzdnsError):
    """A command-line argument is wrong."""

    exit_code = 2


class PermissionProblem(BlitzdnsError):
    """We lack a permission (privileged port, root-owned file); the message says the way out."""


class AddressInUse(BlitzdnsError):
    """A socket we must bind is already taken by another program."""


class UpstreamLoop(BlitzdnsError):
    """Forwarding to the chosen upstream would send queries back to this stub."""


class NotRunning(BlitzdnsError):
    """No daemon answers on the control socket."""

    exit_code = 3


class CannotWrite(BlitzdnsError):
    """A file could not be written for a reason outside blitzdns: a read-only file system,
    a full disk or an exhausted quota. The message names the file."""


#: Errors of the system that a user fixes outside blitzdns, worded for them.
DISK_ERRNOS = {
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
}


class Told(NamedTuple):
    """An error as the user is told it: one line (without the ``blitzdns:`` prefix) and the
    exit status."""

    line: str
    status: int


def explain(exc: BaseException) -> Told | None:
    """The one translation of an error to what the user is told; ``None`` for a bug, which
    keeps its traceback.

    Used by the CLI edge (:mod:`blitzdns.entry`), the daemon's reload (the line is logged
    and the running configuration kept) and the debugging server (``python -m
    blitzdns.dns``).
    """
    if isinstance(exc, BlitzdnsError):
        return Told(str(exc), exc.exit_code)
    if isinstance(exc, TunnelError):
        # A bad option or forward is a usage mistake, like a bad config (status 2).
        return Told(str(exc), 2 if isinstance(exc, TunnelConfigError) else 1)
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return Told(str(cannot_write(exc)), CannotWrite.exit_code)
    return None


def cannot_write(exc: OSError, path: object = None) -> CannotWrite:
    """``exc`` (EROFS, ENOSPC or EDQUOT) as one line naming the file."""
    where = path if path is not None else exc.filename
    reason = DISK_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    return CannotWrite(f"cannot write {where}: {reason}" if where else f"cannot write: {reason}")
