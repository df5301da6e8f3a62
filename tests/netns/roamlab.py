"""A laptop with two uplinks, for the roaming tests and bench (issue 15).

Topology (every address exists only inside these namespaces)::

    client  up1 10.91.1.2 ──── 10.91.1.1 ┐
                                          router 10.91.9.1 ──── 10.91.9.2 server (sshd, targets)
            up2 10.91.2.2 ──── 10.91.2.1 ┘

The router forwards; the client's default route goes through one uplink at a time.
:meth:`RoamLab.switch` does what a Wi-Fi change does: the new uplink gets its address
and the default route, then the old address is deleted. The server's replies to the old
address then reach an interface that no longer owns it and are dropped, so a TCP
connection from the old address dies silently, as it does on a real network change.

Every process is started through :class:`~tests.netns.lab.Namespace` and killed at teardown.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import daemon_status

from .lab import (
    PYTHON,
    Blitzdns,
    Lab,
    Namespace,
    SshKeys,
    config_text,
    ip_command,
    read_text,
    stop_process,
)

UPLINKS = {
    "up1": ("10.91.1.2", "10.91.1.1"),
    "up2": ("10.91.2.2", "10.91.2.1"),
}
"""Client interface → (client address, router address)."""
ROUTER_SERVER_IP = "10.91.9.1"
SERVER_IP = "10.91.9.2"


@dataclass
class RoamLab(Lab):
    """Three namespaces; :meth:`Lab.destroy` kills what runs in them and deletes them."""

    active: str = "up1"

    def create(self) -> None:
        for role in ("client", "router", "server"):
            ns = Namespace(f"bz-{self.tag}-roam-{role}")
            ip_command("netns", "add", ns.name, check=True)
            self.namespaces[role] = ns
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
            ns.ip("link", "set", "lo", "up")
        self["router"].sysctl("net.ipv4.ip_forward", "1")
        for uplink, (client_ip, router_ip) in UPLINKS.items():
            self._veth("client", uplink, f"{client_ip}/24", "router", f"r{uplink}",
                       f"{router_ip}/24")  # fmt: skip
        self._veth("router", "rsrv", f"{ROUTER_SERVER_IP}/24", "server", "srv", f"{SERVER_IP}/24")
        self["server"].ip("route", "add", "default", "via", ROUTER_SERVER_IP)
        self["client"].ip("route", "add", "default", "via", UPLINKS["up1"][1], "dev", "up1")
        # up2 starts as a second network in reach but without the client's address on it.
        self["client"].ip("addr", "del", f"{UPLINKS['up2'][0]}/24", "dev", "up2")

    @property
    def standby(self) -> str:
        return "up2" if self.active == "up1" else "up1"

    @property
    def client_ip(self) -> str:
        return UPLINKS[self.active][0]

    def switch(self) -> str:
        """Move the client to the other uplink as a Wi-Fi change does; the new uplink.

        Address on the new uplink, default route through it (from here on the new path
        is usable), then the old address deleted.
        """
        old, new = self.active, self.standby
        client = self["client"]
        client.ip("addr", "add", f"{UPLINKS[new][0]}/24", "dev", new)
        client.ip("route", "replace", "default", "via", UPLINKS[new][1], "dev", new)
        client.ip("addr", "del", f"{UPLINKS[old][0]}/24", "dev", old)
        self.active = new
        return new

    def settle_on(self, uplink: str) -> None:
        """Only ``uplink``: its address, the default route through it, the other address gone."""
        other = "up2" if uplink == "up1" else "up1"
        client = self["client"]
        client.ip("addr", "replace", f"{UPLINKS[uplink][0]}/24", "dev", uplink)
        client.ip("route", "replace", "default", "via", UPLINKS[uplink][1], "dev", uplink)
        client.run("ip", "addr", "del", f"{UPLINKS[other][0]}/24", "dev", other, check=False)
        self.active = uplink


AGENT = str(Path(__file__).with_name("roam_agent.py"))
ECHO_PORT = 902
"""The echo server answers on DND's port, so the preset's ``dnd`` mouth carries it."""
BULK_PORT = 2151
"""The bulk server answers on BlitzServ's port: the ``dasher`` mouth."""
SSHD_LISTEN = f"{SERVER_IP}:22"


def roam_config(keys: SshKeys, root: Path, *, backend: str = "asyncssh", extra: str = "") -> str:
    """blitzdns in the client namespace: ``dnd`` and ``dasher`` carried to the server.

    Keepalives are the default (15 s × 3), as for the peer: only roaming can explain a
    relink within seconds.
    """
    known_hosts = root / "known_hosts_roam"
    known_hosts.write_text(
        f"{SERVER_IP} {' '.join(keys.host_key.with_suffix('.pub').read_text().split()[:2])}\n"
    )
    return config_text(
        keys,
        root,
        wait_for_link_s=30,
        extra=extra,
        hosts=("dnd", "dasher"),
        gateway=SSHD_LISTEN,
        known_hosts=known_hosts,
        remotes={"dnd": SERVER_IP, "dasher": SERVER_IP},
        tunnel=f'backend = "{backend}"',
    )


@dataclass
class Records:
    """A JSON-lines output file of an agent run."""

    proc: subprocess.Popen[Any]
    out: Path

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in read_text(self.out).splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def results(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if "ready" not in line]

    def stop(self) -> None:
        stop_process(self.proc)


def agent(ns: Namespace, root: Path, name: str, *args: str) -> Records:
    """Start a ``roam_agent.py`` subcommand; return once it says it is ready."""
    out = root / f"{name}.jsonl"
    proc = ns.spawn_ready(
        PYTHON, AGENT, *args, marker='"ready"', log=root / f"{name}.log", stdout=out
    )
    return Records(proc, out)


def link_source(ns: Namespace) -> str | None:
    """The client address of the established SSH connection to the server, if any."""
    shown = ns.run("ss", "-Htn", "state", "established", "dst", SSHD_LISTEN, check=False)
    sources = {line.split()[-2].rpartition(":")[0] for line in shown.stdout.splitlines() if line}
    return sources.pop() if len(sources) == 1 else None


def status(ns: Namespace, daemon: Blitzdns) -> dict[str, Any]:
    """The daemon's ``status --json`` (its control socket is a file: reachable from here)."""
    return daemon_status(daemon.root / "control.sock")
