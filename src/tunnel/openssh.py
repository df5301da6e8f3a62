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

* bytes are not visible to us: ``bytes_in``/``bytes_out`` stay 0 (unknown);
* the master receives two descriptors for the one socket, so a half-close *from the target*
  reaches the client only when the channel closes completely (as with ``ssh -W`` via mux);
* ``BatchMode=yes``: no password or passphrase prompts (keys and agent only); an unknown
  host key is refused by ssh itself, so the message carries the ``ssh-keyscan`` command
  but not the fingerprint.

The pure parts (argv, exit classification, mux packet codec) are plain functions; the
asyncio edge is :class:`MuxLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tunnel.errors import (
    AuthFailed,
    GatewayUnreachable,
    HostKeyChanged,
    HostKeyUnknown,
    LinkLost,
    TunnelConfigError,
    TunnelError,
)
from tunnel.forwards import Gateway
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
MUX_SPARES = 4
"""Mux connections kept open (hello sent) ahead of demand, per link."""
REFILL_DELAY_S = 0.005
"""Spares are replaced this long after one is used, not at once: the master's accept of a
new spare would otherwise compete with its opening of the channel just requested."""
STDERR_TAIL_MAX = 4096
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
    port = f"-p {gateway.port} " if gateway.port is not None else ""
    known = options.known_hosts or Path("~/.ssh/known_hosts")
    return f"ssh-keyscan {port}{gateway.host} >> {known}"


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
        return AuthFailed(
            f"gateway {label} refused authentication ({last}); check the user name, that "
            "your key is loaded (ssh-add -l) and authorized on the gateway"
        )
    if "Bad configuration option" in stderr or "command-line line" in stderr:
        return TunnelConfigError(f"gateway {label}: ssh rejected its options: {last}")
    return GatewayUnreachable(f"gateway {label}: {last}")


# --- asyncio edge ------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the master when this process dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``), so even a crashed tunnel leaves no ssh behind;
    ``None`` where that is not available. libc is loaded here, before the fork."""
    libc = _libc() if sys.platform.startswith("linux") else None
    if libc is None:
        return None
    prctl = libc.prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


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
            await loop.sock_connect(sock, str(path))
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

    async def wait_closed(self) -> None:
        """Until the master closes this connection (the channel ended)."""
        loop = asyncio.get_running_loop()
        while await loop.sock_recv(self.sock, 4096):
            pass

    def close(self) -> None:
        self.sock.close()


class MuxLink:
    """One running ``ssh -M`` master whose control socket answered: the link is up."""

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
        self._refill_pending = False
        self._closed = False

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait_closed(self) -> TunnelError:
        """Wait until the master exits; return why, as a :class:`LinkLost`."""
        code = await asyncio.shield(self.process.wait())
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
        """Keep ``MUX_SPARES`` connections open ahead of demand, so a new client costs one
        request and two descriptors, not a connect and the master's accept."""
        self._refill_pending = False
        while not self._closed and len(self._spares) < MUX_SPARES:
            channel = self._connect_now()
            if channel is None:
                return
            self._spares.append(channel)

    def start_stdio_fwd(self, fd: int, host: str, port: int) -> tuple[MuxChannel, int] | None:
        """Send ``MUX_C_NEW_STDIO_FWD`` and ``fd`` (twice) now, on a spare connection; the
        caller reads the master's hello and reply (``(channel, request id)``) later. ``None``
        when that cannot be done without waiting: use :meth:`open_stdio_fwd` instead."""
        if self._closed:
            return None
        channel = self._spares.pop() if self._spares else self._connect_now()
        if channel is None:
            return None
        if not self._refill_pending:
            self._refill_pending = True
            asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.refill)
        rid = self._next_request_id()
        request = stdio_fwd_packet(rid, host, port)
        try:
            if channel.sock.send(request) != len(request):
                raise BlockingIOError
            socket.send_fds(channel.sock, [b"\0"], [fd])
            socket.send_fds(channel.sock, [b"\0"], [fd])
        except OSError:
            channel.close()
            return None
        return channel, rid

    async def open_stdio_fwd(self, fd: int, host: str, port: int) -> MuxChannel:
        """Hand ``fd`` to the master for a channel to ``host:port``; the returned mux
        connection must stay open while the channel lives. :class:`MuxError` / OSError."""
        rid = self._next_request_id()
        channel = await MuxChannel.connect(self.control_path, stdio_fwd_packet(rid, host, port), fd)
        try:
            check_opened(await channel.read_packet(), rid)
        except BaseException:
            channel.close()
            raise
        return channel

    def close(self) -> None:
        """Ask the master to exit (SIGTERM); it removes its control socket itself."""
        self._closed = True
        for channel in self._spares:
            channel.close()
        self._spares.clear()
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
        raise GatewayUnreachable(
            f"gateway {label}: timed out after {options.connect_timeout_s:g} s"
        ) from None
    except BaseException:
        await link.aclose(0.5)
        raise
    link.refill()
    log.info("link up to %s (ssh master pid %d)", label, process.pid)
    return link
