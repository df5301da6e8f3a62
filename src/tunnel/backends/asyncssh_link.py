"""The ``asyncssh`` link backend: one SSH connection in this process, one channel per flow.

The connection is set up the way the user's own ``ssh`` would: ``~/.ssh/config`` (Host
aliases, User, Port, IdentityFile, ProxyJump, Ciphers…), ssh-agent and key files apply
through asyncssh; host keys are always checked against known_hosts
(:mod:`tunnel.hostkeys`). This is the single edge where asyncssh and OS errors become
:mod:`tunnel.errors`.

Every flow opens a ``direct-tcpip`` channel (RFC 4254 §7.2) of its own kind
(:mod:`tunnel.backends.direct`: no coroutine, task or separate session object per
connection). The data path is two small objects wired back to back with no task and no
buffer copy per chunk: bytes read from the client's socket (by the client side itself, no
asyncio transport: :class:`_ClientSide`) go straight to the channel's ``write``
(asyncssh's) and bytes from the channel to the client's socket (the packets of one read
of the SSH socket together); each side's back-pressure pauses the other side's reading,
so a slow reader holds back the fast writer (bounded memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import mmap
import socket
from collections.abc import Sequence
from typing import Any

from tunnel.backends import asyncssh_patches, poly1305, watch
from tunnel.backends.chaff import drop_needless_chaff
from tunnel.backends.direct import DirectTCPChannel
from tunnel.backends.lean import lazy_keepalive, skip_unlogged_packets
from tunnel.backends.quickauth import install as install_quickauth
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

WRITEV_MAX = 512
"""The most parts one ``sendmsg`` to a client takes (IOV_MAX is 1024 on Linux)."""

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
        self.loop = asyncio.get_running_loop()
        #: The loop's add_reader and remove_reader for the client sockets (no transport
        #: owns them: on asyncio's selector loop without its transport check, watch.py).
        self.watch, self.unwatch = watch.reader_calls(self.loop)

    def carry(self, flow: Flow) -> None:
        """Send the flow's CHANNEL_OPEN and start reading its socket, now, in this turn
        of the loop (no task, no transport: :class:`_ClientSide`). A link whose
        connection is gone (lost or closed, its end not yet seen by the supervisor) gives
        the flow back, to be held for the next link (:meth:`Flow.give_back`): nothing of
        it was read or sent."""
        if self.conn._transport is None:  # asyncssh's mark of a connection ended
            flow.give_back(self)
            return
        poly1305.want()
        side = _ClientSide(self, flow, self.loop)
        flow.stop = side.cut
        side.start()

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
install_quickauth()  # public-key auth in one round trip (tunnel/backends/quickauth.py)
skip_unlogged_packets()


class _Channel(DirectTCPChannel):
    """One flow's ``direct-tcpip`` channel, and channel → client: every SSH data packet is
    written to the client's socket (:class:`_ClientSide`, the channel's transport).

    The packets of one read of the SSH socket are held and written together once that
    read is processed (``writelines``: one ``sendmsg`` on either loop;
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
    :mod:`tunnel.backends.asyncssh_patches`), even of the SSH socket's read buffer (its
    data decrypted over its ciphertext: ``gcm_run``, ``chacha_run``), which the next read
    overwrites: it is only written to the client's transport, held until this read is
    processed or the loop turns at most (both before the next read), and what the
    socket does not take is copied (``queue``)."""

    def __init__(self, client: _ClientSide) -> None:
        link = client.link
        super().__init__(link.conn, link.window, link.max_packet)
        self.client = client
        self.transport = client  # the client socket, as a transport
        self.counters = client.counters
        #: Packets held until the loop turns; None: no write yet in this turn.
        self.held: list[bytes] | None = None
        #: The read of the SSH socket (its READ_BATCH) ``held`` is for; None: a turn.
        self.held_for: list[Any] | None = None

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
        batch = getattr(self._conn, asyncssh_patches.READ_BATCH, None)
        if held is not None:
            if self.held_for is batch:
                held.append(data)
                return
            # Held for the turn, now a read's data (a view of the read buffer, which a
            # second read in the same turn overwrites: libuv reads up to 32 times): what
            # is held goes first, the read's data with the read.
            self.release()
        if batch is not None:  # in a read of the SSH socket: written when it is done
            self.held = [data]
            self.held_for = batch
            batch.append(self)
            return
        self.transport.write(data)
        self.held = []
        self._loop.call_soon(self.release)

    def release(self) -> None:
        """Write the held packets (also before an EOF or close, to keep the order)."""
        held, self.held, self.held_for = self.held, None, None
        if held and not self.client.closed and not self.transport.is_closing():
            try:  # called inside a read too: nothing may escape (no contextlib: per packet)
                if len(held) == 1:
                    self.transport.write(held[0])
                else:
                    self.transport.writelines(held)
            except (OSError, RuntimeError):
                pass

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
            # Never confirmed (the link went while it opened): nothing was sent on the
            # channel nor written to the client, so the flow is held for the next link
            # with the bytes read meanwhile (Flow.early).
            client.give_back()
        elif exc is not None:
            client.cut(f"link lost; connection cut ({describe(exc)})")
        elif client.link.closing:
            client.cut("link closed; connection cut")
        elif not client.target_eof:
            client.cut("channel closed before the target's end of data; connection cut")
        else:
            self.release()
            client.channel = None  # ended: the client side has nothing more to tell it
            client.open = False
            self.transport.close()

    def pause_writing(self) -> None:
        client = self.client
        client.held_by_channel = True
        if not client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                client.pause_reading()

    def resume_writing(self) -> None:
        client = self.client
        client.held_by_channel = False
        if not client.closed:
            with contextlib.suppress(OSError, RuntimeError):
                client.resume_reading()


class _ClientSide:
    """Client → channel, the client's socket, and the life cycle of one carried flow.

    No asyncio transport: the socket is read and written here, with one reader
    registration on the loop (``add_reader``) and a writer registration only while
    something waits to be sent (bench/notes/roundtrip.md: uvloop's and asyncio's
    transports cost about a third of this process's instructions for a short
    connection). The channel sees this object as its client's transport (``write``,
    ``writelines``, ``write_eof``, ``close``, ``abort``, ``pause_reading``, ...):

    * reading: one ``recv_into`` per wake-up into the link's one buffer, handed to the
      channel's ``write`` as a view valid during the call (the in-place path seals from
      it, asyncssh copies what has to wait for the window); before the channel is open
      the bytes are copied into ``pending``, at most :data:`PENDING_MAX` then reading
      pauses. An EOF stops reading and goes on as the channel's EOF; a read error ends
      the flow as a transport's loss did.
    * writing: ``send``/``sendmsg`` at once; what the socket does not take (EAGAIN, a
      partial send) waits in ``queued`` and goes when the loop says the socket is
      writable; above :data:`CLIENT_WRITE_HIGH_WATER` queued the channel is paused, and
      resumed at a quarter of it. EOF and close wait for the queue to drain.
    * the end: a cut is a reset (``SO_LINGER`` 0); the target's orderly end a FIN after
      the last byte; registrations are removed before the socket is closed (its
      descriptor number may be reused at once).
    """

    __slots__ = (
        "channel",
        "closed",
        "closing",
        "counters",
        "eof",
        "fd",
        "flow",
        "held_by_channel",
        "link",
        "loop",
        "open",
        "pending",
        "pending_len",
        "queued",
        "queued_len",
        "reading",
        "released",
        "shut",
        "sock",
        "target_eof",
        "writer_paused",
        "writing",
    )

    def __init__(self, link: SSHLink, flow: Flow, loop: asyncio.AbstractEventLoop) -> None:
        self.link = link
        self.flow = flow
        self.loop = loop
        self.counters = flow.counters
        self.sock = flow.sock
        self.fd = -1
        #: The flow's channel: made (and its open sent) at the start, let go when the flow
        #: ends (it refers back to this side: a cycle for the GC otherwise).
        self.channel: _Channel | None = None
        #: The channel is open: the client's bytes go to it (until then, to ``pending``).
        self.open = False
        #: The client's bytes read before the channel is open (a flow given back by a
        #: link whose OPEN went unanswered comes with those it read: ``Flow.early``; its
        #: EOF, if it came, is read again from the socket).
        self.pending: list[bytes] = [flow.early] if flow.early else []
        self.pending_len = len(flow.early)
        flow.early = b""
        self.eof = False
        self.target_eof = False
        #: The flow ended (reported once).
        self.closed = False
        #: The socket is being closed (after what is queued) or was: write nothing more.
        self.closing = False
        #: The socket is closed (its registrations removed first).
        self.released = False
        self.reading = False
        self.writing = False
        self.writer_paused = False
        #: Send a FIN once the queue is empty.
        self.shut = False
        self.queued: list[bytes] = []
        self.queued_len = 0
        #: The channel paused this side (its send buffer above its high-water mark, as
        #: asyncssh's ``pause_writing`` says, once, until ``resume_writing``): only the
        #: channel resumes reading then.
        self.held_by_channel = False

    def start(self) -> None:
        """Send the CHANNEL_OPEN, then start reading the client. The OPEN goes first: it
        is the first step of the connection's round trip over the path, and nothing reads
        the client's socket before the loop turns (its blocking mode and descriptor are
        set after; a socket unusable by then cuts the flow, its channel closed as soon as
        the gateway confirms it: :meth:`DirectTCPChannel.abort`)."""
        forward = self.flow.forward
        try:
            channel = _Channel(self)
        except asyncssh.ChannelOpenError:  # the link's connection went since the carry
            self.give_back()
            return
        self.channel = channel
        channel.open(forward.target_host, forward.target_port, self.flow.host, self.flow.port)
        sock = self.sock
        try:
            sock.setblocking(False)
            self.fd = sock.fileno()
        except OSError as exc:
            self.cut(f"client socket unusable: {describe(exc)}")
            return
        if not self.closed and self.pending_len <= PENDING_MAX:
            self.resume_reading()

    # -- client → channel ------------------------------------------------------------

    def readable(self) -> None:
        if self.closed or not self.reading:
            return
        buffer = self.get_buffer()
        try:
            nbytes = self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # a reset by the client: its end, as a transport saw it
            self.lost(exc)
            return
        try:
            if nbytes:
                self.buffer_updated(nbytes)
            else:
                self.eof_received()
        except Exception:  # a defect: this flow ends with a reset, the link goes on
            log.exception("a flow to %s failed; its connection is reset", self.flow.forward)
            self.abort()

    def get_buffer(self) -> memoryview:
        reads = self.link.client_reads
        if reads is None:
            reads = self.link.client_reads = memoryview(
                mmap.mmap(-1, CLIENT_READ, flags=mmap.MAP_PRIVATE)
            )
        return reads if self.open else reads[:PENDING_MAX]

    def buffer_updated(self, nbytes: int) -> None:
        data = self.link.client_reads[:nbytes]  # type: ignore[index]
        if not self.open:
            self.pending.append(bytes(data))
            self.pending_len += nbytes
            if self.pending_len > PENDING_MAX:
                self.pause_reading()
            return
        self.counters.bytes_out += nbytes
        try:
            self.channel.write(data)  # type: ignore[union-attr,arg-type]
        except OSError:
            self.abort()

    def eof_received(self) -> None:
        self.eof = True
        self.pause_reading()
        if self.open:
            try:
                self.channel.write_eof()  # type: ignore[union-attr]
            except OSError:
                self.abort()

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
                if not self.held_by_channel:  # the writes above may have paused it
                    self.resume_reading()
            if self.eof:
                channel.write_eof()
        except (OSError, RuntimeError):
            self.abort()
        except Exception:  # a defect: not into asyncssh's packet processing
            log.exception("a flow to %s failed; its connection is reset", self.flow.forward)
            self.abort()

    def pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.link.unwatch(self.fd)

    def resume_reading(self) -> None:
        if not self.reading and not self.eof and not self.closing:
            self.reading = True
            self.link.watch(self.fd, self.readable)

    # -- channel → client: the channel's view of its client's transport ----------------

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> None:
        if self.closing or not data:
            return
        if self.queued:
            self.queue(bytes(data))
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.failed(exc)
            return
        if sent < len(data):
            self.queue(bytes(memoryview(data)[sent:]))

    def writelines(self, parts: Sequence[bytes | memoryview]) -> None:
        if self.closing:
            return
        if self.queued or len(parts) > WRITEV_MAX:
            for part in parts:
                self.write(part)
            return
        try:
            sent = self.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.failed(exc)
            return
        for index, part in enumerate(parts):
            size = len(part)
            if sent < size:
                self.queue(bytes(memoryview(part)[sent:]))
                for rest in parts[index + 1 :]:
                    self.queue(bytes(rest))
                return
            sent -= size

    def queue(self, data: bytes) -> None:
        """Keep ``data`` until the socket takes it (after what already waits)."""
        self.queued.append(data)
        self.queued_len += len(data)
        if not self.writing:
            self.writing = True
            self.loop.add_writer(self.fd, self.writable)
        if not self.writer_paused and self.queued_len > CLIENT_WRITE_HIGH_WATER:
            self.writer_paused = True
            if self.open:
                with contextlib.suppress(OSError, RuntimeError, AttributeError):
                    self.channel.pause_reading()  # type: ignore[union-attr]

    def writable(self) -> None:
        if not self.writing:
            return
        queued = self.queued
        try:
            sent = self.sock.sendmsg(queued[:WRITEV_MAX])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.failed(exc)
            return
        self.queued_len -= sent
        while sent:
            size = len(queued[0])
            if sent < size:
                queued[0] = queued[0][sent:]
                break
            del queued[0]
            sent -= size
        if self.writer_paused and self.queued_len <= CLIENT_WRITE_HIGH_WATER // 4:
            self.writer_paused = False
            if self.open:
                with contextlib.suppress(OSError, RuntimeError, AttributeError):
                    self.channel.resume_reading()  # type: ignore[union-attr]
        if queued:
            return
        self.writing = False
        self.loop.remove_writer(self.fd)
        if self.shut:
            self.shut = False
            self.write_eof()
        if self.closing and not self.closed:
            self.finish()

    def write_eof(self) -> None:
        """The target's EOF: a FIN to the client once the queue is empty."""
        if self.closing:
            return
        if self.queued:
            self.shut = True
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.failed(exc)

    def close(self) -> None:
        """The target's orderly end: close once every queued byte is sent."""
        if self.closing:
            return
        self.closing = True
        self.pause_reading()
        if not self.queued:
            self.finish()

    def abort(self) -> None:
        """End now, dropping what is queued (a transport's ``abort``); the flow ends in
        the next callback, as a transport reports its loss (the channel may be in the
        middle of its own packet processing). Never a clean end: the close is a reset
        (a flow cut after this finds its socket closed already)."""
        if not self.released:
            before_cut_close(self.sock)
            self.release_socket()
            self.loop.call_soon(self.lost, None)

    # -- the end -------------------------------------------------------------------

    def failed(self, exc: OSError) -> None:
        """A write failed: the socket goes now, the flow ends in the next callback
        (called from inside asyncssh's packet processing: no channel call here). The
        close is a reset, as for a cut."""
        if self.released:
            return
        before_cut_close(self.sock)
        self.release_socket()
        self.loop.call_soon(self.lost, exc)

    def finish(self) -> None:
        """Everything was sent: close the socket and end the flow."""
        self.release_socket()
        self.lost(None)

    def release_socket(self) -> None:
        """Unregister from the loop, then close the socket (once)."""
        if self.released:
            return
        self.released = True
        self.closing = True
        self.pause_reading()
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        self.queued.clear()
        self.queued_len = 0
        self.sock.close()

    def lost(self, exc: Exception | None) -> None:
        """The flow ended (the client went, or its socket was closed after the target's
        end): its channel is closed, the end reported."""
        if self.closed:
            return
        self.closed = True
        self.release_socket()
        channel, self.channel = self.channel, None  # it refers back: no cycle left
        self.open = False
        if channel is not None:
            channel.close()
        self.flow.finish(None)

    def give_back(self) -> None:
        """Give the flow back to be held for the next link (:meth:`Flow.give_back`): the
        link's connection went before the channel was confirmed (before the OPEN was
        written, or while it waited for an answer), so nothing was sent on the channel and
        nothing written to the client; the client's bytes read meanwhile go with the flow
        (:attr:`Flow.early`). The socket stays open, unregistered."""
        self.closed = True
        self.pause_reading()
        self.channel = None  # it refers back: no cycle left
        flow = self.flow
        flow.early = b"".join(self.pending)
        self.pending.clear()
        self.pending_len = 0
        flow.give_back(self.link)

    def cut(self, why: str) -> None:
        """End this flow now, as cut (its channel refused or the flow cut by its mouth)."""
        if self.closed:
            return
        self.closed = True
        self.flow.finish(why)
        channel, self.channel = self.channel, None
        self.open = False
        if channel is not None:
            channel.abort()
        if not self.released:
            before_cut_close(self.sock)
            self.release_socket()


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
