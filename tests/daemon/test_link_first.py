"""A link-first start (`run` without a privilege drop: blitzdns.daemon.Daemon.start): the
link may come up while the start still loads and binds the stub. READY=1 and the end of
the start's imports (blitzdns.daemon.end_of_start) then wait for the start to be over,
and come once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from blitzdns import daemon as daemon_module
from blitzdns.config import load_config
from blitzdns.daemon import Daemon, RunOptions
from tunnel import LinkStatus, TunnelState


def state(status: LinkStatus) -> TunnelState:
    return TunnelState(status, time.time(), "gw", None, None, ())


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"notify": [], "end": []}
    monkeypatch.setattr(daemon_module.sdnotify, "notify", lambda **kw: seen["notify"].append(kw))
    monkeypatch.setattr(daemon_module, "end_of_start", lambda: seen["end"].append(True))
    return seen


async def make(tmp_path: Path) -> Daemon:
    config = tmp_path / "config.toml"
    config.write_text('preset = "none"\n')
    options = RunOptions(config_path=config, drop_privileges=False, connect_early=True)
    return Daemon(load_config(config, search=False), options)


async def test_link_up_during_the_start_waits_for_its_end(
    tmp_path: Path, recorded: dict[str, list[Any]]
) -> None:
    daemon = await make(tmp_path)
    daemon._started = False  # as start() sets it for a link-first start
    up = state(LinkStatus.UP)
    daemon._on_link_change(up)
    assert not daemon.ready_sent
    assert not [kw for kw in recorded["notify"] if kw.get("ready")]
    assert recorded["end"] == []
    daemon.tunnel = SimpleNamespace(state=up)  # type: ignore[assignment]
    daemon._started = True
    daemon._after_start()
    assert daemon.ready_sent
    assert [kw for kw in recorded["notify"] if kw.get("ready")] == [
        {"ready": True, "status": "link up via gw"}
    ]
    assert recorded["end"] == [True]


async def test_a_link_still_connecting_at_the_end_says_ready_when_it_is_up(
    tmp_path: Path, recorded: dict[str, list[Any]]
) -> None:
    daemon = await make(tmp_path)
    daemon._started = False
    daemon._on_link_change(state(LinkStatus.CONNECTING))
    daemon.tunnel = SimpleNamespace(state=state(LinkStatus.CONNECTING))  # type: ignore[assignment]
    daemon._started = True
    daemon._after_start()
    assert not daemon.ready_sent
    assert recorded["end"] == []
    daemon._on_link_change(state(LinkStatus.UP))
    assert daemon.ready_sent
    assert recorded["end"] == [True]
    assert len([kw for kw in recorded["notify"] if kw.get("ready")]) == 1


async def test_a_first_attempt_down_during_the_start_ends_it_at_its_end(
    tmp_path: Path, recorded: dict[str, list[Any]]
) -> None:
    daemon = await make(tmp_path)
    daemon._started = False
    down = state(LinkStatus.DOWN)
    daemon._on_link_change(down)
    assert recorded["end"] == []
    daemon.tunnel = SimpleNamespace(state=down)  # type: ignore[assignment]
    daemon._started = True
    daemon._after_start()
    assert recorded["end"] == [True]
    assert not daemon.ready_sent


#: As `run` loads its modules before the stub's: what loading the resolver and the control
#: socket then adds of blitzdns's own.
LOADED = """
import json, sys
import blitzdns.errors, blitzdns.daemon, uvloop, tunnel.tunnel
before = set(sys.modules)
import blitzdns.dns.server, blitzdns.control
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("blitzdns"))))
"""


def test_the_stub_s_modules_are_those_loaded_in_the_link_s_waits() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == sorted(daemon_module.STUB_MODULES)
