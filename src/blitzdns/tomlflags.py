"""``tomllib.loads`` with a smaller record of its keys' flags, for large configurations.

While it parses, ``tomllib`` remembers two flags per key (frozen; explicitly created
table) in ``tomllib._parser.Flags``: per key, a dict holding two sets and another dict,
~0.7 KB. A configuration of 10,000 protected hosts (``[hosts.hN]`` tables) made 160,000
such objects, 21 MB at the parse's peak against 7 MB of parsed data, and the resolver's
RSS kept that peak for good (issue 18's growth row: its pages stay partly used by what is
allocated after). :class:`CompactFlags` records the same flags per key as a list of two
bit masks and the nested keys (~0.1 KB), and answers every question as ``Flags`` does
(a property test runs both on the same operations; bench/notes/growth.md).

:func:`loads` uses it for the duration of one call, by putting it in place of ``Flags``
in ``tomllib._parser`` (which ``loads`` reads when it starts). A private name of the
standard library: :func:`loads` checks that ``Flags`` is there with the methods and the
two flags it stands in for, and otherwise leaves ``tomllib`` as it is; a parse that asks
them for more than they are is parsed again by ``tomllib`` alone, as is every later one
(a warning, once). The result is ``tomllib.loads``'s: the flags only decide which documents
are errors, and the same ones are.
"""

from __future__ import annotations

import importlib
import logging
import threading
import tomllib
from types import ModuleType
from typing import Any


def _parser_module() -> ModuleType | None:
    try:
        return importlib.import_module("tomllib._parser")
    except ImportError:  # a Python whose tomllib is laid out otherwise
        return None


_parser = _parser_module()

#: What ``tomllib._parser.Flags`` must have for :class:`CompactFlags` to stand in for it.
_METHODS = ("add_pending", "finalize_pending", "unset_all", "set", "is_")

Key = tuple[str, ...]
#: A key's flags, its recursive flags (bit masks, ``1 << flag``) and its nested keys.
Node = list[Any]


class CompactFlags:
    """``tomllib._parser.Flags`` with a list per key in place of two sets and two dicts."""

    FROZEN = 0
    EXPLICIT_NEST = 1

    def __init__(self) -> None:
        self._flags: dict[str, Node] = {}
        self._pending_flags: set[tuple[Key, int]] = set()

    def add_pending(self, key: Key, flag: int) -> None:
        self._pending_flags.add((key, flag))

    def finalize_pending(self) -> None:
        for key, flag in self._pending_flags:
            self.set(key, flag, recursive=False)
        self._pending_flags.clear()

    def unset_all(self, key: Key) -> None:
        cont = self._flags
        for k in key[:-1]:
            node = cont.get(k)
            if node is None or node[2] is None:
                return
            cont = node[2]
        cont.pop(key[-1], None)

    def set(self, key: Key, flag: int, *, recursive: bool) -> None:
        cont = self._flags
        for k in key[:-1]:
            node = cont.get(k)
            if node is None:
                node = cont[k] = [0, 0, None]
            if node[2] is None:
                node[2] = {}
            cont = node[2]
        node = cont.get(key[-1])
        if node is None:
            node = cont[key[-1]] = [0, 0, None]
        node[1 if recursive else 0] |= 1 << flag

    def is_(self, key: Key, flag: int) -> bool:
        if not key:
            return False  # the document's root has no flags
        cont = self._flags
        bit = 1 << flag
        for k in key[:-1]:
            node = cont.get(k)
            if node is None:
                return False
            if node[1] & bit:
                return True
            if node[2] is None:
                return False
            cont = node[2]
        node = cont.get(key[-1])
        return node is not None and bool((node[0] | node[1]) & bit)


def usable() -> bool:
    """Whether this Python's ``tomllib`` has the ``Flags`` :class:`CompactFlags` replaces:
    its public names exactly the five methods and the two flags, with their values."""
    flags = getattr(_parser, "Flags", None)
    if not isinstance(flags, type):
        return False
    # dir(): inherited names too (a subclass's added method counts), object's left out
    public = {name for name in set(dir(flags)) - set(dir(object)) if not name.startswith("_")}
    return (
        public == {"FROZEN", "EXPLICIT_NEST", *_METHODS}
        and all(callable(getattr(flags, name, None)) for name in _METHODS)
        and getattr(flags, "FROZEN", None) == CompactFlags.FROZEN
        and getattr(flags, "EXPLICIT_NEST", None) == CompactFlags.EXPLICIT_NEST
    )


_swap = threading.Lock()
#: Set for good the first time a parse asked :class:`CompactFlags` for more than it is.
_fell_back = False
_log = logging.getLogger(__name__)


def loads(text: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, its flags kept in :class:`CompactFlags` when it can be.

    A parse that asks them for more than they are (AttributeError, TypeError) is parsed
    again by ``tomllib`` alone, and so is every later one (a warning, once)."""
    global _fell_back  # noqa: PLW0603  (one flag for the process)
    if _parser is None or _fell_back or not isinstance(text, str) or not usable():
        return tomllib.loads(text)  # (not a str: tomllib's own TypeError, not a fallback)
    with _swap:
        if not _fell_back:  # another thread's parse may have fallen back meanwhile
            original = _parser.Flags
            try:
                setattr(_parser, "Flags", CompactFlags)  # noqa: B010  (a module's private name)
                return tomllib.loads(text)
            except (AttributeError, TypeError) as exc:
                _fell_back = True
                _log.warning(
                    "tomllib's parser asked its key flags for more than the compact record"
                    " has (%s): configurations are parsed by tomllib's own from now on",
                    type(exc).__name__,
                )
            finally:
                setattr(_parser, "Flags", original)  # noqa: B010
        # under the lock: no other parse has the compact flags in place meanwhile
        return tomllib.loads(text)
