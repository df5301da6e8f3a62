"""The code of the methods :mod:`dataclasses` writes, kept from one start of ``blitzdns run``
to the next, as the interpreter keeps a module's bytecode.

Python 3.11's ``@dataclass`` writes each method it adds (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, a frozen class's ``__setattr__`` and ``__delattr__``) as source
text and compiles it with ``exec``, one at a time: about 380 compiles for the classes
``run`` loads, ~30 ms of CPU, the largest single share of the daemon's start (issue 18).
The texts are the same at every start (names only: defaults, types and fields reach the
code as arguments, never as text).

While :func:`start` is in force, ``dataclasses``'s global name ``exec`` (its one call:
``_create_fn`` on 3.11/3.12, the batch of 3.13) is :func:`_exec`: a text found in the
table is run as the code object compiled from exactly that text at an earlier start; a
text not found is compiled as ``exec`` compiles it (file name ``"<string>"``, nothing
inherited: ``dataclasses`` has no ``__future__`` import) and kept. :func:`finish` puts
``exec`` back once the imports are done (before a privilege drop, else when the start
ends) and writes the table when it is not the one this start used. The result is the code
``exec`` would have made, so classes behave exactly as before. Measured (callgrind, the
daemon's whole import set): 0.956 → 0.763 G instructions, −20%.

Meanwhile ``dataclasses``'s global name ``inspect`` is :data:`_INSPECT`, the module but for
``signature``, which raises ``ValueError`` as for a class whose signature cannot be read.
``dataclasses`` only calls it to write a docstring, ``Name(field: type, ...)``, for a
class that has none: at ``-OO`` (the daemon, :mod:`blitzdns.optlevel`) every class, 67
signatures at each start, ~11 M instructions (callgrind), more than ``-OO``'s smaller
bytecode saves. Such a class gets its name as its docstring (``dataclasses``'s own
fallback); the daemon never reads one.

The regular expressions compiled at import (~30 for ``run``: gettext's plural forms,
tomllib's grammar, logging's and textwrap's, asyncssh's; ~3 % of the start's CPU, as ``re``'s
parser and compiler are Python) go the same way: while :func:`start` is in force,
``re._compiler.compile`` (what ``re.compile`` and the module functions call on a miss of
``re``'s own cache) takes a pattern's compiled form from the table, the arguments the
compiler gave ``_sre.compile`` for exactly that pattern and flags at an earlier start (the
opcode list, group count and names), and calls ``_sre.compile`` with them: the same
``Pattern`` (``==`` compares the opcodes). A pattern not found is compiled by ``re`` as
usual and its arguments kept. Keyed by the pattern (as its type and its UTF-8 text, lone
surrogates passed: never marshal's bytes, which depend on interning), its flags and a stamp
of the compiler: ``sys.version`` exactly (``_sre.MAGIC`` and the bytecode's magic number
stay the same across patch releases whose ``re`` compiles differently: gh-106052, 3.11.5),
``sys.byteorder``, ``_sre.CODESIZE``, ``_sre.MAGIC`` and the sizes and times of ``re``'s
own ``_compiler.py``, ``_parser.py`` and ``_constants.py``; another stamp's entries are
never found, so the next table drops them. An entry of the wrong shape, or one
``_sre.compile`` refuses, is compiled again as a pattern not found. Only the thread that
started is served and recorded (``re``'s compiler is swapped module-wide while it
records), and patterns over :data:`MAX_PATTERN` characters are left to ``re``.

And ``typing``'s one ``compile``, of each string annotation a ``ForwardRef`` is made of (a
``TypedDict``'s or ``NamedTuple``'s fields under postponed annotations, ``"Name"`` in a
subscript: ~60 at each start), takes its code from the table as ``dataclasses``'s ``exec``
does (the text compiled in ``"eval"`` mode, as ``typing`` compiles it).

The table is a marshal file beside this module's bytecode (``__pycache__``, or under
``PYTHONPYCACHEPREFIX``), named with the interpreter's cache tag and optimisation level and
holding its magic number; not written with ``PYTHONDONTWRITEBYTECODE`` or where the
directory is not writable (every start then compiles, as before). Whoever can write that
directory can write the modules' ``.pyc`` files too: the same trust. A file that does not
load is ignored. Only ``run`` uses this (:func:`blitzdns.entry.main`), before its imports.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import marshal
import os
import re
import sys
import threading
import typing
from types import CodeType
from typing import Any

_re_compiler: Any = getattr(re, "_compiler", None)  # re's own compiler (3.11+), else None
_sre: Any = getattr(_re_compiler, "_sre", None)
_re_compile = getattr(_re_compiler, "compile", None) if _sre is not None else None

DIGEST_SIZE = 20
"""The table is keyed by a BLAKE2b digest of each text (160 bits: two of a few hundred
texts never share one)."""

MAX_PATTERN = 4096
"""Patterns longer than this (the guard's trie of up to 10k names) are not kept: the table
is read at every start."""

_re_stamp: bytes | None = None
"""While :func:`start` is in force: the stamp of ``re``'s compiler (see the module's
text), or ``None`` when it cannot be read (patterns are then left to ``re``)."""
_owner: int | None = None
"""The thread that called :func:`start`: the only one whose patterns are served."""

_index: dict[bytes, tuple[int, int]] | None = None
"""While :func:`start` is in force: a text's digest → where its marshalled code is in
:data:`_blob`. Code objects are made from the blob only when asked for, one at a time, as
``compile`` would make them: made all at once when the table loads, the ones dropped
after use (the outer ``__create_fn__``) would leave ~1 MB of holes among those kept."""
_blob = b""
_compiled: dict[bytes, bytes] = {}
"""What this start compiled, marshalled (digest → code)."""
_hits: list[tuple[int, int]] = []
"""The spans of :data:`_index` this start used (the index's own objects: nothing new is
made per hit that would be freed among what stays)."""


class _NoSignature:
    """:mod:`inspect` for ``dataclasses`` while :func:`start` is in force, without
    ``signature`` (see the module's text)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def signature(obj: object, /, **options: object) -> inspect.Signature:
        raise ValueError("no class signature for a docstring while blitzdns run starts")


_INSPECT = _NoSignature()


def table_path() -> str:
    """Where the table is kept: beside this module's ``.pyc``, under its cache tag."""
    pyc = importlib.util.cache_from_source(__file__)
    return pyc[: -len(".pyc")] + ".dataclasses"


def compiler_stamp() -> bytes | None:
    """What ``re``'s compiled output depends on (see the module's text)."""
    if _re_compiler is None or _sre is None:
        return None
    parts = [sys.version, sys.byteorder, str(_sre.CODESIZE), str(_sre.MAGIC)]
    try:
        folder = os.path.dirname(_re_compiler.__file__)
        for name in ("_compiler.py", "_parser.py", "_constants.py"):
            info = os.stat(os.path.join(folder, name))
            parts += [name, str(info.st_size), str(info.st_mtime_ns)]
    except (OSError, TypeError, AttributeError):
        return None
    return "\0".join(parts).encode("utf-8", "surrogatepass") + b"\0"


def start() -> None:
    """Load the table (if any) and let ``dataclasses`` run its texts through it."""
    global _index, _blob, _re_stamp, _owner
    _index, _blob = {}, b""
    _re_stamp, _owner = compiler_stamp(), threading.get_ident()
    _compiled.clear()
    _hits.clear()
    try:
        with open(table_path(), "rb") as file:
            kept = marshal.load(file)
        magic, index, blob = kept
        if magic == importlib.util.MAGIC_NUMBER and type(index) is dict and type(blob) is bytes:
            _index, _blob = index, blob
    except (OSError, ValueError, EOFError, TypeError, NotImplementedError):
        pass  # no table, or one this interpreter cannot use: compile as before
    dataclasses.exec = _exec  # type: ignore[attr-defined]
    if dataclasses.__dict__.get("inspect") is inspect:
        dataclasses.inspect = _INSPECT  # type: ignore[attr-defined]
    if _re_compile is not None and _re_compiler.compile is _re_compile:
        _re_compiler.compile = _compile_pattern
    if "compile" not in vars(typing):
        typing.compile = _compile_annotation  # type: ignore[attr-defined]


def _exec(source: Any, globals: Any = None, locals: Any = None, /) -> None:
    """``exec`` for ``dataclasses``: a text's code from the table, else compiled and kept."""
    if type(source) is str and _index is not None:
        key = hashlib.blake2b(source.encode(), digest_size=DIGEST_SIZE).digest()
        source = _load(_index.get(key)) or _compile(key, source)
    builtins.exec(source, globals, locals)


def _compile_annotation(source: Any, filename: Any, mode: Any, *more: Any, **options: Any) -> Any:
    """``compile`` for ``typing`` (a ``ForwardRef``'s text): from the table, else compiled
    as ``typing`` compiles it (nothing inherited: ``typing`` has no ``__future__`` import)
    and kept."""
    if type(source) is str and (filename, mode, more, options) == ("<string>", "eval", (), {}):
        if _index is not None:
            try:
                text = source.encode()
            except UnicodeEncodeError:  # a lone surrogate: typing's own compile says what
                return compile(source, filename, mode, dont_inherit=True)
            key = hashlib.blake2b(b"eval\0" + text, digest_size=DIGEST_SIZE).digest()
            code = _load(_index.get(key))
            if code is not None:
                return code
            code = compile(source, filename, mode, dont_inherit=True)
            with contextlib.suppress(ValueError):
                _compiled[key] = marshal.dumps(code)
            return code
        return compile(source, filename, mode, dont_inherit=True)
    return compile(source, filename, mode, *more, **options)


def _load(span: tuple[int, int] | None) -> CodeType | None:
    if span is None:
        return None
    try:
        code = marshal.loads(memoryview(_blob)[span[0] : span[1]])
    except (ValueError, EOFError, TypeError):
        return None
    if type(code) is not CodeType:
        return None
    _hits.append(span)
    return code


def _compile(key: bytes, source: str) -> CodeType:
    code = compile(source, "<string>", "exec", dont_inherit=True)
    _compiled[key] = marshal.dumps(code)
    return code


class _Recorded:
    """``_sre`` for ``re``'s compiler while it compiles a pattern not in the table: records
    the arguments of each ``_sre.compile`` call (anything else is ``_sre``'s own)."""

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(_sre, name)

    def compile(self, *args: Any) -> Any:
        if threading.get_ident() == self.owner:  # not another thread's, meanwhile
            self.calls.append(args)
        return _sre.compile(*args)


def pattern_key(stamp: bytes, pattern: str | bytes, flags: int) -> bytes:
    """A pattern's key in the table: the same bytes for the same pattern, flags and
    compiler, whatever the objects (interned or not)."""
    if isinstance(pattern, str):
        text = b"s" + pattern.encode("utf-8", "surrogatepass")
    else:
        text = b"b" + bytes(pattern)
    head = b"re\0" + stamp + str(int(flags)).encode() + b"\0"
    return hashlib.blake2b(head + text, digest_size=DIGEST_SIZE).digest()


def _compile_pattern(pattern: Any, flags: int = 0) -> Any:
    """``re._compiler.compile`` while :func:`start` is in force (see the module's text)."""
    assert _re_compile is not None
    stamp, owner = _re_stamp, _owner
    if (
        _index is None
        or stamp is None
        or owner != threading.get_ident()
        or type(pattern) not in (str, bytes)
        or len(pattern) > MAX_PATTERN
        or flags & re.DEBUG
    ):
        return _re_compile(pattern, flags)
    key = pattern_key(stamp, pattern, flags)
    span = _index.get(key)
    arguments = _load_arguments(span)
    if arguments is not None and arguments[0] == pattern:
        try:
            compiled = _sre.compile(pattern, *arguments[1:])  # the caller's text, not a copy
        except (TypeError, ValueError, RuntimeError, OverflowError):
            pass  # damaged, yet loaded: compiled again below
        else:
            assert span is not None
            _hits.append(span)
            return compiled
    recorded = _Recorded(owner)
    _re_compiler._sre = recorded
    try:
        compiled = _re_compile(pattern, flags)
    finally:
        _re_compiler._sre = _sre
    if (
        len(recorded.calls) == 1
        and len(recorded.calls[0]) == 6
        and recorded.calls[0][0] is pattern
        and recorded.calls[0][1] == compiled.flags
    ):
        # The opcodes are re's named int constants, the flags perhaps a RegexFlag: kept as
        # the ints they are.
        plain = tuple(_plain(argument) for argument in recorded.calls[0])
        with contextlib.suppress(ValueError, TypeError):
            _compiled[key] = marshal.dumps(plain)
    return compiled


def _plain(argument: Any) -> Any:
    if type(argument) is list:
        return [int(op) for op in argument]
    return int(argument) if isinstance(argument, int) else argument


def _load_arguments(span: tuple[int, int] | None) -> tuple[Any, ...] | None:
    if span is None:
        return None
    try:
        arguments = marshal.loads(memoryview(_blob)[span[0] : span[1]])
    except (ValueError, EOFError, TypeError):
        return None
    # (pattern, flags, code, groups, groupindex, indexgroup), as re's compiler calls
    # _sre.compile on 3.11 to 3.13; counted as a hit once _sre.compile took them (it
    # checks each opcode itself: a non-int raises, caught by the caller).
    if type(arguments) is not tuple or len(arguments) != 6:
        return None
    _pattern, flags, code, groups, groupindex, indexgroup = arguments
    if not (
        type(flags) is int
        and type(code) is list
        and type(groups) is int
        and type(groupindex) is dict
        and type(indexgroup) is tuple
    ):
        return None
    return arguments


def finish() -> None:
    """Put ``dataclasses``'s ``exec`` and ``inspect`` back; write the table when it is not
    the one this start used (something compiled, or something kept but unused: an older
    version's)."""
    global _index, _blob
    index, blob, _index, _blob = _index, _blob, None, b""
    compiled, hits = dict(_compiled), set(_hits)
    _compiled.clear()
    _hits.clear()
    if dataclasses.__dict__.get("exec") is _exec:
        del dataclasses.exec  # type: ignore[attr-defined]
    if dataclasses.__dict__.get("inspect") is _INSPECT:
        dataclasses.inspect = inspect  # type: ignore[attr-defined]
    if _re_compiler is not None and _re_compiler.compile is _compile_pattern:
        _re_compiler.compile = _re_compile
    if vars(typing).get("compile") is _compile_annotation:
        del typing.compile  # type: ignore[attr-defined]
    if index is None or sys.dont_write_bytecode or (not compiled and len(hits) == len(index)):
        return
    kept = {key: blob[span[0] : span[1]] for key, span in index.items() if span in hits}
    parts = {**kept, **compiled}
    spans: dict[bytes, tuple[int, int]] = {}
    at = 0
    for key, part in parts.items():
        spans[key] = (at, at + len(part))
        at += len(part)
    _write((importlib.util.MAGIC_NUMBER, spans, b"".join(parts.values())))


def _write(table: tuple[bytes, dict[bytes, tuple[int, int]], bytes]) -> None:
    """Write the table as the interpreter writes bytecode: whole or not at all."""
    try:
        path = table_path()
    except NotImplementedError:  # an interpreter without a bytecode cache
        return
    temporary = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Created, never opened as found (as importlib writes a .pyc): a name already
        # there (a symbolic link, another writer's file) makes this start not write.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:
        return
    try:
        with open(descriptor, "wb") as file:
            marshal.dump(table, file)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
