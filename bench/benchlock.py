"""The machine-wide benchmark lock: benchmarks on this shared 2-core machine take turns."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from blitzdns.system.install import flock_within

LOCK_PATH = Path("/tmp/blitzdns-bench.lock")


def _wait_in_line(fd: int, wait_s: float) -> bool:
    """Take the lock with a blocking ``flock``, given up after ``wait_s`` (SIGALRM): a
    waiter in the kernel's queue, as ``flock(1)`` from the shell is. A polling waiter
    (``LOCK_NB`` every half second) lost every hand-over to such waiters and could wait
    for nothing for the whole bound (session 9). Off the main thread: polling."""
    if threading.current_thread() is not threading.main_thread() or wait_s <= 0:
        return flock_within(fd, wait_s, poll_s=0.5)

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, wait_s)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except TimeoutError:
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


@contextlib.contextmanager
def bench_lock(wait_s: float) -> Iterator[None]:
    """Hold the machine-wide benchmark lock (``flock``), waiting at most ``wait_s`` in
    line with every other waiter."""
    with LOCK_PATH.open("a") as handle:
        if not _wait_in_line(handle.fileno(), wait_s):
            raise SystemExit(f"{LOCK_PATH} still held after {wait_s} s")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
