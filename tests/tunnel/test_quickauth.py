"""Public-key authentication in one round trip (tunnel.backends.quickauth), against the real
sshd: the signed request goes first (no ``none`` probe, no unsigned query) for a key loaded
here; a refused key, a second key and a key that cannot sign here take asyncssh's own
path as before."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import asyncssh
import pytest

from tests.peers import Sshd, keygen, start_sshd
from tunnel import Gateway, TunnelOptions
from tunnel.backends import quickauth
from tunnel.backends.asyncssh_link import open_link
from tunnel.errors import AuthFailed


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """An sshd that logs each userauth request it receives (LogLevel DEBUG1)."""
    server = start_sshd(tmp_path / "sshd-debug", log_level="DEBUG1")
    try:
        yield server
    finally:
        server.kill()


def requests(sshd: Sshd) -> list[str]:
    """The methods of the userauth requests sshd received, in order."""
    return [
        line.split(" method ")[1].split()[0]
        for line in sshd.log.read_text(errors="replace").splitlines()
        if "userauth-request for user" in line
    ]


def queries(sshd: Sshd) -> int:
    """Unsigned public-key queries sshd answered with PK_OK ("Postponed publickey")."""
    return sshd.log.read_text(errors="replace").count("Postponed publickey")


async def connect(sshd: Sshd, options: TunnelOptions) -> None:
    link = await open_link(Gateway("127.0.0.1", sshd.port, sshd.user), options)
    await link.aclose(1)


def test_installed_with_the_link() -> None:
    assert quickauth.installed()
    assert quickauth.install()  # once: a second call finds it in place


async def test_one_signed_request(sshd: Sshd, options: TunnelOptions) -> None:
    await connect(sshd, options)
    assert requests(sshd) == ["publickey"]
    assert queries(sshd) == 0
    assert "Accepted publickey" in sshd.log.read_text(errors="replace")


async def test_a_refused_key_then_the_accepted_one(
    sshd: Sshd, options: TunnelOptions, tmp_path: Path
) -> None:
    """The first key is not authorized: sshd refuses it and names its methods; asyncssh
    goes on to the next key as it always did."""
    stranger = keygen(tmp_path / "stranger_ed25519")
    await connect(sshd, dataclasses.replace(options, client_keys=(stranger, sshd.client_key)))
    assert requests(sshd) == ["publickey", "publickey"]
    assert queries(sshd) == 0


async def test_no_key_taken_is_refused_as_before(
    sshd: Sshd, options: TunnelOptions, tmp_path: Path
) -> None:
    stranger = keygen(tmp_path / "stranger_ed25519")
    with pytest.raises(AuthFailed):
        await connect(sshd, dataclasses.replace(options, client_keys=(stranger,)))
    assert "none" not in requests(sshd)[:1]


async def test_no_key_at_all_starts_with_none(sshd: Sshd, options: TunnelOptions) -> None:
    """Nothing to sign with (no key files, no agent, an empty ~/.ssh): asyncssh's ``none``
    request goes first, as before the patch."""
    with pytest.raises(AuthFailed):
        await connect(sshd, dataclasses.replace(options, client_keys=()))
    assert requests(sshd)[:1] == ["none"]


def test_only_keys_signing_here_are_sent_signed(tmp_path: Path) -> None:
    """A loaded private key signs first; an agent's key (any other key pair type) or a
    FIDO security key (``sk-``: a touch per signature) is queried first, as before."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    local = asyncssh.load_keypairs([key])[0]
    assert quickauth.signs_here(local)

    class AgentKey:
        algorithm = b"ssh-ed25519"

    assert not quickauth.signs_here(AgentKey())
    security_key = asyncssh.load_keypairs([key])[0]
    security_key.algorithm = b"sk-ssh-ed25519@openssh.com"
    assert not quickauth.signs_here(security_key)


async def test_a_preferred_order_with_another_method_first_is_kept(
    sshd: Sshd, options: TunnelOptions, tmp_path: Path
) -> None:
    """The user's ``PreferredAuthentications`` puts keyboard-interactive before publickey:
    the login starts as asyncssh's does (the ``none`` probe, then the methods in the
    user's order), not with a signed public key."""
    config = tmp_path / "ssh_config"
    config.write_text("PreferredAuthentications keyboard-interactive,publickey\n")
    await connect(sshd, dataclasses.replace(options, ssh_config=config))
    assert requests(sshd)[:1] == ["none"]
    assert "Accepted publickey" in sshd.log.read_text(errors="replace")


def preferring(*methods: bytes, **switches: object) -> SimpleNamespace:
    """A connection's auth state as asyncssh keeps it: its preferred order, every switch
    off unless given."""
    state: dict[str, object] = {
        "_gss_kex_auth": False,
        "_gss_mic_auth": False,
        "_host_based_auth": True,  # asyncssh's default, with no host keys
        "_client_host_keys": [],
        "_kbdint_auth": True,
        "_password_auth": True,
    }
    state.update(switches)
    return SimpleNamespace(_preferred_auth=list(methods), **state)


def test_publickey_goes_first_only_as_the_first_method_the_client_can_try() -> None:
    default = (b"gssapi-keyex", b"gssapi-with-mic", b"hostbased", b"publickey", b"password")
    assert quickauth.publickey_first(preferring(*default))
    assert not quickauth.publickey_first(preferring(*default, _gss_mic_auth=True))
    assert not quickauth.publickey_first(preferring(*default, _gss_kex_auth=True))
    assert not quickauth.publickey_first(preferring(*default, _client_host_keys=["key"]))
    assert not quickauth.publickey_first(preferring(b"password", b"publickey"))
    assert quickauth.publickey_first(preferring(b"password", b"publickey", _password_auth=False))
    assert not quickauth.publickey_first(preferring(b"something-new", b"publickey"))
    assert not quickauth.publickey_first(preferring(b"password"))
    assert not quickauth.publickey_first(preferring())


def test_an_asyncssh_without_next_method_is_left_alone() -> None:
    """asyncssh before 2.18 (pyproject allows 2.14 on) has ``try_next_auth(self)``, without
    the ``next_method`` the patch passes on: the patch stays out (a fresh interpreter, as
    the link's module installs it at import)."""
    script = textwrap.dedent(
        """
        from asyncssh.connection import SSHClientConnection
        from tunnel.backends import quickauth

        def try_next_auth(self):
            pass

        SSHClientConnection.try_next_auth = try_next_auth
        assert quickauth.install() is False
        assert SSHClientConnection.try_next_auth is try_next_auth
        assert not quickauth.installed()
        print("left alone")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "left alone"
