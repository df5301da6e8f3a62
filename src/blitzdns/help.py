"""One help style for every command, ``run`` included: plain text, at most 80 columns.

The pages are generated from the commands themselves: the typer (click) commands' options
and docstrings, and ``run``'s argparse parser (which stays apart so that the daemon never
imports typer). Nothing here is written by hand a second time: ``blitzdns help TOPIC`` and
``blitzdns help --man`` print the same pages as ``COMMAND --help``.

The layout is the classic one (``Usage:``, a description, ``Options:`` in two columns) with
every value spelled out: a flag shows no metavar, an option its value's name
(``--config FILE``), choices in full (wrapped, never cut), an argument by its name
(``USER``). No colour, no boxes, no escape sequences: the same bytes on a terminal, in a
pipe and under ``TERM=dumb``.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import textwrap
from collections.abc import Iterator, Sequence
from types import MethodType
from typing import Any

MAX_WIDTH = 80
#: The widest the first column (``-c, --config FILE``) grows before help moves below it.
TERM_COLUMN_MAX = 30

Rows = Sequence[tuple[str, str]]


def width() -> int:
    """The page width: the terminal's (``COLUMNS`` first), at most 80, at least 40."""
    columns = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return max(40, min(columns, MAX_WIDTH))


# --------------------------------------------------------------------------- the layout


def paragraphs(text: str, indent: int, page_width: int) -> list[str]:
    """``text`` wrapped paragraph by paragraph; a paragraph whose first line is ``\\b`` (as
    click marks it) keeps its line breaks."""
    lines: list[str] = []
    for block in inspect.cleandoc(text).split("\n\n"):
        if lines:
            lines.append("")
        if block.startswith("\b"):
            lines += [" " * indent + line for line in block.splitlines()[1:]]
            continue
        lines += textwrap.wrap(
            " ".join(block.split()),
            page_width - 1,
            initial_indent=" " * indent,
            subsequent_indent=" " * indent,
            break_on_hyphens=False,
        )
    return lines


def two_columns(rows: Rows, page_width: int) -> list[str]:
    """Terms on the left, help wrapped on the right; a long term puts its help below it."""
    column = min(max((len(term) for term, _ in rows), default=0), TERM_COLUMN_MAX) + 4
    lines: list[str] = []
    for term, text in rows:
        wrapped = textwrap.wrap(
            " ".join(text.split()), max(page_width - 1 - column, 20), break_on_hyphens=False
        ) or [""]
        if len(term) + 4 > column:
            lines.append(f"  {term}".rstrip())
            lines += [" " * column + line for line in wrapped]
        else:
            lines.append(f"  {term.ljust(column - 4)}  {wrapped[0]}".rstrip())
            lines += [" " * column + line for line in wrapped[1:]]
    return lines


def page(
    usage: str,
    description: str,
    sections: Sequence[tuple[str, Rows]],
    page_width: int | None = None,
) -> str:
    """A help page: the usage line, the description, then each non-empty section."""
    w = page_width or width()
    lines = textwrap.wrap(
        usage, w - 1, initial_indent="Usage: ", subsequent_indent=" " * 7, break_on_hyphens=False
    )
    if description.strip():
        lines += ["", *paragraphs(description, 2, w)]
    for title, rows in sections:
        if rows:
            lines += ["", f"{title}:", *two_columns(rows, w)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- click commands


def _metavar(param: Any) -> str:
    """What an option's value is called: its own metavar, its choices, else by its type."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.metavar:
        return f"{param.metavar}"
    kind = getattr(param, "type_descriptor", None)  # typer's, where click has ``type``
    choices = getattr(kind, "choices", None) or getattr(
        getattr(param, "type", None), "choices", None
    )
    if choices:
        return "{" + "|".join(str(getattr(c, "value", c)) for c in choices) + "}"
    longest = str(max(param.opts, key=len)).lstrip("-")
    annotation = getattr(kind, "annotation", None)
    if getattr(kind, "is_path", False):
        return "FILE" if "config" in longest else "PATH"
    if annotation in (int, float):
        return "N"
    return longest.upper().replace("-", "_")


def _default(param: Any, text: str) -> str:
    default = param.default
    if (
        not param.show_default
        or getattr(param, "is_flag", False)
        or default in (None, "", (), [])
        or "default" in text.lower()
        or callable(default)
    ):
        return ""
    return f" (default: {default})"


def option_rows(command: Any, ctx: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(argument rows, option rows) of a click command."""
    arguments, options = [], []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        text = str(getattr(param, "help", None) or "")
        if param.param_type_name == "argument":
            arguments.append((str(param.metavar or param.name.upper()), text))
            continue
        names = ", ".join(sorted([*param.opts, *param.secondary_opts], key=len))
        metavar = _metavar(param)
        if getattr(param, "multiple", False) and "repeat" not in text:
            text += " (repeatable)"
        options.append((f"{names} {metavar}".rstrip(), text + _default(param, text)))
    return arguments, options


def usage_of(command: Any, ctx: Any) -> str:
    words = [ctx.command_path]
    if any(p.param_type_name == "option" for p in command.get_params(ctx)):
        words.append("[OPTIONS]")
    for param in command.get_params(ctx):
        if param.param_type_name != "argument":
            continue
        name = str(param.metavar or param.name.upper())
        name += "..." if param.nargs != 1 else ""
        words.append(name if param.required else f"[{name}]")
    if hasattr(command, "commands"):
        words.append("COMMAND [ARGS]...")
    return " ".join(words)


def short_help(command: Any) -> str:
    """A command's line in its group's list: the first paragraph of its help, in full."""
    text = inspect.cleandoc(command.short_help or command.help or "")
    return " ".join(text.split("\n\n")[0].split())


def command_page(command: Any, ctx: Any) -> str:
    """The help page of a click command (group or not)."""
    arguments, options = option_rows(command, ctx)
    sections: list[tuple[str, Rows]] = [("Arguments", arguments), ("Options", options)]
    if hasattr(command, "commands"):
        listed = [
            (name, short_help(sub))
            for name in command.list_commands(ctx)
            if (sub := command.get_command(ctx, name)) is not None and not sub.hidden
        ]
        sections.append(("Commands", listed))
    return page(usage_of(command, ctx), command.help or "", sections)


def _format_help(self: Any, ctx: Any, formatter: Any) -> None:
    formatter.write(command_page(self, ctx))


def style(command: Any) -> Any:
    """Give ``command`` and every command below it this module's help page."""
    command.format_help = MethodType(_format_help, command)
    for sub in getattr(command, "commands", {}).values():
        style(sub)
    return command


# --------------------------------------------------------------------------- argparse (run)


def parser_page(parser: argparse.ArgumentParser) -> str:
    """The page of a command with an argparse parser (``run``, ``status``), in the same
    layout as every other: its ``sections`` (:class:`blitzdns.argv.OneLineErrors`), then
    its options."""
    rows = []
    for action in parser._actions:
        names = ", ".join(sorted(action.option_strings, key=len))
        if action.nargs == 0:
            term = names
        elif action.choices:
            term = f"{names} {{{'|'.join(str(c) for c in action.choices)}}}"
        else:
            term = f"{names} {action.metavar or action.dest.upper()}"
        rows.append((term, str(action.help or "")))
    sections = [*getattr(parser, "sections", ()), ("Options", rows)]
    return page(f"{parser.prog} [OPTIONS]", parser.description or "", sections)


# --------------------------------------------------------------------------- topics, man page


def walk(command: Any, ctx: Any) -> Iterator[tuple[Any, Any]]:
    """``(command, context)`` for ``command`` and every visible command below it."""
    yield command, ctx
    if not hasattr(command, "commands"):
        return
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            yield from walk(sub, type(ctx)(sub, info_name=name, parent=ctx))


#: Characters the help uses that an ASCII man page cannot show, in ASCII.
_ASCII = str.maketrans({"…": "...", "→": "->", "←": "<-", "—": "--", "–": "-", "×": "x"})


def roff(text: str) -> str:
    """Plain text as roff lines: backslashes escaped, a leading dot or quote made literal,
    other non-ASCII characters as ``\\[uXXXX]``."""
    out = []
    for raw in text.translate(_ASCII).splitlines():
        line = raw.replace("\\", "\\e")
        line = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in line)
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def man_page(pages: Sequence[tuple[str, str]], version: str, summary: str) -> str:
    """blitzdns(1) from the help pages (``(command path, page text)``), verbatim blocks."""
    lines = [
        f'.TH BLITZDNS 1 "" "blitzdns {version}" "User Commands"',
        ".SH NAME",
        f"blitzdns \\- {roff(summary)}",
        ".SH SYNOPSIS",
        ".B blitzdns",
        "COMMAND [OPTIONS] [ARGS]...",
    ]
    for index, (path, text) in enumerate(pages):
        if index == 0:
            lines.append(".SH DESCRIPTION")
        else:
            lines += [".SH COMMANDS"] * (index == 1) + [f".SS {roff(path)}"]
        lines += [".nf", roff(text.rstrip("\n")), ".fi"]
    return "\n".join(lines) + "\n"
