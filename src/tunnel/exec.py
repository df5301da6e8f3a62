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
import os
import signal
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

STREAM_LIMIT = 2**16
"""The stream reader's buffer limit (asyncio's default for subprocesses)."""

OpenExec = Callable[[str], Awaitable[ExecChannel]]
"""Start a command (one shell line, as ``ssh host COMMAND`` runs it) on the gateway."""


class _ExitSeen(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol, and a future done when the process itself exited.

    asyncio (3.11) ends ``process.wait()`` only once every pipe it made is closed, and the
    command's pipes may outlive it: ``ssh -S`` hands its stdin, stdout and stderr to the
    master, which keeps them until the gateway closes the session (a frozen gateway: until
    the master dies); a shell's background job inherits them.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class SubprocessExec:
    """An :class:`ExecChannel` that is a local process: ``argv_prefix + [command]``.

    ``["/bin/sh", "-c"]`` runs the command here (the tests' gateway); the openssh backend
    runs ``ssh -S <control> … <gateway>`` + the command, through its master. The process
    leads a process group of its own; :meth:`close` ends the group.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        transport: asyncio.SubprocessTransport,
        exited: asyncio.Future[None],
    ) -> None:
        self.process = process
        self._transport = transport
        self._exited = exited

    @classmethod
    async def start(
        cls, argv_prefix: Sequence[str], command: str, env: dict[str, str] | None = None
    ) -> SubprocessExec:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitSeen(STREAM_LIMIT, loop),
            *argv_prefix,
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        process = asyncio.subprocess.Process(transport, protocol, loop)
        return cls(process, transport, protocol.exited)

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
        """The exit status once the process exited, whoever still holds its pipes."""
        await asyncio.shield(self._exited)
        return self.process.returncode

    def close(self) -> None:
        """EOF on stdin, SIGTERM to the process's group (its own, from
        ``start_new_session``; signalled only while asyncio has not yet reported the
        leader's exit: with a threaded or pidfd child watcher the leader may be reaped a
        moment before that, so a pid reused as a new group leader in that window could be
        hit: very unlikely, and uvloop reports at the reap), and our ends of its pipes
        closed once it exited."""
        self.write_eof()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
        self._exited.add_done_callback(lambda _: self._transport.close())
