"""The ssh master's command line, pure: what ``ssh -N -M`` is run with."""

from __future__ import annotations

from pathlib import Path

from tunnel.forwards import Gateway
from tunnel.options import TunnelOptions


def master_argv(
    ssh: str, gateway: Gateway, options: TunnelOptions, control_path: Path
) -> list[str]:
    """The command line of the master: no session (``-N``), a private control socket, host
    keys always checked, keepalives as configured, never a prompt."""
    strict = "accept-new" if options.trust_new_host_key else "yes"
    argv = [
        ssh,
        "-N",
        "-M",
        "-S",
        str(control_path),
        "-o",
        "ControlPersist=no",
        "-o",
        "ExitOnForwardFailure=yes",
        # The user's ~/.ssh/config may hold LocalForward/RemoteForward for this host: the
        # master must not set them up (a busy port would make it exit, retried forever).
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        f"StrictHostKeyChecking={strict}",
        "-o",
        f"ServerAliveInterval={max(1, round(options.keepalive_s))}",
        "-o",
        f"ServerAliveCountMax={options.keepalive_count_max}",
        "-o",
        f"ConnectTimeout={max(1, round(options.connect_timeout_s))}",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]
    if options.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={options.known_hosts}"]
    if options.agent_path is not None:
        argv += ["-o", f"IdentityAgent={options.agent_path}"]
    for key in options.client_keys or ():
        argv += ["-i", str(key)]
    if options.ssh_config is not None:
        argv += ["-F", str(options.ssh_config)]
    if gateway.port is not None:
        argv += ["-p", str(gateway.port)]
    if gateway.user is not None:
        argv += ["-l", gateway.user]
    argv += ["--", gateway.host]
    return argv
