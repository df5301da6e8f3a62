"""A link-first start (`run` without a privilege drop: blitzdns.daemon.Daemon.start): the
link may come up while the start still loads and binds the stub. READY=1 and the end of
the start's imports (blitzdns.daemon.end_of_start) then wait for the start to be over,
and come once."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
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
from tests.peers import Sshd, free_port
from tunnel import LinkStatus, Tunnel, TunnelState, early

from .test_run_end_to_end import config_text


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


def bound(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` over UDP and over TCP."""
    taken = []
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                taken.append(exc.errno == errno.EADDRINUSE)
            else:
                taken.append(False)
    return all(taken)


async def start_watching_the_stub_port(
    sshd: Sshd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[tuple[str, bool]],
    *,
    drop_privileges: bool,
) -> None:
    """Start a daemon (and close it) with its early connect and its link's start spied on:
    each step in order, with whether the stub's UDP and TCP port was bound at that moment
    recorded in ``steps`` (where a patched privilege drop records itself too). The stub
    ends bound on its one port and is unbound after the close."""
    dns_port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(config_text(sshd, tmp_path, dns_port, free_port(), ["a"]))
    early_connect = early._connect
    tunnel_start = Tunnel.start

    def spy_early(*args: Any) -> socket.socket | None:
        steps.append(("early connect", bound(dns_port)))
        return early_connect(*args)

    async def spy_start(self: Tunnel) -> None:
        steps.append(("link start", bound(dns_port)))
        await tunnel_start(self)

    monkeypatch.setattr(early, "_connect", spy_early)
    monkeypatch.setattr(Tunnel, "start", spy_start)
    options = RunOptions(
        config_path=config,
        drop_privileges=drop_privileges,
        connect_early=True,
        control_socket=tmp_path / "control",
        root=tmp_path,
    )
    daemon = Daemon(load_config(config, search=False), options)
    try:
        async with asyncio.timeout(30):  # a bound, not a measurement
            await daemon.start()
        assert daemon.resolver is not None
        assert [e.port for e in daemon.resolver.bound_endpoints] == [dns_port]
    finally:
        await daemon.close()
        early.discard()
    assert not bound(dns_port)


def first_seen(steps: list[tuple[str, bool]]) -> dict[str, bool]:
    """Each spied step's first 'bound' (a reconnect may start the link again)."""
    seen: dict[str, bool] = {}
    for step, was_bound in steps:
        if step != "drop":
            seen.setdefault(step, was_bound)
    return seen


async def test_the_stub_s_sockets_are_bound_before_the_link_connects(
    sshd: Sshd, tmp_path: Path, recorded: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link-first start binds the stub's UDP and TCP sockets before the link makes any
    connection (the early one, and every connect of the link's: a gateway given by name,
    a second gateway, a reconnect), so that none can get their port as its own."""
    steps: list[tuple[str, bool]] = []
    await start_watching_the_stub_port(sshd, tmp_path, monkeypatch, steps, drop_privileges=False)
    assert first_seen(steps) == {"early connect": True, "link start": True}


async def test_on_the_privilege_drop_path_the_stub_is_bound_before_the_early_connect(
    sshd: Sshd, tmp_path: Path, recorded: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start with a privilege drop (not link-first: everything binds as root, the link
    starts after the drop) binds the stub's UDP and TCP sockets before the early connect
    too, and before the link starts; the drop comes between."""
    import pwd

    me = pwd.getpwuid(os.getuid())
    steps: list[tuple[str, bool]] = []

    def spy_drop(user: Any, **_: Any) -> bool:
        steps.append(("drop", True))
        assert user is me
        return True

    # The drop path as root through sudo would take it, as whoever runs the tests.
    monkeypatch.setattr(daemon_module.privileges, "target_user", lambda explicit: me)
    monkeypatch.setattr(daemon_module.os, "geteuid", lambda: 0)
    monkeypatch.setattr(daemon_module.privileges, "drop_privileges", spy_drop)
    monkeypatch.setattr(daemon_module.classcode, "finish", lambda: None)
    monkeypatch.setattr(daemon_module.nosftp, "finish", lambda: None)
    await start_watching_the_stub_port(sshd, tmp_path, monkeypatch, steps, drop_privileges=True)
    assert first_seen(steps) == {"early connect": True, "link start": True}
    assert [step for step, _ in steps] == ["early connect", "drop", "link start"]


class NeverAsked:
    def __init__(self) -> None:
        self.asked = asyncio.Event()


async def test_the_wait_for_the_link_s_connect_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connect that never begins holds the stub's loading for LINK_CONNECT_WAIT_S only."""
    daemon = await make(tmp_path)
    monkeypatch.setattr(early, "pending", NeverAsked)
    monkeypatch.setattr(daemon_module, "LINK_CONNECT_WAIT_S", 0.01)
    async with asyncio.timeout(30):  # a bound, not a measurement
        await daemon._load_stub_beside_the_link()


async def test_a_stop_ends_the_wait_for_the_link_s_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = await make(tmp_path)
    monkeypatch.setattr(early, "pending", NeverAsked)
    monkeypatch.setattr(daemon_module, "LINK_CONNECT_WAIT_S", 3600)
    loading = asyncio.create_task(daemon._load_stub_beside_the_link())
    await asyncio.sleep(0)
    assert not loading.done()
    daemon.stopping.set()
    async with asyncio.timeout(30):  # a bound, not a measurement
        await loading
