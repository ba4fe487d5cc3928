"""The Prometheus collector exports every Stats field with store and node labels."""

from __future__ import annotations

import dataclasses
import gc

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from podshare.contrib.prometheus import GAUGES, StoreCollector
from podshare.exceptions import ConfigurationError
from podshare.store.events import Stats


class FakeStore:
    def __init__(self, name: str, node_id: str, stats: Stats) -> None:
        self.name = name
        self.node_id = node_id
        self._stats = stats

    def stats(self) -> Stats:
        return self._stats


def scrape(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    samples: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[(sample.name, sample.labels["store"], sample.labels["node"])] = sample.value
    return samples


def test_every_stats_field_is_exported_with_labels() -> None:
    values = {f.name: float(i + 1) for i, f in enumerate(dataclasses.fields(Stats))}
    stats = Stats(**{k: (v if k == "hydration_seconds" else int(v)) for k, v in values.items()})  # type: ignore[arg-type]
    registry = CollectorRegistry()
    store = FakeStore("flags", "pod-1", stats)
    StoreCollector([store], registry=registry)

    samples = scrape(registry)
    for name, value in values.items():
        metric = f"podshare_{name}" if name in GAUGES else f"podshare_{name}_total"
        assert samples[(metric, "flags", "pod-1")] == value, name


def test_several_stores_and_removal() -> None:
    registry = CollectorRegistry()
    a = FakeStore("a", "n1", Stats(keys=3))
    b = FakeStore("b", "n2", Stats(keys=5))
    collector = StoreCollector([a, b], registry=registry)
    samples = scrape(registry)
    assert samples[("podshare_keys", "a", "n1")] == 3
    assert samples[("podshare_keys", "b", "n2")] == 5

    collector.remove(a)
    samples = scrape(registry)
    assert ("podshare_keys", "a", "n1") not in samples
    assert samples[("podshare_keys", "b", "n2")] == 5


def test_stores_are_held_weakly() -> None:
    registry = CollectorRegistry()
    collector = StoreCollector(registry=registry)
    collector.add(FakeStore("gone", "n", Stats(keys=1)))
    gc.collect()
    assert not any(store == "gone" for (_, store, _) in scrape(registry))


def test_bad_namespace_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        StoreCollector(registry=None, namespace="bad-name!")


@pytest.mark.anyio
async def test_a_real_store_is_scraped_with_its_live_counters() -> None:
    from podshare import Store
    from podshare.transport import MemoryTransport

    registry = CollectorRegistry()
    collector = StoreCollector(registry=registry)
    async with MemoryTransport() as tr, Store[int]("counts", tr, node_id="pod-1") as store:
        collector.add(store)
        await store.set("a", 1)
        await store.set("b", 2)
        await store.delete("a")
        samples = scrape(registry)
        assert samples[("podshare_keys", "counts", "pod-1")] == 1
        assert samples[("podshare_tombstones", "counts", "pod-1")] == 1
        assert samples[("podshare_writes_local_total", "counts", "pod-1")] == 3
        assert samples[("podshare_messages_sent_total", "counts", "pod-1")] >= 1
