"""The roaming check of every accepted connection, against the real kernel (issue 15/18).

``ip netns exec CLIENT python check_agent.py --gateway USER@IP:PORT --key KEY
--known-hosts FILE --target IP:PORT --backend NAME --address ADDR``: brings a
:class:`tunnel.Tunnel` up with one mouth to ``--target`` (an echo server), then, in one
step of the event loop (nothing else runs in between), adds ``--address`` to ``lo`` (the
kernel queues a netlink message for the tunnel's watch) and connects a client to the
mouth (the connection waits in the mouth's backlog), in that order and then the other
way round. The loop then runs the listener's and the netlink socket's callbacks, in the
order they became ready (epoll's), so the second round has the accept come first.

A connection accepted after the kernel changed the network must not be handed to the link
before the change has been read and judged (:meth:`tunnel.roaming.Roaming.check`). Prints
one JSON line, for each round (``change-first``, ``connect-first``): ``events``, the order
in which the watch reported the change (``judged``) and the link took the connection
(``carried``), and ``echoed``, the client's line back.
The address is removed again before the agent exits. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import tempfile
from pathlib import Path

from blitzdns.daemon import install_fast_loop
from tunnel import Forward, Gateway, Tunnel, TunnelOptions
from tunnel.link import Flow

WAIT_S = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ip(verb: str, address: str) -> None:
    subprocess.run(["ip", "address", verb, address, "dev", "lo"], check=verb == "add")


def _change_and_connect(address: str, mouth: int, *, change_first: bool) -> socket.socket:
    """Blocking on purpose: the loop runs no callback between the change and the connect
    (a loopback connect is complete once it returns: the connection waits in the backlog)."""
    if change_first:
        _ip("add", address)
    try:
        client = socket.create_connection(("127.0.0.1", mouth), timeout=WAIT_S)
    except OSError:
        _ip("del", address)
        raise
    if not change_first:
        _ip("add", address)
    client.setblocking(False)
    return client


async def _round(address: str, mouth: int, *, change_first: bool) -> str:
    """One change and one connection: the line the connection got back."""
    client = _change_and_connect(address, mouth, change_first=change_first)
    try:
        reader, writer = await asyncio.open_connection(sock=client)
        writer.write(b"checked\n")
        echoed = await asyncio.wait_for(reader.readline(), WAIT_S)
        writer.close()
    except BaseException:
        _ip("del", address)
        raise
    return echoed.decode()


async def _judged(events: list[str], changed: asyncio.Event, count: int) -> None:
    """Until the watch reported ``count`` changes (bounded)."""
    async with asyncio.timeout(WAIT_S):
        while events.count("judged") < count:
            changed.clear()
            await changed.wait()


async def main() -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--known-hosts", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--backend", default="asyncssh")
    parser.add_argument("--address", required=True)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    mouth = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        ssh_config = Path(tmp) / "ssh_config"
        ssh_config.write_text("")
        options = TunnelOptions(
            gateways=(Gateway.parse(args.gateway),),
            ssh_config=ssh_config,
            known_hosts=Path(args.known_hosts),
            client_keys=(Path(args.key),),
            backend=args.backend,
        )
        async with Tunnel(options, [Forward("127.0.0.1", mouth, host, int(port))]) as tunnel:
            if not await tunnel.wait_up(WAIT_S):
                return {"error": "the link did not come up"}
            link = tunnel.link
            assert link is not None
            events: list[str] = []
            changed = asyncio.Event()

            def judged(change: object) -> None:
                events.append("judged")
                changed.set()

            tunnel.on_network_change(judged)
            carry = link.carry

            def carried(flow: Flow) -> None:
                events.append("carried")
                carry(flow)

            setattr(link, "carry", carried)  # noqa: B010  (a method: mypy refuses "=")
            rounds = {}
            for name, change_first in (("change-first", True), ("connect-first", False)):
                echoed = await _round(args.address, mouth, change_first=change_first)
                await _judged(events, changed, 1)  # the addition (before its removal)
                rounds[name] = {"events": list(events), "echoed": echoed}
                _ip("del", args.address)
                await _judged(events, changed, 2)  # and its removal
                events.clear()
            return rounds


if __name__ == "__main__":
    install_fast_loop()  # the daemon's loop
    print(json.dumps(asyncio.run(main())), flush=True)
