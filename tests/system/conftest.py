"""Shared fixtures for the resolver-config and location tests."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from blitzdns.config import Config, parse_config

HERE = Path(__file__).parent
DATA = HERE / "data"
GOLDEN = HERE.parent / "golden"

#: A stub on an unprivileged port: every split-DNS target can use it.
SPLIT_CONFIG = '[dns]\nlisten = ["127.0.0.1:53535"]\n'
#: The stub on 53 (IPv4 and IPv6): the whole-resolver targets need this.
PORT53_CONFIG = '[dns]\nlisten = ["127.0.0.1:53", "[::1]:53"]\n'


@pytest.fixture
def split_config() -> Config:
    return parse_config(SPLIT_CONFIG)


@pytest.fixture
def port53_config() -> Config:
    return parse_config(PORT53_CONFIG)


def snapshot(root: Path) -> dict[str, tuple[str, object, int]]:
    """Every path under ``root``: (type, bytes or link target, permission bits)."""
    result: dict[str, tuple[str, object, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                result[key] = ("link", os.readlink(path), 0)
            elif stat.S_ISDIR(info.st_mode):
                result[key] = ("dir", None, stat.S_IMODE(info.st_mode))
            else:
                result[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return result


def need(*tools: str) -> None:
    """Skip the test (with the reason) unless every tool is installed."""
    for tool in tools:
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed")


def need_namespaces() -> None:
    """Skip unless we are root and ``unshare -m -n`` works here."""
    need("unshare", "ip")
    if os.geteuid() != 0:
        pytest.skip("namespaces need root")
    probe = subprocess.run(
        ["unshare", "-m", "-n", "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        pytest.skip(f"unshare -m -n does not work here: {probe.stderr.strip()}")


def run_in_namespace(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run tests/system/nshelper.py in a fresh mount + network namespace."""
    return subprocess.run(
        ["unshare", "-m", "-n", sys.executable, str(HERE / "nshelper.py"), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
