"""Modules `blitzdns run` never uses (tunnel.lazymods): what their importers take without
loading them, anything else from the real module, loaded then."""

from __future__ import annotations

import bz2
import lzma
import subprocess
import sys
import typing

import typing_extensions

from tunnel import lazymods


def test_the_served_names_are_the_real_module_s_own_objects() -> None:
    for name, served in lazymods.LAZY.items():
        module = {"typing_extensions": typing_extensions, "bz2": bz2, "lzma": lzma}[name]
        for attribute in served:
            assert getattr(module, attribute) is getattr(typing, attribute), attribute


def test_the_lazy_ones_are_not_packages_as_the_real_ones() -> None:
    """`__path__` is answered as the real module answers it, without loading it."""
    for name in lazymods.LAZY:
        assert not hasattr(sys.modules[name], "__path__")
        assert not hasattr(lazymods.LazyModule(name), "__path__")


def test_the_real_modules_are_left_where_they_are_loaded() -> None:
    assert lazymods.start() == []
    assert sys.modules["typing_extensions"] is typing_extensions and sys.modules["bz2"] is bz2


#: In a fresh interpreter: asyncssh and shutil import with the lazy modules, which neither
#: loads; another name then loads the real module in its place.
PROBE = """
import sys
from tunnel import lazymods, nosftp
nosftp.start()
assert lazymods.start() == ["typing_extensions", "bz2", "lzma"]
import tunnel.backends.asyncssh_link, asyncssh, uvloop, shutil
import asyncssh.connection
lazy = sys.modules["typing_extensions"]
print(lazymods.lazy("typing_extensions"), asyncssh.connection.Self is lazy.Self)
print(lazymods.lazy("bz2"), lazymods.lazy("lzma"), "_bz2" in sys.modules, "_lzma" in sys.modules)
from typing_extensions import Literal, TypedDict
real = sys.modules["typing_extensions"]
import typing_extensions
print(lazymods.lazy("typing_extensions"), typing_extensions is real,
      lazy.deprecated is real.deprecated, TypedDict is real.TypedDict)
packed = sys.modules["bz2"].compress(b"x" * 100)  # the shutil-held name works: loads it
import bz2
print(lazymods.lazy("bz2"), bz2.decompress(packed) == b"x" * 100, "_bz2" in sys.modules)
"""


def test_asyncssh_and_shutil_import_without_them_and_any_other_name_loads_them() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines == [
        ["True", "True"],
        ["True", "True", "False", "False"],
        ["False", "True", "True", "True"],
        ["False", "True", "True"],
    ]
