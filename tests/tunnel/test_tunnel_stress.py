"""The short version of ``make stress`` (bench/stress_tunnel.py), for each backend: a few
sshd kill/restart cycles under checksummed transfers, a black-holed gateway, held
connections with a burst, a short soak with reloads (some broken). Behaviour only: no
transfer ends clean before its last byte, none is corrupted or hangs, the link comes
back after every restart and every hole, nothing fails in the soak, held connections on
the unchanged forward survive the reloads and every broken file is refused. The figures
are for the long run (make stress)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

from tests.peers import need_sshd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import stress_tunnel


@pytest.mark.parametrize("backend", ["asyncssh", "openssh"])
async def test_the_short_stress_run_keeps_every_promise(backend: str, tmp_path: Path) -> None:
    need_sshd()
    if backend == "openssh" and shutil.which("ssh") is None:
        pytest.skip("ssh client not installed (Debian: openssh-client)")
    args = argparse.Namespace(
        cycles=3,
        parallel=3,
        max_mb=3,
        pace=0.4,
        held=30,
        burst=10,
        soak=1.0,
        reloads=3,
        after=0.2,
        watch=0.0,
        seed=7,
        holes=1,
        outage=0.3,
        hole_keepalives=1,
    )
    (tmp_path / backend).mkdir()
    stress_tunnel.raise_nofile()
    report = await stress_tunnel.run_backend(args, backend, tmp_path)
    storm, hole, soak = report["storm"], report["hole"], report["soak"]
    assert storm.outcomes["cut-clean"] == 0, storm.outcomes
    assert storm.outcomes["corrupted"] == 0, storm.outcomes
    assert storm.outcomes["hung"] == 0, storm.outcomes
    assert storm.no_link == 0 and len(storm.relink_s) == args.cycles
    if shutil.which("ip") is not None:
        assert not hole.skipped, hole.skipped
        assert len(hole.dead_s) == len(hole.relink_s) == args.holes
    assert soak.burst == {"intact": 2 * args.burst}, soak.burst
    assert soak.failures == 0 and soak.connections > 0
    assert soak.held_lost == 0
    assert soak.reloads["refused"] == soak.broken_sent == 1, soak.reloads
    assert soak.reloads["done"] == args.reloads - soak.broken_sent, soak.reloads
