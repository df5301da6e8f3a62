"""``blitzdns run`` at optimization level 2 (``python -OO``): the daemon without docstrings.

A daemon keeps every module it imports for as long as it runs, and with them every
docstring of every module, class and function (~1.7 MB of the ~47 MB idle RSS, asyncssh's
the most; bench/daemon_bench.py). ``run`` never shows them: its ``--help`` is argparse text
given as arguments, and nothing on its path reads ``__doc__`` (its asserts, which ``-O``
drops too, only narrow types for mypy). A console script cannot pass ``-OO`` to its
interpreter, so ``run`` started at a lower level replaces itself first (``os.execv``: the
same process id, descriptors, environment, capabilities and user) with the same
interpreter, the same options and program, plus ``-OO``, and names itself after the
script again (``/proc/self/comm``: ``pgrep blitzdns`` finds it as before). That costs one
more interpreter start (~40 M instructions, ~10 ms), before anything else is imported
(:func:`blitzdns.entry.main`).

Only when it cannot make things worse:

* started as the ``blitzdns`` script or ``python -m blitzdns`` (``python -c`` and
  in-process callers such as the tests' are left as they are: there is no program to
  start again), the script named by ``sys.argv[0]`` being the very file the interpreter
  ran (a launcher that sets ``argv[0]`` to another name is not second-guessed), and no
  trace or profile function set (``python -m pdb``, ``cProfile``, ``coverage``: they
  would not be in the new process);
* ``PYTHONOPTIMIZE`` not set (set, even to ``0``: the user's choice stands);
* the ``.opt-2.pyc`` files are there or can be written, for each place the daemon's
  modules come from (the standard library, its dependencies, this package;
  ``PYTHONPYCACHEPREFIX`` honoured): a daemon that would compile them all from source at
  every start (a read-only install run by a user, ``PYTHONDONTWRITEBYTECODE``) stays at
  its level. The first optimized start writes them, as any first start writes ``.pyc``.

If ``execv`` fails the daemon just goes on at its level.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: the first process imports nothing it does not need
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Protocol

    class Flags(Protocol):
        """The part of ``sys.flags`` that says how the interpreter was started."""

        @property
        def isolated(self) -> int: ...
        @property
        def ignore_environment(self) -> int: ...
        @property
        def no_user_site(self) -> int: ...
        @property
        def safe_path(self) -> bool: ...
        @property
        def no_site(self) -> int: ...
        @property
        def dont_write_bytecode(self) -> int: ...
        @property
        def verbose(self) -> int: ...
        @property
        def bytes_warning(self) -> int: ...
        @property
        def optimize(self) -> int: ...


#: One top-level module from each place the daemon's code comes from: the standard
#: library, the dependencies (possibly split between system and user directories), this
#: package and its tunnel package (possibly an editable source tree).
SOURCES = ("asyncio", "asyncssh", "cryptography", "dnslib", "uvloop", "blitzdns", "tunnel")


def interpreter_options(
    flags: Flags,
    xoptions: Mapping[str, str | bool],
    warnoptions: Sequence[str],
    *,
    unbuffered: bool = False,
) -> list[str]:
    """The command-line options that start an interpreter as this one was started (the
    environment is inherited as it is), at optimization level 2. ``unbuffered``: ``-u``
    (not in ``sys.flags``: seen by the caller in its standard output's binary layer)."""
    options = ["-OO"]
    options += ["-u"] if unbuffered else []
    if flags.isolated:
        options.append("-I")  # -E, -s and -P with it
    else:
        options += ["-E"] if flags.ignore_environment else []
        options += ["-s"] if flags.no_user_site else []
        options += ["-P"] if flags.safe_path else []
    options += ["-S"] if flags.no_site else []
    options += ["-B"] if flags.dont_write_bytecode else []
    options += ["-v"] * flags.verbose + ["-b"] * flags.bytes_warning
    for name, value in xoptions.items():
        options += ["-X", name if value is True else f"{name}={value}"]
    for warning in warnoptions:
        options += ["-W", warning]
    return options


def program(main_module: str | None, argv0: str, is_file: Callable[[str], bool]) -> list[str]:
    """How this program was named on the interpreter's command line: ``-m blitzdns`` or
    the script's path; ``[]`` when it cannot be named again (``python -c``, embedded).
    ``is_file`` says whether ``argv0`` is the very file the interpreter ran
    (:func:`ran_file`): a launcher may have set ``argv0`` to another name (a shell
    wrapper's, or a bare name that a file in the working directory could answer to), and
    that must never be started as Python."""
    if main_module == "blitzdns.__main__":
        return ["-m", "blitzdns"]
    if main_module is None and argv0 and argv0 != "-c" and is_file(argv0):
        return [argv0]
    return []


def optimized_command(
    args: Sequence[str],
    *,
    executable: str,
    flags: Flags,
    environ: Mapping[str, str],
    main_module: str | None,
    argv0: str,
    xoptions: Mapping[str, str | bool],
    warnoptions: Sequence[str],
    is_file: Callable[[str], bool] = os.path.isfile,
    posix: bool = os.name == "posix",
    hooked: bool = False,
    unbuffered: bool = False,
) -> list[str] | None:
    """The command that runs ``blitzdns ARGS`` again at ``-OO``, or ``None`` to go on as
    is (already optimized, optimization chosen by the environment, no way to start the
    same program again, or not POSIX: Windows's ``execv`` starts another process and ends
    this one, which a service manager would see as the daemon exiting; ``hooked``: a
    trace or profile function is set, by a debugger, profiler or coverage tool that ran
    the program and would not be in the new one). Whether the bytecode can be cached is
    checked apart (:func:`bytecode_cache_usable`)."""
    if flags.optimize >= 2 or "PYTHONOPTIMIZE" in environ or not executable or not posix:
        return None
    named = program(main_module, argv0, is_file) if not hooked else []
    if not named:
        return None
    options = interpreter_options(flags, xoptions, warnoptions, unbuffered=unbuffered)
    return [executable, *options, *named, *args]


def ran_file(main_file: str | None) -> Callable[[str], bool]:
    """Whether a path is the file ``main_file`` (``__main__.__file__``), the one the
    interpreter ran, by its real path."""

    def same(path: str) -> bool:
        if main_file is None or not os.path.isfile(path):
            return False
        return os.path.realpath(path) == os.path.realpath(main_file)

    return same


def writable_or_present(cached: str, dont_write: bool) -> bool:
    """Whether the bytecode file ``cached`` is there, or this process may create it (its
    nearest existing directory is writable)."""
    if os.path.exists(cached):
        return True
    if dont_write:
        return False
    directory = os.path.dirname(os.path.abspath(cached))
    while not os.path.lexists(directory):
        directory = os.path.dirname(directory)  # ends at "/", which exists
    effective = os.access in os.supports_effective_ids  # as a write would be checked
    return os.path.isdir(directory) and os.access(directory, os.W_OK, effective_ids=effective)


def bytecode_cache_usable(modules: Sequence[str] = SOURCES) -> bool:
    """Whether each of ``modules`` has its ``.opt-2.pyc`` or could write it (a module not
    found, or not from a source file, does not count)."""
    # importlib.util's own cache_from_source and importlib.machinery's PathFinder, from
    # the module they are defined in: loaded with the interpreter, where importlib.util
    # would first load ~4 ms of modules (contextlib, functools, ...) this process drops.
    try:
        import _frozen_importlib_external as external  # noqa: PLC0415
    except ImportError:  # not CPython
        return False
    for name in modules:
        spec = external.PathFinder.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            continue
        cached = external.cache_from_source(origin, optimization=2)
        if not writable_or_present(cached, bool(sys.dont_write_bytecode)):
            return False
    return True


def keep_name(argv0: str, comm: str = "/proc/self/comm") -> None:
    """Name the process after its script again (``blitzdns``, as the kernel named it when
    the script was started by its ``#!`` line) once it runs as ``python -OO SCRIPT``, for
    ``pgrep``, ``top`` and ``killall``. Linux only; nothing elsewhere."""
    name = os.path.basename(argv0)[:15]
    try:
        with open(comm) as file:
            if file.read().rstrip("\n") == name:
                return
        with open(comm, "w") as file:
            file.write(name)
    except OSError:
        pass


def run_optimized(args: Sequence[str]) -> None:
    """Start ``blitzdns ARGS`` again at ``-OO`` in this process when it is worth it (see
    the module's text); returns only when it does not."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_module = getattr(spec, "name", None)
    argv0 = sys.argv[0] if sys.argv else ""
    is_file = ran_file(getattr(main, "__file__", None))
    if sys.flags.optimize >= 2:  # started again, or by hand: the script's name back
        if program(main_module, argv0, is_file)[:1] == [argv0]:
            keep_name(argv0)
        return
    command = optimized_command(
        args,
        executable=sys.executable,
        flags=sys.flags,
        environ=os.environ,
        main_module=main_module,
        argv0=argv0,
        xoptions=sys._xoptions,
        warnoptions=sys.warnoptions,
        is_file=is_file,
        hooked=sys.gettrace() is not None or sys.getprofile() is not None,
        # -u (unbuffered binary layers), unless PYTHONUNBUFFERED said so: inherited anyway
        unbuffered=type(getattr(sys.stdout, "buffer", None)).__name__ == "FileIO"
        and (bool(sys.flags.ignore_environment) or not os.environ.get("PYTHONUNBUFFERED")),
    )
    if command is None or not bytecode_cache_usable():
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execv(command[0], command)
    except OSError:
        return  # the interpreter is gone or not executable: go on at this level
