"""NetWatch against the real kernel: netlink events in a namespace the test made (issue 15).

The agent runs the watcher inside the client namespace of :class:`RoamLab` and prints each
change with the verdict for a link from the client's first address to the server; the test
moves routes and addresses with ``ip`` and reads what the watcher saw.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .lab import PYTHON, Namespace, missing_prerequisite, read_text, wait_for
from .roamlab import SERVER_IP, UPLINKS, RoamLab

AGENT = str(Path(__file__).with_name("netwatch_agent.py"))


@pytest.fixture
def roam(tmp_path: Path) -> Iterator[RoamLab]:
    reason = missing_prerequisite()
    if reason is not None:
        pytest.skip(reason)
    lab = RoamLab(f"{os.getpid()}w", tmp_path)
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


class Watcher:
    def __init__(self, ns: Namespace, out: Path, *flags: str) -> None:
        self.out = out
        self.proc = ns.spawn_ready(
            PYTHON, AGENT, "--peer", SERVER_IP, "--local", UPLINKS["up1"][0], *flags,
            marker='"ready"', log=out.with_suffix(".log"), stdout=out,
        )  # fmt: skip
        lines = self.lines()
        self.seen = next(i for i, line in enumerate(lines) if "ready" in line) + 1
        self.ready = lines[self.seen - 1]

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in read_text(self.out).splitlines() if line.strip()]

    def next_where(self, what: str, **want: Any) -> dict[str, Any]:
        """The first change after those already read that has ``want``'s values."""

        def find() -> dict[str, Any] | None:
            found = self.lines()
            for index in range(self.seen, len(found)):
                if all(found[index].get(k) == v for k, v in want.items()):
                    self.seen = index + 1
                    return found[index]
            return None

        return wait_for(find, what)


def test_netlink_events_judged_for_the_link(roam: RoamLab, tmp_path: Path) -> None:
    client = roam["client"]
    watcher = Watcher(client, tmp_path / "watch.out")
    assert watcher.ready == {
        "ready": "netlink",
        "addresses": ["up1=10.91.1.2"],
        "default": "up1",
        "peer_route": "up1",
    }

    client.ip("link", "add", "vm9", "type", "veth", "peer", "name", "vm9p")  # a VM bridge, say
    client.ip("addr", "add", "172.31.9.1/24", "dev", "vm9")
    client.ip("link", "set", "vm9", "up")
    unrelated = watcher.next_where("the unrelated address", addresses=[
        "up1=10.91.1.2", "vm9=172.31.9.1"])  # fmt: skip
    assert unrelated["action"] == "none"

    client.ip("addr", "add", f"{UPLINKS['up2'][0]}/24", "dev", "up2")
    client.ip("route", "replace", "default", "via", UPLINKS["up2"][1], "dev", "up2")
    moved = watcher.next_where("the default route on up2", default="up2")
    assert (moved["action"], moved["reason"]) == ("probe", "network changed: up1 → up2")
    assert moved["peer_route"] == "up2"

    client.ip("addr", "del", f"{UPLINKS['up1'][0]}/24", "dev", "up1")
    gone = watcher.next_where("the old address gone", action="relink")
    assert gone["reason"] == "local address 10.91.1.2 gone from up1"
    assert "up1=10.91.1.2" not in gone["addresses"]


def test_a_pause_while_the_network_moves(roam: RoamLab, tmp_path: Path) -> None:
    """SIGSTOP, switch networks, SIGCONT: the change is seen, and so is the pause."""
    watcher = Watcher(roam["client"], tmp_path / "watch.out", "--tick", "0.25")
    os.kill(watcher.proc.pid, signal.SIGSTOP)
    try:
        roam.switch()
        stopped = roam["client"].run("sleep", "3")  # longer than tick + slack (2.25 s)
        assert stopped.returncode == 0
    finally:
        os.kill(watcher.proc.pid, signal.SIGCONT)
    gone = watcher.next_where("the old address gone", action="relink")
    assert "local address 10.91.1.2 gone from up1" in gone["reason"]
    assert gone["default"] == "up2"
    resumed = wait_for(
        lambda: [line for line in watcher.lines() if line.get("resume")], "the pause seen"
    )
    assert resumed[0]["resume"].startswith("resumed after a pause of")


def test_the_portable_poll_sees_the_source_move(roam: RoamLab, tmp_path: Path) -> None:
    watcher = Watcher(roam["client"], tmp_path / "watch.out", "--poll")
    assert watcher.ready["ready"] == "poll"
    roam.switch()
    moved = watcher.next_where("the new source", action="probe")
    assert moved["reason"] == "network changed: 10.91.1.2 → 10.91.2.2"
