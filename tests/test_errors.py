"""The one error edge: blitzdns.errors.explain, and the tree its docstring lists."""

from __future__ import annotations

import errno
import importlib
import pkgutil

import pytest

import blitzdns
from blitzdns import errors
from blitzdns.errors import BlitzdnsError, CannotWrite, ConfigError, NotRunning, Told, explain
from tunnel.errors import AuthFailed, LinkLost, TunnelConfigError


@pytest.mark.parametrize(
    ("error", "told"),
    [
        (
            ConfigError("expected a port", file="c.toml", key="dns.ttl"),
            ("c.toml: dns.ttl: expected a port", 2),
        ),
        (NotRunning("no daemon answers"), ("no daemon answers", 3)),
        (TunnelConfigError("bad forward"), ("bad forward", 2)),
        (AuthFailed("gw: permission denied"), ("gw: permission denied", 1)),
        (LinkLost("keepalive"), ("keepalive", 1)),
        (
            OSError(errno.EROFS, "Read-only file system", "/etc/x"),
            ("cannot write /etc/x: the file system is read-only", 1),
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "/var/x"),
            ("cannot write /var/x: no space left on the device", 1),
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            ("cannot write: no space left on the device", 1),
        ),
    ],
)
def test_what_the_user_is_told(error: BaseException, told: tuple[str, int]) -> None:
    assert explain(error) == Told(*told)


@pytest.mark.parametrize(
    "bug",
    [RuntimeError("a bug"), KeyError("k"), OSError(errno.ECONNRESET, "reset"), ValueError("v")],
)
def test_a_bug_is_not_explained_away(bug: BaseException) -> None:
    assert explain(bug) is None


def test_cannot_write_names_the_file_it_is_given() -> None:
    error = errors.cannot_write(OSError(errno.EDQUOT, "Disk quota exceeded"), "/home/u/f")
    assert isinstance(error, CannotWrite)
    assert str(error) == "cannot write /home/u/f: the disk quota is exhausted"


def every_subclass(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *every_subclass(sub)}
    return found


def test_the_docstring_lists_the_whole_tree() -> None:
    for module in pkgutil.walk_packages(blitzdns.__path__, "blitzdns."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    doc = errors.__doc__ or ""
    missing = sorted(
        c.__name__ for c in every_subclass(BlitzdnsError) if f" {c.__name__} " not in doc
    )
    assert not missing, f"errors.py's docstring does not list: {missing}"
