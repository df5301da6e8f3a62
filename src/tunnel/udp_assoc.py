"""The local side of a UDP forward, as a pure object: senders ↔ associations ↔ frames.

Datagrams from local senders come in (:meth:`UdpCore.from_client`), frames from the relay
come in (:meth:`UdpCore.from_relay`); out come frames for the relay (:class:`ToRelay`) and
datagrams for local addresses (:class:`ToClient`). No sockets, no clock: ``now`` is passed.

Rules (issue #16):

- one association per local sender (address, port); its id is never reused for the life
  of the forward, so a frame from a relay that has since been replaced, or a late reply for
  an expired association, can never reach another sender;
- the first datagram of a sender opens its association; datagrams wait (a few, bounded)
  until the relay says which socket it opened, because a protocol step (Notify's NR02)
  may need that socket's port;
- without a relay (link down, relay starting or unavailable) a datagram is dropped and
  counted, as UDP would lose it; when the relay goes, every association goes with it and
  the next datagram of each sender builds a new one;
- datagrams over the size limit are dropped and counted, in both directions;
- an association with no datagram either way for the idle time is closed on both sides.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tunnel.udp import (
    KIND_CLOSE,
    KIND_DATA,
    KIND_DROPPED,
    KIND_OPEN,
    MAX_ASSOCIATION,
    DatagramStep,
    Frame,
    RelayLimits,
    encode,
)

Address = tuple[str, int]

MAX_QUEUED = 64
"""Datagrams one sender may have waiting while its association opens; more are dropped."""


@dataclass(frozen=True, slots=True)
class ToRelay:
    """Bytes (one or more frames) to write to the relay's channel."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    """A datagram for a local address (sent from the mouth's socket)."""

    datagram: bytes
    address: Address


Action = ToRelay | ToClient


@dataclass
class Association:
    """One local sender's association."""

    id: int
    sender: Address
    last_used: float
    relay_address: tuple[str, int] | None = None
    """The association socket on the gateway, once the relay said (``None``: opening)."""
    notice_port: int | None = None
    queued: list[bytes] = field(default_factory=list)


@dataclass
class UdpCounters:
    """What ``status`` shows for one UDP forward."""

    associations_total: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    datagrams_in: int = 0
    bytes_in: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


class UdpCore:
    """Associations of one UDP forward (one mouth, one target)."""

    def __init__(self, limits: RelayLimits | None = None, step: DatagramStep | None = None):
        self.limits = limits = limits or RelayLimits()
        self.step = step
        self.counters = UdpCounters()
        self.relay_ready = False
        self.without_relay = "no link"
        """Why a datagram that finds no relay is dropped: the drop's reason."""
        self.max_datagram = limits.max_datagram
        self._next_id = 1
        self._by_id: dict[int, Association] = {}
        self._by_sender: dict[Address, int] = {}

    # -- relay lifecycle -------------------------------------------------------------

    def relay_started(self, max_datagram: int | None = None) -> None:
        """A relay answered; ``max_datagram`` lowers the size limit for it (socat)."""
        self.relay_ready = True
        self.max_datagram = min(self.limits.max_datagram, max_datagram or self.limits.max_datagram)

    def relay_gone(self) -> None:
        """The relay (or the link under it) ended: every association ends with it."""
        self.relay_ready = False
        for association in self._by_id.values():
            self._drop(len(association.queued), "no link")
        self._by_id.clear()
        self._by_sender.clear()

    @property
    def associations(self) -> int:
        return len(self._by_id)

    def association_of(self, sender: Address) -> Association | None:
        association_id = self._by_sender.get(sender)
        return None if association_id is None else self._by_id.get(association_id)

    # -- datagrams from local senders ------------------------------------------------

    def from_client(self, sender: Address, datagram: bytes, now: float) -> list[Action]:
        if len(datagram) > self.max_datagram:
            self._drop(1, "oversize")
            return []
        if not self.relay_ready:
            self._drop(1, self.without_relay)
            return []
        association = self.association_of(sender)
        if association is None:
            if len(self._by_id) >= self.limits.max_associations:
                self._drop(1, "too many associations")
                return []
            association = self._open(sender, now)
            association.queued.append(datagram)
            return [ToRelay(encode(KIND_OPEN, association.id))]
        association.last_used = now
        if association.relay_address is None:
            if len(association.queued) >= MAX_QUEUED:
                self._drop(1, "queue full")
            else:
                association.queued.append(datagram)
            return []
        return [ToRelay(self._up(association, datagram))]

    def _open(self, sender: Address, now: float) -> Association:
        while self._next_id in self._by_id:  # only after 2**32 associations
            self._next_id = self._next_id % MAX_ASSOCIATION + 1
        association = Association(self._next_id, sender, now)
        self._next_id = self._next_id % MAX_ASSOCIATION + 1
        self._by_id[association.id] = association
        self._by_sender[sender] = association.id
        self.counters.associations_total += 1
        return association

    def _up(self, association: Association, datagram: bytes) -> bytes:
        if self.step is not None and association.relay_address is not None:
            datagram, notice_port = self.step.upstream(datagram, association.relay_address[1])
            if notice_port is not None:
                self._set_notice_port(association, notice_port)
        self.counters.datagrams_out += 1
        self.counters.bytes_out += len(datagram)
        return encode(KIND_DATA, association.id, datagram)

    def _set_notice_port(self, association: Association, port: int) -> None:
        old = association.notice_port
        if old and self._by_sender.get((association.sender[0], old)) == association.id:
            del self._by_sender[(association.sender[0], old)]
        association.notice_port = port or None
        if port and port != association.sender[1]:
            # the client answers notices from its notice port: same association, never
            # another sender's
            self._by_sender.setdefault((association.sender[0], port), association.id)

    # -- frames from the relay -------------------------------------------------------

    def from_relay(self, frame: Frame, now: float) -> list[Action]:
        association = self._by_id.get(frame.association)
        if association is None:
            if frame.kind == KIND_DATA:
                self._drop(1, "association closed")
            return []
        if frame.kind == KIND_OPEN:
            address, _, port = frame.text.rpartition(" ")
            if not port.isdigit():
                self._close(association)
                return [ToRelay(encode(KIND_CLOSE, association.id))]
            association.relay_address = (address, int(port))
            queued, association.queued = association.queued, []
            return [ToRelay(b"".join(self._up(association, d) for d in queued))] if queued else []
        if frame.kind == KIND_CLOSE:
            self._drop(len(association.queued), "association closed")
            self._close(association)
            return []
        if frame.kind == KIND_DROPPED:
            self._drop(1, frame.text or "dropped by the relay")
            return []
        if frame.kind == KIND_DATA:
            if len(frame.payload) > self.max_datagram:
                self._drop(1, "oversize")
                return []
            association.last_used = now
            self.counters.datagrams_in += 1
            self.counters.bytes_in += len(frame.payload)
            to = association.sender
            if (
                association.notice_port
                and self.step is not None
                and self.step.server_initiated(frame.payload)
            ):
                to = (association.sender[0], association.notice_port)
            return [ToClient(frame.payload, to)]
        return []

    def _close(self, association: Association) -> None:
        self._by_id.pop(association.id, None)
        for sender, association_id in list(self._by_sender.items()):
            if association_id == association.id:
                del self._by_sender[sender]

    def _drop(self, count: int, reason: str) -> None:
        if count:
            self.counters.dropped[reason] += count

    # -- time ------------------------------------------------------------------------

    def expire(self, now: float) -> list[Action]:
        """Close associations idle for the idle time (the relay does the same on its side;
        closing here too keeps the table small when the relay's notice is lost)."""
        closing = [a for a in self._by_id.values() if now - a.last_used >= self.limits.idle_s]
        for association in closing:
            self._close(association)
        return [ToRelay(b"".join(encode(KIND_CLOSE, a.id) for a in closing))] if closing else []
