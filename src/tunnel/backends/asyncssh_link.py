"""The ``asyncssh`` link backend: one SSH connection in this process, one channel per flow.

The connection is set up the way the user's own ``ssh`` would: ``~/.ssh/config`` (Host
aliases, User, Port, IdentityFile, ProxyJump, Ciphers…), ssh-agent and key files apply
through asyncssh; host keys are always checked against known_hosts
(:mod:`tunnel.hostkeys`). This is the single edge where asyncssh and OS errors become
:mod:`tunnel.errors`.

Every flow opens a ``direct-tcpip`` channel (RFC 4254 §7.2) of its own kind
(:mod:`tunnel.backends.direct`: no coroutine, task or separate session object per
connection). The data path is two small protocol objects wired back to back with no task
and no buffer copy per chunk: bytes read from the client go straight to the channel's
``write`` (asyncssh's) and bytes from the channel to
``Transport.write`` (the packets of one read of the SSH socket together); each side's
``pause_writing`` pauses the other side's reading, so a slow reader holds back the fast
writer (bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import mmap
import os
import socket
from collections.abc import Sequence
from typing import Any, cast

from tunnel.backends import asyncssh_patches, poly1305
from tunnel.backends.chaff import drop_needless_chaff
from tunnel.backends.direct import DirectTCPChannel
from tunnel.backends.inline import Inline
from tunnel.backends.lean import lazy_keepalive, skip_unlogged_packets
from tunnel.early import offered, take
from tunnel.errors import (
    AuthFailed,
    GatewayUnreachable,
    HostKeyError,
    LinkLost,
    TunnelConfigError,
    TunnelError,
)
from tunnel.exec import WRITE_HIGH_WATER
from tunnel.forwards import Gateway
from tunnel.hostkeys import HostKeyPolicy
from tunnel.link import Flow, before_cut_close
from tunnel.options import PasswordPrompt, TunnelOptions
from tunnel.sshlib import asyncssh

log = logging.getLogger("tunnel.link")

PENDING_MAX = 256 * 1024
"""Bytes a client may send before its channel is open; beyond that reading pauses."""
CLIENT_WRITE_HIGH_WATER = 1024 * 1024
"""Bytes queued towards a local client before the channel is paused (then resumed at ¼)."""
CLIENT_READ = 1024 * 1024
"""The most one read of a client socket takes once its channel is open (before: at most
:data:`PENDING_MAX`). asyncio reads a socket once per turn of its loop: with 256 KiB reads
(what uvloop and asyncio read at most) a bulk upload took a turn per 256 KiB, always
full (3900 reads per GB); the turn's own Python (select, handles, the transport's read)
counted in every one. 1 MiB: A/B in bench/notes/aesbulk.md (up, CPU per GB against ssh
-L's: asyncio 1.40x -> 1.26x, uvloop 1.25x -> 1.19x; one run each). The buffer is an
anonymous mapping: only the pages a read has written become resident."""

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


class AsyncsshExec:
    """An :class:`ExecChannel` on an asyncssh connection (one session channel)."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self.process = process

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, command: str) -> AsyncsshExec:
        try:
            process = await conn.create_process(command, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise LinkLost(f"cannot open an exec channel: {exc}") from None
        return cls(process)

    async def write(self, data: bytes) -> None:
        try:
            self.process.stdin.write(data)
            await self.process.stdin.drain()
        except (OSError, asyncssh.Error) as exc:
            raise LinkLost(f"exec channel: {exc}") from None

    def write_nowait(self, data: bytes) -> bool:
        stdin = self.process.stdin
        if stdin.channel.get_write_buffer_size() > WRITE_HIGH_WATER:
            return False
        try:
            stdin.write(data)
        except (OSError, asyncssh.Error):
            return False
        return True

    def write_eof(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.write_eof()

    async def read(self, size: int) -> bytes:
        return await self._read(self.process.stdout, size)

    async def read_stderr(self, size: int) -> bytes:
        return await self._read(self.process.stderr, size)

    @staticmethod
    async def _read(stream: asyncssh.SSHReader[bytes], size: int) -> bytes:
        try:
            return await stream.read(size)
        except (OSError, asyncssh.Error):
            return b""

    async def wait(self) -> int | None:
        completed = await self.process.wait(check=False)
        return completed.exit_status

    def close(self) -> None:
        self.process.close()


class SSHLink:
    """An established, authenticated link to one gateway (:class:`tunnel.link.Link`)."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        client: _GatewayClient,
        label: str,
        options: TunnelOptions,
    ):
        self.conn = conn
        self.client = client
        self.gateway = label
        self.window = options.channel_window
        self.max_packet = options.channel_max_packet
        self.closing = False
        #: The one buffer every client socket of this link is read into (``recv_into``):
        #: a read is done with when its ``buffer_updated`` returns (the channel's write
        #: seals from it or copies what waits; data before the channel is open is copied).
        #: Made at the first read (an idle daemon's memory stays as it was), its pages
        #: resident only once written (a mapping, not a zero-filled bytearray).
        self.client_reads: memoryview | None = None

    def carry(self, flow: Flow) -> None:
        """Wrap the flow's socket in a transport, then open its channel: no task, the
        steps run in the loop's callbacks (:class:`tunnel.backends.inline.Inline`). A link
        whose connection is gone (lost or closed, its end not yet seen by the supervisor)
        gives the flow back, to be held for the next link (:meth:`Flow.give_back`):
        nothing of it was read or sent."""
        if self.conn._transport is None:  # asyncssh's mark of a connection ended
            flow.give_back(self)
            return
        poly1305.want()
        side = _ClientSide(self, flow)
        flow.stop = side.cut
        loop = asyncio.get_running_loop()
        side.accepting = Inline(
            loop.connect_accepted_socket(lambda: side, flow.sock), side.transport_ready
        )

    async def open_exec(self, command: str) -> AsyncsshExec:
        """A session channel running ``command`` (RFC 4254 §6.5)."""
        return await AsyncsshExec.start(self.conn, command)

    async def wait_closed(self) -> TunnelError:
        """Wait until the link ends; return why, as a :class:`LinkLost`."""
        await asyncio.shield(self.client.closed)
        reason = self.client.lost_reason
        return LinkLost(f"link to {self.gateway} lost: {describe(reason) if reason else 'closed'}")

    def close(self) -> None:
        self.closing = True
        self.conn.close()

    def path(self) -> tuple[str, str] | None:
        """The local and gateway addresses of the link's TCP connection (None behind a
        ProxyJump or ProxyCommand)."""
        local = self.conn.get_extra_info("sockname")
        remote = self.conn.get_extra_info("peername")
        if not isinstance(local, tuple) or not isinstance(remote, tuple):
            return None
        return str(local[0]), str(remote[0])

    async def probe(self, timeout_s: float) -> bool:
        """One keepalive (``keepalive@openssh.com``, want-reply), as asyncssh's own timer
        sends it; True when any reply came within ``timeout_s``. asyncssh has no public
        call for it, so this uses the one its keepalive timer uses."""
        if self.client.closed.done():
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self.conn._make_global_request(b"keepalive@openssh.com")
        except TimeoutError:
            return False
        return not self.client.closed.done()

    async def aclose(self, grace_s: float) -> None:
        """Close and wait (bounded) until the socket is gone."""
        self.close()
        try:
            async with asyncio.timeout(grace_s):
                await self.conn.wait_closed()
        except TimeoutError:
            self.conn.abort()


asyncssh_patches.install()
skip_unlogged_packets()


class _Channel(DirectTCPChannel):
    """One flow's ``direct-tcpip`` channel, and channel → client: every SSH data packet is
    written to the client's transport.

    The packets of one read of the SSH socket are held and written together once that
    read is processed (``writelines``: one ``writev`` with uvloop;
    :data:`~tunnel.backends.asyncssh_patches.READ_BATCH`), as ``ssh -L`` writes its
    channel's buffer once per poll: one write call per read instead of one per packet.
    Data coming otherwise (asyncssh delivering what it held while the channel was
    paused) goes as before: the first packet in a turn of the loop at once, the rest when
    the loop turns.

    These callbacks run inside asyncssh's packet processing: an exception escaping one
    would tear down the whole link and every other connection on it, so each touches the
    client's transport only while the client is still there, and swallows OS errors.
    """

    accepts_views = True
    """Data may come as a memoryview of a packet's plaintext (opened in place,
    :mod:`tunnel.backends.asyncssh_patches`): it is only written to the client's transport
    (held until the loop turns at most), and each packet has a plaintext of its own."""

    def __init__(self, client: _ClientSide) -> None:
        link = client.link
        super().__init__(link.conn, link.window, link.max_packet)
        self.client = client
        self.transport = client.transport
        self.counters = client.counters
        #: Packets held until the loop turns; None: no write yet in this turn.
        self.held: list[bytes] | None = None

    def channel_opened(self) -> None:
        self.client.opened()

    def channel_refused(self, code: int, reason: str) -> None:
        forward = self.client.flow.forward
        target = f"{forward.target_host}:{forward.target_port}"
        self.client.cut(f"gateway could not open {target}: {reason}")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        # A failed write closes the transport at once but tells the client side later
        # (call_soon): data still arriving meanwhile is dropped, not written to a dead socket.
        if self.client.closed or self.transport.is_closing():
            return
        self.counters.bytes_in += len(data)
        held = self.held
        if held is not None:
            held.append(data)
            return
        batch = getattr(self._conn, asyncssh_patches.READ_BATCH, None)
        if batch is not None:  # in a read of the SSH socket: written when it is done
            self.held = [data]
            batch.append(self)
            return
        self.transport.write(data)
        self.held = []
        self._loop.call_soon(self.release)

    def release(self) -> None:
        """Write the held packets (also before an EOF or close, to keep the order)."""
        held, self.held = self.held, None
        if held and not self.client.closed and not self.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):  # called inside a read too
                if len(held) == 1:
                    self.transport.write(held[0])  # asyncio's writelines would join (a copy)
                else:
                    asyncssh_patches.write_parts(self.transport, held)

    def eof_held(self) -> None:
        """The target's EOF arrived while asyncssh held it back (see
        :func:`tunnel.backends.asyncssh_patches._keep_held_eof`)."""
        self.client.target_eof = True

    def eof_received(self) -> bool:
        self.client.target_eof = True
        self.release()
        # The client may have gone already: shutdown(SHUT_WR) on its socket then fails
        # (ENOTCONN), and an exception here would take the whole SSH link down with it.
        if self.client.closed or self.transport.is_closing() or not self.transport.can_write_eof():
            return False
        try:
            self.transport.write_eof()
        except OSError:
            self.transport.abort()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel ended: in order (the target's EOF, then CLOSE, the link still up),
        the client gets the rest of the data and a FIN; the link lost (not closed by us:
        the openssh backend's master then cuts its flows) while its OPEN waited for an
        answer: the flow is given back (nothing was sent on the channel or written to the
        client; what was read waits in ``pending``); any other way, a reset."""
        client = self.client
        if client.closed:
            return
        if self.opening and not self.abandoned and not client.link.closing:
            client.give_back()
            return
        if exc is not None:
            client.cut(f"link lost; connection cut ({describe(exc)})")
        elif client.link.closing:
            client.cut("link closed; connection cut")
        elif not client.target_eof:
            client.cut("channel closed before the target's end of data; connection cut")
        else:
            self.release()
            self.transport.close()

    def pause_writing(self) -> None:
        if not self.client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.resume_reading()


class _ClientSide(asyncio.BufferedProtocol):
    """Client → channel, and the life cycle of one carried flow.

    The client's bytes are read into the link's one buffer (``recv_into``; uvloop read
    into its own buffer and copied each read into a new ``bytes``: one more copy of all
    the data going up) and handed to the channel's ``write`` as a view, valid during the
    call: the in-place path seals from it, asyncssh copies what has to wait for the
    window, and what comes before the channel is open is copied into ``pending``."""

    def __init__(self, link: SSHLink, flow: Flow) -> None:
        self.link = link
        self.flow = flow
        self.counters = flow.counters
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        #: The flow's channel: made (and its open sent) when the transport is there, let go
        #: when the flow ends (it refers back to this side: a cycle for the GC otherwise).
        self.channel: _Channel | None = None
        #: The channel is open: the client's bytes go to it (until then, to ``pending``).
        self.open = False
        #: The socket's transport while ``connect_accepted_socket`` runs.
        self.accepting: Inline[object] | None = None
        #: The client's bytes read before the channel is open (a flow given back by a
        #: link whose OPEN went unanswered comes with those it read: ``Flow.early``).
        self.pending: list[bytes] = [flow.early] if flow.early else []
        self.pending_len = len(flow.early)
        flow.early = b""
        self.eof = False
        self.target_eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        if self.pending_len > PENDING_MAX:
            self.transport.pause_reading()
        forward = self.flow.forward
        # CHANNEL_OPEN is written now, in this turn of the loop.
        try:
            channel = _Channel(self)
        except asyncssh.ChannelOpenError:  # the link's connection went since the carry
            self.give_back()
            return
        self.channel = channel
        channel.open(forward.target_host, forward.target_port, self.flow.host, self.flow.port)

    def transport_ready(self, error: BaseException | None, _result: object) -> None:
        """The end of ``connect_accepted_socket`` (``connection_made`` came before)."""
        self.accepting = None
        if error is not None and not isinstance(error, asyncio.CancelledError):
            reason = describe(error) if isinstance(error, OSError) else str(error)
            self.cut(f"client socket unusable: {reason}")

    def opened(self) -> None:
        """The channel is open: carry the client's bytes that waited (and its EOF)."""
        # Runs inside asyncssh's packet processing (the confirmation): nothing may escape.
        channel = self.channel
        if channel is None:  # the flow ended meanwhile (a given-up open is not confirmed)
            return
        self.open = True
        try:
            if self.pending:
                for chunk in self.pending:
                    channel.write(chunk)
                self.counters.bytes_out += self.pending_len
                self.pending.clear()
                self.pending_len = 0
                self.transport.resume_reading()
            if self.eof:
                channel.write_eof()
        except (OSError, RuntimeError):
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        reads = self.link.client_reads
        if reads is None:
            reads = self.link.client_reads = memoryview(
                mmap.mmap(-1, CLIENT_READ, flags=mmap.MAP_PRIVATE)
            )
        return reads if self.open else reads[:PENDING_MAX]

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.link.client_reads[:nbytes])  # type: ignore[index]

    def data_received(self, data: bytes | memoryview) -> None:
        if not self.open:
            self.pending.append(bytes(data))
            self.pending_len += len(data)
            if self.pending_len > PENDING_MAX:
                self.transport.pause_reading()
            return
        self.counters.bytes_out += len(data)
        try:
            self.channel.write(data)  # type: ignore[union-attr,arg-type]
        except OSError:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.eof = True
        if self.open:
            try:
                self.channel.write_eof()  # type: ignore[union-attr]
            except OSError:
                return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop_accepting()
        channel, self.channel = self.channel, None  # it refers back: no cycle left
        self.open = False
        if channel is not None:
            channel.close()
        self.flow.finish(None)

    def stop_accepting(self) -> None:
        """Cancel ``connect_accepted_socket`` if it still runs (its end then does nothing)."""
        if self.accepting is not None:
            self.accepting.cancel()

    def pause_writing(self) -> None:
        if self.open:
            self.channel.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self.open:
            self.channel.resume_reading()  # type: ignore[union-attr]

    def give_back(self) -> None:
        """Give the flow back to be held for the next link (:meth:`Flow.give_back`): the
        link's connection went before its channel was confirmed (before the OPEN was
        written, or while it waited for an answer), so nothing was sent on the channel
        and nothing written to the client; the client's bytes read meanwhile go with the
        flow (:attr:`Flow.early`). The flow goes on with a descriptor of its own: the
        transport closes the one it was given."""
        flow = self.flow
        try:
            kept = socket.socket(fileno=os.dup(flow.sock.fileno()))
        except OSError as exc:  # out of descriptors: cut, as before there was a give-back
            self.cut(f"link lost; connection cut ({describe(exc)})")
            return
        self.closed = True
        self.channel = None  # it refers back: no cycle left
        flow.early = b"".join(self.pending)
        self.pending.clear()
        self.pending_len = 0
        flow.sock = kept
        self.transport.abort()
        flow.give_back(self.link)

    def cut(self, why: str) -> None:
        """End this flow now, as cut (its channel refused or the flow cut by its mouth)."""
        if self.closed:
            return
        self.closed = True
        self.flow.finish(why)
        self.stop_accepting()
        channel, self.channel = self.channel, None
        self.open = False
        if channel is not None:
            channel.abort()
        if self.transport is None:  # cut before the socket had its transport
            before_cut_close(self.flow.sock)
            self.flow.sock.close()
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            before_cut_close(sock)
        self.transport.abort()


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


NOTHING_ANSWERED = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH})


def is_refusal(exc: BaseException) -> bool:
    """Whether a connect failed before any TCP connection: refused, or no route."""
    return isinstance(exc, OSError) and exc.errno in NOTHING_ANSWERED


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
        # The first attempt may find its TCP connection opened already (tunnel.early):
        # used only where asyncssh, the config applied, asks for that same address.
        with offered(asyncio.get_running_loop(), take()):
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
        raise GatewayUnreachable.because(label, describe(exc), refused=is_refusal(exc)) from None
    client = clients[-1]
    drop_needless_chaff(conn)
    lazy_keepalive(conn)
    log.debug("link up to %s", label)
    return SSHLink(conn, client, label, options)
