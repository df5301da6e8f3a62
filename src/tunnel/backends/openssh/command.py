"""The ssh master's command line: what ``ssh -N -M`` is run with (pure, given the files).

``ssh`` finds ``~/.ssh`` through the account's passwd entry, asyncssh through ``$HOME``;
the two differ when ``$HOME`` is not the account's home (a test, a container, a service
started with another environment). Both backends must reach the gateway with the same
files, so the master is told them explicitly (:class:`SshFiles`), found the way the
asyncssh backend finds them: config (``-F``, which also leaves out the system-wide
``/etc/ssh/ssh_config``, as asyncssh does), known_hosts, and the default identities.
``~`` *inside* the config (``IdentityFile ~/.ssh/work``) is still expanded by ssh with the
passwd home: write such paths in full when ``$HOME`` differs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunnel.forwards import Gateway
from tunnel.hostkeys import default_known_hosts
from tunnel.options import TunnelOptions

DEFAULT_IDENTITIES = (
    "id_rsa",
    "id_ecdsa",
    "id_ecdsa_sk",
    "id_ed25519",
    "id_ed25519_sk",
    "id_xmss",
    "id_dsa",
)
"""OpenSSH's default identity files in ``~/.ssh``, in its order."""


@dataclass(frozen=True)
class SshFiles:
    """The user's ssh files as the asyncssh backend finds them."""

    config: Path
    """The client config (``/dev/null`` when there is none: no config at all)."""
    known_hosts: Path
    identities: tuple[Path, ...] | None
    """Key files to offer; ``None``: leave it to the config's ``IdentityFile``."""

    @classmethod
    def of(cls, options: TunnelOptions) -> SshFiles:
        """Resolve ``options``' ssh files (each ``None`` means "from ``$HOME``")."""
        ssh_dir = Path("~", ".ssh").expanduser()
        config = options.ssh_config
        if config is None:
            config = ssh_dir / "config"
            if not os.access(config, os.R_OK):
                config = Path(os.devnull)
        identities = options.client_keys
        if identities is None:
            found = tuple(p for p in (ssh_dir / n for n in DEFAULT_IDENTITIES) if p.exists())
            identities = found or None
        return cls(config, options.known_hosts or default_known_hosts(), identities)


def master_argv(
    ssh: str, gateway: Gateway, options: TunnelOptions, control_path: Path, files: SshFiles
) -> list[str]:
    """The command line of the master: no session (``-N``), a private control socket, host
    keys always checked, keepalives as configured, never a prompt, the user's files given
    explicitly (:class:`SshFiles`)."""
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
    argv += ["-o", f"UserKnownHostsFile={files.known_hosts}"]
    if options.agent_path is not None:
        argv += ["-o", f"IdentityAgent={options.agent_path}"]
    for key in files.identities or ():
        argv += ["-i", str(key)]
    argv += ["-F", str(files.config)]
    if gateway.port is not None:
        argv += ["-p", str(gateway.port)]
    if gateway.user is not None:
        argv += ["-l", gateway.user]
    argv += ["--", gateway.host]
    return argv


def exec_argv(ssh: str, control_path: Path, label: str) -> list[str]:
    """The command line (less the remote command) of an ``ssh`` that runs a command on the
    gateway through the running master (a session channel, ``MUX_C_NEW_SESSION``).

    No config file is read (``-F /dev/null``: the master already has the user's), no
    master is started, and should the control socket be gone, ``ProxyCommand=false`` makes
    the fallback connection fail at once instead of dialling anything.
    """
    return [
        ssh,
        "-F",
        "/dev/null",
        "-S",
        str(control_path),
        "-o",
        "ControlMaster=no",
        "-o",
        "ProxyCommand=false",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-T",
        "-e",
        "none",
        "--",
        label,
    ]
