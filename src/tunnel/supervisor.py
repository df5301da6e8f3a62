"""Keeps one link up: tries the gateways in order, backs off, stops on final errors.

The policy is free of sockets and clocks: it is handed ``connect`` (gateway → link) and
``sleep`` (seconds → awaitable), so tests drive it with fakes and the real tunnel hands it
:func:`tunnel.backends.open_link` and an interruptible sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from tunnel.backoff import Backoff
from tunnel.errors import FinalError, GatewayUnreachable, RetryableError, TunnelError
from tunnel.forwards import Gateway
from tunnel.link import LinkEnd
from tunnel.state import LinkStatus

log = logging.getLogger("tunnel.supervisor")

#: How long a link made but not used (its gateway was delisted meanwhile) may take to end.
UNUSED_LINK_GRACE_S = 0.5


L = TypeVar("L", bound=LinkEnd)


class Supervisor(Generic[L]):
    """Runs connect → wait until lost → reconnect, forever or until a final error.

    Each round tries every gateway in order; the first that connects is used. When a round
    fails, the next begins after ``backoff.delay(failures)``: the first retry is immediate.
    A final error (authentication, host key) on any gateway of a round where none
    connected ends the run: one clear error, no retry storm.

    A link that was up for at least ``stable_s`` is replaced at once when it drops; one
    that drops sooner counts as a failure, so a gateway that accepts and then cuts every
    connection is retried with backoff, not in a tight loop.

    A round that nothing answered (every gateway refused the TCP connect, or had no
    route: :attr:`GatewayUnreachable.refused`) is not a failure of a gateway that answers:
    it is retried every ``backoff.refused_s`` and the failure count does not grow; a quick
    drop just before it was an outage, not a flap, and is not counted either. So however
    many times sshd was restarted, the link is back about ``refused_s`` after it listens.
    """

    def __init__(
        self,
        *,
        gateways: Callable[[], Sequence[Gateway]],
        connect: Callable[[Gateway], Awaitable[L]],
        sleep: Callable[[float], Awaitable[None]],
        backoff: Backoff,
        random: Callable[[], float],
        on_event: Callable[[LinkStatus, Gateway | None, TunnelError | None, L | None], None],
        clock: Callable[[], float],
        stable_s: float = 10.0,
    ) -> None:
        self._gateways = gateways
        self._connect = connect
        self._sleep = sleep
        self._backoff = backoff
        self._random = random
        self._on_event = on_event
        self._clock = clock
        self._stable_s = stable_s
        self.attempts = 0
        self.round_refused = False
        """Whether every attempt of the last round was refused (nothing answered)."""
        #: Seconds until the next attempt, set before a DOWN event is published (status).
        self.retry_in: float | None = None

    async def _try_round(self) -> tuple[Gateway, L] | TunnelError:
        """One pass over the gateways: the first link made, else the error to act on.

        The list may change while an attempt runs (a reload, a new location). Then the
        pass starts over with the new list: a link just made to a gateway no longer listed
        is closed unused, and the old list's other gateways are not tried.
        """
        first_final: FinalError | None = None
        last_error: TunnelError | None = None
        self.round_refused = True
        listed = tuple(self._gateways())
        pending = list(listed)
        while pending:
            gateway = pending.pop(0)
            self._on_event(LinkStatus.CONNECTING, gateway, None, None)
            self.attempts += 1
            try:
                link = await self._connect(gateway)
            except FinalError as exc:
                log.error("%s", exc)
                first_final = first_final or exc
                last_error = exc
                self.round_refused = False
            except RetryableError as exc:
                log.debug("%s", exc)
                last_error = exc
                refused = isinstance(exc, GatewayUnreachable) and exc.refused
                self.round_refused = self.round_refused and refused
            except Exception as exc:
                log.exception("unexpected error connecting to %s", gateway)
                last_error = RetryableError(f"gateway {gateway}: {exc!r}")
                self.round_refused = False
            else:
                if gateway in self._gateways():
                    return gateway, link
                log.info("gateway %s is no longer listed; its new link is not used", gateway)
                # Shielded: nothing else holds this link, so a cancel (the tunnel closing)
                # must not cut its clean-up short.
                await asyncio.shield(link.aclose(UNUSED_LINK_GRACE_S))
            if tuple(self._gateways()) != listed:
                listed = tuple(self._gateways())
                pending = list(listed)
                first_final = None  # refused by a gateway that is gone: not a reason to stop
        if first_final is not None:
            return first_final
        return last_error or RetryableError("no gateway configured")

    async def run(self) -> FinalError:
        """Supervise until a final error, which is returned (cancel the task to stop)."""
        failures = 0
        flapped = False
        while True:
            outcome = await self._try_round()
            if isinstance(outcome, FinalError):
                self._on_event(LinkStatus.FAILED, None, outcome, None)
                return outcome
            if isinstance(outcome, TunnelError):
                if self.round_refused:
                    failures -= flapped  # the quick drop before was an outage, not a flap
                    flapped = False
                    self.retry_in = self._backoff.refused_s
                else:
                    failures += 1
                    flapped = False
                    self.retry_in = self._backoff.delay(failures, self._random)
                self._on_event(LinkStatus.DOWN, None, outcome, None)
                await self._sleep(self.retry_in)
                continue
            gateway, link = outcome
            self.retry_in = None
            self._on_event(LinkStatus.UP, gateway, None, link)
            up_since = self._clock()
            reason = await link.wait_closed()
            log.debug("%s", reason)
            flapped = self._clock() - up_since < self._stable_s
            failures = failures + 1 if flapped else 0
            self.retry_in = self._backoff.delay(failures, self._random) if flapped else 0.0
            self._on_event(LinkStatus.DOWN, gateway, reason, None)
            if flapped:
                await self._sleep(self.retry_in)
