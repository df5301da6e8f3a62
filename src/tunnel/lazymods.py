"""Modules ``blitzdns run`` is made to import but never uses: loaded only when asked for
something (:data:`LAZY`).

* ``typing_extensions``: asyncssh 2.14–2.24 imports it for ``Self`` alone (connection,
  forward, listener, process, agent, ...), which the ``typing`` of Python 3.11+ has and
  ``typing_extensions`` re-exports there as the very same object. The module is ~4,900
  lines: ~300 kB of the idle daemon's heap, −2.5 % of its start's instructions.
* ``bz2`` and ``lzma``: ``shutil`` imports both at its import only to note that they can
  be (``import bz2; del bz2``), for its archive functions; each loads its C module and
  compression library (libbz2, liblzma): ~0.3 MB of RSS and ~2.7 M instructions in all.

(bench/notes/startup.md, session 8.) While :func:`start` is in force (``run``,
:func:`blitzdns.entry.main`, before asyncio and asyncssh are imported), each is a
:class:`LazyModule`: the names :data:`LAZY` lists are ``typing``'s
(tests/tunnel/test_lazymods.py checks that they are the real module's own objects); asking
for any other name loads the real module in its place (later imports get the real one)
and answers from it. Nothing differs but when the module loads. Other processes get the
real modules from the start.
"""

from __future__ import annotations

import importlib
import sys
import types
import typing
from typing import Any

LAZY: dict[str, tuple[str, ...]] = {
    "typing_extensions": ("Self",),
    "bz2": (),
    "lzma": (),
}
"""Module → the names it serves without loading: what it re-exports from ``typing``
unchanged on Python 3.11+ and its importers take."""


class LazyModule(types.ModuleType):
    """A module of :data:`LAZY` until something asks it for more than its names."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        for served in LAZY[name]:
            setattr(self, served, getattr(typing, served))

    def __getattr__(self, name: str) -> Any:
        if name == "__path__":  # asked by every `from ... import`: a module, not a package
            raise AttributeError(name)
        return getattr(real(self.__name__), name)


def real(name: str) -> types.ModuleType:
    """The real module ``name``, loaded now if it is not (in place of the lazy one)."""
    module = sys.modules.get(name)
    if isinstance(module, LazyModule):
        del sys.modules[name]
        try:
            return importlib.import_module(name)
        except BaseException:
            sys.modules[name] = module  # as it was: the next ask tries again
            raise
    return module if module is not None else importlib.import_module(name)


def start() -> list[str]:
    """Each module of :data:`LAZY` not loaded yet (and whose names ``typing`` has) is a
    :class:`LazyModule` from now on; which are."""
    for name, served in LAZY.items():
        if name not in sys.modules and all(hasattr(typing, s) for s in served):
            sys.modules[name] = LazyModule(name)
    return [name for name in LAZY if lazy(name)]


def lazy(name: str) -> bool:
    """Whether ``name`` is still the lazy stand-in."""
    return isinstance(sys.modules.get(name), LazyModule)
