"""The records a store hands to users: change events and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from podshare.crdt.clock import Stamp

__all__ = ["Event", "EventKind", "Stats"]

T = TypeVar("T")


class EventKind(enum.Enum):
    """What an :class:`Event` reports.

    ``SET`` and ``DELETE`` describe keys. ``NODE_UP`` and ``NODE_DOWN`` describe
    membership (their ``key`` is the node id) and reach only watchers opened with
    ``members=True``.
    """

    SET = "set"
    DELETE = "delete"
    NODE_UP = "node_up"
    NODE_DOWN = "node_down"


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """One change seen by this replica, local or remote.

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


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot of one store's counters, from :meth:`Store.stats`.

    Counters only grow, except the gauges ``watchers_active``, ``keys``,
    ``tombstones``, ``members`` and ``hydration_seconds``.
    """

    writes_local: int = 0
    """Writes made by this replica (set, delete, update, each key of set_many)."""
    writes_applied: int = 0
    """Remote writes that changed this replica's state."""
    writes_stale: int = 0
    """Remote writes ignored because this replica already had something newer."""
    events_dispatched: int = 0
    """Events delivered into watcher buffers."""
    watchers_active: int = 0
    """Watchers currently open."""
    watchers_dropped: int = 0
    """Watchers ended because their buffer was full (slow consumers)."""
    keys: int = 0
    """Live keys."""
    tombstones: int = 0
    """Deleted keys still remembered (for ``tombstone_ttl``)."""
    tombstones_compacted: int = 0
    """Tombstones forgotten after ``tombstone_ttl``."""
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
    """Stamps seen further ahead of the local clock than ``max_clock_skew``."""
    refreshes: int = 0
    """Completed refreshes (digest exchanges), automatic or requested."""
    hydration_seconds: float = 0.0
    """How long the initial hydration took."""
    peers_seen: int = 0
    """Distinct other nodes this replica has heard from."""
    members: int = 0
    """Nodes currently alive (this one included)."""
    ephemeral_expired: int = 0
    """Ephemeral entries removed because their writer went down."""
