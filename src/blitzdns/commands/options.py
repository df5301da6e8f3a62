"""Command-line options shared by several commands, spelled and explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: ~/.config/blitzdns/config.toml)."),
]
LocationOption = Annotated[
    str | None,
    typer.Option("--location", help="Apply this location's overrides ('auto': detect it)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ControlSocketOption = Annotated[
    Path | None, typer.Option("--control-socket", help="Path of the daemon's status socket.")
]
