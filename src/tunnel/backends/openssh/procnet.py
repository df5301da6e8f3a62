"""Where an ``ssh`` master's TCP connection runs, read from Linux's ``/proc``.

Roaming (:mod:`tunnel.roaming`) follows the route of the link's connection and must know
its local address; the master owns that socket, so it is found the way ``ss -p`` finds it:
the master's socket inodes (``/proc/PID/fd``) looked up in ``/proc/net/tcp`` and ``tcp6``.
Elsewhere, or behind a ``ProxyCommand`` (a pipe, not a TCP socket), the path is unknown
and roaming judges by the default route alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from pathlib import Path

ESTABLISHED = "01"


def parse_address(text: str) -> str:
    """A ``/proc/net/tcp{,6}`` address (hex, each 32-bit word in host order) without port."""
    raw = bytes.fromhex(text.split(":", 1)[0])
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def established_path(table: str, inodes: set[str]) -> tuple[str, str] | None:
    """``(local, remote)`` of the first established connection whose inode is listed."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == ESTABLISHED and fields[9] in inodes:
            return parse_address(fields[1]), parse_address(fields[2])
    return None


def tcp_path(pid: int, proc: Path = Path("/proc")) -> tuple[str, str] | None:
    """``(local, remote)`` of process ``pid``'s established TCP connection, if any."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(proc / str(pid) / "fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(proc / str(pid) / "fd" / fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            found = established_path((proc / str(pid) / "net" / table).read_text(), inodes)
            if found is not None:
                return found
    return None
