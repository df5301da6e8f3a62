"""Fixtures for the tunnel tests: a private $HOME, options reaching the shared ``sshd``
fixture (tests/conftest.py), and echo / sink targets (helpers in tunnel_testlib.py)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.peers import Sshd
from tunnel import TunnelOptions

from .tunnel_testlib import Target


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $HOME (with ~/.ssh) and no agent, so the user's own ssh setup stays out."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def options(sshd: Sshd, home: Path, tmp_path: Path) -> TunnelOptions:
    """Options reaching ``sshd`` with explicit key, config and known_hosts files."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts_line())
    config = tmp_path / "ssh_config"
    config.write_text("")
    return TunnelOptions(
        gateways=(f"{sshd.user}@127.0.0.1:{sshd.port}",),  # type: ignore[arg-type]
        known_hosts=known_hosts,
        ssh_config=config,
        client_keys=(sshd.client_key,),
        keepalive_s=5,
        wait_for_link_s=5,
        connect_timeout_s=5,
    )


@pytest.fixture(params=["asyncssh", "openssh"])
def any_options(request: pytest.FixtureRequest, options: TunnelOptions) -> TunnelOptions:
    """``options`` for each link backend in turn; openssh needs the ``ssh`` client."""
    if request.param == "openssh" and shutil.which("ssh") is None:
        pytest.skip("ssh client not installed (Debian: openssh-client)")
    return dataclasses.replace(options, backend=request.param)


@pytest.fixture
async def echo() -> AsyncIterator[Target]:
    target = await Target("echo").start()
    yield target
    await target.close()


@pytest.fixture
async def sink() -> AsyncIterator[Target]:
    target = await Target("sink").start()
    yield target
    await target.close()
