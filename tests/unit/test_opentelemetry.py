"""The OpenTelemetry bridge: observable instruments reading ``stats()``, with the SDK."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, NumberDataPoint, Sum

from podshare import Stats, Store
from podshare.contrib._metrics import families
from podshare.contrib.opentelemetry import PodshareInstruments, instrument_name
from podshare.exceptions import ConfigurationError
from podshare.transport import MemoryTransport

Points = dict[tuple[str, frozenset[tuple[str, Any]]], tuple[float, str, Any]]


def collect(reader: InMemoryMetricReader) -> Points:
    """``(name, attributes) -> (value, unit, data)`` of one collection."""
    points: Points = {}
    data = reader.get_metrics_data()
    if data is None:  # no instrument observed anything
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint)
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    assert key not in points
                    points[key] = (point.value, metric.unit or "", metric.data)
    return points


def setup(**options: Any) -> tuple[InMemoryMetricReader, PodshareInstruments]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    return reader, PodshareInstruments(meter_provider=provider, **options)


@pytest.mark.anyio
async def test_an_open_store_is_observed_with_its_counters_and_gauges() -> None:
    reader, instruments = setup(attributes={"service": "checkout"})
    async with (
        MemoryTransport() as tr,
        Store[int]("counts", tr, node_id="pod-1", hydrate_timeout=0) as store,
    ):
        instruments.add(store)
        await store.set("a", 1)
        await store.set("b", 2)
        points = collect(reader)
        stats = store.stats()
    attrs = frozenset({"store": "counts", "node": "pod-1", "service": "checkout"}.items())
    keys, unit, data = points[("podshare.store.keys", attrs)]
    assert (keys, unit, type(data)) == (2, "", Gauge)
    writes, _, data = points[("podshare.store.writes_local", attrs)]
    assert writes == 2
    assert isinstance(data, Sum)
    assert data.is_monotonic
    sent, unit, _ = points[("podshare.store.sent", attrs)]
    assert (sent, unit) == (stats.bytes_sent, "By")
    hydration, unit, _ = points[("podshare.store.hydration", attrs)]
    assert (hydration, unit) == (stats.hydration_seconds, "s")


@pytest.mark.anyio
async def test_a_closed_store_is_no_longer_observed() -> None:
    reader, instruments = setup()
    async with MemoryTransport() as tr:
        async with Store[int]("gone", tr, node_id="n", hydrate_timeout=0) as store:
            instruments.add(store)
            assert any(dict(a).get("store") == "gone" for _, a in collect(reader))
        assert not any(dict(a).get("store") == "gone" for _, a in collect(reader))


def test_each_collection_reads_each_component_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reader, instruments = setup()
    store = Store[int]("s", MemoryTransport(), node_id="n")
    calls = []

    def stats(_self: object) -> Stats:
        calls.append(1)
        return Stats(keys=len(calls))

    monkeypatch.setattr(type(store), "stats", stats)
    instruments.add(store)
    attrs = frozenset({"store": "s", "node": "n"}.items())
    assert collect(reader)[("podshare.store.keys", attrs)][0] == 1
    assert collect(reader)[("podshare.store.keys", attrs)][0] == 2
    assert len(calls) == 2


def test_instrument_names_keep_the_unit_out_of_the_name() -> None:
    names = dict(instrument_name(f) for f in families())
    assert names["podshare.store.sent"] == "By"
    assert names["podshare.transport.queue_over_limit"] == "s"
    assert names["podshare.callreply.calls_remote"] == ""
    assert all(not n.endswith(("_total", "_bytes", "_seconds")) for n in names)
    assert len(names) == len(families())


def test_what_it_refuses() -> None:
    _, instruments = setup()
    with pytest.raises(TypeError, match="PodshareInstruments collects Store"):
        instruments.add(object())
    with pytest.raises(ConfigurationError, match="node"):
        setup(attributes={"node": "x"})
    with pytest.raises(ConfigurationError, match="must be a str"):
        setup(attributes={"env": 3})
    with pytest.raises(ConfigurationError, match="namespace"):
        setup(namespace="a.b")
