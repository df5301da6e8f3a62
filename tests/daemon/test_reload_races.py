"""Reloads that meet each other or a stop, driven step by step in-process.

The daemon runs resolver-only (no gateway needed); the network facts behind
``--location auto`` are a fake whose every read waits until the test lets it go, so the
interleavings below happen in the same order on every machine.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from blitzdns.config import load_config
from blitzdns.daemon import Daemon, RunOptions
from blitzdns.system import locations, netfacts
from tests.peers import free_port

CONFIG = """
[dns]
listen = ["127.0.0.1:{port}"]
upstreams = ["127.0.0.1:9"]
[locations.home]
match = {{ gateway = "192.0.2.1" }}
hosts = ["dnd"]
upstreams = ["127.0.0.3:9"]
[locations.campus]
match = {{ gateway = "198.51.100.1" }}
hosts = [{campus}]
"""


class HeldFacts:
    """``read_facts`` that blocks each call until released; the location is ``where``."""

    def __init__(self) -> None:
        self.where = "home"
        self.release_all = False
        self._calls: asyncio.Queue[threading.Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def read(self, root: Path = Path("/")) -> None:
        gate = threading.Event()
        if not self.release_all:
            self._loop.call_soon_threadsafe(self._calls.put_nowait, gate)
            gate.wait(10)

    def match(self, config: Any, facts: Any) -> locations.Match:
        rule = config.locations[self.where].match[0]
        return locations.Match(self.where, rule, ("held facts",))

    async def next_call(self) -> threading.Event:
        return await asyncio.wait_for(self._calls.get(), 10)


@pytest.fixture
async def facts(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HeldFacts]:
    held = HeldFacts()
    monkeypatch.setattr(netfacts, "read_facts", held.read)
    monkeypatch.setattr(locations, "match_location", held.match)
    yield held
    held.release_all = True


def located_daemon(path: Path, poll_s: float) -> Daemon:
    """`run --no-tunnel --location auto` on ``path``, in this process, as this user."""
    options = RunOptions(
        config_path=path,
        no_tunnel=True,
        auto_location=True,
        control_socket=path.with_name("control.sock"),
        drop_privileges=False,
        location_poll_s=poll_s,
    )
    return Daemon(load_config(path, search=False), options)


def hosts(daemon: Daemon) -> list[str]:
    return sorted(h.key for h in daemon.config.hosts)


async def test_a_location_change_found_before_a_file_reload_does_not_undo_it(
    facts: HeldFacts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The poll sees the move to campus; meanwhile the user adds dasher to campus and
    reloads. The poll's reload runs after the user's and must apply the file as it is
    now, not the text it was based on (which would drop dasher, silently unprotected)."""
    path = tmp_path / "blitzdns.toml"
    port = free_port()
    path.write_text(CONFIG.format(port=port, campus='"dnd"'))
    daemon = located_daemon(path, poll_s=0.01)
    asked, done = asyncio.Event(), asyncio.Event()
    reload = daemon.reload

    async def recorded_reload(*args: Any, **kw: Any) -> bool:
        """The poll's reload: the one given a location (or, before the fix, a config)."""
        by_poll = bool(args or kw)
        if by_poll:
            asked.set()
        try:
            return await reload(*args, **kw)
        finally:
            if by_poll:
                done.set()

    daemon.reload = recorded_reload  # type: ignore[method-assign]
    main = asyncio.create_task(daemon.main())
    try:
        (await facts.next_call()).set()  # start: at home
        poll = await facts.next_call()  # the poll is reading the facts: it is now campus
        assert daemon.config.location == "home"
        facts.where = "campus"
        path.write_text(CONFIG.format(port=port, campus='"dnd", "dasher"'))
        users = asyncio.create_task(daemon.reload())  # SIGHUP or `blitzdns reload`
        held_by_user = await facts.next_call()  # the user's reload holds the lock
        poll.set()
        await asyncio.wait_for(asked.wait(), 10)  # the poll asks for its reload, and waits
        facts.release_all = True
        held_by_user.set()
        assert await asyncio.wait_for(users, 10)
        await asyncio.wait_for(done.wait(), 10)  # the poll's reload, after the user's
        assert daemon.config.location == "campus"
        assert hosts(daemon) == ["dasher", "dnd"]
        # The protected hosts are applied live: no "wait for a restart" for them.
        assert "next restart" not in caplog.text
    finally:
        facts.release_all = True
        daemon.stopping.set()
        await asyncio.wait_for(main, 10)


async def test_a_stop_during_a_reload_does_not_say_ready_after_stopping(
    facts: HeldFacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a SIGHUP reload runs: systemd hears RELOADING=1, then STOPPING=1, and
    no READY=1 after that (it would read it as the service being up again)."""
    from blitzdns.system import sdnotify

    said: list[str] = []

    def notify(**kw: Any) -> bool:
        said.extend(key for key in ("ready", "reloading", "stopping") if kw.get(key))
        return True

    monkeypatch.setattr(sdnotify, "notify", notify)
    path = tmp_path / "blitzdns.toml"
    path.write_text(CONFIG.format(port=free_port(), campus='"dnd"'))
    daemon = located_daemon(path, poll_s=600)
    main = asyncio.create_task(daemon.main())
    try:
        (await facts.next_call()).set()  # start
        daemon.reload_requested.set()  # SIGHUP
        held = await facts.next_call()  # the reload is reading the network facts
        daemon.stopping.set()  # SIGTERM
        await asyncio.wait_for(main, 10)
        held.set()
    finally:
        facts.release_all = True
        daemon.stopping.set()
        await asyncio.wait_for(main, 10)
    assert said == ["ready", "reloading", "stopping"]


def test_a_first_link_up_during_a_stop_does_not_say_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link may come up while the daemon is stopping (before the tunnel is closed):
    STOPPING=1 has been said, so READY=1 must not follow it."""
    from blitzdns.system import sdnotify
    from tunnel import LinkStatus, TunnelState

    said: list[str] = []
    monkeypatch.setattr(sdnotify, "notify", lambda **kw: said.append(str(sorted(kw))) or True)
    daemon = Daemon(
        load_config(None, search=False), RunOptions(control_socket=tmp_path / "control.sock")
    )
    daemon.stopping.set()
    daemon._on_link_change(TunnelState(LinkStatus.UP, 0.0, "gw", None, None, ()))
    assert not daemon.ready_sent
    assert said == ["['status']"]


@pytest.mark.parametrize("auto", [False, True], ids=["--location home", "--location auto"])
async def test_command_line_flags_win_over_the_location_at_start_and_after_reloads(
    facts: HeldFacts, tmp_path: Path, auto: bool
) -> None:
    """File, then location, then flags, as `plan` and `config show` show it: a location's
    upstreams must not replace `--upstream`, at start or on any reload."""
    path = tmp_path / "blitzdns.toml"
    path.write_text(CONFIG.format(port=free_port(), campus='"dnd"'))
    options = RunOptions(
        config_path=path,
        no_tunnel=True,
        auto_location=auto,
        location=None if auto else "home",
        control_socket=tmp_path / "control.sock",
        drop_privileges=False,
        location_poll_s=600,
        flag_upstreams=("127.0.0.2:9",),
    )
    facts.release_all = True
    daemon = Daemon(load_config(path, search=False), options)
    await daemon.start()
    try:
        assert daemon.config.location == "home"
        assert [str(e) for e in daemon.config.dns.upstreams] == ["127.0.0.2:9"]
        assert await daemon.reload()
        assert daemon.config.location == "home"
        assert [str(e) for e in daemon.config.dns.upstreams] == ["127.0.0.2:9"]
    finally:
        await daemon.close()
