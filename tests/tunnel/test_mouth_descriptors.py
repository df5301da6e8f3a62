"""A mouth out of file descriptors pauses accepting instead of spinning on its listener."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket

import pytest

from tunnel.forwards import Forward
from tunnel.link import Link
from tunnel.mouths import Mouth

from ..peers import free_port, wait_until


class NoLink:
    """A link source whose link never comes (the mouth holds what it accepts)."""

    link: Link | None = None

    async def wait_link(
        self, stale: object | None = None, since: float | None = None
    ) -> Link | None:
        await asyncio.Event().wait()
        return None

    def flow_ended(self) -> None:
        return None


async def test_out_of_descriptors_is_said_once_and_accepting_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The listener stays readable while accept() fails with EMFILE: retrying at once spun
    the loop and logged "accept failed" tens of thousands of times a second. Now one line,
    no accept while starved, and the waiting connection is taken once descriptors are free."""
    caplog.set_level(logging.INFO, logger="tunnel")
    mouth = Mouth(Forward("127.0.0.1", free_port(), "target.test", 7), NoLink())
    await mouth.bind()
    client = socket.socket()
    client.setblocking(False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
        with pytest.raises(OSError):
            while True:
                hog.append(os.open(os.devnull, os.O_RDONLY))
        client.connect_ex(("127.0.0.1", mouth.forward.mouth_port))
        await wait_until(lambda: "out of file descriptors" in caplog.text, timeout_s=30)
        for _ in range(50):  # loop iterations, not time: each would be another accept
            await asyncio.sleep(0)
        starved = [r for r in caplog.records if r.name.startswith("tunnel")]
        assert [r.getMessage() for r in starved] == [
            f"mouth 127.0.0.1:{mouth.forward.mouth_port}: out of file descriptors "
            "(Too many open files); new connections wait"
        ]
        assert mouth.counters.total == 0
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        await wait_until(lambda: mouth.counters.total == 1, timeout_s=30)
        assert "accepting again" in caplog.text
    finally:
        client.close()
        await mouth.close()
