"""`run` imports what it serves with, when it needs it (issue 18: start-up and idle memory).

Every module here is kept out of a daemon that does not use it: the CLI framework, the
commands `run` is not, the guard's machinery without a guard, the network reading of
``--location auto``, the help page, asyncssh and cryptography before a tunnel starts.
Measured with ``python -X importtime -m blitzdns run ...`` and bench/daemon_bench.py.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.rcode

from tests.peers import free_port

#: Must not be loaded by a `run --no-tunnel` that has started serving.
NOT_FOR_RUN = (
    "typer",
    "click",
    "rich",
    "pydantic",
    "asyncssh",
    "cryptography",
    "dnslib",  # the resolver's slow path only (blitzdns.dns.wire)
    "blitzdns.dns.wire",
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
    "json",  # the control socket's first request, an install record (none here)
    "blitzdns.snapshot",  # the status contract: the first status request
    "importlib.resources",
    "pkgutil",
)

#: Starts the daemon's whole start path in this process (as `run --no-tunnel` does, minus
#: the privilege drop), then prints which of the named modules are loaded.
START = """
import asyncio, sys
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
print(repr([name for name in sys.argv[4:] if name in sys.modules]))
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
    assert ast.literal_eval(out.stdout.splitlines()[-1]) == []


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
import sys
from blitzdns.daemon import preload_modules
preload_modules(None if sys.argv[1] == "none" else sys.argv[1])
print(repr([name for name in sys.argv[2:] if name in sys.modules]))
"""

#: What a daemon that drops root imports before the drop: the link's lazy import, not
#: asyncssh's every module (a Windows agent, email, X.509 without PyOpenSSL: ~2 MB).
PRELOAD_PROBE = (
    "encodings.idna",
    "json",
    "blitzdns.snapshot",
    "dnslib",
    "tunnel.backends.asyncssh_link",
    "tunnel.backends.openssh.link",
    "tunnel.udp_mouth",
    "blitzdns.blitzmail.atp",
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
    loaded: list[str] = ast.literal_eval(out.stdout.splitlines()[-1])
    return loaded


def test_preload_before_the_privilege_drop_is_the_link_s_module() -> None:
    unused = {"asyncssh.agent_win32", "email", "cryptography.x509", "pkgutil"}
    links = {"asyncssh": "tunnel.backends.asyncssh_link", "openssh": "tunnel.backends.openssh.link"}
    for backend, link in links.items():
        loaded = set(preloaded(backend))
        assert {"encodings.idna", "json", "blitzdns.snapshot", "dnslib", link, "asyncssh"} <= loaded
        # A reload after the drop may add a UDP forward, with the notify step.
        assert {"tunnel.udp_mouth", "blitzdns.blitzmail.atp"} <= loaded
        assert not loaded & unused
    assert preloaded("none") == ["encodings.idna", "json", "blitzdns.snapshot", "dnslib"]


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


#: A started daemon, then a message only the slow path answers (an EDNS version above 0:
#: BADVERS), sent to its listener: which of dnslib / the wire module are loaded before
#: and after, and the reply.
SLOW_PATH = """
import asyncio, json, socket, struct, sys
from pathlib import Path
from blitzdns.daemon import Daemon, RunOptions
from blitzdns.config import load_config

config = load_config(Path(sys.argv[1]), search=False)
options = RunOptions(
    config_path=Path(sys.argv[1]), no_tunnel=True, drop_privileges=False,
    control_socket=Path(sys.argv[2]), root=Path(sys.argv[3]),
)
port = int(sys.argv[4])
query = (
    struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 1)
    + b"\\x05alpha\\x07example\\x04test\\x00" + struct.pack("!2H", 1, 1)
    + b"\\x00" + struct.pack("!HHBBHH", 41, 1232, 0, 1, 0, 0)
)

async def main():
    daemon = Daemon(config, options)
    await daemon.start()
    loaded = {"before": [m for m in ("dnslib", "blitzdns.dns.wire") if m in sys.modules]}
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, query)
        reply = await asyncio.wait_for(loop.sock_recv(sock, 4096), 20)
    await daemon.close()
    loaded["after"] = [m for m in ("dnslib", "blitzdns.dns.wire") if m in sys.modules]
    loaded["reply"] = reply.hex()
    return loaded

print(json.dumps(asyncio.run(main())))
"""


def test_the_slow_path_loads_dnslib_when_first_needed(tmp_path: Path) -> None:
    """dnslib is not loaded at the start, and a message only the slow path answers still
    gets its answer from a started daemon (the import happens then)."""
    port = free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        'preset = "none"\n[dns]\n'
        f'listen = ["127.0.0.1:{port}"]\nupstreams = ["127.0.0.1:{free_port()}"]\n'
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nmouth = "127.79.0.1"\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SLOW_PATH, str(config), str(tmp_path / "ctl"), str(root), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    assert seen["before"] == []
    assert seen["after"] == ["dnslib", "blitzdns.dns.wire"]
    reply = dns.message.from_wire(bytes.fromhex(seen["reply"]))
    assert reply.id == 0x4242
    assert reply.rcode() == dns.rcode.BADVERS  # RFC 6891 §6.1.3: the slow path's answer


#: A tunnel with TCP forwards only, then one with a UDP forward (with the notify step):
#: which of the UDP code's modules each has loaded.
UDP_ON_DEMAND = """
import json, sys
from blitzdns.config import parse_config
from blitzdns.daemon import to_tunnel_forwards
from tunnel import Forward, Gateway, Tunnel, TunnelOptions, UdpForward, udp
probe = ("tunnel.udp_mouth", "tunnel.udp_assoc", "blitzdns.blitzmail.atp")
options = TunnelOptions(gateways=(Gateway.parse("gw"),))
Tunnel(options, [Forward("127.0.0.1", 2525, "127.0.0.1", 25)])
print(json.dumps([name for name in probe if name in sys.modules]))
print(udp._socat_patterns.cache_info().currsize)
config = parse_config(sys.argv[1])
forwards = to_tunnel_forwards(config)
tunnel = Tunnel(options, [f for f in forwards if isinstance(f, UdpForward)])
print(json.dumps([name for name in probe if name in sys.modules]))
print(type(tunnel._udp[("127.79.0.1", 9999)]).__name__)
print(udp.parse_socat_line(b"> 2026/01/01 00:00:00.0 length=12 from=0 to=11"))
"""


def test_udp_code_loads_with_the_first_udp_forward() -> None:
    """A daemon with TCP forwards only does not load the UDP mouths' code (tunnel.udp_mouth,
    tunnel.udp_assoc), the notify step (blitzdns.blitzmail.atp), nor compile socat's
    patterns; the first UDP forward (here with the notify step) loads them."""
    config = (
        'preset = "none"\n[tunnel]\ngateways = ["gw"]\n'
        '[services]\nnote = { port = 9999, proto = "udp", step = "notify" }\n'
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nservices = ["note"]\n'
        'mouth = "127.79.0.1"\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", UDP_ON_DEMAND, config],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["[]", "0"]
    assert json.loads(lines[2]) == [
        "tunnel.udp_mouth",
        "tunnel.udp_assoc",
        "blitzdns.blitzmail.atp",
    ]
    assert lines[3] == "UdpMouth"
    assert lines[4] == "SocatTransfer(direction='up', length=12)"


def test_the_guard_s_service_does_not_load_the_status_contract() -> None:
    """A daemon with the guard on imports blitzdns.guard_service at every start; the status
    contract (blitzdns.snapshot) it names in an annotation waits for the first status
    request all the same."""
    code = "import sys, blitzdns.guard_service\nprint('blitzdns.snapshot' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "False"
