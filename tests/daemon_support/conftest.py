"""Fixtures shared by the daemon-support tests."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import pytest

ChildRunner = Callable[[Callable[[], None]], None]


def run_in_child(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child (it may change users); re-raise its failure here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            body()
            report = b"OK"
        except BaseException:
            report = traceback.format_exc().encode()
        os.write(write_end, report)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    report = b"".join(chunks).decode()
    assert report == "OK", f"in the child:\n{report}"


@pytest.fixture
def in_child() -> ChildRunner:
    """:func:`run_in_child`, for tests that switch users or capabilities."""
    return run_in_child
