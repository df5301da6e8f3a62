"""One SSH connection to one gateway, set up the way the user's own ``ssh`` would.

The user's ``~/.ssh/config`` (Host aliases, User, Port, IdentityFile, ProxyJump, Ciphers…),
ssh-agent and key files apply through asyncssh; host keys are always checked against
known_hosts (:mod:`tunnel.hostkeys`). This is the single edge where asyncssh and OS errors
become :mod:`tunnel.errors`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Sequence
from typing import Any

import asyncssh

from tunnel.chaff import drop_needless_chaff
from tunnel.errors import (
    AuthFailed,
    GatewayUnreachable,
    HostKeyError,
    LinkLost,
    TunnelConfigError,
    TunnelError,
)
from tunnel.forwards import Gateway
from tunnel.hostkeys import HostKeyPolicy
from tunnel.options import PasswordPrompt, TunnelOptions

log = logging.getLogger("tunnel.link")

PASSWORD_PROMPTS_MAX = 3
"""Password prompts per attempt, as OpenSSH's NumberOfPasswordPrompts."""


class _GatewayClient(asyncssh.SSHClient):
    """asyncssh callbacks: host key verdicts, password prompts, why the link ended."""

    def __init__(self, policy: HostKeyPolicy, label: str, prompt: PasswordPrompt | None) -> None:
        self.policy = policy
        self.label = label
        self.prompt = prompt
        self.prompts_asked = 0
        self.lost_reason: Exception | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self.policy.judge(host, addr, port, key)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_reason = exc
        if not self.closed.done():
            self.closed.set_result(None)

    async def _ask(self, prompt: str) -> str | None:
        if self.prompt is None or self.prompts_asked >= PASSWORD_PROMPTS_MAX:
            return None
        self.prompts_asked += 1
        answer = self.prompt(prompt)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    async def password_auth_requested(self) -> str | None:
        return await self._ask(f"{self.label}'s password: ")

    def kbdint_auth_requested(self) -> str | None:
        return "" if self.prompt is not None else NotImplemented

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        answers: list[str] = []
        for text, _echo in prompts:
            answer = await self._ask(f"{self.label}: {text.strip() or 'Password:'} ")
            if answer is None:
                return None
            answers.append(answer)
        return answers


class SSHLink:
    """An established, authenticated link to one gateway."""

    def __init__(self, conn: asyncssh.SSHClientConnection, client: _GatewayClient, label: str):
        self.conn = conn
        self.client = client
        self.gateway = label

    async def wait_closed(self) -> TunnelError:
        """Wait until the link ends; return why, as a :class:`LinkLost`."""
        await asyncio.shield(self.client.closed)
        reason = self.client.lost_reason
        return LinkLost(f"link to {self.gateway} lost: {describe(reason) if reason else 'closed'}")

    def close(self) -> None:
        self.conn.close()

    async def aclose(self, grace_s: float) -> None:
        """Close and wait (bounded) until the socket is gone."""
        self.conn.close()
        try:
            async with asyncio.timeout(grace_s):
                await self.conn.wait_closed()
        except TimeoutError:
            self.conn.abort()


def describe(exc: BaseException) -> str:
    """A short human description of an OS or asyncssh error."""
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.DisconnectError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _connect_kwargs(gateway: Gateway, options: TunnelOptions) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "keepalive_interval": options.keepalive_s,
        "keepalive_count_max": options.keepalive_count_max,
        "connect_timeout": options.connect_timeout_s,
        "login_timeout": options.connect_timeout_s,
    }
    if gateway.port is not None:
        kwargs["port"] = gateway.port
    if gateway.user is not None:
        kwargs["username"] = gateway.user
    if options.ssh_config is not None:
        kwargs["config"] = [str(options.ssh_config)]
    if options.client_keys is not None:
        kwargs["client_keys"] = [str(path) for path in options.client_keys]
    if options.agent_path is not None:
        kwargs["agent_path"] = options.agent_path
    if options.password is not None:
        kwargs["password"] = options.password
    if options.passphrase is not None:
        kwargs["passphrase"] = options.passphrase
    return kwargs


async def open_link(gateway: Gateway, options: TunnelOptions) -> SSHLink:
    """Connect and authenticate to ``gateway``; raise a :class:`TunnelError` on failure."""
    label = str(gateway)
    policy = HostKeyPolicy(options.known_hosts, trust_new=options.trust_new_host_key)
    clients: list[_GatewayClient] = []

    def client_factory() -> _GatewayClient:
        client = _GatewayClient(policy, label, options.password_prompt)
        clients.append(client)
        return client

    try:
        async with asyncio.timeout(options.connect_timeout_s + 1):
            conn = await asyncssh.connect(
                gateway.host,
                known_hosts=policy.known,
                client_factory=client_factory,
                **_connect_kwargs(gateway, options),
            )
    except asyncssh.PermissionDenied as exc:
        raise AuthFailed.refused(label, exc.reason) from None
    except asyncssh.HostKeyNotVerifiable as exc:
        if policy.verdict is not None:
            raise policy.verdict from None
        raise HostKeyError(f"host key of gateway {label} refused: {exc.reason}") from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise TunnelConfigError(f"gateway {label}: cannot load a client key: {exc}") from None
    except (asyncssh.ConfigParseError, ValueError) as exc:
        raise TunnelConfigError(f"gateway {label}: {exc}") from None
    except TimeoutError:
        raise GatewayUnreachable.timed_out(label, options.connect_timeout_s) from None
    except (OSError, asyncssh.Error) as exc:
        raise GatewayUnreachable(f"gateway {label}: {describe(exc)}") from None
    client = clients[-1]
    drop_needless_chaff(conn)
    log.info("link up to %s", label)
    return SSHLink(conn, client, label)
