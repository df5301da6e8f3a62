"""Both backends read the same ssh files when ``$HOME`` is not the account's home
(issue #12): ssh itself would read the passwd entry's ``~/.ssh``, asyncssh ``$HOME``'s.

Here ``$HOME`` is a private directory (the ``home`` fixture) while the account is root,
whose passwd home is elsewhere: the gateway is only an alias in ``$HOME/.ssh/config``,
its key is only in ``$HOME/.ssh/known_hosts`` and the client key only at
``$HOME/.ssh/id_ed25519``. Nothing is passed explicitly."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
from pathlib import Path

import pytest

from tests.peers import Sshd, free_port
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.openssh.command import SshFiles

from .tunnel_testlib import Target, exchange


@pytest.mark.parametrize("backend", ["asyncssh", "openssh"])
async def test_gateway_alias_keys_and_known_hosts_come_from_home(
    sshd: Sshd, home: Path, echo: Target, backend: str
) -> None:
    if backend == "openssh" and shutil.which("ssh") is None:
        pytest.skip("ssh client not installed (Debian: openssh-client)")
    assert pwd.getpwuid(os.getuid()).pw_dir != str(home)
    ssh_dir = home / ".ssh"
    (ssh_dir / "config").write_text(
        f"Host blitz-gateway\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
    )
    (ssh_dir / "known_hosts").write_text(sshd.known_hosts_line())
    key = ssh_dir / "id_ed25519"
    shutil.copyfile(sshd.client_key, key)
    key.chmod(0o600)
    options = TunnelOptions(
        gateways=("blitz-gateway",),  # type: ignore[arg-type]
        backend=backend,  # type: ignore[arg-type]
        connect_timeout_s=5,
    )
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(options, [forward]) as tunnel:
        assert await tunnel.wait_up(10), tunnel.state.last_error
        assert await exchange(*forward.mouth, b"same files") == b"same files"


def test_the_master_is_given_homes_files(home: Path, tmp_path: Path) -> None:
    options = TunnelOptions(gateways=("gw",), backend="openssh")  # type: ignore[arg-type]
    files = SshFiles.of(options)
    assert files.config == Path(os.devnull)
    assert files.known_hosts == home / ".ssh" / "known_hosts"
    assert files.identities is None
    (home / ".ssh" / "config").write_text("")
    (home / ".ssh" / "id_rsa").write_text("")
    files = SshFiles.of(options)
    assert files.config == home / ".ssh" / "config"
    assert files.identities == (home / ".ssh" / "id_rsa",)
    explicit = dataclasses.replace(options, client_keys=(tmp_path / "k",))
    assert SshFiles.of(explicit).identities == (tmp_path / "k",)
