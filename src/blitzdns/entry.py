"""The ``blitzdns`` console entry: the one edge where typed errors become one line and a code.

``blitzdns run`` goes straight to the daemon's own small argument parser, without
importing typer (and the pydantic it loads): a daemon left running for months should not
keep a command-line framework in memory (about 7 MB, measured by bench/daemon_bench.py).
Every other command goes through the typer app in :mod:`blitzdns.cli`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Run one command; a user's mistake ends as ``blitzdns: <what and what to do>``."""
    from blitzdns.errors import BlitzdnsError

    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["run"]:
            from blitzdns.daemon import run_main

            sys.exit(run_main(args[1:]))
        from blitzdns.cli import app

        app(args=args, prog_name="blitzdns")
    except BlitzdnsError as exc:
        print(f"blitzdns: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from tunnel.errors import TunnelError

        if not isinstance(exc, TunnelError):
            raise
        print(f"blitzdns: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
