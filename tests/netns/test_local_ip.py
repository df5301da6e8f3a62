"""Issue 7, local-IP mode: serve a second machine without opening the tunnel to everyone.

blitzdns runs in the client namespace ("this machine") with a ``[[shared]]`` address on
its link to ``lan2`` (the allowed second machine, ``dns = true``); ``lan3`` (a third
machine, not allowed) can reach that address too, through the client. The allowed
machine resolves protected names to the shared address and reaches the targets through
the tunnel; the disallowed one gets REFUSED and closed connections; loopback clients on
this machine keep their loopback mouths throughout. Two hosts on one (address, port)
are refused when the config is loaded.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import MakeBlitzdns
from .lab import (
    BLITZDNS,
    DASHER,
    DND,
    LAN2_NET,
    LAN3_IP,
    PRANCER,
    SHARED_IP,
    Blitzdns,
    FakeServers,
    Lab,
    Sshd,
    SshKeys,
    config_text,
    read_text,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

LOOKUP_LINE = "LOOKUP demo,NAME UID BLITZSERV"
DEFAULT_MOUTHS = ipaddress.ip_network("127.77.0.0/24")


def shared_block(hosts: tuple[str, ...]) -> str:
    listed = ", ".join(f'"{h}"' for h in hosts)
    return f"""
[[shared]]
address = "{SHARED_IP}"
allow = ["{LAN2_NET}"]
hosts = [{listed}]
dns = true
"""


@pytest.fixture(scope="module")
def shared(servers: FakeServers, module_sshd: Sshd, make_module_blitzdns: MakeBlitzdns) -> Blitzdns:
    """blitzdns sharing DND and dasher (not prancer) on the client's lan2 address."""
    daemon = make_module_blitzdns(module_sshd, extra=shared_block(("dnd", "dasher"))).start()
    daemon.wait_ready()
    return daemon


def session_from(lab: Lab, role: str, resolver: str) -> dict[str, Any]:
    """The BlitzMail session from ``role``'s namespace, names resolved by ``resolver``."""
    result = lab[role].agent("session", "--resolver", f"{resolver}:53")
    assert result["account"]["blitzserv"] == DASHER, result
    assert result["replies"]["VERS"]["code"] == 10, result
    assert DASHER in result["replies"]["VERS"]["text"], result
    return result


def assert_loopback_client_keeps_its_mouths(lab: Lab) -> None:
    result = session_from(lab, "client", "127.0.0.1")
    for key in ("dnd_address", "server_address"):
        assert ipaddress.ip_address(result[key]) in DEFAULT_MOUTHS, result


def test_allowed_machine_resolves_the_shared_address_and_reaches_the_target(
    lab: Lab, servers: FakeServers, shared: Blitzdns
) -> None:
    answer = lab["lan2"].dig(SHARED_IP, DND)
    lookups = servers.received("dnd").count(LOOKUP_LINE)
    result = session_from(lab, "lan2", SHARED_IP)

    assert answer["status"] == "NOERROR" and answer["answers"] == [SHARED_IP], answer["output"]
    assert result["dnd_address"] == SHARED_IP
    assert result["server_address"] == SHARED_IP
    wait_for(
        lambda: servers.received("dnd").count(LOOKUP_LINE) > lookups,
        "DND (reachable only through the gateway) to receive the LOOKUP",
    )


def test_allowed_machine_gets_nodata_for_a_host_not_shared(lab: Lab, shared: Blitzdns) -> None:
    answer = lab["lan2"].dig(SHARED_IP, PRANCER)
    assert answer["status"] == "NOERROR" and answer["answers"] == [], answer["output"]


def test_disallowed_machine_is_refused_by_the_resolver(lab: Lab, shared: Blitzdns) -> None:
    for name in (DND, DASHER):
        answer = lab["lan3"].dig(SHARED_IP, name)
        assert answer["status"] == "REFUSED" and answer["answers"] == [], answer["output"]


@pytest.mark.parametrize("port", [902, 2151])
def test_disallowed_machine_gets_a_closed_connection_from_the_mouth(
    lab: Lab, servers: FakeServers, shared: Blitzdns, port: int
) -> None:
    before = {name: servers.connections(name) for name in ("dnd", DASHER)}
    held = lab["lan3"].agent("hold", SHARED_IP, str(port), "--send", LOOKUP_LINE)

    assert held["connected"], held
    assert held["closed_by_peer"] and not held.get("timed_out"), held
    assert held["received"] == "", held
    assert {name: servers.connections(name) for name in before} == before
    wait_for(lambda: LAN3_IP in read_text(shared.log), "the refusal logged with the peer")


def test_loopback_clients_keep_their_loopback_mouths_throughout(lab: Lab, shared: Blitzdns) -> None:
    assert_loopback_client_keeps_its_mouths(lab)
    session_from(lab, "lan2", SHARED_IP)
    assert lab["lan3"].dig(SHARED_IP, DND)["status"] == "REFUSED"
    lab["lan3"].agent("hold", SHARED_IP, "902", "--send", LOOKUP_LINE)
    assert_loopback_client_keeps_its_mouths(lab)


@pytest.mark.parametrize("command", ["run", "plan"])
def test_two_hosts_on_one_shared_address_and_port_are_refused_at_load(
    lab: Lab, ssh_keys: SshKeys, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "two-on-one.toml"
    path.write_text(config_text(ssh_keys, tmp_path, extra=shared_block(("dasher", "prancer"))))

    try:
        done = lab["client"].run(BLITZDNS, command, "--config", str(path), check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blitzdns {command} accepted the config and kept running")

    message = done.stderr.strip()
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr}{done.stdout}"
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    for part in ("dasher", "prancer", SHARED_IP, "2151", str(path)):
        assert part in message, f"{part!r} missing from: {message}"
