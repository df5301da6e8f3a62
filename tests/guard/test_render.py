"""The guard's rules, rendered purely: golden files for every target (reviewed against the
platforms' documentation in tests/golden/REVIEW.md), the address rules, the address book."""

from __future__ import annotations

import subprocess

import pytest

from blitzdns.config import Config, parse_config
from blitzdns.errors import UsageError
from blitzdns.system.guard import (
    NFT_FILE,
    PF_ANCHOR_FILE,
    PF_CONF,
    AddressBook,
    build_guard_plan,
    guard_rules,
    pf_conf_with_anchor,
    render_nftables,
)

from .conftest import GOLDEN, need_netns

ADDRESSES = {"dnd": ["198.51.100.2", "2001:db8::2"], "dasher": ["198.51.100.3", "198.51.100.3"]}


@pytest.fixture
def config() -> Config:
    return parse_config('[tunnel]\nhosts = ["dnd", "dasher"]\n[guard]\neverywhere = ["notify"]\n')


def golden_lines(name: str) -> list[str]:
    return [ln for ln in (GOLDEN / name).read_text().splitlines() if not ln.startswith("# ")]


def test_nftables_matches_the_reviewed_golden_file(config: Config) -> None:
    rules = guard_rules(config, ADDRESSES, config.guard.everywhere)
    plan = build_guard_plan("nftables", rules)
    assert [f.path for f in plan.files] == [NFT_FILE]
    assert plan.files[0].content == (GOLDEN / "guard.nft").read_bytes()
    assert plan.ruleset == (GOLDEN / "guard.nft").read_text()
    assert plan.undo_commands == ("add table inet blitzdns; delete table inet blitzdns",)


def test_pf_matches_the_reviewed_golden_files(config: Config) -> None:
    rules = guard_rules(config, ADDRESSES, config.guard.everywhere)
    plan = build_guard_plan("pf", rules, current_pf_conf=(GOLDEN / "pf.conf-macos").read_bytes())
    files = {f.path: f.content for f in plan.files}
    assert files[PF_ANCHOR_FILE] == (GOLDEN / "guard-pf-anchor").read_bytes()
    assert files[PF_CONF] == (GOLDEN / "guard-pf.conf-macos").read_bytes()
    assert plan.reload == (("pfctl", "-f", "/etc/pf.conf"),)
    assert plan.undo_commands == ("pfctl -a blitzdns -F rules",)


def test_pf_conf_gets_the_anchor_lines_once() -> None:
    once = pf_conf_with_anchor((GOLDEN / "pf.conf-macos").read_bytes())
    assert pf_conf_with_anchor(once) == once
    lines = once.decode().splitlines()
    # The filter anchor after the last anchor rule, the load rule after the last load rule.
    assert lines.index('anchor "blitzdns"') == lines.index('anchor "com.apple/*"') + 1
    assert lines[-1] == 'load anchor "blitzdns" from "/etc/pf.anchors/blitzdns"'
    assert pf_conf_with_anchor(None).decode().splitlines() == [
        'anchor "blitzdns"',
        'load anchor "blitzdns" from "/etc/pf.anchors/blitzdns"',
    ]


def test_windows_matches_the_reviewed_golden_files(config: Config) -> None:
    rules = guard_rules(config, ADDRESSES, config.guard.everywhere)
    plan = build_guard_plan("windows", rules)
    assert list(plan.commands) == golden_lines("guard-windows-install.ps1")
    assert list(plan.undo_commands) == golden_lines("guard-windows-uninstall.ps1")
    assert plan.files == ()
    assert plan.command_shell[0] == "powershell"


def test_the_golden_nftables_file_is_valid_for_the_real_nft() -> None:
    need_netns()
    done = subprocess.run(
        ["unshare", "-n", "nft", "-c", "-f", str(GOLDEN / "guard.nft")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_loopback_and_wildcards_are_never_refused_and_unknown_hosts_are_named(
    config: Config,
) -> None:
    rules = guard_rules(config, {"dnd": ["127.77.0.1", "::1", "0.0.0.0", "224.0.0.1", "x"]})
    assert rules.blocks == ()
    assert rules.unresolved == ("dnd", "dasher")
    assert rules.address_count == 0


def test_a_service_whose_target_port_differs_refuses_both_ports() -> None:
    config = parse_config(
        'preset = "none"\n[services]\nnews = { port = 1119, remote_port = 119 }\n'
        '[hosts.news]\nnames = ["news.example.org"]\nservices = ["news"]\n'
    )
    (block,) = guard_rules(config, {"news": ["192.0.2.9"]}).blocks
    assert block.ports == (119, 1119)


def test_everywhere_names_a_service(config: Config) -> None:
    with pytest.raises(UsageError, match="no service named 'nope'"):
        guard_rules(config, {}, ["nope"])


def test_rendering_is_stable_whatever_order_the_addresses_came_in(config: Config) -> None:
    one = render_nftables(guard_rules(config, ADDRESSES))
    turned = {k: list(reversed(v)) for k, v in ADDRESSES.items()}
    assert render_nftables(guard_rules(config, turned)) == one


def test_the_address_book_keeps_a_rotated_address_for_its_keep_time() -> None:
    book = AddressBook().add("dnd", ["192.0.2.1"], now=0, ttl=60, keep_s=600)
    book = book.add("dnd", ["192.0.2.2"], now=100, ttl=60, keep_s=600)
    assert book.addresses() == {"dnd": ("192.0.2.1", "192.0.2.2")}
    assert book.expire(now=599).addresses() == {"dnd": ("192.0.2.1", "192.0.2.2")}
    assert book.expire(now=601).addresses() == {"dnd": ("192.0.2.2",)}
    assert book.expire(now=701).addresses() == {}
    # A host no longer protected drops out at once.
    assert book.expire(now=0, hosts=["dasher"]).addresses() == {}
    assert book.count() == 2
