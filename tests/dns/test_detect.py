"""Upstream detection from resolv.conf files, and its refusal to pick the stub itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from blitzdns.config import Endpoint
from blitzdns.dns.detect import detect_upstreams
from blitzdns.dns.errors import NoUpstreams
from blitzdns.errors import UpstreamLoop

LISTEN = (Endpoint("127.0.0.1", 53),)


def resolv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_systemd_resolved_upstreams_come_first(tmp_path: Path) -> None:
    systemd = resolv(
        tmp_path, "systemd", "# real ones\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n"
    )
    etc = resolv(tmp_path, "etc", "nameserver 127.0.0.53\noptions edns0 trust-ad\n")
    found = detect_upstreams(LISTEN, resolv_paths=(systemd, etc))
    assert found == (Endpoint("10.0.0.1", 53), Endpoint("fe80::1%eth0", 53))


def test_etc_resolv_conf_when_systemd_is_absent(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "search dartmouth.edu\nnameserver 192.0.2.53\n")
    assert detect_upstreams(LISTEN, resolv_paths=(tmp_path / "absent", etc)) == (
        Endpoint("192.0.2.53", 53),
    )


def test_saved_nameservers_are_used_first(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "nameserver 127.0.0.1\n")
    saved = (Endpoint("192.0.2.1", 53),)
    assert detect_upstreams(LISTEN, saved=saved, resolv_paths=(etc,)) == saved


def test_the_resolved_stub_is_a_loop(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "nameserver 127.0.0.53\n")
    with pytest.raises(UpstreamLoop, match=r"127\.0\.0\.53:53.*systemd-resolved.*--upstream"):
        detect_upstreams(LISTEN, resolv_paths=(tmp_path / "absent", etc))


def test_our_own_listen_address_is_a_loop(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "nameserver 127.0.0.1\nnameserver 0.0.0.0\n")
    with pytest.raises(UpstreamLoop, match=r"own listen address 127\.0\.0\.1:53"):
        detect_upstreams(LISTEN, resolv_paths=(etc,))
    wildcard = (Endpoint("0.0.0.0", 53),)
    with pytest.raises(UpstreamLoop, match=r"listens on 0\.0\.0\.0:53"):
        detect_upstreams(wildcard, resolv_paths=(resolv(tmp_path, "x", "nameserver 127.0.0.9\n"),))


def test_a_local_stub_on_another_port_is_kept(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "nameserver 127.0.0.1\n")
    assert detect_upstreams((Endpoint("127.0.0.1", 5300),), resolv_paths=(etc,)) == (
        Endpoint("127.0.0.1", 53),
    )


def test_saved_loop_falls_back_to_the_files(tmp_path: Path) -> None:
    etc = resolv(tmp_path, "etc", "nameserver 192.0.2.7\n")
    found = detect_upstreams(LISTEN, saved=(Endpoint("127.0.0.1", 53),), resolv_paths=(etc,))
    assert found == (Endpoint("192.0.2.7", 53),)


def test_no_candidates_says_to_pass_upstream(tmp_path: Path) -> None:
    empty = resolv(tmp_path, "etc", "# nothing here\nsearch example.com\nnameserver bogus\n")
    with pytest.raises(NoUpstreams, match="pass one with --upstream"):
        detect_upstreams(LISTEN, resolv_paths=(tmp_path / "absent", empty))
    with pytest.raises(NoUpstreams):
        detect_upstreams(LISTEN, resolv_paths=())
