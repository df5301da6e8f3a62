"""Every exit code `blitzdns help exit-codes` documents, each caused through the command
line; the set exercised here must equal the set documented."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from .conftest import RunningDaemon, blitzdns, echo_config, side_by_side
from .test_plain_output import watch_on_a_terminal


def documented() -> set[int]:
    shown = blitzdns("help", "exit-codes")
    section = shown.stdout.split("Exit codes:\n")[1].split("\n\n")[0]
    return {int(code) for code in re.findall(r"(?m)^  (\d+) ", section)}


def test_every_documented_exit_code_is_exercised(
    tmp_path: Path, not_blitzdns: Path, start_daemon: Callable[..., RunningDaemon]
) -> None:
    config = echo_config(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text("[dns]\nttl = 'five'\n")
    nowhere = str(tmp_path / "none.sock")
    seen: dict[int, list[str]] = {}
    expected = [
        (0, ("plan", "-c", str(config))),
        (1, ("check", "-c", str(config), "--control-socket", nowhere)),
        (2, ("plan", "-c", str(broken))),
        (2, ("plan", "--bogus")),
        (3, ("status", "--control-socket", nowhere)),
        (4, ("status", "--control-socket", str(not_blitzdns))),
    ]
    for (code, argv), done in zip(expected, side_by_side([a for _, a in expected]), strict=True):
        assert done.returncode == code, (argv, done.stdout, done.stderr)
        if code:
            assert done.stderr.count("\n") <= 1 or argv[0] == "check", done.stderr
        seen.setdefault(code, []).append(" ".join(argv))
    daemon = start_daemon(config, "--no-tunnel")
    _, interrupted = watch_on_a_terminal(daemon.control, {"TERM": "dumb"})
    assert interrupted == 130
    seen[130] = ["status --watch, then Ctrl-C"]
    assert set(seen) == documented(), seen
