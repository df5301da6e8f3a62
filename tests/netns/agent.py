"""The netns tests' hands inside a namespace: ``ip netns exec NS python agent.py CMD ...``.

pytest runs in the root namespace; everything that must happen *inside* one of the
test's namespaces (serve the fake BlitzMail hosts, relay in cleartext, play a client's
session, hold a connection open) is one subcommand of this script. Each prints JSON on
stdout, so the fixture reads a result rather than scraping text:

``servers``  the fake DND and BlitzServs on the server namespace's addresses; their
             transcripts are rewritten to ``--state`` as they change.
``relay``    plain TCP relays (the "without blitzdns" path), one per ``LISTEN=TARGET``.
``session``  a BlitzMail client's first steps: resolve DND, ``LOOKUP`` the user's
             ``NAME UID BLITZSERV``, resolve the server it names, ``VERS`` and ``NOOP``.
``hold``     connect, send a line, and report what came back and whether the peer closed.
``notify-server``  the fake Notify server (TCP 2152 posting, UDP 2154 ATP) on an address.
``notify``   a Notify client: register (NR02) at the notify host's UDP mouth, post a
             notice on its TCP side, wait for the notice (NOTI), answer it, see the
             release; or, with ``--plain``, send the registration in the clear once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from blitzdns.blitzmail.atp import EOM, REGISTER, REQUEST, AtpPacket, Registration
from blitzdns.blitzmail.dnd import DND_PORT, find_blitzserv
from blitzdns.blitzmail.fake_notify import FakeNotify
from blitzdns.blitzmail.fakes import (
    DEMO_PASSWORD,
    DEMO_RECORDS,
    FakeBlitzServer,
    FakeDnd,
    FakeServer,
)
from blitzdns.blitzmail.notify import NotifyClient, post_notice
from blitzdns.blitzmail.probes import converse_blitzserv
from blitzdns.demo.relay import RecordingRelay

BLITZSERV_PORT = 2151
SESSION_CLIENT = "VERS blitzdns-netns-test"


def _emit(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --------------------------------------------------------------------------- servers


def _unguarded(server: FakeServer, address: str) -> FakeServer:
    """Move a fake onto a server-namespace address.

    The fakes refuse any non-loopback address (the project's network rule); here the
    address exists only inside a namespace this test created, which that rule allows.
    """
    server.host = address
    return server


def _transcript(servers: dict[str, FakeServer]) -> dict[str, Any]:
    return {
        name: {
            "connections": server.connections,
            "lines": [[e.connection, e.direction, e.line] for e in server.transcript],
        }
        for name, server in servers.items()
    }


async def serve(args: argparse.Namespace) -> None:
    servers: dict[str, FakeServer] = {
        "dnd": _unguarded(FakeDnd(DEMO_RECORDS, "127.0.0.1", DND_PORT), args.dnd)
    }
    for spec in args.blitz:
        name, _, address = spec.partition("=")
        servers[name] = _unguarded(
            FakeBlitzServer(name, DEMO_RECORDS, "127.0.0.1", BLITZSERV_PORT), address
        )
    state = Path(args.state)
    async with contextlib.AsyncExitStack() as stack:
        for server in servers.values():
            await stack.enter_async_context(server)
        written = ""

        async def publish() -> None:
            nonlocal written
            while True:
                text = json.dumps(_transcript(servers))
                if text != written:
                    partial = state.with_suffix(".partial")
                    partial.write_text(text)
                    partial.replace(state)
                    written = text
                await asyncio.sleep(0.05)

        publisher = asyncio.create_task(publish())
        _emit({"ready": {name: list(s.address) for name, s in servers.items()}})
        await _until_terminated()
        publisher.cancel()


# --------------------------------------------------------------------------- relay


async def relay(args: argparse.Namespace) -> None:
    relays = []
    for spec in args.pairs:
        listen, _, target = spec.partition("=")
        host, port = _endpoint(listen)
        relays.append(RecordingRelay(target=_endpoint(target), listen_host=host, port=port))
    for item in relays:
        await item.start()
    _emit({"ready": [f"{r.listen_host}:{r.port}" for r in relays]})
    await _until_terminated()


# --------------------------------------------------------------------------- session


def resolve_a(name: str, resolver: tuple[str, int], timeout: float) -> dict[str, Any]:
    """One A query over UDP: the rcode and the addresses in the answer section."""
    query = dns.message.make_query(name, dns.rdatatype.A)
    response = dns.query.udp(query, resolver[0], port=resolver[1], timeout=timeout)
    addresses = [
        item.address
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.A
        for item in rrset
    ]
    return {"rcode": dns.rcode.to_text(response.rcode()), "addresses": addresses}


class Directory:
    """Name → address: through a DNS server (the stub), or a fixed table (/etc/hosts-like)."""

    def __init__(self, resolver: str | None, table: Sequence[str], timeout: float) -> None:
        self.resolver = _endpoint(resolver) if resolver else None
        self.table = dict(item.partition("=")[::2] for item in table)
        self.timeout = timeout

    def address(self, name: str) -> str:
        key = name.lower().rstrip(".")
        if self.resolver is None:
            return self.table[key]
        answer = resolve_a(name, self.resolver, self.timeout)
        if not answer["addresses"]:
            raise LookupError(f"{name}: {answer['rcode']} with no address")
        address: str = answer["addresses"][0]
        return address


async def session(args: argparse.Namespace) -> None:
    directory = Directory(args.resolver, args.hosts, args.timeout)
    result: dict[str, Any] = {}
    dnd_address = directory.address("DND.Dartmouth.EDU.")
    result["dnd_address"] = dnd_address
    account = await find_blitzserv(dnd_address, DND_PORT, args.user, timeout=args.timeout)
    result["account"] = {"name": account.name, "uid": account.uid, "blitzserv": account.blitzserv}
    server_address = directory.address(account.blitzserv)
    result["server_address"] = server_address
    replies = await converse_blitzserv(
        server_address,
        BLITZSERV_PORT,
        [SESSION_CLIENT, "NOOP", "QUIT"],
        timeout=args.timeout,
    )
    result["replies"] = {
        command.split()[0]: {"code": reply.code, "text": reply.text} for command, reply in replies
    }
    _emit(result)


# --------------------------------------------------------------------------- hold


async def hold(args: argparse.Namespace) -> None:
    """Connect, send ``--send``, read until the peer closes or ``--timeout`` runs out."""
    started = time.monotonic()
    report: dict[str, Any] = {"connected": False, "received": "", "closed_by_peer": False}
    try:
        async with asyncio.timeout(args.timeout):
            reader, writer = await asyncio.open_connection(args.host, args.port)
            report["connected"] = True
            received = b""
            try:
                if args.send:
                    writer.write(args.send.encode() + b"\r\n")
                    await writer.drain()
                while chunk := await reader.read(4096):
                    received += chunk
                report["closed_by_peer"] = True
            except (ConnectionResetError, BrokenPipeError):
                report["closed_by_peer"] = True
                report["reset"] = True
            report["received"] = received.decode("utf-8", "replace")
            writer.close()
    except TimeoutError:
        report["timed_out"] = True
    except OSError as exc:
        report["error"] = exc.strerror or str(exc)
    report["seconds"] = round(time.monotonic() - started, 3)
    _emit(report)


# --------------------------------------------------------------------------- notify

NOTIFY_TCP = 2152
NOTIFY_UDP = 2154


async def notify_server(args: argparse.Namespace) -> None:
    server = FakeNotify("127.0.0.1", NOTIFY_TCP, NOTIFY_UDP)
    server.host = args.address  # a namespace address: see _unguarded
    async with server:
        _emit({"ready": [args.address, NOTIFY_TCP, NOTIFY_UDP]})
        await _until_terminated()


async def notify(args: argparse.Namespace) -> None:
    text = args.text.encode()
    if args.plain:  # the registration in the clear, straight at an address (the control)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(args.address, NOTIFY_UDP)
        )
        data = Registration("#1001", 0).encode() + text
        transport.sendto(AtpPacket(REQUEST, 1, REGISTER, data, flags=EOM).encode())
        await asyncio.sleep(0.2)
        transport.close()
        _emit({"sent": True})
        return
    address = Directory(args.resolver, [], args.timeout).address(args.name)
    result: dict[str, Any] = {"address": address}
    async with NotifyClient() as client, asyncio.timeout(args.timeout):
        await client.register((address, args.udp_port), 1001)
        result["registered"] = True
        await post_notice((address, args.tcp_port), "#1001", DEMO_PASSWORD, 1001, text)
        notice = await client.next_notice()
        result["notice"] = notice.text.decode()
        await client.wait_released()
        result["released"] = True
    _emit(result)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("servers")
    p.add_argument("--dnd", required=True)
    p.add_argument("--blitz", action="append", default=[], metavar="NAME=ADDRESS")
    p.add_argument("--state", required=True)
    p.set_defaults(run=serve)
    p = commands.add_parser("relay")
    p.add_argument("pairs", nargs="+", metavar="LISTEN=TARGET")
    p.set_defaults(run=relay)
    p = commands.add_parser("session")
    p.add_argument("--resolver", metavar="ADDRESS:PORT")
    p.add_argument("--hosts", nargs="*", default=[], metavar="NAME=ADDRESS")
    p.add_argument("--user", default="demo")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(run=session)
    p = commands.add_parser("hold")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--send", default="")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(run=hold)
    p = commands.add_parser("notify-server")
    p.add_argument("address")
    p.set_defaults(run=notify_server)
    p = commands.add_parser("notify")
    p.add_argument("--resolver", metavar="ADDRESS:PORT")
    p.add_argument("--name", default="notifier.dartmouth.edu")
    p.add_argument("--udp-port", type=int, default=NOTIFY_UDP)
    p.add_argument("--tcp-port", type=int, default=NOTIFY_TCP)
    p.add_argument("--text", default="New mail from Demo Reindeer")
    p.add_argument("--plain", action="store_true")
    p.add_argument("--address", default="")
    p.add_argument("--timeout", type=float, default=15.0)
    p.set_defaults(run=notify)
    args = parser.parse_args(argv)
    try:
        asyncio.run(args.run(args))
    except Exception as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
