"""A reload after the privilege drop reads the same config file as the start did.

After the switch, HOME is the target user's; searching the default paths again would
silently fall back to another file (or to the preset alone) and move every mouth.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.peers import free_port, wait_for

from .conftest import BLITZDNS


def test_sighup_after_dropping_to_nobody_rereads_the_starting_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="blitzdns-home-"))
    try:
        home.chmod(0o755)
        config_dir = home / ".config" / "blitzdns"
        config_dir.mkdir(parents=True)
        for part in (home / ".config", config_dir):
            part.chmod(0o755)
        (config_dir / "config.toml").write_text(
            f'[dns]\nlisten = ["127.0.0.1:{free_port()}"]\nupstreams = ["127.0.0.1:9"]\n'
            '[tunnel]\nhosts = ["dnd"]\nmouths = "127.213.5.0/24"\n'
        )
        (config_dir / "config.toml").chmod(0o644)
        env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "XDG_CONFIG_HOME")}
        env["HOME"] = str(home)
        log = tmp_path / "daemon.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [
                    BLITZDNS,
                    "run",
                    "--no-tunnel",
                    "--user",
                    "nobody",
                    "--control-socket",
                    str(tmp_path / "c.sock"),
                ],
                env=env,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        try:

            def said(line: str) -> bool:
                assert daemon.poll() is None, log.read_text()
                return line in log.read_text()

            wait_for(lambda: said("running as nobody"), lambda: f"the drop: {log.read_text()}")
            daemon.send_signal(signal.SIGHUP)
            wait_for(lambda: said("reloaded"), lambda: f"the reload: {log.read_text()}")
            text = log.read_text()
            assert "reloaded: 1 hosts (added: none; removed: none)" in text, text
        finally:
            daemon.terminate()
            daemon.wait(timeout=10)
    finally:
        shutil.rmtree(home, ignore_errors=True)
