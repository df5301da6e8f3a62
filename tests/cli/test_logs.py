"""The daemon's log, read as a user reads it: time stamps unless journald stamps the lines,
one line per event, the config file it loaded, and with -v the queries in dnsmasq's own
words (checked against a real dnsmasq's --log-queries lines from the same run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers import FORWARDED_ADDRESS, Dnsmasq, running_sshd

from .conftest import BLITZDNS, RunningDaemon, echo_config, free_port, running

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")
DIG = shutil.which("dig")


def messages(log: Path) -> list[str]:
    """The log's lines without their time stamp and level."""
    return [STAMP.sub("", line) for line in log.read_text().splitlines()]


def test_time_stamped_one_line_per_retry_and_the_config_named(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    config = echo_config(tmp_path)
    daemon = start_daemon(config)
    daemon.wait_for(
        lambda s: s["tunnel"]["attempts_since_up"] >= 9 and s["tunnel"]["status"] == "down"
    )
    assert daemon.stop() == 0, daemon.log.read_text()
    lines = daemon.log.read_text().splitlines()
    # The lines without a stamp first: a one-line test summary cuts the message short.
    unstamped = [line for line in lines if not STAMP.match(line)]
    assert lines and not unstamped, f"without a time stamp: {unstamped}; the log: {lines}"
    said = messages(daemon.log)
    assert f"config {config}" in said
    # The error is named once; each later retry is one line that counts it and says when.
    assert sum("connection refused" in line for line in said) == 1, said
    down = [line for line in said if line.startswith("link ")]
    assert down[0].startswith("link down: gateway 127.0.0.1:") and "; retrying" in down[0]
    repeats = [line for line in down[1:] if line.startswith("link still down after ")]
    assert len(repeats) >= 3 and all(re.search(r"; retrying (now|in \d)", r) for r in repeats)
    # Counted at 2, 4, 8… attempts: a gateway retried every quarter second is not a flood.
    counts = [int(line.split()[4]) for line in repeats]
    assert counts[:3] == [2, 4, 8], repeats
    assert not any(line.startswith(("link connecting", "link stopped")) for line in said)


def journal_form(tmp_path: Path, *flags: str, journal_stream: str | None = None) -> list[str]:
    """The first lines a daemon writes with these flags (and JOURNAL_STREAM)."""
    config = echo_config(tmp_path)
    log = tmp_path / f"daemon-{time.monotonic_ns()}.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream == "this file":
        info = os.stat(log)
        env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    elif journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    control = tmp_path / f"c-{time.monotonic_ns()}.sock"
    argv = [BLITZDNS, "run", "-c", str(config), "--control-socket", str(control), *flags]
    with running(argv, control, log, env) as daemon:
        daemon.wait_for(lambda s: s["tunnel"]["status"] == "down")
    return log.read_text().splitlines()


def test_journal_form_when_asked_or_when_stderr_is_the_journal(tmp_path: Path) -> None:
    for lines in (
        journal_form(tmp_path, "--log-format=journal"),
        journal_form(tmp_path, journal_stream="this file"),
    ):
        assert lines and all(re.match(r"^<[0-7]>", line) for line in lines), lines
        assert not any(STAMP.match(line[3:]) for line in lines)
        assert any(line.startswith("<4>link down: ") for line in lines), lines
    # An inherited JOURNAL_STREAM that names another stream: stamped lines.
    lines = journal_form(tmp_path, journal_stream="1:1")
    assert lines and all(STAMP.match(line) for line in lines), lines


def dig(port: int, name: str, qtype: str = "A") -> None:
    assert DIG is not None
    subprocess.run(
        [DIG, "@127.0.0.1", "-p", str(port), "+time=2", "+tries=1", name, qtype],
        capture_output=True,
        timeout=10,
        check=False,
    )


def wait_for_line(log: Path, wanted: str, timeout_s: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        said = messages(log)
        if wanted in said:
            return said
        time.sleep(0.05)
    raise AssertionError(f"{wanted!r} never logged: {log.read_text()}")


def test_verbose_logs_queries_as_dnsmasq_does(
    tmp_path: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    if DIG is None:
        pytest.skip("dig not installed (Debian: bind9-dnsutils)")
    upstream = Dnsmasq(tmp_path)
    try:
        port = free_port()
        config = echo_config(tmp_path, listen_port=port)
        text = config.read_text().replace("127.0.0.1:9", str(upstream.endpoint))
        config.write_text(text)
        daemon = start_daemon(config, "-v", "--no-tunnel")
        dig(port, "echo.example.org")
        dig(port, "x.fwd.test")
        said = wait_for_line(daemon.log, f"reply x.fwd.test is {FORWARDED_ADDRESS}")
        peer = upstream.log_path.read_text()
    finally:
        upstream.stop()
    mouth = next(line for line in said if line.startswith("config echo.example.org is "))
    assert re.fullmatch(r"config echo\.example\.org is 127\.79\.\d+\.\d+", mouth)
    start = said.index("query[A] x.fwd.test from 127.0.0.1")
    assert said[start : start + 3] == [
        "query[A] x.fwd.test from 127.0.0.1",
        f"forwarded x.fwd.test to {upstream.endpoint}",
        f"reply x.fwd.test is {FORWARDED_ADDRESS}",
    ]
    assert "query[A] echo.example.org from 127.0.0.1" in said
    # The peer's own words for the same question, as its users read them.
    assert "query[A] x.fwd.test from 127.0.0.1" in peer
    assert f"config x.fwd.test is {FORWARDED_ADDRESS}" in peer


def test_one_line_when_the_link_comes_up_and_none_at_the_stop(tmp_path: Path) -> None:
    with running_sshd(tmp_path) as sshd:
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts_line())
        (tmp_path / "ssh_config").write_text("")
        config = echo_config(tmp_path)
        text = config.read_text().replace(
            "[tunnel]\n",
            f'[tunnel]\nknown_hosts = "{known}"\nidentity_files = ["{sshd.client_key}"]\n'
            f'ssh_config = "{tmp_path / "ssh_config"}"\n',
        )
        gateway = f"{sshd.user}@127.0.0.1:{sshd.port}"
        config.write_text(re.sub(r'gateways = \["[^"]+"\]', f'gateways = ["{gateway}"]', text))
        control = tmp_path / "control.sock"
        log = tmp_path / "daemon.log"
        argv = [BLITZDNS, "run", "-c", str(config), "--control-socket", str(control)]
        with running(argv, control, log) as daemon:
            daemon.wait_for(lambda s: s["tunnel"]["status"] == "up")
    said = messages(log)
    assert [line for line in said if "link up" in line] == [f"link up via {gateway}"], said
    assert not any(line.startswith("link stopped") for line in said), said
