"""Memory given back after a burst (issue #12): once a burst of connections has ended,
the tunnel hands the heap they freed back to the system (glibc ``malloc_trim``). The
figures (RSS back within 10 MB of idle after 200 × 1 MB) are measured by make stress;
here, that the trim runs after a burst, and not after a single connection."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.backends.openssh.link import MuxLink
from tunnel.backends.openssh.master import MASTER_MALLOC, master_environment
from tunnel.libc import TRIM_AFTER_FLOWS, HeapTrimmer

from .tunnel_testlib import Target, exchange, link_up


async def test_the_heap_is_trimmed_once_a_burst_has_ended(
    any_options: TunnelOptions, echo: Target
) -> None:
    if HeapTrimmer()._trim is None:
        pytest.skip("no malloc_trim in this C library")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    async with Tunnel(any_options, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        assert await exchange(*forward.mouth, b"one") == b"one"
        await wait_until(lambda: tunnel.state.forwards[0].open == 0)
        assert tunnel._heap.trims == 0
        payload = b"m" * (256 * 1024)
        results = await asyncio.gather(
            *(exchange(*forward.mouth, payload) for _ in range(TRIM_AFTER_FLOWS))
        )
        assert all(result == payload for result in results)
        await wait_until(lambda: tunnel._heap.trims == 1)


async def test_the_ssh_master_gives_its_channel_buffers_back(
    options: TunnelOptions, echo: Target
) -> None:
    """OpenSSH's channel buffers (2 MiB window each) stayed in the master's heap after a
    burst (260 MB after 200 x 1 MB, make stress): the master runs with glibc tunables that
    map large buffers on their own and unmap them when freed."""
    if shutil.which("ssh") is None:
        pytest.skip("ssh client not installed (Debian: openssh-client)")
    forward = Forward("127.0.0.1", free_port(), "127.0.0.1", echo.port)
    mux = dataclasses.replace(options, backend="openssh")
    async with Tunnel(mux, [forward]) as tunnel:
        assert await tunnel.wait_up(10)
        link = await link_up(tunnel)
        assert isinstance(link, MuxLink)
        environ = Path(f"/proc/{link.pid}/environ").read_bytes().split(b"\0")  # noqa: ASYNC240
        tunables = [v for v in environ if v.startswith(b"GLIBC_TUNABLES=")]
        assert tunables and b"glibc.malloc.mmap_threshold=65536" in tunables[0]
    assert master_environment({"GLIBC_TUNABLES": "glibc.x=1"})["GLIBC_TUNABLES"] == (
        f"glibc.x=1:{MASTER_MALLOC}"
    )
