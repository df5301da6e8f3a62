"""`blitzdns run` end to end: real sshd gateway, real stub, real dig, targets on loopback."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import DIG, Sshd, dig_short, free_port, wait_for

from .conftest import BLITZDNS, Daemon, start_daemon


class EchoServer:
    """A threaded echo server on 127.0.0.1 standing for a service behind the gateway."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def config_text(sshd: Sshd, tmp_path: Path, dns_port: int, echo_port: int, hosts: list[str]) -> str:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line())
    (tmp_path / "ssh_config").write_text("")
    sections = "\n".join(
        f'[hosts.{h}]\nnames = ["{h}.example.test", "{h}"]\nservices = ["svc"]\n'
        f'remote = "127.0.0.1"\n'
        for h in hosts
    )
    return f"""
preset = "none"
[dns]
listen = ["127.0.0.1:{dns_port}"]
upstreams = ["127.0.0.1:{free_port()}"]
timeout_s = 0.5
[tunnel]
gateways = ["{sshd.user}@127.0.0.1:{sshd.port}"]
mouths = "127.79.0.0/24"
known_hosts = "{known}"
identity_files = ["{sshd.client_key}"]
ssh_config = "{tmp_path / "ssh_config"}"
[services]
svc = {{ port = {free_port()}, remote_port = {echo_port} }}
{sections}
"""


def link_up(status: dict[str, object]) -> bool:
    tunnel = status.get("tunnel")
    return isinstance(tunnel, dict) and str(tunnel.get("status")).lower() == "up"


def mouth_of(status_or_plan_host: str, daemon: Daemon, dns_port: int) -> tuple[str, int]:
    address = dig_short(dns_port, f"{status_or_plan_host}.example.test")[0]
    text = daemon.config.read_text()
    port = int(text.split("svc = { port = ")[1].split(",")[0])
    return address, port


def roundtrip(address: str, port: int, payload: bytes) -> bytes:
    with socket.create_connection((address, port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


@pytest.fixture
def running(sshd: Sshd, echo: EchoServer, tmp_path: Path) -> Iterator[tuple[Daemon, int]]:
    if DIG is None:
        pytest.skip("dig not installed (Debian: bind9-dnsutils)")
    dns_port = free_port()
    daemon = start_daemon(
        tmp_path, config_text(sshd, tmp_path, dns_port, echo.port, ["alpha", "beta", "gamma"])
    )
    try:
        daemon.wait_status(link_up)
        yield daemon, dns_port
    finally:
        daemon.stop()


def test_a_name_resolves_to_its_mouth_and_reaches_the_target_through_sshd(
    running: tuple[Daemon, int], echo: EchoServer, sshd: Sshd
) -> None:
    daemon, dns_port = running
    answers = dig_short(dns_port, "AlPhA.Example.TEST.")
    assert len(answers) == 1 and answers[0].startswith("127.79.0.")
    assert dig_short(dns_port, "alpha.example.test", "AAAA") == []
    address, port = mouth_of("alpha", daemon, dns_port)
    assert roundtrip(address, port, b"hello through sshd") == b"hello through sshd"
    # The target saw only sshd's connection, never ours directly.
    assert echo.peers and all(peer == "127.0.0.1" for peer in echo.peers)
    assert sshd.connections_logged() >= 1


def test_status_counters_move_as_traffic_flows(running: tuple[Daemon, int]) -> None:
    daemon, dns_port = running
    before = daemon.status()
    address, port = mouth_of("beta", daemon, dns_port)
    roundtrip(address, port, b"x" * 1000)
    after = daemon.wait_status(
        lambda s: any(
            f.get("total", 0) >= 1 and f.get("bytes_out", 0) + f.get("bytes_in", 0) >= 2000
            for f in s["tunnel"]["forwards"]  # type: ignore[index]
        )
    )
    assert after["dns"]["answered_local"] > before["dns"]["answered_local"]  # type: ignore[index]


def test_reload_adds_and_removes_hosts_while_a_third_keeps_its_connection(
    running: tuple[Daemon, int], sshd: Sshd, echo: EchoServer, tmp_path: Path
) -> None:
    daemon, dns_port = running
    address, port = mouth_of("gamma", daemon, dns_port)
    held = socket.create_connection((address, port), timeout=5)
    held.sendall(b"before ")
    assert held.recv(100) == b"before "
    text = daemon.config.read_text()
    text = text.replace(
        '[hosts.beta]\nnames = ["beta.example.test", "beta"]',
        '[hosts.delta]\nnames = ["delta.example.test", "delta"]',
    )
    daemon.config.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    delta = wait_for(lambda: dig_short(dns_port, "delta.example.test"), "delta's mouth", 30)
    assert delta[0].startswith("127.79.0.")
    assert not any(a.startswith("127.79.") for a in dig_short(dns_port, "beta.example.test"))
    assert roundtrip(delta[0], port, b"new host") == b"new host"
    held.sendall(b"after")
    assert held.recv(100) == b"after"
    held.close()


def test_a_reload_with_a_broken_file_keeps_the_running_config(
    running: tuple[Daemon, int],
) -> None:
    daemon, dns_port = running
    good = daemon.config.read_text()
    daemon.config.write_text(good + "\n[dns]\nbogus = 1\n")
    daemon.process.send_signal(signal.SIGHUP)
    assert "reload failed, keeping the running configuration" in daemon.wait_log("reload failed")
    assert dig_short(dns_port, "alpha.example.test")[0].startswith("127.79.0.")


def test_a_reload_says_which_tunnel_settings_wait_for_a_restart(
    running: tuple[Daemon, int],
) -> None:
    daemon, dns_port = running
    text = daemon.config.read_text().replace("[tunnel]\n", "[tunnel]\nkeepalive_s = 7.0\n", 1)
    daemon.config.write_text(text)
    daemon.process.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reloaded")
    assert "tunnel.keepalive_s changed; it takes effect at the next restart" in log
    assert dig_short(dns_port, "alpha.example.test")[0].startswith("127.79.0.")


def test_sigterm_stops_everything_and_frees_the_ports(running: tuple[Daemon, int]) -> None:
    daemon, dns_port = running
    address, port = mouth_of("alpha", daemon, dns_port)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=10) == 0
    for family, kind, where in (
        (socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", dns_port)),
        (socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", dns_port)),
        (socket.AF_INET, socket.SOCK_STREAM, (address, port)),
    ):
        with socket.socket(family, kind) as probe:
            probe.bind(where)


def test_a_bad_config_file_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[tunnel]\nkeepalive_s = 'often'\n")
    result = subprocess.run(  # noqa: PLW1510 (the exit status is asserted)
        [BLITZDNS, "run", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "tunnel.keepalive_s" in lines[0]


def test_no_gateway_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: PLW1510 (the exit status is asserted)
        [BLITZDNS, "run", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "no SSH gateway configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_privilege_drop_to_the_named_user_keeps_serving(
    sshd: Sshd, echo: EchoServer, tmp_path: Path
) -> None:
    if DIG is None:
        pytest.skip("dig not installed")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    # The dropped user must be able to read its SSH files: pytest's tmp tree is 0700.
    client_dir = Path(tempfile.mkdtemp(prefix="blitzdns-nobody-"))
    client_dir.chmod(0o755)
    key = client_dir / "id_ed25519"
    shutil.copy(sshd.client_key, key)
    os.chown(key, nobody.pw_uid, nobody.pw_gid)
    key.chmod(0o600)
    text = config_text(sshd, client_dir, free_port(), echo.port, ["alpha"])
    text = text.replace(str(sshd.client_key), str(key))
    dns_port = int(text.split('listen = ["127.0.0.1:')[1].split('"')[0])
    daemon = start_daemon(tmp_path, text, "--user", "nobody")
    try:
        daemon.wait_status(link_up)
        status_lines = Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines()
        uids = next(line for line in status_lines if line.startswith("Uid:")).split()[1:]
        assert {int(u) for u in uids} == {nobody.pw_uid}
        address, port = mouth_of("alpha", daemon, dns_port)
        assert roundtrip(address, port, b"as nobody") == b"as nobody"
    finally:
        daemon.stop()
        shutil.rmtree(client_dir, ignore_errors=True)


def test_the_openssh_backend_carries_the_same_job(
    sshd: Sshd, echo: EchoServer, tmp_path: Path
) -> None:
    if DIG is None or shutil.which("ssh") is None:
        pytest.skip("needs dig and the OpenSSH client")
    dns_port = free_port()
    text = config_text(sshd, tmp_path, dns_port, echo.port, ["alpha"])
    text = text.replace("[services]", 'backend = "openssh"\n[services]', 1)
    daemon = start_daemon(tmp_path, text)
    try:
        daemon.wait_status(link_up)
        address, port = mouth_of("alpha", daemon, dns_port)
        assert roundtrip(address, port, b"via the ssh master") == b"via the ssh master"
        assert len(masters_for(sshd.port)) == 1
        assert echo.peers and all(peer == "127.0.0.1" for peer in echo.peers)
    finally:
        daemon.stop()
    # The master went with the daemon: no ssh process is left holding the link.
    assert masters_for(sshd.port) == []


def masters_for(port: int) -> list[int]:
    """Pids of `ssh -M` masters whose command line names ``port``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-M" in argv and str(port).encode() in argv:
            found.append(int(proc.name))
    return found


def test_a_reload_says_the_guard_waits_for_a_restart(running: tuple[Daemon, int]) -> None:
    """[guard] enabled is acted on at start only (as root): a reload that turns it on must
    not leave the user believing the guard is in force."""
    daemon, dns_port = running
    assert "[guard]" not in daemon.config.read_text()
    daemon.config.write_text(daemon.config.read_text() + "\n[guard]\nenabled = true\n")
    daemon.process.send_signal(signal.SIGHUP)
    log = daemon.wait_log("reloaded")
    assert "guard.enabled changed; it takes effect at the next restart" in log
    assert dig_short(dns_port, "alpha.example.test")[0].startswith("127.79.0.")
