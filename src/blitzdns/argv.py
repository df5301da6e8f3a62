"""The argparse parser of the commands the entry point reaches without typer (``run``,
``status``): a mistake is one line, ``--help`` the page every other command has.

typer (0.29) coerces every parameter through pydantic: loading both costs a command
several times its own work (``python -X importtime -m blitzdns status``: typer, pydantic
and the CLI's modules were over 80% of the import time). ``run`` is a daemon that should
not keep a CLI framework in memory; ``status`` is what scripts and monitors call over and
over. The typer app lists both and points here (:mod:`blitzdns.cli`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from blitzdns.errors import UsageError

#: Sections of a page above its options: (title, rows of (term, text)).
Sections = Sequence[tuple[str, Sequence[tuple[str, str]]]]


class OneLineErrors(argparse.ArgumentParser):
    """A flag mistake is one line (the CLI edge prints it) and exit status 2, like typer's;
    ``--help`` is the page every other command has (:func:`blitzdns.help.parser_page`),
    with ``sections`` above its options."""

    def __init__(self, *args: Any, sections: Sections = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_help(self) -> str:
        from blitzdns.help import parser_page  # noqa: PLC0415  (only --help needs it)

        return parser_page(self)

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message} (see `{self.prog} --help`)")
