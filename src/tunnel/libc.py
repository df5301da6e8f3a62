"""The C library, for what Python does not wrap: ``sendmmsg`` (a socket handed to the ssh
master in one call), ``prctl`` (the master's death signal), ``malloc_trim`` (memory given
back after a burst: :class:`HeapTrimmer`)."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import sys

from tunnel.libfind import find_library

TRIM_AFTER_FLOWS = 32
"""Connections ended since the last trim that make a burst worth giving memory back for."""
TRIM_DELAY_S = 1.0
"""The trim runs this long after the burst's first end, once (its cost: ~10 ms when it
releases tens of MB, ~0.1 ms when there is nothing to release)."""


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (errno kept), for the calls Python does not wrap; ``None`` if absent."""
    try:
        return ctypes.CDLL(find_library("c") or None, use_errno=True)
    except OSError:
        return None


class HeapTrimmer:
    """Gives the heap freed after a burst of connections back to the system.

    Each connection's buffers (SSH packets, channel windows, transport queues) are many
    short-lived allocations; once freed, glibc keeps them in the process heap, so after
    200 concurrent 1 MB transfers the RSS stayed 20–30 MB above idle for good. After
    ``TRIM_AFTER_FLOWS`` ends, ``malloc_trim(0)`` runs once, ``TRIM_DELAY_S`` later: at
    most once a second under a steady load. A no-op without glibc (``malloc_trim``).
    """

    def __init__(self) -> None:
        library = libc() if sys.platform.startswith("linux") else None
        self._trim = getattr(library, "malloc_trim", None)
        self._ended = 0
        self._handle: asyncio.TimerHandle | None = None
        self.trims = 0

    def flow_ended(self) -> None:
        if self._trim is None:
            return
        self._ended += 1
        if self._ended >= TRIM_AFTER_FLOWS and self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._run)

    def _run(self) -> None:
        self._handle = None
        self._ended = 0
        assert self._trim is not None
        self._trim(0)
        self.trims += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
