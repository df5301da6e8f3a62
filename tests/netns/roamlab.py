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

from dataclasses import dataclass

from .lab import Lab, Namespace, ip_command

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
