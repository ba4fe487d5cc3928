"""Export podshare's ``stats()`` to Prometheus (extra ``prometheus``).

One collector reads every component you add to it at each scrape:

```python
from podshare.contrib.prometheus import PodshareCollector

collector = PodshareCollector(const_labels={"service": "checkout"})
async with RedisTransport(url) as tr, Store("flags", tr) as store, Endpoint(tr) as ep:
    collector.add(tr)
    collector.add(store)
    collector.add(ep)
```

It accepts stores ([`Store`][podshare.Store] and `podshare.sync`'s `SyncStore`),
transports (`MemoryTransport`, `TcpTransport`, `RedisTransport`, and `Authenticated`,
which exports its wrapped transport too), callreply endpoints (`Endpoint`,
`SyncEndpoint`), `DNSDiscoverer` and the Yjs `RoomBridge`. `add()` raises `TypeError`
for anything else, so a scrape never meets an object it cannot read.
[`StoreCollector`][podshare.contrib.prometheus.StoreCollector],
[`TransportCollector`][podshare.contrib.prometheus.TransportCollector] and
[`EndpointCollector`][podshare.contrib.prometheus.EndpointCollector] are the same
collector restricted to one kind (their `add()` refuses the others).

**Names** follow Prometheus conventions: `podshare_<group>_<name>`, the unit last
(`podshare_store_sent_bytes_total`, `podshare_store_hydration_seconds`), counters
ending in `_total` and gauges not. Groups: `store`, `transport`, `auth` (message
authentication of a transport), `callreply`, `discovery` and `yjs`. Where the Go
library has a metric of the same meaning, its name is used
(`podshare_store_writes_rejected_total`, `podshare_store_tombstones_gced_total`);
`docs/operations.md` has the full table and what has no equivalent.

**Labels**: every sample carries the label naming its component (`store` = the store's
name, `transport` = `memory`/`tcp`/`redis`, `endpoint` = the endpoint's namespace,
`host` = the discoverer's DNS name, `room` = the Yjs room) and `node`: the component's
node id, or for components without one (transports other than TCP, discoverers) the
collector's `node_id=`, by default the process's node id. Node ids are
`PODSHARE_NODE_ID`, else host name and process id: set `PODSHARE_NODE_ID` (to the pod
name, say) and `node` stays the same across restarts. `const_labels` are added to every
sample. `add(component, name=...)` replaces the component's own label value, to tell
apart two components that would otherwise export the same series (two Redis
transports in one process); `add()` refuses such a duplicate.

**Lifetime**: components are held weakly. One that is garbage-collected or closed
disappears from the next scrape (its series end, which `rate()` handles); the collector
keeps no last values, so a closed component reports nothing.

A `stats()` call that raises during a scrape is logged (logger `podshare.metrics`),
counted in `podshare_<group>_scrape_errors_total`, and skipped: the rest of the scrape
goes on. Scrapes read `stats()`, a cheap synchronous snapshot; nothing is recorded
between scrapes, and reads (`store.get`) are not counted at all (see
`docs/operations.md`).

Example:
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> registry = CollectorRegistry()
    >>> collector = PodshareCollector(registry=registry, const_labels={"env": "test"})
    >>> collector.add(object())
    Traceback (most recent call last):
    ...
    TypeError: PodshareCollector collects Store, SyncStore, MemoryTransport, ...; not object
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar, Final

from podshare.contrib._metrics import (
    CATEGORIES,
    COUNTER,
    RESERVED_LABELS,
    Components,
    Family,
    families,
)
from podshare.exceptions import ConfigurationError

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

__all__ = ["EndpointCollector", "PodshareCollector", "StoreCollector", "TransportCollector"]

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_ERROR_HELP: Final = "stats() calls that raised during a scrape (each is logged and skipped)"


class PodshareCollector(Collector):
    """A Prometheus collector for any number of podshare components (see the module docs).

    Args:
        components: components to export from the start (as with
            [`add()`][podshare.contrib.prometheus.PodshareCollector.add]).
        registry: where to register; `prometheus_client.REGISTRY` by default, or
            `None` to leave registration to the caller.
        namespace: the metric-name prefix.
        const_labels: labels added to every sample (`{"service": "checkout"}`); their
            names may not be ones the collector uses itself (`store`, `transport`,
            `endpoint`, `host`, `room`, `node`, `reason`).
        node_id: the `node` label of components that have no node id of their own;
            default: the process's node id when each is added.

    Raises:
        ConfigurationError: a bad namespace, constant label or node id.
    """

    categories: ClassVar[frozenset[str]] = frozenset(CATEGORIES)
    """The kinds of component this collector accepts."""

    def __init__(
        self,
        components: Iterable[object] = (),
        *,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "podshare",
        const_labels: Mapping[str, str] | None = None,
        node_id: str | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise ConfigurationError(
                f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        self._namespace = namespace
        self._const = _check_const_labels(const_labels)
        self._components = Components(self.categories, type(self).__name__, node_id)
        self._families = families(self.categories)
        for component in components:
            self.add(component)
        if registry is not None:
            registry.register(self)

    def add(self, component: object, *, name: str | None = None) -> None:
        """Export `component` from the next scrape on (held weakly; adding it again
        only replaces its `name`).

        Args:
            component: a store, transport, endpoint, discoverer or room bridge (those
                this collector's kind accepts).
            name: the value of the component's own label (`store`, `transport`...)
                instead of its name or kind.

        Raises:
            TypeError: this collector does not collect that kind of object.
            ClosedError: `component` is already closed.
            ConfigurationError: another component already exports the same labels.
        """
        self._components.add(component, name)

    def remove(self, component: object) -> None:
        """Stop exporting `component` (nothing happens if it was not added)."""
        self._components.remove(component)

    def describe(self) -> list[Metric]:
        """The metric families this collector can produce (without samples)."""
        return [*(self._family(f) for f in self._families), *self._error_families().values()]

    def collect(self) -> Iterator[Metric]:
        """Read every live component's `stats()` and yield the families with samples."""
        const = tuple(self._const.values())
        out: dict[Family, CounterMetricFamily | GaugeMetricFamily] = {}
        for sample in self._components.read():
            family = out.get(sample.family)
            if family is None:
                family = out[sample.family] = self._family(sample.family)
            family.add_metric([*sample.labels, *const], sample.value)
        yield from out.values()
        errors = self._error_families()
        for category, count in self._components.error_counts().items():
            errors[category].add_metric(list(const), float(count))
        yield from errors.values()

    def _family(self, family: Family) -> CounterMetricFamily | GaugeMetricFamily:
        name = family.full_name(self._namespace)
        labels = [*family.label_names, *self._const]
        cls = CounterMetricFamily if family.type == COUNTER else GaugeMetricFamily
        return cls(name, family.help, labels=labels, unit=family.unit)

    def _error_families(self) -> dict[str, CounterMetricFamily]:
        return {
            category: CounterMetricFamily(
                f"{self._namespace}_{CATEGORIES[category][0].name}_scrape_errors_total",
                _ERROR_HELP,
                labels=list(self._const),
            )
            for category in sorted(self.categories)
        }


class StoreCollector(PodshareCollector):
    """A [`PodshareCollector`][podshare.contrib.prometheus.PodshareCollector] for stores
    only (`Store`, `SyncStore`): `podshare_store_*`."""

    categories = frozenset({"store"})


class TransportCollector(PodshareCollector):
    """A [`PodshareCollector`][podshare.contrib.prometheus.PodshareCollector] for
    transports (`MemoryTransport`, `TcpTransport`, `RedisTransport`, `Authenticated`)
    and `DNSDiscoverer`: `podshare_transport_*`, `podshare_auth_*`,
    `podshare_discovery_*`."""

    categories = frozenset({"transport", "discovery"})


class EndpointCollector(PodshareCollector):
    """A [`PodshareCollector`][podshare.contrib.prometheus.PodshareCollector] for callreply
    endpoints only (`Endpoint`, `SyncEndpoint`): `podshare_callreply_*`."""

    categories = frozenset({"endpoint"})


def _check_const_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ConfigurationError(f"const_labels must be a mapping, not {labels!r}")
    checked: dict[str, str] = {}
    for name, value in labels.items():
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith("__"):
            raise ConfigurationError(
                f"const_labels: {name!r} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, "
                "not starting with __)"
            )
        if name in RESERVED_LABELS:
            raise ConfigurationError(
                f"const_labels: {name!r} is a label the collector sets itself "
                f"({', '.join(sorted(RESERVED_LABELS))})"
            )
        if not isinstance(value, str):
            raise ConfigurationError(f"const_labels: the value of {name!r} must be a str")
        checked[name] = value
    return checked
