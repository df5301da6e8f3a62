"""Code objects whose location tables keep line numbers only (no columns): less idle heap.

Since Python 3.11 every code object carries, besides its line numbers, the column span of
each instruction (PEP 657), only used to draw carets under the failing expression of a
traceback. In an idle daemon those tables are ~1.0 MB of the heap (8,500 code objects:
the standard library's, asyncssh's, cryptography's, this package's), kept for as long as
it runs. :func:`lines_only` rewrites a module's code, as the level-2 loader compiles it
(:mod:`blitzdns.optlevel`), with the table's line-only form (code 13, "no columns";
what ``python -X no_debug_ranges`` writes) and each run of instructions on one line in
one entry: ~0.3 MB for the same code (bench/notes/startup.md, session 9).

Every instruction keeps its line (``co_lines``, the ``co_positions`` line, so tracebacks,
``f_lineno``, tracing and coverage see the same lines); the columns read as ``None``, and
tracebacks print no carets, as under ``-X no_debug_ranges``.

The table's format (CPython's ``Objects/locations.md``): each entry is a first byte with
bit 7 set, the kind in bits 3-6 and the number of code units it covers (1-8) in bits 0-2,
then the kind's fields as 6-bit varints (bit 6: more follows; a signed one keeps its sign
in bit 0). Kinds 0-9: same line, one column byte; 10-12: line + 0-2, two column bytes;
13: a line delta, no columns; 14: line delta, end line, column, end column; 15: no
location. The same in 3.11, 3.12 and 3.13; on any other version the code is left as it
is.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: imported by the daemon's first lines (optlevel)
if TYPE_CHECKING:
    from types import CodeType

FORMAT_KNOWN = (3, 11) <= sys.version_info[:2] <= (3, 13)
"""The versions whose location table is the one described above."""

FORMAT = 1
"""The version of what :func:`lines_only` writes, part of the bytecode cache's tag
(:data:`blitzdns.optlevel.CACHE_LEVEL`): raise it with any change to the tables written,
so that files written before (checked by their source's mtime and size only) are
compiled again."""

_NO_COLUMNS = 13
_LONG = 14
_NO_LOCATION = 15
_MAX_UNITS = 8


def _write_varint(value: int, out: bytearray) -> None:
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)


def lines_table(table: bytes) -> bytes:
    """``table`` (a ``co_linetable``) with the same line for every code unit, no columns,
    and each run of code units on one line (or with no location) in as few entries as
    the 8-unit limit allows."""
    out = bytearray()
    run_units = 0
    run_delta: int | None = None  # the run's line delta; None: no location

    def flush() -> None:
        nonlocal run_units, run_delta
        while run_units:
            units = min(run_units, _MAX_UNITS)
            if run_delta is None:
                out.append(0x80 | (_NO_LOCATION << 3) | (units - 1))
            else:
                out.append(0x80 | (_NO_COLUMNS << 3) | (units - 1))
                _write_varint(-run_delta << 1 | 1 if run_delta < 0 else run_delta << 1, out)
                run_delta = 0  # the run's next entries: same line
            run_units -= units

    index = 0

    def read_varint() -> int:
        nonlocal index
        byte = table[index]
        index += 1
        value, shift = byte & 63, 6
        while byte & 64:
            byte = table[index]
            index += 1
            value |= (byte & 63) << shift
            shift += 6
        return value

    while index < len(table):
        first = table[index]
        index += 1
        kind, units = (first >> 3) & 15, (first & 7) + 1
        delta: int | None
        if kind == _NO_LOCATION:
            delta = None
        elif kind in (_NO_COLUMNS, _LONG):
            value = read_varint()
            delta = -(value >> 1) if value & 1 else value >> 1
            if kind == _LONG:
                read_varint()  # end line
                read_varint()  # column + 1
                read_varint()  # end column + 1
        elif kind >= 10:
            delta = kind - 10
            index += 2
        else:
            delta = 0
            index += 1
        same = (delta is None) == (run_delta is None) and not delta
        if run_units and same:
            run_units += units
        else:
            flush()
            run_units, run_delta = units, delta
    flush()
    return bytes(out)


def lines_only(code: CodeType) -> CodeType:
    """``code`` and every code object among its constants (functions, classes,
    comprehensions) with :func:`lines_table`'s tables; unchanged where the format is not
    known (:data:`FORMAT_KNOWN`)."""
    if not FORMAT_KNOWN:
        return code
    table = lines_table(code.co_linetable)
    if not any(type(c) is type(code) for c in code.co_consts):
        # The same tuple: the compiler shares equal constant tuples between a module's
        # code objects (and marshal keeps them shared); a copy per code object would
        # cost more than the tables save.
        return code.replace(co_linetable=table)
    consts = tuple(lines_only(c) if type(c) is type(code) else c for c in code.co_consts)
    return code.replace(co_linetable=table, co_consts=consts)
