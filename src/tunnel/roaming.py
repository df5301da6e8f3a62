"""Roaming: the link follows the network (issue 15).

The thin layer between :class:`~tunnel.netwatch.NetWatch`, the pure
:func:`~tunnel.netview.judge` and the tunnel (:class:`RoamingHost`):

- a change that moves the link's path puts the link *in doubt*: new connections wait for
  it (as during an outage) instead of being handed to a link that may be dead, while it
  is probed once with a ``PROBE_S`` deadline. An answer clears the doubt; silence drops
  the link and a new one is made at once, without backoff;
- a change that leaves the link no chance (its local address is gone) drops it at once;
- with no link up, any change or resume cuts the backoff sleep short.

A connection accepted after the kernel changed the network must not reach the old link
before the change is judged: :meth:`Roaming.check`, called by the tunnel whenever it hands
out the link, asks the kernel whether a netlink message waits (:meth:`NetWatch.pending`:
one ``epoll_wait`` that does not wait; the socket is read only when one does), and a
message waiting there puts the link in doubt until the view has been read and judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from tunnel.netview import Action, NetChange, NetView, judge
from tunnel.netwatch import NetWatch

log = logging.getLogger("tunnel.roaming")

PROBE_S = 1.0
"""How long a link in doubt has to answer one keepalive."""


class Probed(Protocol):
    """What roaming needs of a link: where its connection runs, and a sign of life."""

    def path(self) -> tuple[str, str] | None:
        """``(local address, gateway address)`` of the link's connection, if known."""
        ...

    async def probe(self, timeout_s: float) -> bool:
        """True when the gateway answered within ``timeout_s``."""
        ...


class RoamingHost(Protocol):
    """The tunnel, as roaming acts on it."""

    def current_link(self) -> Probed | None:
        """The link up now (in doubt or not), or None."""
        ...

    def doubt(self, doubted: bool) -> None:
        """Hold new connections back from the link (True) or hand them to it again."""
        ...

    def relink(self, link: Probed, reason: str) -> None:
        """Drop ``link`` if it is still the one up, and connect again at once."""
        ...

    def wake(self, reason: str) -> None:
        """No link is up: try now rather than at the end of a backoff sleep."""
        ...


class Roaming:
    """Watches the network for one tunnel and acts on the verdicts."""

    def __init__(self, host: RoamingHost, *, probe_s: float = PROBE_S) -> None:
        self._host = host
        self._probe_s = probe_s
        self._watch = NetWatch(self._changed, on_settled=self._settled)
        self._local: str | None = None
        self._link_view: NetView | None = None
        """The view when the link came up: a relink's reason tells all that moved since."""
        self._probe: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[NetChange], None]] = []

    @property
    def watch(self) -> NetWatch:
        return self._watch

    def on_change(self, listener: Callable[[NetChange], None]) -> None:
        """Also tell ``listener`` of every change (the daemon's location follows them)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._watch.start()

    def close(self) -> None:
        self._watch.close()
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def link_up(self, link: Probed) -> None:
        """Follow the route of ``link``'s connection from now on."""
        path = link.path()
        self._local = path[0] if path is not None else None
        if path is not None:
            self._watch.follow(path[1])
        self._link_view = self._watch.view

    def link_down(self) -> None:
        """The link ended. Its gateway's route stays followed: a new route to it is news."""
        self._local = None
        self._link_view = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

    def check(self) -> None:
        """Before the link is handed out: a network change not yet judged puts it in doubt."""
        if self._watch.pending():
            self._host.doubt(True)

    # --- events ---------------------------------------------------------------------------

    def _changed(self, change: NetChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("network-change listener %r failed", listener)
        link = self._host.current_link()
        verdict = judge(change, link_up=link is not None, local=self._local)
        if verdict.action is Action.NONE:
            return
        if link is not None and self._link_view is not None:
            since_up = NetChange(self._link_view, change.after, change.resume)
            verdict = replace(
                verdict,
                reason=judge(since_up, link_up=True, local=self._local).reason or verdict.reason,
            )
        if verdict.action is Action.WAKE or link is None:
            log.info("%s: connecting now", verdict.reason)
            self._host.wake(verdict.reason)
        elif verdict.action is Action.RELINK:
            self._host.relink(link, verdict.reason)
        elif self._probe is None:
            self._host.doubt(True)
            self._probe = asyncio.get_running_loop().create_task(
                self._check_alive(link, verdict.reason), name="roaming-probe"
            )

    def _settled(self) -> None:
        """The view was read and judged: unless a probe runs, the doubt is over."""
        if self._probe is None:
            self._host.doubt(False)

    async def _check_alive(self, link: Probed, reason: str) -> None:
        try:
            alive = False
            with contextlib.suppress(Exception):
                alive = await link.probe(self._probe_s)
        finally:
            if self._probe is asyncio.current_task():
                self._probe = None
        if self._host.current_link() is not link:
            return
        if alive:
            log.info("%s; the link still answers", reason)
            self._host.doubt(False)
        else:
            self._host.relink(link, f"{reason}; no answer within {self._probe_s:g} s")
