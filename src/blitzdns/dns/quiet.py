"""Log lines a client (or a failing system) can provoke at will, at most one per interval.

Bad input arrives at packet rate; a log line for each would let any client fill the disk
(issue 13: 55.7 MB of tracebacks from 1.2 million packets). :class:`LogLimiter` writes the
first line of a kind at once, then counts the repeats and writes them as one line with the
count when the interval is over (at the next repeat, or at :meth:`LogLimiter.flush`).
Pure apart from the logger it is given: the caller passes ``now`` in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

#: Seconds between two lines of the same kind.
LOG_INTERVAL_S = 10.0


@dataclass(slots=True)
class _Kind:
    last_logged: float
    suppressed: int = 0


class LogLimiter:
    """At most one line per kind per ``interval_s``; the repeats in between are counted."""

    def __init__(self, log: logging.Logger, interval_s: float = LOG_INTERVAL_S) -> None:
        self.log = log
        self.interval_s = interval_s
        self._kinds: dict[str, _Kind] = {}

    def __call__(
        self,
        kind: str,
        now: float,
        level: int,
        message: str,
        *args: object,
        exc_info: bool | BaseException = False,
    ) -> bool:
        """Log ``message % args`` unless a line of ``kind`` was written within the interval.

        True when the line was written. A written line that follows suppressed ones says how
        many there were.
        """
        seen = self._kinds.get(kind)
        if seen is not None and now - seen.last_logged < self.interval_s:
            seen.suppressed += 1
            return False
        suffix = ""
        if seen is not None and seen.suppressed:
            suffix = (
                f" (and {seen.suppressed} more like it in the last {now - seen.last_logged:.0f} s)"
            )
        self._kinds[kind] = _Kind(now)
        self.log.log(level, message + suffix, *args, exc_info=exc_info)
        return True

    def flush(self, now: float) -> None:
        """Write the counts still held (at shutdown), one line per kind."""
        for kind, seen in self._kinds.items():
            if seen.suppressed:
                self.log.warning(
                    "%d more %s in the last %.0f s", seen.suppressed, kind, now - seen.last_logged
                )
                seen.suppressed = 0
