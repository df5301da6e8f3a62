"""The daemon's log: one line per event on stderr, time-stamped unless journald stamps it.

Two forms:

``plain``
    ``2026-12-03 14:05:09 WARNING link down: …``: for a terminal, and for a file (launchd's
    plist sends this stream to /Library/Logs/blitzdns.log, where nothing else adds a time).
``journal``
    ``<4>link down: …``: the sd-daemon(3) priority prefix and no time stamp, since journald
    adds its own and files the priority.

``auto`` (the default) picks ``journal`` when stderr *is* the journal: systemd sets
``JOURNAL_STREAM`` to the device and inode of that stream (systemd.exec(5)), so a child
that redirected its stderr elsewhere is not fooled by an inherited variable.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from tunnel import LinkStatus, TunnelState

FORMATS = ("auto", "plain", "journal")

#: syslog(3) priorities for the journal's ``<N>`` prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journald(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal's stream (``JOURNAL_STREAM`` names its dev:inode)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


class JournalFormatter(logging.Formatter):
    """``<priority>message``: journald reads the level from the prefix."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # One line per event: a traceback's lines stay in the same entry's text.
        return f"<{priority}>" + text.replace("\n", "\n" + " " * (len(str(priority)) + 2))


def chosen_format(choice: str, stream: TextIO, env: Mapping[str, str] | None = None) -> str:
    """``plain`` or ``journal`` for ``--log-format CHOICE`` (``auto``: journald decides)."""
    if choice != "auto":
        return choice
    return "journal" if under_journald(stream, env) else "plain"


def setup_logging(verbose: bool, choice: str = "auto", stream: TextIO | None = None) -> str:
    """Send every log record to stderr in the chosen form; the form in use.

    ``verbose``: debug records too (``-v``; the resolver then logs every query). The tunnel
    library's own per-attempt records stay at debug: the daemon logs each link event once.
    """
    out = sys.stderr if stream is None else stream
    form = chosen_format(choice, out)
    handler = logging.StreamHandler(out)
    if form == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    return form


def link_event(
    state: TunnelState, previous_error: str | None, now: float
) -> tuple[int, str] | None:
    """The one log line (level, text) for a link status change; None for those not worth
    a line of their own (a retry beginning, the stop at exit: the daemon says "stopping").

    ``previous_error``: the error the last "down" line named; the same error again is not
    repeated, only counted, after 2, 4, 8… attempts. Pure: the state and the clock in, the
    line out.
    """
    if state.status is LinkStatus.UP:
        return logging.INFO, f"link up via {state.gateway}"
    if state.status is not LinkStatus.DOWN:
        return None
    retry_in = None if state.next_retry is None else state.next_retry - now
    when = (
        "retrying now" if retry_in is None or retry_in < 0.05 else f"retrying in {retry_in:.1f} s"
    )
    if state.last_error is not None and state.last_error == previous_error:
        attempts = state.attempts_since_up
        if attempts & (attempts - 1):
            return None  # a repeat is said after 2, 4, 8, 16… attempts: a refusing gateway
            # is retried every quarter second, and its log should not grow at that pace
        return logging.INFO, f"link still down after {attempts} attempts (same error); {when}"
    return logging.WARNING, f"link down: {state.last_error or 'no reason given'}; {when}"
