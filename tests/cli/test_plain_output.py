"""No escape codes where none belong: NO_COLOR, TERM=dumb and pipes get plain bytes, and a
terminal that cannot take escapes gets `status --watch` as plain frames (checked on a real
pseudo-terminal, with a control that shows the in-place redraw where it is allowed)."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import BLITZDNS, echo_config, running, side_by_side


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """One daemon (its config, its control socket) for the read-only commands of every
    environment below."""
    root = tmp_path_factory.mktemp("plain")
    config = echo_config(root)
    control = root / "control.sock"
    argv = [BLITZDNS, "run", "-c", str(config), "--control-socket", str(control)]
    with running(argv, control, root / "daemon.log"):
        yield config, control


@pytest.mark.parametrize(
    "env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}, {}], ids=["NO_COLOR", "TERM=dumb", "pipe"]
)
def test_no_escape_codes_in_any_output(
    env: dict[str, str], tmp_path: Path, shared_daemon: tuple[Path, Path]
) -> None:
    config, control_path = shared_daemon
    control = str(control_path)
    runs = [
        ("--help",),
        ("help", "all"),
        ("help", "exit-codes"),
        ("plan", "-c", str(config)),
        ("config", "show", "-c", str(config)),
        ("location", "-c", str(config)),
        ("status", "--control-socket", control),
        ("check", "--skip-system-resolver", "--control-socket", control),
        ("status", "--control-socket", str(tmp_path / "none.sock")),
        ("bogus",),
        ("plan", "-c", str(tmp_path / "missing.toml")),
    ]
    for argv, done in zip(runs, side_by_side(runs, env), strict=True):
        assert done.stdout or done.stderr, argv
        assert "\x1b" not in done.stdout + done.stderr, (argv, done.stdout, done.stderr)


#: Start a program as a terminal would, with Ctrl-C's default action: a test run started
#: in the background of a shell without job control ignores SIGINT, a program inherits an
#: ignored signal, and Python then leaves it ignored (the watch would never end).
WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def read_ready(leader: int, timeout: float) -> bytes | None:
    """What the terminal has for us within ``timeout`` (b"" if nothing yet); None once the
    other side is closed."""
    if not select.select([leader], [], [], timeout)[0]:
        return b""
    try:
        return os.read(leader, 65536) or None
    except OSError:  # EIO: the program exited and closed its side
        return None


def watch_on_a_terminal(control: Path, env: dict[str, str]) -> tuple[bytes, int]:
    """`status --watch` on a pseudo-terminal until two frames are out, then Ctrl-C.

    The terminal is read all along, until the program is gone: a program writing to a
    terminal nobody reads blocks when its buffer (4 KiB) is full, and then cannot end.
    """
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WITH_CTRL_C,
            BLITZDNS,
            "status",
            "--watch",
            "--control-socket",
            str(control),
        ],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "NO_COLOR": "", **env},
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while seen.count(b"upstreams") < 2 and time.monotonic() < deadline:
            seen += read_ready(leader, 1) or b""
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while (chunk := read_ready(leader, 0.2)) is not None and time.monotonic() < deadline:
            seen += chunk
            if chunk == b"" and process.poll() is not None:
                break
        try:
            code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running 30 s after Ctrl-C; it wrote {seen!r}") from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    assert seen.count(b"upstreams") >= 2, seen
    return seen, code


def test_watch_on_a_terminal_redraws_in_place_only_where_allowed(
    shared_daemon: tuple[Path, Path],
) -> None:
    _, control = shared_daemon
    envs = ({"TERM": "xterm"}, {"TERM": "dumb"}, {"TERM": "xterm", "NO_COLOR": "1"})
    with ThreadPoolExecutor(max_workers=3) as pool:  # three terminals of their own
        (allowed, code), *plain = pool.map(lambda env: watch_on_a_terminal(control, env), envs)
    assert b"\x1b[H\x1b[2J" in allowed  # the control: in place on a capable terminal
    assert code == 130  # ended by Ctrl-C
    for env, (shown, code) in zip(envs[1:], plain, strict=True):
        assert b"\x1b" not in shown, (env, shown)
        assert code == 130
