"""Reaching the gateway as the user's own ssh would, and refusing what must be refused:
~/.ssh/config aliases and ProxyJump, gateway order and switching, authentication refused,
unknown and changed host keys."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.peers import Sshd, fingerprint, free_port, keygen, wait_until
from tunnel import Forward, Gateway, LinkStatus, Tunnel, TunnelOptions
from tunnel.errors import AuthFailed, HostKeyChanged, HostKeyUnknown

from .tunnel_testlib import Target, exchange


def forward_to(target: Target) -> Forward:
    return Forward("127.0.0.1", free_port(), "127.0.0.1", target.port)


async def settle(tunnel: Tunnel) -> None:
    """Give a (wrongly) retrying supervisor time to show itself."""
    await asyncio.sleep(0.5)


async def test_ssh_config_host_alias_is_honoured(sshd: Sshd, home: Path, echo: Target) -> None:
    """Only ``gw`` is given: HostName, Port, User and IdentityFile come from ~/.ssh/config,
    the host key from ~/.ssh/known_hosts."""
    (home / ".ssh" / "config").write_text(
        f"Host gw\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
    )
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    forward = forward_to(echo)
    async with Tunnel(TunnelOptions(gateways=(Gateway.parse("gw"),)), [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert tunnel.state.gateway == "gw"
        assert await exchange(*forward.mouth, b"via alias") == b"via alias"


async def test_proxyjump_from_ssh_config(sshd: Sshd, home: Path, echo: Target) -> None:
    """``ProxyJump`` in the config: the link goes through a jump host (here sshd itself)."""
    (home / ".ssh" / "config").write_text(
        f"Host jump inner\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
        "Host inner\n  ProxyJump jump\n"
    )
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    forward = forward_to(echo)
    before = sshd.connections_logged()
    async with Tunnel(TunnelOptions(gateways=(Gateway.parse("inner"),)), [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"jumped") == b"jumped"
    assert sshd.connections_logged() - before == 2


async def test_first_reachable_gateway_is_used(
    options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    dead = Gateway("127.0.0.1", free_port(), sshd.user)
    options = dataclasses.replace(options, gateways=(dead, *options.gateways))
    forward = forward_to(echo)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert tunnel.state.gateway == str(options.gateways[1])
        assert tunnel.state.attempts == 2
        assert await exchange(*forward.mouth, b"second") == b"second"


async def test_update_gateways_reconnects_only_when_needed(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    options = any_options
    assert options.ssh_config is not None
    options.ssh_config.write_text(f"Host other\n  HostName 127.0.0.1\n  Port {sshd.port}\n")
    current = options.gateways[0]
    other = Gateway("other", user=sshd.user)
    forward = forward_to(echo)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        await tunnel.update_gateways([other, current])
        await settle(tunnel)
        assert (tunnel.state.gateway, tunnel.state.attempts) == (str(current), 1)
        await tunnel.update_gateways([other])
        # A connection during the switch waits for the new link (not the closing one).
        assert await exchange(*forward.mouth, b"during") == b"during"
        await wait_until(
            lambda: tunnel.state.gateway == str(other) and tunnel.state.status is LinkStatus.UP
        )
        assert await exchange(*forward.mouth, b"switched") == b"switched"


async def test_authentication_refused_is_final_after_one_attempt(
    options: TunnelOptions, sshd: Sshd, tmp_path: Path, echo: Target
) -> None:
    stranger = keygen(tmp_path / "stranger")
    options = dataclasses.replace(options, client_keys=(stranger,))
    before = sshd.connections_logged()
    async with Tunnel(options, [forward_to(echo)]) as tunnel:
        with pytest.raises(AuthFailed, match="refused authentication"):
            await tunnel.wait_up(10)
        await settle(tunnel)
        state = tunnel.state
        assert state.status is LinkStatus.FAILED
        assert state.final_error is not None and "refused authentication" in state.final_error
        assert state.attempts == 1
    assert sshd.connections_logged() - before == 1


async def test_unknown_host_key_refused_with_fingerprint(
    options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    assert options.known_hosts is not None
    options.known_hosts.write_text("")
    expected = fingerprint(sshd.host_key.with_suffix(".pub"))
    forward = forward_to(echo)
    async with Tunnel(options, [forward]) as tunnel:
        with pytest.raises(HostKeyUnknown) as info:
            await tunnel.wait_up(10)
        await settle(tunnel)
        assert tunnel.state.attempts == 1
        assert await exchange(*forward.mouth, b"no") == b""
    message = str(info.value)
    assert expected in message and "ssh-ed25519" in message
    assert f"ssh-keyscan -p {sshd.port} -t ed25519 127.0.0.1" in message
    assert "--trust-new-host-key" in message
    assert info.value.fingerprint == expected
    assert options.known_hosts.read_text() == ""
    assert echo.peers == []


async def test_trust_new_host_key_records_it(
    options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    assert options.known_hosts is not None
    options.known_hosts.write_text("# mine\n[other]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ")
    forward = forward_to(echo)
    trusting = dataclasses.replace(options, trust_new_host_key=True)
    async with Tunnel(trusting, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
    lines = options.known_hosts.read_text().splitlines()
    assert lines[-1] + "\n" == sshd.known_hosts_line()
    assert lines[1].startswith("[other]:1 ")
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"known now") == b"known now"


async def test_changed_host_key_refused_even_when_trusting_new_keys(
    options: TunnelOptions, sshd: Sshd, tmp_path: Path, echo: Target
) -> None:
    assert options.known_hosts is not None
    impostor = keygen(tmp_path / "old_host_key").with_suffix(".pub")
    kind, blob = impostor.read_text().split()[:2]
    recorded = f"[127.0.0.1]:{sshd.port} {kind} {blob}\n"
    options.known_hosts.write_text(recorded)
    options = dataclasses.replace(options, trust_new_host_key=True)
    async with Tunnel(options, [forward_to(echo)]) as tunnel:
        with pytest.raises(HostKeyChanged, match="HAS CHANGED") as info:
            await tunnel.wait_up(10)
        await settle(tunnel)
        assert tunnel.state.status is LinkStatus.FAILED
        assert tunnel.state.attempts == 1
    assert fingerprint(sshd.host_key.with_suffix(".pub")) in str(info.value)
    assert "ssh-keygen -R" in str(info.value)
    assert options.known_hosts.read_text() == recorded
    assert echo.peers == []
