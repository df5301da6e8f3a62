"""Supervised SSH port forwarding: local mouths carried over one SSH link.

Usable on its own; imports nothing from :mod:`blitzdns`. The daemon's view::

    tunnel = Tunnel(TunnelOptions(gateways=(Gateway.parse("jsmith@nimbus"),)), forwards)
    await tunnel.bind()      # as root, before dropping privileges
    await tunnel.start()     # the link comes up in the background
    tunnel.state             # LinkStatus, gateway, counters
    await tunnel.close()
"""

from tunnel.backoff import Backoff
from tunnel.forwards import Forward, Gateway
from tunnel.options import TunnelOptions
from tunnel.state import ForwardState, LinkStatus, TunnelState
from tunnel.tunnel import Tunnel

__all__ = [
    "Backoff",
    "Forward",
    "ForwardState",
    "Gateway",
    "LinkStatus",
    "Tunnel",
    "TunnelOptions",
    "TunnelState",
]
