"""The anyio driver: [`Store`][podshare.Store], a replicated ``dict[str, T]`` over a transport.

The store is a thin shell around the sans-I/O `Replica`:
it moves received bytes and the wall clock into the core, and after every input drains
the core's outputs — events to watchers, errors to ``on_error``, messages to the
transport, finished syncs to whoever waits for them. It never reads the core's counters
to learn what happened. Background work (receivers, the flusher, the ticker,
anti-entropy, and the process's shared liveness stream when this store hosts it) runs in
the task group of `Service`, owned by ``async with``. Persistence is driven by
`podshare.store.persisting`, refresh and anti-entropy by `podshare.store.antientropy`,
the wait for sync at open by `podshare.store.joining`.

Write path (group commit): a write is applied to the replica at once (reads see it
immediately, watchers get their event), then the writer waits for the batch holding it
to be published. When no publish is under way the writer publishes its batch itself
(no task switch on the latency path); otherwise the flusher publishes every write made
meanwhile as one batch when the current round ends.
"""

from __future__ import annotations

import gc
import inspect
import logging
import math
import time
import weakref
from collections.abc import (
    Awaitable,
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
)
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar, overload

import anyio
import anyio.abc

from podshare._identity import reserve
from podshare._limits import (
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_NODE_ID_LENGTH,
    check_key,
    check_name,
    type_name,
)
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.crdt.clock import Stamp
from podshare.crdt.merger import Merger, as_merger, merger_for
from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    DuplicateNodeId,
    InvalidValue,
    PodshareError,
    TransportError,
)
from podshare.persistence.base import Persistence
from podshare.store import wire
from podshare.store.antientropy import AntiEntropy
from podshare.store.codec import Codec, ValueCodec, value_codec
from podshare.store.events import Event, Stats
from podshare.store.joining import Joining, local_replicas
from podshare.store.liveness import LivenessAgent, agent_for
from podshare.store.membership import LivenessOptions, MemberEvent
from podshare.store.persisting import Persisting, resolve_backend
from podshare.store.replica import Outgoing, Replica, ReplicaOptions
from podshare.store.watch import Watch, WatcherRegistry, check_buffer
from podshare.transport.base import (
    EchoSkipping,
    GapReporting,
    Transport,
    max_message_size,
)

__all__ = ["MAX_KEY_LENGTH", "MAX_NAME_LENGTH", "Store"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
D = TypeVar("D")

_MISSING: Any = object()
_log = logging.getLogger("podshare.store")

# The shortest bound refresh() waits for an exchange to complete.
_MIN_REFRESH_TIMEOUT = 1.0
# A message this large is applied with the cyclic garbage collector paused (see _apply).
_BULK_BYTES = 64 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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


class Store(Service, Generic[T]):
    """A replicated ``dict[str, T]``: local reads, writes broadcast over ``transport``.

    Open it with ``async with``; reads are synchronous and local, writes are async and
    return once their batch was published. ``Store[Config](...)`` (or ``type=Config``)
    makes a typed store whose values round-trip across pods; a type with a
    ``merge(self, other)`` method (``GSet``, ``PNCounter``, ``ORSet``, your own) is its
    own merger.

    Args:
        name: the store's name; every pod sharing the map uses the same one (non-empty,
            at most 200 characters, no ``#``).
        transport: the [`Transport`][podshare.transport.Transport] to talk over.
        node_id: this replica's id. Default: the process's id (``PODSHARE_NODE_ID``, else
            host name and pid), shared by every store and endpoint of the process; a
            second replica of the same store in one process gets ``{id}~2``.
        type: the value type (same as ``Store[type]``).
        merger: joins values of a key instead of last-writer-wins: a
            [`Merger`][podshare.crdt.Merger], or a plain function ``(a, b) -> value``.
        codec: the value format: ``"json"`` (default), ``"msgpack"`` or a
            [`Codec`][podshare.Codec].
        on_error: called with each [`PodshareError`][podshare.PodshareError] met in
            the background (undecodable messages, clock skew, dropped watchers, a
            duplicate node id); may be sync or async. It runs only when the store is
            consistent and may call back into the store.
        logger: a stdlib logger (default ``logging.getLogger("podshare.store")``).
        watch_buffer: the default buffer of a watcher, in events.
        tombstone_ttl: seconds a delete is remembered at least.
        tombstone_hard_cap: seconds after which a writer nobody heard from is forgotten
            and no tombstone is kept longer (see "Tombstones" in the concepts page).
        compaction_interval: seconds between tombstone compactions.
        hydrate_timeout: the longest ``async with`` waits for peers to hand over state.
        require_sync: raise [`NotSynced`][podshare.exceptions.NotSynced] from ``async with`` when
            ``hydrate_timeout`` passes before the store is synced.
        max_clock_skew: seconds a remote stamp may be ahead before it is reported; the
            local clock follows stamps at most this far ahead, and entries more than
            twice this far ahead are refused until time catches up.
        anti_entropy_interval: seconds between automatic refreshes.
        heartbeat_interval: seconds between liveness probes (per process and transport).
        down_after: seconds of silence after which a node counts as down (its
            ephemeral entries are removed).
        close_timeout: the most seconds leaving ``async with`` spends handing over the
            last batch (also bounded by the caller's own deadline).
        persistence: where the store's state survives a full restart: a
            [`Persistence`][podshare.persistence.Persistence] backend; ``None`` (the
            default) for the transport's default (a `RedisTransport` keeps it in Redis;
            other transports have none); ``False`` for none.
        persist_interval: seconds between writes of what changed to ``persistence``
            (the most a crash of every pod can lose); a clean close writes the rest.

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
        "_agent",
        "_anti_entropy_interval",
        "_batch",
        "_codec",
        "_entropy",
        "_flush_lock",
        "_hydrate_timeout",
        "_inbox",
        "_liveness_options",
        "_log",
        "_merger",
        "_name",
        "_node_id",
        "_on_error",
        "_options",
        "_persist_interval",
        "_persistence_option",
        "_persisting",
        "_publish_failing",
        "_queued",
        "_remove_gap_listener",
        "_replica",
        "_require_sync",
        "_reservation",
        "_stats",
        "_synced",
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

    _service_name = "store"

    # A slot, not a method: while open it *is* the replica's ``dict.get`` (bound), so a
    # read costs one slot load and one C call.
    get: _Getter[T]
    """``get(key, default=None, /)``: the value of ``key``, or ``default`` when absent.

    Local and synchronous; costs about one ``dict.get``. ``default`` is positional, as
    with ``dict.get``. Raises [`ClosedError`][podshare.ClosedError] outside
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
            f"{cls.__name__}[{type_name(params)}]",
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
        merger: Merger[T] | Callable[[T, T], T] | None = None,
        codec: Codec | str | None = None,
        on_error: Callable[[PodshareError], object] | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        watch_buffer: int = 64,
        tombstone_ttl: float = 86400.0,
        tombstone_hard_cap: float = 7 * 86400.0,
        compaction_interval: float = 300.0,
        hydrate_timeout: float = 10.0,
        require_sync: bool = False,
        max_clock_skew: float = 60.0,
        anti_entropy_interval: float = 30.0,
        heartbeat_interval: float = 1.0,
        down_after: float = 5.0,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        persistence: Persistence | bool | None = None,
        persist_interval: float = 1.0,
    ) -> None:
        super().__init__(close_timeout=close_timeout)
        check_name(name, "name", MAX_NAME_LENGTH)
        if not isinstance(transport, Transport):
            raise ConfigurationError(
                f"transport must implement publish(), subscribe() and aclose(), not {transport!r}"
            )
        if node_id is not None:
            check_name(node_id, "node_id", MAX_NODE_ID_LENGTH)
        class_type = self._value_type
        if type is not None and class_type is not None and type != class_type:
            raise ConfigurationError(
                f"type={type_name(type)} conflicts with {type_name(class_type)} given as "
                f"Store[{type_name(class_type)}]"
            )
        value_type = type if type is not None else class_type
        resolved: Merger[T] | None
        if merger is None:
            resolved = merger_for(value_type) if value_type is not None else None
        else:
            try:
                resolved = as_merger(merger)
            except TypeError as exc:
                raise ConfigurationError(f"merger: {exc}") from None
        # value_codec names `codec` or `type` in its ConfigurationError.
        self._codec: ValueCodec[T] = value_codec(value_type, codec)
        if on_error is not None and not callable(on_error):
            raise ConfigurationError(f"on_error must be callable, not {on_error!r}")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            raise ConfigurationError(f"logger must be a logging.Logger, not {logger!r}")
        if not isinstance(require_sync, bool):
            raise ConfigurationError(f"require_sync must be a bool, not {require_sync!r}")
        check_buffer("watch_buffer", watch_buffer)
        for option, value in (
            ("tombstone_ttl", tombstone_ttl),
            ("tombstone_hard_cap", tombstone_hard_cap),
            ("compaction_interval", compaction_interval),
            ("max_clock_skew", max_clock_skew),
            ("anti_entropy_interval", anti_entropy_interval),
            ("heartbeat_interval", heartbeat_interval),
            ("down_after", down_after),
        ):
            _check_seconds(option, value)
        _check_seconds("hydrate_timeout", hydrate_timeout, allow_zero=True)
        _check_seconds("persist_interval", persist_interval)
        if persistence is True:
            raise ConfigurationError(
                "persistence=True is ambiguous: pass a backend (MemoryPersistence(), "
                "SQLitePersistence(path), ...), None for the transport's default, or False"
            )
        if persistence not in (None, False) and not isinstance(persistence, Persistence):
            raise ConfigurationError(
                f"persistence must be a Persistence backend, None or False, not {persistence!r}"
            )
        if down_after <= heartbeat_interval:
            raise ConfigurationError(
                f"down_after ({down_after!r}) must be greater than heartbeat_interval "
                f"({heartbeat_interval!r})"
            )
        if tombstone_hard_cap < tombstone_ttl:
            raise ConfigurationError(
                f"tombstone_hard_cap ({tombstone_hard_cap!r}) must be at least tombstone_ttl "
                f"({tombstone_ttl!r})"
            )

        self._name = name
        self._reservation = reserve(name, node_id)
        weakref.finalize(self, self._reservation.release)
        self._node_id = self._reservation.node_id
        self._transport = transport
        self._type = value_type
        self._merger = resolved
        self._on_error = on_error
        self._log = logger if logger is not None else _log
        self._hydrate_timeout = float(hydrate_timeout)
        self._require_sync = require_sync
        self._anti_entropy_interval = float(anti_entropy_interval)
        self._persistence_option = persistence
        self._persist_interval = float(persist_interval)
        self._persisting: Persisting | None = None
        self._topic = f"ps/{name}"
        self._inbox = f"ps/{name}#{self._node_id}"
        self._options = ReplicaOptions(
            tombstone_ttl_ms=_ms(tombstone_ttl),
            tombstone_hard_cap_ms=_ms(tombstone_hard_cap),
            compaction_interval_ms=_ms(compaction_interval),
            max_clock_skew_ms=_ms(max_clock_skew),
            max_message_size=max_message_size(transport),
        )
        self._liveness_options = LivenessOptions(
            heartbeat_interval_ms=_ms(heartbeat_interval), down_after_ms=_ms(down_after)
        )
        self._watchers: WatcherRegistry[T] = WatcherRegistry(
            buffer=watch_buffer, on_drop=self._watcher_dropped
        )
        self._replica: Replica[T] | None = None
        self._agent: LivenessAgent | None = None
        self._values: dict[str, T] = {}
        self._stats = Stats()
        self._batch = _Batch()
        self._wake_flusher = anyio.Event()
        self._wake_ticker = anyio.Event()
        self._ticker_target = math.inf
        # fast_acquire: uncontended, taking the lock is a flag test with no checkpoint (a
        # sizeable part of a write's cost on asyncio); the round's publish is one anyway.
        self._flush_lock = anyio.Lock(fast_acquire=True)
        # Messages taken from the replica outside a flush round (after receive/tick).
        self._queued: list[Outgoing] = []
        self._synced = anyio.Event()
        self._entropy: AntiEntropy | None = None
        self._remove_gap_listener: Callable[[], None] | None = None
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
        return f"<Store {self._name!r} node={self._node_id!r} {self.state}>"

    def _describe(self) -> str:
        return f"store {self._name!r}"

    # --- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Store[T]:
        await super().__aenter__()
        return self

    async def _open(self) -> None:
        now = _now_ms()
        agent = self._agent = agent_for(self._transport, self._node_id, self._liveness_options)
        membership = agent.membership
        replica: Replica[T] = Replica(
            self._name,
            self._node_id,
            agent.nonce,
            self._codec,
            merger=self._merger,
            options=self._options,
            now=now,
            liveness=membership.alive,
            down_since=membership.down_since,
            live_nodes=membership.live_nodes,
        )
        replica.emit_data_events = self._watchers.wants_data
        self._replica = replica
        self._values = replica.values
        entropy = self._entropy = AntiEntropy(
            replica,
            name=self._name,
            interval=self._anti_entropy_interval,
            hello_window_ms=self._options.hello_window_ms,
            after=self._after,
            log=self._log,
        )
        local_replicas(self._transport, self._name, 1)
        backend = resolve_backend(self._persistence_option, self._transport)
        if backend is not None:
            self._persisting = Persisting(
                backend,
                replica,
                name=self._name,
                interval=self._persist_interval,
                after=self._after,
                report=self._report,
                log=self._log,
            )
            await self._persisting.load(max(self._hydrate_timeout, _MIN_REFRESH_TIMEOUT))
        await self.start(self._reader, self._topic, name=f"podshare {self._name} receive")
        await self.start(self._reader, self._inbox, name=f"podshare {self._name} inbox")
        await agent.attach(self)
        self.get = self._values.get  # type: ignore[assignment]
        self.start_soon(self._flusher, name=f"podshare {self._name} flusher")
        self.start_soon(self._ticker, name=f"podshare {self._name} ticker")
        self.start_soon(entropy.run, name=f"podshare {self._name} anti-entropy")
        if isinstance(self._transport, GapReporting):
            self._remove_gap_listener = self._transport.add_gap_listener(self._on_gap)
        if self._persisting is not None:
            self.start_soon(self._persisting.run, name=f"podshare {self._name} persister")
        await Joining(
            self._transport,
            replica,
            name=self._name,
            topic=self._topic,
            hydrate_timeout=self._hydrate_timeout,
            require_sync=self._require_sync,
            tie_after=2 * max(self._hydrate_timeout, _MIN_REFRESH_TIMEOUT),
            hello_window_ms=self._options.hello_window_ms,
            synced=self._synced,
            after=self._after,
            start_soon=self.start_soon,
            stats=self._stats,
            log=self._log,
        ).join()

    async def _close(self) -> None:
        replica = self._replica
        if replica is None:
            return
        # Decided before leaving (the elected writer is the lowest live member, this one
        # included): a clean close writes what the interval had not.
        persisting = self._persisting
        persist = persisting is not None and persisting.writes_at_close()
        replica.leave(_now_ms())
        await self._flush_round()
        if persist:
            assert persisting is not None
            await persisting.once(closing=True)
        agent = self._agent
        if agent is not None and agent.detach(self):
            for to, data in agent.goodbye():
                topic = "pl/live" if to is None else f"pl/live#{to}"
                try:
                    await self._transport.publish(topic, data)
                except PodshareError as exc:
                    self._log.debug("store %r: goodbye not published: %s", self._name, exc)

    def _closed(self) -> None:
        self.get = _closed_get
        self._watchers.close()
        if self._remove_gap_listener is not None:
            self._remove_gap_listener()
            self._remove_gap_listener = None
        agent = self._agent
        if agent is not None:
            agent.detach(self)  # idempotent: after a failed open or a crash
        if self._replica is not None:
            local_replicas(self._transport, self._name, -1)
        self._reservation.release()
        if self._entropy is not None:
            self._entropy.close()
        self._synced.set()
        self._batch.finish()

    def _require_replica(self) -> Replica[T]:
        replica = self._replica
        if replica is None:
            raise ClosedError(f"store {self._name!r} is not open")
        return replica

    def _writable(self) -> Replica[T]:
        self._check_open()
        replica = self._replica
        assert replica is not None
        return replica

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

    def version(self, key: str) -> Stamp | None:
        """The version of ``key``'s live value (its stamp), or ``None`` when absent.

        Pass it to [`try_set()`][podshare.Store.try_set]. It is this replica's view: another pod may
        have written a newer version that has not arrived yet.
        """
        self._check_readable()
        if key not in self._values:
            return None
        return self._require_replica().entry_stamp(key)

    def _check_readable(self) -> None:
        if self.state not in ("open", "opening"):
            _closed_get(None)

    # --- writes (async) ----------------------------------------------------------

    async def set(
        self, key: str, value: T, *, ephemeral: bool = False, ttl: float | None = None
    ) -> None:
        """Set ``key`` to ``value`` (join it into the key in a merger store).

        The write is applied locally at once and returns after the batch holding it was
        published. ``ephemeral=True``: the entry lives only while this process is up.
        ``ttl``: the entry expires that many seconds after it was written, at the same
        instant on every replica (watchers get ``EventKind.EXPIRED``).

        Raises:
            InvalidValue: a bad key, a value the store's type or codec refuses, or one
                too large to travel in one message (nothing was changed).
            TransportError: the publish failed; the local write stands and anti-entropy
                repairs peers later.
            ClosedError: the store is not open.
        """
        replica = self._writable()
        check_key(key)
        replica.local_set(key, value, _now_ms(), ephemeral=bool(ephemeral), ttl_ms=_ttl_ms(ttl))
        await self._commit()

    async def set_many(
        self, mapping: Mapping[str, T], *, ephemeral: bool = False, ttl: float | None = None
    ) -> None:
        """Set every key of ``mapping``; they travel together in as few messages as fit.

        Every key and value is validated before anything changes.
        """
        replica = self._writable()
        items = list(mapping.items())
        for key, _ in items:
            check_key(key)
        replica.local_set_many(items, _now_ms(), ephemeral=bool(ephemeral), ttl_ms=_ttl_ms(ttl))
        await self._commit()

    async def delete(self, key: str) -> None:
        """Delete ``key`` (a tombstone that wins over older writes everywhere).

        Raises [`InvalidValue`][podshare.InvalidValue] for a bad key,
        [`TransportError`][podshare.TransportError] when the publish failed (the local
        delete stands) and [`ClosedError`][podshare.ClosedError] when closed.
        """
        replica = self._writable()
        check_key(key)
        replica.local_delete(key, _now_ms())
        await self._commit()

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Delete every key of ``keys``; the deletes travel together."""
        replica = self._writable()
        keys = list(keys)
        for key in keys:
            check_key(key)
        replica.local_delete_many(keys, _now_ms())
        await self._commit()

    async def update(self, key: str, fn: Callable[[Any], T]) -> T:
        """Set ``key`` to ``fn(current)`` and return what was set.

        ``fn`` receives the current value, or the type's empty value for CRDT types
        (``GSet()``, ``PNCounter()``...), or ``None``. Reading and writing happen without
        an await in between, so concurrent updates in this process never lose each other.

        Example:
            ```python
            await counters.update("hits", lambda c: c.increment(counters.node_id))
            ```
        """
        replica = self._writable()
        check_key(key)
        new = replica.local_update(key, fn, _now_ms())
        await self._commit()
        return new

    async def try_set(self, key: str, value: T, version: Stamp | None) -> bool:
        """Set ``key`` only if its version here is still ``version``; return whether it did.

        An optimistic check against this replica's state (as the Go library's
        ``TrySet``), not a distributed compare-and-set: two pods can both succeed with
        the same version, and last-writer-wins then keeps one of the writes.
        ``version=None`` (what [`version()`][podshare.Store.version] returns for a key with no
        value) sets the key only if it is absent, deleted or expired here.
        """
        replica = self._writable()
        check_key(key)
        if not replica.try_set(key, value, version, _now_ms()):
            return False
        await self._commit()
        return True

    def seed(self, mapping: Mapping[str, T]) -> None:
        """Load ``mapping`` into this (empty) replica: no broadcast, no watcher events.

        For initial state at boot (from the application's database, say). Seeded
        entries are older than any write, so whatever the cluster already holds wins
        over them, and they fill only what it lacks.

        Raises:
            StoreNotEmpty: the replica already holds entries.
            InvalidValue: a bad key or value (nothing was loaded).
        """
        replica = self._writable()
        for key in mapping:
            check_key(key)
        replica.seed(mapping, _now_ms())

    async def _commit(self) -> None:
        """Dispatch a local write's events, then wait until its batch was published."""
        batch = self._batch
        replica = self._replica
        assert replica is not None
        events = replica.events_received()
        if events:
            self._watchers.dispatch(events)
        errors = replica.errors_received()
        for error in errors:
            self._report(error)
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
        filter: Callable[[Event[T]], object] | None = None,  # the public name
        buffer: int | None = None,
        members: bool = False,
    ) -> AbstractAsyncContextManager[Watch[T]]:
        """Watch changes: an async context manager yielding an async iterator of events.

        ``key`` or ``prefix`` (not both) select the keys, and ``filter`` (a callable
        taking an [`Event`][podshare.Event]) further selects; filters run before the
        buffer, so unwatched keys never fill it. A watcher whose buffer (``buffer``
        events, default ``watch_buffer``) is full is dropped rather than slowing
        writers: its iteration ends, ``stats().watchers_dropped`` counts it and
        ``on_error`` hears of it; watch again and read ``snapshot()``. ``members=True``
        adds ``NODE_UP``/``NODE_DOWN`` events. Iteration ends when the store closes.

        Example:
            ```python
            async with store.watch(prefix="ws:") as events:
                async for ev in events:
                    print(ev.kind, ev.key, ev.value)
            ```
        """
        self._check_open()
        context = self._watchers.open(
            key=key, prefix=prefix, buffer=buffer, members=members, filter=filter
        )
        return _Watching(self, context)

    def _watchers_changed(self) -> None:
        replica = self._replica
        if replica is not None:
            replica.emit_data_events = self._watchers.wants_data

    def _watcher_dropped(self, why: str) -> None:
        self._report(PodshareError(f"store {self._name!r}: {why}"))

    # --- sync ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Pull what this replica missed: an exchange of digests with a peer, then only
        the differing entries, both ways.

        Waits until one exchange completed (trying another peer if one fails), or at
        most ``hydrate_timeout`` (at least one second). Also runs after each transport
        gap and every ``anti_entropy_interval``.
        """
        self._writable()
        entropy = self._entropy
        assert entropy is not None
        await entropy.refresh(max(self._hydrate_timeout, _MIN_REFRESH_TIMEOUT))

    async def wait_synced(self) -> None:
        """Return once this replica is synced (see [`synced`][podshare.Store.synced])."""
        if self.state == "new":
            raise ClosedError(f"store {self._name!r} is not open")
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        """True once this replica holds the cluster's state: it was handed over by a
        synced peer, or the connected transport found no other replica (an empty cluster).

        False while joining and after ``hydrate_timeout`` passed without either; the
        store keeps trying. A readiness probe should use this.
        """
        replica = self._replica
        return replica is not None and replica.synced

    # --- introspection -------------------------------------------------------------

    def members(self) -> frozenset[str]:
        """The node ids of the live replicas of this store, this one included."""
        self._check_readable()
        return self._require_replica().members()

    def stats(self) -> Stats:
        """A frozen snapshot of this store's counters (see [`Stats`][podshare.Stats])."""
        replica = self._replica
        if replica is None:
            return self._stats.snapshot()
        record = replica.stats
        watchers = self._watchers
        record.events_dispatched = watchers.dispatched
        record.watchers_active = watchers.active
        record.watchers_dropped = watchers.dropped
        record.messages_sent = self._stats.messages_sent
        record.bytes_sent = self._stats.bytes_sent
        record.hydration_seconds = self._stats.hydration_seconds
        return replica.snapshot_stats()

    # --- after every input ---------------------------------------------------------

    def _after(self) -> None:
        """Drain what the replica produced; the replica is consistent when this runs."""
        replica = self._replica
        assert replica is not None
        events = replica.events_received()
        if events:
            self._watchers.dispatch(events)
        finished = replica.syncs_finished()
        if finished:
            entropy = self._entropy
            assert entropy is not None
            entropy.finished(finished)
        outgoing = replica.data_to_send()
        if outgoing:
            self._queued.extend(outgoing)
            self._wake_flusher.set()
        if replica.next_deadline() < self._ticker_target:
            self._wake_ticker.set()
        if not self._synced.is_set() and replica.synced:
            self._synced.set()
        errors = replica.errors_received()
        for error in errors:
            self._report(error)

    def _report(self, error: PodshareError) -> None:
        if isinstance(error, DuplicateNodeId):
            self._log.error("store %r: %s", self._name, error)
        if self._on_error is None:
            if not isinstance(error, DuplicateNodeId):
                self._log.warning("store %r: %s: %s", self._name, type(error).__name__, error)
            return
        self._log.debug("store %r: %s: %s", self._name, type(error).__name__, error)
        try:
            result = self._on_error(error)
        except Exception:  # noqa: BLE001  # the user's callback: its bug must show, and not stop us
            self._log.exception("store %r: on_error raised", self._name)
            return
        if isinstance(result, Awaitable):
            if self.is_open or self.state == "opening":
                self.start_soon(self._await_on_error, result)
            elif inspect.iscoroutine(result):
                result.close()  # the store is closing: nothing may outlive it

    async def _await_on_error(self, result: Awaitable[object]) -> None:
        try:
            await result
        except Exception:  # noqa: BLE001  # the user's callback: its bug must show, and not stop us
            self._log.exception("store %r: on_error raised", self._name)

    # --- liveness (called by the process's LivenessAgent) ---------------------------

    def _member_event(self, event: MemberEvent) -> None:
        replica = self._replica
        if replica is None or self.state not in ("open", "opening"):
            return
        replica.node_event(event, _now_ms())
        self._after()

    def _liveness_error(self, error: PodshareError) -> None:
        if self.state in ("open", "opening"):
            self._report(error)

    def _host_task(self, fn: Callable[..., Any], name: str) -> bool:
        if self.state not in ("open", "opening"):
            return False
        self.start_soon(fn, name=name)
        return True

    def _on_gap(self) -> None:
        if self._entropy is not None:
            self._entropy.gap()
        # A shared backend may have restarted empty with the transport's server (a Redis
        # without its own persistence): the next write rewrites the whole state, or only
        # the changes made since would be there.
        if self._persisting is not None:
            self._persisting.writer = False

    # --- background tasks ----------------------------------------------------------

    async def _reader(self, topic: str, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        replica = self._require_replica()
        transport = self._transport
        subscription = (
            # Its own broadcasts are not delivered to it: no wake-up for an echo.
            transport.subscribe_skipping(
                topic,
                prefix=wire.echo_prefix(self._node_id, replica.nonce),
                offset=wire.ECHO_OFFSET,
            )
            if topic == self._topic and isinstance(transport, EchoSkipping)
            else transport.subscribe(topic)
        )
        async with subscription as messages:
            task_status.started()
            apply = self._apply
            async for data in messages:
                apply(data)

    def _apply(self, data: bytes) -> None:
        replica = self._replica
        assert replica is not None
        if len(data) >= _BULK_BYTES and gc.isenabled():
            # A sync part of up to max_message_size bytes builds an object or two per
            # entry, none cyclic; collections triggered meanwhile would traverse the whole
            # (growing) map. Paused for this one synchronous call, then restored.
            gc.disable()
            try:
                replica.receive(data, _now_ms())
            finally:
                gc.enable()
        else:
            replica.receive(data, _now_ms())
        self._after()

    async def _flusher(self) -> None:
        while True:
            await self._wake_flusher.wait()
            self._wake_flusher = anyio.Event()
            await self._flush_round()

    async def _flush_round(self) -> None:
        """Publish everything the replica queued; complete the batch of writes waiting."""
        replica = self._require_replica()
        lock = self._flush_lock
        await lock.acquire()
        batch, self._batch = self._batch, _Batch()
        try:
            outgoing, self._queued = self._queued, []
            outgoing.extend(replica.data_to_send())
            batch.error = await self._publish_all(outgoing)
        except BaseException:
            # Cancelled mid-publish (the store closing, or an inline writer's own
            # cancellation): the batch's other writers learn it did not go out.
            if self.is_open:
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
        stats = self._stats
        for message in outgoing:
            topic = self._topic if message.to is None else f"ps/{self._name}#{message.to}"
            try:
                await self._transport.publish(topic, message.data)
            except PodshareError as exc:
                error: BaseException = exc
            except Exception as exc:  # noqa: BLE001  # a user's transport: map to our tree at the boundary
                error = TransportError(f"{type(exc).__name__}: {exc}")
                error.__cause__ = exc
            else:
                stats.messages_sent += 1
                stats.bytes_sent += len(message.data)
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
            replica.tick(_now_ms())
            self._after()
            # A replica due again at once must not starve the other tasks.
            await anyio.lowlevel.checkpoint()


class _Watching(AbstractAsyncContextManager["Watch[T]"], Generic[T]):
    """Tells the store when watchers come and go (it sets the core's data-event switch)."""

    __slots__ = ("_context", "_store")

    def __init__(self, store: Store[T], context: AbstractAsyncContextManager[Watch[T]]) -> None:
        self._store = store
        self._context = context

    async def __aenter__(self) -> Watch[T]:
        watch = await self._context.__aenter__()
        self._store._watchers_changed()
        return watch

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self._context.__aexit__(*exc_info)
        finally:
            self._store._watchers_changed()


def _closed_get(_key: object, _default: object = None) -> NoReturn:
    raise ClosedError("the store is not open (use it inside `async with Store(...)`)")


def _ttl_ms(ttl: object) -> int | None:
    if ttl is None:
        return None
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise InvalidValue(f"ttl must be a positive finite number of seconds, not {ttl!r}")
    return max(1, round(ttl * 1000))


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
    return max(1, round(seconds * 1000))
