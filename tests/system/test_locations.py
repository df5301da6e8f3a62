"""Location matching: a table over recorded facts, the parsers over recorded command output,
and a network namespace where changing the default route changes the answer."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from blitzdns.config import Config, parse_config
from blitzdns.system import parsers
from blitzdns.system.locations import Facts, check_rule, match_location

from .conftest import DATA, need_namespaces, run_in_namespace

LOCATIONS = """
[locations.campus]
match = [{ subnet = "129.170.0.0/16" }, { search_domain = "dartmouth.edu" }]
gateways = ["jsmith@gateway.dartmouth.edu"]
[locations.dorm]
match = [{ ssid = "Dartmouth Public", gateway = "10.31.0.1" }]
gateways = ["jsmith@nimbus.dartmouth.edu"]
[locations.home]
match = [{ gateway = "192.168.1.1" }, { subnet = "fd00:1::/64" }]
hosts = ["dnd", "dasher"]
resolver_target = "resolvconf"
"""


@pytest.fixture(scope="module")
def config() -> Config:
    return parse_config(LOCATIONS)


def recorded(
    route: str, addr: str, search: tuple[str, ...] = (), ssids: tuple[str, ...] = ()
) -> Facts:
    """Facts built by the real parsers from `ip -j` output recorded on real links."""
    return Facts.make(
        parsers.parse_ip_route((DATA / route).read_text()),
        parsers.parse_ip_addr((DATA / addr).read_text()),
        search,
        ssids,
    )


def facts(
    gateways: tuple[str, ...] = (),
    addresses: tuple[str, ...] = (),
    search: tuple[str, ...] = (),
    ssids: tuple[str, ...] = (),
) -> Facts:
    return Facts.make(
        (ipaddress.ip_address(g) for g in gateways),
        (ipaddress.ip_interface(a) for a in addresses),
        search,
        ssids,
    )


@pytest.mark.parametrize(
    ("observed", "expected", "reason"),
    [
        # Recorded on a veth with 129.170.16.40/22 and a default route via 129.170.16.1.
        (recorded("route-campus.json", "addr-campus.json"), "campus", "129.170.16.1 is in"),
        # A cable elsewhere, but DHCP hands out a campus search domain below dartmouth.edu.
        (
            recorded("route-host.json", "addr-host.json", search=("Kiewit.Dartmouth.EDU.",)),
            "campus",
            "search domain kiewit.dartmouth.edu is within dartmouth.edu",
        ),
        (facts(("10.31.0.1",), ("10.31.4.7/16",), (), ("Dartmouth Public",)), "dorm", "Wi-Fi"),
        (facts(("192.168.1.1",), ("192.168.1.20/24",)), "home", "default gateway is 192.168.1.1"),
        (facts((), ("fd00:1::20/64",)), "home", "address fd00:1::20/64 is in fd00:1::/64"),
        # Both rules of a location may hold; the first location in file order wins.
        (facts(("192.168.1.1",), ("129.170.3.3/16",)), "campus", "129.170.3.3/16 is in"),
    ],
)
def test_the_first_location_with_a_rule_that_holds_wins(
    config: Config, observed: Facts, expected: str, reason: str
) -> None:
    match = match_location(config, observed)
    assert match is not None
    assert match.name == expected
    assert any(reason in line for line in match.reasons), match.reasons


@pytest.mark.parametrize(
    "observed",
    [
        recorded("route-host.json", "addr-host.json"),
        recorded("route-empty.json", "addr-lo-only.json"),
        recorded("route-multipath.json", "addr-multi.json"),
        # The dorm rule needs both keys: the gateway alone is not the dorm.
        facts(("10.31.0.1",), ("10.31.4.7/16",), (), ("eduroam",)),
        # notdartmouth.edu is not below dartmouth.edu.
        facts((), (), ("notdartmouth.edu",)),
        # SSIDs compare exactly.
        facts(("10.31.0.1",), (), (), ("dartmouth public",)),
    ],
)
def test_no_location_when_no_rule_holds(config: Config, observed: Facts) -> None:
    assert match_location(config, observed) is None


def test_a_verdict_explains_what_failed(config: Config) -> None:
    dorm_rule = config.locations["dorm"].match[0]
    verdict = check_rule("dorm", dorm_rule, facts(("10.31.0.1",), (), (), ("eduroam",)))
    assert not verdict.matched
    assert verdict.held == ("default gateway is 10.31.0.1",)
    assert verdict.failed == ("not on Wi-Fi network 'Dartmouth Public'",)


def test_facts_are_comparable_across_readings() -> None:
    first = facts(("10.0.0.1", "fd00::1"), ("10.0.0.5/24",), ("B.example", "a.example."))
    again = facts(("fd00::1", "10.0.0.1", "10.0.0.1"), ("10.0.0.5/24",), ("a.example", "b.example"))
    assert first == again
    assert first.search_domains == ("a.example", "b.example")


# --------------------------------------------------------------------------- parsers


def test_ip_route_parser_reads_plain_multipath_and_ipv6_defaults() -> None:
    assert parsers.parse_ip_route((DATA / "route-host.json").read_text()) == (
        ipaddress.ip_address("192.0.2.1"),
    )
    assert parsers.parse_ip_route((DATA / "route-multipath.json").read_text()) == (
        ipaddress.ip_address("10.9.0.1"),
        ipaddress.ip_address("10.8.0.1"),
    )
    assert parsers.parse_ip_route((DATA / "route6-default.json").read_text()) == (
        ipaddress.ip_address("2001:db8::1"),
    )
    assert parsers.parse_ip_route((DATA / "route-empty.json").read_text()) == ()
    assert parsers.parse_ip_route("not json") == ()


def test_ip_addr_parser_skips_loopback_and_link_local() -> None:
    found = parsers.parse_ip_addr((DATA / "addr-multi.json").read_text())
    assert [str(a) for a in found] == ["10.8.0.2/24", "10.9.0.2/24", "2001:db8::2/64"]
    assert parsers.parse_ip_addr((DATA / "addr-lo-only.json").read_text()) == ()


def test_search_domain_parsers() -> None:
    text = "domain old.example\n# search commented.example\nsearch a.example B.example.\n"
    assert parsers.parse_resolv_conf_search(text) == ("a.example", "b.example")
    resolvectl = (
        "Global: dartmouth.edu\n"
        "Link 2 (eth0): kiewit.dartmouth.edu ~corp.example\n"
        "Link 3 (wlan0):\n"
    )
    assert parsers.parse_resolvectl_domain(resolvectl) == ("kiewit.dartmouth.edu",)


def test_wifi_parsers() -> None:
    assert parsers.parse_nmcli_ssids("no:Other\nyes:Cafe\\: Free\n") == ("Cafe: Free",)
    iw = "phy#0\n\tInterface wlan0\n\t\tssid Dartmouth Public\n\t\ttype managed\n"
    assert parsers.parse_iw_dev(iw) == ("Dartmouth Public",)


def test_macos_parsers() -> None:
    route = "   route to: default\ndestination: default\n    gateway: 192.168.1.1\n"
    assert parsers.parse_macos_route(route) == (ipaddress.ip_address("192.168.1.1"),)
    ifconfig = (
        "en0: flags=8863<UP>\n\tinet 192.168.1.20 netmask 0xffffff00 broadcast 192.168.1.255\n"
        "\tinet6 fe80::1%en0 prefixlen 64 scopeid 0x4\n\tinet6 fd00:1::20 prefixlen 64\n"
        "lo0: flags=8049<UP>\n\tinet 127.0.0.1 netmask 0xff000000\n"
    )
    assert [str(a) for a in parsers.parse_ifconfig(ifconfig)] == [
        "192.168.1.20/24",
        "fd00:1::20/64",
    ]
    scutil = "resolver #1\n  search domain[0] : kiewit.dartmouth.edu\n  nameserver[0] : 10.0.0.1\n"
    assert parsers.parse_scutil_dns(scutil) == ("kiewit.dartmouth.edu",)
    assert parsers.parse_airport_network("Current Wi-Fi Network: Dorm\n") == ("Dorm",)


def test_facts_ignore_the_search_domain_blitzdns_itself_installed(tmp_path: Path) -> None:
    """After the resolvconf target adds `search dartmouth.edu`, facts read the original."""
    from blitzdns.system import install as installer
    from blitzdns.system import record as install_record
    from blitzdns.system.resolvers import build_plan

    root = tmp_path / "machine"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").write_bytes(b"search home.example\nnameserver 192.0.2.53\n")
    config = parse_config('[dns]\nlisten = ["127.0.0.1:53"]\n')
    installer.install(build_plan(config, "resolvconf"), root, sudo_hint="x")
    assert "dartmouth.edu" in (root / "etc/resolv.conf").read_text()
    original = install_record.original_bytes(Path("/etc/resolv.conf"), root)
    assert original is not None
    assert parsers.parse_resolv_conf_search(original.decode()) == ("home.example",)


# --------------------------------------------------------------------------- live system


def test_changing_the_default_route_changes_the_location(tmp_path: Path) -> None:
    need_namespaces()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[locations.campus]\nmatch = [{ gateway = "129.170.16.1" }]\n'
        '[locations.home]\nmatch = [{ gateway = "10.9.0.1" }]\n'
        '[locations.office]\nmatch = [{ search_domain = "corp.example", gateway = "10.9.0.7" }]\n'
    )
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("search corp.example\nnameserver 10.9.0.1\n")
    done = run_in_namespace(
        "facts",
        str(config_file),
        str(resolv_conf),
        "10.9.0.1",
        "129.170.16.1",
        "10.9.0.7",
        "10.9.0.254",
    )
    assert done.returncode == 0, done.stderr
    readings = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["location"] for r in readings] == ["home", "campus", "office", None]
    assert [r["facts"]["default_gateways"] for r in readings] == [
        ["10.9.0.1"],
        ["129.170.16.1"],
        ["10.9.0.7"],
        ["10.9.0.254"],
    ]
    assert readings[0]["facts"]["addresses"] == ["10.9.0.2/24", "129.170.16.40/22"]
    assert readings[0]["facts"]["search_domains"] == ["corp.example"]
    assert readings[2]["reasons"] == [
        "default gateway is 10.9.0.7",
        "search domain is corp.example",
    ]


# --------------------------------------------------------------------------- the command


def test_location_report_says_why_and_what_applies(config: Config) -> None:
    from blitzdns.commands.location import location_report, render_report

    observed = facts(("192.168.1.1",), ("192.168.1.20/24",))
    report = location_report(config, observed, None)
    assert report["location"] == "home"
    assert report["effective"]["hosts"] == ["dnd", "dasher"]
    assert report["effective"]["resolver_target"] == "resolvconf"
    text = "\n".join(render_report(report))
    assert "Location: home, because default gateway is 192.168.1.1" in text
    assert "campus: subnet=129.170.0.0/16 → no (nothing of ours is in 129.170.0.0/16)" in text

    forced = location_report(config, observed, "campus")
    assert forced["location"] == "campus"
    assert forced["effective"]["gateways"] == ["jsmith@gateway.dartmouth.edu"]
    assert "forced by --location; the network says home" in "\n".join(render_report(forced))


def test_location_command_rejects_an_unknown_location(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from blitzdns.commands.location import location
    from blitzdns.errors import ConfigError

    config_file = tmp_path / "config.toml"
    config_file.write_text(LOCATIONS)
    app = typer.Typer()
    app.command("location")(location)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["location", "-c", str(config_file), "--location", "mars"])
    assert isinstance(result.exception, ConfigError)
    assert "no location named 'mars'" in str(result.exception)
    result = CliRunner().invoke(app, ["location", "-c", str(config_file), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)) >= {"facts", "rules", "match", "location", "effective"}


def test_auto_location_means_the_detected_one_in_every_command(tmp_path: Path) -> None:
    """`plan`/`config show --location auto` apply the location `blitzdns location` detects
    on this machine (they used to ignore "auto" and show the base config)."""
    import subprocess
    import sys

    blitzdns = str(Path(sys.executable).with_name("blitzdns"))
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[locations.anywhere]\nmatch = [{ subnet = "0.0.0.0/0" }, { subnet = "::/0" }]\n'
        'gateways = ["me@gw.anywhere.test"]\n'
    )

    def run(*args: str) -> str:
        return subprocess.run(
            [blitzdns, *args, "--config", str(config_file)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    detected = json.loads(run("location", "--json"))["location"]
    if detected is None:
        pytest.skip("this machine has no address or default route: nothing to detect")
    shown = json.loads(run("config", "show", "--location", "auto"))
    assert (shown["location"], shown["tunnel"]["gateways"]) == (
        "anywhere",
        ["me@gw.anywhere.test"],
    )
    assert "me@gw.anywhere.test" in run("plan", "--location", "auto")
