"""``blitzdns run``: bind everything, drop privileges, serve, reload, stop.

Order of work, and why:

1. Choose the location (``--location auto``) and the upstreams (never ourselves).
2. Bind every socket while we may: the stub's UDP/TCP listeners, every mouth, the
   control socket. A port that is taken or privileged fails here, before anything runs.
3. Drop to the target user (``--user``, else ``SUDO_USER``), keeping only
   CAP_NET_BIND_SERVICE, so the SSH link uses that user's ~/.ssh and agent.
4. Serve DNS and start the tunnel supervisor. The stub answers protected names with
   their mouths from the first moment, link up or not: a mouth holds a connection
   until the link is back, and nothing ever falls back to a real address.
5. SIGHUP reloads (tunnel first on additions, so a name is never answered before its
   mouth listens); SIGTERM/SIGINT stop everything within 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import getpass
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blitzdns import classcode
from blitzdns.argv import OneLineErrors
from blitzdns.config import Config, Endpoint, find_config_file, load_config
from blitzdns.dns.detect import detect_upstreams
from blitzdns.dns.listen import Listener, bind_listeners, close_listeners
from blitzdns.dns.stats import ResolverStats
from blitzdns.effective import Flags, layered
from blitzdns.errors import BlitzdnsError, ConfigError, PermissionProblem, UsageError, explain
from blitzdns.logs import FORMATS, link_event, setup_logging
from blitzdns.plan import notes
from blitzdns.system import privileges, sdnotify
from blitzdns.system.record import resolver_installed, saved_upstreams
from tunnel import (
    Forward,
    Gateway,
    LinkStatus,
    RelayLimits,
    TunnelOptions,
    UdpForward,
    early,
    nosftp,
)
from tunnel.errors import RetryableError

if TYPE_CHECKING:
    from blitzdns.control import ControlServer
    from blitzdns.dns.server import Resolver
    from blitzdns.guard_service import GuardService
    from blitzdns.snapshot import Snapshot
    from tunnel import Tunnel, TunnelState

log = logging.getLogger("blitzdns")

STOP_GRACE_S = 1.5

LINK_CONNECT_WAIT_S = 0.3
"""How long a link-first start waits for the link's connect to begin before loading the
stub's modules anyway (:meth:`Daemon._load_stub_beside_the_link`). On an idle machine the
connect begins ~80 ms after the link's start (its code loaded, its options read:
bench/notes/startup.md, session 9); a loaded machine that takes longer only loses part of
the overlap. What it bounds: asyncssh loads the client keys before it connects, and an
encrypted key's passphrase is asked on the terminal (:class:`TerminalSecrets`) for as long
as the user takes; the stub (perhaps the system's resolver) must not wait for that."""

STUB_MODULES = (
    "blitzdns.dns.rfc",
    "blitzdns.dns.batchio",
    "blitzdns.dns.table",
    "blitzdns.dns.steer",
    "blitzdns.dns.decide",
    "blitzdns.dns.fastpath",
    "blitzdns.dns.cache",
    "blitzdns.dns.guard",
    "blitzdns.dns.engine",
    "blitzdns.dns.upstream",
    "blitzdns.dns.loops",
    "blitzdns.dns.quiet",
    "blitzdns.dns.server",
    "blitzdns.control",
)
"""What a link-first start loads one by one in the link's waits (:meth:`Daemon.start`):
the resolver's modules, in about the order they load, and the control socket's
(tests/daemon/test_link_first.py checks that they are what those two load)."""
LOCATION_EVENTS_POLL_S = 30.0
"""With network events, ``--location auto`` still re-reads the facts this often."""


#: The tunnel settings a reload applies (through the forwards and the gateway list); the
#: others are the SSH client's own and wait for a restart.
LIVE_TUNNEL_SETTINGS = frozenset({"gateways", "hosts", "mouths"})
#: [guard] settings a reload cannot apply: the guard is installed (or not) at start, as root.
RESTART_GUARD_SETTINGS = ("enabled", "target")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``run`` was asked on its command line, beyond the config file."""

    config_path: Path | None = None
    no_tunnel: bool = False
    user: str | None = None
    auto_location: bool = False
    #: A location named on the command line (not with ``auto_location``).
    location: str | None = None
    control_socket: Path | None = None
    verbose: bool = False
    #: ``--log-format``: auto (journald when stderr is the journal), plain or journal.
    log_format: str = "auto"
    flag_listen: tuple[str, ...] = ()
    flag_upstreams: tuple[str, ...] = ()
    flag_gateways: tuple[str, ...] = ()
    trust_new_host_key: bool = False
    #: Switch to the target user after binding (the demo runs in-process and keeps its user).
    drop_privileges: bool = True
    #: How often ``--location auto`` re-reads the network facts when no network events come
    #: (no tunnel, or no netlink: not Linux).
    location_poll_s: float = 3.0
    #: Where the install records (resolver config, guard) live: / except in tests.
    root: Path = Path("/")
    #: Start the TCP connect to the first gateway once every socket is bound
    #: (:func:`connect_early`): the ``run`` command, not a daemon run in-process.
    connect_early: bool = False

    @property
    def flags(self) -> Flags:
        """The flags that win over the file and the location, at start and on every reload."""
        return Flags(
            listen=self.flag_listen,
            upstreams=self.flag_upstreams,
            gateways=self.flag_gateways,
            trust_new_host_key=self.trust_new_host_key,
        )


def install_fast_loop() -> bool:
    """Use uvloop when it is installed (it roughly halves the per-packet cost)."""
    try:
        import uvloop  # noqa: PLC0415  (a dependency where it installs: not on Windows)
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def end_of_start() -> None:
    """The start's imports and set-up are over: if the entry point turned the cyclic
    collector off for them (:func:`blitzdns.entry.main`), move what they made to the
    permanent generation (``gc.freeze``: later collections skip it) and turn it on again;
    ``dataclasses`` compiles as usual again (:func:`blitzdns.classcode.finish`), asyncssh's
    left-out modules would load in full (:func:`tunnel.nosftp.finish`).

    Called when the link's first attempt has ended (asyncssh is imported by then) or, with
    no tunnel, when the resolver serves. A daemon run in-process (the demo, tests) keeps
    the collector as it found it.
    """
    classcode.finish()
    nosftp.finish()
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


FD_LIMIT_WANTED = 65536
"""Descriptors wanted: each tunneled connection holds one or two (client socket; with the
openssh backend also its mux connection), and a default soft limit of 1024 would cap a
busy daemon at a few hundred connections."""


def raise_fd_limit(wanted: int = FD_LIMIT_WANTED) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit, never
    lower than it is), as servers do at start; the limit now in force."""
    try:
        import resource  # noqa: PLC0415  (POSIX only)
    except ImportError:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft
        return target
    return soft


class AskCancelled(RetryableError):
    """A question on the terminal left unanswered: the daemon is stopping. Raised inside
    asyncssh's connect, it reaches the link's supervisor as a retryable failure (a quiet
    line at DEBUG), not as an unexpected error with its traceback."""


class AnswerUndecodable(RetryableError):
    """An answer on the terminal that is not valid text in the locale's encoding: the next
    attempt asks again. Carries neither the answer's bytes nor their position (a
    UnicodeDecodeError would, and as a ValueError it became a final config error)."""


class TerminalModeLost(RetryableError):
    """The terminal's mode (its echo) could not be put back once the answer was read (a
    hang-up, say): the answer is dropped and the next attempt asks again."""


class _Question:
    """One question on the terminal, and whoever waits for its answer."""

    __slots__ = ("answer", "done", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: str | None = None
        self.failed: BaseException | None = None


class TerminalSecrets:
    """Asks for a password or key passphrase on the terminal, once per prompt.

    The answer is kept in memory so that the supervisor's reconnects do not ask again
    (the classic ``ssh -L`` asked at every restart). Used only when stdin is a terminal.

    Each question is asked in a thread of its own, so that a stop (:meth:`cancel`: Ctrl-C
    or SIGTERM at the prompt) ends it at once: the asker (asyncssh's executor thread, which
    the loop's end waits for) gets :class:`AskCancelled`, and the terminal's reader
    (:func:`read_secret`, which watches a pipe that :meth:`cancel` writes to) puts the
    echo back and ends, joined by the asker: no thread is left reading the terminal. An
    ``ask`` given in its place (the tests') that does not end is abandoned as before, the
    echo put back for it. One
    question at a time is on the terminal: the same question asked again meanwhile (a
    reconnect after an attempt timed out at the prompt) waits for the first one's answer,
    another question for its turn; so the terminal's mode is saved only while no prompt
    has changed it, and put back once.
    """

    def __init__(self, ask: Callable[[str], str] | None = None, terminal: str = "/dev/tty"):
        self.ask = ask or self._read
        #: The terminal asked on (the process's controlling one; a pty's in the tests).
        self.terminal = terminal
        self._own_reader = ask is None
        self.answers: dict[str, str] = {}
        self._cancelled = False
        self._turn = threading.Condition()
        self._asking: dict[str, _Question] = {}
        #: A pipe made at the first question; :meth:`cancel` makes its read end readable.
        self._wake: tuple[int, int] | None = None
        #: Readers of the terminal (:meth:`_read`) not yet over: the pipe is closed once
        #: cancelled and none is left.
        self._readers = 0

    async def password(self, prompt: str) -> str:
        if prompt not in self.answers:
            self.answers[prompt] = await asyncio.to_thread(self._asked, prompt)
        return self.answers[prompt]

    def passphrase(self, filename: str) -> str:
        prompt = f"Enter passphrase for key '{filename}': "
        if prompt not in self.answers:
            self.answers[prompt] = self._asked(prompt)
        return self.answers[prompt]

    def cancel(self) -> None:
        """Questions being asked or waiting, and any later one, raise :class:`AskCancelled`;
        the terminal's reader ends (its asker joins it)."""
        with self._turn:
            self._cancelled = True
            if self._wake is not None:
                os.write(self._wake[1], b"x")  # never read: stays readable
                self._close_wake()
            for question in self._asking.values():
                question.done.set()
            self._turn.notify_all()

    def _read(self, prompt: str) -> str:
        with self._turn:  # a cancel either sees the pipe (and writes) or comes first
            if self._cancelled:
                raise AskCancelled(prompt)
            if self._wake is None:
                self._wake = os.pipe()
            wake = self._wake[0]
            self._readers += 1
        try:
            return read_secret(prompt, self.terminal, wake)
        finally:
            with self._turn:
                self._readers -= 1
                self._close_wake()

    def _close_wake(self) -> None:
        """Close the pipe once cancelled and no reader is left (no other comes); under
        ``self._turn``."""
        if self._cancelled and not self._readers and self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _asked(self, prompt: str) -> str:
        """``self.ask(prompt)``'s answer (from any thread): waited for, until :meth:`cancel`."""
        with self._turn:
            while True:
                if self._cancelled:
                    raise AskCancelled(prompt)
                question = self._asking.get(prompt)
                if question is not None:  # the same question, on the terminal now
                    mine = False
                    break
                if not self._asking:
                    question = self._asking[prompt] = _Question()
                    mine = True
                    break
                self._turn.wait()  # another question on the terminal: its turn first
        if mine:
            self._put(prompt, question)
        question.done.wait()
        if question.answer is not None:
            return question.answer
        if question.failed is not None:
            raise question.failed
        raise AskCancelled(prompt)

    def _put(self, prompt: str, question: _Question) -> None:
        """Ask ``question`` on the terminal (a thread of its own), wait for its answer or a
        cancel, then give the terminal to the next question."""

        def ask() -> None:
            try:
                question.answer = self.ask(prompt)
            except BaseException as exc:  # handed to the askers
                question.failed = exc
            finally:
                question.done.set()

        terminal = _terminal_mode(self.terminal)
        thread = threading.Thread(target=ask, name="blitzdns-ask", daemon=True)
        try:
            thread.start()
            question.done.wait()
            if self._own_reader:
                # Answered, or cancelled: its reader ends at once either way (the bound
                # is a safety net: a terminal whose output is stopped, ^S, holds a write).
                thread.join(ASK_JOIN_S)
        finally:
            if self._own_reader:
                abandoned = thread.is_alive()  # else it put the terminal's mode back itself
            else:
                abandoned = question.answer is None and question.failed is None
            _release_terminal(terminal, restore=abandoned)
            with self._turn:
                del self._asking[prompt]
                self._turn.notify_all()


ASK_JOIN_S = 5.0
"""How long a question's asker waits for the terminal's reader to end once answered or
cancelled (it ends at once; the bound only keeps a stuck terminal from holding the stop)."""


def read_secret(prompt: str, terminal: str, wake: int) -> str:
    """What :func:`getpass.getpass` asks, on ``terminal``: the prompt, a line read with echo
    off, the mode put back and the line ended; :class:`AskCancelled` as soon as ``wake``
    is readable (the same, without the line). Without ``terminal``, on stdin's terminal
    (as getpass); without either, getpass's own way.

    Nothing here can block for good: the terminal is opened non-blocking and both the
    prompt's write and the read wait in :func:`select.poll` (no fd limit, unlike
    ``select.select``: a busy daemon's fds pass 1023) with ``wake``; the mode is set
    without waiting for output to drain (a terminal whose output is stopped, ^S, never
    drains); the line's end is dropped when it cannot be written at once."""
    fd = _open_terminal(terminal)
    if fd is None:
        return _getpass(prompt)
    import locale  # noqa: PLC0415  (a question on a terminal only)
    import re  # noqa: PLC0415
    import termios  # noqa: PLC0415

    encoding = locale.getpreferredencoding(False)  # as getpass's text stream's
    mode: list[Any] | None
    try:
        mode = termios.tcgetattr(fd)
    except termios.error:
        mode = None
    if mode is None:  # not a terminal after all: getpass's own way (outside the except)
        os.close(fd)
        return _getpass(prompt)
    try:
        quiet = list(mode)
        quiet[3] &= ~termios.ECHO
        _set_mode(fd, quiet)
        try:
            _write_all(fd, prompt.encode(encoding, errors="replace"), wake, prompt)
            line, size = _read_line(fd, wake, prompt)
        except BaseException:
            with contextlib.suppress(OSError, termios.error):  # the first error is the one
                _set_mode(fd, mode)
                _write_soon(fd, b"\n")
            raise
        if line[size - 1] == NEWLINE:
            size -= 1
        answer: str | None
        try:
            # Undecodable bytes come as U+DC80..U+DCFF, not as a UnicodeDecodeError: its
            # .object would be a bytes copy of the line, freed unzeroed. Any such character
            # makes the answer an error (strict, as getpass's terminal stream), not an
            # altered answer (raised below); a decoder never yields one for valid bytes.
            with memoryview(line) as typed:
                answer = str(typed[:size], encoding, "surrogateescape")
            if re.search("[\udc80-\udcff]", answer) is not None:
                answer = None
        except UnicodeDecodeError:  # a byte below 128 a codec cannot read: none we know
            answer = None
        finally:
            _wipe(line)
        try:
            _set_mode(fd, mode)
            restored = True
        except termios.error:  # a hang-up, say: raised below, without the answer
            restored = False
        with contextlib.suppress(OSError):  # as on the error path: the line's end may go
            _write_soon(fd, b"\n")
    finally:
        os.close(fd)
    # the errors below are raised outside any except block (no context) and from a frame
    # that no longer holds the answer or its bytes (a traceback keeps the frame's locals)
    del line
    if not restored:
        del answer
        raise TerminalModeLost("the terminal's mode could not be put back after the answer")
    if answer is None:
        raise AnswerUndecodable(f"the answer is not valid {encoding} text")
    return answer


def _getpass(prompt: str) -> str:
    """:func:`getpass.getpass`'s answer; :class:`AnswerUndecodable` for one its stream
    cannot decode (its UnicodeDecodeError carried the answer's bytes, a byte and its
    position: raised outside the except block, with no context holding them)."""
    try:
        return getpass.getpass(prompt)
    except UnicodeDecodeError:
        pass
    raise AnswerUndecodable("the answer is not valid text in the terminal's encoding")


def _open_terminal(terminal: str) -> int | None:
    """``terminal`` opened for a question (non-blocking, a file description of its own);
    failing that, stdin's terminal reopened (getpass's second way); else None."""
    flags = os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK
    try:
        return os.open(terminal, flags)
    except OSError:
        pass
    try:
        stdin = sys.stdin.fileno()
        # a pty master's name is /dev/ptmx: opening it makes a new pty, not this one (and
        # a new master has ptmx's st_rdev too, so the name is checked, then the device)
        if os.isatty(stdin) and os.path.basename(name := os.ttyname(stdin)) != "ptmx":
            again = os.open(name, flags)
            try:
                if os.fstat(again).st_rdev == os.fstat(stdin).st_rdev:
                    return again
            except OSError:
                pass
            os.close(again)  # not the same terminal, or not known to be: not leaked
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _set_mode(fd: int, mode: list[Any]) -> None:
    """``mode`` on ``fd`` now, typed-ahead input dropped (TCSAFLUSH without its wait for
    the output to drain, which a stopped terminal never does)."""
    import termios  # noqa: PLC0415

    with contextlib.suppress(termios.error):  # the mode (echo back on) is set regardless
        termios.tcflush(fd, termios.TCIFLUSH)
    termios.tcsetattr(fd, termios.TCSANOW, mode)


def _wait(fd: int, events: int, wake: int, prompt: str) -> None:
    """Until ``fd`` has one of ``events`` (or an error, hang-up); :class:`AskCancelled` once
    ``wake`` is readable."""
    import select  # noqa: PLC0415

    poller = select.poll()
    poller.register(fd, events)
    poller.register(wake, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if wake in ready:
            raise AskCancelled(prompt)
        if fd in ready:
            return


def _write_all(fd: int, data: bytes, wake: int, prompt: str) -> None:
    import select  # noqa: PLC0415

    while data:
        _wait(fd, select.POLLOUT, wake, prompt)
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:  # writable said, full found (output stopped)
            _nap(wake, prompt)


def _nap(wake: int, prompt: str) -> None:
    """A short wait on ``wake`` alone: a terminal that says it is ready and is not would
    otherwise spin."""
    import select  # noqa: PLC0415

    poller = select.poll()
    poller.register(wake, select.POLLIN)
    if poller.poll(50):
        raise AskCancelled(prompt)


LINE_START = 1024
"""Bytes :func:`_read_line` starts with (a canonical terminal line is at most 4095)."""
NEWLINE = ord("\n")


def _read_line(fd: int, wake: int, prompt: str) -> tuple[bytearray, int]:
    """A line as getpass's readline reads it: up to its newline included, or what was
    typed before an end of file (^D); :class:`EOFError` at an end of file on an empty
    line. Returned as ``(buffer, size)``: the line is ``buffer[:size]``, and the caller
    wipes ``buffer`` (:func:`_wipe`) once it has the answer.

    The bytes are read into that one bytearray (``readv``: no ``bytes`` per read), never
    copied elsewhere: on every way out but the line's (a stop, an error), it is zeroed
    here, so a partial answer does not stay in this frame, which a traceback keeps; a
    buffer outgrown is zeroed before it is let go."""
    import select  # noqa: PLC0415

    line = bytearray(LINE_START)
    size = 0
    try:
        while not (size and line[size - 1] == NEWLINE):
            _wait(fd, select.POLLIN, wake, prompt)
            if size == len(line):
                bigger = bytearray(2 * size)
                bigger[:size] = line
                _wipe(line)
                line = bigger
            try:
                with memoryview(line) as free:
                    got = os.readv(fd, [free[size:]])  # canonical mode: up to Enter
            except BlockingIOError:
                continue
            if not got:
                if not size:
                    raise EOFError  # as getpass: ^D on an empty line
                break
            size += got
    except BaseException:
        _wipe(line)
        raise
    return line, size


def _wipe(buffer: bytearray) -> None:
    """Every byte of ``buffer`` zero, in place."""
    buffer[:] = bytes(len(buffer))


def _write_soon(fd: int, data: bytes) -> None:
    """``data`` on ``fd`` (non-blocking) if it can go at once; else dropped."""
    with contextlib.suppress(BlockingIOError):
        os.write(fd, data)


def _terminal_mode(terminal: str) -> tuple[int, list[Any]] | None:
    """``terminal``'s mode (what getpass changes and puts back), or None."""
    fd = _open_terminal(terminal)
    if fd is None:
        return None
    import termios  # noqa: PLC0415  (a question on a terminal only)

    try:
        return fd, termios.tcgetattr(fd)
    except (OSError, termios.error):
        os.close(fd)
        return None


def _release_terminal(terminal: tuple[int, list[Any]] | None, *, restore: bool) -> None:
    """With ``restore``, put back the mode an abandoned getpass left (echo off) and end its
    prompt's line; never blocking (the terminal was opened non-blocking; its output may
    be stopped, ^S)."""
    if terminal is None:
        return
    fd, mode = terminal
    if restore:
        import termios  # noqa: PLC0415

        with contextlib.suppress(OSError, termios.error):
            _set_mode(fd, mode)
            _write_soon(fd, b"\n")
    os.close(fd)


def preload_modules(backend: str | None) -> None:
    """Import now what the link and the resolver would import lazily later: the link
    ``backend``'s module (``None``: no tunnel), the IDNA codec, json and the status
    contract (the control socket's first request), a UDP forward's code (a reload may add
    one) and the resolver's slow path (:mod:`blitzdns.dns.wire` with dnslib: a daemon that
    keeps its privileges loads these when it first needs them, most never do).

    After the switch to the target user, the interpreter's own files may be unreadable
    (a Python under /root/.pyenv, mode 0700): a lazy import would then fail mid-connect
    and look like an SSH error. The link module is the one lazy import of the connect
    path (:func:`tunnel.backends.open_link`); asyncssh imports all of its own modules at
    its import (none later on a client's path). Walking every asyncssh module instead, as
    this did, missed the link module and loaded ~2 MB the daemon never uses
    (``asyncssh.agent_win32``, ``email``, ``cryptography.x509`` for an X.509 module that
    cannot load without PyOpenSSL).
    """
    import encodings.idna  # noqa: F401, PLC0415  (socket.getaddrinfo of a name)
    import json  # noqa: F401, PLC0415  (the control socket's first request; a record)

    import blitzdns.dns.wire  # noqa: PLC0415  (the resolver's slow path)
    import blitzdns.snapshot  # noqa: PLC0415  (the first status request)

    if backend is not None:
        # A UDP forward's code and the notify step: loaded with the first such forward
        # (tunnel.tunnel.udp_mouth, to_tunnel_forwards), which a reload may add.
        import blitzdns.blitzmail.atp  # noqa: F401, PLC0415
        import tunnel.udp_mouth  # noqa: PLC0415
    if backend == "openssh":
        import tunnel.backends.openssh.link  # noqa: PLC0415  (deliberate: the preload)
    elif backend is not None:
        import tunnel.backends.asyncssh_link  # noqa: F401, PLC0415  (asyncssh, via sshlib)


def run_parser() -> argparse.ArgumentParser:
    """``blitzdns run``'s flags: the one definition (the typer app only points here)."""
    parser = OneLineErrors(
        prog="blitzdns run",
        description="Start the DNS stub and the SSH tunnel and keep them running.",
        add_help=False,
    )
    add = parser.add_argument
    add(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="Config file (default: ~/.config/blitzdns/config.toml).",
    )
    add(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="Where the stub listens (repeatable; default 127.0.0.1:53).",
    )
    add(
        "--upstream",
        action="append",
        default=[],
        metavar="ADDR[:PORT]",
        help="Upstream resolver for other names (repeatable; default: from the system).",
    )
    add(
        "--gateway",
        action="append",
        default=[],
        metavar="[USER@]HOST[:PORT]",
        help="SSH gateway (repeatable, tried in order; ~/.ssh/config applies).",
    )
    add("--no-tunnel", action="store_true", help="Run the resolver only.")
    add(
        "--trust-new-host-key",
        action="store_true",
        help="Accept and record an unknown gateway host key (trust on first use, by choice).",
    )
    add("--user", metavar="USER", help="Drop to USER after binding (default: SUDO_USER).")
    add(
        "--location",
        metavar="LOCATION",
        help="Apply this location's overrides ('auto': detect and follow).",
    )
    add("--control-socket", type=Path, metavar="PATH", help="Path of the status socket.")
    add(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="PATH",
        help="The install records (resolver config, guard) are under this directory.",
    )
    add(
        "-v",
        "--verbose",
        action="store_true",
        help="Log every query, as dnsmasq does (query[A] NAME from ADDR, reply NAME is …).",
    )
    add(
        "--log-format",
        choices=FORMATS,
        default="auto",
        help="plain: time-stamped lines; journal: <priority> prefixes for journald "
        "(auto: journal when stderr is the journal, else plain).",
    )
    add("-h", "--help", action="help", help="Show this message and exit.")
    return parser


def run_main(argv: list[str]) -> int:
    """``blitzdns run ARGS``: parse, load the config, run until stopped; the exit status."""
    args = run_parser().parse_args(argv)
    # Found once, before any privilege drop: a reload must read the same file even when
    # HOME has changed to the target user's by then.
    config_path = find_config_file(args.config)
    config = load_config(config_path, search=False)
    fixed = args.location if args.location != "auto" else None
    options = RunOptions(
        config_path=config_path,
        no_tunnel=args.no_tunnel,
        user=args.user,
        auto_location=args.location == "auto",
        location=fixed,
        control_socket=args.control_socket,
        verbose=args.verbose,
        log_format=args.log_format,
        flag_listen=tuple(args.listen),
        flag_upstreams=tuple(args.upstream),
        flag_gateways=tuple(args.gateway),
        trust_new_host_key=args.trust_new_host_key,
        root=args.root,
    )
    layered(config, fixed, options.flags)  # a bad --location or flag: refused before start
    try:
        return run_daemon(config, dataclasses.replace(options, connect_early=True))
    finally:
        early.discard()  # a start that never reached the link's first attempt


def connect_early(config: Config) -> None:
    """Start the TCP connect to the first gateway now, when it is an IP address and the
    link is asyncssh's: the gateway's sshd then starts its side of the connection while
    this process is still loading asyncssh (:mod:`tunnel.early`; asyncssh uses the socket
    only where ``~/.ssh/config`` leaves that address and port as they are). Its own port
    is none of the stub's: every start has bound them before this (:meth:`Daemon.start`).
    A gateway that does not parse is left for the tunnel to report, as always."""
    if config.tunnel.backend != "asyncssh" or not config.tunnel.gateways:
        return
    try:
        gateway = Gateway.parse(config.tunnel.gateways[0])
    except Exception:
        return
    early.connect_early(gateway.host, gateway.port)


def run_daemon(config: Config, options: RunOptions) -> int:
    """Run until stopped; the exit status for the CLI. Typed errors propagate to the CLI."""
    setup_logging(options.verbose, options.log_format)
    install_fast_loop()
    raise_fd_limit()
    daemon = Daemon(config, options)
    return asyncio.run(daemon.main())


def to_tunnel_forwards(config: Config) -> tuple[Any, ...]:
    """The config's forward specs as :class:`tunnel.Forward` values (a
    :class:`tunnel.UdpForward`, with its limits and protocol step, for a UDP service)."""
    result: list[Any] = []
    for f in config.forwards():
        common: dict[str, Any] = {
            "mouth_host": f.mouth,
            "mouth_port": f.port,
            "target_host": f.remote,
            "target_port": f.remote_port,
            "allowed_peers": f.allowed_peers,
            "name": f"{f.host}/{f.service}",
        }
        if f.proto == "tcp":
            result.append(Forward(**common))
            continue
        service = config.services[f.service]
        limits = RelayLimits(max_datagram=service.max_datagram, idle_s=service.idle_s)
        step = None
        if service.step == "notify":
            # The notify preset's step (BlitzMail's protocol): loaded for such a service
            # only (~0.7 ms of every start otherwise); before a privilege drop by
            # preload_modules.
            from blitzdns.blitzmail.atp import NotifyStep  # noqa: PLC0415

            step = NotifyStep()
        result.append(UdpForward(**common, limits=limits, step=step))
    return tuple(result)


def to_gateways(config: Config) -> tuple[Any, ...]:
    return tuple(Gateway.parse(g) for g in config.tunnel.gateways)


class Daemon:
    """One running resolver + tunnel, with its reload and stop logic."""

    def __init__(self, config: Config, options: RunOptions):
        #: The file (or preset) as loaded: what reloads re-read and ``--location auto``
        #: matches against. What runs is :meth:`_located` of it, set by :meth:`start`.
        self.base_config = config
        self.config = config
        self.options = options
        self.resolver: Resolver | None = None
        self.tunnel: Tunnel | None = None
        self.control: ControlServer | None = None
        self.guard: GuardService | None = None
        self.upstreams: tuple[Endpoint, ...] = ()
        self.started = time.time()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self.ready_sent = False
        #: Whether start() is over (a link-first start: the link may come up before).
        self._started = True
        #: Whether the link's first attempt has ended (up, down or failed).
        self._first_attempt_over = False
        self._attempt_over = asyncio.Event()
        self.secrets: TerminalSecrets | None = None
        #: A link-first start's stub sockets, until the resolver takes them.
        self._listeners: list[Listener] | None = None
        #: The error the last "link down" log line named (a repeat is only counted).
        self._down_error: str | None = None

    # ------------------------------------------------------------------ start

    async def main(self) -> int:
        # Handlers first: start() may say READY=1, and systemd may send SIGHUP (or SIGTERM)
        # the moment it reads that; with the default action the daemon would just die.
        # A signal during start() is acted on once it returns (it only binds; it never
        # waits for the link: a link-first start waits for its connect to begin for
        # LINK_CONNECT_WAIT_S at most, and not at all once stopping).
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        tasks = [asyncio.create_task(self._reload_loop(), name="reload")]
        if self.options.auto_location:
            tasks.append(asyncio.create_task(self._location_loop(), name="location"))
        status = 0
        try:
            await self.stopping.wait()
            state = self.tunnel.state if self.tunnel else None
            if state is not None and state.final_error:
                status = 1
        finally:
            log.info("stopping")
            sdnotify.notify(stopping=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()
            log.info("stopped")
        return status

    async def start(self) -> None:
        self.config = config = await self._located(self.base_config)
        source = self.options.config_path
        log.info("config %s", source or f"none found: the built-in {config.preset!r} preset")
        for note in notes(config):
            log.warning("%s", note)
        if not self.options.no_tunnel and not config.tunnel.gateways:
            raise UsageError(
                "no SSH gateway configured: pass --gateway [user@]host, set tunnel.gateways "
                "in the config, or run the resolver alone with --no-tunnel"
            )
        ports = [e.port for e in config.dns.listen]
        if not self.options.no_tunnel:
            ports += [f.port for f in config.forwards()]
        needed = privileges.privileged_ports(ports)
        if needed and not privileges.can_bind_privileged(min(needed)):
            raise PermissionProblem(privileges.explain_privileged(needed))

        self.upstreams = self._upstreams(config)
        user = privileges.target_user(self.options.user) if self.options.drop_privileges else None
        dropping = user is not None and os.geteuid() == 0
        # `run` without a privilege drop starts its link before the resolver's code is even
        # loaded: the link's handshake then waits for sshd (its key exchange, its answer to
        # the signed key) while this start loads and starts the DNS side (its sockets bound
        # before the link starts), instead of after it (bench/notes/startup.md, session 9).
        # READY waits for both. With a drop,
        # everything binds and loads as root first, and the link starts after the drop.
        link_first = self.options.connect_early and not self.options.no_tunnel and not dropping
        self._started = not link_first
        if not link_first:
            await self._bind_resolver(config)
        else:
            # Bound before the link makes any connection (the early one, a gateway given
            # by name, a second gateway, a reconnect): none can get one of their ports as
            # its own. Only the sockets: the resolver's code loads in the link's waits.
            self._listeners = bind_listeners(config)
        if not self.options.no_tunnel:
            self.tunnel = self._make_tunnel(config)
            await self.tunnel.bind()
            if self.options.connect_early:
                # After the mouths' binds and the stub's (either branch above): the
                # connection's ephemeral port can be none of theirs.
                # Before the link's code loads (preload or tunnel.start), so sshd's start
                # overlaps that.
                connect_early(config)
        if link_first:
            await self._start_tunnel(config)
            await self._load_stub_beside_the_link()
            listeners, self._listeners = self._listeners, None
            await self._bind_resolver(config, listeners)
        from blitzdns.control import ControlServer, default_socket_path  # noqa: PLC0415

        path = self.options.control_socket or default_socket_path()
        self.control = ControlServer(
            path, self.snapshot, reload=self.reload, owner_uid=user.pw_uid if user else None
        )
        await self.control.start()
        # [guard]: installed now, as root; refreshed later through the warden (issue 14).
        if config.guard.enabled or resolver_installed(self.options.root):
            # The guard's machinery (rules, nft, the warden) loads only where it has work.
            from blitzdns.guard_service import start_guard  # noqa: PLC0415

            self.guard = await start_guard(
                config, self.upstreams, self.options.root, dropping=dropping
            )
        if user is not None and dropping:
            preload_modules(None if self.tunnel is None else config.tunnel.backend)
            classcode.finish()  # written while the bytecode cache is still writable
            nosftp.finish()
            privileges.drop_privileges(user)
            log.info("running as %s (kept CAP_NET_BIND_SERVICE only)", user.pw_name)

        assert self.resolver is not None
        await self.resolver.start()  # logs what it listens on, its upstreams, its names
        if self.tunnel is not None and not link_first:
            self._started = True
            await self._start_tunnel(config)
        elif self.tunnel is None:
            self.ready_sent = True
            sdnotify.notify(ready=True, status="resolver only (--no-tunnel)")
            end_of_start()
        if self.guard is not None:
            self.guard.start()
        if link_first:
            self._started = True
            self._after_start()

    async def _load_stub_beside_the_link(self) -> None:
        """Load the stub's modules (:data:`STUB_MODULES`) in the link's waits for the
        gateway: once the link's connect has begun (its code loaded, its options read, the
        early connection asked for; or its first attempt over), one module per turn of the
        loop, so that each answer from sshd is handled after at most one module's import
        (~1 ms) rather than after all of them.

        The wait for the connect is bounded (:data:`LINK_CONNECT_WAIT_S`: a key's passphrase
        asked on the terminal holds the connect back) and ends at a stop: the stub then
        starts all the same, and :meth:`main` acts on the stop once the start is over."""
        early_connection = early.pending()
        if early_connection is not None:
            waits = [
                asyncio.ensure_future(early_connection.asked.wait()),
                asyncio.ensure_future(self._attempt_over.wait()),
                asyncio.ensure_future(self.stopping.wait()),
            ]
            try:
                await asyncio.wait(
                    waits, timeout=LINK_CONNECT_WAIT_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for wait in waits:
                    wait.cancel()
        for name in STUB_MODULES:
            await asyncio.sleep(0)
            importlib.import_module(name)

    async def _bind_resolver(self, config: Config, listeners: list[Listener] | None = None) -> None:
        """The resolver, bound (on ``listeners`` when the start bound them already)."""
        try:
            from blitzdns.dns.server import Resolver  # noqa: PLC0415  (see start: link first)

            self.resolver = Resolver(config, self.upstreams, log=log, verbose=self.options.verbose)
        except BaseException:
            close_listeners(listeners or [])
            raise
        await self.resolver.bind(listeners)

    async def _start_tunnel(self, config: Config) -> None:
        assert self.tunnel is not None
        self.tunnel.on_state_change(self._on_link_change)
        await self.tunnel.start()
        log.info(
            "%d forwards listening; connecting to %s",
            len(config.forwards()),
            ", ".join(config.tunnel.gateways),
        )

    def _after_start(self) -> None:
        """A link-first start is over: what the link's callback left for then (the end of
        the start's imports, READY once the link is up and the stub serves)."""
        if self._first_attempt_over:
            end_of_start()
        state = self.tunnel.state if self.tunnel is not None else None
        if (
            state is not None
            and state.status == LinkStatus.UP
            and not self.ready_sent
            and not self.stopping.is_set()
        ):
            self.ready_sent = True
            sdnotify.notify(ready=True, status=f"link up via {state.gateway}")

    def _upstreams(self, config: Config) -> tuple[Endpoint, ...]:
        if config.dns.upstreams:
            return config.dns.upstreams
        try:
            saved = tuple(Endpoint.parse(text) for text in saved_upstreams(self.options.root))
        except ValueError as exc:
            raise ConfigError(
                f"the resolver install record's saved upstreams: {exc}; set [dns] upstreams"
            ) from None
        return tuple(detect_upstreams(config.dns.listen, saved=saved))

    def _make_tunnel(self, config: Config) -> Tunnel:
        # asyncssh (0.2 s) is loaded only when a tunnel runs: never with --no-tunnel.
        from tunnel import Tunnel  # noqa: PLC0415

        options = TunnelOptions(
            gateways=to_gateways(config),
            known_hosts=config.tunnel.known_hosts,
            ssh_config=config.tunnel.ssh_config,
            client_keys=config.tunnel.identity_files or None,
            trust_new_host_key=config.tunnel.trust_new_host_key,
            keepalive_s=config.tunnel.keepalive_s,
            wait_for_link_s=config.tunnel.wait_for_link_s,
            allow_non_loopback=bool(config.shared),
            backend=config.tunnel.backend,
            **(self._terminal_prompts() if config.tunnel.backend == "asyncssh" else {}),
        )
        return Tunnel(options, to_tunnel_forwards(config))

    def _terminal_prompts(self) -> dict[str, Any]:
        if not sys.stdin.isatty():
            return {}
        if self.secrets is None:
            self.secrets = TerminalSecrets()
        return {"password_prompt": self.secrets.password, "passphrase": self.secrets.passphrase}

    def _on_link_change(self, state: TunnelState) -> None:
        line = link_event(state, self._down_error, time.time())
        if line is not None:
            log.log(*line)
        if state.status in (LinkStatus.UP, LinkStatus.DOWN, LinkStatus.FAILED):
            self._first_attempt_over = True
            self._attempt_over.set()
            if self._started:
                end_of_start()  # the first attempt has ended: its imports are done
        if state.status in (LinkStatus.UP, LinkStatus.DOWN):
            self._down_error = state.last_error if state.status == LinkStatus.DOWN else None
        if state.status == LinkStatus.UP:
            if not self._started:
                pass  # a link-first start says READY once the stub serves (_after_start)
            elif not self.ready_sent and not self.stopping.is_set():
                self.ready_sent = True
                sdnotify.notify(ready=True, status=f"link up via {state.gateway}")
            else:
                sdnotify.notify(status=f"link up via {state.gateway}")
        elif state.status == LinkStatus.FAILED:
            # The supervisor has logged the final error already: once is enough.
            sdnotify.notify(status=f"failed: {state.final_error}")
            self.stopping.set()
        elif state.status == LinkStatus.DOWN:
            sdnotify.notify(status=f"link down: {state.last_error}")
        elif state.status == LinkStatus.CONNECTING:
            sdnotify.notify(status=f"link connecting to {state.gateway}")

    # ------------------------------------------------------------------ reload

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self.reload()

    async def reload(self, *, relocate: bool = False) -> bool:
        """Re-read the config file, or with ``relocate`` only re-match the location against
        the config last read; apply the result. On any error keep the old one, log why.

        SIGHUP, the control socket and the location poll may ask at once: one reload at a
        time, or the tunnel and the stub could end on different configurations. What to
        apply is worked out inside the lock, from the config as it is then: a location
        change found just before a file reload must not bring back the file's old text.
        """
        async with self.reload_lock:
            # sd_notify(3): RELOADING=1 while it runs, READY=1 again once done (only once
            # the service has said it is ready at all).
            announce = self.ready_sent
            if announce:
                sdnotify.notify(reloading=True)
            try:
                return await self._reload(relocate)
            finally:
                # Not after STOPPING=1: a stop cancels a reload in flight.
                if announce and not self.stopping.is_set():
                    sdnotify.notify(ready=True)

    async def _reload(self, relocate: bool) -> bool:
        try:
            path = self.options.config_path
            base = self.base_config if relocate else load_config(path, search=False)
            new = await self._located(base)
            await self.apply(new)
            self.base_config = base
        except Exception as exc:
            told = explain(exc)
            if told is None:
                raise
            log.error("reload failed, keeping the running configuration: %s", told.line)
            return False
        return True

    async def apply(self, new: Config) -> None:
        """Swap to ``new``: mouths first for added hosts, names last; then the rest.

        Whatever can refuse the new config (finding its upstreams) is done before anything
        changes, so a refused reload leaves the running one whole. The resolver itself says
        when its listen addresses changed (they take effect at the next restart).
        """
        old = self.config
        upstreams = self._upstreams(new) if new.dns.upstreams != old.dns.upstreams else None
        fixed = [
            f"tunnel.{f.name}"
            for f in dataclasses.fields(new.tunnel)
            if f.name not in LIVE_TUNNEL_SETTINGS
            and getattr(new.tunnel, f.name) != getattr(old.tunnel, f.name)
        ] + [
            f"guard.{name}"
            for name in RESTART_GUARD_SETTINGS
            if getattr(new.guard, name) != getattr(old.guard, name)
        ]
        if fixed:
            log.warning("%s changed; it takes effect at the next restart", ", ".join(fixed))
        if self.tunnel is not None:
            await self.tunnel.update_forwards(to_tunnel_forwards(new))
            if new.tunnel.gateways != old.tunnel.gateways:
                await self.tunnel.update_gateways(to_gateways(new))
        assert self.resolver is not None
        self.resolver.update(new, upstreams=upstreams)
        if upstreams is not None:
            self.upstreams = upstreams
        self.config = new
        if self.guard is not None:
            self.guard.update(new, self.upstreams)
        added = {h.key for h in new.hosts} - {h.key for h in old.hosts}
        removed = {h.key for h in old.hosts} - {h.key for h in new.hosts}
        log.info(
            "reloaded%s: %d hosts (added: %s; removed: %s)",
            f" (location {new.location})" if new.location else "",
            len(new.hosts),
            ", ".join(sorted(added)) or "none",
            ", ".join(sorted(removed)) or "none",
        )

    # ------------------------------------------------------------------ locations

    async def _located(self, base: Config) -> Config:
        """``base`` at the location named on the command line (or with ``auto_location``
        the one this network matches now), the flags on top: :func:`~blitzdns.effective.layered`."""
        if not self.options.auto_location:
            return layered(base, self.options.location, self.options.flags)
        return layered(base, await self._detect(base), self.options.flags)

    async def _detect(self, base: Config) -> str | None:
        # Only --location auto reads the network. First called from start(), before the
        # privilege drop, as every lazy import here must be (see preload_modules).
        from blitzdns.system import locations, netfacts  # noqa: PLC0415

        facts = await asyncio.get_running_loop().run_in_executor(None, netfacts.read_facts)
        match = locations.match_location(base, facts)
        if match is None:
            if base.locations:
                log.info("no location matches this network; using the base configuration")
            return None
        log.info("location %s: %s", match.name, "; ".join(match.reasons))
        return match.name

    async def _location_loop(self) -> None:
        """Match the location again on every network change the tunnel's watch reports
        (addresses, routes, a resume), and every ``location_poll_s`` without one: at least
        every ``LOCATION_EVENTS_POLL_S`` for what no event tells (the Wi-Fi name, search
        domains)."""
        moved = asyncio.Event()
        interval = self.options.location_poll_s
        if self.tunnel is not None and self.tunnel.on_network_change(lambda _: moved.set()):
            interval = max(interval, LOCATION_EVENTS_POLL_S)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await moved.wait()
            moved.clear()
            try:
                location = await self._detect(self.base_config)
            except BlitzdnsError as exc:
                log.error("location check failed: %s", exc)
                continue
            if location != self.config.location:
                log.info(
                    "network changed: location %s → %s",
                    self.config.location or "(none)",
                    location or "(none)",
                )
                await self.reload(relocate=True)

    # ------------------------------------------------------------------ status, stop

    def snapshot(self) -> Snapshot:
        """The daemon's state for ``blitzdns status`` (the contract: :mod:`blitzdns.snapshot`,
        loaded at the first status request: its TypedDicts cost ~1 % of the start's
        instructions and nothing reads them before; preloaded before a privilege drop)."""
        from blitzdns.snapshot import snapshot  # noqa: PLC0415  (see above)

        resolver = self.resolver
        return snapshot(
            started=self.started,
            location=self.config.location,
            config=str(path.absolute()) if (path := self.options.config_path) else None,
            tunnel=self.tunnel.state if self.tunnel is not None else None,
            stats=resolver.stats if resolver is not None else ResolverStats(),
            listen=resolver.bound_endpoints if resolver is not None else (),
            guard=self.guard.to_dict() if self.guard is not None else None,
        )

    async def close(self) -> None:
        """Close everything within the stop budget, in reverse order of start. What fails
        to close (an error, or the budget running out) is logged, and the rest is still
        closed."""
        if self.secrets is not None:
            self.secrets.cancel()  # a question still on the terminal would hold the exit
        closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.guard is not None:
            # Its rules stay in force: fail closed.
            closers.append(("the guard", self.guard.close))
        if self.control is not None:
            closers.append(("the control socket", self.control.close))
        if self.tunnel is not None:
            closers.append(("the tunnel", self.tunnel.close))
        if self.resolver is not None:
            closers.append(("the resolver", self.resolver.close))
        deadline = time.monotonic() + STOP_GRACE_S
        for what, close in closers:
            remaining = max(deadline - time.monotonic(), 0.05)
            try:
                await asyncio.wait_for(close(), remaining)
            except TimeoutError:
                log.warning("closing %s took longer than %.2f s; left it", what, remaining)
            except Exception as exc:
                told = explain(exc)
                if told is None:
                    log.exception("closing %s failed", what)
                else:
                    log.warning("closing %s failed: %s", what, told.line)
        self.control = self.tunnel = self.resolver = None
        self.guard = None
        if self._listeners is not None:  # a start that failed before the resolver took them
            close_listeners(self._listeners)
            self._listeners = None
