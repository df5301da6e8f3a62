"""What the network looks like from here, and whether a change of it concerns the SSH link.

Pure: views and clock readings go in, a :class:`Verdict` comes out, so every case is a row
of a table test. :mod:`tunnel.netwatch` reads the views (netlink on Linux, a poll
elsewhere) and the clocks; the tunnel acts on the verdict.

The verdicts, for a link that is up:

- its local address is gone (a new network, DHCP gave another): :attr:`Action.RELINK`.
  (Only an address that was listed: loopback and link-local ones never are.)
  No reply can reach the old socket any more, so probing it would only waste the deadline;
- the machine resumed from sleep, the process was paused, or the route to the gateway
  changed (another interface, another next hop, another source; or, when that route is
  not known, the default route of the link's family): :attr:`Action.PROBE`. The old
  connection may still work (an access point roam that kept the address), so it is
  asked once, briefly, before it is dropped;
- anything else (an unrelated interface, the other family's default route): nothing.

With no link up, any change of route or address, or a resume, is :attr:`Action.WAKE`:
try now rather than at the end of a backoff sleep that the old network earned.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    """A path out: the interface, the next hop (None when on-link), the source address.

    Any part may be None where the platform does not say (the portable poll knows only
    the source address toward the gateway).
    """

    interface: str | None
    gateway: str | None = None
    source: str | None = None

    def label(self) -> str:
        return self.interface or self.source or self.gateway or "?"


@dataclass(frozen=True)
class NetView:
    """The facts that decide the link's path, read at one moment."""

    addresses: frozenset[tuple[str, str]] | None = None
    """(interface, address) of every usable global address; None where it is not read."""
    default_v4: Route | None = None
    """The IPv4 default route in use (None: none, or not read)."""
    default_v6: Route | None = None
    peer: str | None = None
    """The gateway's address whose route is followed, if any."""
    peer_route: Route | None = None
    """The kernel's route to ``peer`` (None: no route, or no peer followed)."""

    def has_address(self, address: str) -> bool | None:
        """Whether ``address`` is one of ours now; None when addresses are not read."""
        if self.addresses is None:
            return None
        return any(address == own for _, own in self.addresses)

    def interface_of(self, address: str) -> str | None:
        for interface, own in self.addresses or ():
            if own == address:
                return interface
        return None

    def default_route(self, version: int) -> Route | None:
        return self.default_v4 if version == 4 else self.default_v6


@dataclass(frozen=True)
class Resume:
    """Time during which this process did not run: the machine slept, or it was paused."""

    slept_s: float
    """Suspended: the clock that counts sleep moved, the one that does not stood still."""
    paused_s: float
    """Awake but not scheduled (SIGSTOP, a debugger, a loop stalled for seconds)."""

    def __str__(self) -> str:
        if self.slept_s >= self.paused_s:
            return f"resumed from sleep ({self.slept_s + self.paused_s:.0f} s)"
        return f"resumed after a pause of {self.slept_s + self.paused_s:.0f} s"


class ResumeClock:
    """Tells a resume from the gap between two ticks meant to be ``interval_s`` apart.

    ``awake`` is a clock that stops while the machine sleeps (Linux ``CLOCK_MONOTONIC``);
    ``total`` one that does not (Linux ``CLOCK_BOOTTIME``, exact; the wall clock
    elsewhere, where a clock step can also look like a sleep: that costs one probe). A gap
    in ``total - awake`` is sleep; a gap in ``awake`` beyond the interval is a pause. Both
    only count beyond ``slack_s``, so a busy loop's late tick is not a resume.
    """

    def __init__(self, interval_s: float, slack_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.slack_s = slack_s
        self._last: tuple[float, float] | None = None

    def tick(self, awake: float, total: float) -> Resume | None:
        last, self._last = self._last, (awake, total)
        if last is None:
            return None
        awake_gap = awake - last[0]
        slept = max(0.0, (total - last[1]) - awake_gap)
        paused = max(0.0, awake_gap - self.interval_s)
        if slept + paused <= self.slack_s:
            return None
        return Resume(slept, paused)


@dataclass(frozen=True)
class NetChange:
    """Two views a moment apart, and the resume detected between them, if any."""

    before: NetView
    after: NetView
    resume: Resume | None = None


class Action(enum.Enum):
    NONE = "none"
    """Leave the link alone."""
    WAKE = "wake"
    """No link is up: try to connect now, without waiting out a backoff delay."""
    PROBE = "probe"
    """Ask the link for a sign of life with a short deadline; drop it if none comes."""
    RELINK = "relink"
    """Drop the link and connect again at once: it cannot work any more."""


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    """Why, in the words ``status`` shows: "network changed: wlan0 → eth0"."""


NOTHING = Verdict(Action.NONE, "")


def plain_address(text: str) -> str:
    """``text`` as :class:`NetView` spells addresses: no scope, IPv4 not mapped into IPv6."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _route_change(before: Route | None, after: Route | None) -> str | None:
    if before == after:
        return None
    if after is None:
        assert before is not None
        return f"network changed: {before.label()} → no route"
    if before is None:
        return f"network changed: no route → {after.label()}"
    old, new = before.label(), after.label()
    if old == new and before.gateway != after.gateway:
        old, new = f"{old} via {before.gateway or 'link'}", f"{new} via {after.gateway or 'link'}"
    elif old == new:
        old, new = f"{old} from {before.source}", f"{new} from {after.source}"
    return f"network changed: {old} → {new}"


def path_change(change: NetChange, local: str | None) -> str | None:
    """How the link's path changed, or None: the route to the gateway when both views
    followed the same one, else the default route of the link's family (of any family
    when the local address is not known)."""
    before, after = change.before, change.after
    if before.peer is not None and before.peer == after.peer:
        return _route_change(before.peer_route, after.peer_route)
    families = [ipaddress.ip_address(local).version] if local is not None else [4, 6]
    for family in families:
        moved = _route_change(before.default_route(family), after.default_route(family))
        if moved is not None:
            return moved
    return None


def judge(change: NetChange, *, link_up: bool, local: str | None = None) -> Verdict:
    """What to do about ``change`` for a link that is up (from local address ``local``, if
    known) or not; see the module docstring."""
    local = plain_address(local) if local is not None else None
    moved = path_change(change, local)
    if not link_up:
        if change.before != change.after or change.resume is not None:
            reasons = [str(change.resume)] if change.resume is not None else []
            reasons.append(moved or "network changed: addresses")
            return Verdict(Action.WAKE, "; ".join(reasons))
        return NOTHING
    reasons = [str(change.resume)] if change.resume is not None else []
    if moved is not None:
        reasons.append(moved)
    if (
        local is not None
        and change.before.has_address(local)
        and not change.after.has_address(local)
    ):
        where = change.before.interface_of(local)
        reasons.append(f"local address {local} gone" + (f" from {where}" if where else ""))
        return Verdict(Action.RELINK, "; ".join(reasons))
    if reasons:
        return Verdict(Action.PROBE, "; ".join(reasons))
    return NOTHING
