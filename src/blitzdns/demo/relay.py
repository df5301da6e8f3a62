"""A recording TCP relay: the demo's stand-in for tcpdump on the client's link.

Placed between the tunnel and the gateway (or, for contrast, between a client and a
cleartext server), it copies bytes both ways and keeps every segment it saw, so the
demo can show what crossed the wire and prove what did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Segment:
    """One read's worth of bytes, in one direction, at a time since the relay started."""

    at: float
    source: str
    destination: str
    data: bytes


@dataclass
class RecordingRelay:
    """Listens on ``listen_host``:port and relays every connection to ``target``."""

    target: tuple[str, int]
    listen_host: str = "127.0.0.1"
    port: int = 0
    segments: list[Segment] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _started: float = 0.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._started = time.monotonic()
        self._server = await asyncio.start_server(self._handle, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def wire_bytes(self) -> bytes:
        return b"".join(s.data for s in self.segments)

    def contains(self, needle: str | bytes) -> bool:
        raw = needle.encode() if isinstance(needle, str) else needle
        return raw.lower() in self.wire_bytes().lower()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        client = "{}.{}".format(*writer.get_extra_info("peername")[:2])
        server = "{}.{}".format(*self.target)

        async def copy(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, a: str, b: str
        ) -> None:
            try:
                while data := await src.read(65536):
                    self.segments.append(Segment(time.monotonic() - self._started, a, b, data))
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.write_eof()

        try:
            await asyncio.gather(
                copy(reader, t_writer, client, server), copy(t_reader, writer, server, client)
            )
        except asyncio.CancelledError:
            pass  # closing the relay: the connection ends here, quietly
        finally:
            t_writer.close()
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None


_PRINTABLE = set(string.printable.encode()) - set(b"\t\n\r\x0b\x0c")


def ascii_view(data: bytes, width: int = 64) -> list[str]:
    """``tcpdump -A`` style: printable bytes as they are, everything else as '.'."""
    text = "".join(chr(b) if b in _PRINTABLE else "." for b in data)
    return [text[i : i + width] for i in range(0, len(text), width)] or [""]


def render_wire(segments: list[Segment], *, limit: int = 8, lines_per_segment: int = 2) -> str:
    """A short tcpdump-like view of the first ``limit`` segments."""
    out = []
    for seg in segments[:limit]:
        out.append(f"{seg.at:9.6f} IP {seg.source} > {seg.destination}: length {len(seg.data)}")
        out.extend(f"        {line}" for line in ascii_view(seg.data)[:lines_per_segment])
    if len(segments) > limit:
        out.append(f"        ... {len(segments) - limit} more segments")
    return "\n".join(out)
