"""How ``status`` and ``check`` show the guard and the resolver watch (from a snapshot)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from blitzdns.check import check_guard, direct_connection
from blitzdns.control import render_status

WHEN = time.mktime((2026, 12, 3, 12, 4, 0, 0, 0, -1))


def snapshot(**guard: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "target": "nftables",
        "installed": True,
        "addresses": 3,
        "unresolved": [],
        "refreshed": WHEN,
        "next_refresh": WHEN + 60,
        "last_error": None,
        "probe": None,
        "watch": {
            "files": ["/etc/resolv.conf"],
            "interval_s": 3.0,
            "reverted": 3,
            "last": WHEN,
            "last_change": "a rewrite of /etc/resolv.conf",
            "last_error": None,
        },
    }
    base.update(guard)
    return {"version": "x", "pid": 1, "started": WHEN, "tunnel": None, "dns": {}, "guard": base}


def test_status_names_the_guard_and_the_reverts() -> None:
    text = render_status(snapshot(), now=WHEN + 30)
    assert "guard      installed (nftables), 3 addresses, refreshed" in text
    assert "reverted 3 times, last 12:04 by a rewrite of /etc/resolv.conf" in text
    off = render_status(snapshot(enabled=False), now=WHEN)
    assert "guard      off" in off and "reverted 3 times" in off
    assert "guard" not in render_status({**snapshot(), "guard": None}, now=WHEN)


def free_closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_check_proves_the_guard_by_a_refused_connection() -> None:
    port = free_closed_port()  # nothing listens: the kernel refuses, as the guard would
    steps = asyncio.run(check_guard(snapshot(probe=["dnd", "127.0.0.1", port])))
    by_name = {s.name: s for s in steps}
    assert by_name["leak guard"].ok
    assert by_name["leak guard proof: dnd"].ok
    assert by_name["leak guard proof: dnd"].detail.endswith("was refused")
    watch = by_name["resolver watch"]
    assert watch.ok and "reverted 3 times" in watch.detail
    assert "a rewrite of /etc/resolv.conf" in watch.warning


def test_check_fails_when_the_real_address_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        seen = asyncio.run(direct_connection("127.0.0.1", port))
        steps = asyncio.run(check_guard(snapshot(probe=["dnd", "127.0.0.1", port])))
    assert seen.startswith("ACCEPTED")
    assert not {s.name: s for s in steps}["leak guard proof: dnd"].ok


def test_check_says_when_the_guard_is_not_installed_or_has_no_address() -> None:
    steps = asyncio.run(check_guard(snapshot(installed=False, probe=None)))
    assert [s.ok for s in steps[:2]] == [False, False]
    assert asyncio.run(check_guard(None)) == []
