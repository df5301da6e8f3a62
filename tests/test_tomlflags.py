"""The smaller record of tomllib's key flags answers as tomllib's own, on the same operations."""

from __future__ import annotations

import importlib
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blitzdns import tomlflags
from blitzdns.config import _LARGE_TOML, parse_config

Flags = importlib.import_module("tomllib._parser").Flags

keys = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map(tuple)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, st.sampled_from([0, 1]), st.booleans()),
        st.tuples(st.just("add_pending"), keys, st.sampled_from([0, 1])),
        st.tuples(st.just("finalize_pending")),
        st.tuples(st.just("unset_all"), keys),
        st.tuples(
            st.just("is_"),
            st.lists(st.sampled_from(["a", "b", "c"]), max_size=4).map(tuple),
            st.sampled_from([0, 1]),
        ),
    ),
    max_size=40,
)


def run(flags: Any, ops: list[tuple[Any, ...]]) -> list[bool]:
    answers = []
    for op in ops:
        if op[0] == "set":
            flags.set(op[1], op[2], recursive=op[3])
        elif op[0] == "add_pending":
            flags.add_pending(op[1], op[2])
        elif op[0] == "finalize_pending":
            flags.finalize_pending()
        elif op[0] == "unset_all":
            flags.unset_all(op[1])
        else:
            answers.append(flags.is_(op[1], op[2]))
    # Every key's every flag at the end, asked of both.
    for a in ("a", "b", "c"):
        for key in ((a,), (a, "a"), (a, "b", "c"), ("a", "b", a)):
            answers += [flags.is_(key, 0), flags.is_(key, 1)]
    return answers


def test_this_python_has_the_flags_it_stands_in_for() -> None:
    assert tomlflags.usable()


@settings(max_examples=300, deadline=None)
@given(ops=operations)
def test_compact_flags_answer_as_tomllibs(ops: list[tuple[Any, ...]]) -> None:
    assert run(tomlflags.CompactFlags(), ops) == run(Flags(), ops)


DOCUMENTS = [
    "a = 1\nb = {c = 2}\n[d]\ne = 3\n[d.f]\ng = [1, 2]\n",
    "[[t]]\nx = 1\n[[t]]\nx = 2\n[t.y]\nz = 3\n",
    "[a]\nb = 1\n[a]\nc = 2\n",  # a table defined twice
    "a = {b = 1}\n[a]\nc = 2\n",  # an inline table extended
    "a.b = 1\n[a]\nc = 2\n",  # dotted keys, then the table
    "[a.b]\nc = 1\n[a]\nd = 2\n[a.b]\ne = 3\n",
    "x = [1]\n[[x]]\n",
    "[[t]]\n[t.u]\na = 1\n[[t]]\n[t.u]\na = 2\n",
    "a = {b.c = 1}\na.b.d = 2\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_documents_parse_alike_or_fail_alike(text: str) -> None:
    def outcome(loads: Any) -> Any:
        try:
            return loads(text)
        except tomllib.TOMLDecodeError as exc:
            return ("error", str(exc))

    assert outcome(tomlflags.loads) == outcome(tomllib.loads)
    assert importlib.import_module("tomllib._parser").Flags is Flags  # put back


def test_a_large_configuration_is_parsed_alike() -> None:
    hosts = 600
    lines = ["[tunnel]", 'mouths = "127.80.0.0/16"']
    lines.append("hosts = [" + ", ".join(f'"h{i}"' for i in range(hosts)) + "]")
    for i in range(hosts):
        lines += [f"[hosts.h{i}]", f'names = ["h{i}.growth.test"]', 'services = ["dnd"]']
    text = "\n".join(lines) + "\n"
    assert len(text) > _LARGE_TOML
    assert tomlflags.loads(text) == tomllib.loads(text)
    assert len(parse_config(text).hosts) == hosts


def counted_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts ``tomllib.loads`` is called with from now on (by tomlflags too)."""
    calls: list[str] = []
    real = tomllib.loads

    def loads(text: str, **kwargs: Any) -> dict[str, Any]:
        calls.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(tomllib, "loads", loads)
    return calls


def test_the_compact_flags_are_used_for_the_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []

    class Spy(tomlflags.CompactFlags):
        def __init__(self) -> None:
            made.append(self)
            super().__init__()

    expected = tomllib.loads(DOCUMENTS[0])
    monkeypatch.setattr(tomlflags, "CompactFlags", Spy)
    calls = counted_loads(monkeypatch)
    assert tomlflags.loads(DOCUMENTS[0]) == expected
    assert made  # (an inline table has flags of its own: two here)
    assert len(calls) == 1  # one parse, with the compact flags: not a fallback's second
    assert not tomlflags._fell_back
    assert importlib.import_module("tomllib._parser").Flags is Flags


def test_a_flags_class_with_more_than_it_stands_in_for_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Flags's own names (less the instance-dict descriptors, which are Flags's alone)
    names = {k: v for k, v in vars(Flags).items() if k not in ("__dict__", "__weakref__")}
    parser = importlib.import_module("tomllib._parser")
    monkeypatch.setattr(parser, "Flags", type("Same", (), dict(names)))
    assert tomlflags.usable()  # the same names: stood in for
    monkeypatch.setattr(parser, "Flags", type("Subclass", (parser.Flags,), {}))
    assert tomlflags.usable()  # the same names, inherited: seen (vars() saw none)
    larger = type("Larger", (), {**names, "clear": lambda self: None})
    monkeypatch.setattr(parser, "Flags", larger)
    assert not tomlflags.usable()
    monkeypatch.setattr(parser, "Flags", type("Inherited", (larger,), {}))
    assert not tomlflags.usable()  # the added method inherited: still seen
    assert tomlflags.loads(DOCUMENTS[1]) == tomllib.loads(DOCUMENTS[1])
    assert parser.Flags.__name__ == "Inherited"


def test_a_parse_asking_the_flags_for_more_falls_back_to_tomllib(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = []

    class Lacking(tomlflags.CompactFlags):
        def __init__(self) -> None:
            made.append(self)
            super().__init__()

        def is_(self, key: tomlflags.Key, flag: int) -> bool:
            raise AttributeError("no such method")

    monkeypatch.setattr(tomlflags, "_fell_back", False)  # put back as it was after
    monkeypatch.setattr(tomlflags, "CompactFlags", Lacking)
    expected = tomllib.loads(DOCUMENTS[0])
    calls = counted_loads(monkeypatch)
    with caplog.at_level("WARNING", logger="blitzdns.tomlflags"):
        assert tomlflags.loads(DOCUMENTS[0]) == expected
        assert len(calls) == 2  # the compact flags', then tomllib's own
        assert tomlflags._fell_back
        tried = len(made)
        with pytest.raises(tomllib.TOMLDecodeError):
            tomlflags.loads(DOCUMENTS[2])  # an error stays the error tomllib raises
        assert tomlflags.loads(DOCUMENTS[1]) == tomllib.loads(DOCUMENTS[1])
    assert len(made) == tried  # no swap after the fallback: tomllib's own flags
    assert len(calls) == 2 + 1 + 2  # one parse each since
    warnings = [r for r in caplog.records if r.name == "blitzdns.tomlflags"]
    assert len(warnings) == 1, warnings
    assert "AttributeError" in warnings[0].getMessage()
    assert importlib.import_module("tomllib._parser").Flags is Flags
