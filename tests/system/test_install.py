"""install / uninstall under ``--root``: atomic, backed up, idempotent, and exactly undone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from blitzdns.commands import location as location_cmd
from blitzdns.commands import resolver_config
from blitzdns.config import Config
from blitzdns.errors import UsageError
from blitzdns.system import install as installer
from blitzdns.system import record as install_record
from blitzdns.system.resolvers import TARGETS, build_plan

from .conftest import PORT53_CONFIG, snapshot

ORIGINAL_RESOLV_CONF = b"# from DHCP\nsearch lan\nnameserver 192.0.2.53\noptions edns0\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small machine: /etc with a resolv.conf and an existing NetworkManager/conf.d."""
    machine = tmp_path / "machine"
    (machine / "etc" / "NetworkManager" / "conf.d").mkdir(parents=True)
    (machine / "etc" / "NetworkManager" / "conf.d" / "00-site.conf").write_text("[main]\n")
    (machine / "etc" / "resolv.conf").write_bytes(ORIGINAL_RESOLV_CONF)
    (machine / "etc" / "resolv.conf").chmod(0o644)
    (machine / "var").mkdir()
    return machine


def plan_for(config: Config, target: str, root: Path) -> installer.Plan:
    current = install_record.original_bytes(Path("/etc/resolv.conf"), root)
    return build_plan(config, target, current_resolv_conf=current)


def do_install(config: Config, target: str, root: Path) -> list[installer.Change]:
    return installer.install(plan_for(config, target, root), root, sudo_hint="blitzdns …")


@pytest.mark.parametrize("target", TARGETS)
def test_install_then_uninstall_leaves_the_tree_byte_identical(
    root: Path, port53_config: Config, target: str
) -> None:
    before = snapshot(root)
    do_install(port53_config, target, root)
    after_install = snapshot(root)
    assert after_install != before
    assert "var/lib/blitzdns/resolver-state.json" in after_install
    for item in plan_for(port53_config, target, root).files:
        written = root / item.path.lstrip("/")
        assert written.read_bytes() == item.content
        assert (written.stat().st_mode & 0o777) == item.mode

    changes, state = installer.uninstall(root, sudo_hint="blitzdns …")
    assert state is not None and state.target == target
    assert {c.path for c in changes} == {
        f.path for f in plan_for(port53_config, target, root).files
    }
    assert snapshot(root) == before


@pytest.mark.parametrize("target", TARGETS)
def test_a_second_install_changes_nothing(root: Path, port53_config: Config, target: str) -> None:
    do_install(port53_config, target, root)
    first = snapshot(root)
    inodes = {p: os.lstat(root / p).st_ino for p in first}
    mtimes = {p: os.lstat(root / p).st_mtime_ns for p in first}
    changes = do_install(port53_config, target, root)
    assert all(c.action == "unchanged" for c in changes)
    assert snapshot(root) == first
    assert {p: os.lstat(root / p).st_ino for p in first} == inodes
    assert {p: os.lstat(root / p).st_mtime_ns for p in first} == mtimes


def test_resolvconf_keeps_the_previous_nameservers_for_run(
    root: Path, port53_config: Config
) -> None:
    assert install_record.saved_upstreams(root) == ()
    do_install(port53_config, "resolvconf", root)
    assert install_record.saved_upstreams(root) == ("192.0.2.53",)
    text = (root / "etc/resolv.conf").read_text()
    assert "nameserver 192.0.2.53" not in text
    assert "search dartmouth.edu lan" in text
    # What blitzdns wrote is not what the machine had: facts and re-plans read the backup.
    assert install_record.original_bytes(Path("/etc/resolv.conf"), root) == ORIGINAL_RESOLV_CONF
    installer.uninstall(root, sudo_hint="x")
    assert install_record.saved_upstreams(root) == ()


def test_a_symlinked_resolv_conf_comes_back_as_the_same_symlink(
    root: Path, port53_config: Config
) -> None:
    stub_file = root / "run/systemd/resolve/stub-resolv.conf"
    stub_file.parent.mkdir(parents=True)
    stub_file.write_bytes(b"nameserver 127.0.0.53\nsearch corp.example\n")
    (root / "etc/resolv.conf").unlink()
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    before = snapshot(root)

    do_install(port53_config, "resolvconf", root)
    assert not (root / "etc/resolv.conf").is_symlink()
    assert install_record.saved_upstreams(root) == ("127.0.0.53",)
    assert "search dartmouth.edu corp.example" in (root / "etc/resolv.conf").read_text()

    installer.uninstall(root, sudo_hint="x")
    assert os.readlink(root / "etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    assert snapshot(root) == before


def test_switching_target_restores_what_the_new_plan_no_longer_writes(
    root: Path, port53_config: Config
) -> None:
    before = snapshot(root)
    do_install(port53_config, "systemd-resolved", root)
    assert (root / "etc/systemd/resolved.conf.d/50-blitzdns.conf").exists()
    changes = do_install(port53_config, "networkmanager", root)
    assert installer.Change("/etc/systemd/resolved.conf.d/50-blitzdns.conf", "restored") in changes
    assert not (root / "etc/systemd").exists()
    assert (root / "etc/NetworkManager/dnsmasq.d/blitzdns.conf").exists()
    installer.uninstall(root, sudo_hint="x")
    assert snapshot(root) == before


def test_uninstall_with_nothing_installed_is_harmless(root: Path) -> None:
    before = snapshot(root)
    assert installer.uninstall(root, sudo_hint="x") == ([], None)
    assert snapshot(root) == before


def test_uninstall_says_when_the_file_was_edited_after_install(
    root: Path, port53_config: Config
) -> None:
    do_install(port53_config, "resolvconf", root)
    (root / "etc/resolv.conf").write_text("nameserver 198.51.100.1\n")
    changes, _ = installer.uninstall(root, sudo_hint="x")
    assert changes == [
        installer.Change("/etc/resolv.conf", "restored (it was edited after install)")
    ]
    assert (root / "etc/resolv.conf").read_bytes() == ORIGINAL_RESOLV_CONF


CRASH_BEFORE_RENAME = """
import os, sys
from pathlib import Path
from blitzdns.config import parse_config
from blitzdns.system import install as installer
from blitzdns.system import record as install_record
from blitzdns.system.resolvers import build_plan

real_replace = os.replace
root = Path(sys.argv[1])

def crash(src, dst):
    if Path(dst) == root / "etc/resolv.conf":
        os._exit(9)          # the power goes out: no cleanup, no finally
    real_replace(src, dst)

os.replace = crash
current = install_record.original_bytes(Path("/etc/resolv.conf"), root)
plan = build_plan(parse_config(sys.argv[2]), "resolvconf", current_resolv_conf=current)
installer.install(plan, root, sudo_hint="x")
"""


def test_a_crash_between_write_and_rename_leaves_the_old_file_intact(
    root: Path, port53_config: Config
) -> None:
    before = snapshot(root)
    done = subprocess.run(
        [sys.executable, "-c", CRASH_BEFORE_RENAME, str(root), PORT53_CONFIG],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 9, done.stderr
    assert (root / "etc/resolv.conf").read_bytes() == ORIGINAL_RESOLV_CONF
    # It did crash after writing: the new file is complete beside the old one.
    beside = root / "etc/.resolv.conf.blitzdns-new"
    assert b"nameserver 127.0.0.1" in beside.read_bytes()
    # The record was written first, so the machine can be finished or undone.
    assert install_record.saved_upstreams(root) == ("192.0.2.53",)
    do_install(port53_config, "resolvconf", root)
    assert not beside.exists()
    installer.uninstall(root, sudo_hint="x")
    assert snapshot(root) == before


@pytest.fixture
def unprivileged_root() -> Iterator[Path]:
    """A root-owned tree that user ``nobody`` can read but not write."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a step as an unprivileged user")
    top = Path(tempfile.mkdtemp(prefix="blitzdns-perm-"))
    top.chmod(0o755)
    (top / "etc").mkdir(mode=0o755)
    (top / "etc/resolv.conf").write_bytes(ORIGINAL_RESOLV_CONF)
    (top / "etc/resolv.conf").chmod(0o644)
    yield top
    shutil.rmtree(top)


def test_without_permission_it_names_the_file_and_sudo_and_changes_nothing(
    unprivileged_root: Path,
) -> None:
    config_file = unprivileged_root / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    config_file.chmod(0o644)
    before = snapshot(unprivileged_root)
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    program = "from tests.system.test_install import cli_app; cli_app()"
    command = ["resolver-config", "install", "--target", "resolvconf"]
    command += ["--config", str(config_file), "--root", str(unprivileged_root)]
    done = subprocess.run(
        [*as_nobody, sys.executable, "-c", program, *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
        check=False,
        env={**os.environ, "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 1, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert f"cannot write {unprivileged_root}/etc/resolv.conf" in message
    assert "nothing was changed" in message
    assert "sudo blitzdns resolver-config install --target resolvconf" in message
    assert snapshot(unprivileged_root) == before


def cli_app() -> None:
    """The two command groups as the lead's CLI registers them, with its error edge."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.add_typer(resolver_config.app, name="resolver-config")
    app.command("location")(location_cmd.location)
    try:
        app(standalone_mode=False)
    except installer.BlitzdnsError as exc:
        print(f"blitzdns: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def test_a_corrupt_record_is_a_clear_error_not_a_traceback(
    root: Path, port53_config: Config
) -> None:
    state = root / "var/lib/blitzdns/resolver-state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    with pytest.raises(install_record.StateCorrupt, match=r"resolver-state\.json"):
        do_install(port53_config, "resolvconf", root)
    assert install_record.saved_upstreams(root) == ()


def test_a_missing_root_is_refused(tmp_path: Path, port53_config: Config) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        do_install(port53_config, "nrpt", tmp_path / "absent")
    with pytest.raises(UsageError, match="not a directory"):
        installer.uninstall(tmp_path / "absent", sudo_hint="x")
    assert not (tmp_path / "absent").exists()


def test_a_directory_where_a_file_should_be_is_refused(root: Path, split_config: Config) -> None:
    (root / "etc/systemd/resolved.conf.d/50-blitzdns.conf").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a regular file"):
        do_install(split_config, "systemd-resolved", root)


def test_require_tools_refuses_before_running_anything() -> None:
    with pytest.raises(installer.ApplyFailed, match="no-such-tool-blitzdns"):
        installer.require_tools([("true",), ("no-such-tool-blitzdns", "x")], what="reload")
    assert installer.run_commands([("true",)], what="reload") == ["true"]
    with pytest.raises(installer.ApplyFailed, match=r"false failed \(exit 1\)"):
        installer.run_commands([("false",)], what="reload")


# --------------------------------------------------------------------------- the CLI


def invoke(*args: str) -> tuple[int, str, BaseException | None]:
    app = typer.Typer()
    app.add_typer(resolver_config.app, name="resolver-config")
    result = CliRunner().invoke(app, ["resolver-config", *args])
    return result.exit_code, result.output, result.exception


def test_cli_show_prints_exactly_what_install_writes(root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    code, shown, _ = invoke(
        "show", "--target", "resolvconf", "-c", str(config_file), "--root", str(root)
    )
    assert code == 0, shown
    assert "replaces the existing file, kept in the backup" in shown
    assert "this target cannot:" in shown
    code, output, _ = invoke(
        "install", "--target", "resolvconf", "-c", str(config_file), "--root", str(root)
    )
    assert code == 0, output
    assert "replaced  /etc/resolv.conf" in output
    assert "192.0.2.53" in output
    written = (root / "etc/resolv.conf").read_text()
    assert written.rstrip("\n") in shown
    _, _, error = invoke("uninstall", "--target", "macos", "--root", str(root))
    assert isinstance(error, UsageError) and "installed target is resolvconf" in str(error)
    code, output, _ = invoke("uninstall", "--target", "resolvconf", "--root", str(root))
    assert code == 0 and "restored  /etc/resolv.conf" in output
    assert (root / "etc/resolv.conf").read_bytes() == ORIGINAL_RESOLV_CONF
    code, output, _ = invoke("uninstall", "--root", str(root))
    assert code == 0 and "nothing to undo" in output


def test_cli_nrpt_install_prints_the_powershell_lines(root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    code, output, _ = invoke(
        "install", "--target", "nrpt", "-c", str(config_file), "--root", str(root)
    )
    assert code == 0, output
    assert "run these in an elevated PowerShell" in output
    assert 'Add-DnsClientNrptRule -Namespace ".dartmouth.edu"' in output
    code, output, _ = invoke("uninstall", "--root", str(root))
    assert code == 0 and "Remove-DnsClientNrptRule" in output


def test_cli_apply_refuses_when_the_tool_is_missing_and_changes_nothing(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    before = snapshot(root)
    monkeypatch.setattr(resolver_config, "_refuse_apply_under_root", lambda root: None)
    _, _, error = invoke(
        "install", "--target", "nrpt", "-c", str(config_file), "--root", str(root), "--apply"
    )
    assert isinstance(error, installer.ApplyFailed)
    assert "--apply needs powershell" in str(error) and "nothing was changed" in str(error)
    assert snapshot(root) == before


def test_cli_refuses_apply_with_root_and_changes_nothing(root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    before = snapshot(root)
    _, _, error = invoke(
        "install", "--target", "nrpt", "-c", str(config_file), "--root", str(root), "--apply"
    )
    assert isinstance(error, UsageError) and "--root" in str(error)
    assert snapshot(root) == before


def test_cli_whole_resolver_target_off_port_53_says_so(root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text('[dns]\nlisten = ["127.0.0.1:5300"]\n')
    before = snapshot(root)
    _, _, error = invoke(
        "install", "--target", "resolvconf", "-c", str(config_file), "--root", str(root)
    )
    assert error is not None and "must listen on port 53" in str(error)
    assert snapshot(root) == before


def test_cli_auto_target_follows_the_running_resolver(root: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(PORT53_CONFIG)
    (root / "run/systemd/resolve").mkdir(parents=True)
    code, shown, _ = invoke("show", "-c", str(config_file), "--root", str(root))
    assert code == 0 and "target: systemd-resolved" in shown


def test_the_state_file_is_plain_json_a_person_can_read(root: Path, port53_config: Config) -> None:
    do_install(port53_config, "resolvconf", root)
    record = json.loads((root / "var/lib/blitzdns/resolver-state.json").read_text())
    before = record["files"]["/etc/resolv.conf"]["before"]
    assert before["kind"] == "file" and before["mode"] == 0o644
    assert (root / before["backup"].lstrip("/")).read_bytes() == ORIGINAL_RESOLV_CONF
    assert record["upstreams"] == ["192.0.2.53"]


HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_second_install_waits_for_the_first_then_says_who_holds_it(
    root: Path, port53_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Install and uninstall take one lock (say a network hook's command beside the
    user's); past the wait the refusal changes nothing and says why."""
    before = snapshot(root)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(installer, "LOCK_WAIT_S", 0.3)
        with pytest.raises(installer.Busy, match="another blitzdns is changing"):
            do_install(port53_config, "resolvconf", root)
        with pytest.raises(installer.Busy):
            installer.uninstall(root, sudo_hint="x")
        # The command holds the lock from reading the record on: it says nothing yet.
        result = CliRunner().invoke(resolver_config.app, ["uninstall", "--root", str(root)])
        assert isinstance(result.exception, installer.Busy), result.output
        assert "nothing to undo" not in result.output
        assert snapshot(root) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
    do_install(port53_config, "resolvconf", root)
    assert b"nameserver 127.0.0.1" in (root / "etc/resolv.conf").read_bytes()


def test_a_record_entry_missing_its_before_is_a_clear_error(
    root: Path, port53_config: Config
) -> None:
    do_install(port53_config, "resolvconf", root)
    record = root / "var/lib/blitzdns/resolver-state.json"
    data = json.loads(record.read_text())
    del data["files"]["/etc/resolv.conf"]["before"]
    record.write_text(json.dumps(data))
    with pytest.raises(install_record.StateCorrupt, match="without a valid 'before'"):
        installer.uninstall(root, sudo_hint="x")


def test_a_deleted_backup_is_a_clear_error(root: Path, port53_config: Config) -> None:
    do_install(port53_config, "resolvconf", root)
    shutil.rmtree(root / "var/lib/blitzdns/backup")
    with pytest.raises(install_record.StateCorrupt, match=r"backup .* is missing"):
        installer.uninstall(root, sudo_hint="x")


def test_a_file_where_a_directory_belongs_is_named(root: Path, port53_config: Config) -> None:
    shutil.rmtree(root / "etc")
    (root / "etc").write_text("not a directory\n")
    with pytest.raises(UsageError, match=r"etc is not a directory"):
        installer.install(
            build_plan(port53_config, "resolvconf", current_resolv_conf=None),
            root,
            sudo_hint="x",
        )
