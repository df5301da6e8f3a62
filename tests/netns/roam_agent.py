"""The roaming tests' hands inside a namespace: ``ip netns exec NS python roam_agent.py CMD``.

``serve``   in the server namespace: an echo server and a bulk server (a client line
            ``BYTES SEED PACE`` is answered with that many bytes of ``random.Random(SEED)``,
            one 64 KiB chunk every ``PACE`` seconds).
``shorts``  in the client namespace: a stream of short connections (connect, send a line,
            read it back, close), one started every ``--interval`` s, each written as a
            JSON line ``{"start", "end", "ok", "error"}`` (times: ``CLOCK_MONOTONIC``,
            which is the same in every namespace) until SIGTERM or ``--count``.
``bulk``    one long transfer from the bulk server (``--pace`` s between 64 KiB chunks, so
            that it spans a network switch); prints whether the bytes that came
            were the bytes sent (SHA-256 of the expected stream), how many, and how it ended.
``autossh`` ``ssh`` started again at once whenever it exits (autossh without its own
            monitoring), until SIGTERM; each start and exit is a JSON line on stdout.

Every loop is bounded in count or time; every server listens on a namespace address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from typing import Any

ECHO_PORT = 902
BULK_PORT = 2151
CHUNK = 64 * 1024


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


def chunks(seed: int, size: int) -> list[bytes]:
    """The bulk stream: ``size`` bytes in 64 KiB chunks, each from its own seeded generator."""
    count, last = divmod(size, CHUNK)
    sizes = [CHUNK] * count + ([last] if last else [])
    return [random.Random(seed * 1_000_003 + i).randbytes(n) for i, n in enumerate(sizes)]


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(address: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        writer.close()

    async def bulk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ValueError):
            size, seed, pace = (await reader.readline()).split()
            for chunk in chunks(int(seed), int(size)):
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(float(pace))
        writer.close()

    servers = [
        await asyncio.start_server(echo, address, ECHO_PORT),
        await asyncio.start_server(bulk, address, BULK_PORT),
    ]
    _emit({"ready": True})
    await _until_terminated()
    for server in servers:
        server.close()


async def _one_short(host: str, port: int, number: int, timeout: float) -> dict[str, Any]:
    start = time.monotonic()
    line = f"short {number}\n".encode()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(line)
            answer = await reader.readline()
            writer.close()
        ok, error = answer == line, None if answer == line else f"answer {answer!r}"
    except (OSError, TimeoutError) as exc:
        ok, error = False, f"{type(exc).__name__}: {exc}"
    return {"n": number, "start": start, "end": time.monotonic(), "ok": ok, "error": error}


async def shorts(host: str, port: int, interval: float, count: int, timeout: float) -> None:
    stop = asyncio.ensure_future(_until_terminated())
    running: set[asyncio.Task[None]] = set()

    async def one(number: int) -> None:
        _emit(await _one_short(host, port, number, timeout))

    _emit({"ready": True})
    for number in range(count):
        if stop.done():
            break
        task = asyncio.create_task(one(number))
        running.add(task)
        task.add_done_callback(running.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await asyncio.shield(stop)
    if running:
        await asyncio.wait(running, timeout=timeout + 1)
    stop.cancel()


async def bulk(host: str, port: int, size: int, seed: int, pace: float, timeout: float) -> None:
    expected_digest = hashlib.sha256()
    for chunk in chunks(seed, size):
        expected_digest.update(chunk)
    expected = expected_digest.hexdigest()
    digest = hashlib.sha256()
    got = 0
    ended = "eof"
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"{size} {seed} {pace}\n".encode())
            _emit({"ready": True})
            while chunk := await reader.read(CHUNK):
                digest.update(chunk)
                got += len(chunk)
            writer.close()
    except (OSError, TimeoutError) as exc:
        ended = f"{type(exc).__name__}: {exc}"
    _emit(
        {
            "bytes": got,
            "complete": got == size,
            "intact": got == size and digest.hexdigest() == expected,
            "ended": ended,
            "seconds": time.monotonic() - start,
        }
    )


async def autossh(argv: list[str], limit: int) -> None:
    stop = asyncio.ensure_future(_until_terminated())
    for _ in range(limit):
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL)
        _emit({"started": time.monotonic(), "pid": proc.pid})
        waited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({waited, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            if proc.returncode is None:
                proc.terminate()
            await waited
            return
        _emit({"exited": time.monotonic(), "code": proc.returncode})
        await asyncio.sleep(0.1)  # autossh's own minimum between starts is longer


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--address", required=True)
    p = sub.add_parser("shorts")
    p.add_argument("--to", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("bulk")
    p.add_argument("--to", required=True)
    p.add_argument("--bytes", type=int, default=64 << 20)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--pace", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p = sub.add_parser("autossh")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "serve":
        asyncio.run(serve(args.address))
    elif args.command == "shorts":
        host, _, port = args.to.rpartition(":")
        asyncio.run(shorts(host, int(port), args.interval, args.count, args.timeout))
    elif args.command == "bulk":
        host, _, port = args.to.rpartition(":")
        asyncio.run(bulk(host, int(port), args.bytes, args.seed, args.pace, args.timeout))
    else:
        asyncio.run(autossh(args.argv[1:] if args.argv[:1] == ["--"] else args.argv, args.limit))
    sys.exit(0)


if __name__ == "__main__":
    main()
