"""``blitzdns service show|install|uninstall``: the systemd unit or launchd plist.

A thin layer over :mod:`blitzdns.system.services`: parse the flags, make the plan, print.
Errors are the package's typed errors; the CLI turns them into one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

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
RootOption = Annotated[
    Path, typer.Option("--root", help="Write under this directory instead of /.")
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


def _show(plan: services.ServicePlan) -> None:
    """Print the file install would write, and where."""
    typer.echo(f"# {plan.path}", err=True)
    typer.echo(plan.render().decode(), nl=False)


def _install(plan: services.ServicePlan) -> None:
    """Write the service file (atomically; again is a no-op)."""
    outcome = services.install(plan)
    said = {
        Outcome.WROTE: f"wrote {plan.path}",
        Outcome.REPLACED: f"updated {plan.path}",
        Outcome.UNCHANGED: f"{plan.path} is already up to date",
    }
    typer.echo(said[outcome])
    live_config = plan.config if plan.root == Path("/") else None
    if live_config is not None and not live_config.is_file():
        typer.echo(
            f"note: {live_config} does not exist yet; `blitzdns config init` writes a "
            "starting file",
            err=True,
        )
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
