"""``blitzdns guard show|install|uninstall``: the firewall leak guard, like resolver-config.

``show`` resolves the protected names through the upstreams and prints exactly what
``install`` would write (or run); ``install`` writes it atomically under the guard's own
install record (the same machinery and lock as resolver-config); ``--apply`` also loads it
into the running firewall (nftables: one ``nft -f`` transaction). ``uninstall`` removes
exactly what install added; with ``--apply`` also the table, anchor or rule group.

``--address HOST=IP`` (repeatable) gives a host's real addresses instead of asking the
upstreams (offline, or to pin them). The firewall lives in this network namespace, so
``--apply`` goes with ``--root`` too (a test's own namespace and directory).
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from blitzdns.commands.options import ConfigOption, LocationOption, RootOption
from blitzdns.commands.resolver_config import (
    command_line,
    file_status,
    refuse_other_target,
    uninstall_line,
)
from blitzdns.config import Config, Endpoint
from blitzdns.dns.detect import detect_upstreams
from blitzdns.effective import effective_config
from blitzdns.errors import UsageError
from blitzdns.guard_refresh import resolve_all
from blitzdns.system import guard_apply, record
from blitzdns.system import install as installer
from blitzdns.system.guard import (
    GUARD_STATE_FILE,
    GUARD_TARGETS,
    PF_CONF,
    GuardPlan,
    build_guard_plan,
    guard_rules,
    usable_address,
)

app = typer.Typer(
    no_args_is_help=True,
    help="Refuse the protected services' real addresses in the firewall (a leak guard), and back.",
)

TargetOption = Annotated[
    str | None,
    typer.Option(
        "--target", help=f"{'|'.join(GUARD_TARGETS)} (default: [guard] target, else detected)."
    ),
]
ApplyOption = Annotated[
    bool, typer.Option("--apply", help="Also load the rules into the running firewall.")
]
AddressOption = Annotated[
    list[str] | None,
    typer.Option(
        "--address",
        metavar="HOST=IP",
        help="A protected host's real address (repeatable); skips asking the upstreams.",
    ),
]


@app.command()
def show(
    config_path: ConfigOption = None,
    target: TargetOption = None,
    location: LocationOption = None,
    root: RootOption = Path("/"),
    address: AddressOption = None,
) -> None:
    """Print exactly what install would write (or run), and which addresses it refuses."""
    plan = prepare(config_path, target, location, root, address or [])
    typer.echo("\n".join(render_plan(plan, root)))


@app.command()
def install(
    config_path: ConfigOption = None,
    target: TargetOption = None,
    location: LocationOption = None,
    root: RootOption = Path("/"),
    apply: ApplyOption = False,
    address: AddressOption = None,
) -> None:
    """Write the guard's rules (atomically, recorded); --apply also loads them."""
    with installer.locked(root):
        plan = prepare(config_path, target, location, root, address or [])
        hint = command_line(
            "install", config_path, plan.target, location, root, apply, group="guard"
        )
        changes, ran = guard_apply.install(plan, root, apply=apply, sudo_hint=hint)
    for change in changes:
        typer.echo(str(change))
    typer.echo(_summary(plan))
    for line in ran:
        typer.echo(f"ran: {line}")
    if not apply:
        typer.echo("load it with (--apply does this):")
        typer.echo("\n".join(f"  {line}" for line in load_lines(plan)))
    typer.echo("see it with:\n" + "\n".join(f"  {c}" for c in plan.checks))


@app.command()
def uninstall(
    target: TargetOption = None,
    root: RootOption = Path("/"),
    apply: ApplyOption = False,
) -> None:
    """Remove exactly what install added; harmless when nothing is installed."""
    with installer.locked(root):
        state = guard_apply.installed(root)
        if state is None:
            typer.echo(f"nothing to undo: no guard install record under {root}")
            return
        refuse_other_target(state.target, target, what="guard")
        hint = uninstall_line("guard", root, apply)
        changes, _, ran = guard_apply.uninstall(root, apply=apply, sudo_hint=hint)
    for change in changes:
        typer.echo(str(change))
    typer.echo(f"removed the {state.target} guard install record")
    for line in ran:
        typer.echo(f"ran: {line}")
    if not apply and (state.undo_commands or state.reload):
        typer.echo("take the rules out of the running firewall with (--apply does this):")
        lines = [*(_shell_line(state.command_shell, c) for c in state.undo_commands)]
        lines += [shlex.join(argv) for argv in state.reload]
        typer.echo("\n".join(f"  {line}" for line in lines))


# --------------------------------------------------------------------------- shared


def parse_addresses(values: Sequence[str], config: Config) -> dict[str, tuple[str, ...]]:
    """``--address HOST=IP`` values, checked against the protected hosts."""
    keys = {h.key for h in config.hosts}
    found: dict[str, list[str]] = {}
    for value in values:
        host, sep, text = value.partition("=")
        if not sep or host not in keys:
            raise UsageError(
                f"--address {value}: expected HOST=IP with HOST one of {', '.join(sorted(keys))}"
            )
        if usable_address(text) is None:
            raise UsageError(
                f"--address {value}: {text!r} is not a real address (loopback, wildcard and "
                "multicast addresses are never refused)"
            )
        found.setdefault(host, []).append(text)
    return {k: tuple(v) for k, v in found.items()}


def upstreams_for(config: Config, root: Path) -> tuple[Endpoint, ...]:
    """The resolvers a client bypassing the stub would use: the configured upstreams, else
    the system's (never the stub itself)."""
    if config.dns.upstreams:
        return config.dns.upstreams
    saved = tuple(Endpoint.parse(t) for t in record.saved_upstreams(root))
    return tuple(detect_upstreams(config.dns.listen, saved=saved))


def resolve_addresses(config: Config, root: Path) -> dict[str, tuple[str, ...]]:
    resolved = asyncio.run(resolve_all(config, upstreams_for(config, root)))
    return {key: r.addresses for key, r in resolved.items()}


def prepare(
    config_path: Path | None,
    target: str | None,
    location: str | None,
    root: Path,
    addresses: Sequence[str],
) -> GuardPlan:
    """The effective config's guard plan for the chosen target."""
    installer.require_root(root)
    config = effective_config(config_path, location=location)
    chosen = target or config.guard.target
    if chosen == "auto":
        chosen = guard_apply.detect_guard_target()
    if chosen not in GUARD_TARGETS:
        raise UsageError(f"--target {chosen}: expected one of {', '.join(GUARD_TARGETS)}")
    found = parse_addresses(addresses, config) if addresses else resolve_addresses(config, root)
    rules = guard_rules(config, found, config.guard.everywhere)
    current = (
        record.original_bytes(Path(PF_CONF), root, GUARD_STATE_FILE) if chosen == "pf" else None
    )
    return build_guard_plan(chosen, rules, current_pf_conf=current)


def _summary(plan: GuardPlan) -> str:
    rules = plan.rules
    addresses, hosts = rules.address_count, len({b.host for b in rules.blocks})
    text = (
        f"guard: {plan.target}, {addresses} real address{'es' * (addresses != 1)} of "
        f"{hosts} host{'s' * (hosts != 1)} refused"
    )
    if rules.everywhere:
        text += f"; ports refused everywhere: {', '.join(str(p.port) for p in rules.everywhere)}"
    return text


def render_plan(plan: GuardPlan, root: Path) -> list[str]:
    """What ``show`` prints: the refused addresses, the files verbatim (or the commands)."""
    rules = plan.rules
    lines = [_summary(plan)]
    for block in rules.blocks:
        lines.append(
            f"  {block.host}: {', '.join(str(a) for a in block.addresses)} "
            f"{block.proto} {', '.join(str(p) for p in block.ports)}"
        )
    if rules.unresolved:
        lines.append(
            f"  no real address known for: {', '.join(rules.unresolved)} (not refused until "
            "one is; [guard] everywhere refuses a port to every address)"
        )
    for item in plan.files:
        lines += ["", f"--- {item.path} ({file_status(root, item.path)}, mode {item.mode:04o})"]
        lines += item.content.decode().rstrip("\n").splitlines()
    if plan.commands and plan.ruleset is None:
        lines += ["", "--- commands (--apply runs these)"]
        lines += [_shell_line(plan.command_shell, c) for c in plan.commands]
    lines += ["", "--- uninstall --apply runs"]
    lines += [_shell_line(plan.command_shell, c) for c in plan.undo_commands]
    lines += [shlex.join(argv) for argv in plan.reload]
    if plan.notes:
        lines += ["", *(f"note: {n}" for n in plan.notes)]
    lines += ["", "load it with (install --apply does this):"]
    lines += [f"  {line}" for line in load_lines(plan)]
    lines += ["see it with:", *(f"  {c}" for c in plan.checks)]
    return lines


def load_lines(plan: GuardPlan) -> list[str]:
    """The commands that put the installed rules in force, as a user would type them."""
    lines = [f"nft -f {plan.files[0].path}"] if plan.ruleset is not None else []
    lines += [shlex.join(argv) for argv in plan.reload]
    lines += [_shell_line(plan.command_shell, c) for c in plan.commands]
    return lines


def _shell_line(shell: Sequence[str], line: str) -> str:
    """A recorded line as a user types it (PowerShell and sh lines are typed as they are)."""
    return f"nft {shlex.quote(line)}" if tuple(shell) == guard_apply.NFT_SHELL else line
