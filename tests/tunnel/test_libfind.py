"""tunnel.libfind: asyncssh is imported without a dozen processes, and finds what it found."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
print(json.dumps({
    "started": started,
    "umac": hasattr(crypto, "umac64"),
    "sntrup": crypto.sntrup_available,
    "mlkem": crypto.mlkem_available,
}))
"""


def probe(how: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, how], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@linux_only
def test_asyncssh_through_sshlib_starts_one_process_and_offers_the_same() -> None:
    plain, cheap = probe("plain"), probe("sshlib")
    # One `ldconfig -p` for asyncssh's lookups and libc's together (CPython: one per name,
    # then gcc and ld for each miss).
    assert cheap["started"] == [libfind.LDCONFIG]
    assert {k: v for k, v in cheap.items() if k != "started"} == {
        k: v for k, v in plain.items() if k != "started"
    }


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
