"""Tunnel options: one frozen, validated value; the rest of the package trusts it."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunnel.backoff import Backoff
from tunnel.errors import TunnelConfigError
from tunnel.forwards import Gateway, parse_gateways

PasswordPrompt = Callable[[str], "str | Awaitable[str | None] | None"]
"""Asked with a prompt such as ``"jsmith@nimbus.dartmouth.edu's password: "``."""

PassphraseSource = str | Callable[[str], "str | Awaitable[str]"]
"""A passphrase, or a callable given a key file name (asyncssh calls it for every key file)."""


def _positive(value: object, what: str, *, integer: bool = False) -> None:
    kinds = int if integer else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)
        or value <= 0
    ):
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise TunnelConfigError(f"tunnel option {what}: expected {kind}, got {value!r}")


@dataclass(frozen=True)
class TunnelOptions:
    """How to reach the gateways and how to supervise the link."""

    gateways: tuple[Gateway, ...]
    """Tried in order on every (re)connect; the first that connects is used."""
    known_hosts: Path | None = None
    """Host keys to trust; ``None``: ``~/.ssh/known_hosts`` (plus /etc/ssh/ssh_known_hosts)."""
    ssh_config: Path | None = None
    """OpenSSH client config; ``None``: ``~/.ssh/config`` when it exists."""
    trust_new_host_key: bool = False
    """Accept a gateway key that known_hosts does not list yet and record it (TOFU, by
    choice). A *changed* key is refused regardless."""
    keepalive_s: float = 15
    """Seconds between SSH keepalive requests (OpenSSH ``ServerAliveInterval``)."""
    keepalive_count_max: int = 3
    """Unanswered keepalives before the link is declared dead (``ServerAliveCountMax``)."""
    roaming: bool = True
    """Follow the network (:mod:`tunnel.roaming`): when the link's path moves or the machine
    resumes, probe the link at once and replace it without backoff if it does not answer,
    instead of waiting for the keepalives to run out."""
    wait_for_link_s: float = 10
    """How long a connection accepted while the link is down waits before being closed."""
    connect_timeout_s: float = 10
    """Limit for TCP connect plus SSH handshake and authentication, per gateway attempt."""
    allow_non_loopback: bool = False
    """Permit mouths on addresses other than loopback (logged as a warning)."""
    backoff: Backoff = field(default_factory=Backoff)
    client_keys: tuple[Path, ...] | None = None
    """Private key files; ``None``: the config's IdentityFile, else ~/.ssh/id_*; plus the agent."""
    agent_path: str | None = None
    """ssh-agent socket; ``None``: ``IdentityAgent`` from the config, else ``$SSH_AUTH_SOCK``."""
    password: str | None = None
    password_prompt: PasswordPrompt | None = None
    """Asked for a password or keyboard-interactive answer (only when a terminal is attached)."""
    passphrase: PassphraseSource | None = None
    channel_window: int = 2 * 1024 * 1024
    """SSH receive window per channel (RFC 4254 §5.2), bytes."""
    channel_max_packet: int = 32 * 1024
    """Largest data packet we accept per channel, bytes (RFC 4254 §5.1)."""
    backend: Literal["asyncssh", "openssh"] = "asyncssh"
    """Who carries the bytes: ``asyncssh`` (in this process), or ``openssh``: one ``ssh -M``
    master process per link, each connection handed to it over the mux control socket
    (:mod:`tunnel.backends.openssh`; faster, but keys and ssh-agent only: no password or passphrase,
    no prompts)."""
    ssh_binary: str = "ssh"
    """The OpenSSH client run by the ``openssh`` backend (a name on $PATH or a path)."""

    def __post_init__(self) -> None:
        parsed = parse_gateways(self.gateways)
        object.__setattr__(self, "gateways", parsed)
        for name in ("known_hosts", "ssh_config"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str | Path):
                    raise TunnelConfigError(f"tunnel option {name}: expected a path")
                object.__setattr__(self, name, Path(value).expanduser())
        if self.client_keys is not None:
            keys = tuple(Path(k).expanduser() for k in self.client_keys)
            object.__setattr__(self, "client_keys", keys)
        for name in ("keepalive_s", "wait_for_link_s", "connect_timeout_s"):
            _positive(getattr(self, name), name)
        for name in ("keepalive_count_max", "channel_window", "channel_max_packet"):
            _positive(getattr(self, name), name, integer=True)
        if self.backend not in ("asyncssh", "openssh"):
            raise TunnelConfigError(
                f"tunnel option backend: expected 'asyncssh' or 'openssh', got {self.backend!r}"
            )
        if self.backend == "openssh":
            for name in ("password", "password_prompt", "passphrase"):
                if getattr(self, name) is not None:
                    raise TunnelConfigError(
                        f"tunnel option {name}: the openssh backend cannot use it (ssh runs "
                        "in batch mode); use a key or ssh-agent, or backend 'asyncssh'"
                    )
        if not isinstance(self.ssh_binary, str) or not self.ssh_binary:
            raise TunnelConfigError("tunnel option ssh_binary: expected a command name or path")
        if not isinstance(self.backoff, Backoff):
            raise TunnelConfigError("tunnel option backoff: expected a Backoff")
