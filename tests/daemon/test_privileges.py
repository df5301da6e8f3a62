"""Privileged ports and the real privilege drop (root only: forked children switch users)."""

from __future__ import annotations

import errno
import os
import pwd
import random
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blitzdns.errors import PermissionProblem, UsageError
from blitzdns.system import privileges

from .conftest import ChildRunner

needs_root_linux = pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="the privilege drop needs root on Linux",
)

# --------------------------------------------------------------------------- pure parts


def test_privileged_ports_are_distinct_sorted_and_below_the_start() -> None:
    assert privileged_ports([2151, 53, 902, 53, 0, 1024, 1023], start=1024) == [53, 902, 1023]
    assert privileged_ports([53, 119], start=0) == []
    assert privileged_ports([80, 8080], start=100) == [80]


def privileged_ports(ports: list[int], start: int) -> list[int]:
    return privileges.privileged_ports(ports, start=start)


def test_unprivileged_port_start_reads_the_sysctl(tmp_path: Path) -> None:
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("80\n")
    assert privileges.unprivileged_port_start(sysctl) == 80
    assert privileges.unprivileged_port_start(tmp_path / "absent") == 1024


def test_effective_capabilities_parse(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000000400\n")
    assert privileges.effective_capabilities(status) == 1 << privileges.CAP_NET_BIND_SERVICE
    assert privileges.effective_capabilities(tmp_path / "absent") is None


def test_explanation_names_ports_and_the_three_ways_out() -> None:
    line = privileges.explain_privileged([902, 53, 53])
    assert "\n" not in line
    assert line.startswith("ports 53, 902 need root or CAP_NET_BIND_SERVICE")
    assert "sudo" in line
    assert f"setcap cap_net_bind_service=+ep {os.path.realpath(sys.executable)}" in line
    assert "resolver config" in line
    assert privileges.explain_privileged([53]).startswith("port 53 needs ")


# --------------------------------------------------------------------------- target user


def test_unknown_user_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--user no-such-user-xyz: no such user"):
        privileges.target_user("no-such-user-xyz")


@needs_root_linux
def test_target_user_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert privileges.target_user(None) is None
    assert privileges.target_user("root") is None
    assert privileges.target_user("nobody") == nobody
    assert privileges.target_user(str(nobody.pw_uid)) == nobody
    monkeypatch.setenv("SUDO_USER", "nobody")
    assert privileges.target_user(None) == nobody
    assert privileges.target_user("daemon") == pwd.getpwnam("daemon")
    monkeypatch.setenv("SUDO_USER", "root")
    assert privileges.target_user(None) is None


# --------------------------------------------------------------------------- real drop


def bind_privileged(kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket bound to a random privileged port on a random 127.x address."""
    rng = random.Random()
    for _ in range(100):
        sock = socket.socket(socket.AF_INET, kind)
        address = f"127.{rng.randint(100, 250)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        try:
            sock.bind((address, rng.randint(600, 1023)))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return sock
    raise RuntimeError("no free privileged port found")


def capability_sets() -> dict[str, int]:
    lines = Path("/proc/self/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split(":")[1], 16) for line in lines if line.startswith("Cap")
    }


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A directory anyone may enter, with a root-only file and a public one."""
    path = Path(tempfile.mkdtemp(prefix="blitzdns-priv-"))
    path.chmod(0o755)
    (path / "secret").write_text("root only")
    (path / "secret").chmod(0o600)
    (path / "public").write_text("anyone")
    (path / "public").chmod(0o644)
    yield path
    shutil.rmtree(path)


@needs_root_linux
def test_drop_keeps_bound_sockets_and_the_bind_capability_only(
    readable_dir: Path, monkeypatch: pytest.MonkeyPatch, in_child: ChildRunner
) -> None:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(readable_dir / "secret"))

    def body() -> None:
        listener = bind_privileged()
        listener.listen()
        assert privileges.drop_privileges("nobody") is True
        assert os.getresuid() == (nobody.pw_uid,) * 3
        assert os.getresgid() == (nobody.pw_gid,) * 3
        assert 0 not in os.getgroups()
        assert os.environ["HOME"] == nobody.pw_dir
        assert os.environ["USER"] == os.environ["LOGNAME"] == "nobody"
        assert "SSH_AUTH_SOCK" not in os.environ
        bit = 1 << privileges.CAP_NET_BIND_SERVICE
        caps = capability_sets()
        assert (caps["CapEff"], caps["CapPrm"], caps["CapAmb"]) == (bit, bit, bit)
        assert privileges.can_bind_privileged(53)

        with socket.socket() as client:
            client.settimeout(2)
            client.connect(listener.getsockname())
            served, _ = listener.accept()
            client.sendall(b"ping")
            assert served.recv(4) == b"ping"
            served.close()
        bind_privileged().close()
        bind_privileged(socket.SOCK_DGRAM).close()

        assert (readable_dir / "public").read_text() == "anyone"
        with pytest.raises(PermissionError):
            (readable_dir / "secret").read_text()
        with pytest.raises(PermissionError):
            os.setuid(0)

    in_child(body)


@needs_root_linux
def test_drop_without_the_capability_cannot_bind_privileged_ports(in_child: ChildRunner) -> None:
    def body() -> None:
        assert privileges.drop_privileges("nobody", keep_bind_capability=False) is False
        assert os.getuid() == pwd.getpwnam("nobody").pw_uid
        caps = capability_sets()
        assert (caps["CapEff"], caps["CapPrm"], caps["CapAmb"]) == (0, 0, 0)
        assert not privileges.can_bind_privileged(53)
        with pytest.raises(PermissionError):
            bind_privileged()

    in_child(body)


@needs_root_linux
def test_drop_when_not_root_or_to_nobody_known_fails_clearly(in_child: ChildRunner) -> None:
    with pytest.raises(PermissionProblem, match="no such user"):
        privileges.drop_privileges("no-such-user-xyz")

    def body() -> None:
        os.setuid(pwd.getpwnam("nobody").pw_uid)
        with pytest.raises(PermissionProblem, match="not root"):
            privileges.drop_privileges("daemon")
        with pytest.raises(PermissionProblem, match="only root can"):
            privileges.target_user("daemon")

    in_child(body)
