"""Stores replicating through a real Redis: convergence, late joiners, failover, bad input."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from podshare import Store
from podshare.crdt import GSet, PNCounter
from podshare.exceptions import TransportError
from podshare.transport import RedisTransport
from tests._support import ErrorLog, Notifier, RedisServer, eventually

pytestmark = pytest.mark.integration

TIMEOUT = 20
# Fast to open (an empty cluster waits out hydrate_timeout) and quick to notice peers.
STORE_OPTIONS: dict[str, Any] = {"hydrate_timeout": 1.0}


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so Redis-backed stores run under asyncio alone."""
    return "asyncio"


@asynccontextmanager
async def cluster(
    url: str, count: int, name: str, **options: Any
) -> AsyncIterator[tuple[list[RedisTransport], list[Store[Any]]]]:
    """``count`` pods, each with its own RedisTransport (own connections) and Store."""
    prefix = f"test-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(
                RedisTransport(url, channel_prefix=prefix, reconnect_backoff=(0.01, 0.2))
            )
            for _ in range(count)
        ]
        stores: list[Store[Any]] = [
            await stack.enter_async_context(
                Store(name, tr, node_id=f"pod-{i}", **{**STORE_OPTIONS, **options})
            )
            for i, tr in enumerate(transports)
        ]
        yield transports, stores


def same_everywhere(stores: Sequence[Store[Any]], expected: dict[str, Any]) -> Callable[[], bool]:
    return lambda: all(store.snapshot() == expected for store in stores)


@pytest.mark.anyio
async def test_lww_set_and_delete_converge_across_pods(redis_server: RedisServer) -> None:
    async with cluster(redis_server.url, 3, "lww") as (_, stores):
        a, b, c = stores
        await a.set("x", {"rate": 1})
        await b.set("y", [1, 2, 3])
        await c.set_many({"z": "zed", "gone": True})
        await eventually(
            same_everywhere(stores, {"x": {"rate": 1}, "y": [1, 2, 3], "z": "zed", "gone": True}),
            stores=stores,
            timeout=TIMEOUT,
        )
        await b.delete("gone")
        await c.set("x", {"rate": 2})  # a later write of the same key wins everywhere
        await eventually(
            same_everywhere(stores, {"x": {"rate": 2}, "y": [1, 2, 3], "z": "zed"}),
            stores=stores,
            timeout=TIMEOUT,
        )


@pytest.mark.anyio
async def test_merge_writes_converge_and_late_joiner_hydrates(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(RedisTransport(redis_server.url, channel_prefix=prefix))
            for _ in range(4)
        ]
        tags = [
            await stack.enter_async_context(
                Store[GSet[str]]("tags", tr, node_id=f"pod-{i}", **STORE_OPTIONS)
            )
            for i, tr in enumerate(transports[:3])
        ]
        hits = [
            await stack.enter_async_context(
                Store[PNCounter]("hits", tr, node_id=f"pod-{i}", **STORE_OPTIONS)
            )
            for i, tr in enumerate(transports[:3])
        ]
        # Concurrent merge writes of one key from every pod: no write is lost.
        async with anyio.create_task_group() as tg:
            for i, store in enumerate(tags):
                tg.start_soon(store.set, "k", GSet([f"t{i}", "common"]))
            for counter in hits:
                for _ in range(5):
                    tg.start_soon(counter.update, "n", lambda c, s=counter: c.increment(s.node_id))
        expected_tags = GSet(["t0", "t1", "t2", "common"])
        await eventually(
            lambda: (
                all(s.get("k") == expected_tags for s in tags)
                and all(s.get("n", PNCounter()).value == 15 for s in hits)
            ),
            stores=[*tags, *hits],
            timeout=TIMEOUT,
        )
        await tags[0].delete("k")
        await tags[1].set("k", GSet(["after-delete"]))
        await eventually(
            lambda: (
                len({repr(s.snapshot()) for s in tags}) == 1
                and "t0" not in tags[2].get("k", GSet())
            ),
            stores=tags,
            timeout=TIMEOUT,
        )
        # A pod that joins late hydrates everything from its peers.
        late_tags = await stack.enter_async_context(
            Store[GSet[str]]("tags", transports[3], node_id="late", **STORE_OPTIONS)
        )
        late_hits = await stack.enter_async_context(
            Store[PNCounter]("hits", transports[3], node_id="late", **STORE_OPTIONS)
        )
        await late_tags.wait_synced()
        await late_hits.wait_synced()
        await eventually(
            lambda: (
                late_tags.snapshot() == tags[0].snapshot()
                and late_hits.get("n", PNCounter()).value == 15
            ),
            stores=[late_tags, late_hits],
            timeout=TIMEOUT,
        )


@pytest.mark.anyio
async def test_failover_loses_no_write(restartable_redis: RedisServer) -> None:
    """Kill Redis three times while two pods write; every write reaches every pod."""
    kills = 3
    async with (
        # Each pod refreshes when its own transport reconnects, but the first pods back may
        # ask peers that are not resubscribed yet; periodic anti-entropy repairs that tail.
        cluster(restartable_redis.url, 3, "failover", anti_entropy_interval=1.0) as (
            transports,
            stores,
        ),
    ):
        writers = stores[:2]
        written: dict[str, int] = {}
        ok = [0, 0]
        failed = [0, 0]  # during the current outage
        failed_total = [0, 0]
        progress = Notifier()
        outage_over = anyio.Event()
        outage_over.set()
        done = False

        async def write(index: int, store: Store[Any]) -> None:
            i = 0
            while not done:
                key = f"{store.node_id}-{i}"
                written[key] = i
                i += 1
                try:
                    await store.set(key, i - 1)
                except TransportError:
                    # The write stands locally and must still reach the others.
                    failed[index] += 1
                    failed_total[index] += 1
                    progress.notify()
                    if failed[index] >= 3:
                        await outage_over.wait()  # enough writes during this outage
                    # Pace the retries while this pod's transport is still reconnecting.
                    await anyio.sleep(0.01)
                else:
                    ok[index] += 1
                    progress.notify()
                await anyio.lowlevel.checkpoint()

        async def more_successes(count: int) -> None:
            target = [n + count for n in ok]
            await eventually(
                lambda: all(o >= t for o, t in zip(ok, target, strict=True)),
                wake=[progress],
                timeout=TIMEOUT,
            )

        async with anyio.create_task_group() as tg:
            for index, store in enumerate(writers):
                tg.start_soon(write, index, store)
            for _ in range(kills):
                await more_successes(20)
                failed[:] = [0, 0]
                outage_over = anyio.Event()
                restartable_redis.kill()
                await eventually(
                    lambda: all(f >= 3 for f in failed), wake=[progress], timeout=TIMEOUT
                )
                restartable_redis.start()
                outage_over.set()
            await more_successes(20)  # keep writing after the last recovery, then stop
            done = True
        assert all(f >= 3 * kills for f in failed_total)
        await eventually(same_everywhere(stores, written), stores=stores, timeout=TIMEOUT)
        for transport in transports:
            stats = transport.stats()
            # A pod still backing off from one outage may sleep through the next one.
            assert 1 <= stats.reconnects <= kills
            assert stats.gaps_reported >= stats.reconnects


@pytest.mark.anyio
async def test_garbage_and_oversized_payloads_are_counted_and_skipped(
    redis_server: RedisServer,
) -> None:
    errors = ErrorLog()
    prefix = f"test-{secrets.token_hex(4)}"
    raw = aioredis.Redis.from_url(redis_server.url)
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, max_message_size=64 * 1024) as t1,
        RedisTransport(redis_server.url, channel_prefix=prefix, max_message_size=64 * 1024) as t2,
        Store("bad", t1, node_id="victim", on_error=errors, **STORE_OPTIONS) as victim,
        Store("bad", t2, node_id="peer", **STORE_OPTIONS) as peer,
    ):
        before = victim.stats().decode_errors
        payloads = [
            b"",
            b"not msgpack at all",
            secrets.token_bytes(100),
            b"\x93\x01\x02",  # a truncated msgpack array
            b"\xdd\xff\xff\xff\xff",  # declares 4 G elements and stops
            secrets.token_bytes(200 * 1024),  # above the store's 64 KiB cap
        ]
        for channel in (t1.channel_for("ps/bad"), t1.channel_for("ps/bad#victim")):
            for payload in payloads:
                await raw.publish(channel, payload)
        total = 2 * len(payloads)
        await eventually(
            lambda: victim.stats().decode_errors - before >= total,
            wake=[errors.changed],
            timeout=TIMEOUT,
        )
        assert victim.stats().decode_errors - before == total
        assert len(errors) == total
        # The store keeps serving and replicating.
        await peer.set("after", "still fine")
        await eventually(lambda: victim.get("after") == "still fine", stores=[victim])
        await victim.set("back", 1)
        await eventually(lambda: peer.get("back") == 1, stores=[peer])
    await raw.aclose()
