"""The per-platform plans: pure, so every target (macOS and Windows included) is checked here.

macOS and NRPT outputs are compared with reviewed golden files (tests/golden/), since neither
platform runs here; see tests/golden/REVIEW.md for the line-by-line check against resolver(5)
and the DnsClient cmdlet docs.
"""

from __future__ import annotations

import pytest

from blitzdns.config import Config, parse_config
from blitzdns.errors import ConfigError, UsageError
from blitzdns.system.resolvers import TARGETS, build_plan

from .conftest import GOLDEN


def test_macos_matches_the_reviewed_golden_file(split_config: Config) -> None:
    plan = build_plan(split_config, "macos")
    assert [f.path for f in plan.files] == ["/etc/resolver/dartmouth.edu"]
    assert plan.files[0].content == (GOLDEN / "macos-dartmouth.edu").read_bytes()
    assert plan.reload == (("dscacheutil", "-flushcache"), ("killall", "-HUP", "mDNSResponder"))
    assert "dscacheutil -q host -a name dnd.dartmouth.edu" in plan.checks
    assert any("bare names" in line for line in plan.cannot)


def test_macos_with_two_stubs_on_different_ports_uses_the_address_dot_port_form() -> None:
    config = parse_config('[dns]\nlisten = ["127.0.0.1:53535", "[::1]:5300"]\n')
    body = build_plan(config, "macos").files[0].content.decode()
    assert body.splitlines()[:3] == ["nameserver 127.0.0.1", "nameserver ::1.5300", "port 53535"]


def test_nrpt_matches_the_reviewed_golden_file(port53_config: Config) -> None:
    plan = build_plan(port53_config, "nrpt")
    golden = (GOLDEN / "nrpt-install.ps1").read_text().splitlines()
    assert list(plan.commands) == [line for line in golden if not line.startswith("#")]
    undo = (GOLDEN / "nrpt-uninstall.ps1").read_text().splitlines()
    assert list(plan.undo_commands) == [line for line in undo if not line.startswith("#")]
    assert plan.files == ()
    assert plan.command_shell[0] == "powershell"
    assert "Resolve-DnsName dnd.dartmouth.edu" in plan.checks


def test_systemd_resolved_drop_in_uses_a_search_domain_for_short_names(
    split_config: Config,
) -> None:
    plan = build_plan(split_config, "systemd-resolved")
    (item,) = plan.files
    assert item.path == "/etc/systemd/resolved.conf.d/50-blitzdns.conf"
    lines = [ln for ln in item.content.decode().splitlines() if not ln.startswith("#")]
    assert lines[:2] == ["[Resolve]", "DNS=127.0.0.1:53535"]
    domains = lines[2].removeprefix("Domains=").split()
    # The domain as a search domain, and every protected name routed on its own, so a
    # link whose search domain is also dartmouth.edu cannot tie with (and race) the stub.
    assert domains[0] == "dartmouth.edu"
    assert {"~dnd.dartmouth.edu", "~kringle.dartmouth.edu", "~dasher.dartmouth.edu"} <= set(domains)
    assert all(d.startswith("~") and d.endswith(".dartmouth.edu") for d in domains[1:])
    assert any("search domains" in line for line in plan.can)
    assert any("246" in line for line in plan.cannot)
    assert "resolvectl query dnd" in plan.checks


def test_systemd_resolved_on_port_53_writes_a_bare_address(port53_config: Config) -> None:
    content = build_plan(port53_config, "systemd-resolved").files[0].content.decode()
    assert "DNS=127.0.0.1 ::1\n" in content
    assert not any("246" in line for line in build_plan(port53_config, "systemd-resolved").cannot)


def test_networkmanager_sends_domains_and_each_short_name(split_config: Config) -> None:
    plan = build_plan(split_config, "networkmanager")
    main, snippet = plan.files
    assert main.path == "/etc/NetworkManager/conf.d/90-blitzdns.conf"
    assert "[main]\ndns=dnsmasq\n" in main.content.decode()
    servers = [ln for ln in snippet.content.decode().splitlines() if ln.startswith("server=")]
    assert servers[0] == "server=/dartmouth.edu/127.0.0.1#53535"
    assert "server=/dnd/127.0.0.1#53535" in servers
    assert len(servers) == 1 + len(split_config.short_names())
    assert plan.reload == (("nmcli", "general", "reload"),)


def test_resolvconf_keeps_search_and_options_and_saves_the_old_nameservers(
    port53_config: Config,
) -> None:
    before = (
        b"# from DHCP\ndomain home.example\nnameserver 192.0.2.53\nnameserver 127.0.0.1\n"
        b"nameserver 2001:db8::53\noptions edns0 trust-ad\n"
    )
    plan = build_plan(port53_config, "resolvconf", current_resolv_conf=before)
    body = [ln for ln in plan.files[0].content.decode().splitlines() if not ln.startswith("#")]
    assert body == [
        "search dartmouth.edu home.example",
        "nameserver 127.0.0.1",
        "nameserver ::1",
        "options edns0 trust-ad",
    ]
    # 127.0.0.1 is the stub itself: forwarding there would loop.
    assert plan.upstreams == ("192.0.2.53", "2001:db8::53")
    assert plan.whole_resolver


def test_whole_resolver_targets_refuse_a_stub_off_port_53(split_config: Config) -> None:
    for target in ("resolvconf", "nrpt"):
        with pytest.raises(ConfigError) as caught:
            build_plan(split_config, target)
        assert caught.value.key == "dns.listen"
        assert "port 53" in str(caught.value)
        assert "127.0.0.1:53535" in str(caught.value)


def test_a_wildcard_listen_address_is_reached_over_loopback() -> None:
    config = parse_config('[dns]\nlisten = ["0.0.0.0:53", "192.0.2.7:53"]\n')
    stub = build_plan(config, "resolvconf").names.stub
    assert [str(e) for e in stub] == ["127.0.0.1:53", "192.0.2.7:53"]


def test_unknown_target_is_a_usage_error(split_config: Config) -> None:
    with pytest.raises(UsageError, match="expected one of"):
        build_plan(split_config, "bind9")


def test_a_config_with_only_short_names_is_refused_by_domain_only_targets() -> None:
    config = parse_config(
        'preset = "none"\n[dns]\nlisten = ["127.0.0.1:53"]\n[services]\nx = { port = 7 }\n'
        '[hosts.lab]\nnames = ["lab"]\nservices = ["x"]\n'
    )
    for target in ("macos", "systemd-resolved", "nrpt"):
        with pytest.raises(ConfigError, match="no protected name"):
            build_plan(config, target)
    snippet = build_plan(config, "networkmanager").files[1].content.decode()
    assert "server=/lab/127.0.0.1#53" in snippet
    assert build_plan(config, "resolvconf").names.examples == ("lab",)


def test_every_target_says_what_it_can_do_and_how_to_test(port53_config: Config) -> None:
    for target in TARGETS:
        plan = build_plan(port53_config, target)
        assert plan.can and plan.checks
        assert plan.names.domains == ("dartmouth.edu",)
