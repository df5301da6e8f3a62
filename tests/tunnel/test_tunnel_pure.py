"""The pure parts, no event loop: backoff schedule, gateway and forward specs, options."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel import Backoff, Forward, Gateway, TunnelOptions
from tunnel.errors import FinalError, TunnelConfigError


def test_first_retry_is_immediate_then_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    top = [backoff.delay(n, lambda: 0.999999) for n in range(1, 8)]
    bottom = [backoff.delay(n, lambda: 0.0) for n in range(1, 8)]
    assert top[0] == bottom[0] == 0.0
    assert top[1:] == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], rel=1e-5)
    assert bottom[1:] == pytest.approx([0.25, 0.5, 1.0, 2.0, 2.0, 2.0])


def test_schedule_is_the_delays_in_order() -> None:
    backoff = Backoff(base_s=1, cap_s=8)
    rng = random.Random(7)
    schedule = backoff.schedule(rng.random)
    rng2 = random.Random(7)
    assert [next(schedule) for _ in range(6)] == [
        backoff.delay(n, rng2.random) for n in range(1, 7)
    ]


@given(failures=st.integers(min_value=1, max_value=10_000), r=st.floats(0, 0.999999))
def test_delay_always_within_half_and_full_ceiling(failures: int, r: float) -> None:
    backoff = Backoff(base_s=0.5, cap_s=30)
    delay = backoff.delay(failures, lambda: r)
    if failures == 1:
        assert delay == 0
    else:
        ceiling = min(30, 0.5 * 2.0 ** min(failures - 2, 64))
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (2, 1), (-1, 5)])
def test_backoff_rejects_nonsense(base: float, cap: float) -> None:
    with pytest.raises(TunnelConfigError):
        Backoff(base_s=base, cap_s=cap)


@pytest.mark.parametrize(
    ("text", "host", "port", "user"),
    [
        ("jsmith@nimbus.dartmouth.edu:2222", "nimbus.dartmouth.edu", 2222, "jsmith"),
        ("nimbus", "nimbus", None, None),
        ("gw-alias", "gw-alias", None, None),
        ("root@127.0.0.1", "127.0.0.1", None, "root"),
        ("user@[::1]:22", "::1", 22, "user"),
        ("[fe80::1%eth0]", "fe80::1%eth0", None, None),
        ("::1", "::1", None, None),
        ("a.b@host:1", "host", 1, "a.b"),
    ],
)
def test_gateway_parse(text: str, host: str, port: int | None, user: str | None) -> None:
    gateway = Gateway.parse(text)
    assert (gateway.host, gateway.port, gateway.user) == (host, port, user)
    assert Gateway.parse(str(gateway)) == gateway


@pytest.mark.parametrize(
    "text",
    ["", "   ", "host:0", "host:65536", "host:ssh", "@host", "[::1", "[::1]x", "ho st", "a@b@"],
)
def test_gateway_parse_rejects(text: str) -> None:
    with pytest.raises(TunnelConfigError):
        Gateway.parse(text)


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda: Gateway("host\n"), "gateway host: "),
        (lambda: Gateway("host", user="alice\n"), "bad user name"),
        (lambda: Forward("127.0.0.1", 1000, "host\n", 22), "target_host"),
    ],
)
def test_a_name_ending_in_a_newline_is_rejected(make: Any, shown: str) -> None:
    """A $-anchored pattern matched before a trailing newline: "host\\n" passed."""
    with pytest.raises(TunnelConfigError) as info:
        make()
    assert shown in str(info.value)
    assert "\n" not in str(info.value)  # one line: the newline shown as \\n


def test_forward_validates_and_normalises() -> None:
    forward = Forward("localhost", 902, "dnd.dartmouth.edu", 902, allowed_peers=["10.0.0.0/8"])
    assert forward.mouth == ("127.0.0.1", 902)
    assert forward.allowed_peers == (ipaddress.ip_network("10.0.0.0/8"),)
    assert forward.is_loopback
    assert forward.admits(ipaddress.ip_address("10.1.2.3"))
    assert forward.admits(ipaddress.ip_address("::ffff:10.1.2.3"))
    assert not forward.admits(ipaddress.ip_address("192.168.1.1"))
    assert Forward("127.0.0.1", 1, "t", 2).admits(ipaddress.ip_address("8.8.8.8"))
    assert hash(forward) == hash(
        Forward("127.0.0.1", 902, "dnd.dartmouth.edu", 902, allowed_peers=("10.0.0.0/8",))
    )
    assert not Forward("192.168.1.5", 1, "t", 2).is_loopback
    assert str(Forward("::1", 5, "h", 6)) == "[::1]:5 → h:6"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mouth_host": "dasher"},
        {"mouth_port": 0},
        {"mouth_port": True},
        {"target_port": 70000},
        {"target_host": ""},
        {"target_host": "a b"},
        {"allowed_peers": ["10.0.0.1/8"]},
        {"allowed_peers": "10.0.0.0/8"},
        {"allowed_peers": ["nonsense"]},
    ],
)
def test_forward_rejects(kwargs: dict[str, object]) -> None:
    spec: dict[str, object] = {
        "mouth_host": "127.0.0.1",
        "mouth_port": 902,
        "target_host": "dnd",
        "target_port": 902,
    }
    spec.update(kwargs)
    with pytest.raises(TunnelConfigError) as info:
        Forward(**spec)  # type: ignore[arg-type]
    assert isinstance(info.value, FinalError) and isinstance(info.value, ValueError)


def test_options_parse_gateways_and_paths() -> None:
    options = TunnelOptions(
        gateways=("a@b:2", Gateway("c")),  # type: ignore[arg-type]
        known_hosts="~/kh",  # type: ignore[arg-type]
    )
    assert options.gateways == (Gateway("b", 2, "a"), Gateway("c"))
    assert options.known_hosts == Path("~/kh").expanduser()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gateways": ()},
        {"gateways": ("bad host",)},
        {"keepalive_s": 0},
        {"keepalive_s": float("nan")},
        {"wait_for_link_s": -1},
        {"keepalive_count_max": 1.5},
        {"connect_timeout_s": "10"},
        {"known_hosts": 5},
        {"backoff": 3},
    ],
)
def test_options_reject(kwargs: dict[str, object]) -> None:
    spec: dict[str, object] = {"gateways": ("gw",)}
    spec.update(kwargs)
    with pytest.raises(TunnelConfigError):
        TunnelOptions(**spec)  # type: ignore[arg-type]
