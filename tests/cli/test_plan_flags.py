"""`plan` and `config show` take the flags that change the effective configuration, as
the README promises: the file, then the location, then the flags (as `run` applies them)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_effective import FILE  # a file with a location: the same as there

from .conftest import blitzdns


def test_plan_and_config_show_apply_location_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(FILE)
    at = ["-c", str(config), "--location", "campus"]
    flags = ["--gateway", "flag@gw", "--upstream", "127.0.0.4", "--listen", "127.0.0.1:5300"]

    located = blitzdns("plan", *at)
    assert located.returncode == 0, located.stderr
    assert "SSH gateways, in order: campus@gw" in located.stdout

    plan = blitzdns("plan", *at, *flags)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[:3] == [
        "DNS stub (location campus) on 127.0.0.1:5300",
        "  other names are forwarded to: 127.0.0.4:53",
        "SSH gateways, in order: flag@gw",
    ]
    shown = blitzdns("config", "show", *at, *flags)
    assert shown.returncode == 0, shown.stderr
    effective = json.loads(shown.stdout)
    assert effective["tunnel"]["gateways"] == ["flag@gw"]
    assert effective["dns"]["upstreams"] == ["127.0.0.4:53"]
    assert effective["dns"]["listen"] == ["127.0.0.1:5300"]
    assert effective["tunnel"]["hosts"] == ["dnd"]  # the location's, no flag for it

    bad = blitzdns("plan", *at, "--gateway", "a@@b")
    assert bad.returncode == 2
    assert bad.stderr.startswith("blitzdns: --gateway a@@b: ") and bad.stderr.count("\n") == 1


def test_location_and_resolver_config_take_the_flags_that_change_what_they_show(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(FILE)
    at = ["-c", str(config), "--location", "campus"]
    where = blitzdns("location", *at, "--gateway", "flag@gw", "--upstream", "127.0.0.4")
    assert where.returncode == 0, where.stderr
    assert "  gateways:        flag@gw" in where.stdout.splitlines()
    assert "  upstreams:       127.0.0.4:53" in where.stdout.splitlines()
    shown = blitzdns(
        "resolver-config",
        "show",
        *at,
        "--listen",
        "127.0.0.1:5300",
        "--target",
        "systemd-resolved",
        "--root",
        str(tmp_path),
    )
    assert shown.returncode == 0, shown.stderr
    assert "stub: 127.0.0.1:5300" in shown.stdout.splitlines()
