"""asyncssh's HMAC MACs computed by cryptography's HMAC (the Rust library's OpenSSL).

asyncssh's ``_HMAC`` (``hmac-sha2-256``, ``-512``, ``hmac-sha1``, ``hmac-md5`` and their
``-etm`` forms, negotiated only with the non-AEAD ciphers) signs each packet with the
standard library's ``hmac.new(key, UInt32(seq) + packet, hash)``: a joined copy of the
packet, and in ``blitzdns run`` (no ``_hashlib``: :mod:`blitzdns.nohashlib`) the built-in
hashes under Python's HMAC, ~137 µs for a 32 KiB packet with SHA-256 (OpenSSL's through
``_hashlib``: ~27 µs). :func:`install` makes it keep one keyed cryptography ``HMAC`` per
MAC and sign a copy of it per packet, fed the sequence number and the packet as they are:
~20 µs for 32 KiB, ~0.6 µs for 100 bytes, the same bytes (tests/tunnel/test_nohashlib.py,
and through sshd). A hash cryptography does not name keeps asyncssh's own way. Carried
for asyncssh 2.14-2.x (pyproject's range); if ``_HMAC``'s internals move, asyncssh's own
code stands.
"""

from __future__ import annotations

from typing import Any

#: hashlib's names of the hashes asyncssh's HMAC MACs use, and cryptography's classes.
HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


#: What the carried methods take the place of: asyncssh's ``_HMAC.__init__(self, key,
#: hash_size, hash_alg)`` keeping ``_hash_alg`` (``MAC.__init__`` the key and
#: ``_hash_size``), and ``sign(self, seq, packet)`` returning ``hmac.new(self._key,
#: UInt32(seq) + packet, self._hash_alg).digest()[:self._hash_size]``; ``verify`` calls
#: ``sign``.
INIT_ARGS = ("self", "key", "hash_size", "hash_alg")
SIGN_ARGS = ("self", "seq", "packet")
SIGN_NAMES = frozenset({"UInt32", "hmac", "new", "_key", "_hash_alg", "digest", "_hash_size"})


def _arguments(function: Any) -> tuple[str, ...]:
    code = getattr(function, "__code__", None)
    if code is None or code.co_kwonlyargcount or code.co_flags & 0x0C:  # *args, **kwargs
        return ()
    return tuple(code.co_varnames[: code.co_argcount])


def as_carried(cls: Any, base: Any) -> bool:
    """Whether asyncssh's ``cls`` (``_HMAC``) and ``base`` (``MAC``) are still what
    :func:`install` replaces (:data:`INIT_ARGS`, :data:`SIGN_ARGS`, :data:`SIGN_NAMES`):
    the same arguments, the same attributes kept and read, ``verify`` through ``sign``."""
    try:
        return (
            _arguments(cls.__init__) == INIT_ARGS
            and "_hash_alg" in cls.__init__.__code__.co_names
            and {"_key", "_hash_size"} <= set(base.__init__.__code__.co_names)
            and _arguments(cls.sign) == SIGN_ARGS
            and set(cls.sign.__code__.co_names) >= SIGN_NAMES
            and "sign" in cls.verify.__code__.co_names
        )
    except AttributeError:
        return False


def install() -> bool:
    """asyncssh's HMAC MAC (``asyncssh.mac._HMAC``, asyncssh 2.14-2.x) signs with
    cryptography's HMAC: one keyed context made with the MAC, copied per packet (the
    sequence number and the packet fed to it as they are: no joined copy). Whether it is in
    place; a hash cryptography does not name keeps asyncssh's own way. Applied once."""
    from asyncssh import mac  # noqa: PLC0415
    from asyncssh.packet import UInt32  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.hmac import HMAC  # noqa: PLC0415

    cls: Any = getattr(mac, "_HMAC", None)
    if cls is None or not callable(getattr(cls, "sign", None)):
        return False
    if getattr(cls.sign, "from_cryptography", False):
        return True
    if not as_carried(cls, mac.MAC):
        return False  # asyncssh's internals moved: its own way stands
    algorithms = {name: getattr(hashes, name.upper()) for name in HASHES}
    original_init, original_sign = cls.__init__, cls.sign

    def __init__(self: Any, key: bytes, hash_size: int, hash_alg: Any) -> None:
        original_init(self, key, hash_size, hash_alg)
        algorithm = algorithms.get(hash_alg().name)
        self.blitzdns_hmac = None if algorithm is None else HMAC(key, algorithm())

    def sign(self: Any, seq: int, packet: bytes) -> bytes:
        keyed = self.blitzdns_hmac
        if keyed is None:
            return original_sign(self, seq, packet)  # type: ignore[no-any-return]
        context = keyed.copy()
        context.update(UInt32(seq))
        context.update(packet)
        return context.finalize()[: self._hash_size]  # type: ignore[no-any-return]

    sign.from_cryptography = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
    cls.sign = sign
    return True
