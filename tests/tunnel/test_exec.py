"""Exec channels as local processes (:class:`tunnel.exec.SubprocessExec`, the openssh
backend's, whose ``ssh -S`` hands its pipes to the master): the exit is seen when the
process exits, whoever still holds its pipes, and closing ends its whole group."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

from tests.peers import session_members, wait_until
from tunnel.exec import SubprocessExec

WAIT_S = 20.0


@contextlib.asynccontextmanager
async def shell(command: str) -> AsyncIterator[SubprocessExec]:
    """``sh -c command``; its session SIGKILLed on the way out, whatever the test did."""
    channel = await SubprocessExec.start(["/bin/sh", "-c"], command)
    try:
        yield channel
    finally:
        for pid in session_members(channel.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        channel.close()


async def test_the_exit_is_seen_while_a_background_job_holds_the_pipes() -> None:
    """asyncio's own wait ends only once every pipe is closed: here, never."""
    async with shell("sleep 600 & echo started; exit 3") as channel:
        assert await channel.read(64) == b"started\n"
        async with asyncio.timeout(WAIT_S):
            assert await channel.wait() == 3
        [job] = session_members(channel.process.pid)  # the job lives on, holding the pipes
        assert job != channel.process.pid


async def test_close_ends_the_group_and_lets_go_of_the_pipes() -> None:
    async with shell("sleep 600 & echo started; sleep 600") as channel:
        assert await channel.read(64) == b"started\n"
        # sh, the job and the last sleep (dash forks it when jobs run)
        await wait_until(lambda: len(session_members(channel.process.pid)) == 3, WAIT_S)
        channel.close()
        async with asyncio.timeout(WAIT_S):
            assert await channel.wait() == -signal.SIGTERM
            assert await channel.read(64) == b""  # our end closed
            assert await channel.read_stderr(64) == b""
        await wait_until(lambda: not session_members(channel.process.pid), WAIT_S)
