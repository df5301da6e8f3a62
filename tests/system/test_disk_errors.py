"""A read-only file system or a full disk when writing a file: one line, not a traceback.

Real mounts, made inside a private mount namespace (``unshare -m``) so the machine's own
mounts never change: a read-only bind mount of the test's root, and a tmpfs of a few
pages filled to the last byte. Each case runs the same command outside the namespace as
its control, where it succeeds.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or not sys.platform.startswith("linux"),
    reason="needs root and unshare(1) for a private mount namespace",
)

ORIGINAL = b"nameserver 192.0.2.53\n"


def machine(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "machine"
    (root / "etc").mkdir(parents=True)
    (root / "etc/resolv.conf").write_bytes(ORIGINAL)
    config = tmp_path / "config.toml"
    config.write_text('[dns]\nlisten = ["127.0.0.1:53"]\n')
    return root, config


def install_argv(root: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "blitzdns", "resolver-config", "install",
        "--target", "resolvconf", "--root", str(root), "--config", str(config),
    ]  # fmt: skip


def in_private_mounts(setup: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``setup`` (shell, mounts) then ``argv`` in a new mount namespace of their own."""
    script = f"set -e; {setup}; exec {shlex.join(argv)}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_read_only_file_system_is_one_line_and_nothing_changes(tmp_path: Path) -> None:
    root, config = machine(tmp_path)
    ro = f"mount --bind {shlex.quote(str(root))} {shlex.quote(str(root))}"
    ro += f"; mount -o remount,bind,ro {shlex.quote(str(root))}"
    done = in_private_mounts(ro, install_argv(root, config))
    assert done.returncode == 1, done.stderr
    assert one_line(done.stderr) == (
        f"blitzdns: cannot write {root}/etc/resolv.conf: the file system is read-only; "
        "nothing was changed"
    )
    assert (root / "etc/resolv.conf").read_bytes() == ORIGINAL
    # The control: the same command on the same tree, writable, succeeds.
    control = subprocess.run(
        install_argv(root, config), capture_output=True, text=True, timeout=60, check=False
    )
    assert control.returncode == 0, control.stderr
    assert (root / "etc/resolv.conf").read_bytes() != ORIGINAL


def test_a_full_disk_is_one_line_and_the_original_stays(tmp_path: Path) -> None:
    root, config = machine(tmp_path)
    state = root / "var/lib/blitzdns"
    state.mkdir(parents=True)
    full = f"mount -t tmpfs -o size=16k tmpfs {shlex.quote(str(state))}"
    full += f"; dd if=/dev/zero of={shlex.quote(str(state / 'filler'))} bs=1k 2>/dev/null || true"
    done = in_private_mounts(full, install_argv(root, config))
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert line.startswith(f"blitzdns: cannot write {state}/"), line
    assert line.endswith(": no space left on the device"), line
    assert (root / "etc/resolv.conf").read_bytes() == ORIGINAL
    # The control: without the full tmpfs the same command succeeds.
    control = subprocess.run(
        install_argv(root, config), capture_output=True, text=True, timeout=60, check=False
    )
    assert control.returncode == 0, control.stderr


def test_config_init_on_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    target = tmp_path / "conf"
    target.mkdir()
    ro = f"mount --bind {shlex.quote(str(target))} {shlex.quote(str(target))}"
    ro += f"; mount -o remount,bind,ro {shlex.quote(str(target))}"
    argv = [sys.executable, "-m", "blitzdns", "config", "init", str(target / "config.toml")]
    done = in_private_mounts(ro, argv)
    assert done.returncode != 0
    assert "read-only" in one_line(done.stderr).lower()
    control = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert control.returncode == 0, control.stderr
