"""The Prometheus collector: what it accepts, the names and labels it exports, lifetimes.

Every test scrapes a real ``prometheus_client`` registry with ``generate_latest`` and
parses the text with prometheus_client's own parser.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pycrdt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from podshare import Stats, Store
from podshare.callreply import Endpoint, EndpointStats
from podshare.contrib._metrics import FIELDS, KINDS, families
from podshare.contrib.prometheus import (
    EndpointCollector,
    PodshareCollector,
    StoreCollector,
    TransportCollector,
)
from podshare.exceptions import ClosedError, ConfigurationError
from podshare.sync import open_store
from podshare.transport import (
    Authenticated,
    AuthStats,
    DNSDiscoverer,
    DNSStats,
    MemoryNetwork,
    MemoryTransport,
    MemoryTransportStats,
    TcpStats,
    TcpTransport,
)
from podshare.transport.auth import Refusal
from podshare.transport.redis import RedisStats, RedisTransport
from podshare.yjs.bridge import BridgeStats, RoomBridge
from tests._support import eventually

SECRET = b"a secret of at least sixteen bytes"
DOCS = Path(__file__).resolve().parents[2] / "docs"
RECORDS = [Stats, MemoryTransportStats, TcpStats, RedisStats, AuthStats, EndpointStats]
RECORDS += [DNSStats, BridgeStats]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a scrape: ``(name, labels) -> value``."""
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, **labels: str) -> set[str]:
    """The names of the samples carrying (at least) ``labels``."""
    wanted = set(labels.items())
    return {name for name, lbls in samples if wanted <= lbls}


# --- what add() accepts ------------------------------------------------------------------


def test_store_collector_refuses_an_endpoint_so_scrapes_keep_working() -> None:
    # The issue: StoreCollector.add(endpoint) was accepted, then every scrape raised
    # AttributeError ('Endpoint' object has no attribute 'name') and /metrics broke.
    registry = CollectorRegistry()
    collector = StoreCollector(registry=registry)
    endpoint = Endpoint(MemoryTransport(), node_id="pod-1")
    with pytest.raises(TypeError, match=r"StoreCollector collects Store, SyncStore; not Endpoint"):
        collector.add(endpoint)
    assert value(scrape(registry), "podshare_store_scrape_errors_total") == 0


@pytest.mark.parametrize(
    ("collector", "component", "accepts"),
    [
        (PodshareCollector, lambda: object(), "Store, SyncStore, MemoryTransport"),
        (PodshareCollector, lambda: {"a": 1}, "RoomBridge; not dict"),
        (PodshareCollector, lambda: Stats(), "; not Stats"),
        (StoreCollector, lambda: MemoryTransport(), "Store, SyncStore; not MemoryTransport"),
        (TransportCollector, lambda: Store("s", MemoryTransport()), "DNSDiscoverer; not Store"),
        (EndpointCollector, lambda: MemoryTransport(), "Endpoint, SyncEndpoint; not Memory"),
    ],
)
def test_add_raises_type_error_naming_what_it_accepts(
    collector: type[PodshareCollector], component: Callable[[], object], accepts: str
) -> None:
    c = collector(registry=None)
    with pytest.raises(TypeError, match=re.escape(accepts)):
        c.add(component())
    with pytest.raises(TypeError):
        collector([component()], registry=None)


def test_a_kind_of_the_wrong_collector_points_to_podshare_collector() -> None:
    with pytest.raises(TypeError, match="a transport: PodshareCollector collects every kind"):
        StoreCollector(registry=None).add(MemoryTransport())


def test_a_closed_component_is_refused() -> None:
    async def main() -> MemoryTransport:
        async with MemoryTransport() as tr:
            return tr

    closed = anyio.run(main)
    with pytest.raises(ClosedError):
        PodshareCollector(registry=None).add(closed)


# --- the schema ----------------------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_field_of_every_stats_record_has_a_metric(record: type[Any]) -> None:
    # A field added to a record without a row in the schema would not be exported.
    table = FIELDS[f"{record.__module__}.{record.__qualname__}"]
    assert set(table) == {f.name for f in dataclasses.fields(record)}


def test_every_component_class_is_importable_under_the_schema_name() -> None:
    import importlib

    for qualname in KINDS:
        module, name = qualname.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), type), qualname


def test_names_follow_prometheus_conventions() -> None:
    for family in families():
        name = family.full_name("podshare")
        assert re.fullmatch(r"podshare_[a-z]+_[a-z][a-z_]*[a-z]", name), name
        assert name.endswith("_total") == (family.type == "counter"), name
        tokens = name.removesuffix("_total").split("_")
        for unit in ("bytes", "seconds"):
            # The unit is last: sent_bytes_total, never bytes_sent_total.
            assert unit not in tokens[:-1], name
        assert family.unit == (tokens[-1] if tokens[-1] in ("bytes", "seconds") else "")


# The Go library's twelve metrics (its prom package), and podshare's name for each.
GO_NAMES = {
    "podshare_writes_local_total": "podshare_store_writes_local_total",
    "podshare_writes_applied_total": "podshare_store_writes_applied_total",
    "podshare_writes_rejected_total": "podshare_store_writes_rejected_total",
    "podshare_reads_total": None,
    "podshare_events_dispatched_total": "podshare_store_events_dispatched_total",
    "podshare_watchers_active": "podshare_store_watchers_active",
    "podshare_watchers_dropped_total": "podshare_store_watchers_dropped_total",
    "podshare_snapshots_total": None,
    "podshare_snapshot_bytes": None,
    "podshare_keys": "podshare_store_keys",
    "podshare_tombstones": "podshare_store_tombstones",
    "podshare_tombstones_gced_total": "podshare_store_tombstones_gced_total",
}


def test_go_library_names_map_onto_store_families() -> None:
    names = {f.full_name("podshare"): f for f in families(frozenset({"store"}))}
    for go, ours in GO_NAMES.items():
        if ours is None:
            assert not any(n.endswith(go.removeprefix("podshare")) for n in names), go
        else:
            assert ours == go.replace("podshare_", "podshare_store_", 1)
            assert ours in names, go
            assert names[ours].type == ("counter" if go.endswith("_total") else "gauge")


def test_the_operations_page_lists_every_go_name() -> None:
    page = (DOCS / "operations.md").read_text()
    for go, ours in GO_NAMES.items():
        assert f"| `{go}` |" in page, go
        if ours is not None:
            assert f"| `{go}` | `{ours}` |" in page, ours


def test_the_metrics_reference_lists_every_family_once() -> None:
    page = (DOCS / "metrics.md").read_text()
    listed = re.findall(r"^\| `(podshare_[a-z_]+)` \| (counter|gauge) \|", page, re.M)
    assert sorted(listed) == sorted((f.full_name("podshare"), f.type) for f in families())


# --- every field, its exact value --------------------------------------------------------


def filled(record: type[Any]) -> Any:
    """An instance of ``record`` whose every field holds a different non-zero value."""
    values: dict[str, Any] = {}
    for i, f in enumerate(dataclasses.fields(record), start=1):
        if f.type in ("bool", bool):
            values[f.name] = True
        elif f.type in ("float", float):
            values[f.name] = i + 0.5
        elif "AuthStats" in str(f.type):
            values[f.name] = filled(AuthStats)
        else:
            values[f.name] = i
    made = record(**values)
    return made.snapshot() if hasattr(made, "snapshot") else made


def expected_samples(
    record: Any, labels: dict[str, str]
) -> Iterator[tuple[str, dict[str, str], float]]:
    table = FIELDS[f"{type(record).__module__}.{type(record).__qualname__}"]
    for f in dataclasses.fields(record):
        spec, raw = table[f.name], getattr(record, f.name)
        if spec.nested:
            yield from expected_samples(raw, labels)
        elif spec.family is not None:
            lbls = dict(labels)
            if spec.family.extra_label:
                lbls[spec.family.extra_label] = spec.label_value or ""
            yield spec.family.full_name("podshare"), lbls, float(raw)


COMPONENTS: list[tuple[type[Any], Callable[[], Any], dict[str, str]]] = [
    (Stats, lambda: Store[int]("flags", MemoryTransport(), node_id="pod-1"),
     {"store": "flags", "node": "pod-1"}),
    (MemoryTransportStats, lambda: MemoryTransport(), {"transport": "memory", "node": "proc-9"}),
    (TcpStats, lambda: TcpTransport(node_id="pod-2"), {"transport": "tcp", "node": "pod-2"}),
    (RedisStats, lambda: RedisTransport("redis://127.0.0.1:1/0"),
     {"transport": "redis", "node": "proc-9"}),
    (EndpointStats, lambda: Endpoint(MemoryTransport(), node_id="pod-3", namespace="ws"),
     {"endpoint": "ws", "node": "pod-3"}),
    (DNSStats, lambda: DNSDiscoverer("mesh.svc", 7000), {"host": "mesh.svc", "node": "proc-9"}),
    (BridgeStats, lambda: RoomBridge(pycrdt.Doc(), MemoryTransport(), "room-1", node_id="pod-4"),
     {"room": "room-1", "node": "pod-4"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("record_type", "make", "labels"), COMPONENTS, ids=[c[0].__name__ for c in COMPONENTS]
)
def test_every_field_is_exported_with_its_value_and_labels(
    record_type: type[Any],
    make: Callable[[], Any],
    labels: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    component = make()
    record = filled(record_type)
    monkeypatch.setattr(type(component), "stats", lambda _self: record)
    registry = CollectorRegistry()
    PodshareCollector([component], registry=registry, node_id="proc-9", const_labels={"env": "t"})

    samples = scrape(registry)
    expected = list(expected_samples(record, labels))
    assert len(expected) >= len(dataclasses.fields(record)) - 2
    for name, lbls, v in expected:
        assert value(samples, name, **lbls, env="t") == v, name
    exported = {k for k in samples if "_scrape_errors_" not in k[0]}
    assert len(exported) == len(expected)


def test_authenticated_exports_its_counters_by_reason_and_its_inner_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inner = RedisTransport("redis://127.0.0.1:1/0")
    wrapped = Authenticated(inner, secret=SECRET)
    auth = filled(AuthStats)
    monkeypatch.setattr(Authenticated, "stats", lambda _self: auth)
    registry = CollectorRegistry()
    collector = PodshareCollector([wrapped], registry=registry, node_id="n")
    samples = scrape(registry)
    redis = {"transport": "redis", "node": "n"}
    assert value(samples, "podshare_auth_sealed_messages_total", **redis) == auth.sealed
    assert value(samples, "podshare_auth_refused_messages_total", **redis, reason="bad_tag") == (
        auth.bad_tag
    )
    by_reason = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "podshare_auth_refused_messages_total"
    }
    assert by_reason == {r.value: getattr(auth, r.value) for r in Refusal}
    assert value(samples, "podshare_transport_connected", **redis) == 0

    # The inner transport added as well is read once, not exported twice.
    collector.add(inner)
    assert scrape(registry).keys() == samples.keys()


# --- real components ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_real_store_and_transport_are_scraped_with_live_counters() -> None:
    registry = CollectorRegistry()
    collector = PodshareCollector(
        registry=registry, const_labels={"service": "checkout"}, node_id="pod-1"
    )
    async with (
        MemoryTransport() as tr,
        Store[int]("counts", tr, node_id="pod-1", hydrate_timeout=0) as store,
    ):
        collector.add(store)
        collector.add(tr)
        await store.set("a", 1)
        await store.set("b", 2)
        await store.delete("a")
        samples = scrape(registry)
        labels = {"store": "counts", "node": "pod-1", "service": "checkout"}
        stats = store.stats()
        assert value(samples, "podshare_store_keys", **labels) == 1
        assert value(samples, "podshare_store_tombstones", **labels) == 1
        assert value(samples, "podshare_store_writes_local_total", **labels) == 3
        assert value(samples, "podshare_store_sent_bytes_total", **labels) == stats.bytes_sent > 0
        assert value(samples, "podshare_store_sent_messages_total", **labels) == (
            stats.messages_sent
        )
        published = tr.stats().published
        assert published > 0
        t_labels = {"transport": "memory", "service": "checkout"}
        sent = value(samples, "podshare_transport_sent_messages_total", **t_labels, node="pod-1")
        assert sent == published


@pytest.mark.anyio
async def test_an_endpoint_is_scraped_with_its_calls() -> None:
    registry = CollectorRegistry()
    collector = EndpointCollector(registry=registry)
    network = MemoryNetwork()

    async def echo(payload: bytes) -> bytes:
        return payload

    async with (
        MemoryTransport(network=network) as t1,
        MemoryTransport(network=network) as t2,
        Endpoint(t1, node_id="pod-1", route_options={"hydrate_timeout": 0}) as caller,
        Endpoint(t2, node_id="pod-2", route_options={"hydrate_timeout": 0}) as owner,
    ):
        collector.add(caller)
        collector.add(owner)
        await owner.register("user:1", "echo", echo)
        await eventually(lambda: caller.owner("user:1") is not None)
        assert await caller.call("user:1", "echo", b"hi") == b"hi"
        samples = scrape(registry)
        on_1 = {"endpoint": "default", "node": "pod-1"}
        on_2 = {"endpoint": "default", "node": "pod-2"}
        assert value(samples, "podshare_callreply_calls_remote_total", **on_1) == 1
        assert value(samples, "podshare_callreply_requests_received_total", **on_2) == 1
        assert value(samples, "podshare_callreply_calls_pending", **on_1) == 0
        assert value(samples, "podshare_callreply_handlers_active", **on_2) == 0


@pytest.mark.anyio
async def test_a_closed_component_disappears_from_the_scrape() -> None:
    registry = CollectorRegistry()
    collector = PodshareCollector(registry=registry)
    async with MemoryTransport() as tr:
        async with Store[int]("gone", tr, node_id="pod-1", hydrate_timeout=0) as store:
            collector.add(store)
            collector.add(tr)
            assert series(scrape(registry), store="gone")
        # Closed: nothing is reported for it (no last values are kept).
        samples = scrape(registry)
        assert not series(samples, store="gone")
        assert series(samples, transport="memory")
    assert not series(scrape(registry), transport="memory")
    assert len(collector._components) == 0


def test_a_garbage_collected_component_disappears_from_the_scrape() -> None:
    registry = CollectorRegistry()
    collector = PodshareCollector(registry=registry)
    collector.add(Store[int]("temporary", MemoryTransport(), node_id="n"))
    gc.collect()
    assert not series(scrape(registry), store="temporary")


def test_remove_stops_exporting() -> None:
    registry = CollectorRegistry()
    a, b = Store[int]("a", MemoryTransport(), node_id="n"), Store[int]("b", MemoryTransport())
    collector = StoreCollector([a, b], registry=registry)
    collector.remove(a)
    collector.remove(a)  # not an error
    collector.remove(object())
    samples = scrape(registry)
    assert not series(samples, store="a")
    assert series(samples, store="b")


@pytest.mark.anyio
async def test_a_room_bridge_is_exported_while_open_only() -> None:
    registry = CollectorRegistry()
    collector = PodshareCollector(registry=registry)
    async with MemoryTransport() as tr:
        bridge = RoomBridge(pycrdt.Doc(), tr, "room-1", node_id="pod-1", sync_timeout=0.01)
        collector.add(bridge)  # not open yet: its stats() raises ClosedError, so nothing
        assert not series(scrape(registry), room="room-1")
        async with bridge:
            await eventually(lambda: bridge.stats().messages_sent > 0)  # its hello
            samples = scrape(registry)
            labels = {"room": "room-1", "node": "pod-1"}
            timed_out = bridge.stats().synced_by_timeout
            assert value(samples, "podshare_yjs_synced_by_timeout", **labels) == timed_out
            sent = bridge.stats().messages_sent
            assert value(samples, "podshare_yjs_sent_messages_total", **labels) == sent > 0
        samples = scrape(registry)
        assert not series(samples, room="room-1")
        assert value(samples, "podshare_yjs_scrape_errors_total") == 0


@pytest.mark.anyio
async def test_a_dns_discoverer_is_scraped() -> None:
    async def resolver(_host: str, _port: int) -> list[str]:
        return ["10.0.0.7"]

    registry = CollectorRegistry()
    discoverer = DNSDiscoverer("mesh.svc", 7000, resolver=resolver)
    TransportCollector([discoverer], registry=registry, node_id="pod-1")
    async with TcpTransport(node_id="pod-1") as tr:
        await discoverer.reconcile(tr)
        samples = scrape(registry)
    labels = {"host": "mesh.svc", "node": "pod-1"}
    assert value(samples, "podshare_discovery_resolutions_total", **labels) == 1
    assert value(samples, "podshare_discovery_peers_added_total", **labels) == 1


def test_a_sync_store_is_exported_until_closed() -> None:
    registry = CollectorRegistry()
    collector = StoreCollector(registry=registry)
    with open_store(
        "blocking", MemoryTransport, type=int, node_id="pod-1", hydrate_timeout=0
    ) as store:
        collector.add(store)
        store.set("a", 1)
        assert value(scrape(registry), "podshare_store_keys", store="blocking", node="pod-1") == 1
    assert not series(scrape(registry), store="blocking")


@pytest.mark.anyio
async def test_a_scrape_from_another_thread_reads_open_stores() -> None:
    # prometheus_client's start_http_server scrapes from its own thread.
    registry = CollectorRegistry()
    collector = StoreCollector(registry=registry)
    async with MemoryTransport() as tr, Store[int]("t", tr, node_id="n", hydrate_timeout=0) as s:
        collector.add(s)
        await s.set_many({f"k{i}": i for i in range(10)})
        text = await anyio.to_thread.run_sync(generate_latest, registry)
    assert 'podshare_store_keys{node="n",store="t"} 10.0' in text.decode()


# --- labels --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_node_label_is_stable_with_a_stable_node_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PODSHARE_NODE_ID", "checkout-7f9c")
    nodes = set()
    for _restart in range(2):  # two lives of the "same pod": a new store, collector, id
        registry = CollectorRegistry()
        collector = PodshareCollector(registry=registry)
        async with MemoryTransport() as tr, Store[int]("flags", tr, hydrate_timeout=0) as s:
            collector.add(s)
            collector.add(tr)
            samples = scrape(registry)
        nodes |= {v for _, labels in samples for k, v in labels if k == "node"}
    assert nodes == {"checkout-7f9c"}


def test_node_id_labels_components_without_their_own() -> None:
    registry = CollectorRegistry()
    components = [MemoryTransport(), Store[int]("s", MemoryTransport(), node_id="own")]
    PodshareCollector(components, registry=registry, node_id="pod-1")
    samples = scrape(registry)
    assert series(samples, transport="memory", node="pod-1")
    assert series(samples, store="s", node="own")


def test_two_components_with_the_same_labels_need_a_name() -> None:
    registry = CollectorRegistry()
    collector = TransportCollector(registry=registry, node_id="n")
    first, second = MemoryTransport(), MemoryTransport()
    collector.add(first)
    with pytest.raises(ConfigurationError, match=r"already exported as transport 'memory'.*name="):
        collector.add(second)
    collector.add(second, name="memory-b")
    collector.add(first)  # adding again is not a duplicate
    samples = scrape(registry)
    assert series(samples, transport="memory")
    assert series(samples, transport="memory-b")


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"node": "x"}, "a label the collector sets itself"),
        ({"store": "x"}, "a label the collector sets itself"),
        ({"bad-name": "x"}, "is not a label name"),
        ({"__reserved": "x"}, "is not a label name"),
        ({"env": 1}, "must be a str"),
    ],
)
def test_bad_const_labels_are_configuration_errors(labels: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        PodshareCollector(registry=None, const_labels=labels)


@pytest.mark.parametrize("namespace", ["", "bad-name!", "9lives", None])
def test_bad_namespace_is_a_configuration_error(namespace: Any) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        PodshareCollector(registry=None, namespace=namespace)


def test_namespace_prefixes_every_family() -> None:
    registry = CollectorRegistry()
    PodshareCollector([MemoryTransport()], registry=registry, namespace="app")
    assert all(name.startswith("app_") for name, _ in scrape(registry))


def test_bad_name_and_node_id_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="node_id"):
        PodshareCollector(registry=None, node_id="")
    with pytest.raises(ConfigurationError, match="name"):
        PodshareCollector(registry=None).add(MemoryTransport(), name="")


# --- registries and failures -------------------------------------------------------------


def test_kind_collectors_share_a_registry_and_describe_what_they_collect() -> None:
    registry = CollectorRegistry()
    stores = StoreCollector(registry=registry)
    transports = TransportCollector(registry=registry)
    EndpointCollector(registry=registry)
    assert {m.name for m in stores.describe()} >= {"podshare_store_keys"}
    assert not any(m.name.startswith("podshare_store") for m in transports.describe())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PodshareCollector(registry=registry)  # collects stores too


def test_a_failing_stats_is_counted_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    good, bad = MemoryTransport(), Store[int]("bad", MemoryTransport(), node_id="n")

    def broken(_self: object) -> Stats:
        raise RuntimeError("boom")

    monkeypatch.setattr(type(bad), "stats", broken)
    PodshareCollector([good, bad], registry=registry)
    with caplog.at_level(logging.WARNING, logger="podshare.metrics"):
        samples = scrape(registry)
        samples = scrape(registry)
    assert series(samples, transport="memory")
    assert value(samples, "podshare_store_scrape_errors_total") == 2
    assert value(samples, "podshare_transport_scrape_errors_total") == 0
    assert "boom" in caplog.text
