"""The machine-wide benchmark lock: benchmarks on this shared 2-core machine take turns."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_PATH = Path("/tmp/blitzdns-bench.lock")


@contextlib.contextmanager
def bench_lock(wait_s: float) -> Iterator[None]:
    """Hold the machine-wide benchmark lock (``flock``), waiting at most ``wait_s``."""
    with LOCK_PATH.open("a") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{LOCK_PATH} still held after {wait_s} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
