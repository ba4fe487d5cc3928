"""The metrics schema every exporter shares: which families, named how, read from what.

podshare's components each keep one [`StatsRecord`][podshare._counters.StatsRecord]
(``stats()``). This module says, once, how each field of each record becomes a metric
family, which label names the component, and how a set of components is held (weakly)
and read. [`podshare.contrib.prometheus`][podshare.contrib.prometheus] and
[`podshare.contrib.opentelemetry`][podshare.contrib.opentelemetry] only format what
`Components.read()` returns, so both export the same names.

Naming (Prometheus conventions): ``{namespace}_{group}_{name}``, the unit last
(``sent_bytes_total``, ``hydration_seconds``), counters end in ``_total``, gauges do
not. Every family of a group carries the group's identifying label (``store``,
``transport``, ``endpoint``, ``host``, ``room``) and ``node``.

Nothing here imports a third-party library, and component classes are recognised by
their qualified names, so the optional extras (redis, yjs) are never imported to find
out whether an object is one of theirs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from podshare._identity import default_node_id
from podshare.exceptions import ClosedError, ConfigurationError

__all__ = [
    "COUNTER",
    "FIELDS",
    "GAUGE",
    "KINDS",
    "Components",
    "Family",
    "Field",
    "Group",
    "Sample",
    "families",
]

_log = logging.getLogger("podshare.metrics")

COUNTER: Final = "counter"
GAUGE: Final = "gauge"


@dataclass(frozen=True, slots=True)
class Group:
    """A set of families: ``{namespace}_{name}_...``, each labelled ``label`` and ``node``."""

    name: str
    label: str
    category: str
    """The kind of component it comes from (what a collector may be restricted to)."""


STORE = Group("store", "store", "store")
TRANSPORT = Group("transport", "transport", "transport")
AUTH = Group("auth", "transport", "transport")
CALLREPLY = Group("callreply", "endpoint", "endpoint")
DISCOVERY = Group("discovery", "host", "discovery")
YJS = Group("yjs", "room", "bridge")
GROUPS: Final = (STORE, TRANSPORT, AUTH, CALLREPLY, DISCOVERY, YJS)

#: Every category, and the groups whose families a category produces.
CATEGORIES: Final = {
    "store": (STORE,),
    "transport": (TRANSPORT, AUTH),
    "endpoint": (CALLREPLY,),
    "discovery": (DISCOVERY,),
    "bridge": (YJS,),
}

_ARTICLE: Final = {
    "store": "a store",
    "transport": "a transport",
    "endpoint": "a callreply endpoint",
    "discovery": "a discoverer",
    "bridge": "a Yjs room bridge",
}

#: Label names the exporters use; constant labels may not reuse them.
RESERVED_LABELS: Final = frozenset({g.label for g in GROUPS} | {"node", "reason"})


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: its name after the group, its type and its help text."""

    group: Group
    name: str
    type: str
    help: str
    extra_label: str | None = None
    """A further label some fields of the record fill in (``reason`` of auth refusals)."""

    def full_name(self, namespace: str) -> str:
        """The Prometheus name, e.g. ``podshare_store_sent_bytes_total``."""
        return f"{namespace}_{self.group.name}_{self.name}"

    @property
    def unit(self) -> str:
        """``"bytes"``, ``"seconds"`` or ``""`` (a count)."""
        base = self.name.removesuffix("_total")
        for unit in ("bytes", "seconds"):
            if base.endswith(f"_{unit}"):
                return unit
        return ""

    @property
    def label_names(self) -> tuple[str, ...]:
        """The labels of every sample, constant labels excepted."""
        own = (self.group.label, "node")
        return (*own, self.extra_label) if self.extra_label else own


@dataclass(frozen=True, slots=True)
class Field:
    """How one field of a record is exported."""

    family: Family | None
    """Its family; ``None``: not exported (a sum of other fields, or a nested record)."""
    label_value: str | None = None
    """The value of the family's extra label for this field."""
    nested: bool = False
    """The field holds another record (or ``None``), exported with the same labels."""


def _counter(group: Group, name: str, help: str) -> Field:
    assert name.endswith("_total"), name
    return Field(Family(group, name, COUNTER, help))


def _gauge(group: Group, name: str, help: str) -> Field:
    assert not name.endswith("_total"), name
    return Field(Family(group, name, GAUGE, help))


# --- the store ---------------------------------------------------------------------------

_STORE: dict[str, Field] = {
    "writes_local": _counter(STORE, "writes_local_total", "Writes made by this replica"),
    "writes_applied": _counter(
        STORE, "writes_applied_total", "Remote writes that changed this replica"
    ),
    "writes_stale": _counter(
        STORE,
        "writes_rejected_total",
        "Remote writes ignored because this replica already had something newer",
    ),
    "writes_refused": _counter(
        STORE,
        "writes_refused_total",
        "Remote entries refused because this replica deleted them (tombstone compacted)",
    ),
    "stamps_refused": _counter(
        STORE,
        "stamps_refused_total",
        "Remote entries refused because their stamp was too far ahead of this clock",
    ),
    "events_dispatched": _counter(
        STORE, "events_dispatched_total", "Events delivered into watcher buffers"
    ),
    "watchers_active": _gauge(STORE, "watchers_active", "Watchers currently open"),
    "watchers_dropped": _counter(
        STORE, "watchers_dropped_total", "Watchers ended because their buffer was full"
    ),
    "keys": _gauge(STORE, "keys", "Live keys"),
    "tombstones": _gauge(STORE, "tombstones", "Deleted keys still remembered"),
    "tombstones_compacted": _counter(
        STORE, "tombstones_gced_total", "Tombstones forgotten (compacted)"
    ),
    "expired": _counter(STORE, "expired_total", "Entries written with ttl= that expired here"),
    "ephemeral_expired": _counter(
        STORE,
        "ephemeral_expired_total",
        "Ephemeral entries removed because their writer went down",
    ),
    "messages_sent": _counter(STORE, "sent_messages_total", "Messages published"),
    "messages_received": _counter(STORE, "received_messages_total", "Messages received"),
    "bytes_sent": _counter(STORE, "sent_bytes_total", "Bytes published"),
    "bytes_received": _counter(STORE, "received_bytes_total", "Bytes received"),
    "decode_errors": _counter(
        STORE, "decode_errors_total", "Messages or values skipped as undecodable"
    ),
    "clock_skew_reports": _counter(
        STORE,
        "clock_skew_reports_total",
        "Messages whose sender's clock was more than max_clock_skew ahead",
    ),
    "refreshes": _counter(
        STORE, "refreshes_total", "Completed syncs (digest exchanges, transfers) asked for"
    ),
    "syncs_failed": _counter(STORE, "syncs_failed_total", "Syncs asked for that did not complete"),
    "syncs_served": _counter(STORE, "syncs_served_total", "Syncs answered for a peer"),
    "syncs_unserved": _counter(
        STORE, "syncs_unserved_total", "New syncs answered busy (peer unconfirmed or over budget)"
    ),
    "leaves_unproven": _counter(
        STORE, "leaves_unproven_total", "Store goodbyes ignored (unproven, sender still alive)"
    ),
    "sync_bytes_sent": _counter(STORE, "sync_sent_bytes_total", "Bytes of sync traffic sent"),
    "hydration_seconds": _gauge(
        STORE, "hydration_seconds", "How long the initial hydration took (0 until synced)"
    ),
    "peers_seen": _gauge(STORE, "peers_seen", "Distinct other replicas heard from"),
    "members": _gauge(STORE, "members", "Replicas currently alive, this one included"),
    "writers_known": _gauge(STORE, "writers_known", "Writers the tombstone horizon remembers"),
    "duplicate_node_ids": _counter(
        STORE,
        "duplicate_node_ids_total",
        "Times another live process was seen using this replica's node id",
    ),
    "persist_writes": _counter(
        STORE, "persist_writes_total", "Writes to the persistence backend that succeeded"
    ),
    "persist_records": _counter(
        STORE, "persist_records_total", "Records (keys) written to the persistence backend"
    ),
    "persist_bytes": _counter(
        STORE, "persist_written_bytes_total", "Bytes of records written to the persistence backend"
    ),
    "persist_errors": _counter(
        STORE, "persist_errors_total", "Persistence writes or loads that failed (retried)"
    ),
    "persist_loaded": _counter(
        STORE, "persist_loaded_total", "Entries loaded from the persistence backend at open"
    ),
    "persist_corrupt": _counter(
        STORE, "persist_corrupt_total", "Persisted records that could not be decoded (skipped)"
    ),
}

# --- transports: one family per meaning, whichever transport counts it -----------------

_T_SENT = _counter(TRANSPORT, "sent_messages_total", "Messages sent (TCP: one per peer)")
_T_RECEIVED = _counter(TRANSPORT, "received_messages_total", "Messages received")
_T_SENT_BYTES = _counter(TRANSPORT, "sent_bytes_total", "Bytes sent")
_T_RECEIVED_BYTES = _counter(TRANSPORT, "received_bytes_total", "Bytes received")
_T_DROPPED = _counter(
    TRANSPORT,
    "dropped_messages_total",
    "Messages a subscription missed because its buffer was full",
)
_T_GAPS = _counter(
    TRANSPORT, "gaps_reported_total", "Times listeners were told messages may have been lost"
)
_T_RECONNECTS = _counter(TRANSPORT, "reconnects_total", "Connections re-established after a loss")
_T_CALLBACK_ERRORS = _counter(
    TRANSPORT,
    "callback_errors_total",
    "Callbacks (connection, error and gap listeners) that raised",
)
_T_CALLBACKS_DROPPED = _counter(
    TRANSPORT,
    "callbacks_dropped_total",
    "Callback calls not made because too many were waiting",
)


def _transport(name: str, help: str) -> Field:
    return _counter(TRANSPORT, name, help)


_MEMORY: dict[str, Field] = {
    "published": _T_SENT,
    "delivered": _transport(
        "delivered_messages_total", "Deliveries into subscription buffers (memory)"
    ),
    "dropped": _transport(
        "fault_dropped_messages_total", "Deliveries lost to the fault plan or a partition"
    ),
    "duplicated": _transport(
        "fault_duplicated_messages_total", "Extra deliveries made by the fault plan"
    ),
    "reordered": _transport(
        "fault_reordered_messages_total", "Deliveries held back by the fault plan"
    ),
    "delayed": _transport("fault_delayed_messages_total", "Deliveries postponed by the fault plan"),
    "overflowed": _T_DROPPED,
    "gaps_reported": _T_GAPS,
    "gap_listener_failures": _T_CALLBACK_ERRORS,
}

_TCP: dict[str, Field] = {
    "connections_opened": _transport(
        "connections_opened_total", "Peer connections that completed their handshake"
    ),
    "connections_closed": _transport(
        "connections_closed_total", "Handshaken peer connections that ended"
    ),
    "connections_pending": _gauge(
        TRANSPORT, "connections_pending", "Inbound connections still in their handshake"
    ),
    "connection_attempts_failed": _transport(
        "connection_attempts_failed_total", "Dials that could not connect"
    ),
    "reconnects": _T_RECONNECTS,
    "duplicates_closed": _transport(
        "duplicates_closed_total", "Losing sides of two nodes dialing each other"
    ),
    "auth_failures": _transport(
        "auth_failures_total", "Connections refused: wrong or missing secret, bad frame MAC"
    ),
    "frames_too_large": _transport(
        "frames_too_large_total", "Connections refused: a frame over max_frame_size"
    ),
    "protocol_errors": _transport(
        "protocol_errors_total", "Connections refused: garbage, truncated or unknown frames"
    ),
    "handshake_timeouts": _transport(
        "handshake_timeouts_total", "Connections refused: the handshake took too long"
    ),
    "tls_failures": _transport("tls_failures_total", "Connections refused: TLS failed"),
    "self_hellos": _transport(
        "self_hellos_total", "Handshakes carrying this node's own id from another process"
    ),
    "handshakes_dropped": _transport(
        "handshakes_dropped_total", "Pending handshakes closed to make room"
    ),
    "peers_stalled": _transport(
        "peers_stalled_total", "Peers dropped because their send queue stalled"
    ),
    "peers_silent": _transport(
        "peers_silent_total", "Peers dropped after three keepalive intervals of silence"
    ),
    "messages_sent": _T_SENT,
    "messages_filtered": _transport(
        "filtered_messages_total", "Messages not sent to a peer not subscribed to their topic"
    ),
    "messages_received": _T_RECEIVED,
    "messages_dropped": _T_DROPPED,
    "bytes_sent": _T_SENT_BYTES,
    "bytes_received": _T_RECEIVED_BYTES,
    "queued_bytes": _gauge(TRANSPORT, "queued_bytes", "Bytes waiting in every peer's send queue"),
    "queued_bytes_peak": _gauge(
        TRANSPORT, "queued_peak_bytes", "The most bytes one peer's send queue ever held"
    ),
    "queue_over_limit_seconds": _transport(
        "queue_over_limit_seconds_total", "Time send queues spent above send_queue"
    ),
    "callback_errors": _T_CALLBACK_ERRORS,
    "callbacks_dropped": _T_CALLBACKS_DROPPED,
    "gaps_reported": _T_GAPS,
}

_REDIS: dict[str, Field] = {
    "connected": _gauge(TRANSPORT, "connected", "1 while the pub/sub connection is up"),
    "channels": _gauge(TRANSPORT, "subscribed_channels", "Channels subscribed now"),
    "reconnects": _T_RECONNECTS,
    "gaps_reported": _T_GAPS,
    "messages_sent": _T_SENT,
    "bytes_sent": _T_SENT_BYTES,
    "publish_errors": _transport("publish_errors_total", "Publishes that failed"),
    "messages_received": _T_RECEIVED,
    "bytes_received": _T_RECEIVED_BYTES,
    "messages_dropped": _T_DROPPED,
    "callback_errors": _T_CALLBACK_ERRORS,
    "callbacks_dropped": _T_CALLBACKS_DROPPED,
    "auth": Field(None, nested=True),
}

_AUTH_REFUSED = Family(
    AUTH,
    "refused_messages_total",
    COUNTER,
    "Messages dropped by authentication, by reason",
    extra_label="reason",
)
_AUTH: dict[str, Field] = {
    "sealed": _counter(AUTH, "sealed_messages_total", "Messages sealed (published)"),
    "opened": _counter(AUTH, "opened_messages_total", "Messages that passed every check"),
    # The sum of the reasons below: sum(... by reason) gives it.
    "refused": Field(None),
    **{
        reason: Field(_AUTH_REFUSED, label_value=reason)
        for reason in (
            "truncated",
            "unknown_version",
            "unknown_key",
            "bad_tag",
            "too_old",
            "too_new",
            "replayed",
        )
    },
    "senders_evicted": _counter(
        AUTH, "senders_evicted_total", "Senders dropped early from a full replay table"
    ),
}

# --- callreply, discovery, Yjs ---------------------------------------------------------


def _callreply(name: str, help: str) -> Field:
    return _counter(CALLREPLY, f"{name}_total", help)


_ENDPOINT: dict[str, Field] = {
    "calls_remote": _callreply("calls_remote", "Calls sent to another node"),
    "calls_local": _callreply("calls_local", "Self-calls run in process"),
    "calls_failed": _callreply("calls_failed", "Calls (remote or local) that raised"),
    "requests_received": _callreply("requests_received", "Requests that reached this inbox"),
    "requests_busy": _callreply(
        "requests_busy", "Requests refused because max_concurrency handlers were running"
    ),
    "requests_unroutable": _callreply(
        "requests_unroutable", "Requests for a target or method this node does not have"
    ),
    "requests_duplicate": _callreply(
        "requests_duplicate", "Requests delivered again while their first copy ran"
    ),
    "handler_errors": _callreply("handler_errors", "Handlers that raised"),
    "replies_late": _callreply("replies_late", "Replies that arrived after their caller left"),
    "replies_failed": _callreply("replies_failed", "Replies that could not be published"),
    "decode_errors": _callreply("decode_errors", "Inbox messages that were not valid envelopes"),
    "cancels_sent": _callreply("cancels_sent", "Cancels sent because a caller here gave up"),
    "cancels_failed": _callreply("cancels_failed", "Cancels that could not be sent"),
    "cancels_applied": _callreply("cancels_applied", "Cancels that stopped a handler here"),
    "cancels_unmatched": _callreply(
        "cancels_unmatched", "Cancels naming no running call of their sender"
    ),
    "calls_abandoned": _callreply(
        "calls_abandoned", "Handlers stopped because their caller gave up"
    ),
    "reclaims_failed": _callreply("reclaims_failed", "Route re-claims that failed"),
    "calls_pending": _gauge(CALLREPLY, "calls_pending", "Remote calls waiting for a reply"),
    "handlers_active": _gauge(CALLREPLY, "handlers_active", "Handlers holding a concurrency slot"),
}

_DNS: dict[str, Field] = {
    "resolutions": _counter(DISCOVERY, "resolutions_total", "DNS lookups made"),
    "resolution_failures": _counter(
        DISCOVERY, "resolution_failures_total", "DNS lookups that failed"
    ),
    "addresses_refused": _counter(
        DISCOVERY, "addresses_refused_total", "Answer entries that were not usable addresses"
    ),
    "peers_added": _counter(DISCOVERY, "peers_added_total", "Peers added to the transport"),
    "peers_removed": _counter(DISCOVERY, "peers_removed_total", "Peers removed from the transport"),
    "callback_errors": _counter(DISCOVERY, "callback_errors_total", "on_error calls that raised"),
}


def _yjs(name: str, help: str) -> Field:
    return _counter(YJS, f"{name}_total", help)


_BRIDGE: dict[str, Field] = {
    "messages_sent": _yjs("sent_messages", "Messages published (fragments each count)"),
    "bytes_sent": _yjs("sent_bytes", "Bytes published"),
    "messages_received": _yjs("received_messages", "Messages received from peers"),
    "bytes_received": _yjs("received_bytes", "Bytes received from peers"),
    "updates_sent": _yjs("updates_sent", "Local edits sent"),
    "updates_applied": _yjs("updates_applied", "Peers' updates applied to the document"),
    "sync_requests_sent": _yjs("sync_requests_sent", "State vectors sent"),
    "sync_answers_sent": _yjs("sync_answers_sent", "Answers sent (what an asker lacked)"),
    "fragments_sent": _yjs("fragments_sent", "Messages sent as fragments"),
    "fragments_dropped": _yjs("fragments_dropped", "Incomplete fragmented messages given up"),
    "decode_errors": _yjs("decode_errors", "Malformed messages dropped"),
    "publish_failures": _yjs("publish_failures", "Publishes that failed"),
    "subscribe_failures": _yjs("subscribe_failures", "Failed subscribe attempts"),
    "resyncs": _yjs("resyncs", "Anti-entropy rounds started"),
    "gaps": _yjs("gaps_reported", "Gaps the transport reported"),
    "callback_errors": _yjs("callback_errors", "Document observers that raised"),
    "saves": _yjs("saves", "States saved to the persistence"),
    "save_failures": _yjs("save_failures", "Failed loads and saves"),
    "synced_by_timeout": _gauge(
        YJS, "synced_by_timeout", "1 when synced was set by sync_timeout, not by peers"
    ),
}

#: How each record's fields are exported, by the record class's qualified name.
FIELDS: Final[dict[str, dict[str, Field]]] = {
    "podshare.store.events.Stats": _STORE,
    "podshare.transport.memory.MemoryTransportStats": _MEMORY,
    "podshare.transport.tcp.TcpStats": _TCP,
    "podshare.transport.redis.RedisStats": _REDIS,
    "podshare.transport.auth.AuthStats": _AUTH,
    "podshare.callreply.endpoint.EndpointStats": _ENDPOINT,
    "podshare.transport.discovery.DNSStats": _DNS,
    "podshare.yjs.bridge.BridgeStats": _BRIDGE,
}


def families(categories: frozenset[str] | None = None) -> list[Family]:
    """Every family (of the given categories), each once, in a stable order."""
    seen: dict[str, Family] = {}
    for table in FIELDS.values():
        for spec in table.values():
            family = spec.family
            if family is None:
                continue
            key = f"{family.group.name}_{family.name}"
            other = seen.get(key)
            if other is not None:
                # Fields of one meaning share one Family object; two objects with one
                # name would be exported as two families with different help texts.
                assert other is family, f"two families named {key}"
                continue
            seen[key] = family
    return [f for f in seen.values() if categories is None or f.group.category in categories]


# --- components ----------------------------------------------------------------------------


def _none(_obj: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Kind:
    """A component class the exporters know: its category and how it names itself."""

    category: str
    ident: Callable[[Any], str]
    """The identifying label's default value (a store's name, a transport's kind...)."""
    node: Callable[[Any], str | None] = _none
    """The component's own node id, or ``None`` (the process's is used)."""
    inner: Callable[[Any], object] = _none
    """A component it wraps, exported with it (``Authenticated.inner``)."""


def _name(obj: Any) -> str:
    return str(obj.name)


def _node_id(obj: Any) -> str:
    return str(obj.node_id)


def _namespace(obj: Any) -> str:
    return str(obj.namespace)


def _inner(obj: Any) -> object:
    return obj.inner


def _wrapped_ident(obj: Any) -> str:
    kind = kind_of(obj.inner)
    return kind.ident(obj.inner) if kind is not None else "authenticated"


def _wrapped_node(obj: Any) -> str | None:
    kind = kind_of(obj.inner)
    return kind.node(obj.inner) if kind is not None else None


#: The component classes exporters accept, by qualified name (subclasses too).
KINDS: Final[dict[str, Kind]] = {
    "podshare.store.store.Store": Kind("store", _name, _node_id),
    "podshare.sync.SyncStore": Kind("store", _name, _node_id),
    "podshare.transport.memory.MemoryTransport": Kind("transport", lambda _: "memory"),
    "podshare.transport.tcp.TcpTransport": Kind("transport", lambda _: "tcp", _node_id),
    "podshare.transport.redis.RedisTransport": Kind("transport", lambda _: "redis"),
    "podshare.transport.auth.Authenticated": Kind(
        "transport", _wrapped_ident, _wrapped_node, _inner
    ),
    "podshare.callreply.endpoint.Endpoint": Kind("endpoint", _namespace, _node_id),
    "podshare.sync.SyncEndpoint": Kind("endpoint", _namespace, _node_id),
    "podshare.transport.discovery.DNSDiscoverer": Kind("discovery", lambda d: str(d.host)),
    "podshare.yjs.bridge.RoomBridge": Kind("bridge", lambda b: str(b.room), _node_id),
}


def _qualname(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def kind_of(obj: object) -> Kind | None:
    """The kind of ``obj`` (matching its class or a base class), or ``None``."""
    for cls in type(obj).__mro__:
        kind = KINDS.get(_qualname(cls))
        if kind is not None:
            return kind
    return None


def accepted(categories: frozenset[str]) -> str:
    """The class names of the given categories, for error messages."""
    names = [q.rsplit(".", 1)[1] for q, k in KINDS.items() if k.category in categories]
    return ", ".join(names)


def is_closed(obj: object) -> bool:
    """Whether ``obj`` is known to be closed (closed components are not exported)."""
    state = getattr(obj, "state", None)
    if isinstance(state, str):
        return state == "closed"
    closed = getattr(obj, "closed", None)
    if isinstance(closed, bool):
        return closed
    kind = kind_of(obj)
    if kind is not None:
        inner = kind.inner(obj)
        if inner is not None:
            return is_closed(inner)
    return False


@dataclass(frozen=True, slots=True)
class Sample:
    """One value read from one component."""

    family: Family
    labels: tuple[str, ...]
    """Values of ``family.label_names``."""
    value: float


@dataclass(frozen=True, slots=True)
class _Target:
    """One object to read ``stats()`` from, reached from an added component."""

    depth: int  # how many ``inner`` hops from the added component
    kind: Kind
    labels: tuple[str, str]  # (identifying label, node)


class _Entry:
    __slots__ = ("ref", "targets")

    def __init__(self, ref: weakref.ref[Any], targets: tuple[_Target, ...]) -> None:
        self.ref = ref
        self.targets = targets


def _follow(obj: object, depth: int) -> object:
    for _ in range(depth):
        kind = kind_of(obj)
        assert kind is not None
        obj = kind.inner(obj)
    return obj


class Components:
    """The components an exporter reads: held weakly, safe to use from several threads.

    Args:
        categories: which kinds of component ``add`` accepts.
        owner: the exporter's class name, for error messages.
        node_id: the ``node`` label of components without a node id of their own;
            default: the process's node id at the time each is added.
    """

    __slots__ = ("_categories", "_entries", "_lock", "_node_id", "_owner", "errors")

    def __init__(self, categories: frozenset[str], owner: str, node_id: str | None) -> None:
        if node_id is not None and (not isinstance(node_id, str) or not node_id):
            raise ConfigurationError(f"node_id must be a non-empty str or None, not {node_id!r}")
        self._categories = categories
        self._owner = owner
        self._node_id = node_id
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self.errors: dict[str, int] = dict.fromkeys(sorted(categories), 0)
        """``stats()`` calls that raised, by category (each is logged)."""

    def add(self, component: object, name: str | None = None) -> None:
        """Export ``component``; ``name`` replaces its identifying label's value.

        Raises:
            TypeError: ``component`` is nothing this exporter collects.
            ClosedError: ``component`` is closed.
            ConfigurationError: a bad ``name``, or another component already exported
                with the same labels.
        """
        kind = kind_of(component)
        if kind is None or kind.category not in self._categories:
            what = type(component).__name__
            raise TypeError(
                f"{self._owner} collects {accepted(self._categories)}; not {what}"
                + self._elsewhere(kind)
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty str or None, not {name!r}")
        if is_closed(component):
            raise ClosedError(f"{component!r} is closed: there is nothing left to export")
        targets = self._targets(component, kind, name)
        with self._lock:
            self._check_unique(component, targets)
            self._entries[id(component)] = _Entry(weakref.ref(component), targets)

    def remove(self, component: object) -> None:
        """Stop exporting ``component`` (nothing happens if it was not added)."""
        with self._lock:
            entry = self._entries.get(id(component))
            if entry is not None and entry.ref() is component:
                del self._entries[id(component)]

    def __len__(self) -> int:
        return sum(1 for _ in self._live())

    def read(self) -> list[Sample]:
        """Read every live component's ``stats()`` once; closed or collected ones are
        forgotten, and one whose ``stats()`` raises is logged, counted and skipped."""
        samples: list[Sample] = []
        read: set[int] = set()
        keep: list[object] = []  # strong references while reading, so ids stay unique
        pending: list[tuple[int, object, _Target]] = []
        for obj, entry in self._live():
            keep.append(obj)
            for target in entry.targets:
                pending.append((target.depth, obj, target))
        # Components added directly come first: a wrapper's inner transport that was also
        # added on its own is read once, with the labels it was added with.
        pending.sort(key=lambda item: item[0])
        for _, obj, target in pending:
            source = _follow(obj, target.depth)
            if id(source) in read:
                continue
            read.add(id(source))
            keep.append(source)
            try:
                record = source.stats()  # type: ignore[attr-defined]
            except ClosedError:
                continue  # closed since, or not open yet (a RoomBridge): nothing to report
            except Exception:  # noqa: BLE001  # one bad component must not break the scrape
                category = target.kind.category
                with self._lock:
                    self.errors[category] = self.errors.get(category, 0) + 1
                _log.warning("reading %r's stats() failed; skipped", source, exc_info=True)
                continue
            _samples(record, target.labels, samples)
        return samples

    # --- internals -------------------------------------------------------------------

    def _elsewhere(self, kind: Kind | None) -> str:
        if kind is None:
            return ""
        return f" ({_ARTICLE[kind.category]}: PodshareCollector collects every kind)"

    def _targets(self, component: object, kind: Kind, name: str | None) -> tuple[_Target, ...]:
        default_node = self._node_id or default_node_id()
        targets: list[_Target] = []
        depth = 0
        obj: object = component
        while True:
            node = kind.node(obj) or default_node
            targets.append(_Target(depth, kind, (name or kind.ident(obj), node)))
            inner = kind.inner(obj)
            inner_kind = kind_of(inner) if inner is not None else None
            if inner_kind is None:
                return tuple(targets)
            obj, kind, depth = inner, inner_kind, depth + 1

    def _live(self) -> Iterator[tuple[object, _Entry]]:
        with self._lock:
            entries = list(self._entries.items())
        dead = []
        for key, entry in entries:
            obj = entry.ref()
            if obj is None or is_closed(obj):
                dead.append((key, entry))
                continue
            yield obj, entry
        if dead:
            with self._lock:
                for key, entry in dead:
                    if self._entries.get(key) is entry:
                        del self._entries[key]

    def _check_unique(self, component: object, targets: tuple[_Target, ...]) -> None:
        # Called with the lock held. Two objects of one kind with the same labels would
        # export the same series twice; a wrapper and what it wraps are different kinds.
        taken: dict[tuple[Kind, tuple[str, str]], object] = {}
        for key, entry in self._entries.items():
            obj = entry.ref()
            if obj is None or key == id(component):
                continue
            for target in entry.targets:
                taken.setdefault((target.kind, target.labels), _follow(obj, target.depth))
        for target in targets:
            other = taken.get((target.kind, target.labels))
            if other is not None and other is not _follow(component, target.depth):
                ident, node = target.labels
                raise ConfigurationError(
                    f"{other!r} is already exported as {target.kind.category} {ident!r} on "
                    f"node {node!r}; pass name=... to add() to tell the two apart"
                )

    def error_counts(self) -> dict[str, int]:
        """A copy of `errors`."""
        with self._lock:
            return dict(self.errors)


_unknown_fields: set[tuple[str, str]] = set()


def _samples(record: object, labels: tuple[str, str], out: list[Sample]) -> None:
    # A frozen snapshot's class has the record class's module and qualified name.
    name = _qualname(type(record))
    table = FIELDS.get(name)
    if table is None or not dataclasses.is_dataclass(record):
        if (name, "") not in _unknown_fields:
            _unknown_fields.add((name, ""))
            _log.warning("no metrics schema for %s; it is not exported", name)
        return
    for f in dataclasses.fields(record):
        spec = table.get(f.name)
        if spec is None:
            # A field added to a record without a row above (tests catch it): skipped.
            if (name, f.name) not in _unknown_fields:
                _unknown_fields.add((name, f.name))
                _log.warning("%s.%s has no metric; it is not exported", name, f.name)
            continue
        value = getattr(record, f.name)
        if spec.nested:
            if value is not None:
                _samples(value, labels, out)
        elif spec.family is not None:
            values = labels if spec.label_value is None else (*labels, spec.label_value)
            out.append(Sample(spec.family, values, float(value)))
