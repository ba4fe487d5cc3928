"""Export every store's ``stats()`` to Prometheus (extra ``prometheus``).

Example:
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from podshare.contrib.prometheus import StoreCollector
    >>> registry = CollectorRegistry()
    >>> collector = StoreCollector(registry=registry)
    >>> # collector.add(store) once the store is open; it is read at every scrape.
    >>> b"podshare_" in generate_latest(registry) or True
    True

Each :class:`~podshare.store.events.Stats` field becomes one metric family named
``podshare_<field>`` (counters end in ``_total`` as Prometheus expects), labelled with
``store`` (the store's name) and ``node`` (its node id). Gauges (``keys``,
``tombstones``, ``watchers_active``, ``members``, ``hydration_seconds``) are exported
as gauges. Scrapes read ``stats()``, which is a cheap, synchronous snapshot; nothing is
recorded between scrapes.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from podshare.exceptions import ConfigurationError
from podshare.store.events import Stats

try:
    from prometheus_client.core import (
        REGISTRY,
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "podshare.contrib.prometheus needs prometheus_client: pip install 'podshare[prometheus]'"
    ) from exc

__all__ = ["GAUGES", "StatsSource", "StoreCollector"]

#: Stats fields exported as gauges; every other field is a counter.
GAUGES = frozenset({"watchers_active", "keys", "tombstones", "members", "hydration_seconds"})

_HELP: dict[str, str] = {
    "writes_local": "Writes made by this replica",
    "writes_applied": "Remote writes that changed this replica",
    "writes_stale": "Remote writes ignored as older than local state",
    "events_dispatched": "Events delivered to watchers",
    "watchers_active": "Watchers currently open",
    "watchers_dropped": "Watchers ended because their buffer was full",
    "keys": "Live keys",
    "tombstones": "Deleted keys still remembered",
    "tombstones_compacted": "Tombstones forgotten after tombstone_ttl",
    "messages_sent": "Messages published",
    "messages_received": "Messages received",
    "bytes_sent": "Bytes published",
    "bytes_received": "Bytes received",
    "decode_errors": "Messages or values rejected as undecodable",
    "clock_skew_reports": "Stamps further ahead than max_clock_skew",
    "refreshes": "Completed refreshes (digest exchanges)",
    "hydration_seconds": "Time the initial hydration took",
    "peers_seen": "Distinct other nodes heard from",
    "members": "Nodes currently alive, this one included",
    "ephemeral_expired": "Ephemeral entries removed because their writer went down",
}


class StatsSource(Protocol):
    """Anything with a ``name``, a ``node_id`` and a ``stats()`` returning ``Stats``."""

    @property
    def name(self) -> str:
        """The store's name."""
        ...

    @property
    def node_id(self) -> str:
        """This replica's node id."""
        ...

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        ...


class StoreCollector(Collector):
    """A Prometheus collector for any number of podshare stores.

    Stores are held weakly: a store that is garbage-collected disappears from the
    scrape. Use :meth:`add` after opening a store and :meth:`remove` (optional) after
    closing it.

    Args:
        stores: stores to export from the start.
        registry: where to register; ``prometheus_client.REGISTRY`` by default, or
            ``None`` to leave registration to the caller.
        namespace: the metric-name prefix.
    """

    def __init__(
        self,
        stores: Iterable[StatsSource] = (),
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "podshare",
    ) -> None:
        if not namespace or not namespace.replace("_", "").isalnum():
            raise ConfigurationError(
                f"namespace must be a non-empty [A-Za-z0-9_] string, got {namespace!r}"
            )
        self._namespace = namespace
        self._stores: weakref.WeakSet[Any] = weakref.WeakSet()
        for store in stores:
            self.add(store)
        if registry is not None:
            registry.register(self)

    def add(self, store: StatsSource) -> None:
        """Export ``store`` from the next scrape on."""
        self._stores.add(store)

    def remove(self, store: StatsSource) -> None:
        """Stop exporting ``store`` (no error if it was not added)."""
        self._stores.discard(store)

    def describe(self) -> list[Metric]:
        """The metric families this collector produces (without samples)."""
        return [family for _, family in self._families()]

    def collect(self) -> Iterator[Metric]:
        """Read every store's ``stats()`` and yield one family per field."""
        families = dict(self._families())
        for store in list(self._stores):
            stats = store.stats()
            labels = [store.name, store.node_id]
            for field in dataclasses.fields(stats):
                family = families[field.name]
                value = float(getattr(stats, field.name))
                family.add_metric(labels, value)
        yield from families.values()

    def _families(self) -> Iterator[tuple[str, CounterMetricFamily | GaugeMetricFamily]]:
        for field in dataclasses.fields(Stats):
            name = f"{self._namespace}_{field.name}"
            doc = _HELP.get(field.name, field.name.replace("_", " "))
            family: CounterMetricFamily | GaugeMetricFamily
            if field.name in GAUGES:
                family = GaugeMetricFamily(name, doc, labels=["store", "node"])
            else:
                family = CounterMetricFamily(name, doc, labels=["store", "node"])
            yield field.name, family
