"""The Prometheus collector over real transports: a TCP mesh on loopback, a real Redis."""

from __future__ import annotations

import secrets

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from podshare import Store
from podshare.contrib.prometheus import PodshareCollector, TransportCollector
from podshare.transport import TcpTransport
from podshare.transport.redis import RedisTransport
from tests._support import RedisServer, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

SECRET = "a secret of at least sixteen bytes"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_tcp_mesh_exports_connections_and_traffic_per_node() -> None:
    registry = CollectorRegistry()
    collector = TransportCollector(registry=registry)
    async with (
        TcpTransport(node_id="tcp-0") as a,
        TcpTransport(node_id="tcp-1", peers=[a.address]) as b,
    ):
        collector.add(a)
        collector.add(b)
        with anyio.fail_after(15):
            await a.wait_connected(1)
            await b.wait_connected(1)
        async with (
            Store[int]("m", a, node_id="tcp-0", hydrate_timeout=2) as sa,
            Store[int]("m", b, node_id="tcp-1", hydrate_timeout=2) as sb,
        ):
            await sa.set("k", 1)
            await eventually(lambda: sb.get("k") == 1, stores=[sb])
            samples = scrape(registry)
            for transport in (a, b):
                labels = {"transport": "tcp", "node": transport.node_id}
                stats = transport.stats()
                opened = value(samples, "podshare_transport_connections_opened_total", **labels)
                assert opened == stats.connections_opened >= 1
                sent = value(samples, "podshare_transport_sent_bytes_total", **labels)
                assert sent > 0
                assert value(samples, "podshare_transport_queued_bytes", **labels) >= 0
    # Both transports closed: only the (constant-labelled) scrape error counters remain.
    assert {name for name, _ in scrape(registry)} == {
        "podshare_transport_scrape_errors_total",
        "podshare_discovery_scrape_errors_total",
    }


# redis-py is asyncio-only: the Redis test runs under asyncio alone.
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_redis_transport_exports_its_connection_traffic_and_authentication(
    redis_server: RedisServer,
) -> None:
    registry = CollectorRegistry()
    collector = PodshareCollector(registry=registry, node_id="pod-1")
    prefix = f"test-{secrets.token_hex(4)}"
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, secret=SECRET) as tr,
        Store[int]("flags", tr, node_id="pod-1", hydrate_timeout=1) as store,
    ):
        collector.add(tr)
        collector.add(store)
        await store.set("on", 1)
        samples = scrape(registry)
        labels = {"transport": "redis", "node": "pod-1"}
        stats = tr.stats()
        assert stats.auth is not None
        assert value(samples, "podshare_transport_connected", **labels) == 1
        sent = value(samples, "podshare_transport_sent_messages_total", **labels)
        assert sent == stats.messages_sent >= 1
        sealed = value(samples, "podshare_auth_sealed_messages_total", **labels)
        assert sealed == stats.auth.sealed >= 1
        refused = value(samples, "podshare_auth_refused_messages_total", **labels, reason="bad_tag")
        assert refused == 0
        assert value(samples, "podshare_store_keys", store="flags", node="pod-1") == 1
    assert not [name for name, lbl in scrape(registry) if ("transport", "redis") in lbl]
