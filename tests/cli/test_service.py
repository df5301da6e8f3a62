"""`service show/install` never point the unit at a config it could not start on: the
issue's case (root, the config under $XDG_CONFIG_HOME, the unit reading /etc's) is refused
with the copy to make, which runs as printed; the unit's config check runs before
anything is written. Files go under --root; the real /etc is never touched."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from .conftest import blitzdns, echo_config


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_config_the_unit_would_not_find_is_refused_then_copied_and_checked(
    tmp_path: Path,
) -> None:
    xdg = tmp_path / "xdg"
    (xdg / "blitzdns").mkdir(parents=True)
    yours = echo_config(xdg / "blitzdns")
    root = tmp_path / "system"
    (root / "etc/systemd/system").mkdir(parents=True)
    env = {"XDG_CONFIG_HOME": str(xdg), "SUDO_USER": ""}
    common = ["--target", "systemd", "--root", str(root)]

    shown = blitzdns("service", "show", *common, env=env)
    assert shown.returncode == 0
    unit_reads = root / "etc/blitzdns/config.toml"
    assert shown.stderr.splitlines()[0].endswith("(reads /etc/blitzdns/config.toml)")
    assert f"the unit would read {unit_reads}, which does not exist" in shown.stderr

    refused = blitzdns("service", "install", *common, env=env)
    assert refused.returncode == 2
    assert files(root) == []  # nothing written
    line = refused.stderr.strip()
    assert line.count("\n") == 0 and f"the config you use is {yours}" in line
    copy = re.search(r"copy it there \(`([^`]+)`\)", line)
    assert copy, line
    subprocess.run(shlex.split(copy.group(1)), check=True, timeout=30)  # as printed

    installed = blitzdns("service", "install", *common, env=env)
    assert installed.returncode == 0, installed.stderr
    assert "the unit reads /etc/blitzdns/config.toml (its config check passed)" in (
        installed.stdout
    )
    assert "etc/systemd/system/blitzdns.service" in files(root)


def test_a_config_that_does_not_load_is_refused_with_its_key(tmp_path: Path) -> None:
    root = tmp_path / "system"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/blitzdns").mkdir(parents=True)
    (root / "etc/blitzdns/config.toml").write_text("[dns]\nttl = 'five'\n")
    done = blitzdns(
        "service", "install", "--target", "systemd", "--root", str(root), "--user", "nobody"
    )
    assert done.returncode == 2
    assert "the unit's config check failed: " in done.stderr and "dns.ttl" in done.stderr
    assert not (root / "etc/systemd/system/blitzdns.service").exists()


def test_config_check_names_the_file(tmp_path: Path) -> None:
    config = echo_config(tmp_path)
    done = blitzdns("config", "check", "-c", str(config))
    assert done.returncode == 0
    assert done.stdout.startswith(f"{config}: ok, 1 protected hosts, gateways: 127.0.0.1:")
