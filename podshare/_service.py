"""One lifecycle for every podshare object that owns background tasks.

Stores, transports, endpoints and channels all have the same shape: ``async with`` opens
them (connect, subscribe, start background tasks), the body of the block uses them, and
leaving the block (or `Service.aclose()`) closes them. `Service` is that shape,
written once:

- **Background tasks live in an inner task group**, inside a cancel scope of their own,
  owned across ``__aenter__``/``__aexit__``. Closing cancels that scope only: the code in
  the user's ``async with`` body is never cancelled by a close.
- **The body's exception passes through unwrapped.** It is not handed to the task group
  (which would wrap it in an `ExceptionGroup`); the block re-raises it as it is.
- **Cancellation is forwarded.** A block left by cancellation hands the cancellation to
  the task group's exit, so cancel scopes unwind as anyio expects.
- **A failing background task fails the block.** Its exception cancels the body and
  leaves ``async with``; a group holding a single exception is unwrapped.
- **``aclose()`` is idempotent** and may be called from anywhere, a background task
  included: the graceful part (`Service._close()`: flush, say goodbye) runs once,
  shielded, within ``close_timeout`` seconds and within the caller's own deadline when
  it has one; a concurrent second call waits for the first to finish.

Subclasses implement `Service._open()` (may start tasks with `Service.start_soon()`
or `Service.start()`), optionally `Service._close()` (graceful, may await) and
`Service._closed()` (synchronous, always runs last, even after a failed open).

Example:
    >>> import anyio
    >>> class Ticker(Service):
    ...     async def _open(self) -> None:
    ...         self.ticks = 0
    ...         self.start_soon(self._run)
    ...     async def _run(self) -> None:
    ...         while True:
    ...             self.ticks += 1
    ...             await anyio.sleep(0.001)
    >>> async def main() -> None:
    ...     async with Ticker() as ticker:
    ...         while ticker.ticks < 3:
    ...             await anyio.sleep(0.001)
    ...     print(ticker.state)
    >>> anyio.run(main)
    closed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVarTuple

import anyio
import anyio.abc
import anyio.lowlevel

from podshare.exceptions import ClosedError, ConfigurationError

__all__ = ["DEFAULT_CLOSE_TIMEOUT", "Service", "check_close_timeout", "is_cancellation"]

PosArgs = TypeVarTuple("PosArgs")

#: Seconds the graceful part of closing may take by default.
DEFAULT_CLOSE_TIMEOUT = 2.0


def check_close_timeout(value: object) -> float:
    """Validate a ``close_timeout`` option (seconds, ``>= 0``, finite) and return it."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(
            f"close_timeout must be a finite number of seconds >= 0, not {value!r}"
        )
    return float(value)


def is_cancellation(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the backend's cancellation (or a group made only of them)."""
    if exc is None:
        return False
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(e) for e in exc.exceptions)
    return False


class Service:
    """Base class of objects that own background tasks across ``async with``.

    Args:
        close_timeout: the most seconds the graceful part of closing may take (it is
            also bounded by the deadline of the code that closes, if any).

    States: ``"new"`` → ``"opening"`` → ``"open"`` → ``"closing"`` → ``"closed"``; a
    service is opened at most once.
    """

    __slots__ = (
        "_close_timeout",
        "_closed_event",
        "_inner",
        "_inner_scope",
        "_outer",
        "_state",
    )

    _service_name: str = ""

    def __init__(self, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        self._close_timeout = check_close_timeout(close_timeout)
        self._state = "new"
        self._outer: anyio.abc.TaskGroup | None = None
        self._inner: anyio.abc.TaskGroup | None = None
        self._inner_scope: anyio.CancelScope | None = None
        self._closed_event: anyio.Event | None = None

    # --- for subclasses ----------------------------------------------------------------

    async def _open(self) -> None:
        """Connect, subscribe and start background tasks; raise to refuse opening."""

    async def _close(self) -> None:
        """The graceful part of closing (flush, goodbye); runs once, shielded, bounded."""

    def _closed(self) -> None:
        """Synchronous cleanup after the background tasks were cancelled; always runs."""

    def _describe(self) -> str:
        """How error messages name this object."""
        return self._service_name or type(self).__name__

    # --- state -------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"new"``, ``"opening"``, ``"open"``, ``"closing"`` or ``"closed"``."""
        return self._state

    @property
    def is_open(self) -> bool:
        """True between a successful ``__aenter__`` and the start of closing."""
        return self._state == "open"

    def _check_open(self) -> None:
        """Raise [`ClosedError`][podshare.ClosedError] unless the service is open."""
        if self._state != "open":
            if self._state in ("new", "opening"):
                raise ClosedError(f"{self._describe()} is not open: use `async with` first")
            raise ClosedError(f"{self._describe()} is closed")

    # --- tasks -------------------------------------------------------------------------

    def start_soon(
        self,
        fn: Callable[[*PosArgs], Coroutine[Any, Any, Any]],
        *args: *PosArgs,
        name: object = None,
    ) -> None:
        """Run ``fn(*args)`` as a background task of this service."""
        inner = self._inner
        if inner is None or self._state not in ("opening", "open"):
            raise ClosedError(f"{self._describe()} is not running")
        inner.start_soon(fn, *args, name=name)

    async def start(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: object, name: object = None
    ) -> Any:
        """Run ``fn(*args, task_status=...)`` as a background task; return what it reports
        through ``task_status.started(value)`` once it does."""
        inner = self._inner
        if inner is None or self._state not in ("opening", "open"):
            raise ClosedError(f"{self._describe()} is not running")
        return await inner.start(fn, *args, name=name)

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError(f"{self._describe()} can be opened only once")
        self._state = "opening"
        self._closed_event = anyio.Event()
        self._inner_scope = anyio.CancelScope()
        outer = anyio.create_task_group()
        await outer.__aenter__()
        self._outer = outer
        try:
            await outer.start(self._supervise)
            await self._open()
        except BaseException as exc:
            await self._finish(type(exc), exc, exc.__traceback__, graceful=False)
            raise
        if self._state == "opening":
            self._state = "open"
        return self

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        scope = self._inner_scope
        assert scope is not None
        with scope:
            async with anyio.create_task_group() as inner:
                self._inner = inner
                task_status.started()
                await anyio.sleep_forever()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self._finish(exc_type, exc, tb, graceful=True)
        return None

    async def aclose(self) -> None:
        """Close: run the graceful part once, then stop every background task.

        Idempotent; safe to call from a background task of this service. The ``async
        with`` block that opened the service still exits normally afterwards.
        """
        if self._state == "new":
            self._state = "closed"
            self._closed()
            return
        await self._shutdown(graceful=True)

    async def _shutdown(self, *, graceful: bool) -> None:
        event = self._closed_event
        if self._state in ("closing", "closed"):
            # Another caller is closing (or did): wait until it has finished.
            if event is not None and not event.is_set():
                await event.wait()
            else:
                await anyio.lowlevel.checkpoint()
            return
        self._state = "closing"
        try:
            if graceful:
                # The budget is read outside the shield, which hides outer deadlines.
                budget = self._close_budget()
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + budget
                    await self._close()
        finally:
            if self._inner_scope is not None:
                self._inner_scope.cancel()
            self._state = "closed"
            try:
                self._closed()
            finally:
                if event is not None:
                    event.set()

    def _close_budget(self) -> float:
        budget = self._close_timeout
        deadline = anyio.current_effective_deadline()
        if math.isfinite(deadline):
            # The closer's own deadline wins when it is nearer (Go's CloseWithContext).
            budget = min(budget, max(0.0, deadline - anyio.current_time()))
        return budget

    async def _finish(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        *,
        graceful: bool,
    ) -> None:
        try:
            await self._shutdown(graceful=graceful)
        finally:
            outer, self._outer = self._outer, None
            self._inner = None
            if outer is not None:
                try:
                    if is_cancellation(exc):
                        # The task group's scope may own this cancellation (a failing
                        # background task cancelled it): let it absorb or re-raise it.
                        await outer.__aexit__(exc_type, exc, tb)
                    else:
                        await outer.__aexit__(None, None, None)
                except BaseExceptionGroup as group:
                    raise _unwrap(group) from None


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A group holding one non-cancellation exception becomes that exception."""
    leaves = [e for e in _leaves(group) if not is_cancellation(e)]
    if len(leaves) == 1:
        return leaves[0]
    return group


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
