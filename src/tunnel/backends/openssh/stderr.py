"""Why a master exited before its control socket answered, read from its stderr, pure.

``ssh`` exits with status 255 for every failure; only its last words tell them apart, so
this is the one place that reads OpenSSH's English. The errors are built with the same
constructors as the asyncssh backend's (``AuthFailed.refused``,
``GatewayUnreachable.because``); an unknown or changed host key is named afterwards by
one more key exchange through asyncssh (:func:`tunnel.backends.openssh.master.name_the_key`).
"""

from __future__ import annotations

from tunnel.errors import (
    AuthFailed,
    GatewayUnreachable,
    HostKeyChanged,
    HostKeyUnknown,
    TunnelConfigError,
    TunnelError,
)
from tunnel.forwards import Gateway
from tunnel.hostkeys import DEFAULT_PORT, default_known_hosts, keyscan_command
from tunnel.options import TunnelOptions

NOTHING_ANSWERED = ("Connection refused", "Network is unreachable", "No route to host")
"""ssh's words for a connect that failed before any TCP connection (``connect to host H
port P: …``)."""


def keyscan_hint(gateway: Gateway, options: TunnelOptions) -> str:
    return keyscan_command(
        gateway.host, gateway.port or DEFAULT_PORT, options.known_hosts or default_known_hosts()
    )


def classify_exit(
    gateway: Gateway, options: TunnelOptions, returncode: int | None, stderr: str
) -> TunnelError:
    """Why a master exited before its control socket answered: final or retryable."""
    label = str(gateway)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"ssh exited with status {returncode}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyChanged(
            f"gateway {label} presented a DIFFERENT host key than known_hosts holds: possibly "
            "an attack; refused (remove the old key with ssh-keygen -R only if you know why "
            "it changed)",
            host=gateway.host,
            port=gateway.port or 22,
        )
    if "Host key verification failed" in stderr or "No matching host key" in stderr:
        return HostKeyUnknown(
            f"host key of gateway {label} is not in known_hosts; refused ({last}). Check its "
            f"fingerprint, then record it: {keyscan_hint(gateway, options)} (or use "
            "--trust-new-host-key)",
            host=gateway.host,
            port=gateway.port or 22,
        )
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return AuthFailed.refused(label, last)
    if "Bad configuration option" in stderr or "command-line line" in stderr:
        return TunnelConfigError(f"gateway {label}: ssh rejected its options: {last}")
    return GatewayUnreachable.because(label, last, refused=any(m in last for m in NOTHING_ANSWERED))
