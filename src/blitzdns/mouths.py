"""Mouth allocation: which loopback address stands in for each protected host (pure).

Order of claims, so that a host's mouth moves only when its own entry changes:

1. pinned addresses (``[hosts.X] mouth = ...``);
2. the preset's fixed offsets into the block (``127.77.0.1`` for dnd, ...);
3. every other host: a stable hash of its key picks a start in the block, and the first
   free address from there is its mouth. Adding or removing a host leaves the others'
   mouths where they were, except when two keys hash to the same address (pin one).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from blitzdns.errors import ConfigError


@dataclass(frozen=True, slots=True)
class MouthRequest:
    """What one host asks for: a pinned address, a preset offset, or neither."""

    key: str
    pinned: ipaddress.IPv4Address | None = None
    #: The preset's: the offset-th usable address of the block (1: the first); ignored
    #: when the block is too small to hold it.
    offset: int | None = None


def allocate_mouths(
    requests: Sequence[MouthRequest], block: ipaddress.IPv4Network
) -> dict[str, ipaddress.IPv4Address]:
    """Each request's key → its mouth, in the order of ``requests``.

    A conflict raises :class:`ConfigError` with the dotted key to blame (no file: the
    caller adds it): two hosts pinned to one address, a pin on a preset's address, or a
    block with no free address left.
    """
    taken: dict[ipaddress.IPv4Address, str] = {}
    mouths: dict[str, ipaddress.IPv4Address] = {}

    def claim(mouth: ipaddress.IPv4Address, key: str, where: str) -> None:
        if mouth in taken:
            raise ConfigError(f"mouth {mouth} is already taken by host {taken[mouth]}", key=where)
        taken[mouth] = key
        mouths[key] = mouth

    for request in requests:
        if request.pinned is not None:
            claim(request.pinned, request.key, f"hosts.{request.key}.mouth")
    usable = usable_addresses(block)
    for request in requests:
        if request.key in mouths or request.offset is None:
            continue
        if not 0 < request.offset <= len(usable):
            continue
        candidate = usable[request.offset - 1]
        if candidate in taken:
            raise ConfigError(
                f"{candidate} is the preset mouth of host {request.key}; pin another address",
                key=f"hosts.{taken[candidate]}.mouth",
            )
        claim(candidate, request.key, f"hosts.{request.key}")
    for request in requests:
        if request.key in mouths:
            continue
        start = hash_start(request.key, len(usable))
        for step in range(len(usable)):
            candidate = usable[(start + step) % len(usable)]
            if candidate not in taken:
                claim(candidate, request.key, f"hosts.{request.key}")
                break
        else:
            raise ConfigError(
                f"the block {block} has no free address for {request.key!r}", key="tunnel.mouths"
            )
    return {request.key: mouths[request.key] for request in requests}


def usable_addresses(block: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    """The block's host addresses (all of a /31 or /32)."""
    return list(block.hosts()) if block.num_addresses > 2 else list(block)


def hash_start(key: str, size: int) -> int:
    """Where the search for ``key``'s mouth starts: SHA-256 of the key, stable across runs."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % size
