"""``typing_extensions`` in ``blitzdns run``: loaded only if something asks it for more
than the one name asyncssh takes.

asyncssh 2.14–2.24 imports ``typing_extensions`` for ``Self`` alone (connection, forward,
listener, process, agent, ...), which the ``typing`` of Python 3.11+ has, and which
``typing_extensions`` re-exports there as the very same object. The module itself is
~4,900 lines: ~300 kB of the idle daemon's heap and ~2.5 ms of its start (bench/notes/
startup.md, sessions 7 and 8).

While :func:`start` is in force (``run``, :func:`blitzdns.entry.main`, before asyncssh is
imported), ``typing_extensions`` is :class:`LazyTypingExtensions`: the names of
:data:`SERVED` are ``typing``'s (tests/tunnel/test_lazytyping.py checks that they are
``typing_extensions``'s own objects); asking it for any other name loads the real module
in its place (later imports get the real one) and answers from it. Nothing differs but
when the module loads. Other processes get the real module from the start.
"""

from __future__ import annotations

import importlib
import sys
import types
import typing
from typing import Any

SERVED = ("Self",)
"""What ``typing_extensions`` re-exports from ``typing`` on Python 3.11+, unchanged, and
asyncssh takes."""
NAME = "typing_extensions"


class LazyTypingExtensions(types.ModuleType):
    """``typing_extensions`` until something asks it for more than :data:`SERVED`."""

    def __init__(self) -> None:
        super().__init__(NAME)
        for name in SERVED:
            setattr(self, name, getattr(typing, name))

    def __getattr__(self, name: str) -> Any:
        if name == "__path__":  # asked by every `from ... import`: a module, not a package
            raise AttributeError(name)
        return getattr(real(), name)


def real() -> types.ModuleType:
    """The real ``typing_extensions``, loaded now if it is not (in place of the lazy one)."""
    module = sys.modules.get(NAME)
    if isinstance(module, LazyTypingExtensions):
        del sys.modules[NAME]
        try:
            module = importlib.import_module(NAME)
        except BaseException:
            sys.modules[NAME] = module  # as it was: the next ask tries again
            raise
    return module if module is not None else importlib.import_module(NAME)


def start() -> bool:
    """``import typing_extensions`` gives :class:`LazyTypingExtensions` from now on, unless
    the real one is loaded already or ``typing`` lacks a served name; whether it does."""
    if NAME in sys.modules or not all(hasattr(typing, name) for name in SERVED):
        return isinstance(sys.modules.get(NAME), LazyTypingExtensions)
    sys.modules[NAME] = LazyTypingExtensions()
    return True


def in_force() -> bool:
    return isinstance(sys.modules.get(NAME), LazyTypingExtensions)
