"""The ``blitzdns`` console entry: the one edge where typed errors become one line and a code.

``blitzdns run`` goes straight to the daemon's own small argument parser, without
importing typer (and the pydantic it loads): a daemon left running for months should not
keep a command-line framework in memory (about 7 MB, measured by bench/daemon_bench.py).
``blitzdns status`` too, which scripts and monitors call over and over (:mod:`blitzdns.argv`).
Every other command goes through the typer app in :mod:`blitzdns.cli`.
"""

from __future__ import annotations

import gc
import sys

TYPE_CHECKING = False  # typing's would load typing before run's imports go to -OO
if TYPE_CHECKING:
    from blitzdns.errors import Told


def main(argv: list[str] | None = None) -> None:
    """Run one command; a user's mistake ends as ``blitzdns: <what and what to do>``."""
    args = sys.argv[1:] if argv is None else argv
    if argv is None and args[:1] == ["run"]:
        # The daemon without docstrings (~1.7 MB): its modules load as at -OO when that
        # is safe (blitzdns.optlevel); before anything else is imported.
        from blitzdns.optlevel import optimize_imports  # noqa: PLC0415

        optimize_imports()
    if args[:1] == ["run"]:
        # The start creates ~100k objects that live as long as the daemon (modules,
        # classes, functions) and almost no garbage: cyclic collections meanwhile only
        # re-scan them. The daemon collects again once its start is over
        # (blitzdns.daemon.end_of_start), and freezes what the start made.
        gc.disable()
        # Nor OpenSSL's hashes, and with them libcrypto (blitzdns.nohashlib); before
        # classcode, the first to import hashlib.
        from blitzdns import nohashlib  # noqa: PLC0415

        nohashlib.start()
        # The methods dataclasses writes for the daemon's classes, compiled at an
        # earlier start (blitzdns.classcode); put back once the imports are done. Before
        # blitzdns.errors, which loads the tunnel package and its 13 dataclasses (78
        # methods were compiled at every start when this came after it).
        from blitzdns import classcode  # noqa: PLC0415

        classcode.start()
        # asyncssh without its file-transfer modules (tunnel.nosftp), until the link's
        # code is loaded.
        from tunnel import lazymods, nosftp, nossl  # noqa: PLC0415

        nosftp.start()
        # Nor ssl (and libssl), which asyncio and uvloop import for TLS the daemon never
        # speaks (tunnel.nossl); before asyncio is imported. And typing_extensions, bz2
        # and lzma only if something asks them for more than their importers take
        # (tunnel.lazymods).
        nossl.start()
        lazymods.start()
    from blitzdns.errors import explain  # noqa: PLC0415  (after optimize_imports: it loads tunnel)

    try:
        if args[:1] == ["run"]:
            from blitzdns.daemon import run_main  # noqa: PLC0415  (run never loads typer)

            sys.exit(run_main(args[1:]))
        if args[:1] == ["status"]:
            from blitzdns.control import status_main  # noqa: PLC0415  (nor typer for status)

            sys.exit(status_main(args[1:]))
        from blitzdns.cli import command  # noqa: PLC0415  (nor the daemon loads the CLI)

        status = command().main(args=args, prog_name="blitzdns", standalone_mode=False)
        sys.exit(status if isinstance(status, int) else 0)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        told = explain(exc) or click_error(exc)
        if told is None:
            raise
        if told.line:
            print(f"blitzdns: {told.line}", file=sys.stderr)
        sys.exit(told.status)


def click_error(exc: BaseException) -> Told | None:
    """What to tell for an error the typer (click) layer raised; ``None`` for anything else,
    so a bug elsewhere still shows its traceback.

    Click's errors are recognised by what they carry (``format_message``, an int
    ``exit_code``). A command-line mistake (a ``UsageError``: it has a ``ctx``) is worded
    as ``run``'s own parser words it, with where to find help; a group called without its
    subcommand has printed its help already (empty line). ``Abort`` (end of input at a
    prompt) is status 1, as click gives it.
    """
    import typer  # noqa: PLC0415  (only the CLI's errors come here; run never loads it)

    from blitzdns.errors import Told  # noqa: PLC0415

    if isinstance(exc, typer.Abort):
        return Told("aborted", 1)
    format_message = getattr(exc, "format_message", None)
    status = getattr(exc, "exit_code", None)
    if format_message is None or not isinstance(status, int):
        return None
    message = str(format_message())
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":  # a group without its command: its help
        print(message.rstrip("\n"), file=sys.stderr)
        return Told("", status)
    if ctx is None or not message:
        return Told(message, status)
    path = str(ctx.command_path)
    where = path.partition(" ")[2]
    prefix = f"{where}: " if where else ""
    return Told(f"{prefix}{message} (see `{path} --help`)", status)
