"""The upstream socket a query goes out on: a uniform pick among the pool's sockets, by
the 16-bit numbers of :data:`upstream.RANDOM` (no packet is sent: a UDP connect only
sets the socket's peer)."""

from __future__ import annotations

import asyncio
from typing import Any

from blitzdns.config import Endpoint
from blitzdns.dns import upstream
from blitzdns.dns.stats import UpstreamHealth


def picks(size: int, draws: list[int], takes: int, monkeypatch: Any) -> tuple[list[Any], list[Any]]:
    """A full pool of ``size`` sockets, and ``takes`` channels taken from it with ``draws``
    as the random numbers; asserts that exactly all of them were read."""

    async def run() -> tuple[list[Any], list[Any]]:
        pool = upstream.SocketPool(per_upstream=size, uses=10**9, batch_io=False)
        endpoint, health = Endpoint("127.0.0.1", 9), UpstreamHealth("127.0.0.1:9")
        try:
            chans = [pool.take(endpoint, health) for _ in range(size)]
            assert len(set(map(id, chans))) == size and pool.created == size
            stream = iter(draws)
            monkeypatch.setattr(upstream.RANDOM, "stream", stream)
            taken = [pool.take(endpoint, health) for _ in range(takes)]
            assert next(stream, None) is None
            assert pool.created == size
            return chans, taken
        finally:
            pool.close()

    return asyncio.run(run())


def test_a_full_pool_of_16_takes_the_socket_the_number_names(monkeypatch: Any) -> None:
    draws = [0, 1, 15, 16, 17, 65535]
    chans, taken = picks(16, draws, len(draws), monkeypatch)
    assert taken == [chans[v % 16] for v in draws]


def test_a_pool_of_3_rejects_the_numbers_that_would_bias_the_pick(monkeypatch: Any) -> None:
    """65536 % 3 == 1: 65535 would make socket 0 likelier; it is drawn again."""
    chans, taken = picks(3, [65535, 4, 2, 65535, 65535, 0], 3, monkeypatch)
    assert taken == [chans[1], chans[2], chans[0]]
