"""The reconnect schedule: pure, a function of the failure count and a random source.

The first retry happens at once (a dropped link is usually back on the very next try:
a Wi-Fi roam, a restarted sshd); after that the delay doubles from ``base_s`` up to
``cap_s``, with "equal jitter" (half fixed, half random) so that many clients dropped by
the same outage do not hammer the gateway in lockstep yet each still waits a minimum.

An attempt that nothing answered (the connection refused, no route: the gateway's sshd is
down or restarting) is not a failure of the gateway to back off from: it is retried every
``refused_s``, so the link is up within about that long of the listening socket's return,
however many drops came before (issue #12). Such a refusal costs the gateway one SYN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tunnel.errors import TunnelConfigError


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with equal jitter; ``delay(1) == 0``."""

    base_s: float = 0.5
    cap_s: float = 30.0
    refused_s: float = 0.25
    """Pause between attempts while the gateway refuses (nothing listens on its port)."""

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise TunnelConfigError(
                f"backoff: need 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}"
            )
        if not 0 < self.refused_s <= self.cap_s:
            raise TunnelConfigError(
                f"backoff: need 0 < refused_s <= cap_s, got refused_s={self.refused_s}"
            )

    def delay(self, failures: int, random: Callable[[], float]) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (``failures >= 1``).

        ``random`` returns a float in [0, 1), e.g. :func:`random.random`.
        """
        if failures <= 1:
            return 0.0
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(failures - 2, 64))
        return ceiling / 2 + ceiling / 2 * random()

    def schedule(self, random: Callable[[], float]) -> Iterator[float]:
        """The endless sequence of delays after the 1st, 2nd, 3rd … failure."""
        failures = 1
        while True:
            yield self.delay(failures, random)
            failures += 1
