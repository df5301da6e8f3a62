"""Issue 15: a new network or a resume, and the link follows at once.

``blitzdns run`` in the client namespace of :class:`RoamLab` (two uplinks to a router,
sshd and the echo/bulk servers behind it), with the default keepalives (15 s × 3): only
the network watch can explain a relink within the test's bounds. A stream of short
connections runs through the ``dnd`` mouth to the echo server throughout, a long paced
transfer through the ``dasher`` mouth to the bulk server.

The tests assert behaviour, never a time: the link is re-established on the new path,
the reason is in ``status``, and no short connection that started after the switch
failed (those opened while the link was being replaced waited for the new one). The
times are for ``bench/roam_bench.py``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import PYTHON, Blitzdns, Sshd, SshKeys, missing_prerequisite, read_text, wait_for
from .roamlab import (
    BULK_PORT,
    ECHO_PORT,
    SERVER_IP,
    SSHD_LISTEN,
    UPLINKS,
    Records,
    RoamLab,
    agent,
    link_source,
    roam_config,
    status,
)

pytestmark = pytest.mark.timeout(120)

PAUSE_S = 3.0
"""How long the daemon is frozen in the resume test (the bench uses 60 s)."""
SHORTS_AFTER = 10
"""Short connections that must have started after the switch before the stream is judged."""


@pytest.fixture(scope="module")
def roam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoamLab]:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    lab = RoamLab(f"{os.getpid()}r", tmp_path_factory.mktemp("roam"))
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="module")
def keys(roam: RoamLab) -> SshKeys:
    return SshKeys.make(roam.root)


@pytest.fixture(scope="module")
def sshd(roam: RoamLab, keys: SshKeys) -> Iterator[Sshd]:
    daemon = Sshd(roam["server"], keys, roam.root, listen=SSHD_LISTEN).start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def servers(roam: RoamLab) -> Iterator[Records]:
    serving = agent(roam["server"], roam.root, "servers", "serve", "--address", SERVER_IP)
    yield serving
    serving.stop()


@pytest.fixture(params=["asyncssh", "openssh"])
def daemon(
    request: pytest.FixtureRequest,
    roam: RoamLab,
    keys: SshKeys,
    sshd: Sshd,
    servers: Records,
    tmp_path: Path,
) -> Iterator[Blitzdns]:
    """``blitzdns run -v`` on the client, link up, for each backend."""
    running = Blitzdns(
        roam["client"], tmp_path, roam_config(keys, tmp_path, backend=request.param), sshd
    )
    logins = sshd.logins()
    running.start("--verbose")
    try:
        running.wait_ready(logins)
        wait_for(lambda: link_source(roam["client"]) == roam.client_ip, "the link on uplink")
        yield running
    finally:
        running.stop()


def shorts(roam: RoamLab, daemon: Blitzdns) -> Records:
    mouth = daemon.mouth("dnd.dartmouth.edu")
    return agent(
        roam["client"], daemon.root, "shorts", "shorts", "--to", f"{mouth}:{ECHO_PORT}",
        "--interval", "0.05", "--timeout", "60",
    )  # fmt: skip


def bulk(roam: RoamLab, daemon: Blitzdns, name: str, size: int, pace: float) -> Records:
    mouth = daemon.mouth("dasher.dartmouth.edu")
    return agent(
        roam["client"], daemon.root, name, "bulk", "--to", f"{mouth}:{BULK_PORT}",
        "--bytes", str(size), "--pace", str(pace),
    )  # fmt: skip


def finished(records: Records) -> dict[str, object]:
    return wait_for(
        lambda: (records.results() or [None])[-1], f"{records.out.name} to finish", timeout=60
    )


def judge_shorts(stream: Records, after: float) -> list[dict[str, object]]:
    """Wait until enough shorts started after ``after`` ended; those that failed."""
    wait_for(
        lambda: sum(r["start"] > after for r in stream.results()) >= SHORTS_AFTER,
        "short connections after the switch",
        timeout=60,
    )
    stream.stop()
    return [r for r in stream.results() if r["start"] > after and not r["ok"]]


def test_a_network_switch_relinks_on_the_new_path(roam: RoamLab, daemon: Blitzdns) -> None:
    client = roam["client"]
    stream = shorts(roam, daemon)
    wait_for(lambda: any(r["ok"] for r in stream.results()), "the stream working")
    spanning = bulk(roam, daemon, "bulk-spanning", 12 << 20, 0.01)
    old, new = UPLINKS[roam.active][0], UPLINKS[roam.standby][0]
    old_interface, new_interface = roam.active, roam.standby

    roam.switch()
    switched = time.monotonic()

    wait_for(lambda: link_source(client) == new, "the link on the new uplink")
    failed = judge_shorts(stream, switched)
    assert failed == [], f"short connections that started after the switch failed: {failed}"
    reason = status(client, daemon)["tunnel"]["last_relink"]
    assert f"network changed: {old_interface} → {new_interface}" in reason
    assert f"local address {old} gone from {old_interface}" in reason
    assert read_text(daemon.log).count(reason) == 1, "the reason is logged once"

    after = finished(bulk(roam, daemon, "bulk-after", 8 << 20, 0.0))
    assert after["intact"], after
    before = finished(spanning)
    assert not before["complete"] or before["intact"], f"a transfer came out corrupted: {before}"


def test_a_route_change_that_keeps_the_path_alive_keeps_the_link(
    roam: RoamLab, daemon: Blitzdns, sshd: Sshd
) -> None:
    """The default route moves to the other uplink but the old address stays: the old
    connection still works, so the probe is answered and the link (and a transfer on it)
    goes on."""
    client = roam["client"]
    logins = sshd.logins()
    local = link_source(client)
    transfer = bulk(roam, daemon, "bulk-kept", 16 << 20, 0.005)
    standby = roam.standby
    client.ip("addr", "add", f"{UPLINKS[standby][0]}/24", "dev", standby)
    client.ip("route", "replace", "default", "via", UPLINKS[standby][1], "dev", standby)
    try:
        wait_for(lambda: "the link still answers" in read_text(daemon.log), "the probe answered")
        result = finished(transfer)
        assert result["intact"], result
        assert link_source(client) == local
        assert sshd.logins() == logins
        assert status(client, daemon)["tunnel"]["last_relink"] is None
    finally:
        roam.settle_on(standby)


def test_a_resume_after_a_pause_relinks_on_the_new_path(roam: RoamLab, daemon: Blitzdns) -> None:
    """The daemon frozen (as by a sleep) while the network changes, then thawed."""
    assert daemon.proc is not None
    client = roam["client"]
    stream = shorts(roam, daemon)
    wait_for(lambda: any(r["ok"] for r in stream.results()), "the stream working")
    new = UPLINKS[roam.standby][0]
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        roam.switch()
        switched = time.monotonic()
        client.run("sleep", str(PAUSE_S))
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    wait_for(lambda: link_source(client) == new, "the link on the new uplink")
    failed = judge_shorts(stream, switched)
    assert failed == [], f"short connections that started after the switch failed: {failed}"
    reason = status(client, daemon)["tunnel"]["last_relink"]
    assert "gone" in reason


def test_a_route_change_that_breaks_the_path_is_probed_and_relinked(
    roam: RoamLab, daemon: Blitzdns
) -> None:
    """The default route moves and the old address stays, but the router now drops what
    comes in on the new uplink from the old address (strict reverse-path filter): the old
    connection is dead though nothing says so. The probe goes unanswered; a new link is
    made from the new uplink's address."""
    client = roam["client"]
    standby = roam.standby
    stream = shorts(roam, daemon)
    wait_for(lambda: any(r["ok"] for r in stream.results()), "the stream working")
    roam["router"].sysctl(f"net.ipv4.conf.r{standby}.rp_filter", "1")
    try:
        client.ip("addr", "add", f"{UPLINKS[standby][0]}/24", "dev", standby)
        client.ip("route", "replace", "default", "via", UPLINKS[standby][1], "dev", standby)
        switched = time.monotonic()
        wait_for(lambda: link_source(client) == UPLINKS[standby][0], "the link on the new uplink")
        failed = judge_shorts(stream, switched)
        assert failed == [], f"short connections that started after the switch failed: {failed}"
        reason = status(client, daemon)["tunnel"]["last_relink"]
        assert reason == f"network changed: {roam.active} → {standby}; no answer within 1 s"
    finally:
        roam["router"].sysctl(f"net.ipv4.conf.r{standby}.rp_filter", "0")
        roam.settle_on(standby)


def test_connections_made_before_the_daemon_saw_the_switch_wait_for_the_new_link(
    roam: RoamLab, daemon: Blitzdns
) -> None:
    """The daemon cannot look for a moment (frozen, too briefly to count as a resume) while
    the network switches and new connections arrive. When it runs again, the accept and
    the kernel's netlink message are ready at once: the connections must not be handed to
    the old link before the change is judged (they would be cut with it)."""
    assert daemon.proc is not None
    client = roam["client"]
    stream = shorts(roam, daemon)
    wait_for(lambda: any(r["ok"] for r in stream.results()), "the stream working")
    new = UPLINKS[roam.standby][0]
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        roam.switch()
        switched = time.monotonic()
        client.run("sleep", "0.3")  # a few connections wait in the mouth's backlog
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    wait_for(lambda: link_source(client) == new, "the link on the new uplink")
    failed = judge_shorts(stream, switched)
    assert failed == [], f"short connections that started after the switch failed: {failed}"


CHECK_AGENT = str(Path(__file__).with_name("check_agent.py"))
CHECK_ADDRESS = "10.91.77.1/32"
"""Added to the client's ``lo`` by the check agent (and removed): a change off the path."""


@pytest.mark.parametrize("backend", ["asyncssh", "openssh"])
def test_a_connection_accepted_after_a_change_waits_until_the_change_is_judged(
    roam: RoamLab, keys: SshKeys, sshd: Sshd, servers: Records, tmp_path: Path, backend: str
) -> None:
    """The roaming check of each accepted connection (Roaming.check): the kernel changed the
    network (a netlink message waits) and a connection waits in the mouth's backlog, both
    before the daemon's loop looks. The connection must reach the link only after the
    change was read and judged, whichever callback the loop runs first: without the check
    it is carried first, and when the accept runs first (connect-first), also when the
    check does not ask the netlink socket itself. A change off the link's path: the
    connection is then carried on the same link."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"{SERVER_IP} {' '.join(keys.host_key.with_suffix('.pub').read_text().split()[:2])}\n"
    )
    done = roam["client"].run(
        PYTHON, CHECK_AGENT, "--gateway", f"root@{SSHD_LISTEN}", "--key", str(keys.client_key),
        "--known-hosts", str(known_hosts), "--target", f"{SERVER_IP}:{ECHO_PORT}",
        "--backend", backend, "--address", CHECK_ADDRESS, timeout=90, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"check agent failed: {done.stderr[-2000:]}"
    result = json.loads(lines[-1])
    checked = {"events": ["judged", "carried"], "echoed": "checked\n"}
    assert result == {"change-first": checked, "connect-first": checked}


LOCATIONS = """
[locations.first]
match = { gateway = "10.91.1.1" }
hosts = ["dnd"]
[locations.second]
match = { gateway = "10.91.2.1" }
hosts = ["dnd", "dasher"]
"""


def test_location_auto_follows_the_same_events(
    roam: RoamLab, keys: SshKeys, sshd: Sshd, servers: Records, tmp_path: Path
) -> None:
    """``--location auto`` with a tunnel re-reads the network on the watch's events; its
    own poll then runs only every 30 s, longer than this test waits for the switch."""
    client = roam["client"]
    running = Blitzdns(client, tmp_path, roam_config(keys, tmp_path, extra=LOCATIONS), sshd)
    running.start("--location", "auto")
    try:
        expected = "first" if roam.active == "up1" else "second"
        wait_for(lambda: status(client, running).get("location") == expected, "the location")
        roam.switch()
        moved = "second" if expected == "first" else "first"
        wait_for(lambda: status(client, running).get("location") == moved, "the new location")
        assert f"network changed: location {expected} → {moved}" in read_text(running.log)
    finally:
        running.stop()
