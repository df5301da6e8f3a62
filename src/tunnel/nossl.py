"""``blitzdns run`` without the ``ssl`` module: nothing in the daemon speaks TLS.

asyncio (``base_events``, ``selector_events``, ``sslproto``) and uvloop import ``ssl`` at
their own import, for the ``ssl=`` arguments of ``create_connection`` and
``create_server`` and for ``start_tls``. The daemon never passes one: SSH is not TLS
(asyncssh's ciphers come from cryptography, which carries its own OpenSSL), DNS goes out
as plain UDP/TCP, and the control socket is a Unix socket. Yet ``ssl`` loads ``_ssl`` and
with it libssl: ~1.3 MB of the idle daemon's RSS (the modules' ~850 kB of heap, libssl's
and ``_ssl``'s resident pages; bench/notes/startup.md, session 8) and ~5 ms of its start
(``-X importtime``). libcrypto, which ``hashlib`` links, is left out too
(blitzdns.nohashlib).

While :func:`start` is in force (``run``, :func:`blitzdns.entry.main`, before asyncio is
imported) ``import ssl`` gives :class:`NoSSL`, which holds only what asyncio and uvloop
read at their import (:data:`NAMES`, :data:`CONSTANTS`): classes that cannot be made
(exception classes, so that an ``except`` naming one never matches and ``isinstance`` is
false: no such object can exist), ``create_default_context`` that raises, and the three
error codes uvloop keeps as C ints, equal to ``_ssl``'s (tests/tunnel/test_nossl.py
checks them against the real module). Any other name, or making or calling any of them,
raises :class:`NotLoaded`: a TLS use added to ``run`` fails loudly at its first use (and
its tests), never quietly otherwise. Reading another name raises :class:`AbsentName`, a
``NotLoaded`` that is also an ``AttributeError``: a library that probes
``hasattr(ssl, "X")`` or ``getattr(ssl, "X", None)`` at its import takes its no-ssl path
instead of crashing, while a real use still fails with the message. The placeholder stays
for the process's life: the modules that took it keep it. Other processes (the CLI, tests
run in-process) get the real ``ssl``.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn

from tunnel.nosftp import NotLoaded, _Absent

#: The classes asyncio (3.11-3.13) and uvloop (0.17-0.23, ``includes/stdlib.pxi``) name
#: at their import or in an ``isinstance`` or ``except`` on a path the daemon takes.
NAMES = (
    "SSLContext",
    "SSLSocket",
    "SSLObject",
    "MemoryBIO",
    "SSLError",
    "SSLWantReadError",
    "SSLWantWriteError",
    "SSLSyscallError",
    "SSLZeroReturnError",
    "SSLEOFError",
    "CertificateError",
    "SSLCertVerificationError",
)
#: ``_ssl``'s error codes that uvloop copies into C ints at its import (OpenSSL's
#: ``SSL_ERROR_*``: fixed by OpenSSL's ABI).
CONSTANTS = {"SSL_ERROR_WANT_READ": 2, "SSL_ERROR_WANT_WRITE": 3, "SSL_ERROR_SYSCALL": 5}


class AbsentName(NotLoaded, AttributeError):
    """A name of ``ssl`` that :class:`NoSSL` does not hold was read: ``hasattr`` is false."""


def _create_default_context(*args: object, **kwargs: object) -> NoReturn:
    raise NotLoaded("ssl.create_default_context: ssl is not loaded in blitzdns run")


class NoSSL(types.ModuleType):
    """The ``ssl`` module of ``blitzdns run``: see the module's text."""

    def __init__(self) -> None:
        super().__init__("ssl", "ssl is not loaded in blitzdns run (tunnel.nossl)")
        for name in NAMES:
            setattr(
                self, name, _Absent(name, (Exception,), {"__module__": "ssl", "__qualname__": name})
            )
        for name, value in CONSTANTS.items():
            setattr(self, name, value)
        self.create_default_context = _create_default_context

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        error = AbsentName(f"ssl.{name}: ssl is not loaded in blitzdns run (tunnel.nossl)")
        error.name = name
        raise error


def start() -> bool:
    """``import ssl`` gives :class:`NoSSL` from now on, unless the real one is loaded
    already; whether the placeholder is in place."""
    module = sys.modules.get("ssl")
    if module is None:
        module = sys.modules["ssl"] = NoSSL()
    return isinstance(module, NoSSL)


def in_force() -> bool:
    return isinstance(sys.modules.get("ssl"), NoSSL)
