"""The ``blitzdns`` command line: parse, load the config, call one function per command.

Typed errors propagate to :func:`blitzdns.entry.main`, the one edge that turns them into
one line on stderr and an exit code. ``run`` has its own parser in :mod:`blitzdns.daemon`
(the entry point reaches it without importing typer); it is listed here for ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from blitzdns.commands.options import (
    ConfigOption,
    ControlSocketOption,
    JsonOption,
    LocationOption,
)
from blitzdns.effective import effective_config
from blitzdns.errors import UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="A local DNS stub and a supervised SSH tunnel for legacy cleartext services.",
)
config_app = typer.Typer(no_args_is_help=True, help="Write or show the configuration.")
app.add_typer(config_app, name="config")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run(ctx: typer.Context) -> None:
    """Start the DNS stub and the SSH tunnel and keep them running (see `run --help`)."""
    from blitzdns.daemon import run_main

    raise typer.Exit(run_main(list(ctx.args)))


@app.command()
def plan(
    config_path: ConfigOption = None,
    location: LocationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the names the stub answers, each host's mouth, and the forwards."""
    from blitzdns.plan import plan_dict, render_plan

    config = effective_config(config_path, location=location)
    if as_json:
        typer.echo(json.dumps(plan_dict(config), indent=2))
    else:
        typer.echo(render_plan(config))


@config_app.command("show")
def config_show(
    config_path: ConfigOption = None,
    location: LocationOption = None,
) -> None:
    """Print the effective configuration (preset, file and location merged) as JSON."""
    config = effective_config(config_path, location=location)
    typer.echo(json.dumps(config.to_dict(), indent=2))


@config_app.command("init")
def config_init(
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to write (default: ~/.config/blitzdns/config.toml)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting configuration file."""
    from blitzdns.config import default_config_paths
    from blitzdns.config_template import TEMPLATE

    target = path or default_config_paths()[0]
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(TEMPLATE, encoding="utf-8")
    except PermissionError:
        from blitzdns.errors import PermissionProblem

        raise PermissionProblem(
            f"cannot write {target} (permission denied); choose a path you own or use sudo"
        ) from None
    except OSError as exc:
        where = exc.filename or target
        raise UsageError(f"cannot write {target} ({where}: {exc.strerror or exc})") from None
    typer.echo(f"wrote {target}")


@app.command()
def demo(
    once: Annotated[
        bool, typer.Option("--once", help="Exit after the verdict: 0 all verified, 1 otherwise.")
    ] = False,
) -> None:
    """Run the whole job on loopback: fake servers, a throwaway gateway, the full stack."""
    from blitzdns.demo import demo_command

    raise typer.Exit(demo_command(once))


@app.command()
def check(
    config_path: ConfigOption = None,
    location: LocationOption = None,
    as_json: JsonOption = False,
    control_socket: ControlSocketOption = None,
    skip_system_resolver: Annotated[
        bool,
        typer.Option(
            "--skip-system-resolver", help="Do not test getaddrinfo (no resolver config)."
        ),
    ] = False,
) -> None:
    """Verify a running setup step by step; exit 0 only when every step holds."""
    import asyncio

    from blitzdns.check import render, run_checks, to_json
    from blitzdns.control import query_status
    from blitzdns.errors import NotRunning

    try:
        status: dict[str, object] | None = query_status(control_socket)
    except NotRunning:
        status = None
    running_at = status.get("location") if status else None
    if running_at and location in (None, "auto"):
        location = str(running_at)  # what the daemon detected is what it serves
    config = effective_config(config_path, location=location)
    steps = asyncio.run(run_checks(config, status=status, system_resolver=not skip_system_resolver))
    if as_json:
        typer.echo(json.dumps([*to_json(steps)], indent=2))
    else:
        typer.echo(render(steps))
    raise typer.Exit(0 if all(s.ok for s in steps) else 1)


@app.command()
def discover(
    user: Annotated[str, typer.Argument(help="A DND name, nickname or #uid.")],
    config_path: ConfigOption = None,
    write: Annotated[
        bool,
        typer.Option("--write", help="Record the server: protect DND, it and bulletins only."),
    ] = False,
) -> None:
    """Ask DND, through the tunnel, which BlitzMail server holds USER's mailbox."""
    import asyncio

    from blitzdns.config import find_config_file
    from blitzdns.discover import discover as run_discover
    from blitzdns.discover import write_discovery

    config = effective_config(config_path)
    found = asyncio.run(run_discover(config, user))
    where = f" (host {found.host.key}, mouth {found.host.mouth})" if found.host else ""
    typer.echo(f"{found.account.name} (uid {found.account.uid}): {found.account.blitzserv}{where}")
    if found.account.notifyserv:
        notify = found.notify_host
        shown = (
            f" (host {notify.key}, mouth {notify.mouth})"
            if notify
            else " (not in the host table; --write adds it)"
        )
        typer.echo(f"new-mail notices (NOTIFYSERV): {found.account.notifyserv}{shown}")
    if write:
        from blitzdns.config import default_config_paths

        path = find_config_file(config_path) or default_config_paths()[0]
        kept = write_discovery(config, found, path)
        typer.echo(f"wrote {path}: tunnel.hosts = {kept}; reload with `kill -HUP` or restart")


def _register_optional_commands() -> None:
    """Attach the commands whose modules live apart from this file."""
    from blitzdns.commands import guard as guard_cmd
    from blitzdns.commands import location as location_cmd
    from blitzdns.commands import resolver_config, service
    from blitzdns.control import status_command

    app.add_typer(service.app, name="service")
    app.add_typer(resolver_config.app, name="resolver-config")
    app.add_typer(guard_cmd.app, name="guard")
    app.command("location")(location_cmd.location)

    @app.command()
    def status(
        as_json: JsonOption = False,
        watch: Annotated[bool, typer.Option("--watch", help="Refresh every second.")] = False,
        control_socket: ControlSocketOption = None,
    ) -> None:
        """Show the running daemon's link, forwards and DNS counters."""
        status_command(as_json, watch, control_socket)


_register_optional_commands()
