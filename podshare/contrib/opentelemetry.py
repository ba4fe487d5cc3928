"""Export podshare's ``stats()`` as OpenTelemetry metrics (extra ``opentelemetry``).

[`PodshareInstruments`][podshare.contrib.opentelemetry.PodshareInstruments] registers one
*observable* instrument per metric family on a meter, and each reads the components you
added, at collection time, from their ``stats()``. It accepts the same components as
[`PodshareCollector`][podshare.contrib.prometheus.PodshareCollector], with the same
families, labels (as attributes), weak references and closed-component rule; the two
share one schema.

Why this bridge exists, and why it is small: podshare's counters already live in
``stats()`` records, and the OpenTelemetry API's observable counters and gauges are
exactly "call me back at collection time" instruments, so nothing is recorded on
podshare's hot paths and nothing is duplicated. It needs only ``opentelemetry-api``
(pure Python, its one dependency `typing-extensions`, maintained by the CNCF project
with the rest of OpenTelemetry); without an SDK configured the API is a no-op and the
callbacks never run. Your application brings the SDK and its exporters (OTLP,
Prometheus...) as it would for any other library.

Names: ``podshare.<group>.<name>`` with the unit as the instrument's unit (``By``,
``s``) rather than in the name, and no ``_total``: OpenTelemetry's Prometheus exporter
turns ``podshare.store.sent`` (unit ``By``, a counter) back into
``podshare_store_sent_bytes_total``, the name the Prometheus collector uses.

Each collection reads every component's ``stats()`` once: the first instrument called
reads them all and the others use that reading, until an instrument is called a
second time, which starts the next reading.

Example:
    ```python
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from podshare.contrib.opentelemetry import PodshareInstruments

    reader = InMemoryMetricReader()
    instruments = PodshareInstruments(meter_provider=MeterProvider(metric_readers=[reader]))
    instruments.add(store)          # any open store, transport, endpoint...
    data = reader.get_metrics_data()
    ```
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping

from podshare._version import __version__
from podshare.contrib._metrics import (
    CATEGORIES,
    COUNTER,
    RESERVED_LABELS,
    Components,
    Family,
    Sample,
    families,
)
from podshare.exceptions import ConfigurationError

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        MeterProvider,
        Observation,
        get_meter,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "podshare.contrib.opentelemetry needs opentelemetry-api: "
        "pip install 'podshare[opentelemetry]'"
    ) from exc

__all__ = ["PodshareInstruments", "instrument_name"]

_UNITS = {"bytes": "By", "seconds": "s", "": ""}
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


def instrument_name(family: Family, namespace: str = "podshare") -> tuple[str, str]:
    """The OpenTelemetry instrument name and unit of a family.

    Example:
        >>> from podshare.contrib._metrics import families
        >>> names = dict(instrument_name(f) for f in families())
        >>> names["podshare.store.sent"], names["podshare.store.keys"]
        ('By', '')
    """
    base = family.name.removesuffix("_total")
    if family.unit:
        base = base.removesuffix(f"_{family.unit}")
    return f"{namespace}.{family.group.name}.{base}", _UNITS[family.unit]


class PodshareInstruments:
    """Observable OpenTelemetry instruments over podshare components (see the module docs).

    Create one per meter provider, at start-up; instruments cannot be unregistered, so
    it lives as long as the provider (the components it reads are held weakly).

    Args:
        components: components to export from the start (as with
            [`add()`][podshare.contrib.opentelemetry.PodshareInstruments.add]).
        meter_provider: where to create the meter; the global provider by default.
        namespace: the first part of every instrument name.
        attributes: attributes added to every observation (`{"service": "checkout"}`);
            their names may not be ones the instruments use themselves.
        node_id: the `node` attribute of components without a node id of their own;
            default: the process's node id when each is added.

    Raises:
        ConfigurationError: a bad namespace, attribute or node id.
    """

    def __init__(
        self,
        components: Iterable[object] = (),
        *,
        meter_provider: MeterProvider | None = None,
        namespace: str = "podshare",
        attributes: Mapping[str, str] | None = None,
        node_id: str | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise ConfigurationError(
                f"namespace must match [a-zA-Z_][a-zA-Z0-9_]*, got {namespace!r}"
            )
        self._attributes = _check_attributes(attributes)
        self._components = Components(frozenset(CATEGORIES), type(self).__name__, node_id)
        self._lock = threading.Lock()
        self._reading: dict[Family, list[Sample]] = {}
        self._served: set[Family] = set()
        self._started = False
        meter = get_meter("podshare", __version__, meter_provider=meter_provider)
        for family in families():
            name, unit = instrument_name(family, namespace)
            create = (
                meter.create_observable_counter
                if family.type == COUNTER
                else meter.create_observable_gauge
            )
            create(name, callbacks=[self._callback(family)], unit=unit, description=family.help)
        for component in components:
            self.add(component)

    def add(self, component: object, *, name: str | None = None) -> None:
        """Observe `component` from the next collection on (held weakly).

        Args:
            component: a store, transport, endpoint, discoverer or room bridge.
            name: the value of the component's own attribute (`store`, `transport`...)
                instead of its name or kind.

        Raises:
            TypeError: not a component podshare can export.
            ClosedError: `component` is already closed.
            ConfigurationError: another component already exports the same attributes.
        """
        self._components.add(component, name)

    def remove(self, component: object) -> None:
        """Stop observing `component` (nothing happens if it was not added)."""
        self._components.remove(component)

    def _callback(self, family: Family) -> Callable[[CallbackOptions], Iterable[Observation]]:
        names = family.label_names

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(
                    s.value, {**dict(zip(names, s.labels, strict=True)), **self._attributes}
                )
                for s in self._samples(family)
            ]

        return observe

    def _samples(self, family: Family) -> list[Sample]:
        with self._lock:
            if family in self._served or not self._started:
                # This family was already served from the current reading: a new
                # collection has begun, so read every component again.
                self._started = True
                reading: dict[Family, list[Sample]] = {}
                for sample in self._components.read():
                    reading.setdefault(sample.family, []).append(sample)
                self._reading, self._served = reading, set()
            self._served.add(family)
            return self._reading.get(family, [])


def _check_attributes(attributes: Mapping[str, str] | None) -> dict[str, str]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ConfigurationError(f"attributes must be a mapping, not {attributes!r}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or key in RESERVED_LABELS:
            raise ConfigurationError(
                f"attributes: {key!r} is empty or an attribute the instruments set "
                f"themselves ({', '.join(sorted(RESERVED_LABELS))})"
            )
        if not isinstance(value, str):
            raise ConfigurationError(f"attributes: the value of {key!r} must be a str")
    return dict(attributes)
