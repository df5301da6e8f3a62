"""A change notification on directories (Linux inotify(7)), as a wake-up for a poll loop.

The resolver watch polls every few seconds anyway; inotify only makes it react at once
when a file in a watched directory is written, renamed over, created or removed (a DHCP
client replaces /etc/resolv.conf by a rename). Elsewhere, or when inotify is unavailable,
:meth:`DirectoryWatch.start` returns a watch that does nothing and the poll alone acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# inotify(7)
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE


class DirectoryWatch:
    """Calls ``wake`` (in the event loop) whenever something changes in the directories."""

    def __init__(self, fd: int | None, wake: Callable[[], None]):
        self.fd = fd
        self.wake = wake

    @classmethod
    def start(cls, directories: Sequence[Path], wake: Callable[[], None]) -> DirectoryWatch:
        if not sys.platform.startswith("linux") or not directories:
            return cls(None, wake)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return cls(None, wake)
        if fd < 0:
            return cls(None, wake)
        added = 0
        for directory in directories:
            if libc.inotify_add_watch(fd, os.fsencode(directory), MASK) >= 0:
                added += 1
        if not added:
            os.close(fd)
            return cls(None, wake)
        watch = cls(fd, wake)
        asyncio.get_running_loop().add_reader(fd, watch._readable)
        return watch

    def _readable(self) -> None:
        assert self.fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass
        self.wake()

    def close(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)
        self.fd = None
