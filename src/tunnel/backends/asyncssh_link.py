"""The ``asyncssh`` link backend: one SSH connection in this process, one channel per flow.

The connection is set up the way the user's own ``ssh`` would: ``~/.ssh/config`` (Host
aliases, User, Port, IdentityFile, ProxyJump, Ciphers…), ssh-agent and key files apply
through asyncssh; host keys are always checked against known_hosts
(:mod:`tunnel.hostkeys`). This is the single edge where asyncssh and OS errors become
:mod:`tunnel.errors`.

Every flow opens a ``direct-tcpip`` channel (RFC 4254 §7.2). The data path is two small
protocol objects wired back to back with no task and no buffer copy per chunk: bytes read
from the client go straight to ``SSHTCPChannel.write`` and bytes from the channel to
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
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, cast

from tunnel.backends.chaff import drop_needless_chaff
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

    def carry(self, flow: Flow) -> None:
        """Wrap the flow's socket in a transport and open its channel (in a task)."""
        flow.task = asyncio.get_running_loop().create_task(self._carry(flow))

    async def _carry(self, flow: Flow) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.connect_accepted_socket(lambda: _ClientSide(self, flow), flow.sock)
        except OSError as exc:
            flow.task = None
            flow.cut(f"client socket unusable: {describe(exc)}")

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


def _keep_held_eof() -> None:
    """Carried patch (asyncssh 2.14 and later, checked against the installed 2.x): an EOF
    that asyncssh holds back (the session's reading paused, or the channel still starting)
    is lost when CLOSE arrives before it is delivered: ``SSHChannel._process_close``
    overwrites the ``eof_pending`` state with ``close_pending``, so ``eof_received`` never
    runs. OpenSSH sends EOF before CLOSE whenever the target's side ended (even on a reset),
    so the target's orderly end looked cut (a reset for a complete reply). The wrapper tells
    the session, through an optional ``eof_held()``, before asyncssh forgets it; the data
    still buffered is delivered before ``connection_lost`` as before."""
    from asyncssh.channel import SSHChannel  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.constants import MSG_CHANNEL_CLOSE  # noqa: PLC0415

    handlers = SSHChannel._packet_handlers
    original = handlers[MSG_CHANNEL_CLOSE]
    if getattr(original, "keeps_held_eof", False):
        return

    def process_close(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        if self._recv_state == "eof_pending":
            held = getattr(self._session, "eof_held", None)
            if held is not None:
                held()
        original(self, pkttype, pktid, packet)

    process_close.keeps_held_eof = True  # type: ignore[attr-defined]
    handlers[MSG_CHANNEL_CLOSE] = process_close


_keep_held_eof()


def _feed_by_packet() -> None:
    """Carried patch (asyncssh 2.14 to 2.x, the range pyproject.toml allows; checked by
    tests/tunnel/test_tunnel_bulk.py against sshd): asyncssh keeps its input in one
    ``bytes`` (``SSHConnection._inpbuf``): each read is appended, and every packet taken
    off its front leaves the *rest* copied into a new ``bytes`` twice (header, then body).
    A 256 KiB read of eight 32 KiB packets copied about 2 MiB of remainders: memmove was
    8-12 % of the daemon's CPU in a bulk download (py-spy, bench/results/profiles/).
    Handing asyncssh each read one piece at a time, exactly what its current step needs
    (the first cipher block, then the rest of that packet), leaves no remainder to copy;
    its own parser, decryption and error handling run unchanged. Where asyncssh waits for
    anything else (the version line, a packet handled in a task) the read goes in whole,
    as before. Without the attributes it relies on, the patch leaves asyncssh alone."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)

    original: Any = SSHConnection.data_received
    if getattr(original, "feeds_by_packet", False):
        return
    header_step = SSHConnection._recv_pkthdr
    body_step = SSHConnection._recv_packet

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        end = len(data)
        if end <= FEED_WHOLE_MAX:
            original(self, data, datatype)
            return
        view = memoryview(data)
        pos = 0
        while pos < end and self._transport is not None:
            step = getattr(self._recv_handler, "__func__", None)
            have = len(self._inpbuf)
            if step is header_step:
                need = self._recv_blocksize - have
            elif step is body_step:
                need = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize - have
            else:
                need = end - pos
            piece = view[pos : pos + max(need, 1)]
            pos += len(piece)
            original(self, piece, datatype)

    data_received.feeds_by_packet = True  # type: ignore[attr-defined]
    if all(hasattr(SSHConnection, name) for name in ("_recv_pkthdr", "_recv_packet", "_recv_data")):
        SSHConnection.data_received = data_received  # type: ignore[method-assign]


FEED_WHOLE_MAX = 8 * 1024
"""Reads up to this size go to asyncssh whole (a few small packets: a reply, a window
adjust): their remainders are small, and one call costs less than one per piece."""

_feed_by_packet()


def _gcm_fewer_copies() -> None:
    """Carried patch (asyncssh 2.x's AES-GCM shim, ``GCMEncryption``/``GCMCipher``; the
    range pyproject.toml allows): each data packet was copied twice where once does.
    Receiving, asyncssh joined the packet's two parts, then joined the tag on: one join
    here. Sending, it cut the tag off the sealed packet (a copy) and then put the header
    in front (another): one copy here, through a memoryview. Same inputs, same outputs
    (a tag mismatch still returns None, so asyncssh still raises its MAC error), the IV
    still stepped after every packet. callgrind over a bulk download counted memcpy at
    half of the daemon's instructions in this path (seven copies of every byte)."""
    from asyncssh.crypto.cipher import GCMCipher  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.encryption import GCMEncryption  # noqa: PLC0415
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    if getattr(GCMEncryption.decrypt_packet, "fewer_copies", False):
        return
    if not all(hasattr(GCMCipher, name) for name in ("_update_iv", "encrypt_and_sign")):
        return

    def decrypt_packet(
        self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        cipher = self._cipher
        sealed = b"".join((memoryview(first)[header_len:], rest, mac))
        try:
            plain: bytes | None = AESGCM(cipher._key).decrypt(
                cipher._iv, sealed, first[:header_len]
            )
        except InvalidTag:
            plain = None
        cipher._update_iv()
        return plain

    def encrypt_and_sign(self: Any, header: bytes, data: bytes) -> tuple[bytes, bytes]:
        sealed = memoryview(AESGCM(self._key).encrypt(self._iv, data, header))
        self._update_iv()
        return header + sealed[:-GCM_TAG_LEN], bytes(sealed[-GCM_TAG_LEN:])

    decrypt_packet.fewer_copies = True  # type: ignore[attr-defined]
    GCMEncryption.decrypt_packet = decrypt_packet  # type: ignore[method-assign]
    GCMCipher.encrypt_and_sign = encrypt_and_sign  # type: ignore[method-assign]


GCM_TAG_LEN = 16
"""RFC 5647 §7.3: AES-GCM's authentication tag."""

_gcm_fewer_copies()


def _data_packets_joined_once() -> None:
    """Carried patch (asyncssh 2.x ``SSHConnection.send_packet``; the range pyproject.toml
    allows): a channel data packet was put together with four copies of its data
    (``Byte(type) + b"".join(args)``, then ``Byte(padlen) + payload + padding``); here
    with one ``join``. Only for ``MSG_CHANNEL_DATA`` once the connection is in its steady
    state: encrypted, authenticated, no compression, no key exchange due or running.
    Everything else (and the chaff before the packet, :mod:`tunnel.backends.chaff`) goes
    through asyncssh's own ``send_packet`` as before; the steps kept are asyncssh's, in
    its order: padding to the block size (at least 4 bytes, RFC 4253 §6), encryption
    under the sequence number, the sequence and rekey byte counts, and the packet log
    (asyncssh writes it at debug level 3 only: below that the payload is not built)."""
    from asyncssh.connection import SSHConnection  # noqa: PLC0415 (only the patch needs it)
    from asyncssh.logging import SSHLogger  # noqa: PLC0415

    original: Any = SSHConnection.send_packet
    if getattr(original, "joins_once", False):
        return
    wanted = (
        "_send_encryption",
        "_compressor",
        "_kex_complete",
        "_auth_complete",
        "_rekey_bytes",
        "_rekey_bytes_sent",
        "_rekey_seconds",
        "_rekey_time",
        "_send_seq",
        "_send_blocksize",
        "_send_enchdrlen",
    )
    probe = SSHConnection.__init__.__code__.co_names
    if not all(name in probe for name in wanted) or not hasattr(SSHConnection, "_send"):
        return
    urandom = os.urandom
    monotonic = time.monotonic

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        encryption = self._send_encryption
        if (
            pkttype != MSG_CHANNEL_DATA
            or encryption is None
            or self._compressor is not None
            or not (self._kex_complete and self._auth_complete)
            or self._rekey_bytes_sent >= self._rekey_bytes
            or (self._rekey_seconds and monotonic() >= self._rekey_time)
        ):
            original(self, pkttype, *args, handler=handler)
            return
        self.send_packet(MSG_IGNORE, EMPTY_STRING)  # asyncssh's chaff (dropped where needless)
        length = 1 + sum(len(arg) for arg in args)
        padlen = -(self._send_enchdrlen + length) % self._send_blocksize
        if padlen < 4:
            padlen += self._send_blocksize
        packet = b"".join((bytes((padlen, pkttype)), *args, urandom(padlen)))
        pktlen = len(packet)
        seq = self._send_seq
        packet, mac = encryption.encrypt_packet(seq, pktlen.to_bytes(4, "big"), packet)
        self._send(packet + mac)
        self._send_seq = (seq + 1) & 0xFFFFFFFF
        self._rekey_bytes_sent += pktlen
        if getattr(SSHLogger, "_debug_level", 3) >= 3:  # asyncssh's packet log is on
            payload = bytes((pkttype,)) + b"".join(args)
            (handler or self).log_sent_packet(pkttype, seq, payload)

    send_packet.joins_once = True  # type: ignore[attr-defined]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]


MSG_IGNORE = 2
MSG_CHANNEL_DATA = 94
"""RFC 4254 §5.2."""
EMPTY_STRING = b"\0\0\0\0"

_data_packets_joined_once()


class _ChannelSide(asyncssh.SSHTCPSession[bytes]):
    """Channel → client: every SSH data packet is written to the client's transport.

    The first packet in a turn of the event loop is written at once (a reply waits for
    nothing); the packets that follow it from the same read of the SSH socket are held
    and written together when the loop turns (``writelines``: one ``writev`` with
    uvloop), as ``ssh -L`` writes its channel's buffer once per poll. In a bulk transfer
    that is one or two write calls per 256 KiB read instead of eight.

    These callbacks run inside asyncssh's packet processing: an exception escaping one
    would tear down the whole link and every other connection on it, so each touches the
    client's transport only while the client is still there, and swallows OS errors.
    """

    __slots__ = ("client", "counters", "held", "transport")

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.transport = client.transport
        self.counters = client.counters
        #: Packets held until the loop turns; None: no write yet in this turn.
        self.held: list[bytes] | None = None

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
        self.transport.write(data)
        self.held = []
        asyncio.get_running_loop().call_soon(self.release)

    def release(self) -> None:
        """Write the held packets (also before an EOF or close, to keep the order)."""
        held, self.held = self.held, None
        if held and not self.client.closed and not self.transport.is_closing():
            self.transport.writelines(held)

    def eof_held(self) -> None:
        """The target's EOF arrived while asyncssh held it back (see :func:`_keep_held_eof`)."""
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
        the client gets the rest of the data and a FIN; any other way, a reset."""
        client = self.client
        if exc is not None:
            client.cut(f"link lost; connection cut ({describe(exc)})")
        elif self.client.link.closing:
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


class _ClientSide(asyncio.Protocol):
    """Client → channel, and the life cycle of one carried flow."""

    def __init__(self, link: SSHLink, flow: Flow) -> None:
        self.link = link
        self.flow = flow
        self.counters = flow.counters
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.channel: asyncssh.SSHTCPChannel[bytes] | None = None
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.eof = False
        self.target_eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        self.flow.stop = self.cut
        self.flow.task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        forward = self.flow.forward
        try:
            channel, _ = await self.link.conn.create_connection(
                lambda: _ChannelSide(self),
                forward.target_host,
                forward.target_port,
                orig_host=self.flow.host,
                orig_port=self.flow.port,
                window=self.link.window,
                max_pktsize=self.link.max_packet,
            )
        except asyncssh.ChannelOpenError as exc:
            self.flow.task = None
            target = f"{forward.target_host}:{forward.target_port}"
            self.cut(f"gateway could not open {target}: {exc.reason}")
            return
        except (OSError, asyncssh.Error) as exc:
            self.flow.task = None
            self.cut(f"channel open failed: {describe(exc)}")
            return
        self.flow.task = None
        if self.closed:
            channel.close()
            return
        self.channel = channel
        if self.pending:
            for chunk in self.pending:
                channel.write(chunk)
            self.counters.bytes_out += self.pending_len
            self.pending.clear()
            self.pending_len = 0
            self.transport.resume_reading()
        if self.eof:
            channel.write_eof()

    def data_received(self, data: bytes) -> None:
        channel = self.channel
        if channel is None:
            self.pending.append(data)
            self.pending_len += len(data)
            if self.pending_len > PENDING_MAX:
                self.transport.pause_reading()
            return
        self.counters.bytes_out += len(data)
        try:
            channel.write(data)
        except OSError:
            self.transport.abort()

    def eof_received(self) -> bool:
        self.eof = True
        if self.channel is not None:
            try:
                self.channel.write_eof()
            except OSError:
                return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        task = self.flow.task
        if task is not None and not task.done():
            task.cancel()
        if self.channel is not None:
            self.channel.close()
        self.flow.finish(None)

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.resume_reading()

    def cut(self, why: str) -> None:
        """End this flow now, as cut (its channel refused or the flow cut by its mouth)."""
        if self.closed:
            return
        self.closed = True
        self.flow.finish(why)
        if self.channel is not None:
            self.channel.abort()
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
    log.debug("link up to %s", label)
    return SSHLink(conn, client, label, options)
