"""sd_notify against a real unix datagram socket, path and abstract namespace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blitzdns.system import sdnotify
from tests.peers import free_port


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(2)
    yield sock, str(path)
    sock.close()


def test_ready_and_status_arrive_in_one_datagram(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify(ready=True, status="link up via gw\nsecond line")
    assert sock.recv(4096) == b"READY=1\nSTATUS=link up via gw second line"


def test_stopping_and_reloading(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.notify(stopping=True, env={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STOPPING=1"
    assert sdnotify.notify(reloading=True, env={"NOTIFY_SOCKET": path})
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="abstract sockets are Linux-only")
def test_abstract_namespace_address() -> None:
    name = f"blitzdns-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert sdnotify.notify(ready=True, env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_without_the_variable_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(ready=True) is False
    assert sdnotify.notify(ready=True, env={"NOTIFY_SOCKET": "relative/path"}) is False


def test_a_dead_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert sdnotify.notify(ready=True, env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False
    assert "could not notify systemd" in caplog.text


def test_nothing_to_say_sends_nothing(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.notify(env={"NOTIFY_SOCKET": path}) is False
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def _daemon(command: list[str], notify: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`blitzdns run` (resolver only, on a free port) under ``command``, telling ``notify``."""
    config = tmp_path / "config.toml"
    config.write_text("")
    return subprocess.Popen(
        [
            *command,
            *("run", "--no-tunnel", "--config", str(config)),
            *("--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:9"),
            *("--control-socket", str(tmp_path / "control.sock")),
        ],
        env={**os.environ, "NOTIFY_SOCKET": notify},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_the_daemon_says_reloading_then_ready_around_a_reload(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """`run` as systemd sees it: READY=1 once serving; on SIGHUP, RELOADING=1 (with
    MONOTONIC_USEC), then READY=1 again when the new config is in place."""
    sock, path = listener
    sock.settimeout(10)
    daemon = _daemon([str(Path(sys.executable).with_name("blitzdns"))], path, tmp_path)
    try:
        assert b"READY=1" in sock.recv(4096).split(b"\n")
        daemon.send_signal(signal.SIGHUP)
        reloading = sock.recv(4096).split(b"\n")
        assert b"RELOADING=1" in reloading
        assert any(line.startswith(b"MONOTONIC_USEC=") for line in reloading)
        assert sock.recv(4096).split(b"\n") == [b"READY=1"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


#: ``blitzdns`` whose sd_notify signals SIGHUP to itself right after the first READY=1.
_SIGHUP_ON_READY = """
import os, signal, sys
from blitzdns.system import sdnotify
real = sdnotify.notify
def notify(**kw):
    sent = real(**kw)
    if kw.get("ready") and not getattr(notify, "done", False):
        notify.done = True
        os.kill(os.getpid(), signal.SIGHUP)
    return sent
sdnotify.notify = notify
from blitzdns.entry import main
sys.exit(main())
"""


def test_a_sighup_sent_the_moment_ready_is_said_reloads_rather_than_kills(
    listener: tuple[socket.socket, str], tmp_path: Path
) -> None:
    """systemd may send SIGHUP as soon as it reads READY=1. Here the daemon signals itself
    right after sending READY=1, the narrowest form of that race: the handler must already
    be installed, or SIGHUP's default action ends the process (a flaky CI failure once)."""
    sock, path = listener
    sock.settimeout(10)
    daemon = _daemon([sys.executable, "-c", _SIGHUP_ON_READY], path, tmp_path)
    try:
        assert b"READY=1" in sock.recv(4096).split(b"\n")
        assert b"RELOADING=1" in sock.recv(4096).split(b"\n")
        assert sock.recv(4096).split(b"\n") == [b"READY=1"]
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=10) == 0
