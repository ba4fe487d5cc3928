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
liveness in `podshare.store.membership`, the peer table in `podshare.store.peers`,
joining (hellos, evidence, tie-break) in `podshare.store.hydration`, the clock rules for
received stamps in `podshare.store.skew`, what is queued to send in
`podshare.store.outbox`, persisted records in `podshare.store.records`, the options in
`podshare.store.options`, message definitions and sizes in `podshare.store.wire` and
`podshare.store.packing`. This module composes them.

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
from typing import Any, Generic, TypeVar

from podshare.crdt.clock import HLC, MAX_COUNTER, Stamp
from podshare.crdt.merger import Merger
from podshare.exceptions import (
    ConfigurationError,
    InvalidValue,
    PodshareError,
    ProtocolError,
    StoreNotEmpty,
)
from podshare.persistence.base import (
    PersistedState,
    encode_meta,
)
from podshare.store import wire
from podshare.store.codec import ValueCodec
from podshare.store.events import Event, Stats
from podshare.store.horizon import SEED_TIME, Horizon
from podshare.store.hydration import Hydration
from podshare.store.membership import MemberEvent
from podshare.store.options import ReplicaOptions
from podshare.store.outbox import Outbox, Outgoing
from podshare.store.packing import ENVELOPE_SLACK
from podshare.store.peers import Peer, PeerTable
from podshare.store.records import changed_records, decode_records, decode_vector
from podshare.store.skew import SkewGuard
from podshare.store.state import MapState
from podshare.store.sync import SyncEngine, SyncFinished, SyncLimits
from podshare.store.wire import EPHEMERAL, EXPIRING, MERGED, TOMBSTONE, WireEntry, make_entry

__all__ = ["SEED_TIME", "Outgoing", "Replica", "ReplicaOptions"]

T = TypeVar("T")

# The digest tree is folded between messages, a bounded step at a time (about 3.5 µs a
# key: a step stalls the receive loop for a few ms at most), so that the first digest
# exchange after a burst of writes does not fold them all in one call.
_FOLD_PER_TICK = 1024
_FOLD_EVERY_MS = 10


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
        #: The statistics record; the driver adds the fields it owns (see Store.stats).
        self.stats = Stats()
        self._events: list[Event[T]] = []
        self._errors: list[PodshareError] = []
        self._clock = HLC(node_id, time_source=self._time, max_skew_ms=options.max_clock_skew_ms)
        self._limit = options.max_message_size - ENVELOPE_SLACK
        self._max_size = options.max_message_size
        #: What this replica will send (`podshare.store.outbox`).
        self.outbox = Outbox(node_id, nonce, limit=self._limit)
        self._skew = options.max_clock_skew_ms
        #: The clock rules for received stamps (`podshare.store.skew`).
        self.skew = SkewGuard(self._clock, options.max_clock_skew_ms, self.stats, self._errors)
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
            send=self.outbox.send_to,
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
        self._next_compaction = now + options.compaction_interval_ms
        self._left = False
        # The token this replica's Leave reveals, committed to in its hellos.
        self._leave_token = secrets.token_bytes(16)
        self._commitment = wire.leave_commitment(self._leave_token)
        #: The peer table (`podshare.store.peers`).
        self.peers = PeerTable(
            node_id,
            alive=self._alive,
            has_liveness=liveness is not None,
            live_nodes=live_nodes,
            rng=self._rng,
            stats=self.stats,
            events=self._events,
            hello_window_ms=options.hello_window_ms,
            sync_timeout_ms=options.sync_timeout_ms,
        )
        #: Joining: hellos, answers, evidence (`podshare.store.hydration`).
        self.hydration = Hydration(
            node_id,
            nonce,
            self._commitment,
            peers=self.peers,
            sync=self.sync,
            state=self.state,
            stats=self.stats,
            send_to=self.outbox.send_to,
            broadcast=self.outbox.broadcast,
            live_nodes=live_nodes,
            rng=self._rng,
            hello_window_ms=options.hello_window_ms,
            started_at=now,
        )

    # --- small helpers -----------------------------------------------------------------

    def _time(self) -> int:
        return self.state.now

    def _alive(self, node: str, nonce: int) -> bool | None:
        if self._liveness_of is None:
            return None
        return self._liveness_of(node, nonce)

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
        return self.outbox.drain(self.state.now)

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
        return self.hydration.synced

    def members(self) -> frozenset[str]:
        """The node ids of the live replicas of this store, this one included."""
        return frozenset([self.node_id, *self.peers.live()])

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
        hydration = self.hydration
        hello = hydration.hello_at
        if hello is not None and hello < due:
            due = hello
        peers = self.peers
        recontact = peers.recontact_at
        if recontact is not None and recontact < due:
            due = recontact
        collect = hydration.collect_at
        if collect is not None and collect < due:
            due = collect
        prune = peers.prune_at
        if prune is not None and prune < due:
            due = prune
        state = self.state
        expiry = state.next_expiry()
        if expiry is not None and expiry < due:
            due = expiry
        if state.digest_behind and state.now + _FOLD_EVERY_MS < due:
            due = state.now + _FOLD_EVERY_MS
        sync_due = self.sync.next_deadline()
        if sync_due is not None and sync_due < due:
            due = sync_due
        return due

    # --- local writes --------------------------------------------------------------------

    def _stamp_for(self, key: str) -> Stamp:
        """The stamp of a last-writer-wins write to ``key``: the clock's, unless the
        key holds a later one (a write from a clock ahead, which the clock follows only
        to ``max_clock_skew``): then just after it, so the write made after it wins on
        every replica instead of losing to it."""
        stamp = self._clock.now()
        cur = self.state.entries.get(key)
        if cur is None or (cur.time, cur.counter, cur.origin) < (
            stamp.time,
            stamp.counter,
            stamp.origin,
        ):
            return stamp
        if cur.counter < MAX_COUNTER:
            return Stamp(cur.time, cur.counter + 1, self.node_id)
        return Stamp(cur.time + 1, 0, self.node_id)

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
        stamp = self._stamp_for(key)
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
        self.outbox.pending[key] = (entry, None)

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
        outbox = self.outbox
        delta, data = outbox.join_queued(key, epoch, delta, data, merger, self.codec)
        self.state.merge_local(key, merged, stamp, epoch)
        outbox.pending[key] = (make_entry(key, stamp, MERGED, data, epoch), delta)

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
        pending = self.outbox.pending
        for entry, value in entries:
            self.state.put_local(entry, value)
            pending[entry.key] = (entry, None)

    def local_delete(self, key: str, now: int) -> bool:
        """Delete ``key``: a tombstone (a merger key: a new epoch), applied and queued.

        Returns whether the key was live.
        """
        self.state.now = now
        if self.merger is not None:
            stamp = self._clock.now()
            entry = make_entry(key, stamp, TOMBSTONE | MERGED, None, stamp)
        else:
            entry = make_entry(key, self._stamp_for(key), TOMBSTONE, None)
        was_live = self.state.delete_local(entry)
        self.outbox.pending[key] = (entry, None)
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
        if self.state.entries or self.outbox.pending:
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
        peer = self.peers.by_node.get(sender)
        if peer is None or not peer.up or peer.nonce != msg.nonce:
            peer = self.peers.heard(sender, msg.nonce, now, synced=self.hydration.synced)
            if peer is None:
                if type(msg) is _Writes:
                    # Writes still count when their sender is not taken as a peer: a
                    # receiver that is behind may see a writer's goodbye (on the liveness
                    # topic) before its last batches; the state refuses the ephemeral
                    # entries of a life that is over.
                    self._on_writes(msg, now)
                    if state.retracted:
                        self._retract_previous_life(now)
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
            self.sync.on_data(self.skew.bound_stamps(msg, now) if msg.entries else msg, now)
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
            self.hydration.on_hello(msg, peer, now)
        elif isinstance(msg, wire.HelloAck):
            self.hydration.on_hello_ack(msg, peer, now)
        elif isinstance(msg, wire.Leave):
            self._on_leave(msg, peer)
        else:
            stats.decode_errors += 1
            self._errors.append(ProtocolError(f"{type(msg).__name__} on a store topic"))
        if state.retracted:
            self._retract_previous_life(now)

    def _on_writes(self, msg: wire.Writes, now: int) -> None:
        entries = self.skew.admit_writes(msg, now)
        if entries:
            self.state.apply(entries, now)

    def _retract_previous_life(self, now: int) -> None:
        keys, self.state.retracted = self.state.retracted, []
        for key in keys:
            self.local_delete(key, now)
            self.stats.writes_local -= 1

    # --- peers ---------------------------------------------------------------------

    def _peer_gone(self, node: str, peer: Peer) -> None:
        self.peers.gone(node, peer, self.state.now)
        self.sync.abandon(node, "gone")
        self.hydration.candidates.discard(node)

    def _on_leave(self, msg: wire.Leave, peer: Peer) -> None:
        """A replica closed: its peer goes down, if the `Leave` is believed."""
        if self.peers.leave_believed(msg, peer):
            self._peer_gone(msg.sender, peer)

    def node_event(self, event: MemberEvent, now: int) -> None:
        """Liveness changed (from the process's membership)."""
        self.state.now = now
        if event.kind == "down":
            self.state.owner_down(event.node, event.nonce)
            peer = self.peers.get(event.node)
            if peer is not None and peer.nonce == event.nonce:
                self._peer_gone(event.node, peer)
        elif event.kind == "up":
            self.peers.node_up(
                event.node, event.nonce, now, returned=event.returned, synced=self.synced
            )
        elif event.kind == "duplicate":
            self.stats.duplicate_node_ids += 1
            self.horizon.disown()

    def _may_serve(self, peer: str) -> str:
        return self.peers.may_serve(peer, self.state.now, synced=self.hydration.synced)

    def _request(self, peer: str) -> str | None:
        return self.request_sync(self.state.now, peer=peer)

    # --- hydration and syncs ---------------------------------------------------------

    def hydrate(self, now: int) -> None:
        """Start joining: ask the store's synced peers (a broadcast hello) for their state."""
        self.state.now = now
        self.hydration.start(now)

    def cluster_evidence(self, now: int, *, ready: bool, others: int | None) -> None:
        """What the transport knows: connected to its cluster? other subscribers?

        ``others`` is how many other processes subscribe to this store's broadcast topic
        (``None``: the transport cannot tell).
        """
        self.state.now = now
        self.hydration.cluster_evidence(now, ready=ready, others=others)

    def break_the_tie(self, now: int) -> bool:
        """No synced replica answered for long: start the cluster's history if this
        replica has the lowest node id among the unsynced replicas it knows of (the
        others then hydrate from it). Returns whether it became synced.

        For the driver, well after ``hydrate_timeout``: a peer that subscribes but never
        answers (a wrong secret, a wedged process) must not keep a whole cold-started
        fleet unsynced forever.
        """
        self.state.now = now
        return self.hydration.break_the_tie(now)

    def request_sync(self, now: int, *, peer: str | None = None) -> str | None:
        """Start one exchange (anti-entropy, a gap's repair, refresh()): returns the peer
        asked, or None when there is nobody to ask (or one already runs)."""
        self.state.now = now
        if self.sync.requesting():
            return None
        chosen = peer if peer is not None else self.peers.choose(now)
        if chosen is None:
            self.hydration.rejoin(now)  # nobody known: ask who is there
            return None
        self.sync.start(chosen, now, full=self.hydration.wants_full(chosen))
        return chosen

    def _on_finished(self, notice: SyncFinished) -> None:
        now = self.state.now
        peer = self.peers.sync_finished(notice, now)
        if notice.ok:
            self.stats.refreshes += 1
        else:
            self.stats.syncs_failed += 1
        self.hydration.exchange_ended(notice.ok, peer, now)

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
        records = changed_records(state, keys)
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
        entries = decode_records(persisted, self.stats, self._errors)
        if entries:
            self.skew.observe_persisted(max(e.time for e in entries), now)
            emit, self.state.emit = self.state.emit, self.state.emit and live
            dirty, self.state.dirty = self.state.dirty, None
            try:
                self.state.apply(entries, now)
            finally:
                self.state.emit, self.state.dirty = emit, dirty
        vector = decode_vector(persisted, self.stats, self._errors)
        if vector is not None:
            self.horizon.merge(vector, now)
        if not live:
            self.stats.persist_loaded += len(entries)
        return len(entries)

    # --- time ------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Do what is due at ``now``: expiry, sync timeouts, hellos, compaction."""
        state = self.state
        state.now = now
        state.expire(now)
        if state.digest_behind:
            state.fold_digest(_FOLD_PER_TICK)
        self.sync.tick(now)
        self.hydration.tick(now)
        peers = self.peers
        if peers.recontact_at is not None and now >= peers.recontact_at:
            peers.recontact(now, requesting=self.sync.requesting(), request=self._request)
        if peers.prune_at is not None and now >= peers.prune_at:
            peers.forget_down(now, self.horizon.seen)
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
                peer = self.peers.by_node.get(origin)
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
        self.outbox.broadcast(wire.encode(wire.Leave(self.node_id, self.nonce, self._leave_token)))


_MISSING: Any = object()
_Writes = wire.Writes
_decode = wire.decode_unless_own


def _never_down(_node: str) -> int | None:
    return None
