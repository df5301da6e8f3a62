"""`blitzdns status` on a real daemon whose gateway refuses: down since the first failure
(a retry does not restart it), attempts, the next retry, the last error once, and an exit
status that says whether everything is up, as `systemctl is-active` does."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from blitzdns.control import STATUS_EXIT_CODES, format_clock

from .conftest import RunningDaemon, blitzdns, echo_config


def test_link_down_since_the_first_failure_with_attempts_and_next_retry(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    daemon = start_daemon(echo_config(tmp_path))
    first = daemon.wait_for(lambda s: s["tunnel"]["attempts_since_up"] >= 2)
    down_since = first["tunnel"]["down_since"]
    assert down_since is not None
    later = daemon.wait_for(
        lambda s: (
            s["tunnel"]["attempts_since_up"] > first["tunnel"]["attempts_since_up"]
            and s["tunnel"]["status"] == "down"
        )
    )
    assert later["tunnel"]["down_since"] == down_since  # not restarted by the retries
    assert later["tunnel"]["next_retry"] >= later["tunnel"]["since"]

    shown = blitzdns("status", "--control-socket", str(daemon.control))
    assert shown.returncode == 1, shown.stderr
    lines = shown.stdout.splitlines()
    link = next(line for line in lines if line.startswith("link "))
    assert link.startswith(f"link       down since {format_clock(down_since)} (")
    assert any(line.strip().startswith("attempts ") for line in lines), shown.stdout
    assert sum("connection refused" in line for line in lines) == 1, shown.stdout

    as_json = blitzdns("status", "--json", "--control-socket", str(daemon.control))
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["tunnel"]["down_since"] == down_since


def test_resolver_only_is_up_and_exits_0(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    daemon = start_daemon(echo_config(tmp_path), "--no-tunnel")
    shown = blitzdns("status", "--control-socket", str(daemon.control))
    assert shown.returncode == 0, shown.stderr
    assert "link       none (resolver only)" in shown.stdout


def test_every_documented_status_exit_code(
    tmp_path: Path, not_blitzdns: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    seen: dict[int, str] = {}
    daemon = start_daemon(echo_config(tmp_path))
    daemon.wait_for(lambda s: s["tunnel"]["status"] in ("down", "connecting"))
    seen[1] = "link down"
    assert blitzdns("status", "--control-socket", str(daemon.control)).returncode == 1
    daemon.stop()
    gone = blitzdns("status", "--control-socket", str(daemon.control))
    assert gone.returncode == 3 and gone.stderr.startswith("blitzdns: no daemon is running")
    seen[3] = "no daemon"
    bad = blitzdns("status", "--bogus")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    seen[2] = "usage"
    other = blitzdns("status", "--control-socket", str(not_blitzdns))
    assert other.returncode == 4, other.stderr
    assert other.stderr == f"blitzdns: {not_blitzdns} answered something that is not JSON\n"
    seen[4] = "unknown"
    # 0 is test_resolver_only_is_up_and_exits_0.
    seen[0] = "up"
    assert sorted(seen) == [code for code, _ in STATUS_EXIT_CODES]


def test_status_help_and_readme_document_the_exit_codes() -> None:
    shown = blitzdns("status", "--help", env={"COLUMNS": "80"})
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for code, meaning in STATUS_EXIT_CODES:
        assert f"  {code}  {meaning}" in shown.stdout, shown.stdout
        assert f"| {code} | {meaning} |" in readme
