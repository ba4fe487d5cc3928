"""Running users' callbacks (sync or async) so that they never block or kill their caller.

A component that accepts callbacks (``on_connect``, ``on_disconnect``, ``on_error``) hands
each call to a `CallbackRunner`: calls are queued (bounded) and run one at a time,
in order, in a background task of the component, so a slow callback delays only later
callbacks, never the component's own work. A callback that raises is logged with its
traceback and counted; it is the user's bug to see, never the component's failure.

Example:
    >>> import anyio, logging
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Counts:
    ...     callback_errors: int = 0
    ...     callbacks_dropped: int = 0
    >>> async def main() -> list[str]:
    ...     seen: list[str] = []
    ...     async def log_it(text: str) -> None:
    ...         seen.append(text)
    ...     runner = CallbackRunner(logging.getLogger("demo"), Counts())
    ...     async with anyio.create_task_group() as tg:
    ...         tg.start_soon(runner.run)
    ...         runner.emit(log_it, "first")
    ...         runner.emit(seen.append, "second")
    ...         await runner.drain()
    ...         tg.cancel_scope.cancel()
    ...     return seen
    >>> anyio.run(main)
    ['first', 'second']
"""

from __future__ import annotations

import inspect
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import anyio

__all__ = ["DEFAULT_CALLBACK_QUEUE", "CallbackCounts", "CallbackRunner", "call_user"]

#: Callback calls that may wait to run; beyond it new calls are dropped and counted.
DEFAULT_CALLBACK_QUEUE = 1024


class CallbackCounts(Protocol):
    """The two counters a `CallbackRunner` updates (fields of a stats record)."""

    callback_errors: int
    callbacks_dropped: int


async def call_user(fn: Callable[..., Any], *args: object, log: logging.Logger) -> bool:
    """Call ``fn(*args)``, awaiting the result if it is awaitable; ``False`` if it raised.

    An exception from the callback is logged with its traceback; cancellation passes.
    """
    try:
        result = fn(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:  # the user's callback failed: logged here, counted by the caller
        log.exception("callback %r failed", fn)
        return False
    return True


class CallbackRunner:
    """A bounded queue of callback calls, run in order by `run` in a task of its own.

    Args:
        log: where failing callbacks are logged.
        counts: the stats record to count failures and drops in.
        limit: calls that may wait; beyond it `emit` drops and counts.
    """

    __slots__ = ("_counts", "_idle", "_limit", "_log", "_queue", "_wakeup")

    def __init__(
        self, log: logging.Logger, counts: CallbackCounts, limit: int = DEFAULT_CALLBACK_QUEUE
    ) -> None:
        self._log = log
        self._counts = counts
        self._limit = limit
        self._queue: deque[tuple[Callable[..., Any], tuple[object, ...]]] = deque()
        self._wakeup = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()

    def emit(self, fn: Callable[..., Any], *args: object) -> None:
        """Queue ``fn(*args)``; never blocks (a full queue drops the call and counts it)."""
        if len(self._queue) >= self._limit:
            self._counts.callbacks_dropped += 1
            return
        self._queue.append((fn, args))
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._wakeup.set()

    async def run(self) -> NoReturn:
        """Run queued calls one at a time, in order, until cancelled."""
        queue = self._queue
        while True:
            if not queue:
                self._idle.set()
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            fn, args = queue.popleft()
            if not await call_user(fn, *args, log=self._log):
                self._counts.callback_errors += 1

    async def drain(self) -> None:
        """Wait until every call queued so far has run (bound it with a deadline)."""
        while not self._idle.is_set():
            await self._idle.wait()
