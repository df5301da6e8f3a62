"""The table of protected names, and what each class of client is told about them.

A :class:`Table` is built once per configuration (and again on reload) and never changes.
It knows every protected name (fully qualified and short, lower case), the reverse name
of every loopback mouth, and the *view* each client gets (issue 7, local-IP mode):

* a loopback client inside ``dns.allow`` sees the loopback mouths;
* a client inside one or more ``[[shared]]`` networks sees, for each host those shared
  addresses offer, the shared address (A or AAAA by its family), and NODATA for the rest;
* any other client inside ``dns.allow`` sees the loopback mouths;
* anyone else gets REFUSED (``view_for`` returns None): the stub is not an open resolver.

Names are handled as tuples of lower-case labels (``(b"dnd", b"dartmouth", b"edu")``);
the byte-level fast path uses the same names in wire form (:func:`to_wire`).
Pure: no sockets, no clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from blitzdns.config import Config, IPAddress, IPNetwork, SharedAddress

#: A domain name as lower-case labels, without the root label.
Name = tuple[bytes, ...]

#: Memoised client → view answers kept before the memo is cleared (bounds memory).
_VIEW_MEMO_LIMIT = 4096


def labels_of(text: str) -> Name:
    """``"dnd.dartmouth.edu"`` → ``(b"dnd", b"dartmouth", b"edu")`` (already normalised text)."""
    return tuple(label.encode("ascii") for label in text.split(".") if label)


def to_wire(name: Iterable[bytes]) -> bytes:
    """RFC 1035 §3.1 uncompressed wire form: length-prefixed labels, then the root byte."""
    return b"".join(bytes((len(label),)) + label for label in name) + b"\x00"


def wire_labels(wire_name: bytes) -> Name:
    """Labels of the uncompressed wire name at the start of ``wire_name`` (inverse of
    :func:`to_wire`); stops at the data's end if the root byte is missing."""
    labels = []
    i = 0
    while i < len(wire_name) and wire_name[i]:
        length = wire_name[i]
        labels.append(wire_name[i + 1 : i + 1 + length])
        i += length + 1
    return tuple(labels)


def lower(name: Iterable[bytes]) -> Name:
    """DNS names compare case-insensitively in ASCII only (RFC 4343 §3)."""
    return tuple(label.lower() for label in name)


def reverse_name(address: IPAddress) -> Name:
    """The PTR owner name of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return labels_of(address.reverse_pointer)


@dataclass(frozen=True, slots=True)
class Target:
    """What one protected name stands for in one view: the host and its addresses there."""

    host_key: str
    canonical: Name
    a: ipaddress.IPv4Address | None
    aaaa: ipaddress.IPv6Address | None


@dataclass(frozen=True, slots=True)
class View:
    """The local answers one class of clients gets."""

    label: str
    #: Every protected name (lower case) → its target in this view.
    targets: Mapping[Name, Target]
    #: Reverse name of each loopback mouth → the host's canonical name.
    pointers: Mapping[Name, Name]

    def owns(self, name: Name) -> bool:
        return name in self.targets or name in self.pointers


@dataclass(frozen=True, slots=True)
class Soa:
    """The SOA put in the authority section of local NODATA / NXDOMAIN answers (RFC 2308 §3)."""

    mname: Name = (b"localhost",)
    rname: Name = (b"nobody", b"invalid")
    serial: int = 1
    refresh: int = 3600
    retry: int = 600
    expire: int = 86400


@dataclass(frozen=True)
class Table:
    """Every protected name, the views, and the policy values local answers need."""

    loopback: View
    shared: tuple[SharedAddress, ...]
    allow: tuple[IPNetwork, ...]
    #: TTL of every local record, and the SOA minimum of local negative answers.
    ttl: int
    soa: Soa = Soa()
    #: Lower-case protected names and reverse names, in every view (they are the same set).
    protected: frozenset[Name] = frozenset()
    _hosts: Mapping[str, tuple[Name, tuple[Name, ...]]] = field(default_factory=dict)
    _memo: dict[str, View | None] = field(default_factory=dict, compare=False, repr=False)
    _shared_views: dict[tuple[int, ...], View] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_config(cls, config: Config) -> Table:
        targets: dict[Name, Target] = {}
        pointers: dict[Name, Name] = {}
        hosts: dict[str, tuple[Name, tuple[Name, ...]]] = {}
        # Labels many names share (their domain, ``in-addr``, ``arpa``, the mouths'
        # numbers) are kept once: a label is a bytes object of its own (~40 bytes).
        seen: dict[bytes, bytes] = {}

        def shared(name: Name) -> Name:
            return tuple([seen.setdefault(label, label) for label in name])

        for host in config.hosts:
            names = tuple(shared(labels_of(n)) for n in host.names)
            canonical = names[0]
            hosts[host.key] = (canonical, names)
            for name in names:
                targets[name] = Target(host.key, canonical, host.mouth, host.mouth6)
            pointers[shared(reverse_name(host.mouth))] = canonical
        loopback = View("loopback", targets, pointers)
        return cls(
            loopback=loopback,
            shared=config.shared,
            allow=config.dns.allow,
            ttl=config.dns.ttl,
            protected=frozenset(targets) | frozenset(pointers),
            _hosts=hosts,
        )

    def protects(self, name: Name) -> bool:
        """True when ``name`` (lower case) is protected or lies under a protected name."""
        return any(name[i:] in self.protected for i in range(len(name)))

    def protected_ancestor(self, name: Name) -> int | None:
        """Index ``i`` such that ``name[i:]`` is protected and ``i > 0``; None if there is none."""
        for i in range(1, len(name)):
            if name[i:] in self.protected:
                return i
        return None

    def view_for(self, client: str) -> View | None:
        """The view of the client at address ``client`` (as a socket reports it); None: refuse."""
        try:
            return self._memo[client]
        except KeyError:
            pass
        view = self._decide_view(client)
        if len(self._memo) >= _VIEW_MEMO_LIMIT:
            self._memo.clear()
        self._memo[client] = view
        return view

    def _decide_view(self, client: str) -> View | None:
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return None
        allowed = any(address in net for net in self.allow)
        if allowed and address.is_loopback:
            return self.loopback
        matching = tuple(
            i for i, s in enumerate(self.shared) if any(address in net for net in s.allow)
        )
        if matching:
            return self._shared_view(matching)
        return self.loopback if allowed else None

    def _shared_view(self, indexes: tuple[int, ...]) -> View:
        """Each host offered by the first matching shared address that offers it; NODATA else."""
        if indexes in self._shared_views:
            return self._shared_views[indexes]
        offered: dict[str, IPAddress] = {}
        for i in indexes:
            for key in self.shared[i].hosts:
                offered.setdefault(key, self.shared[i].address)
        targets: dict[Name, Target] = {}
        for key, (canonical, names) in self._hosts.items():
            address = offered.get(key)
            a = address if isinstance(address, ipaddress.IPv4Address) else None
            aaaa = address if isinstance(address, ipaddress.IPv6Address) else None
            for name in names:
                targets[name] = Target(key, canonical, a, aaaa)
        label = "shared " + ", ".join(str(self.shared[i].address) for i in indexes)
        view = View(label, targets, self.loopback.pointers)
        self._shared_views[indexes] = view
        return view
