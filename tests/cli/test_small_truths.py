"""Item 8 of the issue, each through the command line: the small things the commands said
that were not quite true."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from .conftest import RunningDaemon, blitzdns, echo_config


def test_location_lists_a_location_without_match(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[locations.home]\ngateways = ["me@home.example.org"]\n')
    shown = blitzdns("location", "-c", str(config))
    assert shown.returncode == 0
    assert "No [locations.*]" not in shown.stdout
    assert "  home: no match rule; only `--location home` selects it" in shown.stdout


def test_the_automatic_resolver_target_says_why(tmp_path: Path) -> None:
    plain = blitzdns("resolver-config", "show", "--root", str(tmp_path))
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines()[0] == (
        "target: resolvconf (every name goes to the stub; "
        "detected: neither systemd-resolved nor NetworkManager runs)"
    )
    (tmp_path / "run/systemd/resolve").mkdir(parents=True)
    resolved = blitzdns("resolver-config", "show", "--root", str(tmp_path))
    assert resolved.stdout.splitlines()[0] == (
        f"target: systemd-resolved (split DNS; detected: {tmp_path}/run/systemd/resolve "
        "exists: systemd-resolved runs)"
    )
    chosen = blitzdns("resolver-config", "show", "--root", str(tmp_path), "--target", "macos")
    assert chosen.stdout.splitlines()[0].endswith("; --target)")


def test_status_table_names_the_byte_columns_as_the_json_does(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    daemon = start_daemon(echo_config(tmp_path))
    forward = json.loads(daemon.status().stdout)["tunnel"]["forwards"][0]
    table = blitzdns("status", "--control-socket", str(daemon.control)).stdout
    header = next(line for line in table.splitlines() if line.strip().startswith("NAME"))
    for key in ("bytes_out", "bytes_in"):
        assert key in forward and key.upper() in header.split()
    assert "SENT" not in header and "RECEIVED" not in header


def test_mouth_conflicts_and_pins_outside_the_block_are_said_plainly(tmp_path: Path) -> None:
    twice = tmp_path / "twice.toml"
    twice.write_text(
        '[hosts.a]\nnames = ["a.example.org"]\nservices = ["dnd"]\nmouth = "127.77.0.50"\n'
        '[hosts.b]\nnames = ["b.example.org"]\nservices = ["dnd"]\nmouth = "127.77.0.50"\n'
    )
    refused = blitzdns("plan", "-c", str(twice))
    assert refused.returncode == 2
    assert "mouth 127.77.0.50 is already taken by host a" in refused.stderr
    assert "''s" not in refused.stderr
    outside = tmp_path / "outside.toml"
    outside.write_text(
        '[tunnel]\nhosts = ["imap"]\n'
        '[hosts.imap]\nnames = ["imap.example.org"]\nservices = ["dnd"]\n'
        'mouth = "127.9.9.9"\nremote = "imap.example.org"\n'
    )
    note = "note: hosts.imap.mouth 127.9.9.9 is outside tunnel.mouths 127.77.0.0/24"
    assert note in blitzdns("plan", "-c", str(outside)).stdout.splitlines()
    assert note in blitzdns("config", "check", "-c", str(outside)).stdout.splitlines()


def test_resolver_config_errors_name_the_file(tmp_path: Path) -> None:
    record = tmp_path / "var/lib/blitzdns/resolver-state.json"
    record.parent.mkdir(parents=True)
    record.write_text("{not json")
    done = blitzdns("resolver-config", "uninstall", "--root", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith(f"blitzdns: {record}: ")


def test_an_unreadable_config_is_worded_alike_by_plan_and_run(tmp_path: Path) -> None:
    folder = tmp_path / "a-directory.toml"
    folder.mkdir()
    plan = blitzdns("plan", "-c", str(folder))
    run = blitzdns("run", "-c", str(folder), "--no-tunnel")
    assert plan.returncode == run.returncode == 2
    assert plan.stderr == run.stderr
    assert plan.stderr.startswith(f"blitzdns: {folder}: cannot read the file")


def test_config_init_does_not_invent_a_chain_of_directories(tmp_path: Path) -> None:
    wanted = tmp_path / "no" / "such" / "x.toml"
    done = blitzdns("config", "init", str(wanted))
    assert done.returncode == 2
    assert (
        done.stderr
        == f"blitzdns: cannot write {wanted}: no such directory {wanted.parent.parent}\n"
    )
    assert not (tmp_path / "no").exists()
    one_level = tmp_path / "blitzdns" / "config.toml"  # its own directory may be made
    assert blitzdns("config", "init", str(one_level)).returncode == 0
    assert one_level.is_file()
