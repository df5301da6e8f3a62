"""The commented starting file that ``blitzdns config init`` writes, rendered from the schema.

Every key, its comment and its default come from the config dataclasses' field metadata
(:func:`blitzdns.config._meta`), so a new key shows up here by itself. The file parses to
the same effective configuration as the built-in preset alone, and each commented example
loads once uncommented (tests check both).
"""

from __future__ import annotations

import textwrap
from dataclasses import Field, fields, is_dataclass
from typing import Any

from blitzdns.config import Config, plain, toml_name

HEADER = (
    "blitzdns configuration. `blitzdns config show` prints the effective result, "
    "`blitzdns plan` what it will answer and forward. Unknown keys are errors."
)


def render_template() -> str:
    """The template: the top-level keys, then each table with every key at its default."""
    defaults = Config()
    lines = comment(HEADER)
    tables: list[str] = []
    examples: list[str] = []
    for item in fields(Config):
        name = toml_name(item)
        if name is None:
            continue
        value = getattr(defaults, item.name)
        table, _, key = name.rpartition(".")
        if is_dataclass(value):
            tables += ["", f"[{name}]"]
            tables += [
                line for sub in fields(value) for line in entry(sub, getattr(value, sub.name))
            ]
        elif table:
            tables += ["", f"[{table}]", *entry(item, value, key)]
        elif item.metadata["example"] is not None:
            examples += ["", *comment(item.metadata["doc"])]
            examples += [f"# {line}" for line in item.metadata["example"].splitlines()]
        else:
            lines += ["", *entry(item, value)]
    return "\n".join([*lines, *tables, *examples]) + "\n"


def entry(item: Field[Any], value: Any, key: str | None = None) -> list[str]:
    """One key: its comment, then ``key = default`` (commented out, with the example, when
    the default is absent)."""
    key = key or toml_name(item) or item.name
    example = item.metadata["example"]
    result = comment(item.metadata["doc"])
    if value is None:
        return [*result, f"# {key} = {example}"]
    if example is not None:
        result.append(f"# Example: {key} = {example}")
    return [*result, f"{key} = {toml_value(plain(value))}"]


def comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, 86, break_on_hyphens=False)]


def toml_value(value: Any) -> str:
    """A plain value (text, number, true/false, list of those) as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


TEMPLATE = render_template()
