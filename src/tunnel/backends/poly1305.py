"""Poly1305 one-time tags of chacha20-poly1305 packets (OpenSSH's PROTOCOL.chacha20poly1305),
from libsodium where the system has it, for short packets.

Each packet has a Poly1305 key of its own. cryptography's ``Poly1305`` sets a new key up in
OpenSSL for every tag (an ``EVP_PKEY`` and a MAC context): about 3.8 us for a tag of a
40-byte packet, against 1.3 us for a whole ChaCha20-Poly1305 AEAD seal of the same
packet. A short connection through the tunnel makes eight tags (four packets each way), so
chacha20-poly1305 cost ~100 us more CPU per connection than AES-GCM, ``ssh -L`` nothing
more. libsodium's ``crypto_onetimeauth_poly1305`` takes the key as it is: 0.8-1.1 us
through ``ctypes``. For long input OpenSSL's vector code is faster (32 KiB: 5.8 us against
libsodium's 10.3 us on the bench machine), so only input up to :data:`SHORT` goes to
libsodium; the rest, and everything where libsodium is absent or fails the known-answer
check below, goes to cryptography's as before.

libsodium is looked up once, at the first carried connection (:func:`want`; the
``ldconfig`` cache, :func:`tunnel.libfind.find_library`): not a Python dependency, a system
library as the C library :mod:`tunnel.libc` calls is. Before it is used it must give RFC
8439 §2.5.2's tag for its test message and refuse a wrong one. Verification compares in
constant time (``crypto_onetimeauth_poly1305_verify``).
"""

from __future__ import annotations

import ctypes
import functools
import platform
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from tunnel.libfind import find_library

SHORT = 4096
"""The longest input tagged by libsodium (above, OpenSSL's is at least as fast)."""
TAG_LEN = 16
KEY_LEN = 32

RFC8439_KEY = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
RFC8439_MESSAGE = b"Cryptographic Forum Research Group"
RFC8439_TAG = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")
"""RFC 8439 §2.5.2: Poly1305's test vector."""

_generate = Poly1305.generate_tag
_verify = Poly1305.verify_tag


def _checked(lib: Any) -> bool:
    """Whether ``lib`` (libsodium) gives the RFC's tag and refuses a wrong one."""
    try:
        if lib.sodium_init() < 0:
            return False
        out = ctypes.create_string_buffer(TAG_LEN)
        size = ctypes.c_ulonglong(len(RFC8439_MESSAGE))
        lib.crypto_onetimeauth_poly1305(out, RFC8439_MESSAGE, size, RFC8439_KEY)
        verify = lib.crypto_onetimeauth_poly1305_verify
        wrong = bytes([RFC8439_TAG[0] ^ 1]) + RFC8439_TAG[1:]
        return (
            out.raw == RFC8439_TAG
            and verify(RFC8439_TAG, RFC8439_MESSAGE, size, RFC8439_KEY) == 0
            and verify(wrong, RFC8439_MESSAGE, size, RFC8439_KEY) != 0
        )
    except (AttributeError, OSError, ctypes.ArgumentError):
        return False


@functools.cache
def sodium() -> Any | None:
    """libsodium, loaded and checked; None where it is absent or gave a wrong answer."""
    name = find_library("sodium")
    if name is None:
        return None
    try:
        # PyDLL: the calls keep the GIL (they take ~0.5-1 us; a release would let another
        # thread of the process take it, and this one could then wait its switch interval).
        lib = ctypes.PyDLL(name)
    except OSError:
        return None
    return lib if _checked(lib) else None


_lib: Any = None
"""libsodium once :func:`want` asked for it (and it is there); None: cryptography's tags.
The chacha20-poly1305 packet paths of :mod:`tunnel.backends.asyncssh_patches` read it
and call its two functions themselves for their short packets, as :func:`generate_tag`
and :func:`verify_tag` call them (a 32-byte key, a 16-byte tag, input of :data:`SHORT`
bytes at most, its length made by :data:`_length`): a Python call fewer per packet,
~1.5k of a tag's ~8k instructions."""

_length: Any = ctypes.c_ulonglong
"""What a tag's input length goes to libsodium as (its ``unsigned long long``): the
Python ``int`` itself where :func:`int_lengths` holds for the loaded library (set by
:func:`want`), else a ``ctypes.c_ulonglong`` made per call. A tag of a 60-byte packet
took 0.76 us through ``ctypes`` with the ``c_ulonglong``, 0.37 us with the ``int``
(timeit; bench/notes/roundtrip.md session 11). Valid only for lengths below 2**31 (an
``int`` goes as a C ``int``): every caller's input is bounded far below that (:data:`SHORT`,
``asyncssh_patches.CHACHA_SHORT``)."""

INT_LENGTH_MACHINES = frozenset({"x86_64", "amd64", "aarch64", "arm64"})
"""Where ``ctypes`` (libffi) passes a Python ``int`` argument (a C ``int``) in a 64-bit
register sign-extended, which is the ``unsigned long long`` of the same value when it is
below 2**31 (a tag's input here is at most :data:`SHORT` bytes): libffi's x86-64 and
AArch64 calls extend every integer argument to the register's width (x86-64: ``ffi64.c``'s
argument copy; AArch64: ``extend_integer_type``). That libffi source is the proof; the
known-answer gate of :func:`int_lengths` only catches a wrong library (or a libffi that
broke it), it cannot show the upper half of the register is right for every length."""


def want() -> None:
    """Tag with libsodium from now on, where it is there. The tunnel asks at its first
    carried connection, not before: an idle daemon does not map it (~270 kB of RSS)."""
    global _lib, _length  # noqa: PLW0603 (loaded once per process)
    if _lib is None:
        lib = sodium()
        _length = int if lib is not None and int_lengths(lib) else ctypes.c_ulonglong
        _lib = lib


def int_lengths(lib: Any) -> bool:
    """Whether ``lib`` (a checked libsodium: :func:`sodium`) may be given its tags' input
    lengths as Python ints (see :data:`INT_LENGTH_MACHINES`): a 64-bit machine of those,
    and the known answers given that way too (the RFC's tag made, the right tag taken and
    a wrong one refused, with a short message and with the longest input tagged here)."""
    if (
        platform.machine() not in INT_LENGTH_MACHINES
        or ctypes.sizeof(ctypes.c_void_p) != 8
        or ctypes.sizeof(ctypes.c_ulonglong) != 8
    ):
        return False
    long = bytes(range(256)) * (SHORT // 256)
    try:  # as _checked: a failing call means c_ulonglong lengths, not a failed connection
        # The long message's answer from libsodium itself, its length as the checked
        # c_ulonglong: not from cryptography, whose Poly1305 raises where OpenSSL's FIPS
        # provider is in force (a gate asked at every link's first connection, whatever
        # the cipher, must not raise there).
        out = ctypes.create_string_buffer(TAG_LEN)
        size = ctypes.c_ulonglong(len(long))
        lib.crypto_onetimeauth_poly1305(out, long, size, RFC8439_KEY)
        long_tag = out.raw
        verify = lib.crypto_onetimeauth_poly1305_verify
        for message, tag in ((RFC8439_MESSAGE, RFC8439_TAG), (long, long_tag)):
            lib.crypto_onetimeauth_poly1305(out, message, len(message), RFC8439_KEY)
            wrong = bytes([tag[0] ^ 1]) + tag[1:]
            if (
                out.raw != tag
                or verify(tag, message, len(message), RFC8439_KEY) != 0
                or verify(wrong, message, len(message), RFC8439_KEY) == 0
            ):
                return False
    except (AttributeError, OSError, ctypes.ArgumentError):
        return False
    return True


def tag_buffer() -> Any:
    """A buffer for :func:`generate_tag`'s ``out``: one per sending cipher (a connection's,
    used on its own event loop's thread only), so a tag does not make one of its own."""
    return ctypes.create_string_buffer(TAG_LEN)


def generate_tag(key: bytes, data: bytes, out: Any = None) -> bytes:
    """The Poly1305 tag of ``data`` under the one-time ``key`` (32 bytes). ``out``: a
    :func:`tag_buffer` libsodium writes the tag into (its bytes are copied out before
    returning; making a buffer per tag cost ~0.3 us of a short packet's ~0.8 us); None:
    a new one. Not shared between threads: a tag is written, then read back."""
    lib = _lib
    if lib is None or len(data) > SHORT or len(key) != KEY_LEN:
        return _generate(key, data)
    if out is None:
        out = ctypes.create_string_buffer(TAG_LEN)
    lib.crypto_onetimeauth_poly1305(out, data, _length(len(data)), key)
    tag: bytes = out.raw
    return tag


def verify_tag(key: bytes, data: bytes | memoryview, tag: bytes) -> bool:
    """Whether ``tag`` is the Poly1305 tag of ``data`` under the one-time ``key``."""
    lib = _lib
    if lib is None or len(data) > SHORT or len(key) != KEY_LEN or len(tag) != TAG_LEN:
        try:
            _verify(key, data, tag)
        except InvalidSignature:
            return False
        return True
    if type(data) is not bytes:
        data = bytes(data)  # a short copy: cheaper than a ctypes view of the buffer
    size = _length(len(data))
    return bool(lib.crypto_onetimeauth_poly1305_verify(tag, data, size, key) == 0)
