"""The map and its join rules: one replica's entries, and how local and remote writes land.

`MapState` holds a store's entries and keeps four things in step with them: the
live values (``values``, what ``Store.get`` reads), the digest tree, the index of
ephemeral entries by owner incarnation, and the heap of entries that expire. It applies
entries the same way whoever sent them; every decision is here:

- **Last-writer-wins keys** hold the entry with the highest stamp. Equal stamps (two
  processes sharing a node id) resolve the same way on every replica: a delete wins,
  then the larger value bytes. A delete is a tombstone with its stamp.
- **Merger keys** hold ``(epoch, value)``: a delete raises the epoch to its stamp and
  resets the value; writes join within an epoch; a higher epoch wins.
- **Absent keys** follow the horizon (`podshare.store.horizon`): an entry for a key
  this replica does not hold is refused only when this replica provably held that
  writer's writes up to its stamp (it was deleted here, its tombstone compacted).
- **Ephemeral entries** live while their owner's incarnation does; **expiring entries**
  (``ttl=``) turn into tombstones with their own stamp at ``expires`` on every replica,
  so an expired entry never comes back and every replica agrees.

The map never reads a clock and never raises for remote input: it appends
[`Event`][podshare.Event] values to the replica's event queue and counts
into its [`Stats`][podshare.Stats] record.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, Generic, TypeVar

from podshare.crdt.clock import Stamp
from podshare.crdt.merger import Merger
from podshare.exceptions import DecodeError, InvalidValue, PodshareError
from podshare.store import wire
from podshare.store.codec import ValueCodec
from podshare.store.digest import DigestTree, entry_hash, lww_hash, merged_hash
from podshare.store.events import Event, EventKind, Stats
from podshare.store.horizon import Horizon
from podshare.store.wire import EPHEMERAL, EXPIRING, MERGED, TOMBSTONE, KeySummary, WireEntry

__all__ = ["ZERO_EPOCH", "Liveness", "MapState", "MergedEntry"]

T = TypeVar("T")

#: The first epoch of every merger key (before any delete).
ZERO_EPOCH = Stamp(0, 0, "")

_crc32 = zlib.crc32
_SET = EventKind.SET
_DELETE = EventKind.DELETE
_EXPIRED = EventKind.EXPIRED

#: ``liveness(node, nonce)``: True alive, False known down, None unknown.
Liveness = Callable[[str, int], "bool | None"]


class MergedEntry:
    """One merger key's state: the merged value, its epoch and the highest stamp in it.

    ``wire`` caches the codec's bytes of ``value`` (made when a sync or the size check
    needs them); ``None`` for a tombstone or while not yet encoded.
    """

    __slots__ = ("counter", "epoch", "flags", "origin", "time", "value", "wire")

    def __init__(
        self, value: Any, wire: bytes | None, stamp: Stamp, epoch: Stamp, flags: int
    ) -> None:
        self.value = value
        self.wire = wire
        self.time, self.counter, self.origin = stamp
        self.epoch = epoch
        self.flags = flags

    @property
    def stamp(self) -> Stamp:
        """The highest stamp merged into this state."""
        return Stamp(self.time, self.counter, self.origin)


class MapState(Generic[T]):
    """The entries of one replica and the rules that change them (see the module docs).

    Args:
        node_id: this node's id.
        nonce: this node's incarnation.
        codec: the store's value codec.
        merger: the store's merger, or ``None`` for last-writer-wins.
        horizon: the replica's horizon (refusal of absent keys, compaction).
        limit: the largest encoded value plus key a write may produce (one message).
        events: the replica's event queue (appended to).
        errors: the replica's error queue (appended to).
        stats: the replica's statistics record (counted into).
        liveness: tells whether an ephemeral entry's owner incarnation is alive.
    """

    __slots__ = (
        "_dirty",
        "_expiring",
        "_hashes",
        "_liveness",
        "_stale",
        "_tombs",
        "_tree",
        "codec",
        "dirty",
        "emit",
        "entries",
        "ephemeral",
        "errors",
        "events",
        "horizon",
        "limit",
        "merger",
        "node_id",
        "nonce",
        "now",
        "retracted",
        "stats",
        "values",
    )

    def __init__(
        self,
        node_id: str,
        nonce: int,
        codec: ValueCodec[T],
        merger: Merger[T] | None,
        horizon: Horizon,
        *,
        limit: int,
        events: list[Event[T]],
        errors: list[PodshareError],
        stats: Stats,
        liveness: Liveness,
    ) -> None:
        self.node_id = node_id
        self.nonce = nonce
        self.codec = codec
        self.merger = merger
        self.horizon = horizon
        self.limit = limit
        self.events = events
        self.errors = errors
        self.stats = stats
        self._liveness = liveness
        #: Live values only; ``Store.get`` is ``values.get``.
        self.values: dict[str, T] = {}
        #: Every entry, tombstones included: a WireEntry (LWW) or a MergedEntry.
        self.entries: dict[str, Any] = {}
        self._tree = DigestTree()
        #: (owner, owner nonce) -> keys of its live ephemeral entries.
        self.ephemeral: dict[tuple[str, int], set[str]] = {}
        #: Whether SET/DELETE/EXPIRED events are built for remote changes (watchers).
        self.emit = True
        #: With persistence: key -> when (local ms) it first changed since it was last
        #: persisted; None when the store has no persistence.
        self.dirty: dict[str, int] | None = None
        #: The replica's latest ``now`` (set by the replica with every input).
        self.now = 0
        self._expiring: list[tuple[int, str]] = []
        # (stamp time, key) of tombstones, oldest first, for compaction.
        self._tombs: list[tuple[int, str]] = []
        #: Keys holding a previous life's ephemeral entry of this node (the replica
        #: deletes them: that life is over).
        self.retracted: list[str] = []
        # Merger entries: key -> state hash in the tree; keys whose hash is stale.
        self._hashes: dict[str, int] = {}
        self._dirty: set[str] = set()
        # Last-writer-wins keys changed since the last digest, each with the entry whose
        # hash the tree holds (None: none). Hashes are computed when a digest is asked
        # for, once per key however often it changed: a write costs no hashing.
        self._stale: dict[str, WireEntry | None] = {}

    # --- reading ---------------------------------------------------------------------

    def stamp_of(self, key: str) -> Stamp | None:
        """The stamp of ``key``'s entry (tombstones included), or ``None``."""
        e = self.entries.get(key)
        return None if e is None else Stamp(e.time, e.counter, e.origin)

    def tombstones(self) -> int:
        """How many entries are tombstones."""
        return len(self.entries) - len(self.values)

    def is_ephemeral(self, key: str) -> bool:
        """Whether ``key`` holds a live ephemeral entry."""
        e = self.entries.get(key)
        return e is not None and bool(e.flags & EPHEMERAL) and key in self.values

    def next_expiry(self) -> int | None:
        """When the next expiring entry is due (wall-clock ms), if any."""
        return self._expiring[0][0] if self._expiring else None

    # --- hashing (digests) ---------------------------------------------------------------

    def _hash(self, key: str, e: Any) -> int:
        if type(e) is WireEntry:
            return lww_hash(key, e.time, e.counter, e.origin, e.flags, e.value)
        state = self.wire_of(e) or b""
        return merged_hash(key, e.epoch, bool(e.flags & TOMBSTONE), state)

    def wire_of(self, e: Any) -> bytes | None:
        """The codec's bytes of an entry's value (encoded once, then cached)."""
        if type(e) is WireEntry:
            value: bytes | None = e.value
            return value
        if e.wire is None and not e.flags & TOMBSTONE:
            e.wire = self.codec.encode(e.value)
        return e.wire  # type: ignore[no-any-return]

    @property
    def tree(self) -> DigestTree:
        """The digest tree of every entry, brought up to date (see `refresh_digest()`)."""
        if self._stale or self._dirty:
            self.refresh_digest()
        return self._tree

    @property
    def digest_behind(self) -> bool:
        """Whether entries changed since the digest tree was last brought up to date."""
        return bool(self._stale or self._dirty)

    def fold_digest(self, limit: int) -> None:
        """Fold up to ``limit`` of the entries changed since the last digest into the
        tree (the oldest changes first), and every changed merger key.

        The driver calls this between messages (from the replica's ``tick``), so the
        tree keeps up with a stream of writes in small steps, and the first exchange
        after a bulk load does not fold a million keys in one call.
        """
        stale = self._stale
        if len(stale) <= limit:
            self.refresh_digest()
            return
        taken = list(islice(stale.items(), limit))
        for key, _ in taken:
            del stale[key]
        self._fold(taken)
        self._fold_dirty()

    def refresh_digest(self) -> None:
        """Fold the entries changed since the last digest into the tree."""
        stale = self._stale
        if stale:
            self._fold(stale.items())
            stale.clear()
        self._fold_dirty()

    def _fold(self, changes: Iterable[tuple[str, WireEntry | None]]) -> None:
        tree, entries = self._tree, self.entries
        for key, was in changes:
            now = entries.get(key)
            if now is was:
                continue
            kc = _crc32(key.encode())
            if now is None:
                assert was is not None
                tree.remove(
                    key, entry_hash(kc, was.time, was.counter, was.origin, was.flags, was.value)
                )
                continue
            h = entry_hash(kc, now.time, now.counter, now.origin, now.flags, now.value)
            if was is None:
                tree.add(key, h, kc)
            else:
                tree.change(
                    key,
                    entry_hash(kc, was.time, was.counter, was.origin, was.flags, was.value),
                    h,
                    kc,
                )

    def _fold_dirty(self) -> None:
        dirty = self._dirty
        if not dirty:
            return
        tree, hashes, entries = self._tree, self._hashes, self.entries
        for key in dirty:
            e = entries.get(key)
            if e is None:
                continue
            new = self._hash(key, e)
            old = hashes.get(key)
            if old is None:
                tree.add(key, new)
            else:
                tree.change(key, old, new)
            hashes[key] = new
        dirty.clear()

    def hash_of(self, key: str) -> int:
        """The state hash of ``key``'s entry (call `refresh_digest()` first)."""
        e = self.entries[key]
        if type(e) is WireEntry:
            return lww_hash(key, e.time, e.counter, e.origin, e.flags, e.value)
        return self._hashes[key]

    def summaries(self, keys: Iterable[str]) -> list[KeySummary]:
        """What this replica holds for ``keys`` (each present): stamp and state hash."""
        entries = self.entries
        out = []
        for key in keys:
            e = entries[key]
            out.append(KeySummary(key, e.time, e.counter, e.origin, self.hash_of(key)))
        return out

    def raw(self, key: str) -> list[Any] | None:
        """``key``'s entry packed as `entry_list()` would, or None."""
        e = self.entries.get(key)
        if e is None:
            return None
        if type(e) is WireEntry:
            return wire.entry_list(e)
        t, c, o = e.epoch
        return [key, e.time, e.counter, e.origin, e.flags, self.wire_of(e), t, c, o]

    # --- installing ------------------------------------------------------------------

    def _install(self, key: str, new: Any, old: Any, value: Any) -> None:
        """Make ``new`` the entry of ``key`` (replacing ``old``), keeping indexes in step."""
        entries = self.entries
        entries[key] = new
        dirty = self.dirty
        if dirty is not None and key not in dirty:
            dirty[key] = self.now
        if new.flags & TOMBSTONE:
            self.values.pop(key, None)
            heapq.heappush(self._tombs, (new.time, key))
        else:
            self.values[key] = value
        if old is not None and old.flags & EPHEMERAL:
            keys = self.ephemeral.get((old.origin, old.owner_nonce or 0))
            if keys is not None:
                keys.discard(key)
        if type(new) is WireEntry:
            stale = self._stale
            if key not in stale:
                stale[key] = old
            flags = new.flags
            if flags & EPHEMERAL and not flags & TOMBSTONE:
                # (EPHEMERAL entries always carry their owner's nonce; checked on receipt.)
                self.ephemeral.setdefault((new.origin, new.owner_nonce or 0), set()).add(key)
            if flags & EXPIRING and not flags & TOMBSTONE:
                heapq.heappush(self._expiring, (new.expires or 0, key))
        else:
            self._dirty.add(key)

    def _forget(self, key: str) -> Any:
        """Remove ``key``'s entry altogether (compaction); return it."""
        old = self.entries.pop(key)
        self.values.pop(key, None)
        dirty = self.dirty
        if dirty is not None and key not in dirty:
            dirty[key] = self.now
        if type(old) is WireEntry:
            stale = self._stale
            if key not in stale:
                stale[key] = old
            if old.flags & EPHEMERAL:
                keys = self.ephemeral.get((old.origin, old.owner_nonce or 0))
                if keys is not None:
                    keys.discard(key)
        else:
            h = self._hashes.pop(key, None)
            if h is not None:
                self._tree.remove(key, h)
            self._dirty.discard(key)
        return old

    def _event(self, kind: EventKind, key: str, value: Any, e: Any) -> None:
        self.events.append(Event(kind, key, value, e.origin, Stamp(e.time, e.counter, e.origin)))

    # --- local writes (validated by the caller; nothing here can fail half-way) -------

    def check_size(self, key: str, size: int) -> None:
        """Raise InvalidValue when an entry this large could not travel in one message."""
        if size + len(key.encode()) > self.limit:
            raise InvalidValue(
                f"value for {key!r} encodes to {size} bytes, above the {self.limit}-byte "
                "limit of one message (raise the transport's max_message_size to allow more)"
            )

    def put_local(self, entry: WireEntry, value: T) -> None:
        """Install a local last-writer-wins write (its stamp is the newest here)."""
        key = entry.key
        self._install(key, entry, self.entries.get(key), value)
        self.stats.writes_local += 1
        if self.emit:
            self._event(_SET, key, value, entry)

    def delete_local(self, entry: WireEntry) -> bool:
        """Install a local delete; True when the key was live."""
        key = entry.key
        old = self.entries.get(key)
        was_live = key in self.values
        if self.merger is None:
            self._install(key, entry, old, None)
        else:
            stamp = entry.stamp
            self._install(key, MergedEntry(None, None, stamp, stamp, MERGED | TOMBSTONE), old, None)
        self.stats.writes_local += 1
        if was_live and self.emit:
            self._event(_DELETE, key, None, entry)
        return was_live

    def prepare_merge(self, key: str, value: T) -> tuple[T, T, Stamp]:
        """Join ``value`` into ``key`` without installing: ``(merged, delta, epoch)``.

        Raises InvalidValue when the merged state would be too large to transfer.
        """
        merger = self.merger
        assert merger is not None
        old = self.entries.get(key)
        if old is None or old.flags & TOMBSTONE:
            epoch = old.epoch if old is not None else ZERO_EPOCH
            merged, delta = value, value
            data = self.codec.encode(merged)
            self.check_size(key, len(data))
            return merged, delta, epoch
        merged = merger.merge(old.value, value)
        delta = self._delta(value, old.value)
        # Only transferable state may exist: bound the merged encoding, encoding it only
        # when the cheap bound (known size + delta) could exceed the limit.
        delta_size = len(self.codec.encode(delta))
        known = len(old.wire) if old.wire is not None else None
        if known is None or known + delta_size + len(key) > self.limit:
            self.check_size(key, len(self.codec.encode(merged)))
        return merged, delta, old.epoch

    def merge_local(self, key: str, merged: T, stamp: Stamp, epoch: Stamp) -> None:
        """Install a local merger write prepared by `prepare_merge()`."""
        old = self.entries.get(key)
        self._install(key, MergedEntry(merged, None, stamp, epoch, MERGED), old, merged)
        self.stats.writes_local += 1
        if self.emit:
            self._event(_SET, key, merged, self.entries[key])

    def _delta(self, new: T, old: T) -> T:
        """A small state carrying what ``new`` adds to ``old`` (``new`` itself if unknown)."""
        delta_from = getattr(new, "delta_from", None)
        if delta_from is None:
            return new
        try:
            delta: T = delta_from(old)
        except Exception as exc:  # noqa: BLE001  # a user's delta_from refusing this old state
            error = PodshareError(
                f"delta_from() of {type(new).__qualname__} raised {exc!r}; the whole state "
                "is shipped instead"
            )
            error.__cause__ = exc
            self.errors.append(error)
            return new
        return delta

    # --- remote entries --------------------------------------------------------------

    def apply_one(self, we: WireEntry, now: int) -> None:
        """`apply()` of a single broadcast entry (the common message), inlined."""
        if self.merger is not None or we.flags or we.value is None:
            self.apply((we,), now)
            return
        key = we.key
        entries = self.entries
        cur = entries.get(key)
        stats = self.stats
        if cur is None:
            if self.horizon.holds(we.origin, we.time, now):
                stats.writes_refused += 1
                return
        elif we.time <= cur.time and not _newer(we, cur):
            stats.writes_stale += 1
            return
        try:
            value = self.codec.decode(we.value)
        except DecodeError as exc:
            stats.decode_errors += 1
            self.errors.append(DecodeError(f"value of key {key!r} skipped: {exc}"))
            return
        stats.writes_applied += 1
        if cur is None or not cur.flags:
            # _install_plain, inlined: no index but the digest to keep in step.
            entries[key] = we
            self.values[key] = value
            dirty = self.dirty
            if dirty is not None and key not in dirty:
                dirty[key] = now
            self._stale.setdefault(key, cur)
        else:
            self._install(key, we, cur, value)
        if self.emit:
            self.events.append(
                Event(_SET, key, value, we.origin, Stamp(we.time, we.counter, we.origin))
            )

    def _install_plain(self, key: str, new: WireEntry, old: WireEntry | None, value: Any) -> None:
        """`_install()` when neither entry has flags (a plain value over a plain value
        or over nothing): no index but the digest to keep in step."""
        self.entries[key] = new
        self.values[key] = value
        dirty = self.dirty
        if dirty is not None and key not in dirty:
            dirty[key] = self.now
        stale = self._stale
        if key not in stale:
            stale[key] = old

    def apply(
        self, batch: Sequence[WireEntry], now: int, drops: list[WireEntry] | None = None
    ) -> None:
        """Apply remote entries; refused ones (deleted here) are appended to ``drops``."""
        if self.merger is None:
            self._apply_lww(batch, now, drops)
            return
        for we in batch:
            try:
                self._apply_merged(we, now, drops)
            except DecodeError as exc:
                self.stats.decode_errors += 1
                self.errors.append(DecodeError(f"value of key {we.key!r} skipped: {exc}"))
            except Exception as exc:  # noqa: BLE001  # a user's merge refusing a peer's value
                self.stats.decode_errors += 1
                error = DecodeError(f"value of key {we.key!r} could not be merged: {exc!r}")
                error.__cause__ = exc
                self.errors.append(error)

    def _apply_lww(
        self, batch: Sequence[WireEntry], now: int, drops: list[WireEntry] | None
    ) -> None:
        entries = self.entries
        values = self.values
        decode = self.codec.decode
        holds = self.horizon.holds
        tree_add = self._tree.add
        unhashed = self._stale
        crc32 = _crc32
        emit = self.emit
        dirty = self.dirty
        events = self.events
        stats = self.stats
        applied = stale = 0
        for we in batch:
            key = we.key
            cur = entries.get(key)
            if cur is None:
                if holds(we.origin, we.time, now):
                    # Held here and deleted (its tombstone compacted): refuse, and tell.
                    stats.writes_refused += 1
                    if drops is not None:
                        drops.append(we)
                    continue
            elif not _newer(we, cur):
                stale += 1
                continue
            flags = we.flags
            if flags or we.value is None:
                outcome = self._apply_lww_flagged(we, cur, now)
                if outcome is None:
                    stale += 1
                elif outcome:
                    applied += 1
                continue
            try:
                value = decode(we.value)
            except DecodeError as exc:
                stats.decode_errors += 1
                self.errors.append(DecodeError(f"value of key {key!r} skipped: {exc}"))
                continue
            applied += 1
            if cur is None:
                # The hydration fast path: nothing to unlink, nothing to index.
                entries[key] = we
                values[key] = value
                if key in unhashed:
                    pass  # the tree's entry for it is recorded: folded at the next digest
                else:
                    kc = crc32(key.encode())
                    tree_add(key, entry_hash(kc, we.time, we.counter, we.origin, 0, we.value), kc)
                if dirty is not None and key not in dirty:
                    dirty[key] = now
            else:
                self._install(key, we, cur, value)
            if emit:
                events.append(
                    Event(_SET, key, value, we.origin, Stamp(we.time, we.counter, we.origin))
                )
        stats.writes_applied += applied
        stats.writes_stale += stale

    def _apply_lww_flagged(self, we: WireEntry, cur: Any, now: int) -> bool | None:
        """A newer entry with flags (tombstone, ephemeral, expiring): True applied, None
        stale, False skipped (invalid, counted)."""
        key = we.key
        flags = we.flags
        if flags & MERGED or not we.consistent():
            self.stats.decode_errors += 1
            self.errors.append(DecodeError(f"entry for key {key!r} skipped: malformed flags"))
            return False
        if flags & EPHEMERAL and not flags & TOMBSTONE:
            owner, nonce = we.origin, we.owner_nonce
            assert nonce is not None
            alive = self._liveness(owner, nonce)
            if owner == self.node_id and nonce != self.nonce and alive is not True:
                # My previous life's entry: that life is over; the replica deletes it.
                self.retracted.append(key)
                return None
            if alive is False:
                return None
        expiring = bool(flags & EXPIRING)
        if expiring and not flags & TOMBSTONE:
            assert we.expires is not None
            if we.expires <= now:
                # Expired on the way: it is the delete it turns into, everywhere.
                we = _expired(we)
        if we.flags & TOMBSTONE:
            was_live = cur is not None and not cur.flags & TOMBSTONE
            self._install(key, we, cur, None)
            if was_live:
                if expiring:
                    self.stats.expired += 1
                if self.emit:
                    self._event(_EXPIRED if expiring else _DELETE, key, None, we)
            return True
        try:
            value = self.codec.decode(we.value)  # type: ignore[arg-type]
        except DecodeError as exc:
            self.stats.decode_errors += 1
            self.errors.append(DecodeError(f"value of key {key!r} skipped: {exc}"))
            return False
        self._install(key, we, cur, value)
        if self.emit:
            self._event(_SET, key, value, we)
        return True

    def _apply_merged(self, we: WireEntry, now: int, drops: list[WireEntry] | None) -> None:
        merger = self.merger
        assert merger is not None
        key = we.key
        stats = self.stats
        if not we.flags & MERGED or not we.consistent():
            raise DecodeError("entry kind does not match this store (merger vs last-writer-wins)")
        cur = self.entries.get(key)
        epoch = we.epoch
        assert epoch is not None
        stamp = Stamp(we.time, we.counter, we.origin)
        if cur is None:
            if self.horizon.holds(we.origin, we.time, now):
                # Every contribution is at or before this stamp, all held here once:
                # the key was deleted here and its tombstone compacted.
                stats.writes_refused += 1
                if drops is not None:
                    drops.append(we)
                return
            if we.flags & TOMBSTONE:
                self._install(key, MergedEntry(None, None, stamp, epoch, we.flags), None, None)
                stats.writes_applied += 1
                return
            incoming = self.codec.decode(we.value)  # type: ignore[arg-type]
            # The received bytes are the sender's encoding; digests hash this replica's
            # own canonical encoding of the state (made when a digest needs it).
            self._install(key, MergedEntry(incoming, None, stamp, epoch, MERGED), None, incoming)
            stats.writes_applied += 1
            if self.emit:
                self._event(_SET, key, incoming, we)
            return
        cur_epoch: Stamp = cur.epoch
        cur_live = not cur.flags & TOMBSTONE
        if epoch < cur_epoch:
            stats.writes_stale += 1
            return
        if we.flags & TOMBSTONE:
            if epoch == cur_epoch:
                # The bottom of this epoch joins into anything as nothing.
                stats.writes_stale += 1
                return
            self._install(
                key, MergedEntry(None, None, max(stamp, epoch), epoch, we.flags), cur, None
            )
            stats.writes_applied += 1
            if cur_live and self.emit:
                self._event(_DELETE, key, None, we)
            return
        incoming = self.codec.decode(we.value)  # type: ignore[arg-type]
        if epoch > cur_epoch or not cur_live:
            self._install(key, MergedEntry(incoming, None, stamp, epoch, MERGED), cur, incoming)
            stats.writes_applied += 1
            if self.emit:
                self._event(_SET, key, incoming, we)
            return
        merged = merger.merge(cur.value, incoming)
        new_stamp = max(cur.stamp, stamp)
        if merged == cur.value:
            if new_stamp != cur.stamp:
                cur.time, cur.counter, cur.origin = new_stamp
            stats.writes_stale += 1
            return
        self._install(key, MergedEntry(merged, None, new_stamp, epoch, MERGED), cur, merged)
        stats.writes_applied += 1
        if self.emit:
            self.events.append(Event(_SET, key, merged, we.origin, stamp))

    # --- time ------------------------------------------------------------------------

    def expire(self, now: int) -> None:
        """Turn every expiring entry due at ``now`` into its delete (EXPIRED events)."""
        heap = self._expiring
        entries = self.entries
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            e = entries.get(key)
            if e is None or type(e) is not WireEntry or e.expires != expires or e.flags & TOMBSTONE:
                continue  # replaced since
            self._install(key, _expired(e), e, None)
            self.stats.expired += 1
            if self.emit:
                self._event(_EXPIRED, key, None, e)

    def owner_down(self, owner: str, nonce: int) -> None:
        """Remove the ephemeral entries of incarnation ``(owner, nonce)``."""
        keys = self.ephemeral.pop((owner, nonce), None)
        if not keys:
            return
        for key in sorted(keys):
            e = self.entries.get(key)
            if e is None or not e.flags & EPHEMERAL or e.origin != owner or e.owner_nonce != nonce:
                continue
            self._forget(key)
            self.stats.ephemeral_expired += 1
            if self.emit:
                self._event(_DELETE, key, None, e)

    def compact(self, older_than: int) -> int:
        """Forget tombstones stamped before ``older_than``; return how many."""
        heap = self._tombs
        entries = self.entries
        done = 0
        while heap and heap[0][0] < older_than:
            time, key = heapq.heappop(heap)
            e = entries.get(key)
            if e is None or not e.flags & TOMBSTONE or e.time != time:
                continue  # replaced or already gone
            self._forget(key)
            done += 1
        self.stats.tombstones_compacted += done
        return done

    def drop(self, key: str, time: int, counter: int, origin: str) -> bool:
        """Forget ``key`` if it still holds exactly that stamp (a peer showed it deleted)."""
        e = self.entries.get(key)
        if e is None or (e.time, e.counter, e.origin) != (time, counter, origin):
            return False
        was_live = key in self.values
        self._forget(key)
        self.stats.writes_refused += 1
        if was_live and self.emit:
            self._event(_DELETE, key, None, e)
        return True


def _newer(we: WireEntry, cur: WireEntry) -> bool:
    """Whether ``we`` wins over ``cur`` (last-writer-wins, with the equal-stamp rule)."""
    if we.time != cur.time:
        return we.time > cur.time
    if we.counter != cur.counter:
        return we.counter > cur.counter
    if we.origin != cur.origin:
        return we.origin > cur.origin
    # The same stamp: the same write (a duplicate) or two processes with one node id.
    wt, ct = we.flags & TOMBSTONE, cur.flags & TOMBSTONE
    if wt != ct:
        return bool(wt)
    wv, cv = we.value or b"", cur.value or b""
    if wv != cv:
        return wv > cv
    return we.flags > cur.flags


def _expired(e: WireEntry) -> WireEntry:
    """The tombstone an expiring entry becomes: its own stamp, so every replica agrees."""
    return WireEntry(
        e.key, e.time, e.counter, e.origin, TOMBSTONE | EXPIRING,
        None, None, None, None, None, e.expires,
    )  # fmt: skip
