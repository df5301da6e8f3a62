"""blitzdns.linetable: code with line-only location tables keeps every line number.

Property-checked over real code (the standard library's asyncio, asyncssh, this package and
the tunnel's, compiled at -OO as the daemon's loader does): every code unit keeps its line
(``co_lines``, the ``co_positions`` line), the columns read as ``None``, the tables are never
longer; and a traceback through such code names the same lines, without carets.
"""

from __future__ import annotations

import asyncio
import traceback
import types
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

import blitzdns
import tunnel
from blitzdns import linetable

pytestmark = pytest.mark.skipif(not linetable.FORMAT_KNOWN, reason="table format not known")


def walk(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from walk(const)


def unit_lines(code: types.CodeType) -> list[int | None]:
    """The line of each code unit, as co_lines gives it."""
    return [line for start, end, line in code.co_lines() for _ in range(start, end, 2)]


def sources() -> list[Path]:
    found: list[Path] = []
    for package in (asyncio, asyncssh, blitzdns, tunnel):
        found += sorted(Path(package.__file__ or "").parent.rglob("*.py"))
    return found


def test_every_code_unit_keeps_its_line() -> None:
    checked = old_size = new_size = 0
    for path in sources():
        module = compile(path.read_bytes(), str(path), "exec", dont_inherit=True, optimize=2)
        for before, after in zip(walk(module), walk(linetable.lines_only(module)), strict=True):
            assert unit_lines(after) == unit_lines(before), (path, before.co_name)
            positions = list(after.co_positions())
            assert [p[0] for p in positions] == [p[0] for p in before.co_positions()]
            assert all(p[2] is None and p[3] is None for p in positions)
            assert after.co_code == before.co_code and after.co_name == before.co_name
            assert len(after.co_linetable) <= len(before.co_linetable)
            old_size += len(before.co_linetable)
            new_size += len(after.co_linetable)
            checked += 1
    assert checked > 5000
    assert new_size < old_size / 2  # what it is for


SAMPLE = """
def inner(values):
    total = 0
    for value in values:
        total += (
            value
            // 0
        )
    return total

def outer():
    return [inner([1, 2]) for _ in range(1)]
"""


def test_a_traceback_names_the_same_lines_without_carets(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"  # a file, so that tracebacks show its lines
    sample.write_text(SAMPLE)

    def run(code: types.CodeType) -> traceback.StackSummary:
        space: dict[str, object] = {}
        exec(code, space)
        with pytest.raises(ZeroDivisionError) as caught:
            space["outer"]()  # type: ignore[operator]
        frames = traceback.extract_tb(caught.value.__traceback__)
        return traceback.StackSummary.from_list([f for f in frames if f.filename == str(sample)])

    code = compile(SAMPLE, str(sample), "exec", dont_inherit=True)
    full, lean = run(code), run(linetable.lines_only(code))
    assert [(f.name, f.lineno) for f in lean] == [(f.name, f.lineno) for f in full]
    assert [f.lineno for f in lean] == [12, 12, 6]  # outer, its list, the division (from "value")
    assert all(f.colno is None for f in lean) and full[-1].colno is not None
    assert "^" not in "".join(lean.format()) and "^" in "".join(full.format())


def test_hand_made_tables() -> None:
    # Entry kinds: 0-9 (short), 10-12 (one line), 13 (no columns), 14 (long), 15 (none).
    short = bytes([0x80 | 0 << 3 | 1, 0x05])  # 2 units, same line
    one_line = bytes([0x80 | 11 << 3 | 0, 4, 8])  # 1 unit, line + 1
    no_columns = bytes([0x80 | 13 << 3 | 2, 0x03])  # 3 units, line - 1
    long_form = bytes([0x80 | 14 << 3 | 0, 0x50, 0x01, 2, 5, 9])  # 1 unit, line + 40
    none = bytes([0x80 | 15 << 3 | 1])  # 2 units, no location
    table = short + one_line + short + no_columns + long_form + none + none
    assert linetable.lines_table(table) == (
        bytes([0x80 | 13 << 3 | 1, 0])  # 2 units, + 0
        + bytes([0x80 | 13 << 3 | 2, 2])  # the line + 1 and the same line after it: 3 units
        + bytes([0x80 | 13 << 3 | 2, 3])  # 3 units, - 1
        + bytes([0x80 | 13 << 3 | 0, 0x50, 0x01])  # + 40: 80 = 16 | more, then 1 (x 64)
        + bytes([0x80 | 15 << 3 | 3])  # 4 units with no location: one entry
    )
    # More than 8 units on one line: entries of 8, the later ones with delta 0.
    assert linetable.lines_table(bytes([0x80 | 11 << 3 | 7, 1, 2]) * 2) == bytes(
        [0x80 | 13 << 3 | 7, 2, 0x80 | 13 << 3 | 7, 2]
    )
