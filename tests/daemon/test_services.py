"""Service files: systemd-analyze verify, plist round trip, exact install and uninstall."""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blitzdns.commands.service import app
from blitzdns.daemon import run_main
from blitzdns.errors import BlitzdnsError, PermissionProblem, UsageError, explain
from blitzdns.system import services
from blitzdns.system.services import Outcome, ServicePlan, Target

from .conftest import ChildRunner

PROGRAM = services.find_program()
DIRECTORIES = {Target.SYSTEMD: "etc/systemd/system", Target.LAUNCHD: "Library/LaunchDaemons"}


def plan_for(target: Target, root: Path = Path("/"), **changes: object) -> ServicePlan:
    fields: dict[str, object] = {
        "target": target,
        "program": PROGRAM,
        "config": Path("/etc/blitzdns/config.toml"),
        "user": "daemon",
        "root": root,
    }
    fields.update(changes)
    return ServicePlan(**fields)  # type: ignore[arg-type]


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every path under ``root`` with its mode and content (or link target)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            content: bytes | str = os.readlink(path)
        elif stat.S_ISDIR(mode):
            content = b""
        else:
            content = path.read_bytes()
        found[str(path.relative_to(root))] = (mode, content)
    return found


@pytest.fixture
def system_root(tmp_path: Path) -> Path:
    """A root with both service directories and a neighbour file that must survive."""
    for directory in DIRECTORIES.values():
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "etc/systemd/system/other.service").write_text("[Unit]\n")
    (tmp_path / "Library/LaunchDaemons/com.example.other.plist").write_bytes(b"<plist/>")
    return tmp_path


# --------------------------------------------------------------------------- systemd


def test_unit_says_what_it_must() -> None:
    unit = plan_for(Target.SYSTEMD).render().decode()
    lines = unit.splitlines()
    assert lines[0] == services.UNIT_MARKER
    assert f"ExecStart={PROGRAM[0]} run --config /etc/blitzdns/config.toml" in lines
    for directive in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "RestartSec=5s",
        "RestartPreventExitStatus=2",
        "User=daemon",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "RuntimeDirectory=blitzdns",
        "RuntimeDirectoryMode=0700",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=multi-user.target",
    ):
        assert directive in lines, directive
    as_root = plan_for(Target.SYSTEMD, user=None).render().decode()
    assert not any(line.startswith("User=") for line in as_root.splitlines())


def test_a_config_error_is_not_restarted_in_a_loop(tmp_path: Path) -> None:
    """systemd restarts `run` on failure, but not with the status a config error exits
    with: a broken file is not fixed by starting again every 5 s."""
    broken = tmp_path / "broken.toml"
    broken.write_text("[dns]\nttl = 'five'\n")
    with pytest.raises(BlitzdnsError) as caught:
        run_main(["--config", str(broken), "--no-tunnel"])
    told = explain(caught.value)
    assert told is not None and told.status != 0
    unit = plan_for(Target.SYSTEMD).render().decode().splitlines()
    assert f"RestartPreventExitStatus={told.status}" in unit


def test_exec_start_quoting() -> None:
    assert services.systemd_quote("/usr/bin/blitzdns") == "/usr/bin/blitzdns"
    assert services.systemd_quote("/etc/my dir/100%.toml") == '"/etc/my dir/100%%.toml"'
    assert services.systemd_quote("$HOME") == "$$HOME"
    assert services.systemd_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert services.systemd_quote(";") == '";"'


def systemd_analyze_verify(unit_text: str, directory: Path) -> list[str]:
    """Problems systemd-analyze reports about the unit (it exits 0 on unknown keys)."""
    unit = directory / services.UNIT_NAME
    unit.write_text(unit_text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    noise = ("Special user",)
    return [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and not any(n in line for n in noise)
    ] + ([f"exit status {result.returncode}"] if result.returncode else [])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    odd_config = Path("/etc/blitz dns/100% sure.toml")
    unit = plan_for(Target.SYSTEMD, config=odd_config).render().decode()
    assert systemd_analyze_verify(unit, tmp_path) == []
    broken = unit.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    assert any("Unknown key" in p for p in systemd_analyze_verify(broken, tmp_path))


# --------------------------------------------------------------------------- launchd


def test_plist_round_trip() -> None:
    plan = plan_for(Target.LAUNCHD, user="jsmith")
    document = plistlib.loads(plan.render())
    assert document == {
        "Label": "io.github.blitzdns",
        "ProgramArguments": [
            *PROGRAM,
            "run",
            "--config",
            "/etc/blitzdns/config.toml",
            "--user",
            "jsmith",
        ],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": "/Library/Logs/blitzdns.log",
        "StandardErrorPath": "/Library/Logs/blitzdns.log",
    }
    assert plistlib.dumps(document, fmt=plistlib.FMT_XML) == plan.render()
    assert plan.relative_path == Path("Library/LaunchDaemons/io.github.blitzdns.plist")


@pytest.mark.skipif(shutil.which("plutil") is None, reason="plutil (macOS) not here")
def test_plutil_lint_accepts_the_plist(tmp_path: Path) -> None:
    path = tmp_path / "io.github.blitzdns.plist"
    path.write_bytes(plan_for(Target.LAUNCHD).render())
    subprocess.run(["plutil", "-lint", str(path)], check=True, timeout=30)


# --------------------------------------------------------------------------- install


@pytest.mark.parametrize("target", list(Target))
def test_install_then_uninstall_leaves_the_tree_as_it_was(
    system_root: Path, target: Target
) -> None:
    before = tree(system_root)
    plan = plan_for(target, system_root)
    assert services.install(plan) is Outcome.WROTE
    assert plan.path.read_bytes() == plan.render()
    assert stat.S_IMODE(plan.path.stat().st_mode) == 0o644
    assert set(tree(system_root)) - set(before) == {str(plan.relative_path)}
    inode = plan.path.stat().st_ino
    assert services.install(plan) is Outcome.UNCHANGED
    assert plan.path.stat().st_ino == inode
    assert services.uninstall(plan) is Outcome.REMOVED
    assert tree(system_root) == before
    assert services.uninstall(plan) is Outcome.ABSENT
    assert tree(system_root) == before


@pytest.mark.parametrize("target", list(Target))
def test_an_older_version_of_ours_is_replaced(system_root: Path, target: Target) -> None:
    services.install(plan_for(target, system_root, user="daemon"))
    newer = plan_for(target, system_root, user="bin")
    assert services.install(newer) is Outcome.REPLACED
    assert newer.path.read_bytes() == newer.render()
    assert [p.name for p in newer.path.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("target", list(Target))
def test_a_foreign_file_is_never_overwritten_or_removed(system_root: Path, target: Target) -> None:
    plan = plan_for(target, system_root)
    plan.path.write_bytes(b"mine, not blitzdns's\n")
    before = tree(system_root)
    with pytest.raises(UsageError, match="not written by blitzdns"):
        services.install(plan)
    with pytest.raises(UsageError, match="not written by blitzdns"):
        services.uninstall(plan)
    assert tree(system_root) == before


def test_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        services.install(plan_for(Target.SYSTEMD, tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_uninstall_refuses_while_enabled(system_root: Path) -> None:
    plan = plan_for(Target.SYSTEMD, system_root)
    services.install(plan)
    wants = system_root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "blitzdns.service").symlink_to("/etc/systemd/system/blitzdns.service")
    with pytest.raises(UsageError, match=r"still enabled .* disable --now blitzdns"):
        services.uninstall(plan)
    assert plan.path.exists()


@pytest.fixture
def locked_root() -> Iterator[Path]:
    """A root whose service directory only root may write (anyone may read)."""
    root = Path(tempfile.mkdtemp(prefix="blitzdns-svc-"))
    (root / "etc/systemd/system").mkdir(parents=True)
    for directory in (root, root / "etc", root / "etc/systemd", root / "etc/systemd/system"):
        directory.chmod(0o755)
    yield root
    shutil.rmtree(root)


def test_no_permission_names_the_path_and_sudo(locked_root: Path, in_child: ChildRunner) -> None:
    plan = plan_for(Target.SYSTEMD, locked_root)
    expected = (
        f"cannot install {plan.path} (permission denied): "
        f"run `sudo blitzdns service install --target systemd --root {locked_root} "
        "--user daemon --config /etc/blitzdns/config.toml`"
    )

    def body() -> None:
        with pytest.raises(PermissionProblem) as caught:
            services.install(plan)
        assert str(caught.value) == expected
        assert not plan.path.exists()

    if os.geteuid() == 0:
        services.install(plan)
        plan.path.unlink()

        def as_nobody() -> None:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            body()

        in_child(as_nobody)
    else:
        (locked_root / "etc/systemd/system").chmod(0o555)
        body()


# --------------------------------------------------------------------------- choices


def test_choose_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "daemon")
    assert services.choose_user(None) == "daemon"
    assert services.choose_user("bin") == "bin"
    assert services.choose_user("root") is None
    assert services.choose_user("jsmith", check_exists=False) == "jsmith"
    with pytest.raises(UsageError, match="no such user"):
        services.choose_user("no-such-user-xyz")
    with pytest.raises(UsageError, match="not a valid user name"):
        services.choose_user("bad name", check_exists=False)
    with pytest.raises(UsageError, match="not a valid user name") as info:
        services.choose_user("alice\n", check_exists=False)  # $ matched before the newline
    assert "\n" not in str(info.value)
    monkeypatch.delenv("SUDO_USER")
    me = pwd.getpwuid(os.getuid()).pw_name
    assert services.choose_user(None) == (None if me == "root" else me)


def test_find_program_is_an_executable_blitzdns() -> None:
    assert Path(PROGRAM[0]).is_absolute()
    assert len(PROGRAM) == 1
    assert PROGRAM[0].endswith("/blitzdns")
    assert os.access(PROGRAM[0], os.X_OK)


# --------------------------------------------------------------------------- the command


def test_service_command_show_install_uninstall(system_root: Path) -> None:
    runner = CliRunner()
    common = ["--root", str(system_root), "--user", "daemon", "--config", "/etc/b.toml"]
    where = ["--root", str(system_root)]  # all uninstall takes: it offers no flag it ignores
    before = tree(system_root)

    shown = runner.invoke(app, ["show", "--target", "systemd", *common])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(services.UNIT_MARKER)
    assert "run --config /etc/b.toml" in shown.stdout
    assert tree(system_root) == before

    # The unit's config check runs first: its file must be there (under --root) and load.
    refused = runner.invoke(app, ["install", "--target", "systemd", *common])
    assert "not writing" in str(refused.exception) and tree(system_root) == before
    (system_root / "etc/b.toml").write_text('[tunnel]\ngateways = ["jsmith@gw.example.org"]\n')
    before = tree(system_root)
    installed = runner.invoke(app, ["install", "--target", "systemd", *common])
    assert installed.exit_code == 0, installed.output
    unit = system_root / "etc/systemd/system/blitzdns.service"
    assert installed.stdout.splitlines()[0] == f"wrote {unit}"
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert (
        f"start it: {sudo}systemctl daemon-reload && {sudo}systemctl enable --now blitzdns"
        in installed.stdout
    )
    again = runner.invoke(app, ["install", "--target", "systemd", *common])
    assert "already up to date" in again.stdout

    assert runner.invoke(app, ["uninstall", "--target", "systemd", *common]).exit_code == 2
    removed = runner.invoke(app, ["uninstall", "--target", "systemd", *where])
    assert removed.exit_code == 0, removed.output
    assert removed.stdout.splitlines()[0] == f"removed {unit}"
    assert tree(system_root) == before
    nothing = runner.invoke(app, ["uninstall", "--target", "systemd", *where])
    assert nothing.exit_code == 0 and "nothing to remove" in nothing.stdout

    launchd = runner.invoke(app, ["install", "--target", "launchd", *common])
    assert "launchctl bootstrap system /Library/LaunchDaemons/io.github.blitzdns.plist" in (
        launchd.stdout
    )
    runner.invoke(app, ["uninstall", "--target", "launchd", *where])
    assert tree(system_root) == before

    bad = runner.invoke(app, ["install", "--target", "upstart", *common])
    assert bad.exit_code == 2
