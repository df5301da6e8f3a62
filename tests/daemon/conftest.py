"""Fixtures for the daemon tests: `blitzdns run` end to end (the real sshd, a config
writer) and its parts (a forked child for tests that switch users or capabilities).

The ``sshd`` fixture is shared by every suite (tests/conftest.py, tests/peers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import daemon_status, wait_for

BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))


@dataclass
class Daemon:
    """A `blitzdns run` subprocess and the paths it uses."""

    process: subprocess.Popen[bytes]
    config: Path
    control: Path
    log: Path

    def status(self) -> dict[str, object]:
        """``status --json`` (``{}`` while the daemon does not answer)."""
        return daemon_status(self.control)

    def _alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")

    def wait_status(self, predicate: object, timeout_s: float = 30) -> dict[str, object]:
        """The daemon's status once ``predicate`` holds for it."""
        last: dict[str, object] = {}

        def check() -> dict[str, object] | None:
            nonlocal last
            self._alive()
            last = self.status()
            return last if last and callable(predicate) and predicate(last) else None

        return wait_for(
            check, lambda: f"the status; last {last}; log {self.log.read_text()}", timeout_s
        )

    def wait_log(self, line: str, timeout_s: float = 30) -> str:
        """The daemon's log once it says ``line``."""

        def check() -> str | None:
            self._alive()
            text = self.log.read_text()
            return text if line in text else None

        return wait_for(
            check, lambda: f"the daemon to say {line!r}: {self.log.read_text()[-3000:]}", timeout_s
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_daemon(tmp_path: Path, config_text: str, *extra: str) -> Daemon:
    config = tmp_path / "config.toml"
    config.write_text(config_text)
    control = tmp_path / "control.sock"
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [BLITZDNS, "run", "--config", str(config), "--control-socket", str(control), *extra],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    return Daemon(process, config, control, log)


ChildRunner = Callable[[Callable[[], None]], None]


def run_in_child(body: Callable[[], None]) -> None:
    """Run ``body`` in a forked child (it may change users); re-raise its failure here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            body()
            report = b"OK"
        except BaseException:
            report = traceback.format_exc().encode()
        os.write(write_end, report)
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    report = b"".join(chunks).decode()
    assert report == "OK", f"in the child:\n{report}"


@pytest.fixture
def in_child() -> ChildRunner:
    """:func:`run_in_child`, for tests that switch users or capabilities."""
    return run_in_child
