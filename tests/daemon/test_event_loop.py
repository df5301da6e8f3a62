"""The event loop `run` serves on: uvloop where it installs (a normal dependency), the
standard asyncio loop where it does not, and both carry the whole job."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import DIG, Sshd, dig_short, free_port

from .conftest import Daemon
from .test_run_end_to_end import EchoServer, config_text, link_up, mouth_of, roundtrip

#: `blitzdns` as the console script runs it, with uvloop missing (as on Windows, or PyPy).
WITHOUT_UVLOOP = (
    "import sys\n"
    "sys.modules['uvloop'] = None  # `import uvloop` raises ImportError\n"
    "from blitzdns.entry import main\n"
    "main()\n"
)

LOOP_PROBE = (
    "import asyncio, sys\n"
    "if sys.argv[1] == 'without': sys.modules['uvloop'] = None\n"
    "from blitzdns.daemon import install_fast_loop\n"
    "fast = install_fast_loop()\n"
    "print(fast, type(asyncio.new_event_loop()).__module__)\n"
)


def loop_of(how: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", LOOP_PROBE, how],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return out.stdout.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not install on Windows")
def test_uvloop_is_a_dependency_and_the_daemon_runs_on_it() -> None:
    requires = importlib.metadata.requires("blitzdns") or []
    uvloop = [r for r in requires if r.startswith("uvloop")]
    assert uvloop and "extra ==" not in uvloop[0], requires
    assert loop_of("with") == "True uvloop"


def test_without_uvloop_the_daemon_takes_the_standard_loop() -> None:
    assert loop_of("without") == "False asyncio.unix_events"


def test_the_standard_loop_carries_the_whole_job(sshd: Sshd, tmp_path: Path) -> None:
    """The daemon with uvloop missing: names answered, a line through sshd and back."""
    if DIG is None:
        pytest.skip("dig not installed (Debian: bind9-dnsutils)")
    echo = EchoServer()
    dns_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(config_text(sshd, tmp_path, dns_port, echo.port, ["alpha"]))
    control, log = tmp_path / "control.sock", tmp_path / "daemon.log"
    control_flag = ("--control-socket", str(control))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", WITHOUT_UVLOOP, "run", "--config", str(config), *control_flag],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    daemon = Daemon(process, config, control, log)
    try:
        daemon.wait_status(link_up)
        assert dig_short(dns_port, "alpha.example.test")[0].startswith("127.79.0.")
        address, port = mouth_of("alpha", daemon, dns_port)
        assert roundtrip(address, port, b"on the standard loop") == b"on the standard loop"
    finally:
        daemon.stop()
        echo.close()
