"""``blitzdns run`` at optimization level 2 (as ``python -OO``): the daemon without docstrings.

A daemon keeps every module it imports for as long as it runs, and with them every
docstring of every module, class and function (~1.7 MB of the ~47 MB idle RSS, asyncssh's
the most; bench/daemon_bench.py). ``run`` never shows them: its ``--help`` is argparse text
given as arguments, and nothing on its path reads ``__doc__`` (its asserts, which ``-O``
drops too, only narrow types for mypy). A console script cannot pass ``-OO`` to its
interpreter (pip writes its ``#!`` line), so :func:`optimize_imports` makes the import
system do what ``-OO`` does to every module loaded from then on, in this process: a
module's code is its ``.opt-2lines1.pyc`` (what ``python -OO`` compiles, with line-only
location tables: :data:`CACHE_LEVEL`; asyncssh's with its annotations postponed as well:
:data:`POSTPONED`), or its source compiled so and kept there. Nothing
else changes: ``sys.flags`` stays as the interpreter was started, and ``compile``/``exec``
called at run time keep the interpreter's level (``dataclasses``' generated methods have no
docstring or assert).

Until session 7 ``run`` started itself again as ``python -OO`` (``os.execv``): a second
interpreter start and the first one's imports, ~37 M instructions (callgrind), ~5 % of the
start's CPU (bench/notes/startup.md, session 8). The modules the first lines of the entry
load (``blitzdns``, ``blitzdns.entry``, this one; the interpreter's own at its start) keep
their docstrings: a few kB.

Only when it cannot make things worse (:func:`blitzdns.entry.main`: started as the
``blitzdns`` script or ``python -m blitzdns``, not an in-process caller such as the tests):

* ``PYTHONOPTIMIZE`` not set and the interpreter not started with ``-O`` (the user's
  choice stands, even ``0``);
* the ``.opt-2lines1.pyc`` files are there or can be written, for each place the daemon's
  modules come from (the standard library, its dependencies, this package;
  ``PYTHONPYCACHEPREFIX`` honoured): a daemon that would compile them all from source at
  every start (a read-only install run by a user, ``PYTHONDONTWRITEBYTECODE``) stays at
  its level. The first optimized start writes them, as any first start writes ``.pyc``.
"""

from __future__ import annotations

import os
import sys

from blitzdns import linetable

TYPE_CHECKING = False  # not typing's: the daemon's first lines import nothing they need not
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import CodeType
    from typing import Any

OPTIMIZE = 2
"""``-OO``: asserts and docstrings left out."""

CACHE_LEVEL = f"2lines{linetable.FORMAT}"
"""The bytecode files' optimization tag: level 2 with line-only location tables
(:func:`blitzdns.linetable.lines_only`: ~0.6 MB less idle heap) in their format's version,
kept as ``.opt-2lines1.pyc`` beside, not in place of, the ``.opt-2.pyc`` that ``python
-OO`` reads and writes."""

#: The tags of the files earlier formats wrote (``.opt-2lines.pyc`` before the format was
#: part of the tag): a module's are removed when its file of this format is written, since
#: nothing reads them any more (each a module's size in bytecode, left behind in every cache
#: the daemon's modules were ever compiled to).
OLDER_LEVELS = ("2lines", *(f"2lines{k}" for k in range(1, linetable.FORMAT)))

POSTPONED = frozenset({"asyncssh"})
"""Packages whose modules are compiled with their annotations postponed (PEP 563: as if
each began with ``from __future__ import annotations``). asyncssh annotates nearly every
function with ``typing`` forms and has no such line, so each ``def`` built its annotations
at import (``Optional[...]`` and the like: typing's cached ``__getitem__``, its hashing, a
dict per function): ~35 M instructions, ~6 % of the start's import work (callgrind,
bench/notes/startup.md session 10). Nothing on run's path evaluates them: asyncssh's own
``Record`` takes only their names, and it uses no ``get_type_hints``, ``singledispatch``
nor ``dataclass`` (tests/daemon/test_optlevel.py reads the installed asyncssh for any
such use). The project's own modules postpone theirs already."""

POSTPONED_LEVEL = f"{CACHE_LEVEL}pep563"
"""Their bytecode files' tag: their code is not ``-OO``'s with line-only tables (the
annotations are strings), so it is never read as, nor in place of, such a file."""


def cache_level(fullname: str) -> str:
    """The optimization tag of module ``fullname``'s bytecode file."""
    return POSTPONED_LEVEL if fullname.partition(".")[0] in POSTPONED else CACHE_LEVEL


def older_levels(level: str) -> tuple[str, ...]:
    """The tags a module whose file is now tagged ``level`` may have been cached under
    before, which nothing reads any more: :data:`OLDER_LEVELS`; for a postponed module
    (:data:`POSTPONED_LEVEL`) also their postponed variants and this format's plain file
    (written before its package was postponed)."""
    if level != POSTPONED_LEVEL:
        return OLDER_LEVELS
    return (*OLDER_LEVELS, *(f"{old}pep563" for old in OLDER_LEVELS), CACHE_LEVEL)


#: One top-level module from each place the daemon's code comes from: the standard
#: library, the dependencies (possibly split between system and user directories), this
#: package and its tunnel package (possibly an editable source tree).
SOURCES = ("asyncio", "asyncssh", "cryptography", "dnslib", "uvloop", "blitzdns", "tunnel")


def wanted(optimize: int, environ: Mapping[str, str], posix: bool = os.name == "posix") -> bool:
    """Whether to load the daemon's modules at level 2: not when the interpreter was
    started at a level of its own or ``PYTHONOPTIMIZE`` is set (even to ``0``), and on
    POSIX only (as before: elsewhere nobody measured it)."""
    return optimize == 0 and "PYTHONOPTIMIZE" not in environ and posix


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
    """Whether each of ``modules`` has its ``.opt-2lines1.pyc`` or could write it (a module not
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
        cached = external.cache_from_source(origin, optimization=cache_level(name))
        if not writable_or_present(cached, bool(sys.dont_write_bytecode)):
            return False
    return True


def level2_loader() -> type[Any] | None:
    """A ``SourceFileLoader`` whose modules are compiled at ``optimize=2`` and cached as
    ``.opt-2lines1.pyc`` (:data:`CACHE_LEVEL`; those of :data:`POSTPONED` packages with
    their annotations postponed, as ``.opt-2lines1pep563.pyc``); ``None`` where the import
    system is not CPython's (then nothing changes)."""
    external: Any = sys.modules.get("_frozen_importlib_external")  # loaded with the interpreter
    if external is None:  # not CPython
        return None
    needed = ("_classify_pyc", "_validate_timestamp_pyc", "_compile_bytecode",
              "_code_to_timestamp_pyc", "cache_from_source", "SourceFileLoader")  # fmt: skip
    if not all(hasattr(external, name) for name in needed):
        return None

    class Level2Loader(external.SourceFileLoader):  # type: ignore[misc]
        """SourceLoader.get_code (CPython 3.11-3.13) for ``-OO``'s files: a timestamp
        ``.opt-2lines1.pyc`` that matches its source is loaded, anything else (absent, stale,
        hash-based) is compiled again from the source and written back."""

        def create_module(self, spec: Any) -> None:
            """The module's ``__cached__`` names the file its code comes from."""
            if spec.origin is not None:
                level = cache_level(spec.name)
                spec.cached = external.cache_from_source(spec.origin, optimization=level)

        def get_code(self, fullname: str) -> CodeType:
            source_path = self.get_filename(fullname)
            level = cache_level(fullname)
            bytecode_path = external.cache_from_source(source_path, optimization=level)
            try:
                stats = self.path_stats(source_path)
            except OSError:
                stats = None
            if stats is not None:
                try:
                    data = self.get_data(bytecode_path)
                except OSError:
                    pass
                else:
                    details = {"name": fullname, "path": bytecode_path}
                    try:
                        if external._classify_pyc(data, fullname, details) & 0b1:
                            raise ImportError("hash-based: compiled again")
                        external._validate_timestamp_pyc(
                            data, int(stats["mtime"]), stats["size"], fullname, details
                        )
                    except (ImportError, EOFError):
                        pass
                    else:
                        code: CodeType = external._compile_bytecode(
                            memoryview(data)[16:],
                            name=fullname,
                            bytecode_path=bytecode_path,
                            source_path=source_path,
                        )
                        return code
            source = self.get_data(source_path)
            flags = 0
            if level == POSTPONED_LEVEL:
                import __future__  # noqa: PLC0415  (only to compile: a cached start never)

                flags = __future__.annotations.compiler_flag
            code = compile(
                source, source_path, "exec", flags=flags, dont_inherit=True, optimize=OPTIMIZE
            )
            code = linetable.lines_only(code)
            if stats is not None and not sys.dont_write_bytecode:
                data = external._code_to_timestamp_pyc(code, int(stats["mtime"]), len(source))
                try:  # noqa: SIM105  (contextlib is not loaded yet)
                    self._cache_bytecode(source_path, bytecode_path, data)
                except NotImplementedError:
                    pass
                # Only once this format's file is there (set_data swallows a failed write).
                for old in older_levels(level) if os.path.exists(bytecode_path) else ():
                    try:  # noqa: SIM105
                        os.unlink(external.cache_from_source(source_path, optimization=old))
                    except OSError:
                        pass
            return code

    return Level2Loader


def optimize_imports() -> bool:
    """From now on, source modules load at level 2 (see the module's text); whether it is
    in force. Replaces the standard file finder's hook in ``sys.path_hooks`` and forgets
    the finders made so far, so every directory (packages' too) gets a finder with
    :func:`level2_loader`'s loader."""
    if not wanted(sys.flags.optimize, os.environ) or not bytecode_cache_usable():
        return False
    loader = level2_loader()
    if loader is None:
        return False
    import _frozen_importlib_external as external  # noqa: PLC0415
    import _imp  # noqa: PLC0415

    hook = external.FileFinder.path_hook(
        (external.ExtensionFileLoader, _imp.extension_suffixes()),
        (loader, external.SOURCE_SUFFIXES),
        (external.SourcelessFileLoader, external.BYTECODE_SUFFIXES),
    )
    standard = [
        i
        for i, h in enumerate(sys.path_hooks)
        if getattr(h, "__name__", "") == "path_hook_for_FileFinder"
    ]
    if len(standard) != 1:
        return False  # someone else's import set-up: left as it is
    sys.path_hooks[standard[0]] = hook
    sys.path_importer_cache.clear()
    return True
