"""Fixtures every suite may use; the peers behind them are in tests/peers.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.peers import Sshd, running_sshd

# Hypothesis times every example (200 ms by default) and checks that generating data is
# not "too slow": wall-clock thresholds that a loaded machine trips, reported as a flaky
# failure. The examples' count bounds the run; time is not a property under test.
settings.register_profile("blitzdns", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("blitzdns")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A running OpenSSH sshd on 127.0.0.1; the client key in ``client_key`` is authorized.
    Killed with every session at teardown. (tests/netns has its own, inside the lab.)"""
    with running_sshd(tmp_path) as server:
        yield server
