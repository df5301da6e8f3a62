"""A throwaway SSH gateway for the demo and the tests: an asyncssh server on loopback.

It stands where a campus SSH host would: it accepts one client key made at start, and
forwards a direct-tcpip channel only to the targets it was given, resolving their names
itself (the "campus DNS" the client never sees). Anything else is refused. An exec request
runs its command under ``/bin/sh -c`` on this machine, as a login shell on the gateway
would: that is how a UDP forward's relay starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunnel.sshlib import asyncssh

Route = tuple[str, int]


class _GatewayServer(asyncssh.SSHServer):
    def __init__(self, gateway: DemoGateway):
        self.gateway = gateway

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        target = self.gateway.routes.get((dest_host.lower().rstrip("."), dest_port))
        if target is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"{dest_host}:{dest_port} is not reachable here"
            )
        self.gateway.channels_opened += 1
        return lambda reader, writer: self.gateway.pipe(target, reader, writer)


class DemoGateway:
    """An SSH gateway on 127.0.0.1 that reaches only ``routes`` (name, port) → (addr, port)."""

    def __init__(self, routes: Mapping[Route, Route], workdir: Path, host: str = "127.0.0.1"):
        self.routes = dict(routes)
        self.workdir = workdir
        self.host = host
        self.port = 0
        self.channels_opened = 0
        self.execs_started = 0
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self._server: asyncssh.SSHAcceptor | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    @property
    def client_key_path(self) -> Path:
        return self.workdir / "demo_client_key"

    @property
    def known_hosts_path(self) -> Path:
        return self.workdir / "known_hosts"

    async def start(self, port: int = 0) -> None:
        authorized = asyncssh.import_authorized_keys(self.client_key.export_public_key().decode())
        self._server = await asyncssh.create_server(
            lambda: _GatewayServer(self),
            self.host,
            port,
            server_host_keys=[self.host_key],
            authorized_client_keys=authorized,
            allow_scp=False,
            keepalive_interval=15,
            process_factory=self.run_command,
            encoding=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_key.write_private_key(str(self.client_key_path))
        self.client_key_path.chmod(0o600)
        self.trust_as(self.host, self.port)

    def trust_as(self, host: str, port: int) -> None:
        """Write the client's known_hosts for the address it will dial (maybe a relay's).

        The key is trusted explicitly, as a reviewed ``ssh-keyscan`` would: never on first use.
        """
        public = self.host_key.export_public_key().decode().strip()
        self.known_hosts_path.write_text(f"[{host}]:{port} {public}\n")

    async def pipe(
        self, target: Route, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
    ) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return

        async def copy(src: Any, dst: Any) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncssh.Error):
                pass
            finally:
                with contextlib.suppress(OSError, asyncssh.Error):
                    dst.write_eof()

        up = asyncio.ensure_future(copy(reader, t_writer))
        down = asyncio.ensure_future(copy(t_reader, writer))
        await asyncio.gather(up, down)
        t_writer.close()
        writer.close()

    async def run_command(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """An exec request: the command under ``/bin/sh -c``, wired to the channel; it ends
        when the channel does (its stdin closes, or it is terminated)."""
        command = process.command
        if not command:
            process.exit(1)
            return
        self.execs_started += 1
        local = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.workdir,
        )
        try:
            await process.redirect(stdin=local.stdin, stdout=local.stdout, stderr=local.stderr)
            status = await local.wait()
            await process.stdout.drain()
            process.exit(status)
        except (OSError, asyncssh.Error):
            pass
        finally:
            if local.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    local.terminate()
                await local.wait()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                async with asyncio.timeout(5):
                    await process.wait_closed()  # runs asyncssh's clean-up of the redirects

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
