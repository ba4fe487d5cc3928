"""The sans-I/O replica core: one node's copy of a replicated map, driven by calls, never by I/O.

A :class:`Replica` holds the entries of one store on one node. The driver
(:class:`~podshare.store.store.Store`, or :class:`~podshare.testing.SimNetwork` in tests)
feeds it local writes, received bytes and the wall clock (``now``, milliseconds), and
takes out :class:`Outgoing` messages to publish plus the :class:`~podshare.store.events.Event`
values and errors to report. It never reads a clock, never blocks and never raises for
bad input, so a Hypothesis state machine can drive a whole cluster in one thread.

The map is a CRDT (a join-semilattice per key), so any delivery order, duplication, or
loss followed by a sync converges:

- **LWW keys** keep the entry with the highest :class:`~podshare.crdt.Stamp`; a delete is
  a tombstone with its stamp.
- **Merger keys** hold ``(epoch, value)``: a delete raises the epoch to its stamp and
  resets the value; writes join values within an epoch; a higher epoch wins. Local
  writes ship deltas (``new.delta_from(old)``) when the type has them.
- **Tombstones** are kept ``tombstone_ttl_ms`` and compacted by :meth:`Replica.tick`.
  Anything older than that horizon is judged with the replica's *lineage* (the time
  since which its state is complete): an old entry a peer lacks although the peer's
  lineage covers it was deleted and compacted there, so it is dropped rather than
  pushed back, and an old entry for a key this replica lacks is refused unless it
  predates this replica's own lineage. A replica cut off longer than the TTL therefore
  re-hydrates instead of resurrecting deletes.
- **Sync** (anti-entropy and hydration): the requester sends one peer a digest (one
  8-byte XOR of entry hashes per bucket), the peer answers with every entry of the
  differing buckets in size-bounded chunks, and the requester pushes back what the
  peer lacked. A new replica says hello, hydrates from the first synced peer to answer,
  and is synced with nothing if nobody answers within ``hello_window_ms``.
- **Liveness**: heartbeats every ``heartbeat_interval_ms``; a peer silent for
  ``down_after_ms`` (or one that left) is down. Ephemeral entries of a down writer are
  removed on every replica (a ``DELETE`` event whose origin is the writer); a writer
  that was only partitioned re-asserts its ephemeral entries with new stamps.

Example:
    >>> from podshare.store.codec import value_codec
    >>> a = Replica("demo", "a", value_codec(None, None), merger=None,
    ...             options=ReplicaOptions(), now=1_000)
    >>> b = Replica("demo", "b", value_codec(None, None), merger=None,
    ...             options=ReplicaOptions(), now=1_000)
    >>> [ev.kind.name for ev in a.local_set("k", 1, 1_001)]
    ['SET']
    >>> for out in a.take_outgoing():
    ...     events, errors = b.receive(out.data, 1_002)
    >>> b.values
    {'k': 1}
"""

from __future__ import annotations

import gc
import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from podshare.crdt.clock import HLC, Stamp
from podshare.crdt.merger import Merger
from podshare.exceptions import (
    ConfigurationError,
    DecodeError,
    InvalidValue,
    PodshareError,
    ProtocolError,
)
from podshare.store import wire
from podshare.store.codec import ValueCodec
from podshare.store.events import Event, EventKind, Stats
from podshare.store.wire import EPHEMERAL, MERGED, TOMBSTONE, WireEntry, make_entry
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE

__all__ = ["Outgoing", "Replica", "ReplicaCounters", "ReplicaOptions"]

T = TypeVar("T")

#: The first epoch of every merger key (before any delete).
ZERO_EPOCH = Stamp(0, 0, "")
# Digest sizing: about this many entries per bucket, so a differing bucket costs little.
_KEYS_PER_BUCKET = 16
# Room kept in every message for the envelope around the entries.
_ENVELOPE_SLACK = 512


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message the driver must publish.

    Attributes:
        to: ``None`` for the store's broadcast topic, else the node id whose inbox gets it.
        data: the encoded envelope.
    """

    to: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Timing and size options of a :class:`Replica`; every time is in milliseconds.

    Attributes:
        tombstone_ttl_ms: how long deletes are remembered (and the horizon beyond which
            an absent key is taken as deleted). Default 24 h.
        compaction_interval_ms: how often :meth:`Replica.tick` compacts tombstones.
        hydrate_timeout_ms: hydration gives up (and counts as synced) after this long.
        max_clock_skew_ms: stamps further ahead of ``now`` are reported.
        heartbeat_interval_ms: how often a heartbeat is broadcast. Default 1 s.
        down_after_ms: a peer silent this long is down; must exceed
            ``heartbeat_interval_ms``. Default 5 s.
        max_message_size: no outgoing message is larger (batches and sync chunks are
            split below it); received messages above it are refused.
        hello_window_ms: how long a new replica waits for a synced peer to answer its
            hello before concluding the cluster is empty.
        sync_timeout_ms: how long a sync waits for a peer's answer before asking another.

    Raises:
        ConfigurationError: an option is not a positive int, or ``down_after_ms`` is not
            greater than ``heartbeat_interval_ms``.

    Example:
        >>> ReplicaOptions(heartbeat_interval_ms=500, down_after_ms=2_000).down_after_ms
        2000
        >>> ReplicaOptions(heartbeat_interval_ms=500, down_after_ms=500)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        podshare.exceptions.ConfigurationError: down_after_ms (500) must be greater than ...
    """

    tombstone_ttl_ms: int = 24 * 3600 * 1000
    compaction_interval_ms: int = 5 * 60 * 1000
    hydrate_timeout_ms: int = 5_000
    max_clock_skew_ms: int = 60_000
    heartbeat_interval_ms: int = 1_000
    down_after_ms: int = 5_000
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    hello_window_ms: int = 300
    sync_timeout_ms: int = 2_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name == "hydrate_timeout_ms" else 1
            if type(value) is not int or value < low:
                raise ConfigurationError(f"{f.name} must be an int >= {low}, got {value!r}")
        if self.down_after_ms <= self.heartbeat_interval_ms:
            raise ConfigurationError(
                f"down_after_ms ({self.down_after_ms}) must be greater than "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )
        if self.max_message_size < 2 * _ENVELOPE_SLACK:
            raise ConfigurationError(
                f"max_message_size must be at least {2 * _ENVELOPE_SLACK}, "
                f"got {self.max_message_size}"
            )


_STATS_FIELDS = tuple(f.name for f in fields(Stats))
_GAUGES = ("keys", "tombstones", "members")


class ReplicaCounters:
    """The replica's mutable mirror of :class:`~podshare.store.events.Stats`.

    Every ``Stats`` field is an attribute; the replica increments the ones it can know
    (writes, bytes and messages received, decode errors, clock skew, refreshes, peers,
    compaction, ephemeral expiry, and ``messages_sent``/``bytes_sent`` for what
    :meth:`Replica.take_outgoing` handed out). The driver may set the others
    (``events_dispatched``, ``watchers_*``, ``hydration_seconds``) or override them in
    the frozen result. The gauges ``keys``, ``tombstones`` and ``members`` are read from
    the replica by :meth:`snapshot`.
    """

    __slots__ = (*_STATS_FIELDS, "_gauges")

    def __init__(self, gauges: Callable[[], tuple[int, int, int]]) -> None:
        for name in _STATS_FIELDS:
            setattr(self, name, 0)
        self.hydration_seconds = 0.0
        self._gauges = gauges

    # Declared for type checkers; set in __init__.
    writes_local: int
    writes_applied: int
    writes_stale: int
    events_dispatched: int
    watchers_active: int
    watchers_dropped: int
    keys: int
    tombstones: int
    tombstones_compacted: int
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    decode_errors: int
    clock_skew_reports: int
    refreshes: int
    hydration_seconds: float
    peers_seen: int
    members: int
    ephemeral_expired: int

    def snapshot(self) -> Stats:
        """A frozen :class:`~podshare.store.events.Stats` of the counters and gauges now."""
        self.keys, self.tombstones, self.members = self._gauges()
        return Stats(**{name: getattr(self, name) for name in _STATS_FIELDS})


class _Entry:
    """One key's state. ``value``/``wire`` are ``None`` for tombstones.

    ``wire`` is the value codec's bytes of ``value``; in a merger store it is filled
    lazily (joins change the value, and only syncs need the bytes).
    """

    __slots__ = ("epoch", "flags", "stamp", "value", "wire")

    def __init__(
        self, value: Any, wire: bytes | None, stamp: Stamp, epoch: Stamp | None, flags: int
    ) -> None:
        self.value = value
        self.wire = wire
        self.stamp = stamp
        self.epoch = epoch
        self.flags = flags


class _Peer:
    __slots__ = (
        "ever_down",
        "incarnation",
        "keys",
        "last_seen",
        "last_sync",
        "lineage",
        "synced",
        "up",
    )

    def __init__(self, now: int) -> None:
        self.last_seen = now
        self.up = False
        self.ever_down = False
        self.incarnation = 0
        self.synced = False
        self.lineage = now
        self.keys = 0
        self.last_sync = -1


class _Sync:
    """The one sync this replica runs as requester."""

    __slots__ = (
        "buckets",
        "deadline",
        "full",
        "got",
        "hydrate",
        "id",
        "nbuckets",
        "peer",
        "peer_lineage",
        "push",
        "started",
        "total",
        "tried",
    )

    def __init__(self, sync_id: int, hydrate: bool, started: int) -> None:
        self.id = sync_id
        self.hydrate = hydrate
        self.started = started
        self.peer: str | None = None
        self.deadline = 0
        self.tried: set[str] = set()
        self.nbuckets = 1
        self.full = False
        self.got: set[int] = set()
        self.total: int | None = None
        self.buckets: frozenset[int] | None = None
        self.peer_lineage = 0
        # key -> True when this replica holds more than the peer sent for that key.
        self.push: dict[str, bool] = {}


class Replica(Generic[T]):
    """One node's copy of a replicated map: pure, synchronous, time passed in.

    Args:
        name: the store's name (for messages only).
        node_id: this node's id (unique in the cluster).
        codec: turns values into bytes and back.
        merger: joins values of a merger store; ``None`` for last-writer-wins.
        options: timing and size options.
        now: the wall clock in milliseconds; this replica's incarnation.

    See the module docstring for semantics and ``docs/internals.md`` §8 for the contract
    with the driver.
    """

    def __init__(
        self,
        name: str,
        node_id: str,
        codec: ValueCodec[T],
        *,
        merger: Merger[T] | None,
        options: ReplicaOptions,
        now: int,
    ) -> None:
        if not isinstance(options, ReplicaOptions):
            raise ConfigurationError(f"options must be ReplicaOptions, not {options!r}")
        self.name = name
        self.node_id = node_id
        self.codec = codec
        self.merger = merger
        self.options = options
        #: Live values only; the store's ``get`` is ``values.get``.
        self.values: dict[str, T] = {}
        #: Whether :meth:`receive` and :meth:`tick` return ``SET``/``DELETE`` events for
        #: remote changes. A driver with nobody watching sets it False, so hydrating a
        #: large map builds no event per key (membership events are always returned).
        self.data_events = True
        self.counters = ReplicaCounters(self._gauges)
        self._entries: dict[str, _Entry] = {}
        self._now = now
        self._clock = HLC(node_id, time_source=self._time, max_skew_ms=options.max_clock_skew_ms)
        self._incarnation = now
        # Every write this replica could have seen since this time is in its state.
        self._lineage = now
        self._pending: dict[str, tuple[WireEntry, Any]] = {}
        self._spill: list[WireEntry] = []  # queued deltas too large to join with later ones
        self._control: list[Outgoing] = []
        self._peers: dict[str, _Peer] = {}
        self._eph: dict[str, set[str]] = {}  # owner -> keys of its live ephemeral entries
        self._synced = False
        self._sync: _Sync | None = None
        self._sync_seq = 0
        self._hello_deadline: int | None = None
        self._hydrate_deadline: int | None = None
        self._hydrate_started: int | None = None
        self._next_heartbeat = now
        self._next_compaction = now + options.compaction_interval_ms
        self._left = False
        self._limit = options.max_message_size - _ENVELOPE_SLACK

    # --- small helpers ---------------------------------------------------------------

    def _time(self) -> int:
        return self._now

    def _gauges(self) -> tuple[int, int, int]:
        return len(self.values), len(self._entries) - len(self.values), len(self.members())

    @property
    def incarnation(self) -> int:
        """The wall-clock ms at which this replica was created."""
        return self._incarnation

    @property
    def lineage(self) -> int:
        """The time since which this replica's state is complete (see the module docstring)."""
        return self._lineage

    @property
    def synced(self) -> bool:
        """Hydration finished, or gave up (no synced peer answered in time)."""
        return self._synced

    @property
    def sync_in_progress(self) -> bool:
        """A sync (or a hydration's hello) is waiting for a peer."""
        return self._sync is not None

    def members(self) -> frozenset[str]:
        """The node ids this replica believes alive, its own included."""
        return frozenset([self.node_id, *(n for n, p in self._peers.items() if p.up)])

    def entry_stamp(self, key: str) -> Stamp | None:
        """The stamp of ``key``'s entry (tombstones included), or ``None`` if unknown."""
        entry = self._entries.get(key)
        return None if entry is None else entry.stamp

    def is_ephemeral(self, key: str) -> bool:
        """True when ``key`` holds a live ephemeral entry."""
        entry = self._entries.get(key)
        return entry is not None and bool(entry.flags & EPHEMERAL) and key in self.values

    def tombstones(self) -> dict[str, Stamp]:
        """Every remembered delete: key -> the stamp that deleted it."""
        return {k: e.stamp for k, e in self._entries.items() if e.flags & TOMBSTONE}

    def empty_value(self, key: str) -> T | None:
        """What ``update()`` passes for ``key`` when it holds nothing.

        The merger's (or the value type's) empty value in a merger store, else ``None``.
        """
        merger = self.merger
        if merger is None:
            return None
        empty = getattr(merger, "empty", None)
        if callable(empty):
            try:
                value: T = empty()
                return value
            except TypeError:
                pass
        if self.codec.empty is not None:
            return self.codec.empty()
        return None

    # --- local writes ----------------------------------------------------------------

    def _check_size(self, key: str, data: bytes) -> None:
        if len(data) + len(key.encode()) > self._limit:
            raise InvalidValue(
                f"value for {key!r} encodes to {len(data)} bytes, above the "
                f"{self._limit}-byte limit of one message"
            )

    def local_set(self, key: str, value: T, now: int, *, ephemeral: bool = False) -> list[Event[T]]:
        """Write ``value`` at ``key`` (a merger store joins it into the key's state).

        The write is applied at once and queued for :meth:`take_outgoing`.

        Raises:
            InvalidValue: the codec refuses ``value``, it is too large for one message,
                or ``ephemeral`` was asked of a merger store. Nothing changed.
        """
        self._now = now
        if self.merger is not None:
            if ephemeral:
                raise InvalidValue("ephemeral entries need a last-writer-wins store")
            return self._local_merge(key, value)
        data = self.codec.encode(value)
        self._check_size(key, data)
        return self._local_put(key, value, data, EPHEMERAL if ephemeral else 0)

    def local_set_many(self, items: Sequence[tuple[str, T]], now: int) -> list[Event[T]]:
        """:meth:`local_set` for several keys, all validated before any is applied.

        Raises :class:`~podshare.exceptions.InvalidValue` (nothing changed) when a value
        is refused by the codec or too large for one message.
        """
        self._now = now
        if self.merger is not None:
            # A merge ships a delta, encoded when applied; check every value first.
            for _, value in items:
                self.codec.encode(value)
            return [event for key, value in items for event in self._local_merge(key, value)]
        encoded = []
        for key, value in items:
            data = self.codec.encode(value)
            self._check_size(key, data)
            encoded.append((key, value, data))
        return [
            event for key, value, data in encoded for event in self._local_put(key, value, data, 0)
        ]

    def _local_put(self, key: str, value: T, data: bytes, flags: int) -> list[Event[T]]:
        """Apply and queue a last-writer-wins write whose value is already encoded."""
        stamp = self._clock.now()
        old = self._entries.get(key)
        self._put(key, _Entry(value, data, stamp, None, flags), old)
        self._pending[key] = (make_entry(key, stamp, flags, data, None), None)
        self.counters.writes_local += 1
        return [Event(EventKind.SET, key, value, self.node_id, stamp)]

    def _local_merge(self, key: str, value: T) -> list[Event[T]]:
        merger = self.merger
        assert merger is not None
        old = self._entries.get(key)
        current = old.value if old is not None and not old.flags & TOMBSTONE else None
        epoch = old.epoch if old is not None and old.epoch is not None else ZERO_EPOCH
        if current is None:
            merged, delta = value, value
        else:
            merged = merger.merge(current, value)
            delta = _delta(value, current)
        data = self.codec.encode(delta)
        self._check_size(key, data)
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
        self._put(key, _Entry(merged, None, stamp, epoch, MERGED), old)
        self._pending[key] = (make_entry(key, stamp, MERGED, data, epoch), delta)
        self.counters.writes_local += 1
        return [Event(EventKind.SET, key, merged, self.node_id, stamp)]

    def local_delete(self, key: str, now: int) -> list[Event[T]]:
        """Delete ``key``: a tombstone (a merger key: a new epoch), applied and queued.

        Returns a ``DELETE`` event when the key was live.
        """
        self._now = now
        stamp = self._clock.now()
        old = self._entries.get(key)
        if self.merger is not None:
            flags, epoch = TOMBSTONE | MERGED, stamp
        else:
            flags, epoch = TOMBSTONE, None
        self._put(key, _Entry(None, None, stamp, epoch, flags), old)
        self._pending[key] = (make_entry(key, stamp, flags, None, epoch), None)
        self.counters.writes_local += 1
        if old is not None and not old.flags & TOMBSTONE:
            return [Event(EventKind.DELETE, key, None, self.node_id, stamp)]
        return []

    def _put(self, key: str, new: _Entry, old: _Entry | None) -> None:
        """Install ``new`` for ``key`` and keep ``values`` and the ephemeral index in step."""
        if old is not None and old.flags & EPHEMERAL:
            keys = self._eph.get(old.stamp.origin)
            if keys is not None:
                keys.discard(key)
        self._entries[key] = new
        if new.flags & TOMBSTONE:
            self.values.pop(key, None)
        else:
            self.values[key] = new.value
            if new.flags & EPHEMERAL:
                self._eph.setdefault(new.stamp.origin, set()).add(key)

    def _remove(self, key: str) -> _Entry | None:
        old = self._entries.pop(key, None)
        self.values.pop(key, None)
        if old is not None and old.flags & EPHEMERAL:
            keys = self._eph.get(old.stamp.origin)
            if keys is not None:
                keys.discard(key)
        return old

    # --- outgoing --------------------------------------------------------------------

    def take_outgoing(self) -> list[Outgoing]:
        """Everything queued: writes coalesced into as few messages as fit, then control.

        Writes to the same key since the last call travel once (the latest for LWW, the
        joined delta for mergers).
        """
        if not (self._pending or self._spill or self._control):
            return []  # the common case after a receive: nothing to send
        out: list[Outgoing] = []
        if self._pending or self._spill:
            pending, self._pending = self._pending, {}
            entries, self._spill = self._spill, []
            entries.extend(e for e, _ in pending.values())
            node = self.node_id
            for group in self._groups(entries):
                out.append(Outgoing(None, wire.encode(wire.Writes(node, group))))
        if self._control:
            out.extend(self._control)
            self._control = []
        counters = self.counters
        counters.messages_sent += len(out)
        counters.bytes_sent += sum(len(o.data) for o in out)
        return out

    def _groups(self, entries: list[WireEntry]) -> list[list[WireEntry]]:
        """Split ``entries`` into groups whose envelope stays below ``max_message_size``."""
        return _split(entries, wire.entry_size, self._limit, 0)

    def _send(self, to: str | None, msg: wire.Message) -> None:
        self._control.append(Outgoing(to, wire.encode(msg)))

    def _presence(self, cls: type[wire.Hello] | type[wire.Heartbeat]) -> wire.Message:
        return cls(self.node_id, self._incarnation, self._synced, self._lineage, len(self._entries))

    def leave(self, now: int) -> list[Outgoing]:
        """The goodbye to publish when closing: peers mark this node down at once."""
        self._now = now
        self._left = True
        data = wire.encode(wire.Leave(self.node_id))
        self.counters.messages_sent += 1
        self.counters.bytes_sent += len(data)
        return [Outgoing(None, data)]

    # --- receiving -------------------------------------------------------------------

    def receive(self, data: bytes, now: int) -> tuple[list[Event[T]], list[PodshareError]]:
        """Apply one received message; never raises for bad input.

        Returns the events to dispatch and the errors to report (undecodable messages or
        values, which were counted and skipped, and clock-skew reports).
        """
        self._now = now
        counters = self.counters
        counters.messages_received += 1
        counters.bytes_received += len(data)
        events: list[Event[T]] = []
        errors: list[PodshareError] = []
        try:
            msg = wire.decode_unless_from(
                data, self.node_id, max_size=self.options.max_message_size
            )
        except ProtocolError as exc:
            counters.decode_errors += 1
            return events, [exc]
        if msg is None:
            return events, errors  # this node's own broadcast, echoed by the transport
        sender = msg.sender
        if isinstance(msg, wire.Leave):
            self._peer_down(sender, events)
            return events, errors
        self._heard(sender, msg, events)
        if isinstance(msg, wire.Writes):
            self._apply_all(msg.entries, events, errors, None)
        elif isinstance(msg, wire.Hello):
            self._send(sender, self._presence(wire.Heartbeat))
        elif isinstance(msg, wire.Heartbeat):
            self._maybe_pick_hydration_peer(sender)
        elif isinstance(msg, wire.SyncRequest):
            self._answer_sync(msg)
        elif isinstance(msg, wire.SyncData):
            self._on_sync_data(msg, events, errors)
        elif isinstance(msg, wire.SyncPush):
            self._apply_all(msg.entries, events, errors, None)
        return events, errors

    def _heard(self, sender: str, msg: wire.Message, events: list[Event[T]]) -> None:
        """Liveness: ``sender`` spoke. Only presence messages bring a down node back up."""
        peer = self._peers.get(sender)
        presence = isinstance(msg, wire.Hello | wire.Heartbeat)
        if peer is None:
            # A node never seen before is presumed alive until it stays silent.
            peer = self._peers[sender] = _Peer(self._now)
            self.counters.peers_seen += 1
            self._peer_up(sender, peer, events)
        peer.last_seen = max(peer.last_seen, self._now)
        if presence:
            assert isinstance(msg, wire.Hello | wire.Heartbeat)
            if peer.incarnation and msg.incarnation != peer.incarnation:
                self._expire_before(sender, msg.incarnation, events)
            peer.incarnation = msg.incarnation
            peer.synced = msg.synced
            peer.lineage = msg.lineage
            peer.keys = msg.keys
            if not peer.up:
                self._peer_up(sender, peer, events)
            if (
                msg.synced
                and self._synced
                and self._sync is None
                and (msg.lineage != self._lineage or (peer.last_sync < 0 and self.node_id < sender))
            ):
                # Histories that may have grown apart (say, two replicas that each started
                # alone): different lineages, or a first contact (the lower id asks, and
                # the exchange is bidirectional). A completed sync adopts the older lineage.
                peer.last_sync = self._now
                self.start_sync(self._now, prefer=sender)

    def _peer_up(self, node: str, peer: _Peer, events: list[Event[T]]) -> None:
        peer.up = True
        peer.last_seen = self._now
        events.append(Event(EventKind.NODE_UP, node, None, node, None))
        if peer.ever_down:
            # Back from a partition: it may have dropped our ephemeral entries, and we
            # may each have missed writes. Re-assert, and sync with it if idle.
            self._reassert()
            if self._sync is None and self._synced:
                self.start_sync(self._now, prefer=node)

    def _peer_down(self, node: str, events: list[Event[T]]) -> None:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer(self._now)
            self.counters.peers_seen += 1
            peer.ever_down = True
            self._expire_owner(node, events)
            return
        peer.ever_down = True
        peer.synced = False
        if peer.up:
            peer.up = False
            events.append(Event(EventKind.NODE_DOWN, node, None, node, None))
        self._expire_owner(node, events)
        sync = self._sync
        if sync is not None and sync.peer == node:
            self._retry_sync(events)

    def _expire_owner(self, owner: str, events: list[Event[T]]) -> None:
        keys = self._eph.pop(owner, None)
        if not keys:
            return
        for key in sorted(keys):
            old = self._entries.get(key)
            if old is None or old.stamp.origin != owner or not old.flags & EPHEMERAL:
                continue
            self._remove(key)
            self.counters.ephemeral_expired += 1
            if self.data_events:
                events.append(Event(EventKind.DELETE, key, None, owner, old.stamp))

    def _expire_before(self, owner: str, incarnation: int, events: list[Event[T]]) -> None:
        """``owner`` restarted: its earlier life's ephemeral entries are gone."""
        for key in sorted(self._eph.get(owner, ())):
            old = self._entries[key]
            if old.stamp.time < incarnation:
                self._remove(key)
                self.counters.ephemeral_expired += 1
                if self.data_events:
                    events.append(Event(EventKind.DELETE, key, None, owner, old.stamp))

    def _reassert(self) -> None:
        for key in sorted(self._eph.get(self.node_id, ())):
            entry = self._entries[key]
            entry.stamp = self._clock.now()
            self._pending[key] = (make_entry(key, entry.stamp, entry.flags, entry.wire, None), None)

    def _alive(self, owner: str, events: list[Event[T]]) -> bool:
        """Whether ``owner``'s ephemeral entries may be applied (unknown owners are presumed up)."""
        if owner == self.node_id:
            return True
        peer = self._peers.get(owner)
        if peer is None:
            peer = self._peers[owner] = _Peer(self._now)
            self.counters.peers_seen += 1
            self._peer_up(owner, peer, events)
            return True
        return peer.up

    # --- applying remote entries -----------------------------------------------------

    def _apply_all(
        self,
        entries: Sequence[WireEntry],
        events: list[Event[T]],
        errors: list[PodshareError],
        sync: _Sync | None,
    ) -> None:
        if not entries:
            return
        stamps = [Stamp(e.time, e.counter, e.origin) for e in entries]
        # One observe per message: the highest stamp bounds all the others.
        top = max(stamps)
        if self._clock.observe(top):
            self.counters.clock_skew_reports += 1
            errors.append(
                ProtocolError(
                    f"stamp from {top.origin!r} is {top.time - self._now} ms ahead of this "
                    f"node's clock (max_clock_skew {self.options.max_clock_skew_ms} ms)"
                )
            )
        horizon = self._now - self.options.tombstone_ttl_ms
        if len(entries) < _BULK:
            # The common small batch: no context manager around the loop.
            self._apply_entries(entries, stamps, horizon, events, errors, sync)
            return
        with _bulk(len(entries)):
            self._apply_entries(entries, stamps, horizon, events, errors, sync)

    def _apply_entries(
        self,
        entries: Sequence[WireEntry],
        stamps: list[Stamp],
        horizon: int,
        events: list[Event[T]],
        errors: list[PodshareError],
        sync: _Sync | None,
    ) -> None:
        if self.merger is None and sync is None:
            self._apply_lww(entries, stamps, horizon, events, errors)
            return
        apply = self._apply
        for entry, stamp in zip(entries, stamps, strict=True):
            try:
                apply(entry, stamp, horizon, events, sync)
            except DecodeError as exc:
                self.counters.decode_errors += 1
                errors.append(DecodeError(f"value of key {entry.key!r} skipped: {exc}"))
            except Exception as exc:  # a user's merge refusing a peer's value
                self.counters.decode_errors += 1
                error = DecodeError(f"value of key {entry.key!r} could not be merged: {exc!r}")
                error.__cause__ = exc
                errors.append(error)

    def _apply_lww(
        self,
        entries: Sequence[WireEntry],
        stamps: list[Stamp],
        horizon: int,
        events: list[Event[T]],
        errors: list[PodshareError],
    ) -> None:
        """:meth:`_apply` for broadcast entries of a last-writer-wins store.

        Plain writes (no flag set: the bulk of every batch) take an inlined path with
        the same rules as :meth:`_apply`; tombstones and ephemeral entries go through it.
        """
        apply = self._apply
        mine = self._entries
        values = self.values
        decode = self.codec.decode
        lineage = self._lineage
        emit = self.data_events
        counters = self.counters
        stale = applied = 0
        for we, stamp in zip(entries, stamps, strict=True):
            try:
                if we.flags:
                    apply(we, stamp, horizon, events, None)
                    continue
                key = we.key
                cur = mine.get(key)
                if cur is None:
                    if horizon > stamp.time >= lineage:
                        stale += 1  # deleted here long ago (see _apply)
                        continue
                elif stamp <= cur.stamp:
                    stale += 1
                    continue
                data = we.value
                value = decode(data)  # type: ignore[arg-type]
                applied += 1
                new = _Entry(value, data, stamp, None, 0)
                if cur is None:
                    mine[key] = new
                    values[key] = value
                else:
                    self._put(key, new, cur)
                if emit:
                    events.append(Event(EventKind.SET, key, value, stamp.origin, stamp))
            except DecodeError as exc:
                counters.decode_errors += 1
                errors.append(DecodeError(f"value of key {we.key!r} skipped: {exc}"))
        counters.writes_stale += stale
        counters.writes_applied += applied

    def _apply(
        self,
        we: WireEntry,
        stamp: Stamp,
        horizon: int,
        events: list[Event[T]],
        sync: _Sync | None,
    ) -> None:
        key, flags = we.key, we.flags
        counters = self.counters
        if bool(flags & MERGED) != (self.merger is not None):
            raise DecodeError("entry kind does not match this store (merger vs last-writer-wins)")
        cur = self._entries.get(key)
        if flags & EPHEMERAL:
            owner = stamp.origin
            if owner == self.node_id and stamp.time < self._incarnation:
                # My previous life's entry: it is gone; make every replica forget it.
                if cur is None or cur.stamp < stamp:
                    events.extend(self.local_delete(key, self._now))
                    counters.writes_local -= 1
                return
            if not self._alive(owner, events):
                counters.writes_stale += 1
                return
        elif cur is None and horizon > stamp.time >= self._lineage:
            # Old, unknown, and within what this replica should have seen: it was
            # deleted here and the tombstone compacted. Accepting it would resurrect it.
            counters.writes_stale += 1
            if sync is not None:
                sync.push[key] = False
            return
        if self.merger is not None:
            self._apply_merge(we, stamp, cur, events, sync)
            return
        # Last writer wins.
        if cur is not None and stamp <= cur.stamp:
            if sync is not None:
                sync.push[key] = stamp != cur.stamp
            counters.writes_stale += 1
            return
        if sync is not None:
            sync.push[key] = False
        counters.writes_applied += 1
        if flags & TOMBSTONE:
            self._put(key, _Entry(None, None, stamp, None, flags), cur)
            if cur is not None and not cur.flags & TOMBSTONE and self.data_events:
                events.append(Event(EventKind.DELETE, key, None, stamp.origin, stamp))
            return
        data = we.value
        value = self.codec.decode(data)  # type: ignore[arg-type]
        new = _Entry(value, data, stamp, None, flags)
        if cur is None and not flags & EPHEMERAL:
            # The hydration fast path: nothing to unlink, nothing to index.
            self._entries[key] = new
            self.values[key] = value
        else:
            self._put(key, new, cur)
        if self.data_events:
            events.append(Event(EventKind.SET, key, value, stamp.origin, stamp))

    def _apply_merge(
        self,
        we: WireEntry,
        stamp: Stamp,
        cur: _Entry | None,
        events: list[Event[T]],
        sync: _Sync | None,
    ) -> None:
        merger = self.merger
        assert merger is not None
        key = we.key
        epoch = we.epoch if we.epoch is not None else ZERO_EPOCH
        cur_epoch = cur.epoch if cur is not None and cur.epoch is not None else ZERO_EPOCH
        cur_live = cur is not None and not cur.flags & TOMBSTONE
        if cur is not None and epoch < cur_epoch:
            self.counters.writes_stale += 1
            if sync is not None:
                sync.push[key] = True
            return
        if we.flags & TOMBSTONE:
            if cur is not None and epoch == cur_epoch:
                # The bottom of this epoch joins into anything as nothing.
                self.counters.writes_stale += 1
                if sync is not None:
                    sync.push[key] = cur_live
                return
            self._put(key, _Entry(None, None, max(stamp, epoch), epoch, we.flags), cur)
            self.counters.writes_applied += 1
            if sync is not None:
                sync.push[key] = False
            if cur_live and self.data_events:
                events.append(Event(EventKind.DELETE, key, None, stamp.origin, stamp))
            return
        assert we.value is not None
        incoming = self.codec.decode(we.value)
        if cur is None or epoch > cur_epoch or not cur_live:
            self._put(key, _Entry(incoming, we.value, stamp, epoch, MERGED), cur)
            self.counters.writes_applied += 1
            if sync is not None:
                sync.push[key] = False
            if self.data_events:
                events.append(Event(EventKind.SET, key, incoming, stamp.origin, stamp))
            return
        merged = merger.merge(cur.value, incoming)
        new_stamp = max(cur.stamp, stamp)
        if merged == cur.value:
            cur.stamp = new_stamp
            self.counters.writes_stale += 1
            if sync is not None:
                sync.push[key] = merged != incoming
            return
        self._put(key, _Entry(merged, None, new_stamp, epoch, MERGED), cur)
        self.counters.writes_applied += 1
        if sync is not None:
            sync.push[key] = merged != incoming
        if self.data_events:
            events.append(Event(EventKind.SET, key, merged, stamp.origin, stamp))

    # --- sync: digests -----------------------------------------------------------------

    def _wire_of(self, entry: _Entry) -> bytes | None:
        if entry.wire is None and entry.value is not None:
            entry.wire = self.codec.encode(entry.value)
        return entry.wire

    def _merged_hash(self, key: str, entry: _Entry) -> int:
        # Merger entries: equal states must hash equal, whatever stamps brought them.
        epoch = entry.epoch
        assert epoch is not None
        head = f"{key}\x00{epoch[0]}\x00{epoch[1]}\x00{epoch[2]}\x00{entry.flags & TOMBSTONE}"
        material = head.encode() + b"\x00" + (self._wire_of(entry) or b"")
        return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "little")

    def _digest(self, nbuckets: int) -> list[int]:
        """One 64-bit XOR of entry hashes per bucket; a key's bucket is ``crc32(key)``'s low bits.

        An LWW entry is identified by its key and stamp (stamps are unique per write), so
        its hash mixes ``crc32(key)`` with the stamp arithmetically (splitmix64), several
        times cheaper than a cryptographic hash per key; merger entries hash their state.
        """
        mask = nbuckets - 1
        hashes = [0] * nbuckets
        origins: dict[str, int] = {}
        crc32 = zlib.crc32
        merged_hash = self._merged_hash
        for key, entry in self._entries.items():
            kh = crc32(key.encode())
            if entry.epoch is None:
                t, c, o = entry.stamp
                oh = origins.get(o)
                if oh is None:
                    oh = origins[o] = _mix(crc32(o.encode()) + 0x632BE59BD9B4E019)
                x = (kh << 32 | (t & 0xFFFFFFFF)) ^ (t >> 32 << 56) ^ (c << 8) ^ entry.flags
                z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
                z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
                h = (z ^ (z >> 31)) ^ oh
            else:
                h = merged_hash(key, entry)
            hashes[kh & mask] ^= h
        return hashes

    def _nbuckets(self, keys: int) -> int:
        n = 1
        cap = min(wire.MAX_BUCKETS, (self._limit - 64) // wire.HASH_SIZE)
        while n * _KEYS_PER_BUCKET < keys and n * 2 <= cap:
            n *= 2
        return n

    # --- sync: requester -----------------------------------------------------------------

    def start_sync(self, now: int, *, hydrate: bool = False, prefer: str | None = None) -> None:
        """Begin a sync with one peer (no-op while one runs).

        ``hydrate``: this replica is new (or re-joining): if it knows no synced peer it
        broadcasts a hello first, and :attr:`synced` becomes True when the exchange ends
        (or nobody answered within ``hello_window_ms``, or ``hydrate_timeout_ms`` passed).
        ``prefer``: sync with this peer if it is up and synced.
        """
        self._now = now
        if self._sync is not None:
            return
        self._sync_seq += 1
        sync = _Sync(self._sync_seq, hydrate, now)
        if hydrate:
            self._hydrate_started = now
            self._hydrate_deadline = now + self.options.hydrate_timeout_ms
        self._sync = sync
        peer = self._choose_peer(sync, prefer)
        if peer is not None:
            self._request(sync, peer)
            return
        if hydrate:
            self._hello_deadline = now + self.options.hello_window_ms
            self._send(None, self._presence(wire.Hello))
            return
        # Nobody to sync with: the exchange is trivially complete.
        self._sync = None

    def _choose_peer(self, sync: _Sync, prefer: str | None) -> str | None:
        candidates = [
            (p.last_sync, node)
            for node, p in self._peers.items()
            if p.up and p.synced and node not in sync.tried
        ]
        if not candidates:
            return None
        if prefer is not None and any(node == prefer for _, node in candidates):
            return prefer
        return min(candidates)[1]

    def _request(self, sync: _Sync, peer: str) -> None:
        self._hello_deadline = None
        sync.peer = peer
        sync.tried.add(peer)
        sync.deadline = self._now + self.options.sync_timeout_ms
        sync.got = set()
        sync.total = None
        sync.buckets = None
        sync.push = {}
        info = self._peers.get(peer)
        keys = max(len(self._entries), info.keys if info is not None else 0)
        sync.full = not self._entries
        if sync.full:
            sync.nbuckets = 1
            msg = wire.SyncRequest(self.node_id, sync.id, True, 1, b"", self._lineage)
        else:
            sync.nbuckets = n = self._nbuckets(keys)
            hashes = b"".join(h.to_bytes(8, "little") for h in self._digest(n))
            msg = wire.SyncRequest(self.node_id, sync.id, False, n, hashes, self._lineage)
        self._send(peer, msg)

    def _maybe_pick_hydration_peer(self, sender: str) -> None:
        sync = self._sync
        if sync is None or sync.peer is not None:
            return
        peer = self._peers.get(sender)
        if peer is not None and peer.up and peer.synced and sender not in sync.tried:
            self._request(sync, sender)

    def _retry_sync(self, events: list[Event[T]]) -> None:
        sync = self._sync
        assert sync is not None
        peer = self._choose_peer(sync, None)
        if peer is not None:
            self._request(sync, peer)
        else:
            self._finish_sync(ok=False)

    def _finish_sync(self, *, ok: bool) -> None:
        sync = self._sync
        self._sync = None
        self._hello_deadline = None
        if sync is None:
            return
        if ok:
            self.counters.refreshes += 1
        if sync.hydrate or not self._synced:
            was_synced = self._synced
            self._synced = True
            self._hydrate_deadline = None
            if self._hydrate_started is not None:
                self.counters.hydration_seconds = (self._now - self._hydrate_started) / 1000
            if not was_synced and not self._left:
                # Peers choose sync partners among peers whose heartbeat said synced: say
                # so now rather than up to one heartbeat interval later.
                self._send(None, self._presence(wire.Heartbeat))
                self._next_heartbeat = self._now + self.options.heartbeat_interval_ms

    def _on_sync_data(
        self, msg: wire.SyncData, events: list[Event[T]], errors: list[PodshareError]
    ) -> None:
        sync = self._sync
        current = sync is not None and sync.id == msg.sync_id and sync.peer == msg.sender
        if not current or sync is None:
            # A late chunk of an abandoned exchange still carries valid state.
            if not msg.refused:
                self._apply_all(msg.entries, events, errors, None)
            return
        if msg.refused:
            self._retry_sync(events)
            return
        if msg.seq in sync.got:
            return  # a duplicate chunk
        if sync.total is None:
            sync.total = msg.total
        sync.peer_lineage = msg.lineage
        if msg.seq == 0:
            sync.buckets = None if msg.buckets is None else frozenset(msg.buckets)
        sync.got.add(msg.seq)
        sync.deadline = self._now + self.options.sync_timeout_ms
        # A full answer to an empty requester needs no bookkeeping for a push-back.
        self._apply_all(msg.entries, events, errors, None if sync.full else sync)
        if len(sync.got) >= sync.total:
            self._complete_sync(sync, events)

    def _complete_sync(self, sync: _Sync, events: list[Event[T]]) -> None:
        """Every chunk arrived: push back what the peer lacks, drop what it deleted."""
        peer = sync.peer
        assert peer is not None
        horizon = self._now - self.options.tombstone_ttl_ms
        mask = sync.nbuckets - 1
        buckets = sync.buckets
        seen = sync.push
        to_push: list[WireEntry] = []
        # After a full answer (this replica held nothing when it asked) there is nothing
        # to push: writes made or received since travel by broadcast.
        for key, entry in [] if sync.full else list(self._entries.items()):
            pushed = seen.get(key)
            if pushed is None:
                if buckets is not None and (zlib.crc32(key.encode()) & mask) not in buckets:
                    continue
                # The peer does not hold this key at all.
                # A live ephemeral entry is its owner's claim, not history: push it.
                if (
                    entry.stamp.time < horizon
                    and not entry.flags & EPHEMERAL
                    and (entry.stamp.time >= sync.peer_lineage or entry.flags & TOMBSTONE)
                ):
                    # Deleted there long ago (or an expired tombstone): forget it.
                    self._drop(key, entry, peer, events)
                    continue
            elif not pushed:
                continue
            to_push.append(self._to_wire(key, entry))
        if to_push:
            for group in self._groups(to_push):
                self._send(peer, wire.SyncPush(self.node_id, sync.id, group))
        self._lineage = min(self._lineage, sync.peer_lineage)
        info = self._peers.get(peer)
        if info is not None:
            info.last_sync = self._now
        self._finish_sync(ok=True)

    def _drop(self, key: str, entry: _Entry, peer: str, events: list[Event[T]]) -> None:
        self._remove(key)
        if entry.flags & TOMBSTONE:
            self.counters.tombstones_compacted += 1
        elif self.data_events:
            events.append(Event(EventKind.DELETE, key, None, peer, entry.stamp))

    def _to_wire(self, key: str, entry: _Entry) -> WireEntry:
        return make_entry(key, entry.stamp, entry.flags, self._wire_of(entry), entry.epoch)

    # --- sync: responder -----------------------------------------------------------------

    def _answer_sync(self, req: wire.SyncRequest) -> None:
        to = req.sender
        if not self._synced:
            self._send(
                to,
                wire.SyncData(self.node_id, req.sync_id, 0, 1, True, self._lineage, 1, None, ()),
            )
            return
        # Answering is contact: the exchange is bidirectional (the requester pushes back
        # what we lack), so the first-contact rule in _heard must not start another one
        # with the same peer (after a hydration it would digest every key twice more).
        info = self._peers.get(to)
        if info is not None:
            info.last_sync = self._now
        if req.full:
            buckets: list[int] | None = None
            selected: Iterable[tuple[str, _Entry]] = self._entries.items()
            nbuckets = req.nbuckets
        else:
            nbuckets = req.nbuckets
            mine = self._digest(nbuckets)
            theirs = req.hashes
            diff = [
                b
                for b in range(nbuckets)
                if mine[b] != int.from_bytes(theirs[8 * b : 8 * b + 8], "little")
            ]
            buckets = diff
            wanted = frozenset(diff)
            mask = nbuckets - 1
            selected = [
                (k, e) for k, e in self._entries.items() if zlib.crc32(k.encode()) & mask in wanted
            ]
        wire_of = self._wire_of
        raw_entry = wire.raw_entry
        with _bulk(len(self._entries)):
            raw = [raw_entry(k, e.stamp, e.flags, wire_of(e), e.epoch) for k, e in selected]
        # Only chunk 0 names the buckets; later chunks send [] ("see chunk 0").
        room = 0 if buckets is None else 9 * len(buckets) + 16
        groups = _pack_groups(raw, self._limit - room)
        total = len(groups)
        for seq, group in enumerate(groups):
            if buckets is None:
                named: list[int] | None = None
            else:
                named = buckets if seq == 0 else []
            msg = wire.SyncData(
                self.node_id, req.sync_id, seq, total, False, self._lineage, nbuckets, named, ()
            )
            self._control.append(Outgoing(to, wire.encode_raw(msg, group)))

    # --- time ------------------------------------------------------------------------

    def tick(self, now: int) -> tuple[list[Event[T]], list[PodshareError]]:
        """Do what is due at ``now``: heartbeat, failure detection, sync timeouts, compaction."""
        self._now = now
        events: list[Event[T]] = []
        errors: list[PodshareError] = []
        opts = self.options
        if now >= self._next_heartbeat:
            if not self._left:
                self._send(None, self._presence(wire.Heartbeat))
            self._next_heartbeat = now + opts.heartbeat_interval_ms
        for node, peer in list(self._peers.items()):
            if peer.up and now - peer.last_seen >= opts.down_after_ms:
                self._peer_down(node, events)
        sync = self._sync
        if sync is not None:
            if self._hydrate_deadline is not None and now >= self._hydrate_deadline:
                self._finish_sync(ok=False)
            elif sync.peer is None:
                if self._hello_deadline is None or now >= self._hello_deadline:
                    # Nobody synced answered the hello: an empty cluster.
                    self._finish_sync(ok=False)
            elif now >= sync.deadline:
                self._retry_sync(events)
        if now >= self._next_compaction:
            self.compact(now)
            self._next_compaction = now + opts.compaction_interval_ms
        return events, errors

    def compact(self, now: int) -> int:
        """Forget tombstones older than ``tombstone_ttl_ms``; return how many."""
        self._now = now
        horizon = now - self.options.tombstone_ttl_ms
        dead = [
            k for k, e in self._entries.items() if e.flags & TOMBSTONE and e.stamp.time < horizon
        ]
        for key in dead:
            del self._entries[key]
        self.counters.tombstones_compacted += len(dead)
        return len(dead)

    def next_deadline(self) -> int:
        """The wall-clock ms at which :meth:`tick` is next due."""
        opts = self.options
        due = min(self._next_heartbeat, self._next_compaction)
        for peer in self._peers.values():
            if peer.up:
                due = min(due, peer.last_seen + opts.down_after_ms)
        sync = self._sync
        if sync is not None:
            if sync.peer is None and self._hello_deadline is not None:
                due = min(due, self._hello_deadline)
            elif sync.peer is not None:
                due = min(due, sync.deadline)
            if self._hydrate_deadline is not None:
                due = min(due, self._hydrate_deadline)
        return due


E = TypeVar("E")

_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finalizer: a 64-bit bijection that spreads every input bit."""
    z = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    return z ^ (z >> 31)


# Below this many entries a message is applied with the cyclic GC left alone.
_BULK = 512


@contextmanager
def _bulk(n: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while ``n`` (many) entries are built.

    Hydration allocates several container objects per key, none of them cyclic, and
    each allocation burst would trigger collections that traverse the whole (growing)
    map: about half of hydration's time. The pause lasts one synchronous call (one
    message of at most ``max_message_size`` bytes) and restores the previous state.
    """
    if n < _BULK or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _split(items: list[E], size_of: Callable[[E], int], budget: int, first: int) -> list[list[E]]:
    """Split ``items`` into groups of at most ``budget`` bytes (sizes are upper bounds).

    ``first`` is room the first group's envelope needs for other fields. Always returns
    at least one (maybe empty) group, so an empty answer is still one message.
    """
    groups: list[list[E]] = []
    batch: list[E] = []
    size = first
    for item in items:
        n = size_of(item)
        if batch and size + n > budget:
            groups.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += n
    groups.append(batch)
    return groups


def _pack_groups(raw: list[list[Any]], budget: int) -> list[list[list[Any]]]:
    """Split raw entries into groups that pack into at most ``budget`` bytes each.

    Measures by packing (fast, in C) rather than estimating entry by entry: pack all,
    cut into as many even parts as the size needs, and recurse on any part still too
    large. Always at least one (maybe empty) group, so an empty answer is one message.
    """
    size = wire.packed_size(raw)
    if size <= budget or len(raw) <= 1:
        return [raw]
    parts = min(len(raw), -(-size // budget) + 1)
    step = -(-len(raw) // parts)
    groups: list[list[list[Any]]] = []
    for i in range(0, len(raw), step):
        groups.extend(_pack_groups(raw[i : i + step], budget))
    return groups


def _delta(new: Any, old: Any) -> Any:
    """A small state carrying what ``new`` adds to ``old`` (``new`` itself if unknown)."""
    delta_from = getattr(new, "delta_from", None)
    if delta_from is None:
        return new
    try:
        return delta_from(old)
    except Exception:  # a user's delta_from may not accept this old state: ship it whole
        return new
