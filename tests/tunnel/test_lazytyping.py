"""typing_extensions in `blitzdns run` (tunnel.lazytyping): what asyncssh takes without
loading it, anything else from the real module, loaded then."""

from __future__ import annotations

import subprocess
import sys
import typing

import typing_extensions

from tunnel import lazytyping


def test_the_served_names_are_typing_extensions_own_objects() -> None:
    for name in lazytyping.SERVED:
        assert getattr(typing_extensions, name) is getattr(typing, name), name


def test_the_real_module_is_not_a_package() -> None:
    """The lazy one answers `__path__` as the real one does, without loading it."""
    assert not hasattr(typing_extensions, "__path__")
    assert not hasattr(lazytyping.LazyTypingExtensions(), "__path__")


def test_the_real_module_is_left_where_it_is_loaded() -> None:
    assert not lazytyping.start()
    assert sys.modules["typing_extensions"] is typing_extensions


#: In a fresh interpreter: asyncssh imports with the lazy module, which is never loaded
#: by it; another name then loads the real module in its place.
PROBE = """
import sys
from tunnel import lazytyping, nosftp
nosftp.start()
assert lazytyping.start() and lazytyping.in_force()
import tunnel.backends.asyncssh_link, asyncssh, uvloop
import asyncssh.connection
lazy = sys.modules["typing_extensions"]
print(lazytyping.in_force(), asyncssh.connection.Self is lazy.Self)
from typing_extensions import Literal, TypedDict
real = sys.modules["typing_extensions"]
import typing_extensions
print(lazytyping.in_force(), typing_extensions is real, lazy.deprecated is real.deprecated,
      TypedDict is real.TypedDict, hasattr(real, "__file__"))
"""


def test_asyncssh_imports_without_it_and_any_other_name_loads_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False", "True", "True", "True", "True"]
