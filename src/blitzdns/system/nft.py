"""nftables from inside this process: libnftables (the library ``nft`` itself is built on).

``nft -f FILE`` hands the file to ``nft_run_cmd_from_buffer`` of libnftables, which sends
the whole batch to the kernel as one netlink transaction: either every command applies or
none does. Calling the library directly does the same, with one difference that matters
for the daemon: no program is executed, so the refresh after the privilege drop works
with CAP_NET_ADMIN in this process's effective set alone, without putting the capability
in the ambient set, where every child (ssh among them) would inherit it.

Where the library cannot be loaded, the ``nft`` program is run instead (root only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import shutil
import subprocess
import threading

from blitzdns.errors import BlitzdnsError

_NFT_CTX_DEFAULT = 0
_lock = threading.Lock()


class NftFailed(BlitzdnsError):
    """nftables refused a rule set (the message is nft's own), or is not available."""


@functools.cache
def _load() -> ctypes.CDLL | None:
    """libnftables with its prototypes declared, once; None where it is not installed."""
    name = ctypes.util.find_library("nftables") or "libnftables.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.nft_ctx_new.restype = ctypes.c_void_p
    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
    lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
    return lib


def run(script: str) -> str:
    """Run an nft script (commands or a whole rule set) as one transaction; its output.

    Raises :class:`NftFailed` with nft's error text when the kernel or the parser refuses
    it (nothing of the script then applies).
    """
    lib = _load()
    if lib is None:
        return _run_program(script)
    with _lock:
        ctx = lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not ctx:
            raise NftFailed("nftables: cannot create a context")
        try:
            lib.nft_ctx_buffer_output(ctx)
            lib.nft_ctx_buffer_error(ctx)
            status = lib.nft_run_cmd_from_buffer(ctx, script.encode())
            output = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            error = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            lib.nft_ctx_free(ctx)
    if status != 0:
        raise NftFailed(_summary(error) or f"nftables refused the rule set (status {status})")
    return output


def _run_program(script: str) -> str:
    program = shutil.which("nft") or ("/usr/sbin/nft" if shutil.which("/usr/sbin/nft") else None)
    if program is None:
        raise NftFailed("nftables is not installed here (neither libnftables nor nft)")
    done = subprocess.run(
        [program, "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise NftFailed(_summary(done.stderr) or f"nft exited {done.returncode}")
    return done.stdout


def _summary(error: str) -> str:
    """nft's first error line (it follows with the offending line and a caret)."""
    for line in error.splitlines():
        if "Error:" in line:
            return line.strip()
    return error.strip().splitlines()[0] if error.strip() else ""


def table_text(family: str, name: str) -> str | None:
    """``nft list table FAMILY NAME``, or None when there is no such table."""
    try:
        return run(f"list table {family} {name}")
    except NftFailed as exc:
        if "No such file or directory" in str(exc) or "does not exist" in str(exc):
            return None
        raise
