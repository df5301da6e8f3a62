"""The mouth's accept path (issue 18): one accept per wake-up, the socket made from the
descriptor, TCP_NODELAY inherited from the listener. Real sockets on loopback; the link is
a recorder (what the mouth hands over is the subject here, not how it is carried)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tunnel.forwards import Forward
from tunnel.link import Flow, Link
from tunnel.mouths import Mouth

from ..peers import free_port, wait_until


class Recorder:
    """A link source whose link keeps the flows handed to it (and closes them at the end)."""

    def __init__(self) -> None:
        self.flows: list[Flow] = []
        self.link: Link | None = self  # type: ignore[assignment]  # carry() is all it needs

    async def wait_link(
        self, stale: object | None = None, since: float | None = None
    ) -> Link | None:
        return self.link

    def flow_ended(self) -> None:
        return None

    def carry(self, flow: Flow) -> None:
        self.flows.append(flow)

    def close(self) -> None:
        for flow in self.flows:
            flow.sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_an_accepted_connection_is_handed_over_as_a_stream_socket_without_nagle(
    host: str,
) -> None:
    """The socket the link gets is the client's connection (its peer is the client), of the
    listener's family, with TCP_NODELAY (as ssh -L sets it: here inherited from the
    listener, not set per connection: a test of the kernel's behaviour we rely on)."""
    source = Recorder()
    mouth = Mouth(Forward(host, free_port(), "target.test", 7), source)
    await mouth.bind()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    client = socket.socket(family)
    try:
        client.setblocking(False)
        client.connect_ex((host, mouth.forward.mouth_port))
        await wait_until(lambda: len(source.flows) == 1, timeout_s=30)
        flow = source.flows[0]
        assert flow.sock.family == family and flow.sock.type == socket.SOCK_STREAM
        assert flow.sock.getpeername()[:2] == client.getsockname()[:2]
        assert (flow.host, flow.port) == client.getsockname()[:2]
        assert flow.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert mouth.counters.total == mouth.counters.open == 1
    finally:
        client.close()
        source.close()
        await mouth.close()


async def test_a_burst_of_connections_is_taken_whole() -> None:
    """One accept per wake-up: the listener is level-triggered, so every connection of a
    burst waiting in the backlog is taken, each once."""
    source = Recorder()
    mouth = Mouth(Forward("127.0.0.1", free_port(), "target.test", 7), source)
    await mouth.bind()
    clients: list[socket.socket] = []
    try:
        for _ in range(100):
            client = socket.socket()
            clients.append(client)
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", mouth.forward.mouth_port))
        await wait_until(lambda: len(source.flows) == len(clients), timeout_s=30)
        for _ in range(20):  # loop iterations, not time: nothing more is taken
            await asyncio.sleep(0)
        assert len(source.flows) == mouth.counters.total == len(clients)
        ports = sorted(flow.port for flow in source.flows)
        assert ports == sorted(client.getsockname()[1] for client in clients)
    finally:
        for client in clients:
            client.close()
        source.close()
        await mouth.close()
