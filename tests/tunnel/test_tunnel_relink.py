"""Relinking after sshd restarts (issue #12): however many drops came before, the link
is back as soon as the gateway listens again; anti-flap backoff never makes it wait.

The backoff here is huge (a sleep of 10 s or more after the second failure), so a link
that waited for a backoff instead of noticing the gateway's return would miss the bound
of ``wait_up``; the state events show every failure in between was a refusal."""

from __future__ import annotations

import dataclasses

from tests.peers import Sshd, free_port, wait_until
from tunnel import Backoff, Forward, LinkStatus, Tunnel, TunnelOptions, TunnelState

from .tunnel_testlib import Target, exchange

CYCLES = 4


def refused(state: TunnelState) -> bool:
    """A DOWN state after an attempt the gateway refused (nothing listened)."""
    return state.status is LinkStatus.DOWN and "refused" in (state.last_error or "").lower()


async def test_the_link_is_back_after_each_of_several_quick_restarts(
    any_options: TunnelOptions, sshd: Sshd, echo: Target
) -> None:
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    options = dataclasses.replace(any_options, backoff=Backoff(base_s=20, cap_s=40))
    events: list[TunnelState] = []
    async with Tunnel(options, [forward]) as tunnel:
        tunnel.on_state_change(events.append)
        assert await tunnel.wait_up(10)
        for cycle in range(CYCLES):
            start = len(events)
            sshd.kill()
            await wait_until(lambda start=start: any(refused(e) for e in events[start:]))
            sshd.start()
            assert await tunnel.wait_up(9), f"cycle {cycle}: no link after the restart"
            assert await exchange(*forward.mouth, b"after") == b"after"
            downs = [e for e in events[start:] if e.status is LinkStatus.DOWN]
            assert downs and all(refused(e) for e in downs[1:]), downs
