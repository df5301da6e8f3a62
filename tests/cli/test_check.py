"""`blitzdns check` against a real daemon: it tests where the daemon really listens, stops
at the first layer that fails, and its fixes run as printed."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from .conftest import BLITZDNS, RunningDaemon, blitzdns, echo_config, free_port, running


def marks(out: str, mark: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(mark + " ")]


def next_command(out: str) -> list[str]:
    """The command in backticks on the summary line ("next: … `COMMAND`")."""
    summary = out.strip().splitlines()[-1]
    found = re.search(r"next: .*`([^`]+)`", summary)
    assert found, summary
    return shlex.split(found.group(1))


def test_without_a_daemon_one_failure_then_skips_and_the_fix_runs(tmp_path: Path) -> None:
    config = echo_config(tmp_path)
    control = tmp_path / "control.sock"
    first = blitzdns("check", "-c", str(config), "--control-socket", str(control))
    assert first.returncode == 1
    assert marks(first.stdout, "✗") == [f"✗ daemon: no blitzdns daemon answers on {control}"]
    skipped = [line.split(":")[0] for line in marks(first.stdout, "–")]
    assert skipped == [
        "– stub",
        "– mouths",
        "– SSH link",
        "– end to end",
        "– system resolver",
    ], first.stdout
    command = next_command(first.stdout)
    assert command[:2] == ["blitzdns", "run"], command  # root here: no sudo needed
    # As printed (the console script of this virtualenv stands for `blitzdns`).
    argv = [BLITZDNS, *command[1:]]
    with running(argv, control, tmp_path / "daemon.log") as daemon:
        daemon.wait_for(lambda s: s["tunnel"]["status"] == "down")
        second = blitzdns("check", "-c", str(config), "--control-socket", str(control))
    assert second.returncode == 1
    assert [line.split(":")[0] for line in marks(second.stdout, "✓")] == [
        "✓ daemon",
        "✓ stub",
        "✓ mouth echo/echo",
    ], second.stdout
    assert [line.split(":")[0] for line in marks(second.stdout, "✗")] == ["✗ SSH link"]
    gateway_port = re.search(r"127\.0\.0\.1:(\d+)", config.read_text().split("gateways")[1])
    assert gateway_port
    assert next_command(second.stdout) == ["ssh", "-p", gateway_port.group(1), "127.0.0.1", "true"]


def test_check_tests_where_the_daemon_listens_and_the_file_it_read(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    # The file says port 53; the daemon was told --listen elsewhere and --no-tunnel.
    config = echo_config(tmp_path, listen_port=53)
    port = free_port()
    daemon = start_daemon(config, "--listen", f"127.0.0.1:{port}", "--no-tunnel")
    done = blitzdns("check", "--skip-system-resolver", "--control-socket", str(daemon.control))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("✓ daemon: pid ")
    assert f"config {config}, DNS on 127.0.0.1:{port}" in lines[0]
    # The host of the daemon's file (not the preset's table), asked at the daemon's port.
    assert lines[1].startswith("✓ stub: echo: 2 names"), done.stdout
    assert marks(done.stdout, "✗") == ["✗ mouths: the daemon runs without the tunnel"]
    assert done.stdout.strip().endswith("next: restart `blitzdns run` without --no-tunnel")


def test_the_resolver_fix_points_where_the_daemon_listens(tmp_path: Path) -> None:
    from blitzdns.check import resolver_fix
    from blitzdns.config import load_config

    config = load_config(echo_config(tmp_path, listen_port=53), search=False)
    moved = resolver_fix(config, ["127.0.0.1:5300"])
    command = shlex.split(re.search(r"`([^`]+)`", moved).group(1))  # type: ignore[union-attr]
    assert command[command.index("--listen") + 1] == "127.0.0.1:5300"
    assert "--target" in command and command[-1] == "--apply"
    assert "--listen" not in resolver_fix(config, ["127.0.0.1:53"])
