"""Fixtures of the DNS suite: a real dnsmasq upstream, the resolver in a thread, dig, fakes.

The resolver under test runs on its own event loop in a background thread, so tests can
use blocking clients (``dig`` subprocesses, dnspython's sync API, hypothesis-driven
senders) against it exactly as other programs would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from blitzdns.config import Config, Endpoint, build_config, parse_config
from blitzdns.dns.server import Resolver
from tests.peers import Dnsmasq

T = TypeVar("T")

#: Local-IP mode (issue 7): loopback 127.0.0.1 only; 127.0.0.64/26 is a "LAN" sharing dnd on
#: 127.0.0.5 (which also serves DNS); fd00::/64 shares dasher on fd00::5.
SHARED_TOML = """
[dns]
allow = ["127.0.0.1/32"]
[[shared]]
address = "127.0.0.5"
allow = ["127.0.0.64/26"]
hosts = ["dnd"]
dns = true
[[shared]]
address = "fd00::5"
allow = ["fd00::/64"]
hosts = ["dasher"]
[hosts.dnd]
mouth6 = "::1"
"""


def make_config(toml: str = "", *, listen: Sequence[Endpoint] | None = None, **dns: Any) -> Config:
    """A config from TOML text (preset blitzmail unless it says otherwise) on port 0."""
    config = parse_config(toml) if toml else build_config({}, source=None)
    fields: dict[str, Any] = {"listen": tuple(listen or (Endpoint("127.0.0.1", 0),))}
    fields.update(dns)
    return replace(config, dns=replace(config.dns, **fields))


def config_protecting(name: str, mouth: str = "127.77.0.50") -> Config:
    """The preset's ``dnd`` plus one more protected host ``extra`` named ``name`` (a reload)."""
    return make_config(
        f"""
[tunnel]
hosts = ["dnd", "extra"]
[hosts.extra]
names = ["{name}"]
mouth = "{mouth}"
"""
    )


class ServerThread:
    """A :class:`Resolver` serving on its own event loop in a background thread."""

    def __init__(self, config: Config, upstreams: Sequence[Endpoint], **kwargs: Any) -> None:
        self.loop = kwargs.pop("loop_factory", asyncio.new_event_loop)()
        kwargs.setdefault("loop_probe", False)
        self.resolver = Resolver(config, upstreams, **kwargs)
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.resolver.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="resolver", daemon=True)
        self.thread.start()
        started.wait(10)
        if failure:
            self.loop.close()
            raise failure[0]

    @property
    def endpoint(self) -> Endpoint:
        return self.resolver.bound_endpoints[0]

    @property
    def port(self) -> int:
        return self.endpoint.port

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        async def wrapper() -> T:
            return function(*args, **kwargs)

        return self.run(wrapper())

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.run(self.resolver.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=_Stoppable)


def _stopping(make: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """A fixture body: hand out ``make``, stop everything it made at teardown."""
    started: list[S] = []

    def start(*args: Any, **kwargs: Any) -> S:
        thing = make(*args, **kwargs)
        started.append(thing)
        return thing

    yield start
    for thing in reversed(started):
        thing.stop()


@pytest.fixture
def dnsmasq_factory(tmp_path: Path) -> Iterator[Callable[..., Dnsmasq]]:
    yield from _stopping(lambda extra=(): Dnsmasq(tmp_path, extra))


@pytest.fixture
def dnsmasq(dnsmasq_factory: Callable[..., Dnsmasq]) -> Dnsmasq:
    return dnsmasq_factory()


@pytest.fixture
def resolver_factory() -> Iterator[Callable[..., ServerThread]]:
    yield from _stopping(ServerThread)


@pytest.fixture
def stub(resolver_factory: Callable[..., ServerThread], dnsmasq: Dnsmasq) -> ServerThread:
    """The resolver with the built-in table, forwarding to the dnsmasq fixture."""
    return resolver_factory(make_config(), [dnsmasq.endpoint])


class FakeUpstream:
    """A hand-written UDP (and optionally TCP) upstream for cases no real server produces.

    ``on_udp(sock, query, peer)`` and ``on_tcp(query) -> bytes | None`` decide what is sent;
    every received query is recorded.
    """

    def __init__(
        self,
        on_udp: Callable[[socket.socket, bytes, Any], None] | None = None,
        on_tcp: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.udp_queries: list[bytes] = []
        self.tcp_queries: list[bytes] = []
        self.on_udp = on_udp
        self.on_tcp = on_tcp
        self.udp, self.tcp = _bind_pair(with_tcp=on_tcp is not None)
        self.endpoint = Endpoint("127.0.0.1", self.udp.getsockname()[1])
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True)]
        if self.tcp is not None:
            self.threads.append(threading.Thread(target=self._serve_tcp, daemon=True))
        for thread in self.threads:
            thread.start()

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.udp_queries.append(query)
            if self.on_udp is not None:
                self.on_udp(self.udp, query, peer)

    def _serve_tcp(self) -> None:
        assert self.tcp is not None and self.on_tcp is not None
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    size = int.from_bytes(_recv_exactly(conn, 2), "big")
                    query = _recv_exactly(conn, size)
                except OSError:
                    continue
                self.tcp_queries.append(query)
                reply = self.on_tcp(query)
                if reply is not None:
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(2)
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


def _bind_pair(*, with_tcp: bool) -> tuple[socket.socket, socket.socket | None]:
    """A UDP socket on a port the kernel picks and, when asked, a listening TCP socket on
    the same port (retried on a fresh port when TCP's is taken: nothing is released and
    bound again later)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.1)
        if not with_tcp:
            return udp, None
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            tcp.close()
            udp.close()
            continue
        tcp.listen(8)
        tcp.settimeout(0.1)
        return udp, tcp
    raise RuntimeError("no port on 127.0.0.1 free for both UDP and TCP")


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def fake_upstream_factory() -> Iterator[Callable[..., FakeUpstream]]:
    yield from _stopping(FakeUpstream)


@contextmanager
def loop_held(stub: ServerThread) -> Iterator[None]:
    """The resolver's event loop blocked inside a callback until the block ends."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(30)

    stub.loop.call_soon_threadsafe(hold)
    assert held.wait(10)
    try:
        yield
    finally:
        release.set()
