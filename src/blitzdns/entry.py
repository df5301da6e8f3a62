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

        status = app(args=args, prog_name="blitzdns", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)
    except BlitzdnsError as exc:
        print(f"blitzdns: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        from tunnel.errors import TunnelError

        if isinstance(exc, TunnelError):
            print(f"blitzdns: {exc}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 1))
        usage = usage_error_line(exc)
        if usage is None:
            raise
        if usage:
            print(usage, file=sys.stderr)
        sys.exit(2)


def usage_error_line(exc: BaseException) -> str | None:
    """One line for a command-line mistake the typer (click) parser raised, as ``run``'s
    own parser words it; ``None`` for anything else.

    Only the command line's errors are recognised (click's ``UsageError`` family, found by
    its ``ctx`` and ``format_message``), so a bug elsewhere still shows its traceback. A
    command group called without a subcommand has printed its help already: ``""``.
    """
    import typer

    if isinstance(exc, typer.Abort):
        return "blitzdns: aborted"
    ctx = getattr(exc, "ctx", None)
    format_message = getattr(exc, "format_message", None)
    if ctx is None or format_message is None or getattr(exc, "exit_code", None) != 2:
        return None
    message = str(format_message())
    if not message:
        return ""
    path = str(ctx.command_path)
    where = path.partition(" ")[2]
    prefix = f"blitzdns: {where}: " if where else "blitzdns: "
    return f"{prefix}{message} (see `{path} --help`)"
