"""Fixtures for the daily-use commands, driven through the real command line.

Every test here runs ``blitzdns`` as a subprocess (the console script of this virtualenv)
and, where it needs one, a real ``blitzdns run`` daemon on loopback ports chosen free, with
its control socket in the test's own directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.peers import daemon_status, free_port, wait_for

BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))


def blitzdns(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``blitzdns ARGS`` with stdout and stderr captured (so both are pipes)."""
    return subprocess.run(
        [BLITZDNS, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def side_by_side(
    runs: Sequence[Sequence[str]], env: Mapping[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """:func:`blitzdns` for each of ``runs`` (independent commands), four at a time: each is
    mostly the command line's start-up, which one core does alone."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda argv: blitzdns(*argv, env=env), runs))


def echo_config(
    tmp_path: Path, *, listen_port: int | None = None, gateway_port: int | None = None
) -> Path:
    """A config of one protected host on free loopback ports; the gateway refuses (nothing
    listens on its port), so the link stays down and nothing leaves the machine."""
    mouth_block = f"127.79.{os.getpid() % 250 + 1}.0/24"
    path = tmp_path / "config.toml"
    path.write_text(
        f"""preset = "none"
[dns]
listen = ["127.0.0.1:{listen_port or free_port()}"]
upstreams = ["127.0.0.1:9"]
[tunnel]
gateways = ["127.0.0.1:{gateway_port or free_port()}"]
mouths = "{mouth_block}"
[services]
echo = {{ port = {free_port()} }}
[hosts.echo]
names = ["echo.example.org", "echo"]
services = ["echo"]
remote = "127.0.0.1"
"""
    )
    return path


@dataclass
class RunningDaemon:
    """A ``blitzdns run`` subprocess, its control socket and its log."""

    process: subprocess.Popen[bytes]
    control: Path
    log: Path

    def status(self) -> subprocess.CompletedProcess[str]:
        return blitzdns("status", "--json", "--control-socket", str(self.control))

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 30
    ) -> dict[str, Any]:
        """Poll the status (what ``status --json`` prints, asked in this process) until
        ``predicate`` holds; the daemon must stay alive."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            nonlocal last
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            now = daemon_status(self.control)
            last = now or last
            return now if now and predicate(now) else None

        return wait_for(
            check, lambda: f"the status; last {last}; log {self.log.read_text()}", timeout_s
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def running(
    argv: list[str], control: Path, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[RunningDaemon]:
    """Start ``argv`` (a ``blitzdns run …`` line) with its output in ``log`` (truncated, same
    inode), and wait until its control socket answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)
    daemon = RunningDaemon(process, control, log)
    try:
        daemon.wait_for(lambda status: "pid" in status)
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., RunningDaemon]]:
    """``start_daemon(config, *flags)``: a daemon on that config, stopped after the test."""
    with contextlib.ExitStack() as stack:

        def start(config: Path, *flags: str) -> RunningDaemon:
            control = tmp_path / "control.sock"
            argv = [BLITZDNS, "run", "-c", str(config), "--control-socket", str(control)]
            return stack.enter_context(running([*argv, *flags], control, tmp_path / "daemon.log"))

        yield start


@pytest.fixture
def not_blitzdns(tmp_path: Path) -> Iterator[Path]:
    """A unix socket whose server answers every connection with a line that is not JSON."""
    path = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"hello from something else\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    thread.join(timeout=5)
