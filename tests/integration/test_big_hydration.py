"""A late joiner of a 20k x 1 KB store holds every key on entry, without losing a connection.

Over Redis with its default configuration (the pub/sub output-buffer limit, 32 MB hard,
8 MB for 60 s, that a burst of sync answers would overflow) and over TCP (whose per-peer
send queue a burst would overflow, dropping the joiner as stalled). The timing targets
live in ``benchmarks/bench_hydrate.py``; this test asserts only completeness and that no
connection was lost.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from podshare import Store
from podshare.transport import RedisTransport, TcpTransport
from tests._support import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

KEYS = 20_000
VALUE_CHARS = 998  # a JSON string of 998 characters encodes to 1000 bytes
BATCH = 1000
TIMEOUT = 30  # the joiner's hydrate_timeout and the bound on each step
# Redis's compiled-in default for pub/sub clients: hard 32 MB, soft 8 MB for 60 s.
DEFAULT_PUBSUB_LIMIT = "pubsub 33554432 8388608 60"


def batches() -> list[dict[str, str]]:
    """The seed's keys, ``BATCH`` at a time, each value distinct (nothing compresses)."""
    return [
        {
            f"k{i:06d}": (f"{i:06d}" + secrets.token_hex(VALUE_CHARS // 2))[:VALUE_CHARS]
            for i in range(start, min(KEYS, start + BATCH))
        }
        for start in range(0, KEYS, BATCH)
    ]


async def seed(store: Store[str]) -> dict[str, str]:
    written: dict[str, str] = {}
    for batch in batches():
        await store.set_many(batch)
        written.update(batch)
    assert len(store) == KEYS
    return written


def assert_holds_everything(joiner: Store[str], written: dict[str, Any]) -> None:
    assert joiner.synced
    assert len(joiner) == KEYS
    assert joiner.snapshot() == written


# redis-py is asyncio-only: the Redis test runs under asyncio alone (TCP under both).
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_redis_joiner_hydrates_20k_x_1kb_with_default_output_buffer_limits(
    restartable_redis: RedisServer,
) -> None:
    admin = aioredis.Redis.from_url(restartable_redis.url, decode_responses=True)
    try:
        config = await admin.config_get("client-output-buffer-limit")
    finally:
        await admin.aclose()
    assert DEFAULT_PUBSUB_LIMIT in str(config["client-output-buffer-limit"])

    prefix = f"test-hydrate-{secrets.token_hex(4)}"
    url = restartable_redis.url
    with anyio.fail_after(3 * TIMEOUT):
        async with (
            RedisTransport(url, channel_prefix=prefix) as seed_tr,
            Store[str]("big", seed_tr, persistence=False, hydrate_timeout=1.0) as seeder,
        ):
            written = await seed(seeder)
            async with (
                RedisTransport(url, channel_prefix=prefix) as join_tr,
                Store[str]("big", join_tr, persistence=False, hydrate_timeout=TIMEOUT) as joiner,
            ):
                assert_holds_everything(joiner, written)
                for stats in (seed_tr.stats(), join_tr.stats()):
                    assert (stats.reconnects, stats.gaps_reported, stats.messages_dropped) == (
                        0,
                        0,
                        0,
                    )
                assert join_tr.stats().bytes_received >= KEYS * (VALUE_CHARS + 2)


async def test_tcp_joiner_hydrates_20k_x_1kb_without_a_stalled_peer() -> None:
    with anyio.fail_after(3 * TIMEOUT):
        async with (
            TcpTransport(node_id="seed") as seed_tr,
            Store[str]("big", seed_tr, hydrate_timeout=1.0) as seeder,
        ):
            written = await seed(seeder)
            async with (
                TcpTransport(peers=[seed_tr.address], node_id="joiner") as join_tr,
                Store[str]("big", join_tr, hydrate_timeout=TIMEOUT) as joiner,
            ):
                assert_holds_everything(joiner, written)
                for stats in (seed_tr.stats(), join_tr.stats()):
                    assert stats.peers_stalled == 0
                    assert stats.peers_silent == 0
                    assert stats.reconnects == 0
                    assert stats.messages_dropped == 0
                    assert stats.connections_closed == 0
                assert join_tr.stats().bytes_received >= KEYS * (VALUE_CHARS + 2)
