"""The ``blitzdns`` command line: parse, load the config, call one function per command.

Typed errors propagate to :func:`blitzdns.entry.main`, the one edge that turns them into
one line on stderr and an exit code. ``run`` has its own parser in :mod:`blitzdns.daemon`
(the entry point reaches it without importing typer); it is listed here for ``--help``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from blitzdns.commands.options import (
    ConfigOption,
    ControlSocketOption,
    GatewayOption,
    JsonOption,
    ListenOption,
    LocationOption,
    UpstreamOption,
    flags,
)
from blitzdns.config import Config
from blitzdns.effective import effective_config
from blitzdns.errors import BlitzdnsError, UsageError

SUMMARY = "A local DNS stub and a supervised SSH tunnel for legacy cleartext services."

app = typer.Typer(
    # --install-completion / --show-completion: typer's own, for bash, zsh, fish, PowerShell.
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # -h and --help on every command (subcommands inherit the names from this context).
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"{SUMMARY}\n\n`blitzdns help TOPIC` shows a command's help, `help exit-codes` "
    "the exit codes, `help all` every page; `help --man` writes them as a man page.",
)
config_app = typer.Typer(no_args_is_help=True, help="Write or show the configuration.")
app.add_typer(config_app, name="config")


def _version(shown: bool) -> None:
    if shown:
        from blitzdns import __version__

        typer.echo(f"blitzdns {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    pass


def command() -> Any:
    """The click command tree typer builds from :data:`app`, with this project's help
    pages (:mod:`blitzdns.help`) on every command."""
    from blitzdns.help import style

    return style(typer.main.get_command(app))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def run(ctx: typer.Context) -> None:
    """Start the DNS stub and the SSH tunnel and keep them running."""
    from blitzdns.daemon import run_main

    raise typer.Exit(run_main(list(ctx.args)))


def flagged_config(
    config_path: Path | None,
    location: str | None,
    listen: list[str] | None,
    upstream: list[str] | None,
    gateway: list[str] | None,
) -> Config:
    """The config as `run` would apply these options: the file, the location, the flags."""
    return effective_config(config_path, location=location, flags=flags(listen, upstream, gateway))


@app.command()
def plan(
    config_path: ConfigOption = None,
    location: LocationOption = None,
    gateway: GatewayOption = None,
    upstream: UpstreamOption = None,
    listen: ListenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the names the stub answers, each host's mouth, and the forwards.

    The flags change it as they change `run`: the file, then the location, then the flags.
    """
    from blitzdns.plan import plan_dict, render_plan

    config = flagged_config(config_path, location, listen, upstream, gateway)
    if as_json:
        typer.echo(json.dumps(plan_dict(config), indent=2))
    else:
        typer.echo(render_plan(config))


@config_app.command("show")
def config_show(
    config_path: ConfigOption = None,
    location: LocationOption = None,
    gateway: GatewayOption = None,
    upstream: UpstreamOption = None,
    listen: ListenOption = None,
) -> None:
    """Print the effective configuration as JSON: the preset and the file, then the
    location, then the flags (as `run` applies them)."""
    config = flagged_config(config_path, location, listen, upstream, gateway)
    typer.echo(json.dumps(config.to_dict(), indent=2))


@config_app.command("init")
def config_init(
    path: Annotated[
        Path | None,
        typer.Argument(help="Where to write (default: ~/.config/blitzdns/config.toml)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting configuration file.

    The default file's directories are made as needed; a PATH given may add its own
    directory only (a chain of missing ones is a typo, not something to invent).
    """
    from blitzdns.config import default_config_paths
    from blitzdns.config_template import TEMPLATE

    target = path or default_config_paths()[0]
    if target.exists() and not force:
        raise UsageError(f"{target} exists; pass --force to overwrite it")
    if path is not None and not target.parent.exists() and not target.parent.parent.is_dir():
        raise UsageError(f"cannot write {target}: no such directory {target.parent.parent}")
    try:
        target.parent.mkdir(parents=path is None, exist_ok=True)
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


@config_app.command("check")
def config_check(config_path: ConfigOption = None) -> None:
    """Load and validate the config as `run` would, and say which file that is.

    Exit 0 when it loads, 2 (one line naming the file and the key) when it does not: the
    check `service install` runs, as the service's user, before it writes the unit.
    """
    from blitzdns.config import find_config_file

    found = find_config_file(config_path)
    config = effective_config(found, search=False)
    where = str(found) if found else f"no config file; the built-in {config.preset!r} preset"
    gateways = ", ".join(config.tunnel.gateways) or "none (run needs --gateway or --no-tunnel)"
    typer.echo(f"{where}: ok, {len(config.hosts)} protected hosts, gateways: {gateways}")
    from blitzdns.plan import notes

    for note in notes(config):
        typer.echo(f"note: {note}")


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
    """Verify a running setup layer by layer; stop at the first that fails, say what to do.

    The running daemon's listen addresses, mouths and config file are what is checked (its
    control socket says them); the config's own when no daemon answers. Exit 0 only when
    every step holds.
    """
    import asyncio

    from blitzdns.check import render, run_checks, to_json

    status, config = daemon_and_config(config_path, location, control_socket)
    steps = asyncio.run(
        run_checks(
            config,
            status=status,
            system_resolver=not skip_system_resolver,
            control_socket=control_socket,
        )
    )
    if as_json:
        typer.echo(json.dumps([*to_json(steps)], indent=2))
    else:
        typer.echo(render(steps))
    raise typer.Exit(0 if all(s.ok for s in steps) else 1)


def daemon_and_config(
    config_path: Path | None, location: str | None, control_socket: Path | None
) -> tuple[dict[str, object] | None, Config]:
    """The running daemon's snapshot (None when none answers) and the config it runs: its
    own file and location unless ``-c`` or ``--location`` say otherwise."""
    from blitzdns.control import query_status
    from blitzdns.errors import NotRunning

    try:
        status: dict[str, object] | None = query_status(control_socket)
    except NotRunning:
        status = None
    if status is not None:
        if config_path is None and status.get("config"):
            config_path = Path(str(status["config"]))
        if location in (None, "auto") and status.get("location"):
            location = str(status["location"])  # what the daemon detected is what it serves
    return status, effective_config(config_path, location=location)


@app.command()
def discover(
    user: Annotated[str, typer.Argument(metavar="USER", help="A DND name, nickname or #uid.")],
    config_path: ConfigOption = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Record the server: protect DND, it and bulletins only; reload the daemon.",
        ),
    ] = False,
    control_socket: ControlSocketOption = None,
) -> None:
    """Ask DND, through the tunnel, which BlitzMail server holds USER's mailbox.

    A running daemon's config file and location are used (its control socket says them)
    unless -c names another file.
    """
    import asyncio

    from blitzdns.discover import discover as run_discover

    status, config = daemon_and_config(config_path, None, control_socket)
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
        for line in write_and_reload(config, found, status, control_socket):
            typer.echo(line)


def write_and_reload(
    config: Config, found: Any, status: dict[str, object] | None, control_socket: Path | None
) -> list[str]:
    """``discover --write``: record the server, then have the running daemon re-read the
    file through its control socket (what ``kill -HUP PID`` does, with an answer)."""
    from blitzdns.config import default_config_paths, find_config_file
    from blitzdns.control import ControlError, request_reload
    from blitzdns.discover import write_discovery

    path = config.source or find_config_file(None) or default_config_paths()[0]
    before = path.read_bytes() if path.is_file() else None
    kept = write_discovery(config, found, path)
    if path.is_file() and path.read_bytes() == before:
        return [f"{path} already has tunnel.hosts = {kept}; nothing written"]
    lines = [f"wrote {path}: tunnel.hosts = {kept}"]
    if status is None:
        return [*lines, "no daemon runs; `blitzdns run` will use it"]
    pid = status.get("pid")
    if status.get("config") != str(path):
        return [*lines, f"the running daemon (pid {pid}) reads {status.get('config')}, not it"]
    try:
        request_reload(control_socket)
    except (ControlError, BlitzdnsError) as exc:
        return [*lines, f"the daemon (pid {pid}) did not reload ({exc}); `kill -HUP {pid}`"]
    return [*lines, f"reloaded the running daemon (pid {pid})"]


def _register_optional_commands() -> None:
    """Attach the commands whose modules live apart from this file."""
    from blitzdns.commands import guard as guard_cmd
    from blitzdns.commands import location as location_cmd
    from blitzdns.commands import resolver_config, service
    from blitzdns.control import status_main

    app.add_typer(service.app, name="service")
    app.add_typer(resolver_config.app, name="resolver-config")
    app.add_typer(guard_cmd.app, name="guard")
    app.command("location")(location_cmd.location)

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
        help="Show the running daemon's link, forwards and DNS counters.",
    )
    def status(ctx: typer.Context) -> None:
        # Listed here; the entry point runs it without typer (blitzdns.argv says why).
        raise typer.Exit(status_main(list(ctx.args)))


_register_optional_commands()


@app.command("help")
def help_topic(
    ctx: typer.Context,
    topic: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TOPIC",
            help="A command (`status`, `resolver-config install`), `exit-codes`, or `all`.",
        ),
    ] = None,
    man: Annotated[
        bool, typer.Option("--man", help="Write every page as a man page (roff) instead.")
    ] = False,
) -> None:
    """Show the help of a command, the exit codes, or every page; all generated from the
    commands themselves (`blitzdns help --man > blitzdns.1` makes the man page)."""
    from blitzdns import __version__
    from blitzdns.help import man_page

    root = ctx.find_root()
    pages = help_pages(root)
    if man:
        typer.echo(man_page(pages, __version__, SUMMARY), nl=False)
        return
    wanted = " ".join(["blitzdns", *(topic or [])])
    if topic in (["all"],):
        typer.echo("\n".join(text for _, text in pages), nl=False)
        return
    found = dict(pages).get(wanted)
    if found is None:
        known = ", ".join(path.partition(" ")[2] for path, _ in pages[1:])
        raise UsageError(f"help: no topic {' '.join(topic or [])!r}; topics: {known}")
    typer.echo(found, nl=False)


def help_pages(root: Any) -> list[tuple[str, str]]:
    """``(command path, page)`` for the whole tree, ``run``'s page and the exit codes."""
    from blitzdns.control import status_parser
    from blitzdns.daemon import run_parser
    from blitzdns.help import parser_page, walk

    pages = []
    for cmd, ctx in walk(root.command, root):
        if ctx.command_path == "blitzdns run":
            pages.append((ctx.command_path, parser_page(run_parser())))
        elif ctx.command_path == "blitzdns status":
            pages.append((ctx.command_path, parser_page(status_parser())))
        else:
            pages.append((ctx.command_path, cmd.get_help(ctx) + "\n"))
    return [*pages, ("blitzdns exit-codes", exit_codes_page())]


def exit_codes_page() -> str:
    """The exit codes, from the error classes and the status command's table."""
    from blitzdns import errors
    from blitzdns.control import STATUS_EXIT_CODES
    from blitzdns.help import page

    def tree(cls: type[errors.BlitzdnsError]) -> list[type[errors.BlitzdnsError]]:
        return [cls, *(c for sub in cls.__subclasses__() for c in tree(sub))]

    by_code: dict[int, list[str]] = {}
    for cls in tree(errors.BlitzdnsError)[1:]:
        doc = " ".join((cls.__doc__ or cls.__name__).split()).replace("``", "")
        first = re.split(r"[;:(]| \(", doc)[0].strip().rstrip(".")
        by_code.setdefault(cls.exit_code, []).append(first[0].lower() + first[1:])
    rows = [("0", "done: what was asked holds (check: every step)")]
    rows += [(str(code), "; ".join(docs)) for code, docs in sorted(by_code.items())]
    rows.append(("130", "interrupted (Ctrl-C)"))
    status = [(str(code), meaning) for code, meaning in STATUS_EXIT_CODES]
    return page(
        "blitzdns help exit-codes",
        "Every command ends with one of these; an error prints one line on stderr first.",
        [("Exit codes", rows), ("blitzdns status (as systemctl is-active)", status)],
    )
