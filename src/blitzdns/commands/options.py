"""Command-line options shared by several commands, spelled and explained once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from blitzdns.effective import Flags

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: ~/.config/blitzdns/config.toml)."),
]
LocationOption = Annotated[
    str | None,
    typer.Option("--location", help="Apply this location's overrides ('auto': detect it)."),
]
RootOption = Annotated[
    Path, typer.Option("--root", help="Write under this directory instead of /.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ControlSocketOption = Annotated[
    Path | None, typer.Option("--control-socket", help="Path of the daemon's status socket.")
]
ListenOption = Annotated[
    list[str] | None,
    typer.Option(
        "--listen", metavar="ADDR:PORT", help="Where the stub listens (repeatable; as in run)."
    ),
]
UpstreamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--upstream",
        metavar="ADDR[:PORT]",
        help="Upstream resolver for other names (repeatable; as in run).",
    ),
]
GatewayOption = Annotated[
    list[str] | None,
    typer.Option(
        "--gateway",
        metavar="[USER@]HOST[:PORT]",
        help="SSH gateway (repeatable, tried in order; as in run).",
    ),
]


def flags(
    listen: list[str] | None, upstreams: list[str] | None, gateways: list[str] | None
) -> Flags:
    """The flags that win over the file and the location, as ``run`` applies them."""
    return Flags(
        listen=tuple(listen or ()),
        upstreams=tuple(upstreams or ()),
        gateways=tuple(gateways or ()),
    )
