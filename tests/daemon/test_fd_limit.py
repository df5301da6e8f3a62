"""The daemon raises its descriptor limit at start (each tunneled connection holds one or
two descriptors; a soft limit of 1024 would cap it at a few hundred connections)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

PROBE = """
import resource
from blitzdns.daemon import raise_fd_limit
in_force = raise_fd_limit({wanted})
print(in_force, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def run_with_limits(soft: int, hard: int, wanted: int) -> tuple[int, int, int]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(wanted=wanted)],
        preexec_fn=limit,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split()
    in_force, now_soft, now_hard = (int(x) for x in out)
    return in_force, now_soft, now_hard


@pytest.mark.parametrize(
    ("soft", "hard", "wanted", "expected"),
    [
        (256, 4096, 2048, (2048, 2048, 4096)),  # raised to what is wanted
        (256, 1024, 2048, (1024, 1024, 1024)),  # capped by the hard limit
        (3000, 4096, 2048, (3000, 3000, 4096)),  # never lowered
    ],
)
def test_soft_descriptor_limit_is_raised(
    soft: int, hard: int, wanted: int, expected: tuple[int, int, int]
) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < hard:
        pytest.skip("this process's own hard limit is lower than the test needs")
    assert run_with_limits(soft, hard, wanted) == expected
