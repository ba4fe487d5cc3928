"""The anyio driver: :class:`Store`, a replicated ``dict[str, T]`` over a transport.

The store is a thin shell around the sans-I/O :class:`~podshare.store.replica.Replica`:
it moves received bytes and the wall clock into the replica, publishes what the replica
queues, and dispatches the events the replica returns to watchers. All of its background
work (receive loops, the flusher that publishes write batches, the ticker, anti-entropy)
runs in a task group owned by ``async with Store(...)``, so nothing outlives the block.

Write path (group commit): a write is applied to the replica at once (reads see it
immediately, watchers get their event), then the writer waits for the flusher to
publish the batch that holds it. Writes made while a batch is being published coalesce
into the next one, so many concurrent writers cost a few messages, not one each.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import (
    Awaitable,
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import replace
from types import TracebackType
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar, overload

import anyio
from anyio.abc import TaskGroup

from podshare.crdt.merger import Merger, merger_for
from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    InvalidValue,
    PodshareError,
    TransportError,
)
from podshare.store.codec import Codec, ValueCodec, value_codec
from podshare.store.events import Event, Stats
from podshare.store.replica import Outgoing, Replica, ReplicaOptions
from podshare.store.watch import Watch, WatcherRegistry, check_buffer
from podshare.transport.base import GapReporting, Transport, max_message_size

__all__ = ["MAX_KEY_LENGTH", "MAX_NAME_LENGTH", "Store"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
D = TypeVar("D")

#: Longest key accepted, in characters.
MAX_KEY_LENGTH = 1024
#: Longest store name accepted, in characters (internals §3).
MAX_NAME_LENGTH = 200
#: Longest node id accepted, in characters (a stamp's origin is capped at this on the wire).
MAX_NODE_ID_LENGTH = 256

_MISSING: Any = object()
_log = logging.getLogger("podshare.store")

# How long close() spends publishing the last batch and the goodbye before giving up.
_CLOSE_FLUSH_TIMEOUT = 2.0
# The shortest bound refresh() waits for a digest exchange to complete.
_MIN_REFRESH_TIMEOUT = 1.0
# Backoff of the retries of a gap's refresh that did not complete: the first delay, and
# the cap (further capped by anti_entropy_interval).
_RETRY_MIN = 0.1
_RETRY_MAX = 5.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _default_node_id() -> str:
    host = socket.gethostname().replace("#", "-")[:64] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class _Getter(Protocol[T_co]):
    """The type of ``Store.get``: ``dict.get``'s signature."""

    @overload
    def __call__(self, key: str, /) -> T_co | None: ...
    @overload
    def __call__(self, key: str, default: D, /) -> T_co | D: ...


class _Batch:
    """Writes waiting for one publish round (group commit).

    The event is made only when a writer has to wait: a writer that publishes its own
    batch never needs one.
    """

    __slots__ = ("_event", "done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None
        self._event: anyio.Event | None = None

    async def wait(self) -> None:
        if self.done:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def finish(self) -> None:
        self.done = True
        if self._event is not None:
            self._event.set()


class Store(Generic[T]):
    """A replicated ``dict[str, T]``: local reads, writes broadcast over ``transport``.

    Open it with ``async with``; reads are synchronous and local, writes are async and
    return once their batch was published. ``Store[Config](...)`` (or ``type=Config``)
    makes a typed store whose values round-trip across pods; a type with a
    ``merge(self, other)`` method (``GSet``, ``PNCounter``, ``ORSet``, your own) is its
    own merger.

    Args:
        name: the store's name; every pod sharing the map uses the same one (non-empty,
            at most 200 characters, no ``#``).
        transport: the :class:`~podshare.transport.base.Transport` to talk over.
        node_id: this replica's unique id (default: hostname, pid and a random suffix).
        type: the value type (same as ``Store[type]``).
        merger: a :class:`~podshare.crdt.merger.Merger` joining values of a key instead
            of last-writer-wins.
        codec: the value format: ``"json"`` (default), ``"msgpack"`` or a
            :class:`~podshare.store.codec.Codec`.
        on_error: called with each :class:`~podshare.exceptions.PodshareError` met in
            the background (undecodable messages, clock skew); may be sync or async.
            It runs only when the store is consistent and may call back into the store.
        logger: a stdlib logger (default ``logging.getLogger("podshare.store")``).
        watch_buffer: the default buffer of a watcher, in events.
        tombstone_ttl: seconds a delete is remembered before it is compacted.
        compaction_interval: seconds between tombstone compactions.
        hydrate_timeout: the longest ``async with`` waits for peers to hand over state.
        max_clock_skew: seconds a remote stamp may be ahead before it is reported.
        anti_entropy_interval: seconds between automatic refreshes.
        heartbeat_interval: seconds between liveness heartbeats.
        down_after: seconds of silence after which a node counts as down (its
            ephemeral entries are removed).

    Raises:
        ConfigurationError: an option is invalid; the message names it.

    Example:
        >>> import anyio
        >>> from podshare import Store
        >>> from podshare.transport import MemoryTransport
        >>> async def main() -> None:
        ...     async with MemoryTransport() as tr, Store[int]("counts", tr) as store:
        ...         await store.set("a", 1)
        ...         print(store.get("a"), "a" in store, len(store))
        >>> anyio.run(main)
        1 True 1
    """

    __slots__ = (
        "__weakref__",  # so collectors and caches can hold stores weakly
        "_anti_entropy_interval",
        "_batch",
        "_bytes_sent",
        "_codec",
        "_flush_lock",
        "_gap",
        "_hydrate_timeout",
        "_hydration_seconds",
        "_inbox",
        "_log",
        "_merger",
        "_messages_sent",
        "_name",
        "_node_id",
        "_on_error",
        "_options",
        "_publish_failing",
        "_queued",
        "_remove_gap_listener",
        "_replica",
        "_stack",
        "_state",
        "_sync_waiters",
        "_synced",
        "_tg",
        "_ticker_target",
        "_topic",
        "_transport",
        "_type",
        "_values",
        "_wake_flusher",
        "_wake_ticker",
        "_watchers",
        "get",
    )

    # A slot, not a method: while open it *is* the replica's ``dict.get`` (bound), so a
    # read costs one slot load and one C call.
    get: _Getter[T]
    """``get(key, default=None, /)``: the value of ``key``, or ``default`` when absent.

    Local and synchronous; costs about one ``dict.get``. ``default`` is positional, as
    with ``dict.get``. Raises :class:`~podshare.exceptions.ClosedError` outside
    ``async with``.
    """

    _value_type: ClassVar[Any] = None
    _typed_classes: ClassVar[dict[Any, type[Store[Any]]]] = {}

    def __class_getitem__(cls, params: Any) -> Any:
        """``Store[Config]``: a subclass that remembers ``Config`` as its value type.

        Type variables (``Store[T]`` in generic code) give the ordinary generic alias.
        """
        alias = super().__class_getitem__(params)  # type: ignore[misc]
        if getattr(alias, "__parameters__", ()):
            return alias
        try:
            cached = cls._typed_classes.get((cls, params))
        except TypeError:  # an unhashable parameter: build the subclass every time
            cached = None
        if cached is not None:
            return cached
        typed = type(
            f"{cls.__name__}[{_type_name(params)}]",
            (cls,),
            {
                "__slots__": (),
                "_value_type": params,
                "__module__": cls.__module__,
                "__doc__": cls.__doc__,
            },
        )
        try:
            cls._typed_classes[(cls, params)] = typed
        except TypeError:
            pass
        return typed

    def __init__(
        self,
        name: str,
        transport: Transport,
        *,
        node_id: str | None = None,
        type: Any = None,
        merger: Merger[T] | None = None,
        codec: Codec | str | None = None,
        on_error: Callable[[PodshareError], object] | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        watch_buffer: int = 64,
        tombstone_ttl: float = 86400.0,
        compaction_interval: float = 300.0,
        hydrate_timeout: float = 10.0,
        max_clock_skew: float = 60.0,
        anti_entropy_interval: float = 30.0,
        heartbeat_interval: float = 1.0,
        down_after: float = 5.0,
    ) -> None:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH or "#" in name:
            raise ConfigurationError(
                f"name must be a non-empty str of at most {MAX_NAME_LENGTH} characters "
                f"without '#', not {name!r}"
            )
        if not isinstance(transport, Transport):
            raise ConfigurationError(
                f"transport must implement publish(), subscribe() and aclose(), not {transport!r}"
            )
        if node_id is None:
            node_id = _default_node_id()
        elif (
            not isinstance(node_id, str)
            or not node_id
            or len(node_id) > MAX_NODE_ID_LENGTH
            or "#" in node_id
        ):
            raise ConfigurationError(
                f"node_id must be a non-empty str of at most {MAX_NODE_ID_LENGTH} characters "
                f"without '#', not {node_id!r}"
            )
        class_type = self._value_type
        if type is not None and class_type is not None and type != class_type:
            raise ConfigurationError(
                f"type={_type_name(type)} conflicts with {_type_name(class_type)} given as "
                f"Store[{_type_name(class_type)}]"
            )
        value_type = type if type is not None else class_type
        if merger is None and value_type is not None:
            merger = merger_for(value_type)
        elif merger is not None and not callable(getattr(merger, "merge", None)):
            raise ConfigurationError(f"merger must have a merge(a, b) method, not {merger!r}")
        # value_codec names `codec` or `type` in its ConfigurationError.
        self._codec: ValueCodec[T] = value_codec(value_type, codec)
        if on_error is not None and not callable(on_error):
            raise ConfigurationError(f"on_error must be callable, not {on_error!r}")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            raise ConfigurationError(f"logger must be a logging.Logger, not {logger!r}")
        check_buffer("watch_buffer", watch_buffer)
        _check_seconds("tombstone_ttl", tombstone_ttl)
        _check_seconds("compaction_interval", compaction_interval)
        _check_seconds("hydrate_timeout", hydrate_timeout, allow_zero=True)
        _check_seconds("max_clock_skew", max_clock_skew)
        _check_seconds("anti_entropy_interval", anti_entropy_interval)
        _check_seconds("heartbeat_interval", heartbeat_interval)
        _check_seconds("down_after", down_after)
        if down_after <= heartbeat_interval:
            raise ConfigurationError(
                f"down_after ({down_after!r}) must be greater than heartbeat_interval "
                f"({heartbeat_interval!r})"
            )

        self._name = name
        self._node_id = node_id
        self._transport = transport
        self._type = value_type
        self._merger = merger
        self._on_error = on_error
        self._log = logger if logger is not None else _log
        self._hydrate_timeout = float(hydrate_timeout)
        self._anti_entropy_interval = float(anti_entropy_interval)
        self._topic = f"ps/{name}"
        self._inbox = f"ps/{name}#{node_id}"
        self._options = ReplicaOptions(
            tombstone_ttl_ms=_ms(tombstone_ttl),
            compaction_interval_ms=_ms(compaction_interval),
            hydrate_timeout_ms=_ms(hydrate_timeout),
            max_clock_skew_ms=_ms(max_clock_skew),
            heartbeat_interval_ms=_ms(heartbeat_interval),
            down_after_ms=_ms(down_after),
            max_message_size=max_message_size(transport),
        )
        self._watchers: WatcherRegistry[T] = WatcherRegistry(buffer=watch_buffer)
        self._replica: Replica[T] | None = None
        self._values: dict[str, T] = {}
        self._state = "new"  # new -> open -> closing -> closed
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._batch = _Batch()
        self._wake_flusher = anyio.Event()
        self._wake_ticker = anyio.Event()
        self._ticker_target = math.inf
        # fast_acquire: uncontended, taking the lock is a flag test with no checkpoint (a
        # sizeable part of a write's cost on asyncio); the round's publish is one anyway.
        self._flush_lock = anyio.Lock(fast_acquire=True)
        # Messages taken from the replica outside a flush round (after receive/tick).
        self._queued: list[Outgoing] = []
        self._gap = anyio.Event()
        self._synced = anyio.Event()
        self._sync_waiters: list[anyio.Event] = []
        self._remove_gap_listener: Callable[[], None] | None = None
        self._messages_sent = 0
        self._bytes_sent = 0
        self._hydration_seconds = 0.0
        self._publish_failing = False
        self.get = _closed_get

    # --- identity ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The store's name (shared by every replica of the map)."""
        return self._name

    @property
    def node_id(self) -> str:
        """This replica's node id."""
        return self._node_id

    @property
    def value_type(self) -> Any:
        """The value type (``None`` for plain JSON-like data)."""
        return self._type

    def __repr__(self) -> str:
        return f"<Store {self._name!r} node={self._node_id!r} {self._state}>"

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Store[T]:
        if self._state != "new":
            raise ClosedError(f"store {self._name!r} can be opened only once")
        self._state = "opening"
        now = _now_ms()
        replica: Replica[T] = Replica(
            self._name,
            self._node_id,
            self._codec,
            merger=self._merger,
            options=self._options,
            now=now,
        )
        self._replica = replica
        self._values = replica.values
        stack = AsyncExitStack()
        try:
            broadcast = await stack.enter_async_context(self._transport.subscribe(self._topic))
            inbox = await stack.enter_async_context(self._transport.subscribe(self._inbox))
            tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            self._state = "closed"
            raise
        self._stack = stack
        self._tg = tg
        self._state = "open"
        self.get = self._values.get  # type: ignore[assignment]
        try:
            tg.start_soon(self._receive_loop, broadcast, name=f"podshare {self._name} receive")
            tg.start_soon(self._receive_loop, inbox, name=f"podshare {self._name} inbox")
            tg.start_soon(self._flusher, name=f"podshare {self._name} flusher")
            tg.start_soon(self._ticker, name=f"podshare {self._name} ticker")
            tg.start_soon(self._anti_entropy, name=f"podshare {self._name} anti-entropy")
            if isinstance(self._transport, GapReporting):
                self._remove_gap_listener = self._transport.add_gap_listener(self._gap.set)
            await self._hydrate()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _hydrate(self) -> None:
        replica = self._require_replica()
        started = time.perf_counter()
        replica.start_sync(_now_ms(), hydrate=True)
        self._after(())
        with anyio.move_on_after(self._hydrate_timeout):
            await self._synced.wait()
        # An empty cluster or silent peers are not an error: serve what we have.
        self._synced.set()
        self._hydration_seconds = time.perf_counter() - started
        self._log.debug(
            "store %r hydrated in %.3fs (%d keys, synced=%s)",
            self._name,
            self._hydration_seconds,
            len(self._values),
            replica.synced,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._state in ("closing", "closed"):
            return None
        self._state = "closing"
        stack, tg = self._stack, self._tg
        try:
            # Shielded: a store left by cancellation still hands its last batch over and
            # says goodbye, within a bound.
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_FLUSH_TIMEOUT):
                await self._flush_round(final=True)
        finally:
            self._state = "closed"
            self.get = _closed_get
            self._watchers.close()
            if self._remove_gap_listener is not None:
                self._remove_gap_listener()
                self._remove_gap_listener = None
            for waiter in self._sync_waiters:
                waiter.set()
            self._synced.set()
            if tg is not None:
                tg.cancel_scope.cancel()
            if stack is not None:
                self._stack = self._tg = None
                if exc is not None and _is_cancellation(exc):
                    # The task group's scope owns this cancellation (or passes it on).
                    await stack.__aexit__(exc_type, exc, tb)
                else:
                    # The body's own exception leaves `async with` as it is, not wrapped
                    # in the task group's ExceptionGroup.
                    await stack.__aexit__(None, None, None)
        return None

    def _require_replica(self) -> Replica[T]:
        replica = self._replica
        if replica is None:
            raise ClosedError(f"store {self._name!r} is not open")
        return replica

    def _check_open(self) -> Replica[T]:
        if self._state != "open":
            raise ClosedError(f"store {self._name!r} is {_STATE_WORDS.get(self._state)}")
        return self._replica  # type: ignore[return-value]

    # --- reads (sync, local) -----------------------------------------------------

    def __getitem__(self, key: str) -> T:
        self._check_readable()
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        self._check_readable()
        return key in self._values

    def __len__(self) -> int:
        self._check_readable()
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        # Over a copy of the keys: a loop that awaits must not see the dict change size.
        self._check_readable()
        return iter(list(self._values))

    def keys(self) -> KeysView[str]:
        """The live keys (a view: take ``list()`` of it before awaiting anything)."""
        self._check_readable()
        return self._values.keys()

    def items(self) -> ItemsView[str, T]:
        """The live ``(key, value)`` pairs (a view: copy it before awaiting anything)."""
        self._check_readable()
        return self._values.items()

    def snapshot(self) -> dict[str, T]:
        """A copy of the whole map, safe to keep across awaits."""
        self._check_readable()
        return dict(self._values)

    def _check_readable(self) -> None:
        if self._state not in ("open", "opening"):
            _closed_get(None)

    # --- writes (async) ----------------------------------------------------------

    async def set(self, key: str, value: T, *, ephemeral: bool = False) -> None:
        """Set ``key`` to ``value`` (join it into the key in a merger store).

        The write is applied locally at once and returns after the batch holding it was
        published. With ``ephemeral=True`` the entry lives only while this node is up.

        Raises:
            InvalidValue: a bad key, or a value the store's type or codec refuses
                (nothing was changed).
            TransportError: the publish failed; the local write stands and anti-entropy
                repairs peers later.
            ClosedError: the store is not open.
        """
        replica = self._check_open()
        _check_key(key)
        events = replica.local_set(key, value, _now_ms(), ephemeral=bool(ephemeral))
        await self._commit(events)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a tombstone that wins over older writes everywhere).

        Raises :class:`~podshare.exceptions.InvalidValue` for a bad key,
        :class:`~podshare.exceptions.TransportError` when the publish failed (the local
        delete stands) and :class:`~podshare.exceptions.ClosedError` when closed.
        """
        replica = self._check_open()
        _check_key(key)
        events = replica.local_delete(key, _now_ms())
        await self._commit(events)

    async def update(self, key: str, fn: Callable[[Any], T]) -> T:
        """Set ``key`` to ``fn(current)`` and return what was set.

        ``fn`` receives the current value, or the type's empty value for CRDT types
        (``GSet()``, ``PNCounter()``...), or ``None``. Reading and writing happen without
        an await in between, so concurrent updates in this process never lose each other.

        Example::

            await counters.update("hits", lambda c: c.increment(counters.node_id))
        """
        replica = self._check_open()
        _check_key(key)
        current = self._values.get(key, _MISSING)
        if current is _MISSING:
            current = replica.empty_value(key)
        new = fn(current)
        events = replica.local_set(key, new, _now_ms())
        await self._commit(events)
        return new

    async def set_many(self, mapping: Mapping[str, T]) -> None:
        """Set every key of ``mapping``; they travel together in as few messages as fit.

        Every key and value is validated before anything changes.
        """
        replica = self._check_open()
        items = list(mapping.items())
        for key, _ in items:
            _check_key(key)
        await self._commit(replica.local_set_many(items, _now_ms()))

    async def _commit(self, events: list[Event[T]]) -> None:
        """Dispatch a local write's events, then wait until its batch was published.

        Group commit: when no publish is under way the writer publishes its batch itself
        (no task switch on the latency path); otherwise it waits, and the flusher task
        publishes every write made meanwhile as one batch when the current round ends.
        """
        batch = self._batch
        # A local write changes no deadline and no sync state: dispatch is all it needs.
        if events:
            self._watchers.dispatch(events)
        if not self._flush_lock.locked():
            await self._flush_round()
        else:
            self._wake_flusher.set()
        await batch.wait()  # returns at once after an inline flush
        if batch.error is not None:
            err = batch.error
            if isinstance(err, ClosedError):
                raise ClosedError(str(err)) from err
            raise TransportError(f"publish failed: {err}") from err

    # --- watching ----------------------------------------------------------------

    def watch(
        self,
        *,
        key: str | None = None,
        prefix: str | None = None,
        buffer: int | None = None,
        members: bool = False,
    ) -> AbstractAsyncContextManager[Watch[T]]:
        """Watch changes: an async context manager yielding an async iterator of events.

        ``key`` or ``prefix`` (not both) select the keys; the filter runs before the
        buffer, so unwatched keys never fill it. A watcher whose buffer (``buffer``
        events, default ``watch_buffer``) is full is dropped rather than slowing writers:
        its iteration ends and ``stats().watchers_dropped`` counts it; watch again and
        ``refresh()``. ``members=True`` adds ``NODE_UP``/``NODE_DOWN`` events.
        Iteration ends when the store closes.

        Example::

            async with store.watch(prefix="ws:") as events:
                async for ev in events:
                    print(ev.kind, ev.key, ev.value)
        """
        self._check_open()
        return self._watchers.open(key=key, prefix=prefix, buffer=buffer, members=members)

    # --- sync ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Pull what this replica missed: exchange digests, then only differing entries.

        Waits until the exchange completed, or at most ``hydrate_timeout`` (at least one
        second). Also runs after a transport gap and every ``anti_entropy_interval``.
        """
        replica = self._check_open()
        await self._refresh(replica)

    async def _refresh(self, replica: Replica[T], prefer: str | None = None) -> bool:
        """Run one digest exchange; return whether some exchange completed meanwhile."""
        completed = replica.counters.refreshes
        done = anyio.Event()
        replica.start_sync(_now_ms(), prefer=prefer)
        self._sync_waiters.append(done)
        self._after(())
        with anyio.move_on_after(max(self._hydrate_timeout, _MIN_REFRESH_TIMEOUT)):
            await done.wait()
        if not done.is_set():
            _discard_event(self._sync_waiters, done)
            self._log.debug("store %r: refresh did not complete in time", self._name)
        return replica.counters.refreshes > completed

    async def wait_synced(self) -> None:
        """Return once this replica hydrated from its peers or ``hydrate_timeout`` passed."""
        if self._state == "new":
            raise ClosedError(f"store {self._name!r} is not open")
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        """True once hydration finished or gave up."""
        return self._synced.is_set()

    # --- introspection -------------------------------------------------------------

    def members(self) -> frozenset[str]:
        """The node ids currently alive in this store's cluster, this node included."""
        self._check_readable()
        return self._require_replica().members()

    def stats(self) -> Stats:
        """A frozen snapshot of this store's counters (see :class:`Stats`)."""
        replica = self._replica
        base = replica.counters.snapshot() if replica is not None else Stats()
        return replace(
            base,
            messages_sent=self._messages_sent,
            bytes_sent=self._bytes_sent,
            events_dispatched=self._watchers.dispatched,
            watchers_active=self._watchers.active,
            watchers_dropped=self._watchers.dropped,
            hydration_seconds=self._hydration_seconds,
        )

    # --- after every replica call ------------------------------------------------

    def _after(
        self,
        events: Iterable[Event[T]],
        errors: Iterable[PodshareError] = (),
    ) -> None:
        """Hand the replica's results out; the replica is consistent when this runs.

        What the replica queued (sync answers, heartbeats) is taken now and the flusher
        woken only if there is something. A local write does not come here: its writer
        dispatches its event and publishes its batch (see :meth:`_commit`).
        """
        replica = self._replica
        assert replica is not None
        if events:
            self._watchers.dispatch(events)
        outgoing = replica.take_outgoing()
        if outgoing:
            self._queued.extend(outgoing)
            self._wake_flusher.set()
        if replica.next_deadline() < self._ticker_target:
            self._wake_ticker.set()
        if self._sync_waiters and not replica.sync_in_progress:
            waiters, self._sync_waiters = self._sync_waiters, []
            for waiter in waiters:
                waiter.set()
        if not self._synced.is_set() and replica.synced:
            self._synced.set()
        for error in errors:
            self._report(error)

    def _report(self, error: PodshareError) -> None:
        if self._on_error is None:
            self._log.warning("store %r: %s: %s", self._name, type(error).__name__, error)
            return
        self._log.debug("store %r: %s: %s", self._name, type(error).__name__, error)
        try:
            result = self._on_error(error)
        except Exception:
            self._log.exception("store %r: on_error raised", self._name)
            return
        if isinstance(result, Awaitable):
            if self._tg is not None and self._state == "open":
                self._tg.start_soon(self._await_on_error, result)
            elif inspect.iscoroutine(result):
                result.close()  # the store is closing: nothing may outlive it

    async def _await_on_error(self, result: Awaitable[object]) -> None:
        try:
            await result
        except Exception:
            self._log.exception("store %r: on_error raised", self._name)

    # --- background tasks ----------------------------------------------------------

    async def _receive_loop(self, messages: Any) -> None:
        replica = self._require_replica()
        watchers = self._watchers
        async for data in messages:
            # Nobody watching: the replica builds no event per applied entry.
            replica.data_events = watchers.wants_data
            events, errors = replica.receive(data, _now_ms())
            self._after(events, errors)

    async def _flusher(self) -> None:
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = anyio.Event()
            await self._flush_round()

    async def _flush_round(self, *, final: bool = False) -> None:
        """Publish everything the replica queued; complete the batch of writes waiting."""
        replica = self._require_replica()
        lock = self._flush_lock
        await lock.acquire()
        batch, self._batch = self._batch, _Batch()
        try:
            outgoing, self._queued = self._queued, []
            outgoing.extend(replica.take_outgoing())
            if final:
                outgoing.extend(replica.leave(_now_ms()))
            batch.error = await self._publish_all(outgoing)
        except BaseException:
            # Cancelled mid-publish (the store closing, or an inline writer's own
            # cancellation): the batch's other writers learn it did not go out.
            if self._state == "open":
                batch.error = TransportError("publish interrupted by cancellation")
            else:
                batch.error = ClosedError(f"store {self._name!r} closed before publishing")
            raise
        finally:
            batch.finish()
            lock.release()

    async def _publish_all(self, outgoing: list[Outgoing]) -> BaseException | None:
        """Publish ``outgoing``; return the first broadcast failure (writes ride those)."""
        first_error: BaseException | None = None
        for message in outgoing:
            topic = self._topic if message.to is None else f"ps/{self._name}#{message.to}"
            try:
                await self._transport.publish(topic, message.data)
            except PodshareError as exc:
                error: BaseException = exc
            except Exception as exc:  # a user's transport: map to our tree at the boundary
                error = TransportError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                self._messages_sent += 1
                self._bytes_sent += len(message.data)
                continue
            if not self._publish_failing:
                self._publish_failing = True
                self._log.warning("store %r: publish to %r failed: %s", self._name, topic, error)
            if message.to is None and first_error is None:
                first_error = error
        if first_error is None and outgoing:
            self._publish_failing = False
        return first_error

    async def _ticker(self) -> None:
        replica = self._require_replica()
        while True:
            deadline = replica.next_deadline()
            delay = (deadline - _now_ms()) / 1000
            if delay > 0:
                self._ticker_target = deadline
                with anyio.move_on_after(delay):
                    await self._wake_ticker.wait()
                self._ticker_target = math.inf
                if self._wake_ticker.is_set():
                    self._wake_ticker = anyio.Event()
                continue
            replica.data_events = self._watchers.wants_data
            events, errors = replica.tick(_now_ms())
            self._after(events, errors)
            # A replica due again at once must not starve the other tasks.
            await anyio.lowlevel.checkpoint()

    async def _refresh_each_peer(self, replica: Replica[T]) -> bool:
        """After a gap, exchange digests with every live peer; True if all completed.

        One exchange with one peer is not enough: each peer may have missed something
        only another one holds, and what an exchange brings is not re-broadcast.
        """
        peers = sorted(replica.members() - {self._node_id})
        if not peers:
            return await self._refresh(replica)
        completed = True
        for peer in peers:
            completed = await self._refresh(replica, prefer=peer) and completed
        return completed

    async def _anti_entropy(self) -> None:
        """Refresh every ``anti_entropy_interval``, at once after a gap, and retry a gap's
        (or hydration's) refresh that did not complete with capped, jittered backoff.

        After a broker restart the first pod back may ask peers that have not
        resubscribed yet: its exchange never completes, and without a retry the writes
        it missed would wait for the next periodic refresh.
        """
        replica = self._require_replica()
        await self._synced.wait()
        cap = min(self._anti_entropy_interval, _RETRY_MAX)
        backoff = _RETRY_MIN
        # Hydration that found peers but completed no exchange counts as a failed repair.
        retrying = replica.counters.refreshes == 0 and replica.counters.peers_seen > 0
        while True:
            if retrying:
                # Jitter in [backoff/2, backoff]: pods back together do not retry in step.
                wait = min(backoff, cap) * random.uniform(0.5, 1.0)
            else:
                # Jitter keeps a fleet started together from refreshing in lockstep.
                wait = self._anti_entropy_interval * random.uniform(0.9, 1.1)
            with anyio.move_on_after(wait):
                await self._gap.wait()
            gap = self._gap.is_set()
            if gap:
                self._gap = anyio.Event()
                backoff = _RETRY_MIN  # a new gap restarts the schedule
                self._log.info("store %r: transport reported a gap; refreshing", self._name)
            if not (gap or retrying):
                await self._refresh(replica)
                continue  # a periodic refresh: the next one comes anyway
            completed = await self._refresh_each_peer(replica)
            # Nobody ever seen: nothing was missed, nobody to ask.
            retrying = not completed and replica.counters.peers_seen > 0
            if retrying:
                if not gap:
                    backoff = min(backoff * 2, cap)
                self._log.debug(
                    "store %r: refresh after a gap did not complete; retrying", self._name
                )
            else:
                backoff = _RETRY_MIN


_STATE_WORDS = {
    "new": "not open yet",
    "opening": "opening",
    "closing": "closing",
    "closed": "closed",
}


def _closed_get(key: object, default: object = None) -> NoReturn:
    raise ClosedError("the store is not open (use it inside `async with Store(...)`)")


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_cancellation(e) for e in exc.exceptions)
    return False


def _check_key(key: object) -> None:
    if not isinstance(key, str):
        raise InvalidValue(f"keys must be str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidValue(f"keys must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, not {value!r}"
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _discard_event(events: list[anyio.Event], event: anyio.Event) -> None:
    for i, e in enumerate(events):
        if e is event:
            del events[i]
            return


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not getattr(tp, "__args__", None):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")
