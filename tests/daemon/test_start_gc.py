"""The cyclic collector during `run`'s start (issue 18: start-up CPU).

`blitzdns run` turns the collector off for its imports and set-up (blitzdns.entry) and the
daemon turns it on again, after freezing what the start made, once the start is over: the
resolver serves (no tunnel) or the link's first attempt has ended (asyncssh is imported
by then). A daemon left with the collector off would keep every reference cycle.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import free_port

#: As `blitzdns run` starts: the collector off before the daemon's modules load; then one
#: of two ends of the start, and what the collector looks like after it.
PROBE = """
import gc, sys
gc.disable()
import asyncio, json, time
from pathlib import Path
from blitzdns.config import load_config
from blitzdns.daemon import Daemon, RunOptions
from tunnel import LinkStatus, TunnelState

config = load_config(Path(sys.argv[2]), search=False)
options = RunOptions(
    config_path=Path(sys.argv[2]), no_tunnel=True, drop_privileges=False,
    control_socket=Path(sys.argv[3]), root=Path(sys.argv[4]),
)
seen = []

async def main():
    daemon = Daemon(config, options)
    if sys.argv[1] == "no-tunnel":
        await daemon.start()
        seen.append(gc.isenabled())
        await daemon.close()
        return
    for status in (LinkStatus.CONNECTING, LinkStatus(sys.argv[1])):
        state = TunnelState(status, time.time(), "gw", "refused", None, ())
        daemon._on_link_change(state)
        seen.append(gc.isenabled())

asyncio.run(main())
print(json.dumps({"enabled": seen, "frozen": gc.get_freeze_count()}))
"""


def probe(tmp_path: Path, how: str) -> dict[str, object]:
    config = tmp_path / "config.toml"
    config.write_text(
        'preset = "none"\n[dns]\n'
        f'listen = ["127.0.0.1:{free_port()}"]\nupstreams = ["127.0.0.1:{free_port()}"]\n'
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nmouth = "127.79.0.1"\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    args = (how, str(config), str(tmp_path / "ctl"), str(root))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_a_resolver_only_daemon_collects_again_once_it_serves(tmp_path: Path) -> None:
    result = probe(tmp_path, "no-tunnel")
    assert result["enabled"] == [True]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000


@pytest.mark.parametrize("end", ["up", "down", "failed"])
def test_the_link_s_first_attempt_ending_ends_the_start(tmp_path: Path, end: str) -> None:
    # Still connecting: the start (asyncssh's import) is not over.
    result = probe(tmp_path, end)
    assert result["enabled"] == [False, True]
    assert isinstance(result["frozen"], int) and result["frozen"] > 1000


def test_entry_turns_the_collector_off_for_run_only() -> None:
    code = (
        "import gc, sys\n"
        "import blitzdns.daemon\n"
        "blitzdns.daemon.run_main = lambda argv: print(gc.isenabled()) or 0\n"
        "from blitzdns.entry import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(gc.isenabled())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "run"], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.stdout.split() == ["False", "False"], run.stderr
    other = subprocess.run(
        [sys.executable, "-c", code, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert other.stdout.split()[-1] == "True", other.stderr
