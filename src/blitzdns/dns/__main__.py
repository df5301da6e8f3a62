"""``python -m blitzdns.dns``: the resolver alone, for debugging and as the benchmark's subject.

``python -m blitzdns.dns --listen 127.0.0.1:5300 --upstream 127.0.0.1:53`` serves the
built-in preset (or ``--config FILE``) until SIGINT or SIGTERM; it prints a ``ready`` line
with the bound endpoints (port 0 picks a free one) and a ``stats`` line at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from blitzdns.config import Config, Endpoint, build_config, load_config
from blitzdns.dns.detect import detect_upstreams
from blitzdns.dns.server import Resolver
from blitzdns.errors import ConfigError, explain


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m blitzdns.dns",
        description="Run the blitzdns DNS stub alone (debugging and benchmarks).",
    )
    parser.add_argument("--listen", action="append", default=[], help="ADDR:PORT (repeatable)")
    parser.add_argument("--upstream", action="append", default=[], help="ADDR[:PORT]")
    parser.add_argument("--config", help="a blitzdns TOML file (default: the built-in preset)")
    parser.add_argument("--no-cache", action="store_true", help="switch the cache off")
    parser.add_argument("--no-loop-probe", action="store_true", help="skip the loop check")
    parser.add_argument(
        "--no-steer", action="store_true", help="one UDP socket per listener (no steering)"
    )
    parser.add_argument(
        "--no-batch-io",
        action="store_true",
        help="read UDP through the event loop's datagram transport, and upstream replies "
        "one at a time (no recvmmsg/sendmmsg)",
    )
    parser.add_argument(
        "--no-linger",
        action="store_true",
        help="a poll per wake-up at any rate (no wake-ups shared by queries at a high rate)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="a log line per query")
    return parser.parse_args(argv)


def _listen_endpoint(text: str) -> Endpoint:
    """``ADDR:PORT``, where port 0 (any free port, reported on the ``ready`` line) is allowed."""
    if text.endswith(":0"):
        return Endpoint(Endpoint.parse(text[:-2]).host, 0)
    return Endpoint.parse(text)


def _debug_config(args: argparse.Namespace) -> tuple[Config, tuple[Endpoint, ...]]:
    config = (
        load_config(Path(args.config), search=False)
        if args.config
        else build_config({}, source=None)
    )
    dns = config.dns
    try:
        if args.listen:
            dns = replace(dns, listen=tuple(_listen_endpoint(t) for t in args.listen))
        if args.upstream:
            dns = replace(dns, upstreams=tuple(Endpoint.parse(t) for t in args.upstream))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.no_cache:
        dns = replace(dns, cache_size=0)
    config = replace(config, dns=dns)
    upstreams = dns.upstreams or detect_upstreams(dns.listen)
    return config, upstreams


async def _serve(config: Config, upstreams: tuple[Endpoint, ...], args: argparse.Namespace) -> None:
    resolver = Resolver(
        config,
        upstreams,
        verbose=args.verbose,
        loop_probe=not args.no_loop_probe,
        steer=not args.no_steer,
        batch_io=not args.no_batch_io,
        linger=not args.no_linger,
    )
    await resolver.start()
    # As the daemon does once its start is over (blitzdns.daemon.end_of_start): what the
    # start made (modules, the table, the cache's map) moves to the permanent generation,
    # which full collections skip: with the cache's entries untracked (cache.Entry), a
    # full collection then costs the same with a million cached names as with none.
    gc.freeze()
    print("ready", " ".join(str(e) for e in resolver.bound_endpoints), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await resolver.close()
        print("stats", resolver.stats.to_dict(), flush=True)


def _run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed, on the standard loop otherwise."""
    try:
        import uvloop  # noqa: PLC0415  (a dependency where it installs: not on Windows)
    except ImportError:
        asyncio.run(coroutine)
    else:
        uvloop.run(coroutine)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        config, upstreams = _debug_config(args)
        _run(_serve(config, upstreams, args))
    except Exception as exc:
        told = explain(exc)
        if told is None:
            raise
        print(f"blitzdns: {told.line}", file=sys.stderr)
        return told.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
