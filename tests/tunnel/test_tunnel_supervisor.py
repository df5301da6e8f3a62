"""The supervisor's policy with a fake connect and a recording sleep: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tunnel import Backoff, Gateway, LinkStatus
from tunnel.errors import (
    AuthFailed,
    FinalError,
    GatewayUnreachable,
    HostKeyChanged,
    LinkLost,
    TunnelError,
)
from tunnel.supervisor import Supervisor


class FakeLink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.lost: asyncio.Future[TunnelError] = asyncio.get_running_loop().create_future()

    async def wait_closed(self) -> TunnelError:
        return await self.lost

    def drop(self) -> None:
        self.lost.set_result(LinkLost(f"{self.name} dropped"))

    async def aclose(self, grace_s: float) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(LinkLost(f"{self.name} closed"))


class Harness:
    """Scripted connect outcomes per gateway; records attempts, sleeps and events."""

    def __init__(self, script: dict[str, list[Callable[[], FakeLink]]]) -> None:
        self.script = script
        self.attempts: list[str] = []
        self.sleeps: list[float] = []
        self.events: list[tuple[LinkStatus, str | None]] = []
        self.links: list[FakeLink] = []
        self.up = asyncio.Event()
        self.now = 0.0

    async def connect(self, gateway: Gateway) -> FakeLink:
        self.attempts.append(gateway.host)
        outcomes = self.script[gateway.host]
        link = (outcomes.pop(0) if len(outcomes) > 1 else outcomes[0])()
        self.links.append(link)
        return link

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if len(self.sleeps) > 50:
            raise AssertionError("retry storm")
        await asyncio.sleep(0)

    def on_event(
        self,
        status: LinkStatus,
        gateway: Gateway | None,
        error: TunnelError | None,
        link: FakeLink | None,
    ) -> None:
        self.events.append((status, gateway.host if gateway else None))
        if status is LinkStatus.UP:
            self.up.set()

    def supervisor(self, *gateways: str) -> Supervisor[FakeLink]:
        self.listed = list(gateways)
        return Supervisor(
            gateways=lambda: [Gateway(g) for g in self.listed],
            connect=self.connect,
            sleep=self.sleep,
            backoff=Backoff(base_s=1, cap_s=8),
            random=lambda: 0.5,
            on_event=self.on_event,
            clock=lambda: self.now,
        )


def fail(exc: TunnelError) -> Callable[[], FakeLink]:
    def raise_it() -> FakeLink:
        raise exc

    return raise_it


async def test_unreachable_then_up_with_backoff_first_retry_immediate() -> None:
    down = fail(GatewayUnreachable("refused"))
    harness = Harness({"gw": [down, down, down, down, lambda: FakeLink("gw")]})
    task = asyncio.create_task(harness.supervisor("gw").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.attempts == ["gw"] * 5
    assert harness.sleeps == [0.0, 0.75, 1.5, 3.0]
    task.cancel()


async def test_gateways_tried_in_order_and_the_first_that_connects_is_used() -> None:
    harness = Harness(
        {
            "inside": [fail(GatewayUnreachable("no route"))],
            "outside": [lambda: FakeLink("outside")],
            "never": [lambda: FakeLink("never")],
        }
    )
    task = asyncio.create_task(harness.supervisor("inside", "outside", "never").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.attempts == ["inside", "outside"]
    assert harness.events[-1] == (LinkStatus.UP, "outside")
    task.cancel()


@pytest.mark.parametrize("error", [AuthFailed("no"), HostKeyChanged("changed")])
async def test_final_error_stops_after_one_attempt(error: FinalError) -> None:
    harness = Harness({"gw": [fail(error)]})
    result = await asyncio.wait_for(harness.supervisor("gw").run(), 5)
    assert result is error
    assert harness.attempts == ["gw"]
    assert harness.sleeps == []
    assert harness.events[-1] == (LinkStatus.FAILED, None)


async def test_final_on_first_gateway_does_not_stop_a_working_second() -> None:
    harness = Harness({"a": [fail(AuthFailed("no"))], "b": [lambda: FakeLink("b")]})
    task = asyncio.create_task(harness.supervisor("a", "b").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.events[-1] == (LinkStatus.UP, "b")
    task.cancel()


async def test_final_and_unreachable_in_one_round_is_final() -> None:
    harness = Harness({"a": [fail(GatewayUnreachable("x"))], "b": [fail(AuthFailed("no"))]})
    result = await asyncio.wait_for(harness.supervisor("a", "b").run(), 5)
    assert isinstance(result, AuthFailed)
    assert harness.attempts == ["a", "b"]


async def test_lost_stable_link_reconnects_at_once() -> None:
    harness = Harness({"gw": [lambda: FakeLink("gw")]})
    task = asyncio.create_task(harness.supervisor("gw").run())
    for round_number in range(3):
        await asyncio.wait_for(harness.up.wait(), 5)
        harness.up.clear()
        harness.now += 60
        harness.links[-1].drop()
        await asyncio.sleep(0)
        assert len(harness.attempts) >= round_number + 1
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.sleeps == []
    statuses = [status for status, _ in harness.events]
    assert statuses.count(LinkStatus.DOWN) == 3
    assert statuses.count(LinkStatus.UP) == 4
    task.cancel()


async def test_a_link_that_keeps_dropping_at_once_is_retried_with_backoff() -> None:
    harness = Harness({"gw": [lambda: FakeLink("gw")]})
    task = asyncio.create_task(harness.supervisor("gw").run())
    for _ in range(5):
        await asyncio.wait_for(harness.up.wait(), 5)
        harness.up.clear()
        harness.links[-1].drop()
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.sleeps == [0.0, 0.75, 1.5, 3.0, 6.0]
    harness.up.clear()
    harness.now += 60
    harness.links[-1].drop()
    await asyncio.wait_for(harness.up.wait(), 5)
    assert len(harness.sleeps) == 5
    task.cancel()


async def test_unexpected_exception_is_retried_not_fatal() -> None:
    def boom() -> FakeLink:
        raise RuntimeError("bug")

    harness = Harness({"gw": [boom, lambda: FakeLink("gw")]})
    task = asyncio.create_task(harness.supervisor("gw").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.attempts == ["gw", "gw"]
    task.cancel()


async def test_a_link_made_to_a_gateway_delisted_meanwhile_is_closed_unused() -> None:
    """A reload or a new location replaces the list while an attempt runs: the link it
    makes is closed, and the new list is tried at once (no backoff sleep)."""
    harness = Harness({"office": [], "home": [lambda: FakeLink("home")]})

    def office_then_moved() -> FakeLink:
        harness.listed = ["home"]
        return FakeLink("office")

    harness.script["office"] = [office_then_moved]
    task = asyncio.create_task(harness.supervisor("office").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.attempts == ["office", "home"]
    office, home = harness.links
    assert office.closed and not home.closed
    assert (LinkStatus.UP, "office") not in harness.events
    assert harness.events[-1] == (LinkStatus.UP, "home")
    assert harness.sleeps == []
    task.cancel()


async def test_after_the_list_changes_the_old_lists_other_gateways_are_not_tried() -> None:
    """An attempt fails after the list changed: the pass starts over with the new list;
    a final error from a gateway no longer listed does not stop the tunnel."""
    harness = Harness({"a": [], "b": [lambda: FakeLink("b")], "c": [lambda: FakeLink("c")]})

    def refused_then_moved() -> FakeLink:
        harness.listed = ["c"]
        raise AuthFailed("a refused the key")

    harness.script["a"] = [refused_then_moved]
    task = asyncio.create_task(harness.supervisor("a", "b").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.attempts == ["a", "c"]
    assert harness.events[-1] == (LinkStatus.UP, "c")
    task.cancel()


async def test_refusals_after_quick_drops_neither_back_off_nor_count_as_flaps() -> None:
    """sshd restarted again and again: each link drops soon after it came up, then the
    gateway refuses until it listens again. That is an outage each time, not a flap: the
    retries come every ``refused_s`` and the backoff never grows (issue #12)."""
    refused = fail(GatewayUnreachable("connection refused", refused=True))
    harness = Harness({"gw": []})
    task = asyncio.create_task(harness.supervisor("gw").run())
    for _ in range(6):
        harness.script["gw"] = [refused, refused, lambda: FakeLink("gw")]
        await asyncio.wait_for(harness.up.wait(), 5)
        harness.up.clear()
        harness.links[-1].drop()
    await asyncio.wait_for(harness.up.wait(), 5)
    refused_s = Backoff(base_s=1, cap_s=8).refused_s
    assert harness.sleeps == [refused_s, refused_s] + [0.0, refused_s, refused_s] * 5 + [0.0]
    task.cancel()


async def test_a_gateway_that_answers_and_fails_the_handshake_is_backed_off() -> None:
    """Not a refusal: the TCP connect succeeded, the SSH handshake did not."""
    broken = fail(GatewayUnreachable("connection lost during the key exchange"))
    harness = Harness({"gw": [broken, broken, broken, broken, lambda: FakeLink("gw")]})
    task = asyncio.create_task(harness.supervisor("gw").run())
    await asyncio.wait_for(harness.up.wait(), 5)
    assert harness.sleeps == [0.0, 0.75, 1.5, 3.0]
    task.cancel()
