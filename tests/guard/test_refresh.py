"""When the daemon's guard asks again: the records' TTL, or soon when an answer was missed."""

from __future__ import annotations

import socket
from typing import Any

from blitzdns.config import Endpoint, parse_config
from blitzdns.guard_refresh import RETRY_TTL_S
from blitzdns.guard_service import MIN_REFRESH_S, GuardService
from blitzdns.system.guard import GuardRules

NOW = 1_000_000.0


class Warden:
    """The privileged side, reduced to what it was handed."""

    def __init__(self) -> None:
        self.loaded: list[GuardRules] = []

    async def guard(self, target: str, rules: GuardRules) -> int:
        self.loaded.append(rules)
        return rules.address_count

    async def watch(self) -> list[dict[str, Any]]:
        return []

    async def paths(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_names_the_upstream_did_not_answer_are_asked_again_soon() -> None:
    """Unresolved, a protected name's real addresses are not refused: asked again after
    MIN_REFRESH_S, not RETRY_TTL_S. (On a loaded machine the start's lookup can miss its
    deadline, and the names then stayed unguarded for 30 s.)"""
    config = parse_config('[tunnel]\nhosts = ["dnd", "dasher"]\n[guard]\nenabled = true\n')
    upstream = Endpoint("127.0.0.1", closed_udp_port())
    service = GuardService(config, [upstream], Warden(), clock=lambda: NOW)
    await service.refresh()
    assert service.rules is not None and service.rules.unresolved == ("dnd", "dasher")
    assert service.last_error
    assert MIN_REFRESH_S < RETRY_TTL_S
    assert service.next_refresh == NOW + MIN_REFRESH_S
