"""A passphrase-protected key: `run` on a terminal asks once, and a reconnect does not ask again."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.peers import Sshd, free_port

from .conftest import BLITZDNS


def read_until(fd: int, needle: bytes, timeout_s: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while needle not in seen and time.monotonic() < deadline:
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
