"""`run` imports what it serves with, when it needs it (issue 18: start-up and idle memory).

Every module here is kept out of a daemon that does not use it: the CLI framework, the
commands `run` is not, the guard's machinery without a guard, the network reading of
``--location auto``, the help page, asyncssh and cryptography before a tunnel starts.
Measured with ``python -X importtime -m blitzdns run ...`` and bench/daemon_bench.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.peers import free_port

#: Must not be loaded by a `run --no-tunnel` that has started serving.
NOT_FOR_RUN = (
    "typer",
    "click",
    "rich",
    "pydantic",
    "asyncssh",
    "cryptography",
    "tunnel.tunnel",
    "blitzdns.cli",
    "blitzdns.check",
    "blitzdns.discover",
    "blitzdns.demo",
    "blitzdns.help",
    "blitzdns.guard_service",
    "blitzdns.system.guard",
    "blitzdns.system.guard_apply",
    "blitzdns.system.netfacts",
    "blitzdns.blitzmail.challenge",
    "importlib.resources",
    "pkgutil",
)

#: Starts the daemon's whole start path in this process (as `run --no-tunnel` does, minus
#: the privilege drop), then prints which of the named modules are loaded.
START = """
import asyncio, json, sys
from pathlib import Path
from blitzdns.daemon import Daemon, RunOptions, run_parser
from blitzdns.config import load_config

args = run_parser().parse_args(["--no-tunnel", "--config", sys.argv[1]])
config = load_config(Path(sys.argv[1]), search=False)
options = RunOptions(
    config_path=Path(sys.argv[1]), no_tunnel=True, drop_privileges=False,
    control_socket=Path(sys.argv[2]), root=Path(sys.argv[3]),
)

async def main():
    daemon = Daemon(config, options)
    await daemon.start()
    try:
        assert daemon.resolver is not None
    finally:
        await daemon.close()

asyncio.run(main())
print(json.dumps([name for name in sys.argv[4:] if name in sys.modules]))
"""


def test_a_started_daemon_has_not_loaded_what_it_does_not_use(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'preset = "none"\n[dns]\n'
        f'listen = ["127.0.0.1:{free_port()}"]\nupstreams = ["127.0.0.1:{free_port()}"]\n'
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nmouth = "127.79.0.1"\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    paths = (str(config), str(tmp_path / "ctl"), str(root))
    out = subprocess.run(
        [sys.executable, "-c", START, *paths, *NOT_FOR_RUN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_the_cli_help_does_not_load_rich() -> None:
    """typer draws its help with rich when rich is there and asked for; blitzdns's help is
    plain text (rich_markup_mode=None), so rich stays out even where it is installed."""
    code = (
        "import sys\n"
        "from blitzdns.entry import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('rich' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "run " in out.stdout and "status" in out.stdout
    assert out.stderr.strip().splitlines()[-1] == "False"


#: preload_modules(backend), then which of the named modules are loaded.
PRELOAD = """
import json, sys
from blitzdns.daemon import preload_modules
preload_modules(None if sys.argv[1] == "none" else sys.argv[1])
print(json.dumps([name for name in sys.argv[2:] if name in sys.modules]))
"""

#: What a daemon that drops root imports before the drop: the link's lazy import, not
#: asyncssh's every module (a Windows agent, email, X.509 without PyOpenSSL: ~2 MB).
PRELOAD_PROBE = (
    "encodings.idna",
    "tunnel.backends.asyncssh_link",
    "tunnel.backends.openssh.link",
    "asyncssh",
    "asyncssh.agent_win32",
    "email",
    "cryptography.x509",
    "pkgutil",
)


def preloaded(backend: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PRELOAD, backend, *PRELOAD_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    loaded: list[str] = json.loads(out.stdout.splitlines()[-1])
    return loaded


def test_preload_before_the_privilege_drop_is_the_link_s_module() -> None:
    unused = {"asyncssh.agent_win32", "email", "cryptography.x509", "pkgutil"}
    links = {"asyncssh": "tunnel.backends.asyncssh_link", "openssh": "tunnel.backends.openssh.link"}
    for backend, link in links.items():
        loaded = set(preloaded(backend))
        assert {"encodings.idna", link, "asyncssh"} <= loaded
        assert not loaded & unused
    assert preloaded("none") == ["encodings.idna"]


def test_status_does_not_load_typer_nor_pydantic(tmp_path: Path) -> None:
    """`status` is what scripts and monitors call over and over: the entry point reaches it
    without typer, which coerces every parameter through pydantic (blitzdns.argv)."""
    code = (
        "import sys\n"
        "from blitzdns.entry import main\n"
        "try:\n"
        "    main(['status', '--control-socket', sys.argv[1]])\n"
        "except SystemExit as exit:\n"
        "    loaded = [m for m in ('typer', 'pydantic', 'blitzdns.cli') if m in sys.modules]\n"
        "    print(exit.code, loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "nobody.sock")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split("\n")[0] == "3 []", out.stdout + out.stderr
    assert "no daemon is running" in out.stderr
