"""One schema: the allowed keys, ``to_dict`` and the template all come from the dataclasses."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from blitzdns.config import (
    Config,
    DnsConfig,
    GuardConfig,
    Host,
    Location,
    MatchRule,
    Service,
    SharedAddress,
    TunnelConfig,
    parse_config,
    toml_keys,
    toml_name,
)
from blitzdns.config_template import TEMPLATE


def test_the_template_sets_every_key_of_dns_tunnel_and_resolver() -> None:
    data = tomllib.loads(TEMPLATE)
    commented = {line[2:].split(" = ")[0] for line in TEMPLATE.splitlines() if " = " in line}
    for table, cls in (("dns", DnsConfig), ("tunnel", TunnelConfig), ("guard", GuardConfig)):
        assert set(data[table]) | (commented & set(toml_keys(cls))) == set(toml_keys(cls))
    assert set(data["resolver"]) == set(toml_keys(Config, within="resolver")) == {"target"}
    assert set(data) == {"preset", "dns", "tunnel", "resolver", "guard"}


def test_to_dict_shows_every_key_of_the_file() -> None:
    shown = parse_config(
        '[[shared]]\naddress = "192.0.2.1"\nallow = ["192.0.2.0/24"]\nhosts = ["dnd"]\n'
        '[locations.x]\nmatch = [{ ssid = "x", subnet = "10.0.0.0/8" }]\ngateways = ["gw"]\n'
        'upstreams = ["127.0.0.2"]\nhosts = ["dnd"]\nresolver_target = "macos"\n'
    ).to_dict()
    assert set(toml_keys(Config)) | {"source", "location"} == set(shown)
    assert list(shown["dns"]) == list(toml_keys(DnsConfig))
    assert list(shown["tunnel"]) == list(toml_keys(TunnelConfig))
    assert list(shown["services"]["mail"]) == list(toml_keys(Service))
    assert list(shown["hosts"]["dnd"]) == [*toml_keys(Host), "protected"]
    assert list(shown["shared"][0]) == list(toml_keys(SharedAddress))
    assert list(shown["locations"]["x"]) == list(toml_keys(Location))
    assert shown["locations"]["x"]["match"] == [{"subnet": "10.0.0.0/8", "ssid": "x"}]
    assert set(toml_keys(MatchRule)) == {"gateway", "subnet", "search_domain", "ssid"}


def test_a_location_shows_only_what_it_overrides() -> None:
    shown = parse_config('[locations.x]\nmatch = [{ ssid = "x" }]\n').to_dict()
    assert shown["locations"] == {"x": {"match": [{"ssid": "x"}]}}


def test_a_service_shows_the_port_its_target_listens_on() -> None:
    shown = parse_config(
        "[services]\nimap = { port = 143 }\nimaps = { port = 1993, remote_port = 993 }\n"
    )
    imap = shown.to_dict()["services"]["imap"]
    assert {k: imap[k] for k in ("port", "proto", "remote_port")} == {
        "port": 143,
        "proto": "tcp",
        "remote_port": 143,
    }
    assert shown.services["imaps"].target_port == 993


EXAMPLES = [f for f in fields(Config) if f.metadata.get("example")]


@pytest.mark.parametrize("item", EXAMPLES, ids=[f.name for f in EXAMPLES])
def test_each_commented_example_of_the_template_loads(item: object) -> None:
    example = item.metadata["example"]  # type: ignore[attr-defined]
    assert "\n".join(f"# {line}" for line in example.splitlines()) in TEMPLATE
    parse_config(example)


@pytest.mark.parametrize("cls", [DnsConfig, TunnelConfig], ids=["dns", "tunnel"])
def test_each_example_value_of_a_key_loads(
    cls: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("")
    table = "dns" if cls is DnsConfig else "tunnel"
    for item in fields(cls):
        example = item.metadata["example"]
        if example is not None:
            assert f"{toml_name(item)} = {example}" in TEMPLATE
            parse_config(f"[{table}]\n{toml_name(item)} = {example}\n")
