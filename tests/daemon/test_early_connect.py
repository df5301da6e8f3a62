"""`run` starts the TCP connect to its first gateway before loading the link's code
(tunnel.early; the link's use of it is tested against sshd in tests/tunnel/test_tunnel_early.py):
only for an address with the asyncssh backend."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from blitzdns.config import Config, load_config
from blitzdns.daemon import connect_early
from tests.peers import Sshd, dig_short, free_port
from tunnel import early

from .conftest import start_daemon
from .test_run_end_to_end import config_text, link_up


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]
    early.discard()


def config_with(tmp_path: Path, tunnel: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(f"[tunnel]\n{tunnel}\n")
    return load_config(path, search=False)


def test_first_gateway_address_is_connected(tmp_path: Path, listener: int) -> None:
    connect_early(config_with(tmp_path, f'gateways = ["u@127.0.0.1:{listener}", "u@[::1]:22"]'))
    started = early.take()
    assert started is not None
    assert (str(started.ip), started.port) == ("127.0.0.1", listener)
    started.close()


@pytest.mark.parametrize(
    "tunnel",
    [
        'gateways = ["u@gw.example.org:22"]',  # a name: resolving it now could ask our own stub
        'gateways = ["u@127.0.0.1:{port}"]\nbackend = "openssh"',  # ssh connects by itself
        "gateways = []",
    ],
)
def test_not_connected_early(tmp_path: Path, listener: int, tunnel: str) -> None:
    connect_early(config_with(tmp_path, tunnel.format(port=listener)))
    assert early.take() is None


def test_run_uses_the_early_connection(sshd: Sshd, tmp_path: Path) -> None:
    """`blitzdns run` with an address gateway connects early and its link comes up over
    that one TCP connection (an early socket left unused would show as a second one; this
    also catches an asyncssh whose connect no longer asks the loop as tunnel.early expects)."""
    before = sshd.connections_logged()
    config = config_text(sshd, tmp_path, free_port(), free_port(), ["a"])
    daemon = start_daemon(tmp_path, config, "-v")  # -v: tunnel.early's debug line
    try:
        daemon.wait_status(link_up)
        daemon.wait_log(f"connection to 127.0.0.1 port {sshd.port} opened early")
        assert sshd.connections_logged() - before == 1
    finally:
        daemon.stop()


def test_run_starts_its_link_before_the_stub(sshd: Sshd, tmp_path: Path) -> None:
    """`run` without a privilege drop starts the link first (its handshake waits for sshd
    while the stub's code loads and binds): the link's line comes before the stub's, and
    the daemon says both ready as always."""
    config = config_text(sshd, tmp_path, free_port(), free_port(), ["a"])
    daemon = start_daemon(tmp_path, config)
    try:
        daemon.wait_status(link_up)
        text = daemon.wait_log("DNS stub listening")
        assert text.index("forwards listening; connecting") < text.index("DNS stub listening")
    finally:
        daemon.stop()


def test_a_stub_port_taken_ends_a_link_first_start_in_one_line(sshd: Sshd, tmp_path: Path) -> None:
    """A link-first start binds the stub's sockets before the link starts: its port taken
    ends the start as before (one line naming the address, a failing status, no traceback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        daemon = start_daemon(tmp_path, config_text(sshd, tmp_path, port, free_port(), ["a"]))
        try:
            status = daemon.process.wait(timeout=30)
        finally:
            daemon.stop()
    text = daemon.log.read_text()
    assert status != 0
    assert f"blitzdns: 127.0.0.1:{port} (UDP) is already in use" in text
    assert "Traceback" not in text


def test_a_connect_held_back_holds_neither_the_stub_nor_a_stop(sshd: Sshd, tmp_path: Path) -> None:
    """A link-first start whose link's connect never begins (here a ProxyCommand from the
    SSH config that never answers; asyncssh then never asks the loop for a connection):
    the stub serves during that first attempt all the same (its line before any end of
    the attempt), and SIGTERM ends the daemon, status 0."""
    dns_port = free_port()
    config = config_text(sshd, tmp_path, dns_port, free_port(), ["a"])
    (tmp_path / "ssh_config").write_text("Host *\n  ProxyCommand sh -c 'exec cat >/dev/null'\n")
    daemon = start_daemon(tmp_path, config)
    try:
        text = daemon.wait_log("DNS stub listening")
        assert "link down" not in text
        assert "link up" not in text
        assert dig_short(dns_port, "a.example.test")[0].startswith("127.79.0.")
        # What "during the first attempt" means, asked of the daemon rather than assumed
        # from the time: that attempt ends only at its connect timeout (10 s,
        # TunnelOptions.connect_timeout_s), so it is still the one under way after the answer.
        assert first_attempt_on(daemon.status()), daemon.log.read_text()
        assert "link down" not in daemon.log.read_text()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=20) == 0
    finally:
        daemon.stop()


def first_attempt_on(status: dict[str, object]) -> bool:
    """Whether the link's first attempt is still under way (none has ended yet)."""
    tunnel = status.get("tunnel")
    return (
        isinstance(tunnel, dict)
        and tunnel.get("status") == "connecting"
        and tunnel.get("attempts") == 1
        and tunnel.get("down_since") is None
    )
