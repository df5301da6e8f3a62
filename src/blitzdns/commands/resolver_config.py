"""``blitzdns resolver-config show|install|uninstall``: point the system resolver at the stub.

``show`` prints exactly what ``install`` would write (or run, for NRPT), plus what the target
can and cannot do for short names; ``install`` applies it atomically with backups;
``uninstall`` restores the machine byte for byte. ``--apply`` also runs the platform's
reload; without it the reload and test commands are printed. The plans come from
:mod:`blitzdns.system.resolvers`, the file work from :mod:`blitzdns.system.install`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from blitzdns.commands.options import (
    ConfigOption,
    ListenOption,
    LocationOption,
    RootOption,
    flags,
)
from blitzdns.config import Config
from blitzdns.effective import effective_config
from blitzdns.errors import UsageError
from blitzdns.system import install as installer
from blitzdns.system import record
from blitzdns.system.resolvers import RESOLV_CONF, TARGETS, Plan, build_plan

app = typer.Typer(
    no_args_is_help=True,
    help="Point the system resolver at the stub (split DNS where the platform allows), and back.",
)

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target",
        help=f"{'|'.join(TARGETS)} (default: the config's resolver target, else detected).",
    ),
]
ApplyOption = Annotated[
    bool,
    typer.Option("--apply", help="Also run the platform's reload (and NRPT's commands)."),
]


@app.command()
def show(
    config_path: ConfigOption = None,
    target: TargetOption = None,
    location: LocationOption = None,
    listen: ListenOption = None,
    root: RootOption = Path("/"),
) -> None:
    """Print exactly what install would write, and what the target can and cannot do."""
    _, plan, why = prepare(config_path, target, location, root, listen)
    typer.echo("\n".join(render_plan(plan, root, why)))


@app.command()
def install(
    config_path: ConfigOption = None,
    target: TargetOption = None,
    location: LocationOption = None,
    listen: ListenOption = None,
    root: RootOption = Path("/"),
    apply: ApplyOption = False,
) -> None:
    """Write the resolver config (atomically, with backups); --apply also reloads."""
    with installer.locked(root):
        _install(config_path, target, location, root, apply=apply, listen=listen)


def _install(
    config_path: Path | None,
    target: str | None,
    location: str | None,
    root: Path,
    *,
    apply: bool,
    listen: list[str] | None = None,
) -> None:
    config, plan, why = prepare(config_path, target, location, root, listen)
    typer.echo(f"target: {plan.target} ({why})")
    if apply:
        _refuse_apply_under_root(root)
        installer.require_tools([*_command_argvs(plan, plan.commands), *plan.reload], what="apply")
    hint = command_line("install", config_path, plan.target, location, root, apply, listen=listen)
    changes = installer.install(plan, root, sudo_hint=hint, location=config.location)
    for change in changes:
        typer.echo(str(change))
    if plan.upstreams:
        typer.echo(f"previous nameservers kept for run to forward to: {', '.join(plan.upstreams)}")
    if apply:
        for line in installer.run_commands(_command_argvs(plan, plan.commands), what="apply"):
            typer.echo(f"ran: {line}")
        for line in installer.run_commands(plan.reload, what="reload"):
            typer.echo(f"ran: {line}")
    else:
        if plan.commands:
            typer.echo("run these in an elevated PowerShell (--apply does it on Windows):")
            typer.echo("\n".join(f"  {line}" for line in plan.commands))
        typer.echo("\n".join(_next_steps(plan)))
    typer.echo("test with:\n" + "\n".join(f"  {c}" for c in plan.checks))


@app.command()
def uninstall(
    target: TargetOption = None,
    root: RootOption = Path("/"),
    apply: ApplyOption = False,
) -> None:
    """Restore every file install changed, byte for byte; harmless when nothing is installed."""
    with installer.locked(root):
        _uninstall(target, root, apply=apply)


def _uninstall(target: str | None, root: Path, *, apply: bool) -> None:
    state = record.load_state(root)
    if state is None:
        typer.echo(f"nothing to undo: no install record under {root}")
        return
    refuse_other_target(state.target, target, what="target")
    undo = [[*state.command_shell, line] for line in state.undo_commands]
    if apply:
        _refuse_apply_under_root(root)
        installer.require_tools([*undo, *state.reload], what="apply")
    hint = uninstall_line("resolver-config", root, apply)
    changes, _ = installer.uninstall(root, sudo_hint=hint)
    for change in changes:
        typer.echo(str(change))
    typer.echo(f"removed the {state.target} install record")
    if apply:
        for line in installer.run_commands(undo, what="apply"):
            typer.echo(f"ran: {line}")
        for line in installer.run_commands(state.reload, what="reload"):
            typer.echo(f"ran: {line}")
        return
    if undo:
        typer.echo("run these in an elevated PowerShell:")
        typer.echo("\n".join(f"  {line}" for line in state.undo_commands))
    if state.reload:
        typer.echo("reload with:\n" + "\n".join(f"  {shlex.join(argv)}" for argv in state.reload))


# --------------------------------------------------------------------------- shared


def prepare(
    config_path: Path | None,
    target: str | None,
    location: str | None,
    root: Path,
    listen: list[str] | None = None,
) -> tuple[Config, Plan, str]:
    """The effective config (location, then ``--listen``, as ``run`` applies them), the plan
    for the chosen target, and why that target (the flag, the config, or detection)."""
    installer.require_root(root)
    config = effective_config(config_path, location=location, flags=flags(listen, None, None))
    chosen = target or config.resolver_target
    why = "--target" if target else f"resolver target in {config.source or 'the preset'}"
    if chosen == "auto":
        chosen, why = installer.detect_target_why(root)
        why = f"detected: {why}"
    if chosen not in TARGETS:
        raise UsageError(f"--target {chosen}: expected one of {', '.join(TARGETS)}")
    current = record.original_bytes(Path(RESOLV_CONF), root) if chosen == "resolvconf" else None
    return config, build_plan(config, chosen, current_resolv_conf=current), why


def render_plan(plan: Plan, root: Path, why: str = "") -> list[str]:
    """What ``show`` prints: the files verbatim (or the commands), then what the target can do."""
    names = plan.names
    kind = "every name goes to the stub" if plan.whole_resolver else "split DNS"
    if plan.target == "nrpt":
        kind = "split DNS by namespace, stub on port 53"
    lines = [
        f"target: {plan.target} ({kind}{f'; {why}' if why else ''})",
        f"stub: {', '.join(str(e) for e in names.stub)}",
        f"domains sent to the stub: {', '.join(names.domains) or '(none)'}",
        f"short names: {', '.join(names.short) or '(none)'}",
    ]
    for item in plan.files:
        lines += ["", f"--- {item.path} ({file_status(root, item.path)}, mode {item.mode:04o})"]
        lines += item.content.decode().rstrip("\n").splitlines()
    if plan.commands:
        lines += ["", "--- commands (an elevated PowerShell runs these; --apply does it here)"]
        lines += list(plan.commands)
        lines += ["", "--- uninstall runs"]
        lines += list(plan.undo_commands)
    if plan.upstreams:
        lines += ["", f"previous nameservers, kept for run: {', '.join(plan.upstreams)}"]
    lines += ["", "this target can:"]
    lines += [f"  - {line}" for line in plan.can]
    if plan.cannot:
        lines += ["this target cannot:"]
        lines += [f"  - {line}" for line in plan.cannot]
    lines += ["", *_next_steps(plan)]
    lines += ["test with:", *(f"  {c}" for c in plan.checks)]
    return lines


def _next_steps(plan: Plan) -> list[str]:
    if plan.reload:
        return ["reload with (--apply does this):", *(f"  {line}" for line in plan.reload_lines())]
    if plan.commands:
        return ["no separate reload: the commands end with Clear-DnsClientCache"]
    return [
        "no reload needed: glibc re-reads /etc/resolv.conf when it changes; restart "
        "programs that keep their own copy (nscd, long-running daemons)"
    ]


def file_status(root: Path, system_path: str) -> str:
    path = root / system_path.lstrip("/")
    if path.is_symlink():
        return "replaces a symlink, kept in the backup"
    if path.exists():
        return "replaces the existing file, kept in the backup"
    return "new file"


def _command_argvs(plan: Plan, lines: tuple[str, ...]) -> list[list[str]]:
    return installer.shell_commands(plan.command_shell, lines) if lines else []


def _refuse_apply_under_root(root: Path) -> None:
    if root != Path("/"):
        raise UsageError(
            "--apply reloads the running system, so it cannot be combined with --root; "
            "drop one of them"
        )


def root_args(root: Path) -> list[str]:
    return [] if root == Path("/") else ["--root", str(root)]


def command_line(
    verb: str,
    config_path: Path | None,
    target: str,
    location: str | None,
    root: Path,
    apply: bool,
    *,
    group: str = "resolver-config",
    listen: list[str] | None = None,
) -> str:
    """The command to repeat under sudo (said when permission is missing)."""
    argv = ["blitzdns", group, verb, "--target", target]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    if location is not None:
        argv += ["--location", location]
    for endpoint in listen or ():
        argv += ["--listen", endpoint]
    argv += root_args(root)
    if apply:
        argv.append("--apply")
    return shlex.join(argv)


def uninstall_line(group: str, root: Path, apply: bool) -> str:
    """``uninstall`` as repeated under sudo (said when permission is missing)."""
    return shlex.join(["blitzdns", group, "uninstall", *root_args(root), *(["--apply"] * apply)])


def refuse_other_target(installed: str, target: str | None, *, what: str) -> None:
    """``uninstall --target`` names what it expects to remove: refuse another one."""
    if target is not None and target != installed:
        raise UsageError(
            f"the installed {what} is {installed}, not {target}; "
            "uninstall (without --target) undoes whatever is installed"
        )
