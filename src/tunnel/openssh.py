"""The ``openssh`` link backend: an OpenSSH ``ssh -M`` master carries the bytes.

asyncssh's pure-Python packet layer costs about twice OpenSSH's CPU per byte. With
``TunnelOptions.backend="openssh"`` the supervisor keeps one ``ssh -N -M -S <ctl>`` master
process alive instead, and each accepted mouth connection is handed to it over the control
socket with the multiplexing protocol (OpenSSH ``PROTOCOL.mux`` §1, §3, §4):
``MUX_MSG_HELLO`` both ways, then ``MUX_C_NEW_STDIO_FWD`` (what ``ssh -W host:port`` sends)
with the client socket passed twice (as stdin and stdout) by ``SCM_RIGHTS``. The master
then copies between that socket and a ``direct-tcpip`` channel in C; no Python touches the
data. The mux connection stays open for the channel's lifetime: the master closes it when
the channel ends, and closing it from our side ends the channel.

Limits of this path, by construction:

* bytes are not seen here: they are read from the kernel's counters of the client socket
  (:func:`tcp_traffic`, Linux ``TCP_INFO``; 0 elsewhere);
* the master receives two descriptors for the one socket, so a half-close *from the target*
  reaches the client only when the channel closes completely (as with ``ssh -W`` via mux);
* ``BatchMode=yes``: no password or passphrase prompts (keys and agent only); the options
  ``password``, ``password_prompt`` and ``passphrase`` are not used. An unknown host key is
  refused by ssh itself, and named (fingerprint, command to trust it) by one more key
  exchange through asyncssh (:func:`name_the_unknown_key`).

The pure parts (argv, exit classification, mux packet codec) are plain functions; the
asyncio edge is :class:`MuxLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tunnel.errors import (
    AuthFailed,
    GatewayUnreachable,
    HostKeyChanged,
    HostKeyUnknown,
    LinkLost,
    TunnelConfigError,
    TunnelError,
)
from tunnel.fdpass import libc as c_library
from tunnel.fdpass import send_request_and_fd
from tunnel.forwards import Gateway
from tunnel.hostkeys import DEFAULT_PORT, default_known_hosts, keyscan_command
from tunnel.link import open_link
from tunnel.options import TunnelOptions

log = logging.getLogger("tunnel.openssh")

MUX_VERSION = 4
MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_NEW_STDIO_FWD = 0x10000008
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_ALIVE = 0x80000005
MUX_S_SESSION_OPENED = 0x80000006
MUX_PACKET_MAX = 256 * 1024
"""Largest mux reply we accept (OpenSSH's own limit is 256 KiB)."""
SPARES_MIN = 2
SPARES_MAX = 16
"""Bounds of the mux connections kept open (hello sent) ahead of demand, per link."""
REFILL_DELAY_S = 0.005
"""Spares are replaced this long after one is used, not at once: the master's accept of a
new spare would otherwise compete with its opening of the channel just requested."""
REPLY_CHECK_S = 0.02
"""The master's hello and reply are read this long after the request, in one batch."""
TCP_INFO = getattr(socket, "TCP_INFO", 11)
TCP_INFO_LEN = 136
TCP_INFO_BYTES_AT = 120
TCP_INFO_BYTES = struct.Struct("=QQ")
"""``tcpi_bytes_acked``, ``tcpi_bytes_received`` in Linux ``struct tcp_info``."""
TCP_FIN_RECEIVED = frozenset({6, 8, 9, 11})
"""``tcpi_state`` after the peer's FIN: TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING."""
TCP_FIN_SENT = frozenset({4, 5, 6, 9, 11})
"""``tcpi_state`` after our FIN: FIN_WAIT1, FIN_WAIT2, TIME_WAIT, LAST_ACK, CLOSING."""
TCP_CLOSE = 7
SIOCOUTQ = 0x5411
"""Linux: bytes in a TCP socket's send queue, not yet acknowledged (= ``TIOCOUTQ``)."""
STDERR_TAIL_MAX = 4096
CONNECT_RETRY_S = 2.0
"""How long a mux connect is retried while the master's listen backlog is full."""
POLL_S = 0.01
"""How often a starting master's control socket is probed."""


class MuxError(TunnelError):
    """The master refused or broke a mux request (the one connection is closed)."""


# --- pure ----------------------------------------------------------------------------------


def mux_string(value: bytes | str) -> bytes:
    """An SSH ``string`` (RFC 4251 §5): uint32 length, then the bytes."""
    data = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(data)) + data


def mux_packet(*fields: int | bytes | str) -> bytes:
    """One mux packet: uint32 length, then the fields (ints as uint32, bytes/str as strings)."""
    body = b"".join(struct.pack(">I", f) if isinstance(f, int) else mux_string(f) for f in fields)
    return struct.pack(">I", len(body)) + body


def hello_packet() -> bytes:
    return mux_packet(MUX_MSG_HELLO, MUX_VERSION)


def stdio_fwd_packet(request_id: int, host: str, port: int) -> bytes:
    """``MUX_C_NEW_STDIO_FWD``: reserved string, connect host (string), port (uint32, as
    mux.c sends it; PROTOCOL.mux says string but the code is authoritative)."""
    return mux_packet(MUX_C_NEW_STDIO_FWD, request_id, b"", host, port)


def alive_packet(request_id: int) -> bytes:
    return mux_packet(MUX_C_ALIVE_CHECK, request_id)


def parse_reply(body: bytes) -> tuple[int, int, bytes]:
    """``(type, first uint32 field, rest)`` of a mux packet body; :class:`MuxError` if short."""
    if len(body) < 8:
        raise MuxError(f"short mux packet ({len(body)} bytes)")
    kind, first = struct.unpack_from(">II", body)
    return kind, first, body[8:]


def check_hello(body: bytes | None) -> None:
    """The master's ``MUX_MSG_HELLO`` (PROTOCOL.mux §1), version 4; else :class:`MuxError`."""
    if body is None:
        raise MuxError("master closed the control connection before its hello")
    kind, version, _ = parse_reply(body)
    if kind != MUX_MSG_HELLO or version != MUX_VERSION:
        raise MuxError(f"master spoke mux {kind:#x} version {version}, not hello v4")


def check_opened(body: bytes | None, request_id: int) -> None:
    """``MUX_S_SESSION_OPENED`` for ``request_id``; else :class:`MuxError` with the reason."""
    if body is None:
        raise MuxError("master closed the control connection")
    kind, reply_id, rest = parse_reply(body)
    if kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
        raise MuxError(f"master refused the forward: {reply_reason(rest)}")
    if kind != MUX_S_SESSION_OPENED or reply_id != request_id:
        raise MuxError(f"unexpected mux reply {kind:#x} to request {request_id}")


def reply_reason(rest: bytes) -> str:
    """The ``string reason`` of ``MUX_S_FAILURE`` / ``MUX_S_PERMISSION_DENIED``."""
    if len(rest) < 4:
        return "no reason given"
    (length,) = struct.unpack_from(">I", rest)
    return rest[4 : 4 + length].decode(errors="replace") or "no reason given"


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
    return GatewayUnreachable(f"gateway {label}: {last}")


# --- asyncio edge ------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the master when this process dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``), so even a crashed tunnel leaves no ssh behind;
    ``None`` where that is not available. libc is loaded here, before the fork."""
    libc = c_library() if sys.platform.startswith("linux") else None
    if libc is None:
        return None
    prctl = libc.prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


async def _unix_connect(sock: socket.socket, path: Path) -> None:
    """Connect the non-blocking Unix socket ``sock`` to ``path``.

    A full listen backlog makes a Unix-domain ``connect`` fail with ``EAGAIN`` and leaves
    the socket unconnected: unlike TCP's ``EINPROGRESS`` there is nothing to wait for
    (``loop.sock_connect`` waits anyway and the socket then reports ENOTCONN). So the
    connect is tried again, with short pauses, for up to ``CONNECT_RETRY_S``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_RETRY_S
    pause = 0.001
    while True:
        try:
            sock.connect(str(path))
            return
        except BlockingIOError:
            if loop.time() >= deadline:
                raise OSError(f"the ssh master's control socket stays busy ({path})") from None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)


class MuxChannel:
    """One mux connection to the master, speaking the packet protocol."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, path: Path, request: bytes, fd: int | None = None) -> MuxChannel:
        """Connect and send our hello, ``request`` and (twice) ``fd`` at once, then check
        the master's hello (PROTOCOL.mux §1): both peers send their hello unprompted and
        the master handles packets in order, so nothing waits a round trip for the hello."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        channel = cls(sock)
        try:
            loop = asyncio.get_running_loop()
            await _unix_connect(sock, path)
            await loop.sock_sendall(sock, hello_packet() + request)
            if fd is not None:
                await channel.send_fd(fd)
                await channel.send_fd(fd)
            check_hello(await channel.read_packet())
        except BaseException:
            sock.close()
            raise
        return channel

    def take_packet(self) -> bytes | None:
        """The next complete packet body already buffered, else ``None``."""
        if len(self.buffer) < 4:
            return None
        (length,) = struct.unpack_from(">I", self.buffer)
        if length > MUX_PACKET_MAX:
            raise MuxError(f"mux packet of {length} bytes is too large")
        if len(self.buffer) < 4 + length:
            return None
        body = bytes(self.buffer[4 : 4 + length])
        del self.buffer[: 4 + length]
        return body

    async def read_packet(self) -> bytes | None:
        """The next packet body; ``None`` at end of stream."""
        loop = asyncio.get_running_loop()
        while True:
            body = self.take_packet()
            if body is not None:
                return body
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return None
            self.buffer += chunk

    async def send_fd(self, fd: int) -> None:
        """One descriptor with one NUL byte, as OpenSSH's ``mm_send_fd``."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.sock, [b"\0"], [fd])
                return
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.sock, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.sock)

    def close(self) -> None:
        self.sock.close()


class SessionOwner(Protocol):
    """Who is told when a handed-over connection ends (a mouth, to keep its counters)."""

    def session_ended(
        self, session: MuxSession, error: str | None, traffic: tuple[int, int] | None
    ) -> None: ...


def tcp_traffic(sock: socket.socket) -> tuple[int, int] | None:
    """``(bytes received from the peer, bytes written to it)`` of a TCP socket, from the
    kernel: ``tcpi_bytes_received`` and ``tcpi_bytes_acked`` of ``TCP_INFO`` (Linux 4.2+)
    plus what is still queued unacknowledged (``SIOCOUTQ``), so data the peer has not yet
    acknowledged counts too. A FIN takes a sequence number, which these counters include:
    it is taken off. After a reset (state CLOSE) what is still queued will never be
    delivered and is not counted; whether a FIN came first is unknown then, so the count
    received may be one too many. ``None`` where that is not available."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN)
        queued = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < TCP_INFO_LEN:
        return None
    acked, received = TCP_INFO_BYTES.unpack_from(info, TCP_INFO_BYTES_AT)
    state = info[0]
    received -= state in TCP_FIN_RECEIVED
    sent = acked
    if state != TCP_CLOSE:
        sent += int.from_bytes(queued, sys.byteorder) - (state in TCP_FIN_SENT)
    return int(received), int(sent)


class MuxSession:
    """One handed-over connection: its mux connection, open while the channel lives.

    ``stage`` 0 waits for the master's hello, 1 for ``MUX_S_SESSION_OPENED``, 2 for the
    end of the stream (the master closes the mux connection when the channel ends).
    ``client`` is our copy of the client socket, kept so that the kernel's counters can be
    read (:func:`tcp_traffic`) while the connection lives and when it ends. The master has
    two copies of its own and closes them when the channel ends, just before it hangs up the
    mux connection; ours is closed on that hang-up, so the client sees the end at once.
    ``tag`` is the owner's (the client's address).
    """

    __slots__ = ("channel", "client", "link", "owner", "request_id", "stage", "tag")

    def __init__(
        self,
        link: MuxLink,
        channel: MuxChannel,
        client: socket.socket,
        request_id: int | None,
        owner: SessionOwner,
        tag: str,
    ) -> None:
        self.link = link
        self.channel = channel
        self.client = client
        self.request_id = request_id or 0
        self.stage = 2 if request_id is None else 0
        self.owner = owner
        self.tag = tag

    def end(self) -> None:
        """Close the mux connection, which ends the channel; the owner is told."""
        self.link.end(self, None)


class MuxLink:
    """One running ``ssh -M`` master whose control socket answered: the link is up.

    Handed-over connections (:class:`MuxSession`) are watched for their end only: a private
    epoll set, which the event loop sees as one descriptor, reports when the master hangs up
    a mux connection (``EPOLLRDHUP``), so the master's hello and reply, which arrive while
    the channel is being opened, wake nobody. They are read ``REPLY_CHECK_S`` later, in one
    batch, to log a refusal and close that client. (Without epoll, each mux connection is
    watched by the loop directly.)
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        control_dir: Path,
        gateway: Gateway,
        stderr_task: asyncio.Task[None],
        stderr_tail: bytearray,
    ) -> None:
        self.process = process
        self.control_dir = control_dir
        self.control_path = control_dir / "ctl"
        self.gateway = str(gateway)
        self._stderr_task = stderr_task
        self._stderr_tail = stderr_tail
        self._request_id = 0
        self._spares: list[MuxChannel] = []
        self._used = 0
        self._refill: asyncio.TimerHandle | None = None
        self._sessions: dict[int, MuxSession] = {}
        self._unconfirmed: list[MuxSession] = []
        self._check: asyncio.TimerHandle | None = None
        self._hangups = select.epoll() if hasattr(select, "epoll") else None
        self._watching = False
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_closed(self) -> TunnelError:
        """Wait until the master exits; return why, as a :class:`LinkLost`. Its sessions
        end, and its spare mux connections and watch set are closed."""
        code = await asyncio.shield(self.process.wait())
        self.close()
        shutil.rmtree(self.control_dir, ignore_errors=True)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(self._stderr_task)
        lines = self._stderr_tail.decode(errors="replace").strip().splitlines()
        why = lines[-1].strip() if lines else f"ssh exited with status {code}"
        return LinkLost(f"link to {self.gateway} lost: {why}")

    def _next_request_id(self) -> int:
        self._request_id = (self._request_id + 1) & 0xFFFFFFFF
        return self._request_id

    def _connect_now(self) -> MuxChannel | None:
        """A mux connection with our hello sent, without waiting (``None`` if the master's
        backlog is full or it is gone)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(str(self.control_path))
            hello = hello_packet()
            if sock.send(hello) != len(hello):
                raise BlockingIOError
        except OSError:
            sock.close()
            return None
        return MuxChannel(sock)

    def refill(self) -> None:
        """Keep spare connections (hello sent) ahead of demand, so a new client costs one
        request and its descriptor, not a connect and the master's accept: as many as were
        used since the last refill, within ``SPARES_MIN``..``SPARES_MAX`` (each spare is a
        channel the master visits on every turn of its loop, so not more)."""
        self._refill = None
        wanted = max(SPARES_MIN, min(SPARES_MAX, self._used))
        self._used = 0
        while not self._closed and len(self._spares) < wanted:
            channel = self._connect_now()
            if channel is None:
                return
            self._spares.append(channel)

    def hand_off(
        self, client: socket.socket, host: str, port: int, owner: SessionOwner, tag: str
    ) -> MuxSession | None:
        """Send ``MUX_C_NEW_STDIO_FWD`` and ``client``'s descriptor (twice) now, on a spare
        connection, and watch the session, which keeps ``client``. ``None`` when that cannot
        be done without waiting: use :meth:`open_stdio_fwd` and :meth:`adopt` instead."""
        if self._closed:
            return None
        channel = self._spares.pop() if self._spares else self._connect_now()
        if channel is None:
            return None
        self._used += 1
        if self._refill is None:
            self._refill = asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.refill)
        rid = self._next_request_id()
        request = stdio_fwd_packet(rid, host, port)
        # Everything else is done before the send: it wakes the master with a "sync"
        # wake-up (the kernel assumes the sender is about to sleep) and the master may take
        # over this CPU at once, so any work left after it would wait behind the master.
        session = self._watch(MuxSession(self, channel, client, rid, owner, tag))
        try:
            send_request_and_fd(channel.sock, request, client.fileno())
        except OSError:
            self._unwatch(session)
            channel.close()
            return None
        return session

    def adopt(
        self, channel: MuxChannel, client: socket.socket, owner: SessionOwner, tag: str
    ) -> MuxSession:
        """Watch a connection opened with :meth:`open_stdio_fwd` until its channel ends;
        :class:`MuxError` (``channel`` closed) if the link closed meanwhile."""
        if self._closed:
            channel.close()
            raise MuxError("the link closed while the channel was being opened")
        return self._watch(MuxSession(self, channel, client, None, owner, tag))

    def _watch(self, session: MuxSession) -> MuxSession:
        fd = session.channel.sock.fileno()
        self._sessions[fd] = session
        loop = asyncio.get_running_loop()
        if self._hangups is None:
            loop.add_reader(fd, self._service, session)
            return session
        self._hangups.register(fd, select.EPOLLRDHUP)
        if not self._watching:
            self._watching = True
            loop.add_reader(self._hangups.fileno(), self._hung_up)
        if session.stage < 2:
            self._unconfirmed.append(session)
            if self._check is None:
                self._check = loop.call_later(REPLY_CHECK_S, self._check_replies)
        return session

    def _hung_up(self) -> None:
        assert self._hangups is not None
        for fd, _ in self._hangups.poll(0):
            session = self._sessions.get(fd)
            if session is not None:
                self._service(session)
                self.end(session, None)

    def _check_replies(self) -> None:
        self._check = None
        pending, self._unconfirmed = self._unconfirmed, []
        for session in pending:
            if session.stage < 2 and session.channel.sock.fileno() >= 0:
                self._service(session)
                if session.stage < 2 and session.channel.sock.fileno() >= 0:
                    self._unconfirmed.append(session)
        if self._unconfirmed and not self._closed:
            self._check = asyncio.get_running_loop().call_later(REPLY_CHECK_S, self._check_replies)

    def _service(self, session: MuxSession) -> None:
        """Read what the master sent on a session: hello, reply, then the end."""
        channel = session.channel
        while channel.sock.fileno() >= 0:
            try:
                data = channel.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                early = "master closed the mux connection before its reply"
                self.end(session, early if session.stage < 2 else None)
                return
            if session.stage == 2:
                continue
            channel.buffer += data
            try:
                while session.stage < 2 and (body := channel.take_packet()) is not None:
                    if session.stage == 0:
                        check_hello(body)
                    else:
                        check_opened(body, session.request_id)
                    session.stage += 1
            except MuxError as exc:
                self.end(session, str(exc))
                return

    def _unwatch(self, session: MuxSession) -> bool:
        """Stop watching ``session``; False if it was not watched (any more)."""
        fd = session.channel.sock.fileno()
        if fd < 0 or self._sessions.pop(fd, None) is None:
            return False
        if self._hangups is None:
            asyncio.get_running_loop().remove_reader(fd)
        else:
            with contextlib.suppress(OSError, ValueError):
                self._hangups.unregister(fd)
        return True

    def end(self, session: MuxSession, error: str | None) -> None:
        """Close ``session``'s mux connection (ending its channel) and our copy of the
        client, and tell the owner, with the bytes the kernel counted."""
        if not self._unwatch(session):
            return
        sock = session.channel.sock
        traffic = tcp_traffic(session.client)
        session.client.close()
        sock.close()
        session.owner.session_ended(session, error, traffic)

    async def open_stdio_fwd(self, fd: int, host: str, port: int) -> MuxChannel:
        """Hand ``fd`` to the master for a channel to ``host:port``; the returned mux
        connection must stay open while the channel lives. :class:`MuxError` / OSError."""
        if self._closed:
            raise MuxError("the link is closing")
        rid = self._next_request_id()
        channel = await MuxChannel.connect(self.control_path, stdio_fwd_packet(rid, host, port), fd)
        try:
            check_opened(await channel.read_packet(), rid)
        except BaseException:
            channel.close()
            raise
        return channel

    def close(self) -> None:
        """End every session, and ask the master to exit (SIGTERM); it removes its control
        socket itself."""
        self._closed = True
        for handle in (self._refill, self._check):
            if handle is not None:
                handle.cancel()
        for channel in self._spares:
            channel.close()
        self._spares.clear()
        for session in list(self._sessions.values()):
            self.end(session, None)
        if self._hangups is not None:
            if self._watching:
                self._watching = False
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().remove_reader(self._hangups.fileno())
            self._hangups.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    async def aclose(self, grace_s: float) -> None:
        """Stop the master, SIGKILL it after ``grace_s``, reap it, remove the private dir."""
        self.close()
        await _reap(self.process, grace_s)
        self._stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._stderr_task
        shutil.rmtree(self.control_dir, ignore_errors=True)


async def _reap(process: asyncio.subprocess.Process, grace_s: float) -> None:
    try:
        async with asyncio.timeout(grace_s):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _drain_stderr(stream: asyncio.StreamReader, tail: bytearray, label: str) -> None:
    while line := await stream.readline():
        log.info("ssh %s: %s", label, line.decode(errors="replace").rstrip())
        tail += line
        del tail[:-STDERR_TAIL_MAX]


async def _alive(path: Path) -> bool:
    """The master answers ``MUX_C_ALIVE_CHECK`` (PROTOCOL.mux §4)."""
    try:
        channel = await MuxChannel.connect(path, alive_packet(0))
    except (OSError, MuxError):
        return False
    try:
        body = await channel.read_packet()
        return body is not None and parse_reply(body)[0] == MUX_S_ALIVE
    except (OSError, MuxError):
        return False
    finally:
        channel.close()


async def name_the_unknown_key(
    gateway: Gateway, options: TunnelOptions, fallback: TunnelError
) -> TunnelError:
    """The error for a host key OpenSSH refused as unknown, with its fingerprint.

    ``ssh`` in batch mode refuses an unknown key without naming it. The key is fetched once
    more through the asyncssh backend's connect (same ssh config, same known_hosts, no key
    offered: the host key is checked before any authentication), whose message names the
    algorithm, the fingerprint and the command that trusts it. Anything else that happens
    (the gateway gone, the key accepted after all): ``fallback``, OpenSSH's own verdict.
    """
    probe = dataclasses.replace(
        options,
        client_keys=(),
        password=None,
        password_prompt=None,
        passphrase=None,
        trust_new_host_key=False,
    )
    try:
        link = await open_link(gateway, probe)
    except HostKeyUnknown as exc:
        return exc
    except TunnelError:
        return fallback
    await link.aclose(0.5)
    return fallback


async def open_mux_link(gateway: Gateway, options: TunnelOptions) -> MuxLink:
    """Start a master for ``gateway`` and wait (``connect_timeout_s``) until its control
    socket answers; raise a classified :class:`TunnelError` if it exits first."""
    binary = options.ssh_binary
    if shutil.which(binary) is None:
        raise TunnelConfigError(f"backend openssh: {binary!r} not found (install openssh-client)")
    control_dir = Path(tempfile.mkdtemp(prefix="tunnel-ssh-"))
    os.chmod(control_dir, 0o700)
    control_path = control_dir / "ctl"
    argv = master_argv(binary, gateway, options, control_path)
    label = str(gateway)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_death_signal_hook(),
        )
    except OSError as exc:
        shutil.rmtree(control_dir, ignore_errors=True)
        raise TunnelConfigError(f"backend openssh: cannot run {binary}: {exc}") from None
    assert process.stderr is not None
    tail = bytearray()
    stderr_task = asyncio.get_running_loop().create_task(
        _drain_stderr(process.stderr, tail, label), name="tunnel-ssh-stderr"
    )
    link = MuxLink(process, control_dir, gateway, stderr_task, tail)
    try:
        async with asyncio.timeout(options.connect_timeout_s + 1):
            while True:
                if process.returncode is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1):
                            await asyncio.shield(stderr_task)
                    raise classify_exit(
                        gateway, options, process.returncode, tail.decode(errors="replace")
                    )
                if control_path.exists() and await _alive(control_path):
                    break
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        await link.aclose(0.5)
        raise GatewayUnreachable.timed_out(label, options.connect_timeout_s) from None
    except HostKeyUnknown as exc:
        await link.aclose(0.5)
        # Outside the start's time budget: the key exchange has its own.
        raise await name_the_unknown_key(gateway, options, exc) from None
    except BaseException:
        # Shielded: Tunnel.close() cancels a start and then bounds its wait; a second
        # cancel must not skip the SIGKILL of a master slow to exit, or its directory.
        await asyncio.shield(link.aclose(0.5))
        raise
    link.refill()
    log.info("link up to %s (ssh master pid %d)", label, process.pid)
    return link
