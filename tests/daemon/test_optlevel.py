"""`blitzdns run` at -OO (blitzdns.optlevel): the daemon without docstrings, the CLI with.

The daemon starts again as ``python -OO`` (the same interpreter, options and program)
when it was started as the script or ``-m blitzdns``, ``PYTHONOPTIMIZE`` is not set and
the ``.opt-2.pyc`` files can be kept; else it goes on as it is.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from blitzdns import optlevel
from tests.peers import Sshd, free_port, wait_for

from .conftest import BLITZDNS, ChildRunner

PLAIN = SimpleNamespace(
    isolated=0,
    ignore_environment=0,
    no_user_site=0,
    safe_path=False,
    no_site=0,
    dont_write_bytecode=0,
    verbose=0,
    bytes_warning=0,
    optimize=0,
)


def flags(**changes: object) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(PLAIN), **changes})


def test_the_interpreter_starts_again_with_its_own_options_plus_OO() -> None:
    assert optlevel.interpreter_options(PLAIN, {}, []) == ["-OO"]
    assert optlevel.interpreter_options(
        flags(ignore_environment=1, no_user_site=1, safe_path=True, no_site=1, verbose=2),
        {"dev": True, "int_max_str_digits": "640"},
        ["error::ResourceWarning"],
    ) == ["-OO", "-E", "-s", "-P", "-S", "-v", "-v", "-X", "dev", "-X", "int_max_str_digits=640",
          "-W", "error::ResourceWarning"]  # fmt: skip
    # -I stands for -E -s -P; -B (no bytecode written) is kept.
    isolated = flags(
        isolated=1, ignore_environment=1, no_user_site=1, safe_path=True, dont_write_bytecode=1
    )
    assert optlevel.interpreter_options(isolated, {}, []) == [
        "-OO", "-I", "-B"
    ]  # fmt: skip


def command(**changes: object) -> list[str] | None:
    given: dict[str, object] = {
        "executable": "/venv/bin/python",
        "flags": PLAIN,
        "environ": {},
        "main_module": None,
        "argv0": "/venv/bin/blitzdns",
        "xoptions": {},
        "warnoptions": [],
        "is_file": lambda path: path == "/venv/bin/blitzdns",
    }
    return optlevel.optimized_command(["run", "-c", "x.toml"], **{**given, **changes})  # type: ignore[arg-type]


def test_the_script_and_the_module_are_started_again_as_they_were() -> None:
    script = ["/venv/bin/python", "-OO", "/venv/bin/blitzdns", "run", "-c", "x.toml"]
    assert command() == script
    assert command(main_module="blitzdns.__main__", argv0="/src/blitzdns/__main__.py") == [
        "/venv/bin/python", "-OO", "-m", "blitzdns", "run", "-c", "x.toml"
    ]  # fmt: skip


def test_what_cannot_or_should_not_start_again_goes_on_as_it_is() -> None:
    assert command(flags=flags(optimize=2)) is None  # already there (the started-again one)
    assert command(environ={"PYTHONOPTIMIZE": "0"}) is None  # the user's choice, even 0
    assert command(executable="") is None  # an embedded interpreter
    assert command(posix=False) is None  # Windows: execv would be another process
    assert command(argv0="-c") is None  # python -c: no program to name again
    assert command(argv0="/gone/blitzdns") is None
    assert command(main_module="pytest.__main__", argv0="/venv/bin/blitzdns") is None
    assert command(hooked=True) is None  # under pdb, cProfile or coverage
    assert command(is_file=lambda path: False) is None  # argv[0] is not what ran


def test_minus_u_is_carried() -> None:
    assert optlevel.interpreter_options(PLAIN, {}, [], unbuffered=True) == ["-OO", "-u"]
    started = command(unbuffered=True)
    assert started is not None and started[1:3] == ["-OO", "-u"]


def test_argv0_counts_only_as_the_file_the_interpreter_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher may set argv[0] to a shell wrapper's path or to a bare name that a file
    in the working directory answers to: neither may be started again as Python."""
    script = tmp_path / "blitzdns"
    script.write_text("# the launcher\n")
    (tmp_path / "link").symlink_to(script)
    other = tmp_path / "wrapper"
    other.write_text("#!/bin/sh\n")
    ran = optlevel.ran_file(str(script))
    assert ran(str(script)) and ran(str(tmp_path / "link"))
    assert not ran(str(other)) and not ran(str(tmp_path / "absent"))
    assert not optlevel.ran_file(None)(str(script))
    monkeypatch.chdir(tmp_path)
    assert not optlevel.ran_file("/nix/store/x/.blitzdns-wrapped")("blitzdns")


def test_the_process_keeps_the_script_s_name(tmp_path: Path) -> None:
    comm = tmp_path / "comm"
    comm.write_text("python3.11\n")
    optlevel.keep_name("/venv/bin/blitzdns", str(comm))
    assert comm.read_text() == "blitzdns"
    optlevel.keep_name("/venv/bin/blitzdns", str(tmp_path / "absent" / "comm"))  # no error


def test_bytecode_is_usable_where_it_is_or_can_be_written(
    tmp_path: Path, in_child: ChildRunner
) -> None:
    present = tmp_path / "present.opt-2.pyc"
    present.write_bytes(b"")
    assert optlevel.writable_or_present(str(present), dont_write=True)
    absent = tmp_path / "prefix" / "deep" / "__pycache__" / "m.cpython-311.opt-2.pyc"
    assert not optlevel.writable_or_present(str(absent), dont_write=True)
    assert optlevel.writable_or_present(str(absent), dont_write=False)
    (tmp_path / "afile").write_text("")
    assert not optlevel.writable_or_present(str(tmp_path / "afile" / "m.pyc"), dont_write=False)
    # Another user's directory: only its owner may write there (a directory under /tmp, as
    # pytest's own are not open to other users).
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        (shared / "locked").mkdir(mode=0o755)
        (shared / "open").mkdir()
        (shared / "open").chmod(0o777)

        def as_nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)
            assert not optlevel.writable_or_present(str(shared / "locked" / "m.pyc"), False)
            assert optlevel.writable_or_present(str(shared / "open" / "a" / "m.pyc"), False)

        in_child(as_nobody)
    finally:
        shutil.rmtree(shared)


def test_the_daemon_runs_at_OO_and_reaches_link_up(sshd: Sshd, tmp_path: Path) -> None:
    """The real `blitzdns run` script against sshd: started again at -OO (same pid), its
    .opt-2.pyc kept beside the bytecode; the CLI's help still has its docstrings."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    (tmp_path / "ssh_config").write_text("")
    config = tmp_path / "config.toml"
    config.write_text(
        f'preset = "none"\n[dns]\nlisten = ["127.0.0.1:{free_port()}"]\n'
        f'upstreams = ["127.0.0.1:{free_port()}"]\n'
        f'[tunnel]\ngateways = ["{sshd.user}@127.0.0.1:{sshd.port}"]\n'
        f'mouths = "127.79.0.0/24"\nknown_hosts = "{known}"\n'
        f'identity_files = ["{sshd.client_key}"]\nssh_config = "{tmp_path / "ssh_config"}"\n'
        f"[services]\nsvc = {{ port = {free_port()}, remote_port = 9 }}\n"
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nservices = ["svc"]\n'
        'remote = "127.0.0.1"\n'
    )
    prefix = tmp_path / "pycache"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONOPTIMIZE")
    }
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [BLITZDNS, "run", "--config", str(config), "--control-socket", str(tmp_path / "c")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
        )  # fmt: skip
    try:
        wait_for(
            lambda: daemon.poll() is not None or "link up via" in log.read_text(),
            lambda: f"link up: {log.read_text()[-3000:]}",
            timeout=90,
        )
        assert daemon.poll() is None, log.read_text()
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [arg.decode() for arg in cmdline] == [
            sys.executable, "-OO", BLITZDNS, "run", "--config", str(config),
            "--control-socket", str(tmp_path / "c"),
        ]  # fmt: skip
        assert Path(f"/proc/{daemon.pid}/comm").read_text() == "blitzdns\n"  # as before
        assert list(prefix.rglob("asyncssh/connection.*.opt-2.pyc"))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    # The other commands keep their docstrings: the exit codes page is made of them.
    shown = subprocess.run(
        [BLITZDNS, "help", "exit-codes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert "the configuration is invalid" in shown.stdout, shown
