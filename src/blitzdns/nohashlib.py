"""``blitzdns run`` without ``_hashlib``: hashes from CPython's own modules, not libcrypto.

``hashlib`` loads ``_hashlib`` at its import when it can, and with it the system's OpenSSL
``libcrypto``: ~3.6 MB of the idle daemon's RSS (libcrypto's code and data pages, the
tables OpenSSL sets up) and ~2.3 ms of its start (``-X importtime``; bench/notes/
startup.md, session 9). Since ``ssl`` left ``run`` (:mod:`tunnel.nossl`), ``_hashlib``
was libcrypto's only user there: the SSH ciphers, key exchanges and signatures go through
cryptography, which carries its own OpenSSL in its Rust library. Without ``_hashlib``,
``hashlib`` serves every algorithm the daemon asks for (MD5, SHA-1, the SHA-2 and SHA-3
families, BLAKE2) from CPython's built-in modules with the same digests, and ``hmac``
computes in Python around them (tests/tunnel/test_nohashlib.py). ``hashlib.pbkdf2_hmac``
is Python's own on 3.11 and absent from 3.12 on; nothing in ``run`` calls it (asyncssh
derives keys from passphrases with cryptography and bcrypt).

The daemon hashes little: a few kB per SSH handshake (the exchange hash, key derivation,
hashed known_hosts lines), a name per mouth. The one per-packet use, asyncssh's HMAC MACs
(negotiated only with the non-AEAD ciphers), goes through cryptography's HMAC instead
(:mod:`tunnel.backends.cryptohmac`).

:func:`start` puts ``None`` in ``sys.modules["_hashlib"]``: the import system's way of
saying a module is not there (``import _hashlib`` raises ``ImportError``, which
``hashlib`` and ``hmac`` handle as a Python built without OpenSSL). ``run`` calls it first
(:func:`blitzdns.entry.main`), before anything imports ``hashlib``; it stays for the
process's life. Other processes (the CLI, tests run in-process) keep OpenSSL's hashes.
"""

from __future__ import annotations

import sys

BLOCKED = "_hashlib"

#: The built-in modules ``hashlib`` serves its algorithms from without ``_hashlib``
#: (3.12 joined ``_sha256`` and ``_sha512`` into ``_sha2``). A CPython may be built with
#: only some of them (``--with-builtin-hashlib-hashes``, as some distributions do, relying
#: on OpenSSL): then ``_hashlib`` stays, else ``from hashlib import sha1`` would fail.
BUILTINS = ("_md5", "_sha1", "_sha3", "_blake2") + (
    ("_sha2",) if sys.version_info >= (3, 12) else ("_sha256", "_sha512")
)


def builtins_present() -> bool:
    """Whether every one of :data:`BUILTINS` imports (``hashlib`` imports them all at its
    own import anyway)."""
    for name in BUILTINS:
        try:
            __import__(name)
        except ImportError:
            return False
    return True


def start() -> bool:
    """Leave OpenSSL's hashes out of this process; whether that is in force (nothing
    changes where ``hashlib`` or ``hmac`` has already loaded them, nor where the built-in
    hash modules are not all there)."""
    if (
        BLOCKED not in sys.modules
        and not {"hashlib", "hmac"} & sys.modules.keys()
        and builtins_present()
    ):
        sys.modules[BLOCKED] = None  # type: ignore[assignment]
    return BLOCKED in sys.modules and sys.modules[BLOCKED] is None
