"""Issue 14, the leak guard's proof: the system resolver is bypassed, and still nothing of a
protected session leaves the client in the clear.

A "LAN DNS" (dnsmasq in the gateway namespace) answers the protected names with the
servers' real addresses, and the servers are reachable through the gateway, now a router.
A DHCP client rewrites resolv.conf to that LAN DNS. Without blitzdns (the control) a DND
session then goes out in the clear on the client's link; with ``run`` and ``[guard]
enabled`` the same session is refused at once, tcpdump on the client's link sees nothing
towards the servers, the watch puts resolv.conf back and counts it, and ``check`` proves
the guard with a direct connection. Uninstalling leaves ``nft list ruleset`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import daemon_status

from ..guard.conftest import try_connect
from .conftest import MakeBlitzdns
from .lab import (
    AGENT,
    BLITZDNS,
    DASHER,
    DASHER_IP,
    DND,
    DND_IP,
    GATEWAY_IP,
    GATEWAY_SERVER_IP,
    PRANCER,
    PRANCER_IP,
    PYTHON,
    SERVER_NET,
    Capture,
    FakeServers,
    Lab,
    Sshd,
    read_text,
    stop_process,
    wait_for,
)
from .test_leak import CLEARTEXT, assert_session_worked, leaked, toward_servers

pytestmark = pytest.mark.timeout(120)

CLIENT_NET = "192.0.2.0/24"
LAN_DNS = f"{GATEWAY_IP}:53"


@pytest.fixture
def routed(lab: Lab, tmp_path: Path) -> Iterator[None]:
    """The gateway becomes a router with a DNS server on the LAN: a network where a
    bypassed resolver really sends the session to the servers. Undone afterwards."""
    program = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not os.access(program, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    gw, srv, client = lab["gw"], lab["srv"], lab["client"]
    dns = gw.spawn_ready(
        program, "-k", "-d", "-C", "/dev/null", "--no-resolv", "--no-hosts",
        f"--listen-address={GATEWAY_IP}", "--bind-interfaces", "--port=53", "--pid-file=",
        "--user=root", "--local-ttl=60", f"--host-record={DND},{DND_IP}",
        f"--host-record={DASHER},{DASHER_IP}", f"--host-record={PRANCER},{PRANCER_IP}",
        marker="started", log=tmp_path / "lan-dns.log",
    )  # fmt: skip
    gw.sysctl("net.ipv4.ip_forward", "1")
    srv.ip("route", "add", CLIENT_NET, "via", GATEWAY_SERVER_IP)
    client.ip("route", "add", SERVER_NET, "via", GATEWAY_IP)
    try:
        yield
    finally:
        client.ip("route", "del", SERVER_NET, "via", GATEWAY_IP)
        srv.ip("route", "del", CLIENT_NET, "via", GATEWAY_SERVER_IP)
        gw.sysctl("net.ipv4.ip_forward", "0")
        stop_process(dns)


def session(lab: Lab, resolver: str) -> dict[str, Any]:
    """The DND session with names from ``resolver``: its JSON report, failed or not."""
    done = lab["client"].run(PYTHON, AGENT, "session", "--resolver", resolver, check=False)
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_control_a_bypassed_resolver_sends_the_session_in_the_clear(
    lab: Lab, servers: FakeServers, routed: None, client_capture: Capture
) -> None:
    client_capture.start()
    result = session(lab, LAN_DNS)
    frames = client_capture.stop()
    assert_session_worked(result)
    assert result["dnd_address"] == DND_IP
    assert toward_servers(frames) != []
    assert leaked(frames) == list(CLEARTEXT)


def test_the_guard_refuses_the_bypassed_session_and_the_watch_restores_resolv_conf(
    lab: Lab,
    servers: FakeServers,
    sshd: Sshd,
    routed: None,
    make_blitzdns: MakeBlitzdns,
    client_capture: Capture,
    tmp_path: Path,
) -> None:
    client = lab["client"]
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    resolv = root / "etc" / "resolv.conf"
    resolv.write_text(f"nameserver {GATEWAY_IP}\n")
    before = client.run("nft", "list", "ruleset").stdout
    daemon = make_blitzdns(sshd, extra="\n[guard]\nenabled = true\nwatch_s = 1.0\n")
    # The stub forwards other names to the LAN DNS, which is also where the guard learns
    # the real addresses.
    daemon.config = daemon.config.replace(
        'upstreams = ["127.0.0.1:5353"]', f'upstreams = ["{LAN_DNS}"]'
    )
    config = tmp_path / "guard.toml"
    config.write_text(daemon.config)
    installed = client.run(BLITZDNS, "resolver-config", "install", "-c", str(config),
                           "--target", "resolvconf", "--root", str(root))  # fmt: skip
    assert "replaced" in installed.stdout, installed.stdout
    ours = resolv.read_bytes()
    control = daemon.root / "control.sock"
    daemon.start("--root", str(root))
    daemon.wait_ready()

    def guard_status() -> dict[str, Any]:
        return dict(daemon_status(control).get("guard") or {})

    wait_for(lambda: guard_status().get("addresses") == 3, "the guard to refuse 3 addresses")
    try:
        # A DHCP client points resolv.conf at the LAN DNS; a program that read it now
        # (or cached the real address) asks the LAN DNS and dials the real server.
        temp = resolv.with_name(".resolv.conf.dhclient")
        temp.write_text(f"nameserver {GATEWAY_IP}\nsearch lan\n")
        # the program read the DHCP client's file: its nameserver, written here (resolv.conf
        # read back may be ours again already, the watch having put it back meanwhile)
        bypass = f"{GATEWAY_IP}:53"
        os.replace(temp, resolv)
        dnd_connections = servers.connections("dnd")
        client_capture.start()
        result = session(lab, bypass)
        frames = client_capture.stop()

        assert f"DND at {DND_IP}:902: Connect call failed" in result.get("error", ""), result
        assert toward_servers(frames) == []
        assert leaked(frames) == []
        assert servers.connections("dnd") == dnd_connections
        # The failure is the guard's refusal (a reset at once), not a drop or a timeout.
        assert try_connect(client.name, DND_IP, 902) == "refused"
        assert try_connect(client.name, DASHER_IP, 2151) == "refused"

        # The watch puts back exactly what blitzdns installed, and counts it.
        wait_for(lambda: guard_status()["watch"]["reverted"] == 1, "the watch to revert")
        assert resolv.read_bytes() == ours
        assert guard_status()["watch"]["last_change"] == "a rewrite of /etc/resolv.conf"

        checked = client.run(BLITZDNS, "check", "-c", str(config), "--json",
                             "--skip-system-resolver", "--control-socket", str(control),
                             check=False)  # fmt: skip
        steps = {s["name"]: s for s in json.loads(checked.stdout)}
        assert steps["leak guard"]["ok"], steps["leak guard"]
        proof = steps["leak guard proof: dnd"]
        assert proof["ok"] and f"{DND_IP}:902 was refused" in proof["detail"], proof
        assert "reverted 1 times" in steps["resolver watch"]["detail"]
        assert steps["resolver watch"]["warning"]
    finally:
        daemon.stop()
    # Fail closed: the rules outlive the daemon; only uninstall removes them, exactly.
    assert "table inet blitzdns" in client.run("nft", "list", "ruleset").stdout
    gone = client.run(BLITZDNS, "guard", "uninstall", "--root", str(root), "--apply")
    assert "ran: nft" in gone.stdout
    assert client.run("nft", "list", "ruleset").stdout == before
    client.run(BLITZDNS, "resolver-config", "uninstall", "--root", str(root))
    assert read_text(resolv) == f"nameserver {GATEWAY_IP}\n"
