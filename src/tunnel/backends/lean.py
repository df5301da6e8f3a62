"""Two per-packet costs of asyncssh that buy nothing at the log levels the tunnel runs at.

Carried changes (asyncssh 2.14-2.x, the range pyproject.toml allows; each checks the
internals it uses and otherwise leaves asyncssh alone; tests/tunnel/test_tunnel_setup.py):

* :func:`skip_unlogged_packets` (for the process): asyncssh describes every packet it
  sends or receives for its packet log (``SSHPacketLogger._log_packet``: the payload
  copied, its name and size formatted) and only then finds that the log is off (it is
  written at debug level 3 only: ``SSHLogger.packet``); and ``SSHLogger.log`` turns every
  argument into text before asking whether the level is enabled. Here both ask first.
  Nothing is logged that was not before, nor left out that was.
* :func:`lazy_keepalive` (for one connection): asyncssh re-arms its keepalive timer on
  every read of the socket (a timer cancelled and a new one made per read). Here a read
  only notes the time; the timer, when it fires, re-arms itself for the interval after
  the last read if one came meanwhile, and otherwise does what asyncssh's does: the same
  keepalives at the same moments, the same count of missed ones.

py-spy over round trips put these at about a tenth of the per-connection Python; A/B (same
run, interleaved, 3 rounds) about 40 us of 500 us CPU per connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tunnel.sshlib import asyncssh

PACKET_LOG_LEVEL = 3
"""asyncssh writes its packet log at this debug level only (``SSHLogger.packet``)."""


def skip_unlogged_packets() -> bool:
    """Patch asyncssh's packet log and log calls to do nothing when nothing is logged;
    True when in place."""
    from asyncssh.logging import SSHLogger  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.packet import SSHPacketLogger  # noqa: PLC0415

    describe: Any = SSHPacketLogger._log_packet
    log: Any = SSHLogger.log
    if getattr(describe, "lean", False):
        return True
    if not hasattr(SSHLogger, "_debug_level") or not hasattr(SSHLogger, "isEnabledFor"):
        return False

    def log_packet(self: Any, *args: Any, **kwargs: Any) -> None:
        if SSHLogger._debug_level >= PACKET_LOG_LEVEL:
            describe(self, *args, **kwargs)

    def log_if_enabled(self: Any, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if self.isEnabledFor(level):
            log(self, level, msg, *args, **kwargs)

    log_packet.lean = True  # type: ignore[attr-defined]
    SSHPacketLogger._log_packet = log_packet  # type: ignore[method-assign]
    SSHLogger.log = log_if_enabled  # type: ignore[method-assign]
    return True


def lazy_keepalive(conn: asyncssh.SSHClientConnection) -> bool:
    """Make ``conn``'s keepalive timer lazy (see the module's text); True when in place."""
    names = ("_reset_keepalive_timer", "_keepalive_timer_callback", "_set_keepalive_timer")
    if not all(callable(getattr(conn, name, None)) for name in names):
        return False
    if not all(hasattr(conn, name) for name in ("_keepalive_timer", "_keepalive_interval")):
        return False
    loop = asyncio.get_running_loop()
    fire = conn._keepalive_timer_callback
    heard = [loop.time()]

    def reset() -> None:
        if conn._auth_complete:
            heard[0] = loop.time()
            if conn._keepalive_timer is None:
                conn._set_keepalive_timer()

    def callback() -> None:
        due = heard[0] + conn._keepalive_interval
        if due > loop.time() + TIMER_SLACK_S:  # read since the timer was set: not yet
            conn._keepalive_timer = loop.call_at(due, callback)
            return
        fire()

    setattr(conn, "_reset_keepalive_timer", reset)  # noqa: B010 (methods to mypy)
    setattr(conn, "_keepalive_timer_callback", callback)  # noqa: B010
    if conn._keepalive_timer is not None:  # set at login with asyncssh's own callback
        conn._keepalive_timer.cancel()
        conn._keepalive_timer = None
        conn._set_keepalive_timer()
    return True


TIMER_SLACK_S = 0.002
"""A timer may fire this early (uvloop's clock counts milliseconds)."""
