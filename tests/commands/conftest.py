"""Fixtures for the command tests (demo, check, discover): the demo stack on loopback.

The stack is the demo's own (:class:`blitzdns.demo.DemoStack`): fake DND, BlitzMail and
bulletin servers on 127.78.0.0/24, an asyncssh gateway with an explicitly trusted host
key, a recording relay, and the real daemon. Its mouth block search starts at a random
127.77.N.0/24 so runs beside each other (or beside a user's `blitzdns demo`) do not meet.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blitzdns.check import listening_sockets
from blitzdns.demo import DemoStack

BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))


def random_block_start() -> int:
    """Not 0: block 0 is where an interactive `blitzdns demo` goes first."""
    return random.randrange(1, 256)


@pytest.fixture
async def stack() -> AsyncIterator[DemoStack]:
    async with DemoStack(mouth_block_start=random_block_start()) as running:
        assert running.link_up, "the demo link did not come up"
        yield running


async def run_cli(*argv: str, timeout: float = 60) -> tuple[int, str, str]:
    """``blitzdns ARGV...`` as a subprocess, without blocking the loop the stack runs on."""
    process = await asyncio.create_subprocess_exec(
        BLITZDNS,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def tcp_listening(address: str, port: int) -> bool:
    """Whether something listens on ``address``:``port`` (TCP, this network namespace)."""
    return address in listening_sockets(port)


def udp_bound(address: str, port: int) -> bool:
    """Whether a UDP socket holds ``address``:``port`` (a bind of our own fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return True
    return False


def netns_python(code: str, *, mounts: bool = False, timeout: float = 60) -> str:
    """Run ``code`` with this interpreter in a new network namespace (and mount namespace).

    The namespace has only a loopback link, which ``code`` must bring up itself: whatever it
    binds or sends cannot reach any other machine. Skips without root or ``unshare``.
    """
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare (util-linux) and ip (iproute2) are needed")
    flags = ["-n", "-m"] if mounts else ["-n"]
    done = subprocess.run(
        ["unshare", *flags, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode == 97:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"cannot create namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
