"""The dataclasses' generated methods kept between starts of `run` (issue 18: start-up CPU).

`blitzdns run` lets `dataclasses` take the code of each method it writes from a table
kept beside the bytecode (blitzdns.classcode) instead of compiling its text again. A class
built from the table must be the class `dataclasses` builds; the table is written only
where bytecode is, and a table that does not load is ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
import marshal
import os
import re
import signal
import subprocess
import sys
import threading
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from blitzdns import classcode
from tests.peers import free_port, wait_for

#: Every kind of method dataclasses writes: __init__ (defaults, a factory, init=False,
#: keyword-only), __repr__, __eq__, order, __hash__, a frozen class's __setattr__/__delattr__.
CLASSES = """
from dataclasses import dataclass, field, KW_ONLY

@dataclass(frozen=True, order=True)
class Point:
    x: int
    y: int = 2
    tags: tuple[str, ...] = ()

@dataclass
class Box:
    items: list[int] = field(default_factory=list)
    size: int = field(default=0, init=False)
    _: KW_ONLY
    name: str = "box"

    def __post_init__(self) -> None:
        self.size = len(self.items)
"""


def build() -> dict[str, Any]:
    """The classes built afresh, in a module of their own (dataclasses looks it up)."""
    module = types.ModuleType("classcode_probe")
    sys.modules[module.__name__] = module
    try:
        exec(CLASSES, module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def check(namespace: dict[str, Any]) -> None:
    """The classes behave as dataclasses' own (compared with a build without the table)."""
    point, box = namespace["Point"], namespace["Box"]
    p = point(1, tags=("a",))
    assert repr(p) == "Point(x=1, y=2, tags=('a',))"
    assert p == point(1, 2, ("a",)) and p != point(2)
    assert p < point(2) and hash(p) == hash(point(1, 2, ("a",)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del p.y
    b = box([1, 2], name="crate")
    assert (b.items, b.size, b.name) == ([1, 2], 2, "crate")
    assert box().items is not box().items
    with pytest.raises(TypeError):
        box([1], "positional name")
    assert "exec" not in vars(dataclasses)  # the reference: built as dataclasses builds
    reference = build()
    for name in ("Point", "Box"):
        ours, theirs = namespace[name], reference[name]
        for method in ("__init__", "__repr__", "__eq__", "__setattr__", "__hash__", "__lt__"):
            want = vars(theirs).get(method)
            if want is not None:
                mine = vars(ours)[method]
                code, wanted = (
                    getattr(mine, "__wrapped__", mine),
                    getattr(want, "__wrapped__", want),
                )
                assert code.__code__.co_code == wanted.__code__.co_code, (name, method)
                assert code.__code__.co_consts == wanted.__code__.co_consts, (name, method)


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "classcode.dataclasses"
    monkeypatch.setattr(classcode, "table_path", lambda: str(path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    yield path
    classcode.finish()  # whatever a failed test left in force


def one_start() -> tuple[dict[str, Any], int, int]:
    """A start: the classes built with the table in force; (namespace, compiled, hits)."""
    classcode.start()
    namespace = build()
    compiled, hits = len(classcode._compiled), len(classcode._hits)
    classcode.finish()
    return namespace, compiled, hits


def test_the_second_start_compiles_nothing(table: Path) -> None:
    namespace, compiled, hits = one_start()
    assert compiled > 8 and hits == 0
    check(namespace)
    assert table.exists()
    written = table.stat().st_mtime_ns
    namespace, compiled_again, hits = one_start()
    assert compiled_again == 0 and hits == compiled
    check(namespace)
    assert table.stat().st_mtime_ns == written  # nothing new: not written again
    assert "exec" not in vars(dataclasses)


def test_a_class_without_a_docstring_is_not_signed_while_in_force(table: Path) -> None:
    """dataclasses reads a class's signature only to write its docstring (every class's at
    -OO, as the daemon runs): skipped while the table is in force, back after."""
    namespace, _, _ = one_start()
    assert namespace["Point"].__doc__ == "Point"  # dataclasses's fallback: the name
    assert dataclasses.inspect is inspect  # type: ignore[attr-defined]
    assert build()["Point"].__doc__.startswith("Point(x: ")  # its signature, as before


def test_a_name_already_at_the_temporary_path_is_not_written_through(table: Path) -> None:
    """The temporary file is created, never opened as found: a symbolic link planted at
    its name (the start runs as root, before the privilege drop) is left alone, and so
    is what it points at."""
    victim = table.parent / "victim"
    victim.write_bytes(b"keep")
    planted = Path(f"{table}.{os.getpid()}")
    planted.symlink_to(victim)
    namespace, compiled, _ = one_start()
    assert compiled > 8
    check(namespace)
    assert victim.read_bytes() == b"keep" and planted.is_symlink()
    assert not table.exists()  # this start did not write; the next one will


def test_a_table_that_does_not_load_is_ignored_and_replaced(table: Path) -> None:
    table.write_bytes(b"\xe3not a table")
    namespace, compiled, _ = one_start()
    assert compiled > 8
    check(namespace)
    _magic, index, blob = marshal.loads(table.read_bytes())
    assert len(index) == compiled and len(blob) == max(end for _, end in index.values())


def test_a_damaged_entry_is_compiled_again(table: Path) -> None:
    one_start()
    magic, index, blob = marshal.loads(table.read_bytes())
    table.write_bytes(marshal.dumps((magic, index, b"\x00" * len(blob))))
    namespace, compiled, hits = one_start()
    assert compiled == len(index) and hits == 0
    check(namespace)


def test_what_an_older_version_kept_is_dropped(table: Path) -> None:
    one_start()
    magic, index, blob = marshal.loads(table.read_bytes())
    stale = marshal.dumps(compile("x = 1", "<string>", "exec"))
    index[b"\x01" * classcode.DIGEST_SIZE] = (len(blob), len(blob) + len(stale))
    table.write_bytes(marshal.dumps((magic, index, blob + stale)))
    _, compiled, hits = one_start()
    assert compiled == 0 and hits == len(index) - 1
    _, kept, _ = marshal.loads(table.read_bytes())[0:3]
    assert len(kept) == len(index) - 1


def test_nothing_is_written_without_bytecode(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    namespace, compiled, _ = one_start()
    assert compiled > 8 and not table.exists()
    check(namespace)


def test_another_interpreters_table_is_not_used(table: Path) -> None:
    one_start()
    _magic, index, blob = marshal.loads(table.read_bytes())
    table.write_bytes(marshal.dumps((b"\x00\x00\r\n", index, blob)))
    _, compiled, hits = one_start()
    assert compiled == len(index) and hits == 0


#: Regular expressions of every kind re compiles: named groups, bytes, flags, classes,
#: lookarounds, repeats, backreferences, a verbose one, non-ASCII.
PATTERNS: tuple[tuple[str | bytes, int], ...] = (
    (r"(?P<key>[A-Za-z_][\w.-]*)\s*=\s*(?P<value>.*)$", 0),
    (rb"^([<>]) \S+ \S+\s+length=(\d+) from=\d+ to=-?\d+", 0),
    (r"(?i)(?<=\d)x{2,5}?(?!y)|[^\W\d]+", re.MULTILINE),
    (
        r"""(\s*)  # leading space
         ([a-z]+)(?:-\2)*""",
        re.VERBOSE | re.DOTALL,
    ),
    (r"straße|ÄÖÜ\u20ac", re.IGNORECASE),
    (r"(a)|b(?(1)c|d)", re.ASCII),
)


def compile_patterns() -> list[re.Pattern[Any]]:
    """Each of PATTERNS through re's compiler (as re.compile does on a miss of its cache)."""
    return [re._compiler.compile(pattern, flags) for pattern, flags in PATTERNS]  # type: ignore[attr-defined]


def test_regular_expressions_come_from_the_table_as_re_compiles_them(table: Path) -> None:
    """A pattern compiled while the table is in force is kept; at the next start it is made
    from the table (nothing parsed or compiled) and is the pattern re makes: equal
    (opcodes included), same groups, flags and matches. Back to re's own compiler after."""
    original = re._compiler.compile  # type: ignore[attr-defined]
    classcode.start()
    first = compile_patterns()
    compiled = len(classcode._compiled)
    classcode.finish()
    assert compiled == len(PATTERNS)
    assert re._compiler.compile is original  # type: ignore[attr-defined]
    classcode.start()
    again = compile_patterns()
    compiled, hits = len(classcode._compiled), len(classcode._hits)
    classcode.finish()
    assert compiled == 0 and hits == len(PATTERNS)
    reference = compile_patterns()  # re's own compiler
    samples = ("key.x = 1 2", "> a b   length=7 from=1 to=-1", "12xxxz abc", "  ab-ab", "STRASSE")
    for ours, before, theirs in zip(again, first, reference, strict=True):
        assert ours == theirs and before == theirs
        assert (ours.pattern, ours.flags, ours.groups) == (
            theirs.pattern,
            theirs.flags,
            theirs.groups,
        )
        assert ours.groupindex == theirs.groupindex
        for sample in samples:
            text: str | bytes = sample.encode() if isinstance(ours.pattern, bytes) else sample
            want = [m.span() for m in theirs.finditer(text)]  # type: ignore[arg-type]
            assert [m.span() for m in ours.finditer(text)] == want  # type: ignore[arg-type]


def test_what_re_compiles_otherwise_is_left_to_re(table: Path) -> None:
    """A parsed pattern (re.Scanner) goes to re's compiler untouched: nothing kept."""
    classcode.start()
    scanner = re.Scanner([(r"\d+", lambda s, t: int(t)), (r"\s+", None)])
    assert scanner.scan("1 22 333") == ([1, 22, 333], "")
    compiled = len(classcode._compiled)
    classcode.finish()
    assert compiled == 0


ANNOTATED = """
from __future__ import annotations
from typing import NamedTuple, TypedDict

class Status(TypedDict):
    name: str
    count: int | None
    tags: list[str]

class Pair(NamedTuple):
    left: dict[str, tuple[int, ...]]
    right: Status
"""


def annotated() -> dict[str, Any]:
    module = types.ModuleType("classcode_annotated")
    sys.modules[module.__name__] = module
    try:
        exec(compile(ANNOTATED, "<annotated>", "exec", dont_inherit=True), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def test_typing_s_forward_references_come_from_the_table(table: Path) -> None:
    """The code of each string annotation typing compiles (a TypedDict's, a NamedTuple's
    fields) is kept; at the next start it is typing's own compile's, and the hints resolve
    the same. typing's compile is the builtin again after."""
    classcode.start()
    annotated()
    compiled = len(classcode._compiled)
    classcode.finish()
    assert compiled == 5 and "compile" not in vars(typing)
    classcode.start()
    namespace = annotated()
    compiled, hits = len(classcode._compiled), len(classcode._hits)
    classcode.finish()
    assert compiled == 0 and hits == 5
    reference = annotated()
    for name in ("Status", "Pair"):
        ours, theirs = namespace[name], reference[name]
        for field, ref in ours.__annotations__.items():
            want = theirs.__annotations__[field].__forward_code__
            code = ref.__forward_code__
            assert (code.co_code, code.co_consts, code.co_names, code.co_filename) == (
                want.co_code,
                want.co_consts,
                want.co_names,
                want.co_filename,
            )
            assert code.co_flags == want.co_flags
    hints = typing.get_type_hints(namespace["Status"])
    assert hints == {"name": str, "count": int | None, "tags": list[str]}


def test_run_keeps_the_table_beside_its_bytecode(tmp_path: Path) -> None:
    """`blitzdns run` builds its classes through the table and writes it once it serves."""
    config = tmp_path / "config.toml"
    config.write_text(
        'preset = "none"\n[dns]\n'
        f'listen = ["127.0.0.1:{free_port()}"]\nupstreams = ["127.0.0.1:{free_port()}"]\n'
        '[hosts.alpha]\nnames = ["alpha.example.test"]\nmouth = "127.79.0.1"\n'
    )
    prefix = tmp_path / "pycache"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(prefix)
    (tmp_path / "root").mkdir()
    command = [sys.executable, "-c", "from blitzdns.entry import main; main()", "run"]
    command += ["--no-tunnel", "--config", str(config), "--control-socket", str(tmp_path / "ctl")]
    command += ["--root", str(tmp_path / "root")]
    daemon = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        tables = lambda: list(prefix.rglob("*.dataclasses"))  # noqa: E731
        wait_for(lambda: tables() or daemon.poll() is not None, "the table", timeout=60)
        assert daemon.poll() is None
        (found,) = tables()
        assert found.name == f"classcode.{sys.implementation.cache_tag}.dataclasses"
        _magic, index, _ = marshal.loads(found.read_bytes())
        assert len(index) > 100  # the config's, the resolver's, ... classes
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)


def regex_start(patterns: Iterable[tuple[str | bytes, int]] = PATTERNS) -> tuple[int, int]:
    """A start compiling `patterns` only: (compiled, hits)."""
    classcode.start()
    try:
        for pattern, flags in patterns:
            assert re._compiler.compile(pattern, flags) == reference_pattern(pattern, flags)  # type: ignore[attr-defined]
        return len(classcode._compiled), len(classcode._hits)
    finally:
        classcode.finish()


def reference_pattern(pattern: str | bytes, flags: int) -> re.Pattern[Any]:
    return classcode._re_compile(pattern, flags)  # type: ignore[misc,no-any-return]


def test_another_python_release_s_patterns_are_not_replayed(
    table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """re's compiled form may change in a patch release with the same _sre.MAGIC and
    bytecode magic (gh-106052, 3.11.5): a table written by another sys.version is not
    replayed, and its patterns are dropped from the next table."""
    assert regex_start() == (len(PATTERNS), 0)
    assert regex_start() == (0, len(PATTERNS))
    release = sys.version
    monkeypatch.setattr(sys, "version", release.replace(".", ".9", 1))
    assert regex_start() == (len(PATTERNS), 0)
    monkeypatch.setattr(sys, "version", release)
    assert regex_start() == (len(PATTERNS), 0)  # this release's entries were dropped
    _magic, index, _ = marshal.loads(table.read_bytes())
    assert len(index) == len(PATTERNS)


def test_the_compiler_stamp_follows_the_byte_order_code_size_and_re_s_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "re"
    folder.mkdir()
    for name in ("_compiler.py", "_parser.py", "_constants.py"):
        (folder / name).write_text(f"# {name}\n")
    fake = types.SimpleNamespace(__file__=str(folder / "_compiler.py"))
    monkeypatch.setattr(classcode, "_re_compiler", fake)
    stamp = classcode.compiler_stamp()
    assert stamp is not None and stamp == classcode.compiler_stamp()
    os.utime(folder / "_parser.py", ns=(1, 1))
    assert classcode.compiler_stamp() not in (stamp, None)
    stamp = classcode.compiler_stamp()
    (folder / "_constants.py").write_text("# another size\n")
    assert classcode.compiler_stamp() not in (stamp, None)
    stamp = classcode.compiler_stamp()
    monkeypatch.setattr(sys, "byteorder", "big" if sys.byteorder == "little" else "little")
    assert classcode.compiler_stamp() not in (stamp, None)
    stamp = classcode.compiler_stamp()
    monkeypatch.setattr(classcode, "_sre", types.SimpleNamespace(CODESIZE=2, MAGIC=0))
    assert classcode.compiler_stamp() not in (stamp, None)
    (folder / "_parser.py").unlink()
    assert classcode.compiler_stamp() is None  # unreadable: patterns are left to re


def test_a_damaged_pattern_entry_is_compiled_again(table: Path) -> None:
    """An entry that loads but that _sre.compile refuses (a wrong arity, an invalid code
    list) or of the wrong shape is compiled again, not a hit, and replaced."""
    regex_start()
    magic, index, blob = marshal.loads(table.read_bytes())
    entries = {key: marshal.loads(blob[start:end]) for key, (start, end) in index.items()}
    keys = list(entries)
    pattern, flags, code, groups, groupindex, indexgroup = entries[keys[0]]
    entries[keys[0]] = (pattern, flags, code)  # wrong arity
    pattern, flags, code, groups, groupindex, indexgroup = entries[keys[1]]
    entries[keys[1]] = (pattern, flags, [999999, 1, 2], groups, groupindex, indexgroup)
    pattern, flags, code, groups, groupindex, indexgroup = entries[keys[2]]
    entries[keys[2]] = (pattern, flags, code, groups, groupindex, 7)  # wrong type
    pattern, flags, code, groups, groupindex, indexgroup = entries[keys[3]]
    entries[keys[3]] = (pattern, flags, code, 2**70, groupindex, indexgroup)
    parts = {key: marshal.dumps(value) for key, value in entries.items()}
    spans, at = {}, 0
    for key, part in parts.items():
        spans[key] = (at, at + len(part))
        at += len(part)
    table.write_bytes(marshal.dumps((magic, spans, b"".join(parts.values()))))
    assert regex_start() == (4, len(PATTERNS) - 4)
    assert regex_start() == (0, len(PATTERNS))  # replaced


def test_only_the_starting_thread_s_patterns_are_recorded(table: Path) -> None:
    """re's compiler is swapped module-wide while a pattern is recorded: another thread's
    _sre.compile calls meanwhile are not taken for the pattern's, and another thread's
    patterns are left to re."""
    recorder = classcode._Recorded(threading.get_ident())
    other = threading.Thread(target=lambda: re._compiler.compile("b+(c)", 0))  # type: ignore[attr-defined]
    classcode.start()
    try:
        classcode._re_compiler._sre = recorder
        try:
            other.start()
            other.join()
        finally:
            classcode._re_compiler._sre = classcode._sre
        assert recorder.calls == [] and classcode._compiled == {}
    finally:
        classcode.finish()


def test_a_pattern_s_key_does_not_depend_on_interning(table: Path) -> None:
    """The same text is the same entry, interned or not, and a lone surrogate is kept too."""
    interned = sys.intern("x[0-9]+y\ud800?")
    built = "".join(["x[0-9]", "+y\ud800?"])
    assert built is not interned
    assert regex_start([(interned, 0)]) == (1, 0)
    assert regex_start([(built, 0)]) == (0, 1)
    assert regex_start([(built.encode("utf-8", "surrogatepass"), 0)]) == (1, 0)


def test_a_long_pattern_is_left_to_re(table: Path) -> None:
    """The guard's trie of up to 10k names is not kept (the table is read at every start)."""
    longest = "a" * classcode.MAX_PATTERN
    assert regex_start([(longest, 0), (longest + "b", 0)]) == (1, 0)


def test_an_annotation_with_a_lone_surrogate_fails_as_typing_s_own(table: Path) -> None:
    with pytest.raises(UnicodeEncodeError) as theirs:
        typing.ForwardRef("x\ud800")
    classcode.start()
    try:
        with pytest.raises(UnicodeEncodeError) as ours:
            typing.ForwardRef("x\ud800")
    finally:
        classcode.finish()
    assert str(ours.value) == str(theirs.value)
