"""The early TCP connection (tunnel.early): asyncssh uses it where the ssh config leaves the
gateway's address as it is, and connects as always where the config sends it elsewhere
(ProxyCommand, another port) or the early connect failed. Against the real sshd."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Sshd, free_port
from tunnel import Forward, Gateway, Tunnel, TunnelOptions, early
from tunnel.backends.asyncssh_link import SSHLink, open_link
from tunnel.errors import GatewayUnreachable

from .tunnel_testlib import Target, exchange, link_up


@pytest.fixture(autouse=True)
def nothing_left() -> Iterator[None]:
    yield
    early.discard()


def local_port(link: SSHLink) -> int:
    return int(link.conn.get_extra_info("sockname")[1])


async def test_early_connection_is_used(sshd: Sshd, options: TunnelOptions) -> None:
    """The gateway as an address, an empty ssh config: asyncssh takes the early socket
    (sshd sees one connection, from the early socket's port)."""
    before = sshd.connections_logged()
    started = early.connect_early("127.0.0.1", sshd.port)
    assert started is not None
    port = started.sock.getsockname()[1]
    link = await open_link(Gateway("127.0.0.1", sshd.port, sshd.user), options)
    try:
        assert started.used
        assert local_port(link) == port
    finally:
        await link.aclose(1)
    assert sshd.connections_logged() - before == 1
    assert early.take() is None  # taken once


async def test_proxycommand_in_config_is_honoured(
    sshd: Sshd, options: TunnelOptions, tmp_path: Path
) -> None:
    """The config sends the connection through a ProxyCommand: the early socket is closed
    unused and the link goes through the command, as without the early connect."""
    if shutil.which("socat") is None:
        pytest.skip("socat not installed (Debian: socat)")
    config = tmp_path / "proxy_config"
    config.write_text(f"Host 127.0.0.1\n  ProxyCommand socat - TCP:127.0.0.1:{sshd.port}\n")
    started = early.connect_early("127.0.0.1", sshd.port)
    assert started is not None
    link = await open_link(
        Gateway("127.0.0.1", sshd.port, sshd.user), dataclasses.replace(options, ssh_config=config)
    )
    try:
        assert not started.used
        assert started.sock.fileno() == -1  # closed
        assert link.conn.get_extra_info("sockname") is None  # a pipe to socat, no socket
    finally:
        await link.aclose(1)


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com"])
async def test_a_link_through_a_proxycommand_carries_data_both_ways(
    sshd: Sshd, options: TunnelOptions, echo: Target, cipher: str
) -> None:
    """A link through a ProxyCommand (asyncssh's subprocess tunnel stands in for the
    socket transport: it has ``write`` only) carries a connection's bytes both ways, a
    megabyte and its echo, byte for byte: the sealing fast paths step aside for it."""
    if shutil.which("socat") is None:
        pytest.skip("socat not installed (Debian: socat)")
    assert options.ssh_config is not None
    options.ssh_config.write_text(
        f"Host *\n  Ciphers {cipher}\n  ProxyCommand socat - TCP:127.0.0.1:{sshd.port}\n"
    )
    payload = os.urandom(1 << 20)
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        link = await link_up(tunnel)
        assert isinstance(link, SSHLink)
        assert link.conn.get_extra_info("sockname") is None  # a pipe to socat
        async with asyncio.timeout(60):
            assert await exchange(*forward.mouth, payload) == payload
        assert tunnel.state.forwards[0].cut == 0


async def test_port_from_config_wins(sshd: Sshd, options: TunnelOptions, tmp_path: Path) -> None:
    """No port given: the early connect went to 22, the config says another port; asyncssh
    connects there afresh."""
    config = tmp_path / "port_config"
    config.write_text(f"Host 127.0.0.1\n  Port {sshd.port}\n")
    started = early.connect_early("127.0.0.1", None)
    if started is None:
        pytest.skip("cannot even start a connect to port 22 here")
    assert started.port == 22
    link = await open_link(
        Gateway("127.0.0.1", None, sshd.user), dataclasses.replace(options, ssh_config=config)
    )
    try:
        assert not started.used
        assert started.sock.fileno() == -1
    finally:
        await link.aclose(1)


async def test_refused_early_connect_reports_as_before(options: TunnelOptions) -> None:
    """Nothing listens: the early connect is refused, asyncssh connects afresh and the
    error is the usual refusal."""
    port = free_port()
    started = early.connect_early("127.0.0.1", port)
    assert started is not None
    with pytest.raises(GatewayUnreachable) as caught:
        await open_link(Gateway("127.0.0.1", port, "nobody"), options)
    assert caught.value.refused
    assert not started.used
    assert started.sock.fileno() == -1


def test_names_are_not_connected_early() -> None:
    """A name would be resolved through the system resolver, perhaps our own stub, which
    does not serve yet: no early connect."""
    assert early.connect_early("localhost", 22) is None
    assert early.take() is None


def test_discard_closes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        started = early.connect_early("127.0.0.1", listener.getsockname()[1])
        assert started is not None
        early.discard()
        assert started.sock.fileno() == -1
        assert early.take() is None


async def test_proxyjump_in_config_is_honoured(
    sshd: Sshd, options: TunnelOptions, tmp_path: Path
) -> None:
    """The config sends the connection through a jump host (sshd itself): two connections,
    the link works. The jump's own plain connection to that address may take the early
    socket (it is exactly what it asks for); the gateway's goes through the jump."""
    config = tmp_path / "jump_config"
    config.write_text(
        f"Host jump\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n  UserKnownHostsFile {options.known_hosts}\n"
        "Host 127.0.0.1\n  ProxyJump jump\n"
    )
    before = sshd.connections_logged()
    started = early.connect_early("127.0.0.1", sshd.port)
    assert started is not None
    link = await open_link(
        Gateway("127.0.0.1", sshd.port, sshd.user), dataclasses.replace(options, ssh_config=config)
    )
    await link.aclose(1)
    assert sshd.connections_logged() - before == 2  # the jump, and the gateway through it
    assert started.sock.fileno() == -1


async def readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, 10)
    finally:
        loop.remove_reader(sock.fileno())


async def test_a_connection_the_server_dropped_is_not_offered() -> None:
    """The server accepted an early connection and closed it before asyncssh came (sshd
    restarting, MaxStartups): it does not count as connected, so asyncssh connects afresh
    (the path test_refused_early_connect_reports_as_before takes); a live one does."""
    loop = asyncio.get_running_loop()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        live = early.connect_early("127.0.0.1", port)
        assert live is not None and early.take() is live
        held, _ = listener.accept()
        dropped = early.connect_early("127.0.0.1", port)
        assert dropped is not None
        gone, _ = listener.accept()
        gone.close()
        await readable(dropped.sock)  # its end has arrived
        with held:
            assert await live.connected(loop)
            assert not await dropped.connected(loop)
        live.close()
