"""The :class:`Tunnel`: mouths, one supervised link, state; the API the daemon calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from tunnel.backends import open_link
from tunnel.errors import FinalError, TunnelConfigError, TunnelError
from tunnel.forwards import Forward, Gateway, parse_gateways
from tunnel.libc import HeapTrimmer
from tunnel.link import Link
from tunnel.mouths import Mouth
from tunnel.netview import NetChange
from tunnel.options import TunnelOptions
from tunnel.roaming import Roaming
from tunnel.state import LinkStatus, TunnelState
from tunnel.supervisor import Supervisor
from tunnel.udp import UdpForward

if TYPE_CHECKING:
    from tunnel.udp_mouth import UdpMouth

log = logging.getLogger("tunnel")


def udp_mouth(forward: UdpForward) -> UdpMouth:
    """A UDP forward's mouth. Its code (tunnel.udp_mouth, tunnel.udp_assoc: ~1 ms of a
    daemon's start, bench/notes/startup.md session 10) loads with the first UDP forward;
    a daemon that drops its privileges loads it before (blitzdns.daemon.preload_modules)."""
    from tunnel.udp_mouth import UdpMouth  # noqa: PLC0415  (most tunnels forward no UDP)

    return UdpMouth(forward)


DEMAND_GAP_S = 1.0
"""A connection waiting for a down link may cut the backoff short, at most once per second."""
CLOSE_TIMEOUT_S = 0.5
RELINK_GRACE_S = 0.1
"""A link dropped on a network change is forced closed after this long."""


def _check_forwards(forwards: Iterable[Forward], options: TunnelOptions) -> tuple[Forward, ...]:
    try:
        checked = tuple(forwards)
    except TypeError:
        raise TunnelConfigError(f"forwards: expected a list, got {forwards!r}") from None
    seen: dict[tuple[str, str, int], Forward] = {}
    for forward in checked:
        if not isinstance(forward, Forward):
            raise TunnelConfigError(f"forwards: expected Forward objects, got {forward!r}")
        if not forward.is_loopback and not options.allow_non_loopback:
            raise TunnelConfigError(
                f"forward {forward}: mouth {forward.mouth_host} is not a loopback address; "
                "binding it exposes the tunnel to other machines and needs allow_non_loopback"
            )
        other = seen.setdefault(_key(forward), forward)
        if other is not forward:
            raise TunnelConfigError(
                f"forwards {other} and {forward} share the mouth "
                f"{forward.mouth_host}:{forward.mouth_port}"
            )
    return checked


def _key(forward: Forward) -> tuple[str, str, int]:
    """A mouth's identity: a TCP and a UDP mouth may share an address and port."""
    return ("udp" if isinstance(forward, UdpForward) else "tcp", *forward.mouth)


class Tunnel:
    """Local mouths carried over one supervised SSH link to the first reachable gateway.

    Use: ``await bind()`` (optional: e.g. as root before dropping privileges), ``await
    start()``, read :attr:`state`, ``await close()``. Also an async context manager.
    """

    def __init__(self, options: TunnelOptions, forwards: Iterable[Forward]) -> None:
        if not isinstance(options, TunnelOptions):
            raise TunnelConfigError(f"options: expected TunnelOptions, got {options!r}")
        self.options = options
        self._gateways = options.gateways
        checked = _check_forwards(forwards, options)
        self._mouths: dict[tuple[str, int], Mouth] = {
            f.mouth: Mouth(f, self) for f in checked if not isinstance(f, UdpForward)
        }
        self._udp: dict[tuple[str, int], UdpMouth] = {
            f.mouth: udp_mouth(f) for f in checked if isinstance(f, UdpForward)
        }
        self._bound = False
        self._closed = False
        self._link: Link | None = None
        self._gateway_in_use: Gateway | None = None
        self._link_changed = asyncio.Event()
        self._link_moved = asyncio.Event()
        """Set (and replaced) whenever the link up or its status changes."""
        self._wake = asyncio.Event()
        self._wake_handle: asyncio.TimerHandle | None = None
        self._switching = False
        """A gateway switch closed the link: reconnect without a backoff sleep."""
        self._last_attempt = 0.0
        self._status = LinkStatus.STOPPED
        self._since = time.time()
        self._gateway_label: str | None = None
        self._last_error: str | None = None
        self._final: FinalError | None = None
        self._down_since: float | None = None
        self._attempts_at_up = 0
        self._next_retry: float | None = None
        self._callbacks: list[Callable[[TunnelState], None]] = []
        self._supervisor: Supervisor[Link] | None = None
        self._task: asyncio.Task[FinalError] | None = None
        self._roaming: Roaming | None = None
        self._doubted = False
        """The network moved under the link: new connections wait until it is judged."""
        self._last_relink: str | None = None
        self._ending: set[asyncio.Task[None]] = set()
        self._network_listeners: list[Callable[[NetChange], None]] = []
        self._heap = HeapTrimmer()

    # --- what mouths need (LinkSource) ----------------------------------------------------

    @property
    def link(self) -> Link | None:
        """The link up now, of whichever backend; ``None`` while down, or while a network
        change puts it in doubt (:mod:`tunnel.roaming`)."""
        if self._roaming is not None and self._link is not None:
            self._roaming.check()
        return None if self._doubted else self._link

    async def wait_link(
        self, stale: object | None = None, since: float | None = None
    ) -> Link | None:
        """The link, waiting until ``wait_for_link_s`` after ``since`` (loop time; ``None``:
        now); ``None`` when it stays down. Bound but not started yet (the daemon binds,
        drops privileges, then starts) counts as down: a client that comes in between is
        held like one that comes while the link is down, not cut. ``stale``: a link that
        gave a flow back (its master is going, the supervisor may not know yet) counts as
        down too; ``since`` is then when the flow was first held, so that links dying one
        after another do not each grant it a full wait again."""
        loop = asyncio.get_running_loop()
        deadline = (loop.time() if since is None else since) + self.options.wait_for_link_s
        while (link := self.link) is None or link is stale:
            if self._closed or self._status is LinkStatus.FAILED:
                return None
            if self._task is not None:
                self._nudge()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            changed = self._link_changed if link is None else self._link_moved
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
        return link

    # --- what roaming needs (RoamingHost) -------------------------------------------------

    def current_link(self) -> Link | None:
        return self._link

    def doubt(self, doubted: bool) -> None:
        if doubted == self._doubted or (doubted and self._link is None):
            return
        self._doubted = doubted
        if doubted:
            self._link_changed.clear()
        elif self._link is not None:
            self._link_changed.set()

    def relink(self, link: object, reason: str) -> None:
        if link is not self._link or self._link is None:
            return
        log.warning("relinking: %s", reason)
        self._last_relink = reason
        self._drop_link(RELINK_GRACE_S)

    def wake(self, reason: str) -> None:
        del reason
        if self._status is LinkStatus.DOWN:
            self._wake.set()

    def _drop_link(self, grace_s: float | None = None) -> None:
        """Close the link up now; new connections wait for the next one, which is sought
        at once: a switch is not a failure to back off from. With ``grace_s``, the link
        is forced closed after that long: one whose path is gone may never flush."""
        link, self._link = self._link, None
        if link is None:
            return
        self._moved()
        for udp in self._udp.values():
            udp.drop_link("relinking")
        self._doubted = False
        self._link_changed.clear()
        self._switching = True
        if grace_s is None:
            link.close()
            return
        ending = asyncio.get_running_loop().create_task(link.aclose(grace_s))
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)

    def on_network_change(self, listener: Callable[[NetChange], None]) -> bool:
        """Also tell ``listener`` of every network change the tunnel's watch sees; True
        when changes are reported as they happen (netlink), False when only polled."""
        self._network_listeners.append(listener)
        if self._roaming is not None:
            self._roaming.on_change(listener)
            return self._roaming.watch.mode == "netlink"
        return False

    def flow_ended(self) -> None:
        self._heap.flow_ended()

    def _nudge(self) -> None:
        """Someone waits for the link: cut a backoff sleep short, at most once per gap."""
        if self._status is not LinkStatus.DOWN or self._wake.is_set() or self._wake_handle:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_attempt + DEMAND_GAP_S - loop.time()
        if wait <= 0:
            self._wake.set()
        else:
            self._wake_handle = loop.call_later(wait, self._wake_now)

    def _wake_now(self) -> None:
        self._wake_handle = None
        self._wake.set()

    async def _sleep(self, delay: float) -> None:
        if delay <= 0 or self._switching:
            self._switching = False
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    # --- supervisor events ----------------------------------------------------------------

    def _set_status(self, status: LinkStatus) -> None:
        if status is self._status:
            return
        self._status = status
        self._since = time.time()
        if not self._callbacks:
            return
        snapshot = self.state
        for callback in list(self._callbacks):
            try:
                callback(snapshot)
            except Exception:
                log.exception("state-change callback %r failed", callback)

    def _on_event(
        self,
        status: LinkStatus,
        gateway: Gateway | None,
        error: TunnelError | None,
        link: Link | None,
    ) -> None:
        if error is not None:
            self._last_error = str(error)
        self._track_outage(status)
        if status is LinkStatus.CONNECTING:
            self._last_attempt = asyncio.get_running_loop().time()
            self._gateway_label = str(gateway)
            self._link_changed.clear()
        elif status is LinkStatus.UP:
            self._switching = False
            self._doubted = False
            if link is not None:
                for udp in self._udp.values():
                    udp.attach(link.open_exec)
            self._link = link
            self._gateway_in_use = gateway
            self._gateway_label = str(gateway)
            self._link_changed.set()
            if self._roaming is not None and link is not None:
                self._roaming.link_up(link)
        elif status is LinkStatus.DOWN:
            for udp in self._udp.values():
                udp.drop_link(str(error) if error is not None else "link down")
            self._link = None
            self._doubted = False
            if self._roaming is not None:
                self._roaming.link_down()
            self._gateway_in_use = None
            self._gateway_label = None
            self._link_changed.clear()
        elif status is LinkStatus.FAILED:
            assert isinstance(error, FinalError)
            for udp in self._udp.values():
                udp.drop_link(f"link failed: {error}")
            self._final = error
            self._link = None
            self._gateway_label = None
            self._link_changed.set()
        self._moved()
        self._set_status(status)

    def _moved(self) -> None:
        """Wake those waiting for the link up to change (:meth:`wait_link` with ``stale``)."""
        moved, self._link_moved = self._link_moved, asyncio.Event()
        moved.set()

    def _track_outage(self, status: LinkStatus) -> None:
        """Down since the first failure (not the last retry), attempts since up, next retry."""
        attempts = self._supervisor.attempts if self._supervisor is not None else 0
        self._next_retry = None
        if status is LinkStatus.UP:
            self._down_since = None
            self._attempts_at_up = attempts
        elif status in (LinkStatus.DOWN, LinkStatus.FAILED):
            if self._down_since is None:
                self._down_since = time.time()
            retry_in = self._supervisor.retry_in if self._supervisor is not None else None
            if status is LinkStatus.DOWN and retry_in is not None:
                self._next_retry = time.time() + retry_in

    # --- public API -----------------------------------------------------------------------

    @property
    def state(self) -> TunnelState:
        """An immutable snapshot of link status and per-forward counters."""
        return TunnelState(
            status=self._status,
            since=self._since,
            gateway=self._gateway_label,
            last_error=self._last_error,
            final_error=str(self._final) if self._final is not None else None,
            forwards=tuple(m.state() for m in self._mouths.values()),
            udp_forwards=tuple(m.state() for m in self._udp.values()),
            attempts=self._supervisor.attempts if self._supervisor is not None else 0,
            last_relink=self._last_relink,
            down_since=self._down_since,
            attempts_since_up=(
                (self._supervisor.attempts if self._supervisor is not None else 0)
                - self._attempts_at_up
            ),
            next_retry=self._next_retry,
        )

    @property
    def forwards(self) -> tuple[Forward, ...]:
        return (
            *(m.forward for m in self._mouths.values()),
            *(m.forward for m in self._udp.values()),
        )

    def on_state_change(self, callback: Callable[[TunnelState], None]) -> None:
        """Call ``callback(state)`` (synchronously) on every link status change."""
        self._callbacks.append(callback)

    async def bind(self) -> None:
        """Bind every mouth now; on failure none stays bound and :class:`MouthBindError` says
        which ``address:port`` and why."""
        if self._closed:
            raise TunnelConfigError("tunnel is closed")
        await self._bind_all([*self._mouths.values(), *self._udp.values()])
        self._bound = True

    @staticmethod
    async def _bind_all(mouths: Sequence[Mouth | UdpMouth]) -> None:
        done: list[Mouth | UdpMouth] = []
        try:
            for mouth in mouths:
                await mouth.bind()
                done.append(mouth)
        except BaseException:
            for mouth in done:
                await mouth.close()
            raise

    async def start(self) -> None:
        """Bind (if not yet) and start the supervisor; returns at once."""
        if self._task is not None:
            return
        if not self._bound:
            await self.bind()
        self._supervisor = Supervisor(
            gateways=lambda: self._gateways,
            connect=lambda gateway: open_link(gateway, self.options),
            sleep=self._sleep,
            backoff=self.options.backoff,
            random=random.random,
            on_event=self._on_event,
            clock=asyncio.get_running_loop().time,
        )
        if self.options.roaming:
            self._roaming = Roaming(self)
            for listener in self._network_listeners:
                self._roaming.on_change(listener)
            await self._roaming.start()
        self._set_status(LinkStatus.CONNECTING)
        self._task = asyncio.get_running_loop().create_task(
            self._supervisor.run(), name="tunnel-supervisor"
        )

    async def wait_up(self, timeout: float | None = None) -> bool:
        """True once the link is up; False on timeout; raises the :class:`FinalError` that
        stopped the tunnel."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._final is not None:
                raise self._final
            if self._link is not None:
                return True
            if self._closed:
                return False
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._link_changed.wait()
            except TimeoutError:
                return self._link is not None

    async def update_forwards(self, forwards: Iterable[Forward]) -> None:
        """Reload: bind added mouths, close removed ones with their connections, keep the
        unchanged ones (and their connections) untouched.

        A forward whose mouth stays but whose target or allowed peers change keeps its
        listener (no rebind, so no privileges are needed) and drops only the connections
        the new forward would not carry. If an added mouth cannot be bound, nothing changes
        and :class:`MouthBindError` is raised.
        """
        checked = _check_forwards(forwards, self.options)
        await self._update_udp([f for f in checked if isinstance(f, UdpForward)])
        wanted = {f.mouth: f for f in checked if not isinstance(f, UdpForward)}
        added = [Mouth(f, self) for key, f in wanted.items() if key not in self._mouths]
        if self._bound:
            await self._bind_all(added)
        for mouth in added:  # held at once: close() must find them if this is cancelled
            log.info("forward %s added", mouth.forward)
            self._mouths[mouth.forward.mouth] = mouth
        for key in [key for key in self._mouths if key not in wanted]:
            mouth = self._mouths.pop(key)
            log.info("forward %s removed", mouth.forward)
            await mouth.close()
        for key, forward in wanted.items():
            kept = self._mouths.get(key)
            if kept is not None and kept.forward != forward:
                log.info("forward %s changed to %s", kept.forward, forward)
                kept.retarget(forward)
        self._mouths = {key: self._mouths[key] for key in wanted}

    async def _update_udp(self, forwards: list[UdpForward]) -> None:
        """:meth:`update_forwards` for the UDP mouths: bind added ones (and attach them to
        the link that is up), close removed ones, retarget changed ones."""
        wanted = {f.mouth: f for f in forwards}
        added = [udp_mouth(f) for key, f in wanted.items() if key not in self._udp]
        if self._bound:
            await self._bind_all(added)
        for mouth in added:
            log.info("forward %s added", mouth.forward)
            self._udp[mouth.forward.mouth] = mouth
            if self._link is not None:
                mouth.attach(self._link.open_exec)
        for key in [key for key in self._udp if key not in wanted]:
            mouth = self._udp.pop(key)
            log.info("forward %s removed", mouth.forward)
            await mouth.close()
        for key, forward in wanted.items():
            kept = self._udp[key]
            if kept.forward != forward:
                log.info("forward %s changed to %s", kept.forward, forward)
                kept.retarget(forward)

    async def update_gateways(self, gateways: Iterable[Gateway | str]) -> None:
        """Switch gateway list; reconnect only if the gateway in use is no longer listed.

        An attempt already running goes on, but the supervisor does not use a link it
        makes to a gateway no longer listed: it starts over with the new list.
        """
        self._gateways = parse_gateways(gateways)
        if self._link is not None and self._gateway_in_use not in self._gateways:
            log.info("gateway %s no longer listed; reconnecting", self._gateway_in_use)
            self._drop_link()
        elif self._status is LinkStatus.DOWN:
            self._wake.set()

    async def close(self) -> None:
        """Close mouths, channels and the link (within about a second); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._heap.close()
        self._link_changed.set()
        self._moved()
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        if self._roaming is not None:
            self._roaming.close()
        link, self._link = self._link, None
        # The UDP relays' channels end in the background, on the link while it answers
        # (their commands hear the EOF); the link does not wait longer than the TCP mouths'
        # close and CLOSE_TIMEOUT_S for them: a gateway that stopped answering never
        # confirms a channel's end, and only the link's end ends those channels then.
        # return_exceptions: that wait may outlive this close (cancelled, or past its
        # bound), and a cancelled settle would be its exception, retrieved by no one.
        for udp in self._udp.values():
            udp.drop_link("closed")
        relays = asyncio.gather(
            *(udp.settle() for udp in self._udp.values()), return_exceptions=True
        )
        await asyncio.gather(*(mouth.close() for mouth in self._mouths.values()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(relays)
        if link is not None:
            await link.aclose(CLOSE_TIMEOUT_S)
        await asyncio.gather(*(udp.close() for udp in self._udp.values()))
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await task
        self._gateway_label = None
        if self._status is not LinkStatus.FAILED:
            self._set_status(LinkStatus.STOPPED)

    async def __aenter__(self) -> Tunnel:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
