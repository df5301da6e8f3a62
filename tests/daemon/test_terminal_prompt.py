"""A passphrase-protected key: `run` on a terminal asks once, and a reconnect does not ask again."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.peers import Sshd, dig_short, free_port, wait_for

from .conftest import BLITZDNS
from .test_run_end_to_end import config_text


def read_until(
    fd: int, needle: bytes, timeout_s: float = 20, *, also: tuple[bytes, ...] = ()
) -> bytes:
    """What the terminal shows until ``needle`` (and each of ``also``, in any order) has
    appeared, or ``timeout_s`` has passed."""
    needles = (needle, *also)
    seen = b""
    deadline = time.monotonic() + timeout_s
    while not all(n in seen for n in needles) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_passphrase_is_asked_once_on_the_terminal(sshd: Sshd, tmp_path: Path) -> None:
    key = tmp_path / "locked_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame", "-f", str(key)], check=True
    )
    sshd.authorize(key.with_suffix(".pub"))
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    (tmp_path / "ssh_config").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
preset = "none"
[dns]
listen = ["127.0.0.1:{free_port()}"]
upstreams = ["127.0.0.1:9"]
[tunnel]
gateways = ["{sshd.user}@127.0.0.1:{sshd.port}"]
known_hosts = "{known}"
identity_files = ["{key}"]
ssh_config = "{tmp_path / "ssh_config"}"
keepalive_s = 1
"""
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "SSH_AUTH_SOCK")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: blitzdns on a terminal
        os.execve(
            BLITZDNS,
            [BLITZDNS, "run", "--config", str(config), "--control-socket", str(tmp_path / "c")],
            env,
        )
    try:
        assert b"Enter passphrase for key" in read_until(fd, b"Enter passphrase for key")
        os.write(fd, b"open sesame\n")
        assert b"link up" in read_until(fd, b"link up")
        sshd.kill()
        sshd.start()
        after = read_until(fd, b"link up")
        assert b"link up" in after
        assert b"passphrase" not in after
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(fd)


def test_a_stop_at_the_passphrase_prompt_ends_the_daemon(sshd: Sshd, tmp_path: Path) -> None:
    """A key's passphrase asked on the terminal and never answered (asyncssh 2.24 asks when
    it first signs with the key, after the connect): the stub serves meanwhile, and SIGTERM
    at the prompt ends the daemon, status 0, with the terminal's echo put back. (The
    question's thread would otherwise hold the loop's end, which waits for asyncssh's
    executor thread, until the user pressed Enter.)"""
    key = tmp_path / "locked_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame", "-f", str(key)], check=True
    )
    sshd.authorize(key.with_suffix(".pub"))
    dns_port = free_port()
    text = config_text(sshd, tmp_path, dns_port, free_port(), ["a"])
    config = tmp_path / "config.toml"
    config.write_text(text.replace(str(sshd.client_key), str(key)))
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "SSH_AUTH_SOCK")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: blitzdns on a terminal
        os.execve(
            BLITZDNS,
            [BLITZDNS, "run", "--config", str(config), "--control-socket", str(tmp_path / "c")],
            env,
        )
    exited: list[int] = []
    try:
        # The stub's line and the question, in whichever order they come (the question
        # waits for the key exchange and the first signature, the stub for its modules).
        seen = read_until(fd, b"DNS stub listening", also=(b"Enter passphrase for key",))
        assert b"Enter passphrase for key" in seen
        assert b"DNS stub listening" in seen
        before_stub = seen.split(b"DNS stub listening")[0]
        assert b"link down" not in before_stub
        assert b"link up" not in before_stub
        answers = wait_for(
            lambda: dig_short(dns_port, "a.example.test") or None, lambda: "the stub's answer", 30
        )
        assert answers[0].startswith("127.79.0.")
        os.kill(pid, signal.SIGTERM)

        shown: list[bytes] = [seen]

        def ended() -> tuple[int] | None:
            shown.append(read_until(fd, b"\0", timeout_s=0.2))  # keep the terminal drained
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exited.append(status)
                return (status,)
            return None

        (status,) = wait_for(ended, lambda: "the daemon to end after SIGTERM", 20)
        assert os.waitstatus_to_exitcode(status) == 0
        assert termios.tcgetattr(fd)[3] & termios.ECHO
        everything = b"".join(shown)
        assert b"Traceback" not in everything  # the cancelled question is a quiet stop
        assert b"unexpected error" not in everything
    finally:
        if not exited:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def into(got: list[object], call: Callable[[], object]) -> Callable[[], None]:
    """A thread's target: ``call``'s outcome (its answer, or what it raised) put in ``got``."""

    def run() -> None:
        try:
            got.append(call())
        except BaseException as exc:
            got.append(exc)

    return run


def waiting_ask(asked: list[str], until: threading.Event, answer: str) -> Callable[[str], str]:
    """An injected ask that records its prompt, then answers once ``until`` is set (or
    after 20 s, a bound)."""

    def ask(prompt: str) -> str:
        asked.append(prompt)
        until.wait(20)
        return answer

    return ask


def at_once(
    asking: Callable[[], object], on_terminal: Callable[[], object], then: Callable[[], None]
) -> None:
    """``asking`` from two threads at once; once ``on_terminal`` holds, ``then``; both
    threads waited for."""
    askers = [threading.Thread(target=asking) for _ in "ab"]
    for asker in askers:
        asker.start()
    wait_for(on_terminal, lambda: "the question on the terminal", 10)
    then()
    for asker in askers:
        asker.join(10)


def test_the_same_question_asked_twice_at_once_is_put_once() -> None:
    """A reconnect after an attempt timed out at the prompt asks the same question again:
    the second asker waits for the first one's answer (one getpass on the terminal, its
    mode saved once), and a cancel then ends both."""
    from blitzdns.daemon import AskCancelled, TerminalSecrets

    asked: list[str] = []
    release = threading.Event()

    secrets = TerminalSecrets(waiting_ask(asked, release, "open sesame"))
    answers: list[str] = []
    at_once(
        lambda: answers.append(secrets.passphrase("k")),
        lambda: asked or None,
        release.set,
    )
    assert answers == ["open sesame", "open sesame"]
    assert asked == ["Enter passphrase for key 'k': "]

    never = threading.Event()

    held = TerminalSecrets(waiting_ask(asked, never, "too late"))
    failures: list[object] = []
    at_once(
        into(failures, lambda: held.passphrase("other")),
        lambda: len(asked) == 2 or None,
        held.cancel,
    )
    never.set()  # the abandoned getpass thread ends
    assert len(asked) == 2  # once more, not twice
    assert [type(failure) for failure in failures] == [AskCancelled, AskCancelled]


def asked_on_a_pty(
    then: Callable[[int, Any], None], *, terminal: str | None = None, fillers: int = 0
) -> tuple[list[object], int]:
    """A question put by TerminalSecrets on a pty of its own (or on ``terminal``);
    ``then(master, secrets)`` once it shows. What the asker got (an answer or an
    exception) and the pty's local modes after, once the asker is over; no thread of the
    question's is left (asserted). ``fillers``: that many fds held open meanwhile, opened
    after the pty's (so that the question's own fds come above them)."""
    from blitzdns.daemon import TerminalSecrets

    master, slave = pty.openpty()
    held: list[int] = []
    try:
        held.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(fillers))
        secrets = TerminalSecrets(terminal=terminal or os.ttyname(slave))
        got: list[object] = []

        before = set(threading.enumerate())
        thread = threading.Thread(target=into(got, lambda: secrets.passphrase("k")))
        thread.start()
        assert b"Enter passphrase for key 'k': " in read_until(master, b"for key 'k': ")
        assert not termios.tcgetattr(slave)[3] & termios.ECHO  # typing is not shown
        then(master, secrets)
        thread.join(20)
        assert not thread.is_alive()
        left = [t for t in threading.enumerate() if t not in before]
        assert left == [], left  # the reader ended, joined by its asker
        return got, termios.tcgetattr(slave)[3]
    finally:
        for fd in held:
            os.close(fd)
        os.close(master)
        os.close(slave)


def test_a_cancel_ends_the_reader_of_the_terminal() -> None:
    """A stop at the prompt (cancel) ends the thread reading the terminal, not only its
    asker: none is left behind reading it, and the echo is back (review of session 9:
    getpass's thread was abandoned, still reading)."""
    from blitzdns.daemon import AskCancelled

    got, modes = asked_on_a_pty(lambda _, secrets: secrets.cancel())
    assert [type(g) for g in got] == [AskCancelled]
    assert modes & termios.ECHO


def test_an_answer_on_the_terminal_is_read_as_getpass_reads_it() -> None:
    got, modes = asked_on_a_pty(lambda master, _: os.write(master, b"open sesame\n") and None)
    assert got == ["open sesame"]
    assert modes & termios.ECHO


def drained(master: int, threads: list[threading.Thread]) -> list[threading.Thread]:
    """``threads`` joined while the terminal's output is read (so no write stays blocked),
    for at most 20 s: those still alive then (the caller fails on them, not hangs)."""
    deadline = time.monotonic() + 20
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline:
            read_until(master, b"\0", timeout_s=0.2)
            t.join(0.2)
    return [t for t in threads if t.is_alive()]


def test_a_question_on_a_terminal_above_fd_1023() -> None:
    """A busy daemon (its fd limit raised to 65536) asking at run time (a reconnect's
    passphrase) can open the terminal above fd 1023: the reader still reads it (it
    waited in select.select, whose fd limit is 1024: ValueError)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048
    if hard < wanted:
        pytest.skip(f"the test needs an fd limit of {wanted} (hard limit {hard})")
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        got, modes = asked_on_a_pty(
            lambda master, _: os.write(master, b"open sesame\n") and None, fillers=1100
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert got == ["open sesame"]
    assert modes & termios.ECHO


def test_a_stop_at_a_terminal_whose_output_is_stopped() -> None:
    """Output stopped (^S) while asking: the prompt cannot be written, yet a stop (cancel)
    ends the reader and its asker at once, the echo put back, nothing left blocked on the
    terminal (the reader blocked in its prompt's write and never saw the cancel; the
    asker's own putting back then blocked in its newline's write)."""
    from blitzdns.daemon import ASK_JOIN_S, AskCancelled, TerminalSecrets

    master, slave = pty.openpty()
    probe = os.open(os.ttyname(slave), os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    got: list[object] = []
    threads: list[threading.Thread] = []
    try:
        os.write(master, b"\x13")  # ^S: the terminal's output stops

        def stopped() -> bool | None:
            try:
                os.write(probe, b".")  # shown while output still flows; refused once stopped
            except BlockingIOError:
                return True
            return None

        wait_for(stopped, lambda: "the terminal's output to stop", 10)
        secrets = TerminalSecrets(terminal=os.ttyname(slave))

        before = set(threading.enumerate())
        thread = threading.Thread(target=into(got, lambda: secrets.passphrase("k")))
        threads.append(thread)
        thread.start()
        wait_for(
            lambda: [t for t in threading.enumerate() if t.name == "blitzdns-ask"] or None,
            lambda: "the terminal's reader",
            10,
        )
        threads.extend(t for t in threading.enumerate() if t.name == "blitzdns-ask")
        wait_for(
            lambda: not termios.tcgetattr(slave)[3] & termios.ECHO or None,
            lambda: "the echo off",
            10,
        )
        secrets.cancel()
        wait_for(lambda: got or None, lambda: "the asker to end", ASK_JOIN_S + 1)
        assert [type(g) for g in got] == [AskCancelled]
        assert termios.tcgetattr(slave)[3] & termios.ECHO
        left = [t for t in threading.enumerate() if t not in before and t is not thread]
        assert left == [], left  # the reader ended by itself, not abandoned
    finally:
        os.write(master, b"\x11")  # ^Q: output again, so that nothing stays blocked
        stuck = drained(master, threads)
        os.close(probe)
        os.close(master)
        os.close(slave)
    assert stuck == [], stuck  # a thread still blocked: fail rather than hang


def test_an_end_of_file_after_a_partial_line_gives_that_line() -> None:
    """'abc' then ^D ^D: getpass returns 'abc' (its readline's line without a newline)."""
    got, _ = asked_on_a_pty(lambda master, _: os.write(master, b"abc\x04\x04") and None)
    assert got == ["abc"]


def test_an_undecodable_answer_is_an_error_not_an_altered_answer(monkeypatch: Any) -> None:
    """As getpass's terminal stream (strict): bytes the encoding cannot read give an
    error, not an answer with replacement characters that would then be kept. The error
    is a retryable one that carries none of the answer (a UnicodeDecodeError carried a
    byte, its position and the whole answer, and became a final config error)."""
    import locale

    from blitzdns.daemon import AnswerUndecodable

    monkeypatch.setattr(locale, "getpreferredencoding", lambda *_: "utf-8")
    got, modes = asked_on_a_pty(lambda master, _: os.write(master, b"ab\xff\xfe\n") and None)
    assert [type(g) for g in got] == [AnswerUndecodable]
    error = got[0]
    assert isinstance(error, BaseException)
    for shown in (str(error), repr(error)):
        assert "utf-8" in shown or shown.startswith("AnswerUndecodable")
        for leak in ("\xff", "\\xff", "xff", "\xfe", "xfe", "position"):
            assert leak not in shown, shown
    assert error.__context__ is None
    assert error.__cause__ is None
    assert secret_bytes_in_frames(error, b"ab\xff\xfe") == []  # the frames keep no bytes
    assert modes & termios.ECHO


def putting_echo_back_fails(monkeypatch: Any) -> None:
    """The asker thread's tcsetattr that turns echo back on fails as on a hang-up
    (termios.error 5); every other tcsetattr is the real one."""
    real = termios.tcsetattr

    def tcsetattr(fd: int, when: int, mode: Any) -> None:
        if mode[3] & termios.ECHO and threading.current_thread().name == "blitzdns-ask":
            raise termios.error(5, "Input/output error")
        real(fd, when, mode)

    monkeypatch.setattr(termios, "tcsetattr", tcsetattr)


def test_an_error_putting_the_mode_back_after_the_answer_drops_the_answer(
    monkeypatch: Any,
) -> None:
    """The answer read, then the mode cannot be put back (a hang-up, termios.error 5): a
    retryable error that asks again, neither it nor its traceback's frames holding the
    answer (the termios.error's traceback kept the frame that held the line)."""
    from blitzdns.daemon import TerminalModeLost

    putting_echo_back_fails(monkeypatch)
    got, _ = asked_on_a_pty(lambda master, _: os.write(master, b"open sesame\n") and None)
    assert [type(g) for g in got] == [TerminalModeLost]
    error = got[0]
    assert isinstance(error, BaseException)
    assert "sesame" not in str(error) and "\n" not in str(error)
    assert error.__context__ is None
    assert error.__cause__ is None
    assert secret_bytes_in_frames(error, b"open sesame") == []


def test_an_error_writing_the_lines_end_keeps_the_answer(monkeypatch: Any) -> None:
    """The newline after the answer cannot be written (EIO): as on the error path, it
    is dropped; the answer stands and the echo is back."""
    import errno

    real = os.write

    def write(fd: int, data: Any) -> int:
        if data == b"\n" and threading.current_thread().name == "blitzdns-ask":
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    got, modes = asked_on_a_pty(lambda master, _: real(master, b"open sesame\n") and None)
    assert got == ["open sesame"]
    assert modes & termios.ECHO


def test_without_the_terminal_stdins_terminal_is_asked_on(monkeypatch: Any) -> None:
    """No /dev/tty (no controlling terminal) but stdin a terminal: asked there, as getpass
    does, and still a question a stop can end (getpass's own way could not be ended)."""
    import sys

    from blitzdns.daemon import AskCancelled

    class Stdin:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    def on_stdin(master: int, secrets: Any) -> None:
        secrets.cancel()

    real_openpty = pty.openpty

    def openpty() -> tuple[int, int]:
        master, slave = real_openpty()
        monkeypatch.setattr(sys, "stdin", Stdin(slave))
        return master, slave

    monkeypatch.setattr(pty, "openpty", openpty)
    got, modes = asked_on_a_pty(on_stdin, terminal="/nonexistent/tty")
    assert [type(g) for g in got] == [AskCancelled]
    assert modes & termios.ECHO


def test_an_error_putting_the_mode_back_keeps_the_first_one(monkeypatch: Any) -> None:
    """A hang-up during the question fails the putting back of the mode too
    (termios.error 5): the asker gets the first error, here the stop's AskCancelled."""
    from blitzdns.daemon import AskCancelled

    putting_echo_back_fails(monkeypatch)
    got, _ = asked_on_a_pty(lambda _, secrets: secrets.cancel())
    assert [type(g) for g in got] == [AskCancelled]


def test_a_cancel_after_the_last_answer_closes_the_wake_pipe() -> None:
    kept: list[Any] = []

    def answer(master: int, secrets: Any) -> None:
        kept.append(secrets)
        os.write(master, b"open sesame\n")

    got, _ = asked_on_a_pty(answer)
    assert got == ["open sesame"]
    (secrets,) = kept
    wake = secrets._wake
    assert wake is not None  # made at the question, kept for the next one
    secrets.cancel()
    assert secrets._wake is None
    for fd in wake:
        try:
            os.fstat(fd)
        except OSError:
            continue
        raise AssertionError(f"fd {fd} still open")


def test_putting_back_an_abandoned_readers_mode_does_not_block_on_a_stopped_terminal() -> None:
    """The asker's own putting back (for a reader it abandoned) on a terminal whose output
    is stopped (^S): done at once, the echo back (its newline's write blocked for good)."""
    from blitzdns.daemon import _release_terminal, _terminal_mode

    master, slave = pty.openpty()
    threads: list[threading.Thread] = []
    try:
        terminal = _terminal_mode(os.ttyname(slave))
        assert terminal is not None
        quiet = list(terminal[1])
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, quiet)  # as the abandoned reader left it
        os.write(master, b"\x13")  # ^S
        probe = os.open(os.ttyname(slave), os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)

        def stopped() -> bool | None:
            try:
                os.write(probe, b".")
            except BlockingIOError:
                return True
            return None

        try:
            wait_for(stopped, lambda: "the terminal's output to stop", 10)
        finally:
            os.close(probe)
        done = threading.Event()

        def release() -> None:
            _release_terminal(terminal, restore=True)
            done.set()

        threads.append(threading.Thread(target=release))
        threads[0].start()
        wait_for(lambda: done.is_set() or None, lambda: "the mode put back", 10)
        assert termios.tcgetattr(slave)[3] & termios.ECHO
    finally:
        os.write(master, b"\x11")  # ^Q
        stuck = drained(master, threads)
        os.close(master)
        os.close(slave)
    assert stuck == [], stuck  # a thread still blocked: fail rather than hang


def test_an_error_dropping_typed_ahead_input_still_puts_the_echo_back(monkeypatch: Any) -> None:
    """tcflush failing (a hang-up, say) does not skip the tcsetattr that turns echo back on."""
    real = termios.tcflush

    def tcflush(fd: int, queue: int) -> None:
        if threading.current_thread().name == "blitzdns-ask":
            raise termios.error(5, "Input/output error")
        real(fd, queue)

    monkeypatch.setattr(termios, "tcflush", tcflush)
    got, modes = asked_on_a_pty(lambda master, _: os.write(master, b"x\n") and None)
    assert got == ["x"]
    assert modes & termios.ECHO


def test_stdin_on_a_pty_master_is_not_reopened_by_name(monkeypatch: Any) -> None:
    """A pty master's ttyname is /dev/ptmx: opening it would make a new pty, asked on by
    nobody; stdin's terminal is used only when the reopened fd is the same terminal."""
    import sys

    from blitzdns.daemon import _open_terminal

    class Stdin:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    master, slave = pty.openpty()
    try:
        monkeypatch.setattr(sys, "stdin", Stdin(master))
        assert _open_terminal("/nonexistent/tty") is None
        monkeypatch.setattr(sys, "stdin", Stdin(slave))
        fd = _open_terminal("/nonexistent/tty")
        assert fd is not None
        try:
            assert os.fstat(fd).st_rdev == os.fstat(slave).st_rdev
        finally:
            os.close(fd)
    finally:
        os.close(master)
        os.close(slave)


def secret_bytes_in_frames(error: BaseException, secret: bytes) -> list[str]:
    """The locals, in the program's frames of ``error``'s traceback (this module's, the
    test's own, left out), that hold ``secret`` (as bytes, or shown in their repr)."""
    found: list[str] = []
    shown = repr(secret)[2:-1]  # b'...' without the b and quotes
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        tb = tb.tb_next
        if frame.f_code.co_filename == __file__:
            continue
        for name, value in frame.f_locals.items():
            if isinstance(value, (bytes, bytearray)) and secret in value:
                found.append(f"{frame.f_code.co_name}: {name}")
            elif shown in repr(value):
                found.append(f"{frame.f_code.co_name}: {name} (repr)")
    return found


@pytest.mark.parametrize("way", ["no terminal", "not a terminal"])
def test_an_answer_getpass_cannot_decode_is_answer_undecodable(monkeypatch: Any, way: str) -> None:
    """getpass's own way (no terminal to open, or an fd tcgetattr refuses): its
    UnicodeDecodeError (the answer's bytes as .object, a byte and its position in the
    message) becomes AnswerUndecodable, retryable, carrying none of it."""
    import getpass

    from blitzdns import daemon
    from blitzdns.daemon import AnswerUndecodable

    secret = b"ab\xff\xfe"

    def fake_getpass(prompt: str = "", stream: Any = None) -> str:
        raise UnicodeDecodeError("utf-8", secret, 2, 3, "invalid start byte")

    opened: list[int] = []

    def open_terminal(terminal: str) -> int | None:
        if way == "no terminal":
            return None
        opened.append(os.open(os.devnull, os.O_RDWR))  # tcgetattr: not a terminal
        return opened[-1]

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    monkeypatch.setattr(daemon, "_open_terminal", open_terminal)
    with pytest.raises(AnswerUndecodable) as caught:
        daemon.read_secret("Passphrase: ", "/nonexistent/tty", -1)
    error = caught.value
    for shown in (str(error), repr(error)):
        for leak in ("\xff", "\\xff", "xff", "\xfe", "xfe", "position"):
            assert leak not in shown, shown
    assert error.__context__ is None
    assert error.__cause__ is None
    assert secret_bytes_in_frames(error, secret) == []
    for fd in opened:  # the fd that was not a terminal is closed
        with pytest.raises(OSError):
            os.fstat(fd)


def test_stdins_terminal_reopened_is_closed_when_it_cannot_be_checked(monkeypatch: Any) -> None:
    """The reopened terminal's fstat failing: the fd is closed, not leaked."""
    import errno
    import sys

    from blitzdns.daemon import _open_terminal

    class Stdin:
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def fileno(self) -> int:
            return self.fd

    master, slave = pty.openpty()
    opened: list[int] = []
    closed: list[int] = []
    real_open, real_close, real_fstat = os.open, os.close, os.fstat

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        opened.append(fd)
        return fd

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    def fstat(fd: Any) -> Any:
        if fd in opened:
            raise OSError(errno.EIO, "Input/output error")
        return real_fstat(fd)

    try:
        monkeypatch.setattr(sys, "stdin", Stdin(slave))
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(os, "close", close)
        monkeypatch.setattr(os, "fstat", fstat)
        assert _open_terminal("/nonexistent/tty") is None
    finally:
        monkeypatch.undo()
        os.close(master)
        os.close(slave)
    assert opened and closed == opened, (opened, closed)


def test_a_stop_after_a_partial_line_leaves_none_of_it_in_the_readers_frames(
    monkeypatch: Any,
) -> None:
    """'partial' then one ^D: the reader has those bytes and waits for the rest of the line;
    a stop then (cancel) raises AskCancelled, whose traceback keeps the reader's frames:
    none of their locals holds the bytes typed (the line's buffer is zeroed on the way
    out, and no read made a bytes object of them)."""
    import select as select_module

    from blitzdns import daemon
    from blitzdns.daemon import AskCancelled

    secret = b"partial-secret"
    waits: list[int] = []
    read_once = threading.Event()
    original_wait = daemon._wait

    def counting_wait(fd: int, events: int, wake: int, prompt: str) -> None:
        if events == select_module.POLLIN:
            waits.append(fd)
            if len(waits) == 2:  # the line's second wait: its first part was read
                read_once.set()
        original_wait(fd, events, wake, prompt)

    monkeypatch.setattr(daemon, "_wait", counting_wait)

    def type_then_stop(master: int, secrets: Any) -> None:
        os.write(master, secret + b"\x04")  # ^D after a partial line: read, no newline
        assert read_once.wait(20)
        secrets.cancel()

    got, modes = asked_on_a_pty(type_then_stop)
    assert [type(g) for g in got] == [AskCancelled]
    error = got[0]
    assert isinstance(error, AskCancelled)
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "_read_line" in frames  # the reader's frame is there to look into
    assert secret_bytes_in_frames(error, secret) == []
    assert modes & termios.ECHO


@pytest.mark.parametrize("size", [11, 3000])  # 3000: past the reader's first buffer
def test_an_answer_leaves_its_bytes_in_no_buffer_of_the_reader(monkeypatch: Any, size: int) -> None:
    """The answer is read into bytearrays only, and each is zeroed before it is let go:
    the line's once decoded, an outgrown one when the line outgrew it."""
    from blitzdns import daemon

    answer = ("s3cret" * 600)[:size]
    wiped: list[bytearray] = []
    original_wipe = daemon._wipe

    def recording_wipe(buffer: bytearray) -> None:
        original_wipe(buffer)
        wiped.append(buffer)

    monkeypatch.setattr(daemon, "_wipe", recording_wipe)
    read: list[bytearray] = []
    original_read_line = daemon._read_line

    def recording_read_line(fd: int, wake: int, prompt: str) -> tuple[bytearray, int]:
        line, size = original_read_line(fd, wake, prompt)
        assert answer.encode() + b"\n" == line[:size]  # the line is this buffer's
        read.append(line)
        return line, size

    monkeypatch.setattr(daemon, "_read_line", recording_read_line)
    got, _ = asked_on_a_pty(lambda master, _: os.write(master, answer.encode() + b"\n") and None)
    assert got == [answer]
    assert len(wiped) == (1 if size < daemon.LINE_START else 3)
    # the buffer the line was read into is among those wiped (not another one, a copy)
    # and, once the question is over, holds none of it: nor does any other wiped one
    assert len(read) == 1 and any(buffer is read[0] for buffer in wiped)
    assert all(not any(buffer) for buffer in wiped + read)
    assert sum(map(len, wiped)) >= size


def test_an_undecodable_answer_raises_no_exception_holding_its_bytes(monkeypatch: Any) -> None:
    """The decode raises nothing (no UnicodeDecodeError, whose .object was a bytes copy of
    the whole line, freed unzeroed): every exception raised in the reader's threads while
    it asks is traced, and none holds the answer's bytes; the error's frames keep none."""
    import locale

    from blitzdns.daemon import AnswerUndecodable

    secret = b"ab\xff\xfe"
    raised: list[BaseException] = []

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if event == "exception":
            raised.append(arg[1])
        return tracer

    monkeypatch.setattr(locale, "getpreferredencoding", lambda *_: "utf-8")
    threading.settrace(tracer)
    try:
        got, modes = asked_on_a_pty(lambda master, _: os.write(master, secret + b"\n") and None)
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert [type(g) for g in got] == [AnswerUndecodable]
    assert any(isinstance(error, AnswerUndecodable) for error in raised)  # traced
    holding = [
        error
        for error in raised
        if any(
            isinstance(value, (bytes, bytearray)) and secret in value
            for value in (*error.args, getattr(error, "object", None))
        )
    ]
    assert holding == [], holding
    error = got[0]
    assert isinstance(error, BaseException)
    assert secret_bytes_in_frames(error, secret) == []
    assert modes & termios.ECHO
