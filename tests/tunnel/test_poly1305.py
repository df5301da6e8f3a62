"""Poly1305 tags from libsodium (tunnel.backends.poly1305) against cryptography's."""

from __future__ import annotations

import ctypes
import platform
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from tests.peers import free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends import poly1305
from tunnel.libfind import find_library

from .tunnel_testlib import Target, exchange, link_up

LENGTHS = [*range(0, 70), 255, 256, 1500, 4095, 4096, 4097, 32768]


def need_libsodium() -> Any:
    """The system's libsodium, or a skip that says so: a "found" case run without it would
    test cryptography's tags a second time and pass without having tested anything."""
    lib = poly1305.sodium()
    if lib is None:
        pytest.skip("libsodium (Debian: libsodium23) is not on this system")
    return lib


def test_libsodium_is_used_where_the_system_has_it() -> None:
    assert (poly1305.sodium() is not None) == (find_library("sodium") is not None)


async def test_libsodium_is_loaded_at_the_first_connection_not_before(
    options: TunnelOptions, echo: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle daemon's link (its key exchange and authentication are chacha20 packets
    too) does not map libsodium; the first carried connection does."""
    need_libsodium()
    monkeypatch.setattr(poly1305, "_lib", None)
    assert options.ssh_config is not None
    options.ssh_config.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        await link_up(tunnel)
        assert poly1305._lib is None
        assert await exchange(*forward.mouth, b"first\n") == b"first\n"
        assert poly1305._lib is poly1305.sodium()


def use_lengths(kind: str, lib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give ``lib``'s tags their input lengths as ``kind`` says: "int" (a skip where
    :func:`poly1305.int_lengths` does not hold here) or "c_ulonglong"."""
    if kind == "int" and not poly1305.int_lengths(lib):
        pytest.skip("ints are not passed as lengths on this machine")
    monkeypatch.setattr(poly1305, "_length", int if kind == "int" else ctypes.c_ulonglong)


@pytest.mark.parametrize(
    "library", ["found, int lengths", "found, c_ulonglong", "found, gate raises", "absent"]
)
def test_tags_are_cryptographys_for_every_kind_of_input(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if library == "absent":
        monkeypatch.setattr(poly1305, "_lib", None)
    else:
        lib = need_libsodium()
        monkeypatch.setattr(poly1305, "_lib", lib)
        use_lengths(library.split(", ")[1].split(maxsplit=1)[0], lib, monkeypatch)
    rng = random.Random(18)
    for length in LENGTHS:
        key = rng.randbytes(32)
        data = rng.randbytes(length)
        tag = Poly1305.generate_tag(key, data)
        assert poly1305.generate_tag(key, data) == tag, length
        framed = bytearray(b"x" + data + b"y")
        for given in (data, memoryview(framed)[1:-1], memoryview(data)):
            assert poly1305.verify_tag(key, given, tag), length
        wrong_tag = bytes([tag[0] ^ 0x80]) + tag[1:]
        assert not poly1305.verify_tag(key, data, wrong_tag), length
        assert not poly1305.verify_tag(key, data, tag[:15]), length
        if length:
            changed = bytes([data[0] ^ 1]) + data[1:]
            assert not poly1305.verify_tag(key, changed, tag), length
        other = key[:-1] + bytes([key[-1] ^ 1])  # in s: changes even the empty tag
        assert not poly1305.verify_tag(other, data, tag), length


@pytest.mark.parametrize("library", ["found", "absent"])
def test_a_kept_tag_buffer_gives_each_tag_its_own_bytes(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One buffer for a cipher's tags (poly1305.tag_buffer): every tag is cryptography's,
    and a tag returned before is not changed by the next one written into the buffer."""
    monkeypatch.setattr(poly1305, "_lib", need_libsodium() if library == "found" else None)
    rng = random.Random(9)
    out = poly1305.tag_buffer()
    given: list[tuple[bytes, bytes]] = []
    for length in LENGTHS:
        key = rng.randbytes(32)
        data = rng.randbytes(length)
        tag = poly1305.generate_tag(key, data, out)
        assert type(tag) is bytes
        assert tag == Poly1305.generate_tag(key, data), length
        given.append((tag, Poly1305.generate_tag(key, data)))
    assert all(tag == expected for tag, expected in given)


class _Wrong:
    """libsodium that tags one bit wrong: the known-answer check must refuse it."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.sodium_init = lib.sodium_init
        self.crypto_onetimeauth_poly1305_verify = lib.crypto_onetimeauth_poly1305_verify

    def crypto_onetimeauth_poly1305(self, out: Any, *args: Any) -> int:
        result: int = self.lib.crypto_onetimeauth_poly1305(out, *args)
        out[0] = bytes([out.raw[0] ^ 1])
        return result


class _Raising(_Wrong):
    """libsodium whose tag call raises (as a missing symbol or a refused argument would)."""

    def crypto_onetimeauth_poly1305(self, out: Any, *args: Any) -> int:
        raise ctypes.ArgumentError("argument 3: wrong type")


def test_a_gate_that_raises_means_c_ulonglong_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """int_lengths() answers False, not an exception, for a library whose calls raise:
    want() runs inside the first connection and must not fail it."""
    lib = need_libsodium()
    assert not poly1305.int_lengths(_Raising(lib))
    assert not poly1305.int_lengths(object())  # no such symbols at all
    real = poly1305.int_lengths
    monkeypatch.setattr(poly1305, "int_lengths", lambda lib: real(_Raising(lib)))
    monkeypatch.setattr(poly1305, "_length", poly1305._length)  # put back after
    monkeypatch.setattr(poly1305, "_lib", None)
    poly1305.want()
    assert poly1305._lib is lib
    assert poly1305._length is ctypes.c_ulonglong


def test_lengths_go_as_ints_only_where_libffi_widens_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The length of a tag's input goes to libsodium as a Python int on a 64-bit x86 or
    ARM machine whose library gives the known answers that way, as a c_ulonglong
    anywhere else (the machine unknown, a library that tags wrong); want() sets it."""
    lib = need_libsodium()
    here = (
        platform.machine() in poly1305.INT_LENGTH_MACHINES and ctypes.sizeof(ctypes.c_void_p) == 8
    )
    assert poly1305.int_lengths(lib) == here
    assert not poly1305.int_lengths(_Wrong(lib))
    monkeypatch.setattr(poly1305, "_length", poly1305._length)  # put back after
    monkeypatch.setattr(poly1305, "_lib", None)
    poly1305.want()
    assert poly1305._lib is lib
    assert poly1305._length is (int if here else ctypes.c_ulonglong)
    monkeypatch.setattr(platform, "machine", lambda: "i686")
    assert not poly1305.int_lengths(lib)
    monkeypatch.setattr(poly1305, "_lib", None)
    poly1305.want()
    assert poly1305._length is ctypes.c_ulonglong


def test_a_library_that_fails_the_known_answer_is_not_used() -> None:
    assert not poly1305._checked(object())  # no such symbols at all
    lib = need_libsodium()
    assert poly1305._checked(lib)
    assert not poly1305._checked(_Wrong(lib))
    assert not poly1305._checked(ctypes.CDLL(find_library("c") or None))  # no such symbols


@pytest.mark.parametrize(
    "library", ["found, int lengths", "found, c_ulonglong", "found, gate raises", "absent"]
)
async def test_chacha_connections_carry_with_or_without_libsodium(
    options: TunnelOptions, echo: Target, library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshd checks every tag we make and we check its: short lines (libsodium's tags where
    found, their lengths given as ints or as c_ulonglong) and a 20 KiB line (packets over
    SHORT: cryptography's) both ways."""
    monkeypatch.setattr(poly1305, "_lib", None)  # want() decides again at the first one
    monkeypatch.setattr(poly1305, "_length", poly1305._length)  # put back after
    if library == "absent":  # where libsodium is missing: cryptography's tags
        monkeypatch.setattr(poly1305, "sodium", lambda: None)
    elif library == "found, int lengths":
        if not poly1305.int_lengths(need_libsodium()):
            pytest.skip("ints are not passed as lengths on this machine")
    elif library == "found, gate raises":  # int_lengths' own calls raise: c_ulonglong
        need_libsodium()
        real = poly1305.int_lengths
        monkeypatch.setattr(poly1305, "int_lengths", lambda lib: real(_Raising(lib)))
    else:
        need_libsodium()
        monkeypatch.setattr(poly1305, "int_lengths", lambda lib: False)
    assert options.ssh_config is not None
    options.ssh_config.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        await link_up(tunnel)
        for line in (b"short\n", b"x" * 20000 + b"\n", b"again\n"):
            assert await exchange(*forward.mouth, line) == line
    ints = library == "found, int lengths"
    assert poly1305._length is (int if ints else ctypes.c_ulonglong)


def test_the_gate_does_not_ask_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where OpenSSL's FIPS provider is in force cryptography's Poly1305 raises: the gate,
    asked at every link's first connection whatever the cipher, takes the long message's
    answer from libsodium (its length as the checked c_ulonglong), so it answers the same."""
    lib = need_libsodium()
    here = poly1305.int_lengths(lib)

    def unsupported(key: bytes, data: bytes) -> bytes:
        raise RuntimeError("poly1305 is not supported by this backend (FIPS)")

    monkeypatch.setattr(poly1305, "_generate", unsupported)
    assert poly1305.int_lengths(lib) == here
