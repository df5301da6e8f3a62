"""The status contract (blitzdns.snapshot): typed, versioned, and what `status --json` prints."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from blitzdns import snapshot as contract
from blitzdns.config import Endpoint, parse_config
from blitzdns.daemon import Daemon, RunOptions
from blitzdns.dns.stats import ResolverStats, UpstreamHealth
from tunnel import Forward, UdpForward
from tunnel.state import ForwardState, LinkStatus, RelayState, TunnelState, UdpForwardState


def sample_tunnel() -> TunnelState:
    shared = Forward(
        "127.0.0.1", 2151, "dasher.dartmouth.edu", 2151,
        allowed_peers=(ipaddress.ip_network("192.0.2.0/24"),), name="dasher/mail",
    )  # fmt: skip
    dnd = Forward("127.77.0.1", 902, "dnd.dartmouth.edu", 902, name="dnd/dnd")
    return TunnelState(
        status=LinkStatus.UP,
        since=1700000000.5,
        gateway="jsmith@gw",
        last_error=None,
        final_error=None,
        forwards=(
            ForwardState(dnd, 1, 2, 0, 30, 40),
            ForwardState(shared, 0, 5, 3, 7, 8),
        ),
        attempts=2,
        udp_forwards=(
            UdpForwardState(
                UdpForward("127.77.0.20", 2154, "notifier", 2154, name="notifier/notify"),
                RelayState.PYTHON, "", 1, 2, 3, 120, 2, 90, {"oversize": 1}, 0,
            ),
        ),
    )  # fmt: skip


def sample_stats() -> ResolverStats:
    stats = ResolverStats(answered_local=3, forwarded=2, rewritten=1)
    stats.upstreams = [UpstreamHealth("127.0.0.53:53", answered=2), UpstreamHealth("[::1]:53")]
    return stats


def build() -> contract.Snapshot:
    return contract.snapshot(
        started=1700000000.0,
        location="campus",
        tunnel=sample_tunnel(),
        stats=sample_stats(),
        listen=(Endpoint("127.0.0.1", 53),),
    )


def keys_of(typed: type) -> set[str]:
    return set(get_type_hints(typed))


def test_the_snapshot_has_exactly_the_keys_of_its_types() -> None:
    shown = json.loads(json.dumps(build()))
    assert set(shown) == keys_of(contract.Snapshot)
    assert shown["schema"] == contract.SCHEMA == 1
    assert set(shown["tunnel"]) == keys_of(contract.TunnelStatus)
    for forward in shown["tunnel"]["forwards"]:
        assert set(forward) == keys_of(contract.ForwardStatus)
    for udp in shown["tunnel"]["udp_forwards"]:
        assert set(udp) == keys_of(contract.UdpForwardStatus)
    assert set(shown["dns"]) == keys_of(contract.DnsStatus)
    for upstream in shown["dns"]["upstreams"]:
        assert set(upstream) == keys_of(contract.UpstreamStatus)
    assert shown["tunnel"]["forwards"][1]["allowed_peers"] == ["192.0.2.0/24"]


@pytest.mark.parametrize(
    ("source", "typed"),
    [
        (ResolverStats, contract.DnsStatus),
        (UpstreamHealth, contract.UpstreamStatus),
        (TunnelState, contract.TunnelStatus),
        (ForwardState, contract.ForwardStatus),
        (UdpForwardState, contract.UdpForwardStatus),
    ],
)
def test_every_counter_of_the_daemon_is_in_the_contract(source: type, typed: type) -> None:
    """A counter added to the resolver or the tunnel must be added to the status too."""
    counters = {f.name for f in dataclasses.fields(source)} - {"forward"}
    assert counters <= keys_of(typed)


def test_it_shows_what_the_parts_report_themselves() -> None:
    """No change for readers of `status --json`: the same values as the parts' own dicts."""
    shown = build()
    assert shown["tunnel"] == sample_tunnel().to_dict()
    assert shown["dns"] == {**sample_stats().to_dict(), "listen": ["127.0.0.1:53"]}


def test_a_daemon_not_started_yet_reports_a_whole_snapshot(tmp_path: Path) -> None:
    daemon = Daemon(parse_config(""), RunOptions(control_socket=tmp_path / "control.sock"))
    shown: dict[str, Any] = dict(daemon.snapshot())
    assert set(shown) == keys_of(contract.Snapshot)
    assert shown["tunnel"] is None
    assert set(shown["dns"]) == keys_of(contract.DnsStatus)
    assert shown["dns"]["listen"] == [] and shown["dns"]["forwarded"] == 0


class Closer:
    """Stands in for a part whose close fails: no real part fails to close on request."""

    def __init__(self, error: BaseException | None = None, hang: bool = False):
        self.error, self.hang, self.closed = error, hang, False

    async def close(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        self.closed = True


async def test_close_logs_what_it_fails_to_close_and_closes_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = Daemon(parse_config(""), RunOptions(control_socket=tmp_path / "control.sock"))
    control, tunnel, resolver = (
        Closer(OSError(28, "No space left on device")),
        Closer(hang=True),
        Closer(),
    )
    daemon.control, daemon.tunnel, daemon.resolver = control, tunnel, resolver  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="blitzdns"):
        await daemon.close()
    assert resolver.closed
    lines = [r.getMessage() for r in caplog.records]
    assert "closing the control socket failed: cannot write: no space left on the device" in lines
    assert any(line.startswith("closing the tunnel took longer than") for line in lines), lines
    assert daemon.control is daemon.tunnel is daemon.resolver is None


async def test_close_logs_a_bug_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = Daemon(parse_config(""), RunOptions(control_socket=tmp_path / "control.sock"))
    daemon.resolver = Closer(RuntimeError("a bug"))  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="blitzdns"):
        await daemon.close()
    [record] = caplog.records
    assert record.getMessage() == "closing the resolver failed"
    assert record.exc_info is not None and str(record.exc_info[1]) == "a bug"
