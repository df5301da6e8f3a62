"""Fixtures of the leak-guard tests: a real dnsmasq as the upstream that knows the real
addresses, a network namespace for live nftables, and the CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import free_port, wait_for

GOLDEN = Path(__file__).parent.parent / "golden"
BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))
WAIT_S = 15.0


def blitzdns(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, optionally inside a network namespace."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run(
        [*prefix, BLITZDNS, *args], capture_output=True, text=True, timeout=60, check=False
    )


@dataclass
class Dnsmasq:
    """dnsmasq on 127.0.0.1:PORT answering only from its command line (no upstream)."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)


def _up_or_dead(process: subprocess.Popen[bytes], port: int) -> bool:
    if process.poll() is not None:
        return True
    probe = subprocess.run(
        ["ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True, check=False
    )
    return bool(probe.stdout.strip())


def start_dnsmasq(records: Sequence[str]) -> Dnsmasq:
    program = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(program, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [program, "-k", "-C", "/dev/null", "--no-resolv", "--no-hosts",
             "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}",
             "--pid-file=", "--user=root", "--local-ttl=60", *records],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

        wait_for(lambda p=process, n=port: _up_or_dead(p, n), "dnsmasq to listen")
        if process.poll() is None:
            return Dnsmasq(port, process)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
    raise AssertionError("dnsmasq did not start")


@pytest.fixture
def real_dns() -> Iterator[Dnsmasq]:
    """The "LAN DNS": dnd is a CNAME to a host with an A and an AAAA; dasher has an A."""
    server = start_dnsmasq(
        [
            "--cname=dnd.dartmouth.edu,real-dnd.example.net",
            "--host-record=real-dnd.example.net,198.51.100.2,2001:db8::2",
            "--host-record=dasher.dartmouth.edu,198.51.100.3",
        ]
    )
    yield server
    server.stop()


def need_netns() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            pytest.skip(f"{tool} is not installed")


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace of our own: loopback up and a veth towards 198.51.100.0/24 whose
    far end has no address (packets sent there go nowhere: only the guard can answer a
    connection attempt). Static neighbours, so no ARP failure answers either."""
    need_netns()
    name = f"bz-guard-{os.getpid()}-{time.monotonic_ns() % 100000}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        for args in (
            ["link", "set", "lo", "up"],
            ["link", "add", "bzd0", "type", "veth", "peer", "name", "bzd1"],
            ["addr", "add", "198.51.100.1/24", "dev", "bzd0"],
            ["link", "set", "bzd0", "up"],
            ["link", "set", "bzd1", "up"],
            ["neigh", "add", "198.51.100.2", "lladdr", "02:00:00:00:00:02", "dev", "bzd0"],
            ["neigh", "add", "198.51.100.3", "lladdr", "02:00:00:00:00:03", "dev", "bzd0"],
            ["neigh", "add", "198.51.100.4", "lladdr", "02:00:00:00:00:04", "dev", "bzd0"],
        ):
            subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def ruleset(netns: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "list", "ruleset"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as exc:
    print(f"error {exc}")
"""


def try_connect(netns: str, address: str, port: int, timeout: float = 3.0) -> str:
    """One TCP connect from inside ``netns``: "refused", "timeout", "connected" or "error …".

    The timeout only ends an attempt that nobody answers (the unguarded control); a
    refusal by the guard comes back at once, whatever the load.
    """
    done = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _CONNECT, address, str(port),
         str(timeout)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()
