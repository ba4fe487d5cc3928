"""Readiness over real sockets: a store opened right after its transport holds its peers' keys.

The issue 12 reproduction: a store opened right after its ``TcpTransport`` (with
``peers=[...]``, and in the Kubernetes setup with ``DNSDiscoverer(...).attach(tr)``)
against a live node holding keys came up empty with ``synced=True`` in most runs. Each
test opens the joiner several times in a row, so a race shows.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.transport import DNSDiscoverer, RedisTransport, TcpTransport
from tests._support import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

DATA = {"flag:a": True, "flag:b": False}
ROUNDS = 5


async def test_a_store_opened_right_after_its_tcp_transport_holds_the_peers_keys() -> None:
    async with (
        TcpTransport(node_id="live") as ta,
        Store[Any]("app", ta, node_id="live") as live,
    ):
        await live.set_many(DATA)
        for i in range(ROUNDS):
            async with (
                TcpTransport(node_id=f"joiner-{i}", peers=[ta.address]) as tb,
                Store[Any]("app", tb, node_id=f"joiner-{i}") as joiner,
            ):
                assert joiner.synced
                assert joiner.snapshot() == DATA


async def test_a_store_opened_right_after_dns_attach_holds_the_peers_keys() -> None:
    async with (
        TcpTransport(node_id="live") as ta,
        Store[Any]("app", ta, node_id="live") as live,
    ):
        await live.set_many(DATA)
        host, port = ta.address.rsplit(":", 1)

        async def resolve(_name: str, _port: int) -> list[str]:
            return [host]

        for i in range(ROUNDS):
            async with (
                TcpTransport(node_id=f"pod-{i}") as tb,
                DNSDiscoverer("svc.cluster.local", int(port), resolver=resolve).attach(tb),
                Store[Any]("app", tb, node_id=f"pod-{i}") as joiner,
            ):
                assert joiner.synced
                assert joiner.snapshot() == DATA


async def test_an_unreachable_configured_peer_does_not_make_an_empty_store_wait() -> None:
    # A peer that cannot be dialled counts as failed after one attempt: the store alone
    # is synced, not held back until hydrate_timeout.
    async with TcpTransport(node_id="gone") as probe:
        address = probe.address
    async with (
        TcpTransport(node_id="alone", peers=[address], reconnect_backoff=(1.0, 5.0)) as tr,
        Store[Any]("app", tr, node_id="alone", hydrate_timeout=30.0) as store,
    ):
        with anyio.fail_after(20):
            await store.wait_synced()
        assert store.synced


class TestRedis:
    """redis-py is asyncio-only: these run under asyncio."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.url = redis_server.url
        self.prefix = f"ready-{secrets.token_hex(4)}"

    async def test_a_store_opened_right_after_its_redis_transport_holds_the_peers_keys(
        self,
    ) -> None:
        async with (
            RedisTransport(self.url, channel_prefix=self.prefix) as ta,
            Store[Any]("app", ta, node_id="live", persistence=False) as live,
        ):
            await live.set_many(DATA)
            for i in range(ROUNDS):
                async with (
                    RedisTransport(self.url, channel_prefix=self.prefix) as tb,
                    Store[Any]("app", tb, node_id=f"joiner-{i}", persistence=False) as joiner,
                ):
                    assert joiner.synced
                    assert joiner.snapshot() == DATA

    async def test_alone_on_redis_a_store_is_synced_by_the_evidence(self) -> None:
        async with (
            RedisTransport(self.url, channel_prefix=self.prefix) as tr,
            Store[Any]("alone", tr, hydrate_timeout=30.0, persistence=False) as store,
        ):
            # PUBSUB NUMSUB counted nobody else: no wait for the 30 s bound.
            assert store.synced
            assert store.stats().hydration_seconds < 30.0
