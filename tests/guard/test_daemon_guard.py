"""``run`` with ``[guard] enabled``: installed at start, refreshed on TTL (the union of the
addresses seen), fail closed at stop; the resolver watch puts back a rewritten resolv.conf
and counts it. In a network namespace of the test's own, files under --root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import daemon_status, wait_for

from .conftest import BLITZDNS, WAIT_S, blitzdns, ruleset, try_connect

pytestmark = pytest.mark.timeout(120)

ORIGINAL = "nameserver 192.0.2.53\n"
DNS_PORT = 5300


def write_hosts(path: Path, dnd: str) -> None:
    path.write_text(f"{dnd} real-dnd.example.net\n198.51.100.3 dasher.dartmouth.edu\n")


@pytest.fixture
def lan_dns(netns: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """dnsmasq inside the namespace on 127.0.0.1:5300: dnd is a CNAME, TTL 1 s."""
    program = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(program, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    hosts = tmp_path / "lan-hosts"
    write_hosts(hosts, "198.51.100.2")
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, program, "-k", "-C", "/dev/null", "--no-resolv",
         "--no-hosts", f"--addn-hosts={hosts}", "--cname=dnd.dartmouth.edu,real-dnd.example.net",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={DNS_PORT}",
         "--pid-file=", "--user=root", "--local-ttl=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(
        lambda: "dnsmasq" in subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-Hlunp", f"sport = :{DNS_PORT}"],
            capture_output=True, text=True, check=False).stdout,
        "dnsmasq to listen",
    )  # fmt: skip
    yield process, hosts
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("user", [None, "nobody"], ids=["as-root", "dropped-to-nobody"])
def test_run_installs_refreshes_and_keeps_the_guard_and_reverts_resolv_conf(
    tmp_path: Path, netns: str, lan_dns: tuple[subprocess.Popen[bytes], Path], user: str | None
) -> None:
    """As root the warden works in the daemon's process; dropped to a user, through the
    root helper started before the drop (the same checks hold either way)."""
    dnsmasq, hosts = lan_dns
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    resolv = root / "etc" / "resolv.conf"
    resolv.write_text(ORIGINAL)
    config = tmp_path / "config.toml"
    config.write_text(
        '[dns]\nlisten = ["127.0.0.1:53"]\n'
        f'upstreams = ["127.0.0.1:{DNS_PORT}"]\n'
        '[tunnel]\nhosts = ["dnd", "dasher"]\n'
        "[guard]\nenabled = true\nwatch_s = 1.0\n"
    )
    done = blitzdns("resolver-config", "install", "-c", str(config), "--target", "resolvconf",
                    "--root", str(root))  # fmt: skip
    assert done.returncode == 0, done.stderr
    ours = resolv.read_bytes()
    before = ruleset(netns)
    control = tmp_path / "control.sock"
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", netns, BLITZDNS, "run", "-c", str(config), "--no-tunnel",
             "--root", str(root), "--control-socket", str(control),
             *(["--user", user] if user else [])],
            stdout=out, stderr=out, env={k: v for k, v in os.environ.items() if k != "SUDO_USER"},
        )  # fmt: skip
    try:

        def guard(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
            last: dict[str, Any] = {}

            def check() -> dict[str, Any] | None:
                nonlocal last
                if daemon.poll() is not None:
                    raise AssertionError(f"run exited: {log.read_text()[-3000:]}")
                snap = daemon_status(control).get("guard") or {}
                last = snap or last
                return snap if snap and predicate(snap) else None

            def seen() -> str:
                return f"the daemon's guard status; last {last}; log {log.read_text()[-3000:]}"

            result: dict[str, Any] = wait_for(check, seen, timeout=30)
            return result

        first = guard(lambda g: g["installed"] and g["addresses"] == 2)
        if user is not None:
            assert f"running as {user}" in log.read_text()
        assert first["probe"][1:] == ["198.51.100.2", 902]
        assert "table inet blitzdns" in ruleset(netns)
        assert try_connect(netns, "198.51.100.2", 902) == "refused"
        assert try_connect(netns, "198.51.100.3", 2151) == "refused"

        # A DHCP client rewrites resolv.conf: the watch puts back what blitzdns wrote.
        temp = resolv.with_name(".resolv.conf.dhcp")
        temp.write_text("nameserver 10.0.0.1\n")
        os.replace(temp, resolv)
        watched = guard(lambda g: g["watch"]["reverted"] == 1)
        assert watched["watch"]["last_change"] == "a rewrite of /etc/resolv.conf"
        assert resolv.read_bytes() == ours
        assert "resolver config changed (a rewrite of /etc/resolv.conf)" in log.read_text()
        shown = subprocess.run([BLITZDNS, "status", "--control-socket", str(control)],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "reverted 1 times" in shown and "by a rewrite of /etc/resolv.conf" in shown

        # The name moves: on its TTL the guard adds the new address and keeps the old one.
        write_hosts(hosts, "198.51.100.4")
        dnsmasq.send_signal(signal.SIGHUP)
        guard(lambda g: g["addresses"] == 3)
        assert try_connect(netns, "198.51.100.4", 902) == "refused"
        assert try_connect(netns, "198.51.100.2", 902) == "refused"
        # The installed file follows (what a reboot would load), under the guard's record.
        installed = (root / "etc" / "blitzdns" / "guard.nft").read_text()
        assert "198.51.100.2" in installed and "198.51.100.4" in installed
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=WAIT_S)

    # Fail closed: the rules outlive the daemon.
    assert try_connect(netns, "198.51.100.2", 902) == "refused"
    gone = blitzdns("guard", "uninstall", "--root", str(root), "--apply", netns=netns)
    assert gone.returncode == 0, gone.stderr
    assert ruleset(netns) == before
    assert not (root / "etc" / "blitzdns").exists()
    assert blitzdns("resolver-config", "uninstall", "--root", str(root)).returncode == 0
    assert resolv.read_text() == ORIGINAL
