"""The roaming decisions as a table: which network changes concern the link, and how."""

from __future__ import annotations

import pytest

from tunnel.netview import (
    Action,
    NetChange,
    NetView,
    Resume,
    ResumeClock,
    Route,
    judge,
    plain_address,
)

WLAN = Route("wlan0", "10.0.0.1", None)
WLAN_OTHER_AP = Route("wlan0", "10.0.9.1", None)
ETH = Route("eth0", "10.1.0.1", None)
V6 = Route("wlan0", "fe80::1", None)
DOCKER = ("docker0", "172.17.0.1")
HOME = frozenset({("wlan0", "10.0.0.2")})
BOTH = HOME | {("eth0", "10.1.0.2")}
WIRED = frozenset({("eth0", "10.1.0.2")})


def view(addresses=HOME, v4=WLAN, v6=None, peer=None, peer_route=None):  # type: ignore[no-untyped-def]
    return NetView(
        addresses=addresses, default_v4=v4, default_v6=v6, peer=peer, peer_route=peer_route
    )


SLEPT = Resume(slept_s=63.0, paused_s=0.0)

# (case, before, after, resume, link_up, local, action, reason)
CASES = [
    ("nothing moved but a resume", view(), view(), SLEPT, True, "10.0.0.2",
     Action.PROBE, "resumed from sleep (63 s)"),
    ("wired plugged in, default moves, wlan address stays", view(BOTH), view(BOTH, ETH), None,
     True, "10.0.0.2", Action.PROBE, "network changed: wlan0 → eth0"),
    ("wi-fi to wired: default moves and the old address goes", view(BOTH), view(WIRED, ETH),
     None, True, "10.0.0.2", Action.RELINK,
     "network changed: wlan0 → eth0; local address 10.0.0.2 gone from wlan0"),
    ("new DHCP lease on the same interface", view(), view(frozenset({("wlan0", "10.0.0.7")})),
     None, True, "10.0.0.2", Action.RELINK, "local address 10.0.0.2 gone from wlan0"),
    ("another access point, same address, another next hop", view(), view(v4=WLAN_OTHER_AP),
     None, True, "10.0.0.2", Action.PROBE,
     "network changed: wlan0 via 10.0.0.1 → wlan0 via 10.0.9.1"),
    ("an unrelated interface comes and goes", view(), view(HOME | {DOCKER}), None, True,
     "10.0.0.2", Action.NONE, ""),
    ("the other family's default route changes", view(), view(v6=V6), None, True, "10.0.0.2",
     Action.NONE, ""),
    ("default lost", view(), view(v4=None), None, True, "10.0.0.2", Action.PROBE,
     "network changed: wlan0 → no route"),
    ("followed gateway: its route is what counts, not the default",
     view(peer="203.0.113.9", peer_route=Route("tun0", None, "10.8.0.2")),
     view(v4=ETH, peer="203.0.113.9", peer_route=Route("tun0", None, "10.8.0.2")), None, True,
     None, Action.NONE, ""),
    ("followed gateway's route moves",
     view(peer="203.0.113.9", peer_route=WLAN), view(peer="203.0.113.9", peer_route=ETH), None,
     True, None, Action.PROBE, "network changed: wlan0 → eth0"),
    ("poll elsewhere: only the source toward the gateway is known",
     NetView(None, peer="203.0.113.9", peer_route=Route(None, None, "10.0.0.2")),
     NetView(None, peer="203.0.113.9", peer_route=Route(None, None, "10.1.0.2")), None, True,
     "10.0.0.2", Action.PROBE, "network changed: 10.0.0.2 → 10.1.0.2"),
    ("poll elsewhere: addresses unknown, so never called gone",
     NetView(None, peer="203.0.113.9", peer_route=None),
     NetView(None, peer="203.0.113.9", peer_route=None), SLEPT, True, "10.0.0.2",
     Action.PROBE, "resumed from sleep (63 s)"),
    ("resume and a new network together",
     view(), view(WIRED, ETH), SLEPT, True, "10.0.0.2", Action.RELINK,
     "resumed from sleep (63 s); network changed: wlan0 → eth0; "
     "local address 10.0.0.2 gone from wlan0"),
    ("local address written as a mapped IPv6 socket name", view(BOTH), view(WIRED, ETH), None,
     True, "::ffff:10.0.0.2", Action.RELINK,
     "network changed: wlan0 → eth0; local address 10.0.0.2 gone from wlan0"),
    ("a link over loopback: its address is never listed, so never gone",
     view(peer="127.0.0.1", peer_route=Route("lo", None, "127.0.0.1")),
     view(peer="127.0.0.1", peer_route=Route("lo", None, "127.0.0.1")), None, True,
     "127.0.0.1", Action.NONE, ""),
    ("the first view with the link followed: nothing moved, nothing to do", view(),
     view(peer="10.9.9.9", peer_route=WLAN), None, True, "10.0.0.2", Action.NONE, ""),
    ("link up, local address unknown: the default of any family", view(), view(v4=ETH), None,
     True, None, Action.PROBE, "network changed: wlan0 → eth0"),
    ("link down: a new network is a reason to try now", view(HOME, None), view(WIRED, ETH),
     None, False, None, Action.WAKE, "network changed: no route → eth0"),
    ("link down: a resume too", view(), view(), SLEPT, False, None, Action.WAKE,
     "resumed from sleep (63 s); network changed: addresses"),
    ("link down: nothing new", view(), view(), None, False, None, Action.NONE, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "resume", "link_up", "local", "action", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_judge(  # type: ignore[no-untyped-def]
    before, after, resume, link_up, local, action, reason
) -> None:
    verdict = judge(NetChange(before, after, resume), link_up=link_up, local=local)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_resume_clock_tells_sleep_from_pause_and_ignores_a_late_tick() -> None:
    clock = ResumeClock(interval_s=1.0, slack_s=2.0)
    assert clock.tick(100.0, 1000.0) is None  # first reading: nothing to compare
    assert clock.tick(101.0, 1001.0) is None
    assert clock.tick(103.5, 1003.5) is None  # 1.5 s late: a busy loop, not a resume
    slept = clock.tick(104.5, 1063.5)  # awake clock moved 1 s, the total one 60 s
    assert slept == Resume(slept_s=59.0, paused_s=0.0)
    assert str(slept) == "resumed from sleep (59 s)"
    paused = clock.tick(114.5, 1073.5)  # both moved 10 s: awake but not running (SIGSTOP)
    assert paused == Resume(slept_s=0.0, paused_s=9.0)
    assert str(paused) == "resumed after a pause of 9 s"
    assert clock.tick(114.6, 1073.6) is None  # an early extra reading never counts


def test_wall_clock_stepped_back_is_not_a_resume() -> None:
    clock = ResumeClock(interval_s=1.0)
    clock.tick(10.0, 5000.0)
    assert clock.tick(11.0, 4000.0) is None


@pytest.mark.parametrize(
    ("text", "plain"),
    [("10.0.0.2", "10.0.0.2"), ("::ffff:10.0.0.2", "10.0.0.2"), ("fe80::1%wlan0", "fe80::1")],
)
def test_plain_address(text: str, plain: str) -> None:
    assert plain_address(text) == plain
