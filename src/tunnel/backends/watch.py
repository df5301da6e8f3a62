"""Reading registrations for the tunnel's client sockets, on asyncio's selector loop
without its checks for a transport.

A flow's client socket is read without an asyncio transport
(:class:`tunnel.backends.asyncssh_link._ClientSide`): one ``add_reader`` when the flow
starts and one ``remove_reader`` when it ends or pauses. On asyncio's selector loop
(CPython 3.11 to 3.13: ``BaseSelectorEventLoop``) each of these first checks that no
transport owns the descriptor (``_ensure_fd_no_transport``: a lookup in a
``WeakValueDictionary`` that raises and catches ``KeyError`` for such a socket), and
``add_reader`` then asks the selector for a registration that is not there (two more
``KeyError`` raised and caught) before registering it: three exceptions and ~40 Python
lines per connection (bench/notes/roundtrip.md, session 9). The socket is the tunnel's
own (no transport was ever made for it), so here:

* :func:`reader_calls`'s add registers the descriptor with the loop's selector as
  asyncio's ``_add_reader`` does when there is no registration (the same ``Handle``,
  the same key data), and goes asyncio's own way (``add_reader``) when there is one
  (the selector says so: ``KeyError``, nothing changed);
* its remove is asyncio's ``_remove_reader`` (the selector's registration and the
  handle, as ``remove_reader`` does after its check).

Any other loop (uvloop: its C code has none of this), or an asyncio whose methods are
not the ones this repeats (checked by the names their code uses): the loop's own
``add_reader`` and ``remove_reader``.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any

ADD_READER_NAMES = frozenset(
    [
        "EVENT_READ",
        "Handle",
        "KeyError",
        "_check_closed",
        "_selector",
        "cancel",
        "data",
        "events",
        "get_key",
        "modify",
        "register",
        "selectors",
    ]
)
"""The names asyncio's ``BaseSelectorEventLoop._add_reader`` uses (3.11 to 3.13)."""
REMOVE_READER_NAMES = frozenset(
    [
        "EVENT_READ",
        "KeyError",
        "_selector",
        "cancel",
        "data",
        "events",
        "get_key",
        "is_closed",
        "modify",
        "selectors",
        "unregister",
    ]
)
"""The names asyncio's ``BaseSelectorEventLoop._remove_reader`` uses (3.11 to 3.13)."""

Add = Callable[[int, Callable[[], None]], Any]
Remove = Callable[[int], Any]


def fits(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is asyncio's selector loop with the reader methods repeated here."""
    base = getattr(asyncio, "selector_events", None)
    if base is None or not isinstance(loop, base.BaseSelectorEventLoop):
        return False
    cls = type(loop)
    add = getattr(cls, "_add_reader", None)
    remove = getattr(cls, "_remove_reader", None)
    if add is not base.BaseSelectorEventLoop._add_reader:
        return False
    if remove is not base.BaseSelectorEventLoop._remove_reader:
        return False
    return (
        set(add.__code__.co_names) == ADD_READER_NAMES
        and set(remove.__code__.co_names) == REMOVE_READER_NAMES
        and isinstance(getattr(loop, "_selector", None), selectors.BaseSelector)
    )


def reader_calls(loop: asyncio.AbstractEventLoop) -> tuple[Add, Remove]:
    """``add(fd, callback)`` and ``remove(fd)`` for a descriptor no transport owns: the
    loop's ``add_reader`` and ``remove_reader``, without their transport check on
    asyncio's selector loop (see the module's text)."""
    if not fits(loop):
        return loop.add_reader, loop.remove_reader
    selector_loop: Any = loop
    handle_of = asyncio.Handle
    read = selectors.EVENT_READ

    def add(fd: int, callback: Callable[[], None]) -> None:
        if selector_loop.is_closed():
            raise RuntimeError("Event loop is closed")  # as asyncio's _check_closed
        try:
            selector_loop._selector.register(fd, read, (handle_of(callback, (), loop, None), None))
        except KeyError:  # registered already (its writer): asyncio's own way
            loop.add_reader(fd, callback)

    return add, selector_loop._remove_reader
