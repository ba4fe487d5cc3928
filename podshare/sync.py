"""A blocking API for threads: podshare from Flask, Django, Celery or any plain code.

[`open_store`][podshare.sync.open_store] runs an ordinary async
[`Store`][podshare.Store] on a background thread (an event loop started by anyio's
blocking portal) and hands back a [`SyncStore`][podshare.sync.SyncStore]. Every sync
store and endpoint of a process shares that one loop thread (one per backend), which
stops when the last of them closes; so several stores cost one thread, and stores on
one [`MemoryNetwork`][podshare.transport.MemoryNetwork] reach each other (an in-memory
network belongs to one event loop).

- reads are the async store's own: ``get``, ``store[key]``, ``key in store``,
  ``len(store)``, ``keys()``, ``items()``, ``snapshot()`` run in the calling thread
  and cost about a dict lookup (no thread hop);
- writes (``set``, ``delete``, ``update``, ``set_many``, ``delete_many``, ``try_set``,
  ``refresh``) block the calling thread until the write was published, and raise the
  same podshare exceptions as the async store; ``version(key)`` is a local read and
  ``seed(mapping)`` a local load, as in the async store;
- ``watch(...)`` is a context manager yielding a blocking iterator of events.

Every method may be called from any number of threads at once. Closing the store (the
end of its ``with`` block, `SyncStore.close()`, or interpreter exit for a store
left open) publishes what is pending, leaves the cluster cleanly and ends every open
watch iterator, so no thread stays blocked; afterwards every call raises
[`ClosedError`][podshare.exceptions.ClosedError].

Example:
    >>> from podshare.sync import open_store
    >>> from podshare.transport import MemoryTransport
    >>> with open_store("flags", MemoryTransport, type=bool) as flags:
    ...     flags.set("dark-mode", True)
    ...     print(flags.get("dark-mode"), len(flags))
    True 1

[`open_endpoint`][podshare.sync.open_endpoint] is the same for
[`callreply`][podshare.callreply.Endpoint]: handlers are plain functions run in worker
threads, and ``call`` blocks.

A process that forks (gunicorn with ``--preload``, multiprocessing) must open its
stores *after* the fork, in each worker: a store opened before it is closed in the
child (its event loop thread does not exist there) and raises ``ClosedError``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import inspect
import logging
import os
import threading
from collections.abc import (
    Awaitable,
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, NoReturn, Self, TypeVar, overload

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal

from podshare.callreply.endpoint import Endpoint, EndpointStats
from podshare.crdt.clock import Stamp
from podshare.exceptions import ClosedError, ConfigurationError
from podshare.store.events import Event, Stats
from podshare.store.store import Store
from podshare.store.watch import Watch
from podshare.transport.base import Transport

__all__ = [
    "SyncEndpoint",
    "SyncStore",
    "SyncWatch",
    "TransportFactory",
    "open_endpoint",
    "open_store",
]

T = TypeVar("T")
R = TypeVar("R")

#: What ``transport_factory`` may be: a zero-argument callable returning a transport
#: (or an awaitable of one), called on the store's own thread.
TransportFactory = Callable[[], Transport | Awaitable[Transport]]

_log = logging.getLogger("podshare.sync")


# --- the background event loop ---------------------------------------------------------

# Every open resource, so interpreter exit and fork can find the ones left open, and the
# running loops, one per backend (and backend options), shared by every resource on it.
_open: set[_PortalResource] = set()
_loops: dict[tuple[str, str], _Loop] = {}
_lock = threading.Lock()
_hooks_installed = False
# A forked child's inherited loops (see _detach_all_after_fork).
_abandoned: list[_Loop] = []


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    # threading's exit hooks run before the interpreter joins non-daemon threads, so a
    # thread blocked on a watch iterator is released instead of hanging the exit;
    # atexit is the fallback on interpreters without them.
    # Their order is last-registered-first: make sure concurrent.futures registered its
    # own (which joins pool workers) before ours, so a pool worker blocked on a watch is
    # released by ours first.
    import concurrent.futures.thread  # noqa: F401

    register = getattr(threading, "_register_atexit", None)
    if callable(register):
        register(_close_all_at_exit)
    else:  # pragma: no cover - CPython has had the hook since 3.9
        atexit.register(_close_all_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_detach_all_after_fork)


def _close_all_at_exit() -> None:
    with _lock:
        left = list(_open)
    for resource in left:
        try:
            resource.close()
        except Exception:  # noqa: BLE001  # one failing close must not keep the others open
            _log.exception("closing %r at interpreter exit failed", resource)


def _detach_all_after_fork() -> None:
    # In the child only the forking thread exists: no event loop runs these resources,
    # and a lock another thread held at the fork would stay held forever.
    global _lock
    _lock = threading.Lock()
    # The parent's loops must never be finalised here: finalising one would try to stop
    # its (absent) thread and wait forever. They are kept, unused, for the child's life.
    _abandoned.extend(_loops.values())
    for resource in list(_open):
        resource._detach()
    _open.clear()
    _loops.clear()


class _Loop:
    """An event loop on a background thread (anyio's blocking portal), shared by every
    sync store and endpoint of one backend, and stopped when the last one closes."""

    __slots__ = ("_cm", "key", "portal", "thread", "users")

    def __init__(self, key: tuple[str, str], backend: str, options: dict[str, Any] | None) -> None:
        self.key = key
        self._cm = start_blocking_portal(backend, options, name=f"podshare {backend} loop")
        self.portal = self._cm.__enter__()
        self.thread: int = self.portal.call(threading.get_ident)
        self.users = 0

    def stop(self) -> None:
        """Cancel what is left on the loop (watch tasks, say) and join its thread."""
        try:
            self.portal.call(self.portal.stop, True)
        except RuntimeError:
            pass  # already stopped
        self._cm.__exit__(None, None, None)


def _acquire_loop(backend: str, backend_options: Mapping[str, Any] | None) -> _Loop:
    if not isinstance(backend, str):
        raise ConfigurationError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    options = dict(backend_options) if backend_options is not None else None
    key = (backend, repr(sorted(options.items())) if options else "")
    with _lock:
        loop = _loops.get(key)
        if loop is None:
            loop = _loops[key] = _Loop(key, backend, options)
        loop.users += 1
        return loop


def _release_loop(loop: _Loop) -> None:
    with _lock:
        loop.users -= 1
        if loop.users > 0:
            return
        if _loops.get(loop.key) is loop:
            del _loops[loop.key]
    loop.stop()


class _PortalResource:
    """An async resource served on a background event loop (see `_Loop`).

    Subclasses call `_start()` with an async context manager factory; it is entered
    in a task on the loop and exited there by `close()`.
    """

    __slots__ = ("__weakref__", "_close_lock", "_closed", "_loop", "_served", "_stop", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._closed = True  # until _start succeeded
        self._close_lock = threading.Lock()
        self._loop: _Loop | None = None
        self._served: concurrent.futures.Future[None] | None = None
        self._stop: anyio.Event | None = None

    def _start(
        self,
        opener: Callable[[], AbstractAsyncContextManager[R]],
        backend: str,
        backend_options: Mapping[str, Any] | None,
    ) -> R:
        loop = _acquire_loop(backend, backend_options)
        try:
            served, resource = loop.portal.start_task(self._serve, opener, name=self._what)
        except BaseException:
            _release_loop(loop)
            raise
        self._loop, self._served = loop, served
        self._closed = False
        with _lock:
            _install_hooks()
            _open.add(self)
        return resource  # type: ignore[no-any-return]

    async def _serve(
        self,
        opener: Callable[[], AbstractAsyncContextManager[R]],
        *,
        task_status: TaskStatus[R],
    ) -> None:
        self._stop = anyio.Event()
        async with opener() as resource:
            task_status.started(resource)
            await self._stop.wait()

    @property
    def closed(self) -> bool:
        """True once `close()` was called (or the process forked since opening)."""
        return self._closed

    def _portal(self, what: str) -> BlockingPortal:
        if self._closed:
            raise ClosedError(f"{self._what} is closed")
        loop = self._loop
        assert loop is not None
        if loop.thread == threading.get_ident():
            raise RuntimeError(
                f"{what} on {self._what} cannot run on its own event loop thread (from an "
                "update() function or an on_error callback, say): it would wait for itself"
            )
        return loop.portal

    def _call(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run ``await fn(*args)`` on the loop and return its result in this thread."""
        portal = self._portal("a blocking call")
        try:
            return portal.call(fn, *args)
        except concurrent.futures.CancelledError as exc:
            raise ClosedError(f"{self._what} closed during the call") from exc
        except RuntimeError as exc:
            if self._closed:  # the loop stopped under us
                raise ClosedError(f"{self._what} closed during the call") from exc
            raise

    def _start_task(
        self, fn: Callable[..., Awaitable[Any]], *args: Any
    ) -> tuple[concurrent.futures.Future[Any], Any]:
        portal = self._portal("watch()")
        try:
            return portal.start_task(fn, *args)
        except concurrent.futures.CancelledError as exc:
            raise ClosedError(f"{self._what} closed while starting") from exc

    def _signal(self, fn: Callable[[], object]) -> None:
        """Run the sync ``fn`` on the loop if it still runs (else do nothing)."""
        loop = self._loop
        if loop is None:
            return
        if loop.thread == threading.get_ident():
            fn()
            return
        try:
            loop.portal.call(fn)
        except (RuntimeError, concurrent.futures.CancelledError):
            pass  # the loop has stopped: whatever fn would end has ended with it

    def close(self) -> None:
        """Close: publish what is pending, leave the cluster, end every watch iterator.

        Blocks until done. Idempotent and safe from any thread except the store's own
        event loop (an ``update`` function or ``on_error`` callback). Re-raises an error
        that stopped the resource in the background, if any.
        """
        with self._close_lock:
            if self._closed:
                return
            self._portal("close()")  # refuses the loop's own thread
            self._closed = True
        with _lock:
            _open.discard(self)
        loop, served, stop = self._loop, self._served, self._stop
        assert loop is not None
        assert served is not None
        error: BaseException | None = None
        try:
            if stop is not None:
                self._signal(stop.set)
            try:
                served.result()
            except concurrent.futures.CancelledError:
                pass  # cancelled with the loop: nothing more to report
            except BaseException as exc:  # noqa: BLE001  # re-raised below, once cleaned up
                error = exc
            self._after_close()
        finally:
            _release_loop(loop)
        if error is not None:
            raise error

    def _after_close(self) -> None:
        """Hook: release what is still waiting on the loop for this resource."""

    def _detach(self) -> None:
        """After a fork, in the child: the loop thread does not exist here."""
        self._closed = True
        self._close_lock = threading.Lock()
        self._loop = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def _enter_transport(stack: AsyncExitStack, factory: TransportFactory) -> Transport:
    made = factory()
    if inspect.isawaitable(made):
        made = await made
    if not isinstance(made, Transport):
        raise ConfigurationError(
            f"transport_factory must return a transport (publish, subscribe, aclose), not {made!r}"
        )
    if hasattr(type(made), "__aenter__"):
        entered: object = await stack.enter_async_context(made)  # type: ignore[arg-type]
        return entered if isinstance(entered, Transport) else made
    stack.push_async_callback(made.aclose)
    return made


def _check_factory(transport_factory: object) -> None:
    if not callable(transport_factory):
        raise ConfigurationError(
            "transport_factory must be a zero-argument callable returning a transport "
            f"(MemoryTransport, lambda: RedisTransport(url), ...), not {transport_factory!r}"
        )


# --- the store ---------------------------------------------------------------------------


@overload
def open_store(
    name: str,
    transport_factory: TransportFactory,
    *,
    type: type[T],
    backend: str = ...,
    backend_options: Mapping[str, Any] | None = ...,
    **options: Any,
) -> SyncStore[T]: ...
@overload
def open_store(
    name: str,
    transport_factory: TransportFactory,
    *,
    backend: str = ...,
    backend_options: Mapping[str, Any] | None = ...,
    **options: Any,
) -> SyncStore[Any]: ...
def open_store(
    name: str,
    transport_factory: TransportFactory,
    *,
    backend: str = "asyncio",
    backend_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> SyncStore[Any]:
    """Open a blocking [`SyncStore`][podshare.sync.SyncStore]; use it in ``with`` or close it.

    Starts an event loop on a background thread, calls ``transport_factory()`` there,
    enters the transport, opens ``Store(name, transport, **options)`` and returns once
    it hydrated (like ``async with Store(...)``). Like the builtin ``open()``, the
    result is usable at once and is also a context manager that closes it.

    Args:
        name: the store's name (as for [`Store`][podshare.Store]).
        transport_factory: a zero-argument callable returning a transport (``MemoryTransport``,
            ``lambda: RedisTransport(url)``, an ``async def`` returning one). It is called on
            the store's thread, because a transport belongs to the event loop it runs on.
        backend: ``"asyncio"`` (default) or ``"trio"`` for the background loop.
        backend_options: options for that backend (as for ``anyio.run``). Resources
            opened with the same backend and options share one loop thread; others get
            their own (and then cannot share a ``MemoryNetwork`` with them).
        **options: every [`Store`][podshare.Store] option: ``type``, ``node_id``, ``codec``,
            ``merger``, ``on_error``, ``hydrate_timeout``, ...

    Raises:
        ConfigurationError: an option is invalid (nothing is left running).
        TransportError: the transport could not connect.

    Example:
        >>> from dataclasses import dataclass
        >>> from podshare.sync import open_store
        >>> from podshare.transport import MemoryNetwork, MemoryTransport
        >>> @dataclass(frozen=True)
        ... class Limit:
        ...     per_second: int
        >>> net = MemoryNetwork()
        >>> with (
        ...     open_store("limits", lambda: MemoryTransport(network=net), type=Limit) as a,
        ...     open_store("limits", lambda: MemoryTransport(network=net), type=Limit) as b,
        ... ):
        ...     with b.watch(key="api") as events:
        ...         a.set("api", Limit(per_second=100))   # returns once published
        ...         print(next(events).value)
        Limit(per_second=100)

    In a web app, open one store per process at start-up and close it at shutdown:

    ```python
    store = open_store("flags", lambda: RedisTransport(os.environ["REDIS_URL"]))
    atexit.register(store.close)    # optional: a store left open closes at exit
    ```
    """
    _check_factory(transport_factory)

    @asynccontextmanager
    async def opener() -> Any:
        async with AsyncExitStack() as stack:
            transport = await _enter_transport(stack, transport_factory)
            store: Store[Any] = await stack.enter_async_context(Store(name, transport, **options))
            yield store

    sync_store: SyncStore[Any] = SyncStore.__new__(SyncStore)
    _PortalResource.__init__(sync_store, f"store {name!r}")
    sync_store._watches = set()
    sync_store._store = sync_store._start(opener, backend, backend_options)
    return sync_store


class SyncStore(_PortalResource, Generic[T]):
    """A blocking view of a [`Store`][podshare.Store] running on a background thread.

    Made by [`open_store`][podshare.sync.open_store]. Reads run in the calling thread
    (no hop); writes block until published. Safe to share between threads.

    Example:
        >>> from podshare.sync import open_store
        >>> from podshare.transport import MemoryTransport
        >>> with open_store("counts", MemoryTransport, type=int) as counts:
        ...     counts.set_many({"a": 1, "b": 2})
        ...     counts.update("a", lambda n: (n or 0) + 10)
        ...     counts.delete_many(["b"])
        ...     print(counts.snapshot())
        11
        {'a': 11}
    """

    __slots__ = ("_store", "_watches")

    _store: Store[T]
    _watches: set[SyncWatch[T]]

    def __init__(self) -> None:
        raise TypeError("use podshare.sync.open_store(...) to open a SyncStore")

    # --- identity ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The store's name."""
        return self._store.name

    @property
    def node_id(self) -> str:
        """This replica's node id."""
        return self._store.node_id

    @property
    def value_type(self) -> Any:
        """The value type (``None`` for plain JSON-like data)."""
        return self._store.value_type

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SyncStore {self._store.name!r} node={self._store.node_id!r} {state}>"

    # --- reads (local, in the calling thread) -------------------------------------------

    def get(self, key: str, default: Any = None, /) -> T | Any:
        """The value of ``key``, or ``default``; a local lookup, as ``Store.get``."""
        return self._store.get(key, default)

    def __getitem__(self, key: str) -> T:
        return self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def keys(self) -> KeysView[str]:
        """The live keys, as a view of a copy (other threads may write meanwhile)."""
        return self._store.snapshot().keys()

    def items(self) -> ItemsView[str, T]:
        """The live ``(key, value)`` pairs, as a view of a copy."""
        return self._store.snapshot().items()

    def snapshot(self) -> dict[str, T]:
        """A copy of the whole map."""
        return self._store.snapshot()

    def version(self, key: str) -> Stamp | None:
        """The version of ``key`` here (its stamp), or ``None`` when absent; for
        [`try_set()`][podshare.sync.SyncStore.try_set]. A local read, as ``Store.version``."""
        return self._store.version(key)

    def members(self) -> frozenset[str]:
        """The node ids alive in this store's cluster, this node included."""
        return self._store.members()

    def stats(self) -> Stats:
        """The store's counters (see [`Stats`][podshare.Stats])."""
        return self._store.stats()

    @property
    def synced(self) -> bool:
        """True once hydration finished or gave up (see ``Store.synced``)."""
        return self._store.synced

    # --- writes (block until published) ---------------------------------------------------

    def set(self, key: str, value: T, **options: Any) -> None:
        """Set ``key`` to ``value``; returns once the write was published.

        ``options`` are those of ``Store.set`` (``ephemeral=True``, ``ttl=seconds``).
        Raises what
        ``Store.set`` raises: ``InvalidValue``, ``TransportError`` (the local write
        stands), ``ClosedError``.
        """
        self._call(functools.partial(self._store.set, key, value, **options))

    def delete(self, key: str) -> None:
        """Delete ``key``; returns once the delete was published."""
        self._call(self._store.delete, key)

    def update(self, key: str, fn: Callable[[Any], T]) -> T:
        """Set ``key`` to ``fn(current)`` atomically and return the new value.

        ``fn`` runs on the store's thread, between two writes: keep it quick, and do not
        call this store's blocking methods from it (that raises ``RuntimeError``).
        """
        return self._call(self._store.update, key, fn)

    def set_many(self, mapping: Mapping[str, T], **options: Any) -> None:
        """Set every key of ``mapping`` (validated first); returns once published.

        ``options`` are those of ``Store.set_many`` (``ephemeral=True``, ``ttl=seconds``).
        """
        items = dict(mapping)  # a copy: the caller may change theirs meanwhile
        self._call(functools.partial(self._store.set_many, items, **options))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete every key in ``keys`` together; returns once published.

        As ``Store.delete_many``: every key is validated before anything is deleted
        (a bad key raises ``InvalidValue`` and deletes nothing), and the deletes travel
        in as few messages as fit.
        """
        self._call(self._store.delete_many, list(keys))

    def try_set(self, key: str, value: T, version: Stamp | None) -> bool:
        """Set ``key`` only if its version here is still ``version``; return whether it did.

        As ``Store.try_set``: an optimistic check against this replica (not a
        distributed compare-and-set); ``version=None`` means "only if absent, deleted or
        expired". Blocks until the write was published when it was made.
        """
        return self._call(self._store.try_set, key, value, version)

    def seed(self, mapping: Mapping[str, T]) -> None:
        """Load ``mapping`` into this (empty) replica: no broadcast, no watcher events.

        As ``Store.seed``; it runs on the store's thread. Raises ``StoreNotEmpty`` when
        the replica already holds entries.
        """
        self._call(_seed, self._store, dict(mapping))

    def refresh(self) -> None:
        """Pull what this replica missed from its peers (see ``Store.refresh``)."""
        self._call(self._store.refresh)

    def wait_synced(self) -> None:
        """Block until this replica hydrated (opening already waits for it)."""
        self._call(self._store.wait_synced)

    # --- watching ------------------------------------------------------------------------

    def watch(self, **filters: Any) -> SyncWatch[T]:
        """Watch changes: a context manager yielding a blocking iterator of events.

        ``filters`` are those of ``Store.watch`` (``key=``, ``prefix=``, ``filter=``,
        ``buffer=``, ``members=``); a ``filter`` callable runs on the store's thread.
        Iteration ends when the block is left, when the watcher is dropped as a slow
        consumer (``dropped`` says so), or when the store closes.

        Example:

        ```python
        with store.watch(prefix="flag:") as events:
            for event in events:        # blocks this thread, not the store
                print(event.kind, event.key, event.value)
        ```
        """
        if self._closed:
            raise ClosedError(f"{self._what} is closed")
        return SyncWatch(self, filters)

    def _after_close(self) -> None:
        # The store's close ended every watch's iteration; their tasks still wait for
        # their block to end, which a thread that stopped iterating may never do.
        for watch in list(self._watches):
            watch.close()

    def _detach(self) -> None:
        super()._detach()
        self._store = _Forked(self._what, self._store)  # type: ignore[assignment]


async def _seed(store: Store[Any], mapping: dict[str, Any]) -> None:
    store.seed(mapping)  # on the loop thread, where the replica lives


class _Forked:
    """Stands in for a store in a forked child, where its event loop does not run."""

    __slots__ = ("_what", "name", "node_id", "value_type")

    def __init__(self, what: str, store: Store[Any]) -> None:
        self._what = what
        self.name = store.name
        self.node_id = store.node_id
        self.value_type = store.value_type

    def _closed(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise ClosedError(
            f"{self._what} was opened before this process forked: open stores in each "
            "process after the fork (gunicorn's post_fork hook, or on first use)"
        )

    __getitem__ = __contains__ = __len__ = __iter__ = _closed

    def __getattr__(self, name: str) -> Any:  # get, set, snapshot, ...: all refuse
        return self._closed

    @property
    def synced(self) -> bool:
        return False


class SyncWatch(Generic[T]):
    """A blocking iterator of [`Event`][podshare.Event]s, from ``SyncStore.watch``.

    Use it as a context manager (which opens the watch) and iterate it in one thread;
    [`close()`][podshare.sync.SyncWatch.close] (or leaving the block) from any thread ends the
    iteration.
    """

    __slots__ = ("_done", "_events", "_filters", "_owner", "_served", "_state")

    def __init__(self, owner: SyncStore[T], filters: dict[str, Any]) -> None:
        self._owner = owner
        self._filters = filters
        self._events: Watch[T] | None = None
        self._done: anyio.Event | None = None
        self._served: concurrent.futures.Future[Any] | None = None
        self._state = "new"

    async def _serve(self, *, task_status: TaskStatus[Watch[T]]) -> None:
        self._done = anyio.Event()
        async with self._owner._store.watch(**self._filters) as events:
            task_status.started(events)
            await self._done.wait()

    def __enter__(self) -> SyncWatch[T]:
        if self._state != "new":
            raise RuntimeError("a watch can be entered only once")
        self._state = "open"
        self._served, self._events = self._owner._start_task(self._serve)
        self._owner._watches.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def dropped(self) -> bool:
        """True when the store dropped this watcher because its buffer was full."""
        return self._events is not None and self._events.dropped

    def __iter__(self) -> Iterator[Event[T]]:
        return self

    def __next__(self) -> Event[T]:
        events = self._events
        if events is None or self._state != "open":
            raise StopIteration
        try:
            return self._owner._call(events.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None
        except ClosedError:  # the store closed: the iteration simply ends
            raise StopIteration from None

    def close(self) -> None:
        """End the watch; a thread blocked in ``next()`` gets ``StopIteration``."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closed"
        self._owner._watches.discard(self)
        done, served, loop = self._done, self._served, self._owner._loop
        if done is not None:
            self._owner._signal(done.set)
        if served is not None and loop is not None and loop.thread != threading.get_ident():
            try:
                served.result()
            except concurrent.futures.CancelledError:
                pass  # cancelled when the loop stopped: the watch has ended either way


# --- callreply -------------------------------------------------------------------------------


def open_endpoint(
    transport_factory: TransportFactory,
    node_id: str | None = None,
    *,
    backend: str = "asyncio",
    backend_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> SyncEndpoint:
    """Open a blocking callreply [`SyncEndpoint`][podshare.sync.SyncEndpoint].

    As [`open_store`][podshare.sync.open_store], for an
    [`Endpoint`][podshare.callreply.Endpoint]: ``options`` are the Endpoint's
    (``namespace``, ``call_timeout``, ``max_concurrency``, ...).

    Example:
        >>> from podshare.sync import open_endpoint
        >>> from podshare.transport import MemoryNetwork, MemoryTransport
        >>> with open_endpoint(MemoryTransport, "pod-a") as ep:
        ...     ep.register("user:1", "push", lambda payload: b"got " + payload)
        ...     print(ep.owner("user:1"), ep.call("user:1", "push", b"hello"))
        pod-a b'got hello'

    Any other pod calls ``user:1`` the same way once the route reached it; the handler
    runs here, in a worker thread.
    """
    _check_factory(transport_factory)

    @asynccontextmanager
    async def opener() -> Any:
        async with AsyncExitStack() as stack:
            transport = await _enter_transport(stack, transport_factory)
            endpoint = await stack.enter_async_context(Endpoint(transport, node_id, **options))
            yield endpoint

    sync_endpoint = SyncEndpoint.__new__(SyncEndpoint)
    _PortalResource.__init__(sync_endpoint, f"endpoint {node_id or '(random id)'}")
    sync_endpoint._endpoint = sync_endpoint._start(opener, backend, backend_options)
    return sync_endpoint


class SyncEndpoint(_PortalResource):
    """A blocking view of a callreply [`Endpoint`][podshare.callreply.Endpoint].

    Made by [`open_endpoint`][podshare.sync.open_endpoint]. Handlers are plain functions
    ``fn(payload: bytes) -> bytes``, each call run in a worker thread; ``call`` blocks
    the calling thread until the reply arrives and raises the same
    [`CallError`][podshare.exceptions.CallError]\\ s as ``Endpoint.call``.
    """

    __slots__ = ("_endpoint",)

    _endpoint: Endpoint

    def __init__(self) -> None:
        raise TypeError("use podshare.sync.open_endpoint(...) to open a SyncEndpoint")

    @property
    def node_id(self) -> str:
        """This pod's node id."""
        return self._endpoint.node_id

    @property
    def namespace(self) -> str:
        """The namespace whose routes and calls this endpoint sees."""
        return self._endpoint.namespace

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SyncEndpoint node={self._endpoint.node_id!r} {state}>"

    def register(self, target: str, method: str, fn: Callable[[bytes], bytes]) -> None:
        """Serve ``method`` of ``target`` here with the plain function ``fn``.

        Each call runs ``fn(payload)`` in a worker thread (anyio's thread pool), so a
        slow ``fn`` blocks neither the endpoint nor other calls. When the caller's
        deadline passes the call is answered as cancelled, but the thread runs ``fn`` to
        its end (threads cannot be interrupted): keep handlers bounded.
        """
        if not callable(fn) or inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                "fn must be a plain function (payload: bytes) -> bytes; async handlers "
                "belong on podshare.callreply.Endpoint"
            )

        async def handler(payload: bytes) -> bytes:
            return await anyio.to_thread.run_sync(fn, payload, abandon_on_cancel=True)

        self._call(self._endpoint.register, target, method, handler)

    def unregister(self, target: str) -> None:
        """Stop serving ``target`` here and drop its route if this node still owns it."""
        self._call(self._endpoint.unregister, target)

    def call(self, target: str, method: str, payload: bytes, timeout: float | None = None) -> bytes:
        """Call ``method`` on ``target``'s owner; block until its reply (or an error)."""
        return self._call(self._endpoint.call, target, method, payload, timeout)

    def owner(self, target: str) -> str | None:
        """The node that owns ``target``, from the local route table (no I/O)."""
        return self._guard(self._endpoint.owner, target)

    def members(self) -> frozenset[str]:
        """The live nodes of this namespace, as this pod sees them."""
        return self._guard(self._endpoint.members)

    def routes(self) -> dict[str, str]:
        """A copy of the route table, ``{target: owner node}``."""
        return self._guard(self._endpoint.routes)

    def targets(self) -> frozenset[str]:
        """The targets registered on this endpoint."""
        return self._endpoint.targets()

    def stats(self) -> EndpointStats:
        """The endpoint's counters."""
        return self._endpoint.stats()

    def _guard(self, fn: Callable[..., R], *args: Any) -> R:
        if self._closed:
            raise ClosedError(f"{self._what} is closed")
        return fn(*args)
