"""tunnel.libfind / tunnel.sshlib: asyncssh is imported without a dozen processes and without
the X.509 module it cannot use, and offers what a plain import offers."""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel import libfind

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux lookup")

#: Counts the processes the code after it starts, then prints what asyncssh can offer.
PROBE = """
import json, subprocess, sys
started = []
original = subprocess.Popen.__init__
def counting(self, args, *rest, **kwargs):
    started.append(str(args[0]))
    original(self, args, *rest, **kwargs)
subprocess.Popen.__init__ = counting
if sys.argv[1] == "sshlib":
    from tunnel.sshlib import asyncssh
    from tunnel.libc import libc
    assert libc() is not None
else:
    import asyncssh
import asyncssh.crypto as crypto
from asyncssh import kex, public_key
print(json.dumps({
    "started": started,
    "x509_loaded": "cryptography.x509" in sys.modules,
    "x509": public_key._x509_available,
    "left_blocked": sys.modules.get("asyncssh.crypto.x509", 0) is None,
    "key_algs": [a.decode() for a in public_key.get_public_key_algs()],
    "cert_algs": [a.decode() for a in public_key.get_certificate_algs()],
    "kex_algs": [a.decode() for a in kex.get_kex_algs()],
    "umac": hasattr(crypto, "umac64"),
    "sntrup": crypto.sntrup_available,
    "mlkem": crypto.mlkem_available,
}))
"""


def probe(how: str, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@linux_only
def test_asyncssh_through_sshlib_starts_one_process_and_offers_the_same() -> None:
    plain, cheap = probe("plain"), probe("sshlib")
    # Not one process for asyncssh's lookups and libc's (CPython: `ldconfig -p` per name,
    # then gcc and ld for each miss): the linker's cache file is read instead.
    assert cheap["started"] == []
    same = {k: v for k, v in cheap.items() if k not in ("started", "x509_loaded")}
    assert same == {k: v for k, v in plain.items() if k not in ("started", "x509_loaded")}


def test_asyncssh_through_sshlib_skips_the_x509_module_it_cannot_use() -> None:
    # No PyOpenSSL here (not a dependency): a plain import loads cryptography.x509 and
    # then fails on `from OpenSSL import crypto`; through sshlib it is not tried at all.
    plain, cheap = probe("plain"), probe("sshlib")
    assert plain["x509"] is False
    assert plain["x509_loaded"] is True
    assert cheap["x509_loaded"] is False
    assert cheap["left_blocked"] is False  # the block ends with the import


def test_with_pyopenssl_installed_sshlib_blocks_nothing(tmp_path: Path) -> None:
    # A stand-in OpenSSL package: asyncssh's X.509 module is tried (and cryptography.x509
    # loaded) as in a plain import.
    (tmp_path / "OpenSSL").mkdir()
    (tmp_path / "OpenSSL" / "__init__.py").write_text("")
    path = os.pathsep.join([str(tmp_path), *sys.path])
    cheap = probe("sshlib", env={**os.environ, "PYTHONPATH": path})
    assert cheap["x509_loaded"] is True


@linux_only
@pytest.mark.parametrize("name", ["c", "nettle", "crypto", "z", "oqs", "no-such-library-here"])
def test_the_same_library_as_ctypes_finds(name: str) -> None:
    assert libfind.find_library(name) == ctypes.util.find_library(name)


@linux_only
def test_a_library_outside_the_cache_is_found_in_ld_library_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path
    (directory / "libblitzdnstest.so.3").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{directory}")
    libfind.find_library.cache_clear()
    try:
        assert libfind.find_library("blitzdnstest") == str(directory / "libblitzdnstest.so.3")
    finally:
        libfind.find_library.cache_clear()


@linux_only
def test_the_patch_is_only_in_force_within_the_block() -> None:
    original = ctypes.util.find_library
    with libfind.cheap_find_library():
        assert ctypes.util.find_library is libfind.find_library
    assert ctypes.util.find_library is original


def regex_search(name: bytes, abi: bytes, listing: bytes) -> bytes | None:
    """CPython's ctypes.util search of the ``ldconfig -p`` listing (3.11-3.13)."""
    match = re.search(rb"\s+(lib%s\.[^\s]+)\s+\(%s" % (re.escape(name), abi), listing)
    return match.group(1) if match else None


@linux_only
def test_the_listing_search_finds_what_the_regex_finds_in_the_real_listing() -> None:
    listing = libfind.ldconfig_listing()
    abi = libfind.abi_tag().encode()
    names = {b"c", b"nettle", b"oqs", b"liboqs", b"crypto", b"ssl", b"z", b"m", b"no-such"}
    for line in listing.splitlines()[1:]:  # every name in the cache: libNAME.so...
        soname = line.split()[0] if line.split() else b""
        if soname.startswith(b"lib") and b".so" in soname:
            names.add(soname[3 : soname.index(b".so")])
    for name in sorted(names):
        assert libfind.search_listing(name, abi, listing) == regex_search(name, abi, listing)


#: Made-up listings: the pieces a real one has, and the near misses around them.
PIECES = st.sampled_from(
    [
        b"\t",
        b" ",
        b"\n",
        b"lib",
        b"foo",
        b"foo.so",
        b".so.1",
        b".",
        b"(",
        b"libc6,x86-64",
        b"(libc6,x86-64)",
        b" => /usr/lib/libfoo.so.1",
        b"libfoo.so.2 ",
        b"x",
        b"\x0b",
        b"\r",
    ]
)


@given(st.lists(PIECES, max_size=40).map(b"".join), st.sampled_from([b"foo", b"fo", b"c"]))
def test_the_listing_search_finds_what_the_regex_finds(listing: bytes, name: bytes) -> None:
    for abi in (b"libc6,x86-64", b"libc6"):
        assert libfind.search_listing(name, abi, listing) == regex_search(name, abi, listing)


@linux_only
def test_the_cache_file_lists_what_ldconfig_lists() -> None:
    """The twin: every name of the real cache (and names it lacks) is found in the listing
    made from /etc/ld.so.cache exactly as in `ldconfig -p`'s."""
    with open(libfind.LD_SO_CACHE, "rb") as file:
        made = libfind.cache_listing(file.read())
    listed = libfind.ldconfig_output()
    if made is None or not listed:
        pytest.skip("no glibc 2.32+ cache file or no ldconfig here")
    assert libfind.ldconfig_listing() == made
    abi = libfind.abi_tag().encode()
    names = {b"c", b"nettle", b"oqs", b"liboqs", b"crypto", b"ssl", b"z", b"no-such"}
    entries = [line.split()[0] for line in listed.splitlines()[1:] if line.startswith(b"\t")]
    assert entries == [line.split()[0] for line in made.splitlines()[1:]]
    for soname in entries:
        if soname.startswith(b"lib") and b".so" in soname:
            names.add(soname[3 : soname.index(b".so")])
    for name in sorted(names):
        for tag in {abi, b"libc6", b"libc6,x86-64", b"libc6,64bit"}:
            assert libfind.search_listing(name, tag, made) == regex_search(name, tag, listed)


def test_a_cache_file_not_understood_falls_back_to_ldconfig() -> None:
    data = libfind.CACHE_MAGIC + bytes(28)  # no entries
    assert libfind.cache_listing(data) == b"0 libs found in cache `/etc/ld.so.cache'\n"
    assert libfind.cache_listing(b"ld.so-1.7.0" + bytes(64)) is None  # glibc < 2.32
    assert libfind.cache_listing(libfind.CACHE_MAGIC + bytes(10)) is None  # cut short
    other = 3 if sys.byteorder == "little" else 2
    header = libfind.CACHE_MAGIC + struct.pack("=IIB", 0, 0, other) + bytes(19)
    assert libfind.cache_listing(header) is None  # the other byte order
    many = libfind.CACHE_MAGIC + struct.pack("=IIB", 1000, 0, 0) + bytes(19)
    assert libfind.cache_listing(many) is None  # more entries than bytes
    entry = struct.pack("=iIIIQ", 0x0303, 4000, 4000, 0, 0)  # names beyond the file
    loose = libfind.CACHE_MAGIC + struct.pack("=IIB", 1, 0, 0) + bytes(19) + entry
    assert libfind.cache_listing(loose) is None
