"""Helpers for the UDP tests: a UDP target on loopback, and the relay run as a real
subprocess exactly as sshd runs it (``sh -c <command>``, program sent on stdin)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import cast

from tunnel.udp import (
    RELAY_PROGRAM,
    Frame,
    FrameDecoder,
    RelayLimits,
    SocatConnected,
    SocatDatagram,
    SocatTranscript,
    SocatTransfer,
    python_relay_command,
    socat_command,
)

WAIT_S = 20.0
"""Bound on every wait for something that must happen (a loaded machine is slow)."""


class UdpTarget(asyncio.DatagramProtocol):
    """A loopback UDP server: echoes (``mode="echo"``, prefixed with ``echo:``) or only
    records; every datagram and its source is kept in ``received``."""

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self, host: str = "127.0.0.1") -> UdpTarget:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, 0))
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        self.received.append((data, peer))
        self.arrived.set()
        if self.mode == "echo":
            self.send(b"echo:" + data, peer)

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, peer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def gone(pids: list[int]) -> bool:
    """Whether every one of ``pids`` has exited (and been reaped)."""
    return not any(Path(f"/proc/{pid}").exists() for pid in pids)


class RelayProcess:
    """The relay under ``sh -c``, its frames decoded into a queue as they arrive."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.decoder = FrameDecoder()
        self.stderr = b""
        self._reader = asyncio.create_task(self._read())
        self._errors = asyncio.create_task(self._read_stderr())

    @classmethod
    async def start(
        cls,
        target: tuple[str, int],
        limits: RelayLimits | None = None,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        chunk: int = 0,
    ) -> RelayProcess:
        """Start the relay; ``chunk`` > 0 sends the program in pieces of that size."""
        command = python_relay_command(target[0], target[1], limits or RelayLimits())
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
        )
        assert process.stdin is not None
        pieces = [RELAY_PROGRAM]
        if chunk:
            pieces = [RELAY_PROGRAM[i : i + chunk] for i in range(0, len(RELAY_PROGRAM), chunk)]
        for piece in pieces:
            process.stdin.write(piece)
            await process.stdin.drain()
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while data := await self.process.stdout.read(65536):
            for frame in self.decoder.feed(data):
                self.frames.put_nowait(frame)

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = await self.process.stderr.read()

    async def send(self, *frames: Frame) -> None:
        assert self.process.stdin is not None
        for frame in frames:
            self.process.stdin.write(frame.encode())
        await self.process.stdin.drain()

    async def next_frame(self, timeout_s: float = WAIT_S) -> Frame:
        async with asyncio.timeout(timeout_s):
            return await self.frames.get()

    async def close(self) -> int:
        """Close stdin (as a closing channel does) and wait for the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        async with asyncio.timeout(WAIT_S):
            status = await self.process.wait()
            await asyncio.gather(self._reader, self._errors)
        return status

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        self._errors.cancel()
        await asyncio.gather(self._reader, self._errors, return_exceptions=True)


class SocatProcess:
    """One socat association under ``sh -c``; stdout and the stderr log fed to a
    :class:`SocatTranscript`, its events sorted into ``connected``, ``ups`` (lengths of the
    transfers to the target) and ``datagrams`` (from the target)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.transcript = SocatTranscript()
        self.connected: SocatConnected | None = None
        self.ups: list[int] = []
        self.datagrams: list[bytes] = []
        self._tasks = [asyncio.create_task(self._pump(out)) for out in ("stdout", "stderr")]

    @classmethod
    async def start(
        cls, target: tuple[str, int], limits: RelayLimits | None = None
    ) -> SocatProcess:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            socat_command(target[0], target[1], limits or RelayLimits()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _pump(self, which: str) -> None:
        stream = getattr(self.process, which)
        feed = self.transcript.feed_output if which == "stdout" else self.transcript.feed_log
        while data := await stream.read(65536):
            for event in feed(data):
                if isinstance(event, SocatConnected):
                    self.connected = event
                elif isinstance(event, SocatTransfer):
                    self.ups.append(event.length)
                elif isinstance(event, SocatDatagram):
                    self.datagrams.append(event.payload)

    async def write(self, datagram: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(datagram)
        await self.process.stdin.drain()

    async def close(self) -> int:
        assert self.process.stdin is not None
        self.process.stdin.close()
        async with asyncio.timeout(WAIT_S):
            status = await self.process.wait()
            await asyncio.gather(*self._tasks)
        return status


def open_fds(pid: int) -> list[str]:
    """What a process holds open (``socket:[…]``, pipes, files)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


class Sender(asyncio.DatagramProtocol):
    """A local client socket; keeps what comes back."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.append(data)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)


async def sender() -> Sender:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Sender, local_addr=("127.0.0.1", 0))
    return protocol
