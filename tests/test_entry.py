"""The console entry: `run` parses without typer; mistakes are one line and status 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

BLITZDNS = str(Path(sys.executable).with_name("blitzdns"))


def test_run_does_not_import_typer_or_pydantic() -> None:
    code = (
        "import sys\n"
        "from blitzdns.daemon import run_parser\n"
        "run_parser().parse_args(['--no-tunnel'])\n"
        "assert 'Options:' in run_parser().format_help()  # run --help: the shared layout\n"
        "import blitzdns.entry\n"
        "print(sorted(m for m in ('typer', 'pydantic', 'click', 'rich') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_a_bad_run_flag_is_one_line_and_status_2() -> None:
    result = subprocess.run(
        [BLITZDNS, "run", "--bogus"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "blitzdns: run: unrecognized arguments: --bogus (see `blitzdns run --help`)"
    ]


def test_run_is_listed_in_the_main_help_and_has_its_own() -> None:
    main = subprocess.run(
        [BLITZDNS, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert " run " in main.stdout
    own = subprocess.run(
        [BLITZDNS, "run", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "--gateway" in own.stdout and "--trust-new-host-key" in own.stdout


def blitzdns(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BLITZDNS, *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_an_unknown_command_is_one_line_and_status_2() -> None:
    result = blitzdns("bogus")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "blitzdns: No such command 'bogus'. (see `blitzdns --help`)"
    ]


def test_an_unknown_option_of_a_command_is_one_line_and_status_2() -> None:
    result = blitzdns("check", "--bogus-flag")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "blitzdns: check: No such option: --bogus-flag (see `blitzdns check --help`)"
    ]


def test_a_group_without_its_subcommand_shows_its_help() -> None:
    result = blitzdns("config")
    assert result.returncode == 2
    assert "init" in result.stdout + result.stderr
    assert "blitzdns:" not in result.stderr


def test_click_errors_keep_their_status_and_other_errors_their_traceback() -> None:
    import typer

    from blitzdns.entry import click_error

    assert click_error(typer.Abort()) == ("aborted", 1)
    assert click_error(typer.BadParameter("port 99999 is out of range")) == (
        "Invalid value: port 99999 is out of range",
        2,
    )
    assert click_error(RuntimeError("a bug")) is None
    assert click_error(ValueError("also a bug")) is None


def test_config_init_where_a_file_stands_in_the_path_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = blitzdns("config", "init", str(tmp_path / "afile" / "x.toml"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"blitzdns: cannot write {tmp_path}/afile/x.toml ({tmp_path}/afile: File exists)"
    ]


def test_a_control_socket_under_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    where = tmp_path / "afile" / "x.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = blitzdns(
        "run", "--no-tunnel", "--listen", f"127.0.0.1:{port}", "--control-socket", str(where)
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"blitzdns: --control-socket {where}: {tmp_path}/afile is not a directory"
    )


#: `run`'s start up to the daemon, with a stand-in daemon: the dataclass method texts that
#: dataclasses ran through the plain ``exec`` (compiled, not taken from blitzdns.classcode's
#: table) before the daemon's code was reached.
CLASSCODE_FIRST = """
import builtins, dataclasses, sys, types
plain = []
def counting(source, *rest):
    if type(source) is str:
        plain.append(source.split("(", 1)[0])
    return builtins.exec(source, *rest)
dataclasses.exec = counting  # what classcode.start() replaces while it is in force
stand_in = types.ModuleType("blitzdns.daemon")
def run_main(args):
    import blitzdns.classcode, tunnel
    print(len(plain), "tunnel" in sys.modules)
    return 0
stand_in.run_main = run_main
sys.modules["blitzdns.daemon"] = stand_in
from blitzdns.entry import main
main(["run"])
"""


def test_run_s_imports_are_made_with_the_kept_dataclass_code() -> None:
    """classcode is in force before anything with dataclasses loads (blitzdns.errors loads
    the tunnel package: its 78 methods were compiled at every start when it came first)."""
    out = subprocess.run(
        [sys.executable, "-c", CLASSCODE_FIRST],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True"]
