"""The ``ssh -M`` master process: started, watched, asked whether it is alive, stopped.

The master runs in its own session with a private control directory (0700); the kernel
SIGKILLs it if this process dies (Linux ``PR_SET_PDEATHSIG``), and a watchdog in its
process group kills the rest of the group (its ProxyCommand) then (:data:`WATCHED`), so
even a crashed tunnel leaves no ssh behind. Its stderr is logged and its tail kept to say
why it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from tunnel.backends.asyncssh_link import open_link
from tunnel.backends.openssh.command import SshFiles, master_argv
from tunnel.backends.openssh.mux import MUX_S_ALIVE, MuxError, alive_packet, parse_reply
from tunnel.backends.openssh.pool import MuxChannel
from tunnel.backends.openssh.stderr import classify_exit
from tunnel.errors import (
    GatewayUnreachable,
    HostKeyError,
    TunnelConfigError,
    TunnelError,
)
from tunnel.forwards import Gateway
from tunnel.libc import libc as c_library
from tunnel.options import TunnelOptions

log = logging.getLogger("tunnel.openssh")

STDERR_TAIL_MAX = 4096
POLL_S = 0.01
"""How often a starting master's control socket is probed."""
PR_SET_PDEATHSIG = 1


def _death_signal_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the master when this process dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``); ``None`` where that is not available. libc is
    loaded here, before the fork.

    Not SIGTERM: OpenSSH's client loop (9.2) tests the flag its handler sets before a
    plain ``poll()``, so a SIGTERM that lands between the test and the call (the master
    busy with the mux connections the dying process just closed) waits for the next
    wake-up: a keepalive away, and the master outlived its tunnel for up to
    ``keepalive_s``. Nobody is left to be told goodbye: the gateway sees the TCP
    connection close, and the private directory stays behind either way."""
    libc = c_library() if sys.platform.startswith("linux") else None
    if libc is None:
        return None
    prctl = libc.prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

    return hook


SHELL = "/bin/sh"
WATCHED = (
    "exec 3<&0 </dev/null; "
    f'{SHELL} -c "read line <&3; kill -s KILL 0" ssh-watchdog >/dev/null 2>&1 & '
    'exec "$@" 3<&-'
)
"""The ``sh -c`` script the master is started through: it starts a watchdog (a ``sh`` of
its own, so that only the master's command line names the gateway), then becomes the
master (``exec``: same process, same pid). The watchdog stays in the master's process
group, waiting on its stdin, a pipe whose other end only this process holds
(:class:`Master`'s ``guard``); at the pipe's end (this process gone, however it died, or
the master's stop) it SIGKILLs the whole group (``kill 0``): the master, the children ssh
started (its ProxyCommand, ``ssh -W`` for a ProxyJump) and itself.

Why: a SIGKILLed master (the parent-death signal, or :meth:`Master.stop` past its grace)
cannot SIGHUP its ProxyCommand, which then sees only the end of its stdin; a proxy that
does not end there (``nc host 22`` without ``-N``) would keep the gateway connection open
for good. The watchdog blocks in ``read`` only, so no signal race can keep it from acting;
being a member, it pins the group's id (a process group's id is not given to a new process
while the group has members), so ``kill 0`` reaches the master's group and nothing else.
Only a ProxyCommand that leaves the group itself (``setsid``) escapes it."""
UNRUNNABLE = (126, 127)
"""``sh``'s exit status when its ``exec`` cannot run the command (ssh exits 255 itself)."""


MASTER_MALLOC = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=131072"
"""glibc tunables for the master: buffers of 64 KiB and more get their own mappings, which
are unmapped when freed, and a free heap top above 128 KiB is given back. Without them the
master kept the ~200 MB of channel buffers that 200 concurrent 1 MB transfers had grown
(OpenSSH's default 2 MiB window per channel) for good; ignored by other C libraries."""


def master_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The master's environment: ours, with :data:`MASTER_MALLOC` added to any tunables
    already set."""
    env = dict(environ)
    tunables = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{tunables}:{MASTER_MALLOC}" if tunables else MASTER_MALLOC
    return env


async def _drain_stderr(pipe: io.FileIO, tail: bytearray, label: str) -> None:
    """Log the master's stderr, keeping its tail, until the pipe's end (its last holder,
    the master or a ProxyCommand it started, gone)."""
    stream = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), pipe
    )
    try:
        while line := await stream.readline():
            log.info("ssh %s: %s", label, line.decode(errors="replace").rstrip())
            tail += line
            del tail[:-STDERR_TAIL_MAX]
    finally:
        transport.close()


async def alive(path: Path) -> bool:
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


def listening(path: Path) -> bool:
    """Whether the master still accepts on its control socket, asked without waiting: a
    full backlog (``EAGAIN``) counts as listening, a refusal or a missing socket not."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(str(path))
        except BlockingIOError:
            return True
        except OSError:
            return False
    return True


SO_ACCEPTCON = 0x10000
"""``__SO_ACCEPTCON`` in ``/proc/net/unix``'s flags: a listening socket."""


class ExitWatch:
    """Whether a master is going, told from Linux ``/proc`` without a word to it: it no
    longer holds its control listener (``/proc/PID/fd/N``).

    When the master hangs up a mux connection, that tells a going master from a channel
    that ended: ending cleanly (SIGTERM, the gateway gone) it frees its channels in order,
    the listener (channel 0) first; killed or exiting, the kernel drops its whole descriptor
    table (``exit_files``) before it releases any of the sockets, which it then does in no
    set order (deferred, newest first on Linux 5.11+). A connect to the control socket
    (:func:`listening`) cannot tell in that case (a killed master's listener may outlive
    the mux connections by a moment), and costs the master an accept per question.
    """

    __slots__ = ("fd_path", "link")

    def __init__(self, fd_path: str, link: str) -> None:
        self.fd_path = fd_path
        self.link = link

    @classmethod
    def of(cls, pid: int, control_dir: Path, proc: Path = Path("/proc")) -> ExitWatch | None:
        """The watch of master ``pid`` whose control socket is in ``control_dir`` (bound
        under a temporary name there, then linked into place: OpenSSH ``muxserver_listen``);
        ``None`` where ``/proc`` does not show its listener."""
        prefix = f"{control_dir}{os.sep}"
        inodes: set[str] = set()
        try:
            for line in (proc / "net" / "unix").read_text().splitlines()[1:]:
                fields = line.split()
                # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON: listening
                if (
                    len(fields) >= 8
                    and int(fields[3], 16) & SO_ACCEPTCON
                    and fields[7].startswith(prefix)
                ):
                    inodes.add(f"socket:[{fields[6]}]")
            fds = proc / str(pid) / "fd"
            for name in os.listdir(fds):
                with contextlib.suppress(OSError):
                    link = os.readlink(fds / name)
                    if link in inodes:
                        return cls(str(fds / name), link)
        except (OSError, ValueError):
            return None
        return None

    def going(self) -> bool:
        """The master no longer holds its control listener: exiting, gone (a socket's
        inode number is not reused while it is open, so a new process with the same pid
        cannot pass), or freeing its channels."""
        try:
            return os.readlink(self.fd_path) != self.link
        except OSError:
            return True


class Master:
    """One running ``ssh -N -M`` process and its private control directory."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        control_dir: Path,
        label: str,
        ssh_binary: str = "ssh",
        guard: int | None = None,
        *,
        stderr: int,
    ) -> None:
        self.process = process
        self.guard = guard
        """Our end of the watchdog's pipe (:data:`WATCHED`), closed once the master exited."""
        self.handle = _pidfd(process.pid)
        """A pidfd on the master (None where there are none), closed once it exited:
        :meth:`send` signals through it."""
        self.reaped = asyncio.get_running_loop().create_task(process.wait(), name="tunnel-ssh-reap")
        """The master's exit, seen whoever waits for it and even when no one does (a
        waiter cancelled mid-wait): the pipe is closed then, by its callback."""
        self.reaped.add_done_callback(lambda _: self.release_guard())
        self.ssh_binary = ssh_binary
        self.control_dir = control_dir
        self.control_path = control_dir / "ctl"
        self.label = label
        self.exit_watch: ExitWatch | None = None
        self.stderr_tail = bytearray()
        # The read end of the master's stderr, a pipe of our own rather than the
        # subprocess's: asyncio (3.11) ends ``process.wait()`` only once every pipe it made
        # is closed, and a ProxyCommand inherits ssh's stderr, so a master killed before
        # its proxy (the proxy ended by the watchdog, after that wait) would never be seen
        # to exit.
        pipe = open(stderr, "rb", buffering=0)  # noqa: SIM115 (closed by the task's end)
        self.stderr_task = asyncio.get_running_loop().create_task(
            _drain_stderr(pipe, self.stderr_tail, label), name="tunnel-ssh-stderr"
        )
        self.stderr_task.add_done_callback(lambda _: pipe.close())  # even if never started

    @property
    def pid(self) -> int:
        return self.process.pid

    def going(self) -> bool:
        """Whether the master is going (or gone): :class:`ExitWatch` where ``/proc`` shows
        its listener, else whether its control socket still accepts (:func:`listening`)."""
        if self.exit_watch is not None:
            return self.exit_watch.going()
        return not listening(self.control_path)

    def stderr_text(self) -> str:
        return self.stderr_tail.decode(errors="replace")

    async def wait_exit(self) -> str:
        """Wait until the master exits; return its last words (or its exit status)."""
        code = await asyncio.shield(self.reaped)
        self.release_guard()  # done by the reap's callback already; said here to be plain
        shutil.rmtree(self.control_dir, ignore_errors=True)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(self.stderr_task)
        lines = self.stderr_text().strip().splitlines()
        return lines[-1].strip() if lines else f"ssh exited with status {code}"

    def release_guard(self) -> None:
        """Close our end of the watchdog's pipe: the watchdog SIGKILLs what is left of the
        master's process group (a ProxyCommand that outlived the master) and itself; and
        our pidfd on the master."""
        if self.guard is not None:
            os.close(self.guard)
            self.guard = None
        if self.handle is not None and self.process.returncode is not None:
            handle, self.handle = self.handle, None
            os.close(handle)

    def send(self, signum: int) -> None:
        """Send ``signum`` to the master, unless the loop has seen it exit.

        Not ``process.send_signal`` or ``kill``: on asyncio's loop those are ``Popen``'s,
        which first poll the child (``waitpid(WNOHANG)``, bpo-38630) and so reap a master
        that has just exited if they come before asyncio's child watcher; the watcher then
        logs "Unknown child process pid …, will report returncode 255" and reports 255,
        not the master's status (the tunnel bench, stopping a tunnel-mux forwarder: the
        stop's SIGTERM after the one the link's close sent; 3 in 30 stops found the master
        already gone). A pidfd names the process for good, and signalling through it reaps
        nothing; without one, ``os.kill`` (asyncio's watcher reaps a moment before the loop
        is told: a pid reused in that window could be hit; very unlikely, as for
        :class:`tunnel.exec.SubprocessExec`)."""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.handle is not None:
                signal.pidfd_send_signal(self.handle, signum)
            else:
                os.kill(self.process.pid, signum)

    def terminate(self) -> None:
        """Ask the master to exit (SIGTERM); it removes its control socket itself."""
        self.send(signal.SIGTERM)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, SIGKILL after ``grace_s``, reap, let the watchdog end what is left of
        the group, remove the private directory."""
        self.terminate()
        try:
            async with asyncio.timeout(grace_s):
                await self.process.wait()
        except TimeoutError:
            # The master cannot hang up its ProxyCommand now: the watchdog ends its group,
            # and what left the group (``setsid``) is found by its parents while the master
            # is still there to be one, and ended after it.
            strays = stray_descendants(self.process.pid)
            try:
                self.send(signal.SIGKILL)
                await asyncio.shield(self.reaped)
            finally:  # a cancelled stop ends them too (the master was killed already)
                for handle in strays:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(handle, signal.SIGKILL)
                    os.close(handle)
        self.release_guard()  # the reap's callback may not have run yet
        self.stderr_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.stderr_task
        shutil.rmtree(self.control_dir, ignore_errors=True)


def _pidfd(pid: int) -> int | None:
    """A pidfd on ``pid`` (Linux 5.3+), or None."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def stray_descendants(pid: int) -> list[int]:
    """Handles (pidfds, Linux 5.3+) on the processes below ``pid`` that are not in its
    process group, found by their parents in ``/proc``: a ProxyCommand that called
    ``setsid``, out of the watchdog's reach. A handle names its process for good (a pid
    may be reused once it is gone). Empty where ``/proc`` or pidfds are missing."""
    if not hasattr(os, "pidfd_open"):
        return []
    children: dict[int, list[int]] = {}
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            parents[int(entry)] = int(fields[1])
            groups[int(entry)] = int(fields[2])
    handles, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        if groups.get(current) != pid:
            with contextlib.suppress(OSError):
                handle = os.pidfd_open(current)
                if _parent(current) == parents[current]:  # the one seen, not a pid reused
                    handles.append(handle)
                else:
                    os.close(handle)
    return handles


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def name_the_key(
    gateway: Gateway, options: TunnelOptions, fallback: TunnelError
) -> TunnelError:
    """The error for a host key OpenSSH refused, in the asyncssh backend's words.

    ``ssh`` in batch mode refuses an unknown key without naming it. The key is fetched once
    more through the asyncssh backend's connect (same ssh config, same known_hosts, no key
    offered: the host key is checked before any authentication), whose message names the
    algorithm, the fingerprint and the command that trusts it (or, for a changed key, the
    one that removes the old entry). Anything else that happens (the gateway gone, the key
    accepted after all): ``fallback``, OpenSSH's own verdict.
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
    except HostKeyError as exc:
        return exc if type(exc) is type(fallback) else fallback
    except TunnelError:
        return fallback
    await link.aclose(0.5)
    return fallback


async def start_master(gateway: Gateway, options: TunnelOptions) -> Master:
    """Start a master for ``gateway`` and wait (``connect_timeout_s``) until its control
    socket answers; raise a classified :class:`TunnelError` if it exits first."""
    binary = options.ssh_binary
    if shutil.which(binary) is None:
        raise TunnelConfigError(f"backend openssh: {binary!r} not found (install openssh-client)")
    control_dir = Path(tempfile.mkdtemp(prefix="tunnel-ssh-"))
    os.chmod(control_dir, 0o700)
    control_path = control_dir / "ctl"
    argv = master_argv(binary, gateway, options, control_path, SshFiles.of(options))
    label = str(gateway)
    watchdog_end, guard = os.pipe()
    stderr, stderr_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            SHELL,
            "-c",
            WATCHED,
            "sh",
            *argv,
            stdin=watchdog_end,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr_end,
            start_new_session=True,
            preexec_fn=_death_signal_hook(),
            env=master_environment(os.environ),
        )
    except BaseException as exc:
        os.close(guard)  # a shell already started (a cancelled start): its watchdog ends it
        os.close(stderr)
        shutil.rmtree(control_dir, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        raise TunnelConfigError(f"backend openssh: cannot run {SHELL}: {exc}") from None
    finally:
        os.close(watchdog_end)
        os.close(stderr_end)
    master = Master(process, control_dir, label, binary, guard, stderr=stderr)
    try:
        async with asyncio.timeout(options.connect_timeout_s + 1):
            while True:
                if process.returncode is not None:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1):
                            await asyncio.shield(master.stderr_task)
                    if process.returncode in UNRUNNABLE:
                        raise TunnelConfigError(
                            f"backend openssh: cannot run {binary}: {master.stderr_text().strip()}"
                        )
                    raise classify_exit(gateway, options, process.returncode, master.stderr_text())
                if control_path.exists() and await alive(control_path):
                    master.exit_watch = ExitWatch.of(process.pid, control_dir)
                    break
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        await master.stop(0.5)
        raise GatewayUnreachable.timed_out(label, options.connect_timeout_s) from None
    except HostKeyError as exc:
        await master.stop(0.5)
        # Outside the start's time budget: the key exchange has its own.
        raise await name_the_key(gateway, options, exc) from None
    except BaseException:
        # Shielded: Tunnel.close() cancels a start and then bounds its wait; a second
        # cancel must not skip the SIGKILL of a master slow to exit, or its directory.
        await asyncio.shield(master.stop(0.5))
        raise
    return master
