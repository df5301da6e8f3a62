"""Supervised SSH port forwarding: local mouths carried over one SSH link.

Usable on its own; imports nothing from :mod:`blitzdns`. The daemon's view::

    tunnel = Tunnel(TunnelOptions(gateways=(Gateway.parse("jsmith@nimbus"),)), forwards)
    await tunnel.bind()      # as root, before dropping privileges
    await tunnel.start()     # the link comes up in the background
    tunnel.state             # LinkStatus, gateway, counters
    await tunnel.close()
"""

from typing import TYPE_CHECKING, Any

from tunnel.backoff import Backoff
from tunnel.forwards import Forward, Gateway
from tunnel.options import TunnelOptions
from tunnel.state import ForwardState, LinkStatus, RelayState, TunnelState, UdpForwardState
from tunnel.udp import RelayLimits, UdpForward

if TYPE_CHECKING:
    from tunnel.tunnel import Tunnel


def __getattr__(name: str) -> Any:
    """``Tunnel`` is imported on first use: it loads asyncssh (about 0.2 s), which code that
    only parses gateways or forwards (a config check) does not need."""
    if name == "Tunnel":
        from tunnel.tunnel import Tunnel  # noqa: PLC0415  (deliberate: see above)

        return Tunnel
    raise AttributeError(f"module 'tunnel' has no attribute {name!r}")


__all__ = [
    "Backoff",
    "Forward",
    "ForwardState",
    "Gateway",
    "LinkStatus",
    "RelayLimits",
    "RelayState",
    "Tunnel",
    "TunnelOptions",
    "TunnelState",
    "UdpForward",
    "UdpForwardState",
]
