"""The sans-I/O replica core: one node's copy of a replicated map, driven by calls, never by I/O.

A `Replica` is the core of one store on one node, in the websockets/h11 style:
inputs go in, outputs are drained.

- **Inputs** (each takes ``now``, wall-clock milliseconds; nothing here reads a clock):
  `receive()` (bytes from the store's topics), the local writes
  (`local_set()`, `local_set_many()`,
  `local_delete()`, `local_delete_many()`,
  `local_update()`, `seed()`), `tick()`,
  `node_event()` (liveness from the process's
  `Membership`), `hydrate()`,
  `request_sync()`, `cluster_evidence()` and
  `leave()`.
- **Outputs**, drained by the driver right after each input:
  `data_to_send()` (messages to publish; queued local writes coalesced into
  as few batches as fit), `events_received()` (events for watchers),
  `errors_received()` (errors for ``on_error``) and
  `syncs_finished()` (one `SyncFinished` per
  exchange this replica asked for). Whether data events are built at all is a setting,
  `emit_data_events`, changed when watchers come and go.

What lives where: the map and its join rules in `podshare.store.state`, digests in
`podshare.store.digest`, the sync exchange in `podshare.store.sync`, the
horizon (what may be compacted, what is refused) in `podshare.store.horizon`,
liveness in `podshare.store.membership`, message definitions and sizes in
`podshare.store.wire` and `podshare.store.packing`.

Example:
    >>> from podshare.store.codec import value_codec
    >>> a = Replica("demo", "a", 1, value_codec(None, None), now=1_000)
    >>> b = Replica("demo", "b", 2, value_codec(None, None), now=1_000)
    >>> a.local_set("k", 1, 1_001)
    >>> [ev.kind.name for ev in a.events_received()]
    ['SET']
    >>> for out in a.data_to_send():
    ...     b.receive(out.data, 1_002)
    >>> b.values
    {'k': 1}
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Any, Final, Generic, TypeVar

from podshare.crdt.clock import HLC, Stamp
from podshare.crdt.merger import Merger
from podshare.exceptions import (
    ConfigurationError,
    DecodeError,
    InvalidValue,
    PodshareError,
    ProtocolError,
    StoreNotEmpty,
)
from podshare.persistence.base import (
    PersistedState,
    decode_meta,
    decode_record,
    encode_meta,
    encode_raw_record,
)
from podshare.store import wire
from podshare.store.codec import ValueCodec
from podshare.store.events import Event, EventKind, Stats
from podshare.store.horizon import SEED_TIME, Horizon
from podshare.store.membership import MemberEvent
from podshare.store.packing import ENVELOPE_SLACK, split
from podshare.store.state import MapState
from podshare.store.sync import SyncEngine, SyncFinished, SyncLimits
from podshare.store.wire import EPHEMERAL, EXPIRING, MERGED, TOMBSTONE, WireEntry, make_entry
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["SEED_TIME", "Outgoing", "Replica", "ReplicaOptions"]

T = TypeVar("T")

# Synced peers answer a hello with this many answers on average, fleet-wide.
_HELLO_ANSWERS: Final = 4
# The longest pause between two hellos of a replica that is still not synced.
_HELLO_BACKOFF_MAX: Final = 5_000
# A skewed sender is reported at most this often (ms).
_SKEW_REPORT_EVERY: Final = 60_000
# Most store peers remembered (a bound no peer can push past).
_MAX_PEERS: Final = 4096
_COLLECT_MS: Final = 50  # a joiner waits at most this long for more hello answers
_TRANSFER_MEMORY_MS: Final = 60_000  # full transfers served this recently count as load
_MAX_RETURNED: Final = 64  # peers remembered as "came back" between two recontact syncs
# A peer down this long that never wrote (the horizon does not track it) is forgotten.
_PEER_MEMORY_MS: Final = 60_000
# A peer's leave commitment is taken only this soon after it is first heard from: its
# hellos come first, a forger's claim for a peer known for a while is not believed.
_COMMIT_WINDOW_MS: Final = 10_000
# New exchanges one peer may ask this replica to serve: a burst, then one per interval.
_SERVE_BURST: Final = 8
_SERVE_EVERY_MS: Final = 250
# Orders wire entries by stamp: (time, counter, origin).
_STAMP_ORDER: Final = attrgetter("time", "counter", "origin")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message the driver must publish.

    Attributes:
        to: ``None`` for the store's broadcast topic, else the node id whose inbox gets it.
        data: the encoded message.
    """

    to: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Timing and size options of a `Replica`; every time is in milliseconds.

    Attributes:
        tombstone_ttl_ms: a delete is remembered at least this long (and until the
            horizon allows forgetting it; see `podshare.store.horizon`). 24 h.
        tombstone_hard_cap_ms: writers unheard of for this long are forgotten, and no
            tombstone outlives it. 7 days.
        compaction_interval_ms: how often `Replica.tick()` compacts tombstones.
        max_clock_skew_ms: the clock follows remote stamps at most this far ahead of
            the wall clock; senders further ahead are reported; entries stamped more than
            twice this far ahead are refused until time catches up.
        max_message_size: no outgoing message is larger; received ones above it are
            refused.
        hello_window_ms: how long a joining replica waits for a synced peer to answer
            its hello before weighing the evidence (then it asks again, backing off).
        sync_timeout_ms: an exchange without progress for this long fails.
        sync_window: bytes an entry stream may have unacknowledged once warmed up.
        sync_chunk: the largest part of an entry stream.

    Raises:
        ConfigurationError: an option is not a positive int.

    Example:
        >>> ReplicaOptions(hello_window_ms=500).hello_window_ms
        500
        >>> ReplicaOptions(sync_timeout_ms=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        podshare.exceptions.ConfigurationError: sync_timeout_ms must be an int >= 1, got 0
    """

    tombstone_ttl_ms: int = 24 * 3600 * 1000
    tombstone_hard_cap_ms: int = 7 * 24 * 3600 * 1000
    compaction_interval_ms: int = 5 * 60 * 1000
    max_clock_skew_ms: int = 60_000
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    hello_window_ms: int = 300
    sync_timeout_ms: int = 2_000
    sync_window: int = 1024 * 1024
    sync_chunk: int = 64 * 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{f.name} must be an int >= 1, got {value!r}")
        if self.max_message_size < 2 * ENVELOPE_SLACK:
            raise ConfigurationError(
                f"max_message_size must be at least {2 * ENVELOPE_SLACK}, "
                f"got {self.max_message_size}"
            )
        if self.tombstone_hard_cap_ms < self.tombstone_ttl_ms:
            raise ConfigurationError("tombstone_hard_cap_ms must be at least tombstone_ttl_ms")


class _Peer:
    """Another replica of this store."""

    __slots__ = (
        "commitment",
        "down_at",
        "failed_at",
        "heard_at",
        "last_ok",
        "nonce",
        "served_at",
        "synced",
        "tokens",
        "transfers",
        "up",
    )

    def __init__(self, nonce: int, now: int) -> None:
        self.nonce = nonce
        self.heard_at = now  # when this incarnation was first heard (or back up)
        # Its budget of new exchanges to serve (refilled with time; see _may_serve).
        self.tokens = float(_SERVE_BURST)
        self.served_at = -1
        # The hash of the token its Leave will reveal (from its hellos): None unknown,
        # b"" contested (two were claimed, one forged).
        self.commitment: bytes | None = None
        self.up = True
        self.synced: bool | None = None  # None: unknown
        self.transfers = 0
        self.last_ok = -1
        self.failed_at = -1
        self.down_at = -1  # when it was last seen going down


class Replica(Generic[T]):
    """One node's copy of a replicated map: pure, synchronous, time passed in.

    Args:
        name: the store's name (for messages only).
        node_id: this node's id.
        nonce: this incarnation's random 63-bit number (shared with the liveness stream).
        codec: turns values into bytes and back.
        merger: joins values of a merger store; ``None`` for last-writer-wins.
        options: timing and size options.
        now: the wall clock in milliseconds when this replica started.
        liveness: ``liveness(node, nonce)`` says whether an incarnation is alive (True),
            down (False) or unknown (None); default: everyone alive unless told.
        down_since: ``down_since(node)``: since when every incarnation of ``node`` is
            down (ms), or None.
        live_nodes: the node ids the process's liveness knows alive (any store): asked
            for a sync partner when no replica of this store is known (one whose answer
            to the hello was lost, say).
        rng: random choices (peers, answers, exchange ids); seeded in tests.

    See the module docstring for the contract with the driver.
    """

    def __init__(
        self,
        name: str,
        node_id: str,
        nonce: int,
        codec: ValueCodec[T],
        *,
        merger: Merger[T] | None = None,
        options: ReplicaOptions | None = None,
        now: int,
        liveness: Callable[[str, int], bool | None] | None = None,
        down_since: Callable[[str], int | None] | None = None,
        live_nodes: Callable[[], Iterable[str]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        options = options if options is not None else ReplicaOptions()
        if not isinstance(options, ReplicaOptions):
            raise ConfigurationError(f"options must be ReplicaOptions, not {options!r}")
        self.name = name
        self.node_id = node_id
        self.nonce = nonce
        self.codec = codec
        self.merger = merger
        self.options = options
        self.started_at = now
        self._rng = rng if rng is not None else random.Random()
        self._liveness_of = liveness
        self._down_since = down_since if down_since is not None else _never_down
        self._live_nodes = live_nodes
        #: The statistics record; the driver adds the fields it owns (see Store.stats).
        self.stats = Stats()
        self._events: list[Event[T]] = []
        self._errors: list[PodshareError] = []
        self._out: list[Outgoing] = []
        self._clock = HLC(node_id, time_source=self._time, max_skew_ms=options.max_clock_skew_ms)
        self._limit = options.max_message_size - ENVELOPE_SLACK
        self._max_size = options.max_message_size
        self._skew = options.max_clock_skew_ms
        self.horizon = Horizon(node_id, started_at=now, hard_cap_ms=options.tombstone_hard_cap_ms)
        self.state: MapState[T] = MapState(
            node_id,
            nonce,
            codec,
            merger,
            self.horizon,
            limit=self._limit,
            events=self._events,
            errors=self._errors,
            stats=self.stats,
            liveness=self._alive,
        )
        self.state.now = now
        #: Live values only; the store's ``get`` is ``values.get``.
        self.values: dict[str, T] = self.state.values
        self.sync = SyncEngine(
            node_id,
            nonce,
            self.state,
            self.horizon,
            send=self._send_to,
            clock=self._clock.peek,
            limits=SyncLimits(
                chunk_bytes=min(options.sync_chunk, self._limit),
                window=max(options.sync_window, options.sync_chunk),
                timeout_ms=options.sync_timeout_ms,
                retransmit_ms=max(1, options.sync_timeout_ms // 4),
            ),
            may_serve=self._may_serve,
            rng=self._rng,
        )
        self._pending: dict[str, tuple[WireEntry, Any]] = {}
        self._spill: list[WireEntry] = []
        self._peers: dict[str, _Peer] = {}
        self._synced = False
        self._hydrating = False
        self._hello_at: int | None = None
        self._hello_backoff = options.hello_window_ms
        self._candidates: set[str] = set()
        self._unsynced_answers: set[str] = set()
        self._evidence_ready = False
        self._evidence_others: int | None = None
        self._recontact_at: int | None = None
        self._collect_at: int | None = None
        self._returned: set[str] = set()
        self._recontacting: str | None = None
        self._next_compaction = now + options.compaction_interval_ms
        self._skew_reported: dict[str, int] = {}
        self._left = False
        # When down peers are next looked at for forgetting (None: none is down).
        self._prune_at: int | None = None
        # The token this replica's Leave reveals, committed to in its hellos.
        self._leave_token = secrets.token_bytes(16)
        self._commitment = wire.leave_commitment(self._leave_token)

    # --- small helpers -----------------------------------------------------------------

    def _time(self) -> int:
        return self.state.now

    def _alive(self, node: str, nonce: int) -> bool | None:
        if self._liveness_of is None:
            return None
        return self._liveness_of(node, nonce)

    def _send_to(self, peer: str, data: bytes) -> None:
        self._out.append(Outgoing(peer, data))

    def _broadcast(self, data: bytes) -> None:
        self._out.append(Outgoing(None, data))

    # --- outputs (drained by the driver) -------------------------------------------------

    def events_received(self) -> list[Event[T]]:
        """The events produced since the last call, in order."""
        events = self._events
        if not events:
            return events
        out = events[:]
        events.clear()
        return out

    def errors_received(self) -> list[PodshareError]:
        """The errors to report since the last call (bad input, clock skew, ...)."""
        errors = self._errors
        if not errors:
            return errors
        out = errors[:]
        errors.clear()
        return out

    def syncs_finished(self) -> list[SyncFinished]:
        """One notice per exchange this replica asked for that ended since the last call."""
        done = self.sync.finished
        if not done:
            return done
        out = done[:]
        done.clear()
        for notice in out:
            self._on_finished(notice)
        return out

    def data_to_send(self) -> list[Outgoing]:
        """Everything queued: write batches (coalesced, below the size limit), then the rest.

        Writes to the same key since the last call travel once (the latest for LWW, the
        joined delta for mergers).
        """
        if not (self._pending or self._spill or self._out):
            return []
        out: list[Outgoing] = []
        if self._pending or self._spill:
            pending, self._pending = self._pending, {}
            entries, self._spill = self._spill, []
            entries.extend(e for e, _ in pending.values())
            sent_at = self.state.now
            for group in split(entries, wire.entry_size, self._limit):
                msg = wire.Writes(self.node_id, self.nonce, sent_at, [])
                out.append(
                    Outgoing(None, wire.encode_raw(msg, [wire.entry_list(e) for e in group]))
                )
        if self._out:
            out.extend(self._out)
            self._out.clear()
        return out

    @property
    def emit_data_events(self) -> bool:
        """Whether ``SET``/``DELETE``/``EXPIRED`` events are built (someone watches)."""
        return self.state.emit

    @emit_data_events.setter
    def emit_data_events(self, value: bool) -> None:
        self.state.emit = bool(value)

    # --- queries ---------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Hydrated from a synced peer, or the evidence says no synced peer exists."""
        return self._synced

    def members(self) -> frozenset[str]:
        """The node ids of the live replicas of this store, this one included."""
        return frozenset([self.node_id, *(n for n, p in self._peers.items() if p.up)])

    def entry_stamp(self, key: str) -> Stamp | None:
        """The stamp of ``key``'s entry (tombstones included), or ``None`` if unknown."""
        return self.state.stamp_of(key)

    def is_ephemeral(self, key: str) -> bool:
        """True when ``key`` holds a live ephemeral entry."""
        return self.state.is_ephemeral(key)

    def tombstones(self) -> dict[str, Stamp]:
        """Every remembered delete: key -> the stamp that deleted it."""
        return {
            k: Stamp(e.time, e.counter, e.origin)
            for k, e in self.state.entries.items()
            if e.flags & TOMBSTONE
        }

    def empty_value(self) -> T | None:
        """What ``update()`` passes for a key that holds nothing."""
        merger = self.merger
        if merger is None:
            return None
        empty = getattr(merger, "empty", None)
        if callable(empty):
            try:
                value: T = empty()
            except TypeError as exc:  # a merger whose empty() needs arguments
                error = PodshareError(f"{merger!r}.empty() raised {exc!r}; using the type's")
                error.__cause__ = exc
                self._errors.append(error)
            else:
                return value
        if self.codec.empty is not None:
            return self.codec.empty()
        return None

    def snapshot_stats(self) -> Stats:
        """A frozen snapshot of `stats` with its gauges filled in."""
        stats = self.stats
        stats.keys = len(self.values)
        stats.tombstones = self.state.tombstones()
        stats.members = len(self.members())
        stats.writers_known = len(self.horizon)
        stats.sync_bytes_sent = self.sync.bytes_sent
        return stats.snapshot()

    def next_deadline(self) -> int:
        """The wall-clock ms at which `tick()` is next due (cheap: a few fields)."""
        due = self._next_compaction
        hello = self._hello_at
        if hello is not None and hello < due:
            due = hello
        recontact = self._recontact_at
        if recontact is not None and recontact < due:
            due = recontact
        collect = self._collect_at
        if collect is not None and collect < due:
            due = collect
        prune = self._prune_at
        if prune is not None and prune < due:
            due = prune
        expiry = self.state.next_expiry()
        if expiry is not None and expiry < due:
            due = expiry
        sync_due = self.sync.next_deadline()
        if sync_due is not None and sync_due < due:
            due = sync_due
        return due

    # --- local writes --------------------------------------------------------------------

    def _entry_for(
        self, key: str, value: T, *, ephemeral: bool, ttl_ms: int | None
    ) -> tuple[WireEntry, bytes]:
        """Encode and check a last-writer-wins write; nothing changes yet."""
        data = self.codec.encode(value)
        self.state.check_size(key, len(data))
        flags = 0
        if ephemeral:
            flags |= EPHEMERAL
        if ttl_ms is not None:
            flags |= EXPIRING
        stamp = self._clock.now()
        expires = stamp.time + ttl_ms if ttl_ms is not None else None
        entry = make_entry(
            key,
            stamp,
            flags,
            data,
            owner_nonce=self.nonce if ephemeral else None,
            expires=expires,
        )
        return entry, data

    def local_set(
        self, key: str, value: T, now: int, *, ephemeral: bool = False, ttl_ms: int | None = None
    ) -> None:
        """Write ``value`` at ``key`` (a merger store joins it into the key's state).

        Applied at once and queued for `data_to_send()`. ``ttl_ms``: the entry
        expires that long after its stamp, on every replica.

        Raises:
            InvalidValue: the codec refuses ``value``, it (or the merged state) is too
                large to travel in one message, or ``ephemeral``/``ttl_ms`` was asked of a
                merger store. Nothing changed.
        """
        self.state.now = now
        if self.merger is not None:
            self._check_merger_options(ephemeral, ttl_ms)
            merged, delta, epoch = self.state.prepare_merge(key, value)
            self._merge(key, merged, delta, epoch)
            return
        entry, _ = self._entry_for(key, value, ephemeral=ephemeral, ttl_ms=ttl_ms)
        self.state.put_local(entry, value)
        self._pending[key] = (entry, None)

    def _check_merger_options(self, ephemeral: bool, ttl_ms: int | None) -> None:
        if ephemeral:
            raise InvalidValue("ephemeral entries need a last-writer-wins store")
        if ttl_ms is not None:
            raise InvalidValue("ttl= needs a last-writer-wins store")

    def _merge(self, key: str, merged: T, delta: T, epoch: Stamp) -> None:
        merger = self.merger
        assert merger is not None
        data = self.codec.encode(delta)
        stamp = self._clock.now()
        pending = self._pending.get(key)
        if pending is not None and pending[0].epoch == epoch and pending[1] is not None:
            joined = merger.merge(pending[1], delta)
            joined_data = self.codec.encode(joined)
            if len(joined_data) + len(key.encode()) <= self._limit:
                delta, data = joined, joined_data
            else:
                # Joined, the deltas would not fit one message: ship the queued one apart.
                self._spill.append(pending[0])
        self.state.merge_local(key, merged, stamp, epoch)
        entry = make_entry(key, stamp, MERGED, data, epoch)
        self._pending[key] = (entry, delta)

    def local_set_many(
        self,
        items: Sequence[tuple[str, T]],
        now: int,
        *,
        ephemeral: bool = False,
        ttl_ms: int | None = None,
    ) -> None:
        """`local_set()` for several keys, all validated before any is applied.

        Raises [`InvalidValue`][podshare.InvalidValue] (nothing changed) when any
        value is refused or too large.
        """
        self.state.now = now
        if self.merger is not None:
            self._check_merger_options(ephemeral, ttl_ms)
            # Validate every merge first (each against the state before this call).
            prepared = []
            state = self.state
            for key, value in items:
                prepared.append((key, *state.prepare_merge(key, value)))
            for key, merged, delta, epoch in prepared:
                # A key listed twice joins its values: merge again against the state now.
                if sum(1 for k, *_ in prepared if k == key) > 1:
                    merged, delta, epoch = state.prepare_merge(key, delta)
                self._merge(key, merged, delta, epoch)
            return
        entries = [
            (self._entry_for(key, value, ephemeral=ephemeral, ttl_ms=ttl_ms)[0], value)
            for key, value in items
        ]
        for entry, value in entries:
            self.state.put_local(entry, value)
            self._pending[entry.key] = (entry, None)

    def local_delete(self, key: str, now: int) -> bool:
        """Delete ``key``: a tombstone (a merger key: a new epoch), applied and queued.

        Returns whether the key was live.
        """
        self.state.now = now
        stamp = self._clock.now()
        if self.merger is not None:
            entry = make_entry(key, stamp, TOMBSTONE | MERGED, None, stamp)
        else:
            entry = make_entry(key, stamp, TOMBSTONE, None)
        was_live = self.state.delete_local(entry)
        self._pending[key] = (entry, None)
        return was_live

    def local_delete_many(self, keys: Iterable[str], now: int) -> int:
        """Delete every key of ``keys``; return how many were live."""
        return sum(self.local_delete(key, now) for key in keys)

    def local_update(self, key: str, fn: Callable[[Any], T], now: int) -> T:
        """Set ``key`` to ``fn(current)`` and return it (read-modify-write, no await).

        ``fn`` gets the current value, or the type's empty value (CRDT types), or None.
        """
        current = self.values.get(key, _MISSING)
        if current is _MISSING:
            current = self.empty_value()
        new = fn(current)
        self.local_set(key, new, now)
        return new

    def try_set(self, key: str, value: T, version: Stamp | None, now: int) -> bool:
        """Set ``key`` only if its live value's stamp is still ``version`` (a local check).

        ``None`` matches a key with no live value, deleted and expired ones included (as
        `Store.version()` reports them), so a deleted key can be claimed again.
        """
        current = self.state.stamp_of(key) if key in self.values else None
        if current != version:
            return False
        self.local_set(key, value, now)
        return True

    def seed(self, mapping: Mapping[str, T], now: int) -> None:
        """Load ``mapping`` into an empty replica: no broadcast, no events.

        Seeded entries carry the stamp ``(SEED_TIME, 0, node_id)``, older than any write,
        so anything the cluster holds wins over them and they fill only what it lacks.

        Raises:
            StoreNotEmpty: the replica already holds entries.
            InvalidValue: a value is refused (nothing was loaded).
        """
        self.state.now = now
        if self.state.entries or self._pending:
            raise StoreNotEmpty(
                f"seed() loads only into an empty store; {self.name!r} holds "
                f"{len(self.state.entries)} entries"
            )
        stamp = Stamp(SEED_TIME, 0, self.node_id)
        prepared = []
        for key, value in mapping.items():
            if self.merger is not None:
                data = self.codec.encode(value)
                self.state.check_size(key, len(data))
                prepared.append((make_entry(key, stamp, MERGED, data, stamp), value))
            else:
                data = self.codec.encode(value)
                self.state.check_size(key, len(data))
                prepared.append((make_entry(key, stamp, 0, data), value))
        emit, self.state.emit = self.state.emit, False
        try:
            self.state.apply([e for e, _ in prepared], now)
        finally:
            self.state.emit = emit

    # --- receiving -----------------------------------------------------------------------

    def receive(self, data: bytes, now: int) -> None:
        """Apply one received message; never raises for bad input (it is counted and
        queued as an error)."""
        state = self.state
        state.now = now
        stats = self.stats
        stats.messages_received += 1
        stats.bytes_received += len(data)
        try:
            msg = _decode(data, self.node_id, self.nonce, self._max_size)
        except ProtocolError as exc:
            stats.decode_errors += 1
            self._errors.append(exc)
            return
        if msg is None:
            return  # this node's own broadcast, echoed by the transport
        sender = msg.sender
        if sender == self.node_id:
            # Another live process with this node id (the echo filter saw another nonce):
            # its writes carry this node's origin, so none may be taken as "mine".
            self.horizon.disown()
        peer = self._peers.get(sender)
        if peer is None or not peer.up or peer.nonce != msg.nonce:
            peer = self._heard(sender, msg.nonce, now)
            if peer is None:
                return
        if type(msg) is _Writes:
            entries = msg.entries
            bound = now + self._skew
            if len(entries) == 1 and msg.sent_at <= bound and (entry := entries[0]).time <= bound:
                # The common case: one write from a peer whose clock agrees with ours. The
                # clock witnesses the whole stamp: a write made after this one, even in
                # the same millisecond, must order after it.
                self._clock.witness(entry.time, entry.counter, entry.origin)
                state.apply_one(entry, now)
            else:
                self._on_writes(msg, now)
        elif isinstance(msg, wire.SyncData):
            self.sync.on_data(self._bound_stamps(msg, now) if msg.entries else msg, now)
        elif isinstance(msg, wire.SyncAck):
            self.sync.on_ack(msg, now)
        elif isinstance(msg, wire.SyncKeys):
            self.sync.on_keys(msg, now)
        elif isinstance(msg, wire.SyncReply):
            self.sync.on_reply(msg, now)
        elif isinstance(msg, wire.SyncRequest):
            self.sync.on_request(msg, now)
        elif isinstance(msg, wire.SyncWant):
            self.sync.on_want(msg, now)
        elif isinstance(msg, wire.Hello):
            self._on_hello(msg, peer, now)
        elif isinstance(msg, wire.HelloAck):
            self._on_hello_ack(msg, peer, now)
        elif isinstance(msg, wire.Leave):
            self._on_leave(msg, peer)
        else:
            stats.decode_errors += 1
            self._errors.append(ProtocolError(f"{type(msg).__name__} on a store topic"))
        if state.retracted:
            self._retract_previous_life(now)

    def _on_writes(self, msg: wire.Writes, now: int) -> None:
        entries = msg.entries
        if not entries:
            return
        skew = self.options.max_clock_skew_ms
        if msg.sent_at > now + skew:
            self._report_skew(msg.sender, msg.sent_at - now, now)
        top = max(e.time for e in entries) if len(entries) > 1 else entries[0].time
        if top > now + 2 * skew:
            entries = self._refuse_future(entries, now)
            if not entries:
                return
        self._observe(entries)
        self.state.apply(entries, now)

    def _observe(self, entries: Sequence[WireEntry]) -> None:
        """Move the clock past the newest stamp received: its time, counter *and* origin,
        so a write made after seeing it orders after it, even in the same millisecond."""
        newest = max(entries, key=_STAMP_ORDER) if len(entries) > 1 else entries[0]
        self._clock.observe(newest.stamp)

    def _bound_stamps(self, msg: wire.SyncData, now: int) -> wire.SyncData:
        """The clock rules of `_on_writes()` for a part of an entry stream: entries too
        far ahead are refused, and the clock observes the rest before they are applied (a
        local write after hydration must order after what it replaces)."""
        entries = msg.entries
        top = max(e.time for e in entries)
        if top > now + 2 * self.options.max_clock_skew_ms:
            entries = self._refuse_future(entries, now)
            msg = wire.SyncData(
                msg.sender, msg.nonce, msg.sync_id, msg.stream, msg.part, msg.last, entries,
                msg.vector,
            )  # fmt: skip
            if not entries:
                return msg
        self._observe(entries)
        return msg

    def _refuse_future(self, entries: Sequence[WireEntry], now: int) -> list[WireEntry]:
        """Drop entries stamped more than twice ``max_clock_skew`` ahead (reported)."""
        bound = now + 2 * self.options.max_clock_skew_ms
        kept = [e for e in entries if e.time <= bound]
        refused = len(entries) - len(kept)
        self.stats.stamps_refused += refused
        worst = max(entries, key=lambda e: e.time)
        self._report_skew(worst.origin, worst.time - now, now, refused=refused)
        return kept

    def _report_skew(self, node: str, ahead: int, now: int, *, refused: int = 0) -> None:
        self.stats.clock_skew_reports += 1
        last = self._skew_reported.get(node)
        if last is not None and now - last < _SKEW_REPORT_EVERY:
            return
        if len(self._skew_reported) >= _MAX_PEERS:
            self._skew_reported.clear()
        self._skew_reported[node] = now
        what = f"; {refused} entries refused until time catches up" if refused else ""
        self._errors.append(
            ProtocolError(
                f"the clock of node {node!r} is {ahead} ms ahead of this node's "
                f"(max_clock_skew {self.options.max_clock_skew_ms} ms){what}: run NTP"
            )
        )

    def _retract_previous_life(self, now: int) -> None:
        keys, self.state.retracted = self.state.retracted, []
        for key in keys:
            self.local_delete(key, now)
            self.stats.writes_local -= 1

    # --- peers -----------------------------------------------------------------------

    def _heard(self, sender: str, nonce: int, now: int) -> _Peer | None:
        """A message from ``sender``'s incarnation ``nonce``: know it as a peer."""
        peer = self._peers.get(sender)
        if peer is not None and peer.nonce != nonce:
            if self._alive(sender, peer.nonce) is True and self._alive(sender, nonce) is True:
                return peer  # two live processes share the id: keep the first
            peer.nonce = nonce
            peer.synced = None
            peer.commitment = None
            peer.heard_at = now
        if peer is None:
            if len(self._peers) >= _MAX_PEERS and not self._prune_peers():
                return None
            if self._alive(sender, nonce) is False:
                return None  # a late message of a life already over
            peer = self._peers[sender] = _Peer(nonce, now)
            self.stats.peers_seen += 1
            self._events.append(Event(EventKind.NODE_UP, sender, None, sender, None))
            return peer
        if not peer.up:
            if self._alive(sender, nonce) is False:
                return None
            peer.up = True
            peer.heard_at = now
            self._events.append(Event(EventKind.NODE_UP, sender, None, sender, None))
            self._schedule_recontact(sender, now)
        return peer

    def _prune_peers(self) -> bool:
        down = [n for n, p in self._peers.items() if not p.up]
        for node in down:
            del self._peers[node]
        return bool(down)

    def _forget_down_peers(self, now: int) -> None:
        """Forget peers down for a while that never wrote: the table holds the live and
        the writers whose departure compaction weighs, not every sender ever seen."""
        self._prune_at = None
        seen = self.horizon.seen
        first: int | None = None
        for node in [n for n, p in self._peers.items() if not p.up]:
            p = self._peers[node]
            if node in seen:
                continue  # compaction weighs how long it is down
            if now - p.down_at >= _PEER_MEMORY_MS:
                del self._peers[node]
                self._returned.discard(node)
            elif first is None or p.down_at < first:
                first = p.down_at
        if first is not None:
            self._prune_at = first + _PEER_MEMORY_MS

    def _peer_gone(self, node: str, peer: _Peer) -> None:
        if peer.up:
            peer.up = False
            peer.down_at = self.state.now
            peer.commitment = None  # a replica reopened in the same process commits anew
            if self._prune_at is None:
                self._prune_at = self.state.now + _PEER_MEMORY_MS
            peer.synced = None
            self._events.append(Event(EventKind.NODE_DOWN, node, None, node, None))
        self.sync.abandon(node, "gone")
        self._candidates.discard(node)

    def node_event(self, event: MemberEvent, now: int) -> None:
        """Liveness changed (from the process's membership)."""
        self.state.now = now
        if event.kind == "down":
            self.state.owner_down(event.node, event.nonce)
            peer = self._peers.get(event.node)
            if peer is not None and peer.nonce == event.nonce:
                self._peer_gone(event.node, peer)
        elif event.kind == "up":
            peer = self._peers.get(event.node)
            if peer is not None and not peer.up and peer.nonce == event.nonce:
                peer.up = True
                self._events.append(Event(EventKind.NODE_UP, event.node, None, event.node, None))
                self._schedule_recontact(event.node, now)
            elif peer is None and event.returned:
                # A process back from the other side of a partition, never heard on this
                # store's topic (nothing was written there before): it may hold the store.
                self._schedule_recontact(event.node, now)
        elif event.kind == "duplicate":
            self.stats.duplicate_node_ids += 1
            self.horizon.disown()

    def _schedule_recontact(self, peer: str, now: int) -> None:
        """A peer came back (a partition healed): one sync soon, however many came back,
        with one of those that came back (the peers on this side hold nothing new)."""
        if not self._synced:
            return
        if len(self._returned) < _MAX_RETURNED:
            self._returned.add(peer)
        if self._recontact_at is None:
            # Jittered, so that a peer every replica sees come back at once is not asked
            # by all of them in the same instant.
            window = self.options.hello_window_ms
            self._recontact_at = now + window + self._rng.randrange(2 * window)

    def _recontact(self, now: int) -> None:
        """Sync with one peer that came back; until one such exchange succeeds, try again
        every hello window (the others may not count this replica as up yet, and refuse)."""
        self._recontact_at = None
        if self.sync.requesting():
            self._recontact_at = now + self.options.hello_window_ms
            return
        retry_after = self.options.sync_timeout_ms
        returned = []
        unknown = []
        live = set(self._live_nodes()) if self._live_nodes is not None else set()
        for node in sorted(self._returned):
            p = self._peers.get(node)
            if p is None:
                if node in live:
                    unknown.append(node)  # not known to hold the store: asked last
                else:
                    self._returned.discard(node)
            elif not p.up:
                self._returned.discard(node)
            elif p.failed_at < 0 or now - p.failed_at >= retry_after:
                returned.append(node)
        if not self._returned:
            return
        if not returned and not unknown:
            self._recontact_at = now + self.options.hello_window_ms
            return
        self._recontacting = self.request_sync(now, peer=self._rng.choice(returned or unknown))

    # --- hydration and syncs ---------------------------------------------------------

    def hydrate(self, now: int) -> None:
        """Start joining: ask the store's synced peers (a broadcast hello) for their state."""
        self.state.now = now
        if self._synced or self._hydrating:
            return
        self._hydrating = True
        self._hello_backoff = self.options.hello_window_ms
        self._send_hello(now)

    def _send_hello(self, now: int) -> None:
        msg = wire.Hello(
            self.node_id,
            self.nonce,
            now,
            self._synced,
            True,
            len(self.state.entries),
            self._commitment,
        )
        self._broadcast(wire.encode(msg))
        self._hello_at = now + self._hello_backoff

    def cluster_evidence(self, now: int, *, ready: bool, others: int | None) -> None:
        """What the transport knows: connected to its cluster? other subscribers?

        ``others`` is how many other processes subscribe to this store's broadcast topic
        (``None``: the transport cannot tell).
        """
        self.state.now = now
        self._evidence_ready = ready
        self._evidence_others = others
        if self._hydrating and not self._candidates and not self.sync.requesting():
            self._weigh_evidence(now, final=False)

    def _weigh_evidence(self, now: int, *, final: bool) -> None:
        """No synced peer answered: decide whether the cluster has none."""
        if not self._evidence_ready:
            return
        others = self._evidence_others
        if others == 0 or (others is not None and len(self._unsynced_answers) >= others):
            self._become_synced(now)
        elif others is None and final:
            self._become_synced(now)  # no evidence either way: the hello window decides

    def break_the_tie(self, now: int) -> bool:
        """No synced replica answered for long: start the cluster's history if this
        replica has the lowest node id among the unsynced replicas it knows of (the
        others then hydrate from it). Returns whether it became synced.

        For the driver, well after ``hydrate_timeout``: a peer that subscribes but never
        answers (a wrong secret, a wedged process) must not keep a whole cold-started
        fleet unsynced forever.
        """
        self.state.now = now
        if self._synced or not self._hydrating or self.sync.requesting():
            return False
        if any(p.up and p.synced for p in self._peers.values()):
            return False
        rivals = [n for n, p in self._peers.items() if p.up]
        if any(n < self.node_id for n in rivals):
            return False
        self._become_synced(now)
        return True

    def _become_synced(self, now: int) -> None:
        self._synced = True
        self._hydrating = False
        self._hello_at = None
        self.stats.hydration_seconds = (now - self.started_at) / 1000
        # Peers choose sync partners among synced replicas: say so now.
        msg = wire.Hello(
            self.node_id, self.nonce, now, True, False, len(self.state.entries), self._commitment
        )
        self._broadcast(wire.encode(msg))

    @staticmethod
    def _committed(peer: _Peer, commitment: bytes | None, now: int) -> None:
        """Pin the first leave commitment a peer claims soon after it was first heard (a
        different one later is someone else's: then no Leave of it can be proven)."""
        if commitment is None or peer.commitment == commitment:
            return
        if peer.commitment is None and now - peer.heard_at <= _COMMIT_WINDOW_MS:
            peer.commitment = commitment
        else:
            peer.commitment = b""

    def _on_leave(self, msg: wire.Leave, peer: _Peer) -> None:
        """A replica closed: honoured when its token matches its hellos' commitment, or
        when liveness does not count its incarnation alive (a leaving process says its
        goodbye there too). Otherwise, as a forgery would be, it is counted and ignored."""
        proven = (
            msg.token is not None
            and bool(peer.commitment)
            and wire.leave_commitment(msg.token) == peer.commitment
        )
        if not proven and self._alive(msg.sender, msg.nonce) is True:
            self.stats.leaves_unproven += 1
            return
        self._peer_gone(msg.sender, peer)

    def _on_hello(self, msg: wire.Hello, peer: _Peer, now: int) -> None:
        self._committed(peer, msg.commitment, now)
        peer.synced = msg.synced
        if not msg.ask:
            return
        if self._synced:
            # About _HELLO_ANSWERS synced replicas answer, fewer of those serving: the
            # fleet's size is the larger of the store's peers and the live processes (a
            # replica that was written to by few peers knows few of them). In a fleet
            # large enough that others will answer, the full transfers served lately
            # count too (joins spread over the fleet; a joiner no one answered says
            # hello again, backing off).
            live = sum(1 for p in self._peers.values() if p.up)
            if self._live_nodes is not None:
                live = max(live, len(set(self._live_nodes())) - 1)
            if live > 2 * _HELLO_ANSWERS:
                load = 1 + self._recent_transfers(now)
            else:
                load = 1 + len(self.sync.serving)
            if self._rng.random() * max(1, live) * load >= _HELLO_ANSWERS:
                return  # enough others answer, on average
        elif any(p.up and p.synced for p in self._peers.values()):
            return  # a synced peer will answer; an unsynced answer is no evidence then
        ack = wire.HelloAck(
            self.node_id,
            self.nonce,
            now,
            self._synced,
            len(self.state.entries),
            self._recent_transfers(now),
            self._commitment,
        )
        self._send_to(msg.sender, wire.encode(ack))

    def _recent_transfers(self, now: int) -> int:
        """Exchanges served now plus full transfers served lately: a joiner asks the
        least loaded of the replicas that answered its hello."""
        recent = self.sync.full_served
        while recent and now - recent[0] > _TRANSFER_MEMORY_MS:
            recent.popleft()
        return len(self.sync.serving) + len(recent)

    def _on_hello_ack(self, msg: wire.HelloAck, peer: _Peer, now: int) -> None:
        self._committed(peer, msg.commitment, now)
        peer.synced = msg.synced
        peer.transfers = msg.transfers
        if not self._hydrating:
            return
        if msg.synced:
            self._candidates.add(msg.sender)
            if self.sync.requesting():
                pass
            elif len(self._candidates) >= self._answers_expected():
                self._hydrate_from_best(now)
            elif self._collect_at is None:
                # Wait a moment for the other answers, to ask the least loaded.
                self._collect_at = now + min(_COLLECT_MS, self.options.hello_window_ms // 4)
        else:
            self._unsynced_answers.add(msg.sender)
            self._weigh_evidence(now, final=False)

    def _answers_expected(self) -> int:
        """How many synced answers a joiner waits for (at most `_COLLECT_MS`): about
        `_HELLO_ANSWERS` answer, fewer when the transport counts fewer others."""
        others = self._evidence_others
        if others is None:
            return _HELLO_ANSWERS
        return max(1, min(_HELLO_ANSWERS, others))

    def _hydrate_from_best(self, now: int) -> None:
        self._collect_at = None
        candidates = [n for n in self._candidates if self._peers.get(n) is not None]
        if not candidates:
            return
        best = min(candidates, key=lambda n: (self._peers[n].transfers, self._rng.random()))
        self._candidates.discard(best)
        self.sync.start(best, now, full=not self.state.entries)

    def request_sync(self, now: int, *, peer: str | None = None) -> str | None:
        """Start one exchange (anti-entropy, a gap's repair, refresh()): returns the peer
        asked, or None when there is nobody to ask (or one already runs)."""
        self.state.now = now
        if self.sync.requesting():
            return None
        chosen = peer if peer is not None else self._choose_peer(now)
        if chosen is None:
            return None
        self.sync.start(chosen, now, full=not self.state.entries)
        return chosen

    def _choose_peer(self, now: int) -> str | None:
        """The peer to sync with: up, not refused lately, the one synced with least
        recently first (so exchanges spread over every pair), proven peers before others:
        those an exchange completed with, then those liveness confirms, then the rest
        (a sender that only claims to be synced is tried last)."""
        retry_after = self.options.sync_timeout_ms
        best: tuple[int, int, float] | None = None
        chosen = None
        for node, p in self._peers.items():
            if not p.up or p.synced is False:
                continue
            if p.failed_at >= 0 and now - p.failed_at < retry_after:
                continue
            proven = 0 if p.last_ok >= 0 else 1 if self._alive(node, p.nonce) is True else 2
            rank = (proven, p.last_ok, self._rng.random())
            if best is None or rank < best:
                best, chosen = rank, node
        if chosen is None and self._live_nodes is not None:
            # No replica of this store known: ask a live node of the process's liveness
            # stream (it may hold the store; if not, the exchange times out).
            others = sorted(set(self._live_nodes()) - {self.node_id} - set(self._peers))
            if others:
                chosen = self._rng.choice(others)
        return chosen

    def _may_serve(self, peer: str) -> str:
        """Whether to answer a new exchange ``peer`` asks for.

        Only a synced replica answers, only a peer liveness confirms alive (a request
        from a sender nobody heard on the liveness stream, a forged one naming a node
        that does not exist, gets a one-line "busy"), and each peer has a budget of new
        exchanges (`_SERVE_BURST`, then one per `_SERVE_EVERY_MS`).
        """
        if not self._synced:
            return "refused"
        p = self._peers.get(peer)
        if p is None or not p.up:
            return "refused"
        if self._liveness_of is not None and self._alive(peer, p.nonce) is not True:
            self.stats.syncs_unserved += 1
            return "busy"  # not confirmed yet: the requester retries later
        now = self.state.now
        if p.served_at >= 0:
            p.tokens = min(float(_SERVE_BURST), p.tokens + (now - p.served_at) / _SERVE_EVERY_MS)
        p.served_at = now
        if p.tokens < 1:
            self.stats.syncs_unserved += 1
            return "busy"
        p.tokens -= 1
        return "ok"

    def _on_finished(self, notice: SyncFinished) -> None:
        peer = self._peers.get(notice.peer)
        now = self.state.now
        if notice.peer == self._recontacting:
            self._recontacting = None
            if notice.ok:
                self._returned.clear()
            else:
                if peer is None:
                    self._returned.discard(notice.peer)  # it does not hold this store
                if self._returned:
                    self._recontact_at = now + self.options.hello_window_ms
        if notice.ok:
            self.stats.refreshes += 1
            if peer is not None:
                peer.last_ok = now
                peer.synced = True
                peer.failed_at = -1
            if self._hydrating and (peer is None or peer.synced):
                self._become_synced(now)
            return
        self.stats.syncs_failed += 1
        if peer is not None:
            peer.failed_at = now
            if notice.reason == "refused":
                peer.synced = False
        if self._hydrating:
            self._hydrate_from_best(now)

    # --- persistence -------------------------------------------------------------------

    def track_changes(self, on: bool = True) -> None:
        """Start (or stop) remembering which keys changed, for `persist_changes()`."""
        self.state.dirty = {} if on else None

    def persist_changes(
        self, now: int, *, everything: bool = False
    ) -> tuple[dict[str, bytes | None], bytes]:
        """Records of every key changed since the last call (``everything``: every key),
        and the meta record; the changed keys are forgotten (see `changes_failed()`).

        A key whose entry is gone, or is ephemeral (never persisted: a cold restart must
        not bring back a route to a dead pod), maps to ``None``.
        """
        self.state.now = now
        state = self.state
        dirty = state.dirty
        if dirty is None:
            return {}, b""
        keys: Iterable[str] = list(state.entries) if everything else list(dirty)
        dirty.clear()
        records: dict[str, bytes | None] = {}
        entries = state.entries
        for key in keys:
            e = entries.get(key)
            if e is None or e.flags & EPHEMERAL:
                records[key] = None
            else:
                raw = state.raw(key)
                records[key] = None if raw is None else encode_raw_record(raw)
        meta = encode_meta(now, self.horizon.vector(self._clock.peek() - 1))
        return records, meta

    def changes_failed(self, keys: Iterable[str], now: int) -> None:
        """A write of these keys failed: remember them as changed again."""
        dirty = self.state.dirty
        if dirty is not None:
            for key in keys:
                dirty.setdefault(key, now)

    def load(self, persisted: PersistedState, now: int, *, live: bool = False) -> int:
        """Join a persisted state into this replica; returns how many entries it held.

        Corrupt records are skipped, counted and reported; the horizon adopts the
        persisted vector, so deletes stay deleted across a cold restart. At open (the
        default) nothing is announced; ``live``: the replica is in use (a writer taking
        over a shared backend joins what it holds), so watchers see what changes, and
        ``persist_loaded`` (entries loaded at open) is left alone.
        """
        self.state.now = now
        entries: list[WireEntry] = []
        for key, data in persisted.records.items():
            try:
                entry = decode_record(data)
                if entry.key != key:
                    raise DecodeError(f"the record of {key!r} holds key {entry.key!r}")
            except DecodeError as exc:
                self.stats.persist_corrupt += 1
                self._errors.append(DecodeError(f"persisted record of {key!r} skipped: {exc}"))
                continue
            entries.append(entry)
        if entries:
            top = max(e.time for e in entries)
            self._clock.observe(Stamp(min(top, now + self.options.max_clock_skew_ms), 0, ""))
            emit, self.state.emit = self.state.emit, self.state.emit and live
            dirty, self.state.dirty = self.state.dirty, None
            try:
                self.state.apply(entries, now)
            finally:
                self.state.emit, self.state.dirty = emit, dirty
        if persisted.meta is not None:
            try:
                _, vector = decode_meta(persisted.meta)
            except DecodeError as exc:
                self.stats.persist_corrupt += 1
                self._errors.append(DecodeError(f"persisted meta record skipped: {exc}"))
            else:
                self.horizon.merge(vector, now)
        if not live:
            self.stats.persist_loaded += len(entries)
        return len(entries)

    # --- time ------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Do what is due at ``now``: expiry, sync timeouts, hellos, compaction."""
        self.state.now = now
        self.state.expire(now)
        self.sync.tick(now)
        if self._hello_at is not None and now >= self._hello_at:
            self._hello_at = None
            if self._hydrating and not self.sync.requesting():
                self._weigh_evidence(now, final=True)
                if self._hydrating:
                    self._hello_backoff = min(2 * self._hello_backoff, _HELLO_BACKOFF_MAX)
                    self._send_hello(now)
        if self._collect_at is not None and now >= self._collect_at:
            self._collect_at = None
            if self._hydrating and not self.sync.requesting():
                self._hydrate_from_best(now)
        if self._recontact_at is not None and now >= self._recontact_at:
            self._recontact(now)
        if self._prune_at is not None and now >= self._prune_at:
            self._forget_down_peers(now)
        if now >= self._next_compaction:
            self._next_compaction = now + self.options.compaction_interval_ms
            self.compact(now)

    def compact(self, now: int) -> int:
        """Forget tombstones the horizon allows forgetting; return how many."""
        self.state.now = now
        ttl = self.options.tombstone_ttl_ms
        down_since = self._down_since

        def excluded(origin: str) -> bool:
            since = down_since(origin)
            if since is None:
                # Liveness forgets down members after a while; this store remembers the
                # peers it saw go down (and not come back) for as long as it knows them.
                peer = self._peers.get(origin)
                if peer is not None and not peer.up and peer.down_at >= 0:
                    since = peer.down_at
            return since is not None and now - since > ttl

        frontier = self.horizon.frontier(now, excluded)
        self.horizon.prune(now)
        return self.state.compact(min(now - ttl, frontier))

    def leave(self, now: int) -> None:
        """Closing: retract this replica's ephemeral entries and say goodbye to the store.

        Call `data_to_send()` afterwards and publish what it returns.
        """
        self.state.now = now
        if self._left:
            return
        self._left = True
        own = self.state.ephemeral.get((self.node_id, self.nonce), set())
        for key in sorted(own):
            self.local_delete(key, now)
        self._broadcast(wire.encode(wire.Leave(self.node_id, self.nonce, self._leave_token)))


_MISSING: Any = object()
_Writes = wire.Writes
_decode = wire.decode_unless_own


def _never_down(_node: str) -> int | None:
    return None
