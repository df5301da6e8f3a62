"""A minimal ``sd_notify(3)``: tell systemd we are ready, stopping, or what we are doing.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: the path of a unix datagram
socket, or, when it starts with ``@``, a name in the abstract namespace (the ``@`` stands for
the leading NUL byte). One datagram carries newline-separated ``KEY=VALUE`` assignments
(``READY=1``, ``STATUS=…``, ``STOPPING=1``, ``RELOADING=1``).

Without the variable (not started by systemd, or on macOS) every call is a no-op, and a send
that fails is logged, never raised: a status message must not take the daemon down.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("blitzdns.sdnotify")


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """The socket address from ``$NOTIFY_SOCKET`` (``@name`` → abstract ``\\0name``), or None."""
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.debug("ignoring NOTIFY_SOCKET=%r: neither a path nor an abstract name", value)
    return None


def notify_message(
    *,
    ready: bool = False,
    status: str | None = None,
    stopping: bool = False,
    reloading: bool = False,
    monotonic_usec: int | None = None,
) -> bytes:
    """The datagram for these states, in ``sd_notify(3)`` form.

    ``RELOADING=1`` goes with ``MONOTONIC_USEC`` (the time of the request on
    CLOCK_MONOTONIC), which ``Type=notify-reload`` requires and older systemd ignores.
    A status is one line: newlines would start a new assignment.
    """
    lines = []
    if ready:
        lines.append("READY=1")
    if reloading:
        usec = time.monotonic_ns() // 1000 if monotonic_usec is None else monotonic_usec
        lines += ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    if stopping:
        lines.append("STOPPING=1")
    if status is not None:
        lines.append("STATUS=" + " ".join(status.splitlines()))
    return "\n".join(lines).encode("utf-8", "replace")


def notify(
    *,
    ready: bool = False,
    status: str | None = None,
    stopping: bool = False,
    reloading: bool = False,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Send the states to systemd; True when a datagram went out, False when not (or no-op)."""
    address = notify_address(env)
    if address is None:
        return False
    message = notify_message(ready=ready, status=status, stopping=stopping, reloading=reloading)
    if not message:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("could not notify systemd on %s: %s", address.replace("\0", "@"), exc)
        return False
    return True
