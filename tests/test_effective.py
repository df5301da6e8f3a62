"""The one order of layers: the file, then the location, then the flags (blitzdns.effective)."""

from __future__ import annotations

from pathlib import Path

import pytest

from blitzdns.config import Endpoint, parse_config
from blitzdns.effective import Flags, effective_config, layered
from blitzdns.errors import ConfigError, UsageError

FILE = """\
[dns]
upstreams = ["127.0.0.2:53"]
[tunnel]
gateways = ["file@gw"]
[locations.campus]
match = [{ ssid = "blitzdns-test-no-such-network" }]
gateways = ["campus@gw"]
upstreams = ["127.0.0.3:53"]
hosts = ["dnd"]
"""


def test_the_location_wins_over_the_file() -> None:
    config = layered(parse_config(FILE), "campus")
    assert config.location == "campus"
    assert config.tunnel.gateways == ("campus@gw",)
    assert config.dns.upstreams == (Endpoint("127.0.0.3", 53),)
    assert [h.key for h in config.hosts] == ["dnd"]


def test_a_flag_wins_over_the_location_and_the_file() -> None:
    flags = Flags(
        listen=("127.0.0.1:5300",),
        upstreams=("127.0.0.4",),
        gateways=("flag@gw",),
        trust_new_host_key=True,
    )
    config = layered(parse_config(FILE), "campus", flags)
    assert config.tunnel.gateways == ("flag@gw",)
    assert config.dns.upstreams == (Endpoint("127.0.0.4", 53),)
    assert config.dns.listen == (Endpoint("127.0.0.1", 5300),)
    assert config.tunnel.trust_new_host_key
    # What a flag does not name keeps the location's value.
    assert [h.key for h in config.hosts] == ["dnd"]


def test_no_location_and_no_flags_is_the_file() -> None:
    base = parse_config(FILE)
    assert layered(base) == base


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (Flags(listen=("localhost:53",)), r"--listen localhost:53: expected ADDR\[:PORT\]"),
        (Flags(upstreams=("127.0.0.1:0",)), r"--upstream 127.0.0.1:0: expected ADDR\[:PORT\]"),
        (Flags(gateways=("gw:99999",)), r"--gateway gw:99999: expected \[user@\]host"),
    ],
)
def test_a_bad_flag_is_a_usage_error_naming_the_flag(flags: Flags, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        layered(parse_config(FILE), None, flags)


def test_an_unknown_location_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no location named 'home' \\(known: campus\\)"):
        layered(parse_config(FILE), "home")


def test_effective_config_loads_the_file_and_layers_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(FILE)
    config = effective_config(path, location="campus", flags=Flags(gateways=("flag@gw",)))
    assert config.source == path
    assert config.tunnel.gateways == ("flag@gw",)
    assert config.dns.upstreams == (Endpoint("127.0.0.3", 53),)


def test_auto_on_a_network_no_rule_matches_is_the_file(tmp_path: Path) -> None:
    """The only rule names a Wi-Fi network no test machine is on."""
    path = tmp_path / "config.toml"
    path.write_text(FILE)
    config = effective_config(path, location="auto")
    assert config.location is None
    assert config.tunnel.gateways == ("file@gw",)


def test_without_a_file_and_without_search_it_is_the_preset() -> None:
    config = effective_config(None, search=False, flags=Flags(gateways=("flag@gw",)))
    assert config.source is None
    assert config.preset == "blitzmail"
    assert config.tunnel.gateways == ("flag@gw",)
