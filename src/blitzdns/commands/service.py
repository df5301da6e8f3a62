"""``blitzdns service show|install|uninstall``: the systemd unit or launchd plist.

A thin layer over :mod:`blitzdns.system.services`: parse the flags, make the plan, print.
Errors are the package's typed errors; the CLI turns them into one line and an exit code.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from blitzdns.commands.options import RootOption
from blitzdns.config import find_config_file
from blitzdns.errors import ConfigError, UsageError
from blitzdns.system import services
from blitzdns.system.services import Outcome, Target

app = typer.Typer(
    help="Write or remove the service file that starts `blitzdns run` at boot.",
    no_args_is_help=True,
)

TargetOption = Annotated[
    Target | None,
    typer.Option("--target", help="Service manager (default: this system's).", show_default=False),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        help="User the daemon runs as (default: SUDO_USER, else you; root: none).",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Config file the service runs with (default: the user's, else /etc/blitzdns).",
        show_default=False,
    ),
]


def unit_config(plan: services.ServicePlan) -> Path:
    """The config file the unit will read, as a path on this machine (under ``--root``)."""
    if plan.root == Path("/"):
        return plan.config
    return plan.root / plan.config.relative_to(plan.config.anchor)


def config_problem(plan: services.ServicePlan) -> str | None:
    """Why the unit could not start on its config (one line with the fix), else None.

    A missing file would make ``run`` exit at once and ``Restart=`` start it again and
    again; so would one the service's user cannot read, or one that does not load. The
    check is the unit's own: its program runs ``config check --config FILE``, as the
    service's user when this is the machine it is for (root only can switch users).
    """
    local = unit_config(plan)
    if not local.is_file():
        try:
            yours = find_config_file(None)
        except ConfigError:
            yours = None
        if yours is not None and yours.absolute() != local.absolute():
            copy = shlex.join(["install", "-D", "-m", "0644", str(yours), str(local)])
            return (
                f"the unit would read {local}, which does not exist; the config you use is "
                f"{yours}: copy it there (`{copy}`) or pass --config {yours}"
            )
        init = shlex.join(["blitzdns", "config", "init", str(local)])
        return f"the unit would read {local}, which does not exist: write one (`{init}`)"
    argv = [*plan.program, "config", "check", "--config", str(local)]
    switch = plan.root == Path("/") and plan.user is not None and os.geteuid() == 0
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            user=plan.user if switch else None,
            cwd="/",
        )
    except OSError as exc:
        return f"the unit's program cannot run ({shlex.join(argv)}: {exc.strerror or exc})"
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        who = f" as {plan.user}" if switch else ""
        return f"the unit's config check failed{who}: {said.removeprefix('blitzdns: ')}"
    return None


def _show(plan: services.ServicePlan) -> None:
    """Print the file install would write, and where; say which config it reads."""
    typer.echo(f"# {plan.path} (reads {plan.config})", err=True)
    problem = config_problem(plan)
    if problem is not None:
        typer.echo(f"# warning: {problem}", err=True)
    typer.echo(plan.render().decode(), nl=False)


def _install(plan: services.ServicePlan) -> None:
    """Write the service file (atomically; again is a no-op) once the unit's config check
    passes: its config exists, its user can read it, and it loads."""
    problem = config_problem(plan)
    if problem is not None:
        raise UsageError(f"not writing {plan.path}: {problem}")
    outcome = services.install(plan)
    said = {
        Outcome.WROTE: f"wrote {plan.path}",
        Outcome.REPLACED: f"updated {plan.path}",
        Outcome.UNCHANGED: f"{plan.path} is already up to date",
    }
    typer.echo(said[outcome])
    typer.echo(f"the unit reads {plan.config} (its config check passed)")
    for line in services.next_steps(plan, outcome):
        typer.echo(line)


def _uninstall(plan: services.ServicePlan) -> None:
    """Remove the service file install wrote (nothing else; harmless when absent)."""
    outcome = services.uninstall(plan)
    if outcome is Outcome.ABSENT:
        typer.echo(f"nothing to remove: {plan.path} does not exist")
        return
    typer.echo(f"removed {plan.path}")
    for line in services.next_steps(plan, outcome):
        typer.echo(line)


def _register(verb: str, action: Callable[[services.ServicePlan], None]) -> None:
    """One subcommand with the shared flags; ``action`` gets the plan they describe."""

    def command(
        target: TargetOption = None,
        root: RootOption = Path("/"),
        user: UserOption = None,
        config: ConfigOption = None,
    ) -> None:
        action(services.make_plan(target, root=root, user=user, config=config))

    command.__doc__ = action.__doc__
    app.command(verb)(command)


_register("show", _show)
_register("install", _install)


@app.command("uninstall")
def uninstall(target: TargetOption = None, root: RootOption = Path("/")) -> None:
    """Remove the service file install wrote (nothing else; harmless when absent).

    Only where it lies matters (--target, --root): the user and config it names do not.
    """
    _uninstall(services.make_plan(target, root=root))
