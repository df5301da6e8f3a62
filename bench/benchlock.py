"""The machine-wide benchmark lock: benchmarks on this shared 2-core machine take turns."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from blitzdns.system.install import flock_within

LOCK_PATH = Path("/tmp/blitzdns-bench.lock")


@contextlib.contextmanager
def bench_lock(wait_s: float) -> Iterator[None]:
    """Hold the machine-wide benchmark lock (``flock``), waiting at most ``wait_s``."""
    with LOCK_PATH.open("a") as handle:
        if not flock_within(handle.fileno(), wait_s, poll_s=0.5):
            raise SystemExit(f"{LOCK_PATH} still held after {wait_s} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
