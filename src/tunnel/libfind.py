"""Finding a shared library by name without a dozen processes: :func:`find_library`.

``ctypes.util.find_library`` on Linux (CPython 3.11–3.13) runs ``/sbin/ldconfig -p`` for
every name it is asked, and when the name is not there, ``gcc`` (which runs ``collect2``
and ``ld``), then ``ld`` again. ``import asyncssh`` asks for three names that are
usually missing or found late (``oqs`` and ``liboqs`` for sntrup761, in
``asyncssh.crypto.pq``; ``nettle`` for the UMAC MACs, in ``asyncssh.crypto.umac``): 11
processes, the largest single cost of ``blitzdns run``'s start (about 30 ms of an idle
machine's 0.3 s, several times that under load; ``python -X importtime``: the self time
of ``asyncssh.crypto.pq``). :func:`cheap_find_library` answers those lookups from one
listing of the dynamic linker's cache, read once per process (from the cache file itself,
so no process at all; ``ldconfig -p`` where the file's format is not glibc's current one),
with the same pattern CPython matches ``ldconfig -p``'s with, and falls back to a look
into ``LD_LIBRARY_PATH`` and the dynamic linker's default directories (what the
``gcc``/``ld`` fallback would find and ``dlopen`` could load).
Elsewhere than Linux ``find_library`` spawns nothing and is left as it is.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import functools
import os
import struct
import subprocess
import sys
from collections.abc import Iterator

LDCONFIG = "/sbin/ldconfig"
DEFAULT_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")
"""Searched after the cache, as the dynamic linker does (ld.so(8)), with LD_LIBRARY_PATH
before them."""
_ABI = {
    "x86_64-64": "libc6,x86-64",
    "ppc64-64": "libc6,64bit",
    "sparc64-64": "libc6,64bit",
    "s390x-64": "libc6,64bit",
    "ia64-64": "libc6,IA-64",
}
"""``ldconfig -p``'s tag for this machine's ABI (the table of CPython's ctypes.util)."""


LD_SO_CACHE = "/etc/ld.so.cache"
CACHE_MAGIC = b"glibc-ld.so.cache1.1"
"""glibc's cache format since 2.32 (``elf/cache.c``, ``sysdeps/generic/dl-cache.h``): a
48-byte header (this magic, the number of entries, the strings' length, flags whose low
two bits say the byte order, an extension's offset), then one 24-byte entry per library
(flags, the name's and the path's offsets from the file's start, an OS version, hwcaps)."""
_TYPES = {0: b"libc4", 1: b"ELF", 2: b"libc5", 3: b"libc6"}
_REQUIRED = {
    0x0000: b"",
    0x0100: b",64bit",  # SPARC
    0x0200: b",IA-64",
    0x0300: b",x86-64",
    0x0400: b",64bit",  # s390x
    0x0500: b",64bit",  # POWER
}
"""How ``ldconfig -p`` names an entry's ABI (``print_entry``): its type, then what it
requires, for the values :data:`_ABI`'s tags are made of (others as ``ldconfig`` prints an
unknown one, ``,<number>``: never one of those tags)."""


@functools.cache
def ldconfig_listing() -> bytes:
    """The dynamic linker's cache, one library a line as ``ldconfig -p`` lists it, read
    once: from the cache file itself (:func:`cache_listing`), else (an older format, another
    byte order, no such file) from ``ldconfig -p``; empty where there is neither."""
    try:
        with open(LD_SO_CACHE, "rb") as file:
            listing = cache_listing(file.read())
    except OSError:
        listing = None
    return listing if listing is not None else ldconfig_output()


def cache_listing(data: bytes) -> bytes | None:
    """``ldconfig -p``'s lines for the search (``\\tNAME (ABI)``, in the cache's order;
    without the paths, which the search does not read) from the cache file's bytes;
    ``None`` when they are not glibc's current format in this machine's byte order or do
    not hold together. Spawning ``ldconfig`` (which reads this same file) cost ~1.2 ms of
    CPU and ~2 ms of wall time at each start; this, ~0.45 ms and no process."""
    if not data.startswith(CACHE_MAGIC) or len(data) < 48:
        return None
    count, _strings, flags = struct.unpack_from("=IIB", data, len(CACHE_MAGIC))
    endian = flags & 0b11  # 0: not recorded (glibc 2.32), 2: little, 3: big
    if endian not in (0, 2 if sys.byteorder == "little" else 3) or 48 + 24 * count > len(data):
        return None
    lines = [b"%d libs found in cache `%s'\n" % (count, LD_SO_CACHE.encode())]
    abis: dict[int, bytes] = {}
    find = data.find
    for entry_flags, key, _value, _os, _hwcap in struct.iter_unpack(
        "=iIIIQ", data[48 : 48 + 24 * count]
    ):
        name_end = find(b"\0", key)
        if name_end < 0:
            return None
        abi = abis.get(entry_flags)
        if abi is None:
            required = entry_flags & 0xFF00
            kind = _TYPES.get(entry_flags & 0xFF, b"unknown")
            abi = abis[entry_flags] = b" (" + kind + _REQUIRED.get(required, b",%d" % required)
        lines += (b"\t", data[key:name_end], abi, b")\n")
    return b"".join(lines)


def ldconfig_output() -> bytes:
    """``ldconfig -p``; empty where there is no glibc ldconfig."""
    try:
        return subprocess.run(
            [LDCONFIG, "-p"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"LC_ALL": "C", "LANG": "C"},
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return b""


def abi_tag() -> str:
    bits = "32" if struct.calcsize("l") == 4 else "64"
    return _ABI.get(f"{os.uname().machine}-{bits}", "libc6")


_system_find_library = ctypes.util.find_library


@functools.cache
def find_library(name: str) -> str | None:
    """The soname (or path) ``ctypes.CDLL`` loads for ``name`` ("c", "nettle"), or ``None``."""
    if not sys.platform.startswith("linux"):
        return _system_find_library(name)
    cached = search_listing(name.encode(), abi_tag().encode(), ldconfig_listing())
    if cached is not None:
        return os.fsdecode(cached)
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    prefix = f"lib{name}.so"
    for directory in (*dirs, *DEFAULT_DIRS):
        with contextlib.suppress(OSError):
            found = sorted(
                entry
                for entry in os.listdir(directory)
                if entry == prefix or entry.startswith(prefix + ".")
            )
            if found:
                return os.path.join(directory, found[0])
    return None


WHITE_SPACE = b" \t\n\r\x0b\x0c"
"""What ``\\s`` matches in a bytes pattern."""


def search_listing(name: bytes, abi: bytes, listing: bytes) -> bytes | None:
    """What CPython's ``re.search(rb"\\s+(lib%s\\.[^\\s]+)\\s+\\(%s" % (name, abi),
    listing)`` gives as its group 1, found faster: that search tries its ``\\s+`` at
    every byte of the ~40 kB listing (~0.3-0.9 ms a name, three names at each start, plus
    the pattern's compile); here ``bytes.find`` goes to each ``lib<name>.`` preceded by
    white space, and the rest of the pattern is checked there. The leftmost such place is
    the leftmost match's (the white-space runs before two places cannot overlap), so the
    result is the same (tests/tunnel/test_libfind.py checks both on the real listing and on
    made-up ones)."""
    needle = b"lib" + name + b"."
    tail = b"(" + abi
    size = len(listing)
    at = listing.find(needle, 1)
    while at >= 0:
        if listing[at - 1] in WHITE_SPACE:
            end = stop = at + len(needle)
            while stop < size and listing[stop] not in WHITE_SPACE:
                stop += 1
            after = stop
            while after < size and listing[after] in WHITE_SPACE:
                after += 1
            if stop > end and after > stop and listing.startswith(tail, after):
                return listing[at:stop]
        at = listing.find(needle, at + 1)
    return None


@contextlib.contextmanager
def cheap_find_library() -> Iterator[None]:
    """Within the block, ``ctypes.util.find_library`` is :func:`find_library` (Linux only)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    original = ctypes.util.find_library
    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original
