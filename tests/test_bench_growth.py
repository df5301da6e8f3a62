"""bench/growth_bench.py's quick-ACK route: while the bench runs, sockets connected to sshd's
own address acknowledge every segment at once, and the route is gone afterwards (sshd sends
toward the forwarders under Nagle: without it a forwarder's delayed ACK, 40 ms, decided the
many-connection latency rows; bench/notes/growth.md, "Session 11"). No benchmark runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import growth_bench

#: Not the bench's own address (a bench may hold its route while the suite runs).
HOST = "127.0.91.2"


def routes(host: str) -> str:
    shown = subprocess.run(
        ["ip", "-d", "route", "show", "table", "local", f"{host}/32"],
        capture_output=True,
        text=True,
        check=True,
    )
    return shown.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and ip")
def test_the_route_to_sshd_acks_at_once_only_while_the_bench_runs() -> None:
    assert routes(HOST) == ""
    with growth_bench.quick_acks(HOST):
        route = routes(HOST)
        assert route.startswith(f"local {HOST} ") and " dev lo " in route
        assert "quickack 1" in route
    assert routes(HOST) == ""
