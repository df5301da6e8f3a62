"""The blitzdns error tree, translated to one line and an exit code at the CLI edge.

::

    BlitzdnsError                 exit 1 unless a subclass says otherwise
    ├── ConfigError               exit 2: names the file, the key and what was expected
    ├── UsageError                exit 2: a bad flag or argument
    ├── PermissionProblem         exit 1: says which file or port, and how to get the right
    ├── AddressInUse              exit 1: a socket we must bind is taken
    ├── UpstreamLoop              exit 1: the upstream would route back to us
    └── NotRunning                exit 3: no daemon answers on the control socket

The tunnel package has its own tree (:mod:`tunnel.errors`); the CLI translates both.
"""

from __future__ import annotations


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
