"""`run --location auto`: changing the default route switches a running daemon's location.

The daemon runs in a network namespace the test creates; the route is changed there, and
the stub (queried with dig inside the namespace) starts answering the newly protected host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import daemon_status, wait_for

from .conftest import BLITZDNS

IP = shutil.which("ip")
DIG = shutil.which("dig")

CONFIG = """
[dns]
listen = ["127.0.0.1:53"]
upstreams = ["127.0.0.1:9"]
timeout_s = 0.5
[tunnel]
hosts = ["dnd"]
[locations.home]
match = { gateway = "192.0.2.1" }
hosts = ["dnd"]
[locations.campus]
match = { gateway = "198.51.100.1" }
hosts = ["dnd", "dasher"]
"""


def netns(name: str, *command: str) -> subprocess.CompletedProcess[str]:
    assert IP is not None
    return subprocess.run(  # noqa: PLW1510 (callers check what they need)
        [IP, "netns", "exec", name, *command], capture_output=True, text=True, timeout=15
    )


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or IP is None or DIG is None:
        pytest.skip("needs root, iproute2 and dig")
    name = f"bzloc-{os.getpid()}"
    if subprocess.run([IP, "netns", "add", name], capture_output=True, check=False).returncode:
        pytest.skip("cannot create a network namespace here")
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"],
            ["ip", "link", "set", "d1", "up"],
            ["ip", "addr", "add", "192.0.2.2/24", "dev", "d0"],
            ["ip", "addr", "add", "198.51.100.2/24", "dev", "d0"],
            ["ip", "link", "set", "d0", "up"],
            ["ip", "route", "add", "default", "via", "192.0.2.1"],
        ):
            assert netns(name, *command).returncode == 0, command
        yield name
    finally:
        subprocess.run([IP, "netns", "pids", name], capture_output=True, check=False)
        subprocess.run([IP, "netns", "delete", name], capture_output=True, check=False)


def location_of(control: Path) -> str | None:
    value = daemon_status(control).get("location")
    return str(value) if value else None


def test_route_change_switches_location_without_restart(namespace: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    control = tmp_path / "control.sock"
    log = (tmp_path / "daemon.log").open("wb")
    assert IP is not None
    daemon = subprocess.Popen(
        [
            IP,
            "netns",
            "exec",
            namespace,
            BLITZDNS,
            "run",
            "--no-tunnel",
            "--location",
            "auto",
            "--config",
            str(config),
            "--control-socket",
            str(control),
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "SUDO_USER"},
    )

    def said(what: str) -> Callable[[], str]:
        return lambda: f"{what}; the daemon said: {(tmp_path / 'daemon.log').read_text()}"

    def dig(name: str) -> list[str]:
        return netns(
            namespace, "dig", "@127.0.0.1", "+short", "+time=1", "+tries=1", name
        ).stdout.split()

    try:
        wait_for(lambda: location_of(control) == "home", said("location home"), 30)
        pid_before = daemon.pid
        assert dig("dnd.dartmouth.edu") == ["127.77.0.1"]
        assert "127.77.0.2" not in dig("dasher.dartmouth.edu")
        assert (
            netns(namespace, "ip", "route", "replace", "default", "via", "198.51.100.1").returncode
            == 0
        )
        wait_for(lambda: location_of(control) == "campus", said("location campus"), 30)
        wait_for(lambda: dig("dasher.dartmouth.edu") == ["127.77.0.2"], "dasher's mouth", 30)
        assert daemon.poll() is None and daemon.pid == pid_before
        assert "network changed: location home → campus" in (tmp_path / "daemon.log").read_text()
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        log.close()
