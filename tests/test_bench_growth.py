"""bench/growth_bench.py's quick-ACK route: while the bench runs, sockets connected to sshd's
own address acknowledge every segment at once and connect from 127.0.0.1 (so sshd's side,
connected to 127.0.0.1, keeps the kernel's defaults), and the route is gone afterwards (sshd
sends toward the forwarders under Nagle: without it a forwarder's delayed ACK, 40 ms,
decided the many-connection latency rows; bench/notes/growth.md, "Session 11"). The route
is changed inside a network namespace made for the check (``unshare --net``): the host's
routes are never touched, and a killed run leaves nothing behind. No benchmark runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
HOST = "127.0.91.2"

#: Run in the namespace: the routes to HOST before, during and after quick_acks, the route
#: the kernel picks to it, and the addresses of a TCP connection to it while the route holds.
IN_NAMESPACE = f"""
import json, socket, subprocess, sys
sys.path.insert(0, {str(BENCH)!r})
import growth_bench

HOST = {HOST!r}


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout.strip()


def routes():
    return ip("-d", "route", "show", "table", "local", HOST + "/32")


ip("link", "set", "lo", "up")
seen = {{"before": routes()}}
with growth_bench.quick_acks(HOST):
    seen["during"] = routes()
    seen["get"] = ip("route", "get", HOST)
    with socket.create_server((HOST, 0)) as server:
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                seen["client"] = client.getsockname()[0]
                seen["accepted_peer"] = accepted.getpeername()[0]
seen["after"] = routes()
print(json.dumps(seen))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None,
    reason="needs root, ip and unshare",
)
def test_the_route_to_sshd_acks_at_once_only_on_the_forwarders_side_while_the_bench_runs() -> None:
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", IN_NAMESPACE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"] == ""
    route = seen["during"]
    assert route.startswith(f"local {HOST} ") and " dev lo " in route, route
    assert " src 127.0.0.1 " in f"{route} " and "quickack 1" in route, route
    assert " src 127.0.0.1 " in seen["get"], seen["get"]
    # the forwarder's side connects from 127.0.0.1: sshd's side, connected there, takes the
    # kernel's own 127.0.0.0/8 route (no quickack), not this one
    assert seen["client"] == "127.0.0.1"
    assert seen["accepted_peer"] == "127.0.0.1"
    assert seen["after"] == ""
