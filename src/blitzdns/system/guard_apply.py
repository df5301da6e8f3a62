"""Install and remove the leak guard: the files through :mod:`blitzdns.system.install` (the
guard's own record, the shared lock), the firewall through nftables, pfctl or PowerShell.

Used by ``blitzdns guard install|uninstall`` and by ``run`` with ``[guard] enabled``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from blitzdns.system import install as installer
from blitzdns.system import nft
from blitzdns.system.guard import GUARD_STATE_FILE, GuardPlan
from blitzdns.system.record import State, load_state

#: Lines run in this "shell" are nft scripts, run through libnftables in this process.
NFT_SHELL = ("nft",)


def detect_guard_target(platform: str = sys.platform) -> str:
    """The firewall ``auto`` means here."""
    if platform == "darwin":
        return "pf"
    if platform.startswith("win"):
        return "windows"
    return "nftables"


def _argvs(plan_shell: Sequence[str], lines: Sequence[str]) -> list[list[str]]:
    return installer.shell_commands(plan_shell, lines) if lines else []


def require_apply_tools(plan: GuardPlan) -> None:
    """Refuse ``--apply`` before anything changes when its programs are missing."""
    if tuple(plan.command_shell) != NFT_SHELL:
        installer.require_tools(
            [*_argvs(plan.command_shell, plan.commands), *plan.reload], what="apply the guard"
        )


def run_lines(shell: Sequence[str], lines: Sequence[str]) -> list[str]:
    """Run each line in ``shell`` (nft scripts in-process); one description per line run."""
    if tuple(shell) == NFT_SHELL:
        for line in lines:
            nft.run(line)
        return [f"nft {line!r}" for line in lines]
    return installer.run_commands(_argvs(shell, lines), what="apply the guard")


def load(plan: GuardPlan) -> list[str]:
    """Put ``plan``'s rules in force now (``--apply``); what was run."""
    done = []
    if plan.ruleset is not None:
        nft.run(plan.ruleset)
        done.append(f"nft -f {plan.files[0].path} (one transaction)")
    # pf: load the rules (pfctl -f) before enabling pf (pfctl -E).
    done += installer.run_commands(plan.reload, what="reload the firewall")
    done += run_lines(plan.command_shell, plan.commands)
    return done


def install(
    plan: GuardPlan, root: Path, *, apply: bool, sudo_hint: str
) -> tuple[list[installer.Change], list[str]]:
    """Write the guard's files (recorded, atomic, idempotent) and with ``apply`` load them."""
    with installer.locked(root):
        if apply:
            require_apply_tools(plan)
        changes = installer.install(plan, root, sudo_hint=sudo_hint, record_file=GUARD_STATE_FILE)
        ran = load(plan) if apply else []
    return changes, ran


def installed(root: Path) -> State | None:
    """The guard's install record under ``root``, or None."""
    return load_state(root, GUARD_STATE_FILE)


def uninstall(
    root: Path, *, apply: bool, sudo_hint: str
) -> tuple[list[installer.Change], State | None, list[str]]:
    """Restore every file the guard's install changed and with ``apply`` take its rules out
    of the running firewall (exactly its table, anchor or rule group)."""
    with installer.locked(root):
        state = installed(root)
        if state is None:
            return [], None, []
        if apply and tuple(state.command_shell) != NFT_SHELL:
            installer.require_tools(
                [*_argvs(state.command_shell, state.undo_commands), *state.reload],
                what="remove the guard",
            )
        changes, _ = installer.uninstall(root, sudo_hint=sudo_hint, record_file=GUARD_STATE_FILE)
        ran: list[str] = []
        if apply:
            ran += run_lines(state.command_shell, state.undo_commands)
            ran += installer.run_commands(state.reload, what="reload the firewall")
    return changes, state, ran


def nft_table_present() -> bool | None:
    """Whether ``table inet blitzdns`` is in the kernel (None: nftables not usable here)."""
    try:
        return nft.table_text("inet", "blitzdns") is not None
    except nft.NftFailed:
        return None
