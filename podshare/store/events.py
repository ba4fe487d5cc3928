"""The records a store hands to users: change events and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from podshare._counters import StatsRecord

if TYPE_CHECKING:
    from podshare.crdt.clock import Stamp

__all__ = ["Event", "EventKind", "Stats"]

T = TypeVar("T")


class EventKind(enum.Enum):
    """What an [`Event`][podshare.Event] reports.

    ``SET``, ``DELETE`` and ``EXPIRED`` describe keys (``EXPIRED``: an entry written with
    ``ttl=`` reached its end, at the same stamp-derived instant on every replica).
    ``NODE_UP`` and ``NODE_DOWN`` describe membership (their ``key`` is the node id) and
    reach only watchers opened with ``members=True``.
    """

    SET = "set"
    DELETE = "delete"
    EXPIRED = "expired"
    NODE_UP = "node_up"
    NODE_DOWN = "node_down"


class Event(NamedTuple, Generic[T]):
    """One change seen by this replica, local or remote (an immutable named tuple).

    Attributes:
        kind: what happened.
        key: the key (or node id for membership events).
        value: the new value for ``SET`` (the merged value in a merger store);
            ``None`` for the other kinds.
        origin: the node id that made the change.
        stamp: the change's hybrid-logical-clock stamp (``None`` for membership events).

    Example:
        >>> from podshare.store.events import Event, EventKind
        >>> Event(EventKind.SET, "flag", True, "pod-1", None).kind is EventKind.SET
        True
    """

    kind: EventKind
    key: str
    value: T | None
    origin: str
    stamp: Stamp | None


@dataclass(slots=True)
class Stats(StatsRecord):
    """One store's counters and gauges, from `Store.stats()` (a frozen snapshot).

    Counters only grow; the gauges are ``watchers_active``, ``keys``, ``tombstones``,
    ``members``, ``writers_known`` and ``hydration_seconds``.
    """

    writes_local: int = 0
    """Writes made by this replica (set, delete, update, each key of set_many)."""
    writes_applied: int = 0
    """Remote writes that changed this replica's state."""
    writes_stale: int = 0
    """Remote writes ignored because this replica already had something newer."""
    writes_refused: int = 0
    """Remote entries refused because this replica held and deleted them (the delete's
    tombstone already compacted); the sender is told to forget them."""
    stamps_refused: int = 0
    """Remote entries refused because their stamp was too far ahead of this node's clock
    (more than twice ``max_clock_skew``); anti-entropy brings them once time catches up."""
    events_dispatched: int = 0
    """Events delivered into watcher buffers."""
    watchers_active: int = 0
    """Watchers currently open."""
    watchers_dropped: int = 0
    """Watchers ended because their buffer was full (slow consumers)."""
    keys: int = 0
    """Live keys."""
    tombstones: int = 0
    """Deleted keys still remembered."""
    tombstones_compacted: int = 0
    """Tombstones forgotten (see the horizon rule in ``docs/concepts.md``)."""
    expired: int = 0
    """Entries written with ``ttl=`` that expired here."""
    ephemeral_expired: int = 0
    """Ephemeral entries removed because their writer went down."""
    messages_sent: int = 0
    """Messages published."""
    messages_received: int = 0
    """Messages received (including ones later rejected)."""
    bytes_sent: int = 0
    """Bytes published."""
    bytes_received: int = 0
    """Bytes received."""
    decode_errors: int = 0
    """Received messages or values that could not be decoded and were skipped."""
    clock_skew_reports: int = 0
    """Messages whose sender's clock was more than ``max_clock_skew`` ahead of this one."""
    refreshes: int = 0
    """Completed syncs (digest exchanges or full transfers) this replica asked for."""
    syncs_failed: int = 0
    """Syncs this replica asked for that did not complete (timeout, refusal, busy peer)."""
    syncs_served: int = 0
    """Syncs this replica answered for a peer."""
    syncs_unserved: int = 0
    """New syncs a peer asked for that this replica answered "busy": the peer is not
    confirmed alive by liveness yet, or it asked for more than its budget."""
    leaves_unproven: int = 0
    """Store goodbyes ignored: their token did not match the sender's hellos, and
    liveness still counts it alive (a forgery, or a replica whose hellos this one missed;
    its process's own goodbye or silence ends it)."""
    sync_bytes_sent: int = 0
    """Bytes of sync traffic (digests, summaries, entry streams) this replica sent."""
    hydration_seconds: float = 0.0
    """How long the initial hydration took (0 until synced)."""
    peers_seen: int = 0
    """Distinct other replicas of this store this replica has heard from."""
    members: int = 0
    """Replicas of this store currently alive (this one included)."""
    writers_known: int = 0
    """Writers the horizon remembers (see ``docs/concepts.md``)."""
    duplicate_node_ids: int = 0
    """Times another live process was seen using this replica's node id."""
    persist_writes: int = 0
    """Writes to the persistence backend that succeeded."""
    persist_records: int = 0
    """Records (keys) those writes carried."""
    persist_bytes: int = 0
    """Bytes of those records."""
    persist_errors: int = 0
    """Writes or loads of the persistence backend that failed (retried with backoff)."""
    persist_loaded: int = 0
    """Entries loaded from the persistence backend when the store opened."""
    persist_corrupt: int = 0
    """Persisted records that could not be decoded (skipped)."""
