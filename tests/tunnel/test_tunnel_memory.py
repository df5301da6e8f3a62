"""Memory given back after a burst (issue #12): once a burst of connections has ended,
the tunnel hands the heap they freed back to the system (glibc ``malloc_trim``). The
figures (RSS back within 10 MB of idle after 200 × 1 MB) are measured by make stress;
here, that the trim runs after a burst, and not after a single connection."""

from __future__ import annotations

import asyncio

import pytest

from tests.peers import free_port, wait_until
from tunnel import Forward, Tunnel, TunnelOptions
from tunnel.libc import TRIM_AFTER_FLOWS, HeapTrimmer

from .tunnel_testlib import Target, exchange


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
