"""The config loader: preset merge, stable mouths, and one clear error per mistake."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from blitzdns.config import Endpoint, load_config, normalise_name, parse_config
from blitzdns.config_template import TEMPLATE
from blitzdns.errors import ConfigError


def test_preset_alone_protects_dnd_the_reindeer_and_newshost() -> None:
    config = parse_config("")
    keys = [h.key for h in config.hosts]
    assert keys[0] == "dnd" and "dasher" in keys and "blitzen" in keys and keys[-1] == "newshost"
    dnd = config.host("dnd")
    assert dnd.names == ("dnd.dartmouth.edu", "kringle.dartmouth.edu", "dnd", "kringle")
    assert dnd.mouth == ipaddress.IPv4Address("127.77.0.1")
    assert len({h.mouth for h in config.hosts}) == len(config.hosts)
    ports = {(f.host, f.port) for f in config.forwards()}
    assert ("dnd", 902) in ports and ("dasher", 2151) in ports
    assert ("newshost", 1119) in ports and ("newshost", 119) in ports
    assert config.domains() == ("dartmouth.edu",)


def test_template_is_the_preset_with_comments() -> None:
    assert parse_config(TEMPLATE).to_dict() == parse_config("").to_dict()


def test_mouths_do_not_move_when_hosts_come_and_go() -> None:
    extra = """
[services]
imap = { port = 143 }
ldap = { port = 389 }
[hosts.imap]
names = ["imap.example.org"]
services = ["imap"]
[hosts.ldap]
names = ["ldap.example.org"]
services = ["ldap"]
"""
    with_both = parse_config(extra)
    only_imap = parse_config(extra.split("[hosts.ldap]", maxsplit=1)[0])
    assert with_both.host("imap").mouth == only_imap.host("imap").mouth
    assert with_both.host("dasher").mouth == only_imap.host("dasher").mouth
    assert with_both.host("imap").mouth in with_both.tunnel.mouths


def test_file_extends_and_overrides_the_preset_host() -> None:
    config = parse_config(
        """
[services]
mail = { port = 2151, remote_port = 12151 }
[hosts.dasher]
mouth = "127.77.0.200"
remote = "10-dasher.internal"
"""
    )
    dasher = config.host("dasher")
    assert dasher.mouth == ipaddress.IPv4Address("127.77.0.200")
    assert dasher.names == ("dasher.dartmouth.edu", "dasher")
    forward = next(f for f in config.forwards() if f.host == "dasher")
    assert (forward.mouth, forward.port, forward.remote, forward.remote_port) == (
        "127.77.0.200",
        2151,
        "10-dasher.internal",
        12151,
    )


def test_tunnel_hosts_restricts_what_is_protected() -> None:
    config = parse_config('[tunnel]\nhosts = ["dnd", "dasher"]\n')
    assert [h.key for h in config.hosts] == ["dnd", "dasher"]
    assert {f.host for f in config.forwards()} == {"dnd", "dasher"}


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("[dns]\nlisten = ['nowhere:53']\n", "dns.listen[0]", "ADDR[:PORT]"),
        ("[dns]\nttl = -1\n", "dns.ttl", "whole number"),
        ("[dns]\nbogus = 1\n", "dns.bogus", "unknown key"),
        ("colour = 'blue'\n", "colour", "unknown key"),
        ("preset = 'pop3'\n", "preset", "expected one of"),
        ("[tunnel]\nmouths = '10.0.0.0/24'\n", "tunnel.mouths", "127.0.0.0/8"),
        ("[hosts.x]\nnames = ['dnd']\n", "hosts.x.names[0]", "already belongs to host 'dnd'"),
        ("[hosts.x]\nnames = ['x.org']\nservices = ['nope']\n", "hosts.x.services[0]", "nope"),
        ("[services]\nx = { port = 9, step = 'notify' }\n", "services.x.step", "udp"),
        ("[services]\nx = { port = 9, proto = 'udp', step = 'x' }\n", "services.x.step", "notify"),
        ("[services]\nx = { port = 9, proto = 'udp', idle_s = 0 }\n", "services.x.idle_s", "1"),
        ("[hosts.x]\nnames = ['bad..name']\n", "hosts.x.names[0]", "not a host name"),
        ("[hosts.dasher]\nmouth = '127.77.0.1'\n", "hosts.dasher.mouth", "dnd"),
        ("[tunnel]\nhosts = ['rudolph']\n", "tunnel.hosts[0]", "rudolph"),
        ("[locations.x]\nmatch = [{}]\n", "locations.x.match[0]", "never match"),
        ("[resolver]\ntarget = 'hosts-file'\n", "resolver.target", "expected one of"),
        ("[tunnel]\ngateways = ['@@@']\n", "tunnel.gateways[0]", "[user@]host[:port]"),
        ("[tunnel]\ngateways = ['gw:99999']\n", "tunnel.gateways[0]", "[user@]host[:port]"),
        (
            "[tunnel]\nidentity_files = ['/nonexistent/key']\n",
            "tunnel.identity_files[0]",
            "no such",
        ),
        ("[tunnel]\nssh_config = '/nonexistent/cfg'\n", "tunnel.ssh_config", "no such file"),
        ("[tunnel]\nwait_for_link_s = 0\n", "tunnel.wait_for_link_s", "from 0.1 to 600"),
        ("[tunnel]\nknown_hosts = '~nosuchuser9/kh'\n", "tunnel.known_hosts", "no such user"),
        ("[tunnel]\ngateways = ['user@@']\n", "tunnel.gateways[0]", "[user@]host[:port]"),
        (
            "[hosts.dnd]\nmouth6 = '::1'\n[hosts.newshost]\nmouth6 = '::1'\n"
            "[services]\ndnd = { port = 119 }\n",
            "hosts.newshost.mouth6",
            "one host per port",
        ),
    ],
)
def test_each_mistake_names_the_key_and_what_was_expected(
    text: str, key: str, expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert info.value.file == str(path)
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{path}: {key}: ")


def test_two_hosts_on_one_shared_address_and_port_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            "[[shared]]\naddress = '192.0.2.1'\nallow = ['192.0.2.0/24']\n"
            "hosts = ['dasher', 'dancer']\n"
        )
    assert "'dancer' and 'dasher' would both need 192.0.2.1 port 2151" in str(info.value)


def test_shared_address_adds_filtered_forwards() -> None:
    config = parse_config(
        "[[shared]]\naddress = '192.0.2.1'\nallow = ['192.0.2.0/24']\nhosts = ['dnd', 'dasher']\n"
    )
    shared = [f for f in config.forwards() if f.allowed_peers]
    assert {(f.mouth, f.port) for f in shared} == {("192.0.2.1", 902), ("192.0.2.1", 2151)}
    assert all(f.allowed_peers == (ipaddress.ip_network("192.0.2.0/24"),) for f in shared)


def test_locations_override_gateways_hosts_and_upstreams() -> None:
    config = parse_config(
        """
[tunnel]
gateways = ["far.example.org"]
[locations.campus]
match = { subnet = "129.170.0.0/16" }
gateways = ["near.example.org"]
upstreams = ["192.0.2.53"]
hosts = ["dnd"]
"""
    )
    campus = config.at_location("campus")
    assert campus.tunnel.gateways == ("near.example.org",)
    assert campus.dns.upstreams == (Endpoint("192.0.2.53", 53),)
    assert [h.key for h in campus.hosts] == ["dnd"]
    assert config.tunnel.gateways == ("far.example.org",)
    with pytest.raises(ConfigError, match="no location named 'home'"):
        config.at_location("home")


def test_missing_and_invalid_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[dns\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(bad)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", Endpoint("127.0.0.1", 53)),
        ("127.0.0.1:5353", Endpoint("127.0.0.1", 5353)),
        ("[::1]:53", Endpoint("::1", 53)),
        ("::1", Endpoint("::1", 53)),
    ],
)
def test_endpoints(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize("text", ["host:53", "127.0.0.1:0", "127.0.0.1:99999", "[::1"])
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(text)


def test_a_label_ending_in_a_newline_is_not_a_name() -> None:
    for name in ("a\n.example", "x.b\n.example"):  # (ends are stripped first)
        with pytest.raises(ValueError):
            normalise_name(name)


def test_names_are_normalised() -> None:
    assert normalise_name("DaSheR.Dartmouth.EDU.") == "dasher.dartmouth.edu"
    with pytest.raises(ValueError):
        normalise_name("-bad.example")


def test_under_sudo_the_invoking_users_file_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import pwd

    from blitzdns.config import default_config_paths

    if os.geteuid() != 0:
        pytest.skip("only root reads SUDO_USER")
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("SUDO_USER", "nobody")
    paths = default_config_paths()
    assert paths[0] == Path(nobody.pw_dir) / ".config" / "blitzdns" / "config.toml"
    assert paths[-1] == Path("/etc/blitzdns/config.toml")


def test_an_ipv6_mouth_gets_its_own_forwards() -> None:
    config = parse_config("[hosts.dnd]\nmouth6 = '::1'\n")
    mouths = {(f.mouth, f.port) for f in config.forwards() if f.host == "dnd"}
    assert mouths == {("127.77.0.1", 902), ("::1", 902)}


@pytest.mark.parametrize("text", ["gw", "jsmith@gw:2222", "user@[::1]:22", "::1", "h.example:22"])
def test_gateways_the_tunnel_accepts_the_config_accepts(text: str) -> None:
    from tunnel import Gateway

    Gateway.parse(text)
    assert parse_config(f"[tunnel]\ngateways = ['{text}']\n").tunnel.gateways == (text,)


def test_a_bad_gateway_flag_is_refused_when_parsed() -> None:
    from blitzdns.effective import Flags, layered
    from blitzdns.errors import UsageError

    with pytest.raises(UsageError, match=r"--gateway gw:0: expected \[user@\]host\[:port\]"):
        layered(parse_config(""), flags=Flags(gateways=("gw:0",)))


def test_a_udp_service_on_a_host_is_a_udp_forward() -> None:
    """The preset's notify (UDP 2154, with the Notify step) next to dartnotify (TCP 2152),
    on a host that NOTIFYSERV names (``discover --write`` adds one like this)."""
    config = parse_config(
        "[hosts.notifier]\nnames = ['notifier.dartmouth.edu']\n"
        "services = ['dartnotify', 'notify']\n"
    )
    forwards = {(f.port, f.proto) for f in config.forwards() if f.host == "notifier"}
    assert forwards == {(2152, "tcp"), (2154, "udp")}
    notify = config.services["notify"]
    assert (notify.step, notify.idle_s, notify.max_datagram) == ("notify", 900, 8192)
    assert all(f.proto == "tcp" for f in config.forwards() if f.host != "notifier")


def test_plan_lists_udp_forwards() -> None:
    from blitzdns.plan import plan_dict, render_plan

    config = parse_config(
        "[hosts.notifier]\nnames = ['notifier.dartmouth.edu']\n"
        "services = ['dartnotify', 'notify']\n"
    )
    lines = render_plan(config).splitlines()
    [udp] = [line for line in lines if "(notifier/notify)" in line]
    assert ":2154" in udp and "notifier.dartmouth.edu:2154 UDP" in udp
    [tcp] = [line for line in lines if "(notifier/dartnotify)" in line]
    assert "UDP" not in tcp
    protos = {(f["service"], f["proto"]) for f in plan_dict(config)["forwards"]}
    assert ("notify", "udp") in protos and ("dartnotify", "tcp") in protos
