"""Run a coroutine without a task: its first step now, the rest as its futures complete.

A tunneled connection's set-up began with two short coroutines (wrapping the accepted
socket in a transport, opening the SSH channel; the channel open is now no coroutine at
all: :mod:`tunnel.backends.direct`), each awaiting one future. As tasks, each first
step waits for a later turn of the loop, so the channel open left about three turns
after the accept, each turn a chance for other work (another connection's teardown) to
come first; creating, scheduling and finishing the tasks was also a visible part of the
per-connection Python. :class:`Inline` runs the first step in the caller (the channel
open is written in the turn that asked for it) and every later step in the done
callback of the future the coroutine waits on: the same turn a task would have been
woken in. Cancelling cancels that future, so the coroutine sees ``CancelledError`` at
its ``await``, as under a task.

Only for coroutines that await futures (``asyncio.timeout`` and ``current_task`` need a
task: not here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Inline(Generic[T]):
    """Drive ``coro`` to its end, then call ``done(error, result)`` once (``error`` is
    None when it returned ``result``)."""

    __slots__ = ("coro", "done", "finished", "waiting")

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        done: Callable[[BaseException | None, T | None], None],
    ) -> None:
        self.coro = coro
        self.done = done
        self.waiting: asyncio.Future[Any] | None = None
        self.finished = False
        self.step()

    def step(self, _future: object = None) -> None:
        if self.finished:
            return
        self.waiting = None
        try:
            awaited = self.coro.send(None)
        except StopIteration as stop:
            self.finish(None, stop.value)
            return
        except (Exception, asyncio.CancelledError) as exc:
            self.finish(exc, None)
            return
        if awaited is None:  # a bare yield (asyncio.sleep(0)): the next turn
            asyncio.get_running_loop().call_soon(self.step)
            return
        # What a task does with an awaited future: take it off the "blocking" protocol,
        # then resume the coroutine when it is done.
        awaited._asyncio_future_blocking = False
        self.waiting = awaited
        awaited.add_done_callback(self.step)

    def finish(self, error: BaseException | None, result: T | None) -> None:
        self.finished = True
        self.done(error, result)

    def cancel(self) -> None:
        """Raise ``CancelledError`` in the coroutine at its ``await`` (soon, as a task's
        cancel does); ``done`` is then called with it. Nothing when it already ended."""
        if self.finished:
            return
        waiting = self.waiting
        if waiting is not None:
            waiting.cancel()
            return
        self.finished = True  # between steps (after a bare yield): end it here
        self.coro.close()
        self.done(asyncio.CancelledError(), None)
