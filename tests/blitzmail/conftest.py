"""Shared fixtures: fake servers on loopback port 0, and a port nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from blitzdns.blitzmail.fakes import FakeDnd

LOOPBACK = "127.0.0.1"
SHORT = 0.5
"""Safety bound for waits that are expected to run out (silent peers)."""


@pytest.fixture
async def fake_dnd() -> AsyncIterator[FakeDnd]:
    async with FakeDnd() as server:
        yield server


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: connecting to it is refused.

    Holding the socket keeps anyone else from taking the port during the test.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        yield sock.getsockname()[1]
