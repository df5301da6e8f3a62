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


def start() -> bool:
    """Leave OpenSSL's hashes out of this process; whether that is in force (nothing
    changes where ``hashlib`` or ``hmac`` has already loaded them)."""
    if BLOCKED not in sys.modules and not {"hashlib", "hmac"} & sys.modules.keys():
        sys.modules[BLOCKED] = None  # type: ignore[assignment]
    return BLOCKED in sys.modules and sys.modules[BLOCKED] is None
