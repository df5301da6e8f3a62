"""The link backends behind one factory: :func:`open_link` picks by ``options.backend``.

* ``asyncssh`` (:mod:`.asyncssh_link`): one SSH connection in this process, one channel
  per flow;
* ``openssh`` (:mod:`.openssh`): an ``ssh -M`` master process carries the bytes.

Each is imported on first use (asyncssh costs about 0.2 s to load).
"""

from __future__ import annotations

from tunnel.forwards import Gateway
from tunnel.link import Link
from tunnel.options import TunnelOptions


async def open_link(gateway: Gateway, options: TunnelOptions) -> Link:
    """Connect to ``gateway`` with the backend ``options`` names; raise a
    :class:`tunnel.errors.TunnelError` on failure."""
    if options.backend == "openssh":
        from tunnel.backends.openssh.link import open_mux_link  # noqa: PLC0415  (on first use)

        return await open_mux_link(gateway, options)
    from tunnel.backends.asyncssh_link import (  # noqa: PLC0415  (asyncssh: 0.2 s to load)
        open_link as open_asyncssh_link,
    )

    return await open_asyncssh_link(gateway, options)
