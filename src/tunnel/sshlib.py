"""asyncssh, imported once, cheaply: every module of the project takes it from here
(``from tunnel.sshlib import asyncssh``) so that the first import is this one.

Importing asyncssh looks for optional C libraries (liboqs, nettle) with
``ctypes.util.find_library``, which on Linux spawns up to 11 processes:
:func:`tunnel.libfind.cheap_find_library` answers the same lookups from one ``ldconfig
-p`` listing instead (the reason and the figures: :mod:`tunnel.libfind`). asyncssh finds
the same libraries, so it offers the same algorithms.

asyncssh's X.509 certificate support (``asyncssh.crypto.x509``) needs PyOpenSSL, which is
not a dependency: without it that module imports all of ``cryptography.x509`` and then
fails on ``from OpenSSL import crypto``, an ImportError asyncssh catches
(``_x509_available`` is False: it neither offers nor accepts ``x509v3-*`` keys). Where
PyOpenSSL is missing the module is therefore not tried at all: the same asyncssh, without
about 11% of the run path's import work (callgrind: 1.10 → 0.98 G instructions for the
daemon's whole import set) and ~1 MB of the idle daemon's memory. With PyOpenSSL
installed nothing is blocked and X.509 works as before.

In ``blitzdns run`` asyncssh's file-transfer modules are placeholders (:mod:`tunnel.nosftp`);
an asyncssh that does not import with them is imported again in full, with a warning.
"""

import importlib.util
import logging
import sys

from tunnel import nosftp
from tunnel.libfind import cheap_find_library

#: asyncssh's own module, blocked only while asyncssh is first imported (``None`` in
#: ``sys.modules`` makes that import raise ImportError, as PyOpenSSL's absence would).
X509_MODULE = "asyncssh.crypto.x509"


def x509_usable() -> bool:
    """Whether asyncssh's X.509 support could load: only with PyOpenSSL installed."""
    return importlib.util.find_spec("OpenSSL") is not None


def _import() -> None:
    if "asyncssh" in sys.modules or x509_usable():  # imported already, or X.509 works: as is
        with cheap_find_library():
            importlib.import_module("asyncssh")
        return
    sys.modules.setdefault(X509_MODULE, None)  # type: ignore[arg-type]
    try:
        with cheap_find_library():
            importlib.import_module("asyncssh")
    finally:
        if sys.modules.get(X509_MODULE, 0) is None:
            del sys.modules[X509_MODULE]


try:
    _import()
except Exception as error:
    if not nosftp.in_force():
        raise
    nosftp.give_up("asyncssh")
    logging.getLogger(__name__).warning(
        "asyncssh did not import without %s (%s): imported in full",
        " and ".join(nosftp.LEFT_OUT),
        error,
    )
    _import()

import asyncssh  # noqa: E402  (imported above: the name)

__all__ = ["asyncssh"]
