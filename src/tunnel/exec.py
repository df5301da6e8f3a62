"""Exec channels: a command run on the gateway, with its stdin, stdout and stderr.

What a UDP forward's relay runs in (:mod:`tunnel.udp_mouth`). Each link backend makes
them its own way: the asyncssh link opens a ``session`` channel with an ``exec`` request
(RFC 4254 §6.5; ``AsyncsshExec`` in :mod:`tunnel.backends.asyncssh_link`), the openssh
link runs ``ssh`` through its master's control socket (:class:`SubprocessExec`). The
command always goes through the user's login shell on the gateway, as with ``ssh host
COMMAND``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol


class ExecChannel(Protocol):
    """One command running on the gateway, its stdin, stdout and stderr as bytes."""

    async def write(self, data: bytes) -> None:
        """Write and wait until the channel took it (flow control)."""

    def write_nowait(self, data: bytes) -> bool:
        """Write now, without waiting, unless :data:`WRITE_HIGH_WATER` bytes are already
        waiting to go out: then write nothing and return False (use :meth:`write`)."""

    def write_eof(self) -> None: ...

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout; ``b""`` at its end."""

    async def read_stderr(self, size: int) -> bytes: ...

    async def wait(self) -> int | None:
        """The exit status once the command ended (None: killed, or unknown)."""

    def close(self) -> None:
        """End the command now (closing the channel)."""


WRITE_HIGH_WATER = 256 * 1024
"""Bytes queued on a channel beyond which :meth:`ExecChannel.write_nowait` declines."""

OpenExec = Callable[[str], Awaitable[ExecChannel]]
"""Start a command (one shell line, as ``ssh host COMMAND`` runs it) on the gateway."""


class SubprocessExec:
    """An :class:`ExecChannel` that is a local process: ``argv_prefix + [command]``.

    ``["/bin/sh", "-c"]`` runs the command here (the tests' gateway); the openssh backend
    runs ``ssh -S <control> … <gateway>`` + the command, through its master.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls, argv_prefix: Sequence[str], command: str, env: dict[str, str] | None = None
    ) -> SubprocessExec:
        process = await asyncio.create_subprocess_exec(
            *argv_prefix,
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        return cls(process)

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    def write_nowait(self, data: bytes) -> bool:
        stdin = self.process.stdin
        assert stdin is not None
        if stdin.is_closing() or stdin.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            return False
        stdin.write(data)
        return True

    def write_eof(self) -> None:
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()

    async def read(self, size: int) -> bytes:
        assert self.process.stdout is not None
        return await self.process.stdout.read(size)

    async def read_stderr(self, size: int) -> bytes:
        assert self.process.stderr is not None
        return await self.process.stderr.read(size)

    async def wait(self) -> int | None:
        return await self.process.wait()

    def close(self) -> None:
        self.write_eof()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
