"""Benchmark: podshare over Redis beside plain redis-py, on a redis-server of its own.

Run: ``python benchmarks/bench_redis.py [--writes N] [--rounds N]``. It starts
``redis-server`` (from PATH) on a free loopback port without persistence, runs three
measurements and prints one table, podshare's figure beside the peer's, with the ratio:

1. latency: ``store.set`` on one pod until the watch event on another pod, against a
   redis-py ``PUBLISH`` until a redis-py subscriber has the message (p50 and p99);
2. throughput: replicated writes/s from one writer to three pods (each pod its own
   transport), against one redis-py ``PUBLISH`` per message to three subscribers;
3. reads: ``store.get`` against a redis-py ``GET`` per read (what many services do).

Figures are printed, never asserted (targets: latency <= 1.5x, throughput >= 5x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import redis.asyncio as aioredis
from _common import pct, redis_server

from podshare import Store
from podshare.transport import RedisTransport

PAYLOAD = {"rate_limit": 1000, "flags": {"beta": True}}


# -- 1. latency ---------------------------------------------------------------------


async def podshare_latency(url: str, rounds: int) -> list[float]:
    async with AsyncExitStack() as stack:
        ta = await stack.enter_async_context(RedisTransport(url, channel_prefix="bench-lat"))
        tb = await stack.enter_async_context(RedisTransport(url, channel_prefix="bench-lat"))
        a = await stack.enter_async_context(Store("lat", ta, node_id="a", hydrate_timeout=0.2))
        b = await stack.enter_async_context(Store("lat", tb, node_id="b", hydrate_timeout=0.2))
        events = await stack.enter_async_context(b.watch(key="k"))
        samples = []
        for i in range(rounds + 20):
            value = {**PAYLOAD, "i": i}
            start = time.perf_counter()
            await a.set("k", value)
            async for event in events:
                if event.value == value:
                    break
            if i >= 20:  # warm-up excluded
                samples.append(time.perf_counter() - start)
        return samples


async def transport_latency(url: str, rounds: int) -> list[float]:
    """The transport alone: RedisTransport.publish until another transport's subscription."""
    async with (
        RedisTransport(url, channel_prefix="bench-tr") as ta,
        RedisTransport(url, channel_prefix="bench-tr") as tb,
        tb.subscribe("t") as messages,
    ):
        samples = []
        for i in range(rounds + 20):
            data = b"%d" % i
            start = time.perf_counter()
            await ta.publish("t", data)
            async for message in messages:
                if message == data:
                    break
            if i >= 20:
                samples.append(time.perf_counter() - start)
        return samples


async def raw_latency(url: str, rounds: int) -> list[float]:
    import json

    publisher = aioredis.Redis.from_url(url)
    subscriber = aioredis.Redis.from_url(url)
    pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe("raw-lat")
    samples = []
    try:
        for i in range(rounds + 20):
            data = json.dumps({"k": {**PAYLOAD, "i": i}}).encode()
            start = time.perf_counter()
            await publisher.publish("raw-lat", data)
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None and message["data"] == data:
                    break
            if i >= 20:
                samples.append(time.perf_counter() - start)
    finally:
        await pubsub.aclose()
        await publisher.aclose()
        await subscriber.aclose()
    return samples


# -- 2. throughput -------------------------------------------------------------------


async def podshare_throughput(url: str, writes: int, concurrency: int) -> float:
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(RedisTransport(url, channel_prefix="bench-tp"))
            for _ in range(4)
        ]
        stores = [
            await stack.enter_async_context(
                Store("tp", tr, node_id=f"pod-{i}", hydrate_timeout=0.2, watch_buffer=writes)
            )
            for i, tr in enumerate(transports)
        ]
        writer, pods = stores[0], stores[1:]
        received = [0] * len(pods)
        all_in = anyio.Event()

        async def count(index: int, store: Store[Any]) -> None:
            async with store.watch(prefix="w:") as events:
                async for _ in events:
                    received[index] += 1
                    if all(n >= writes for n in received):
                        all_in.set()

        async def write(first: int) -> None:
            for i in range(first, writes, concurrency):
                await writer.set(f"w:{i}", i)

        async with anyio.create_task_group() as tg:
            for index, store in enumerate(pods):
                tg.start_soon(count, index, store)
            await anyio.sleep(0.1)  # let the watchers open before the clock starts
            start = time.perf_counter()
            async with anyio.create_task_group() as writers:
                for first in range(concurrency):
                    writers.start_soon(write, first)
            await all_in.wait()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
        return writes / elapsed


async def raw_throughput(url: str, writes: int, concurrency: int) -> float:
    publisher = aioredis.Redis.from_url(url, max_connections=max(concurrency, 10))
    subscribers = [aioredis.Redis.from_url(url) for _ in range(3)]
    pubsubs = [s.pubsub(ignore_subscribe_messages=True) for s in subscribers]
    for pubsub in pubsubs:
        await pubsub.subscribe("raw-tp")
    done = anyio.Event()
    received = [0] * 3

    async def drain(index: int, pubsub: Any) -> None:
        while received[index] < writes:
            if await pubsub.get_message(timeout=None) is not None:
                received[index] += 1
        if all(n >= writes for n in received):
            done.set()

    async def publish(first: int) -> None:
        for i in range(first, writes, concurrency):
            await publisher.publish("raw-tp", b'{"w:%d": %d}' % (i, i))

    try:
        async with anyio.create_task_group() as tg:
            for index, pubsub in enumerate(pubsubs):
                tg.start_soon(drain, index, pubsub)
            start = time.perf_counter()
            async with anyio.create_task_group() as publishers:
                for first in range(concurrency):
                    publishers.start_soon(publish, first)
            await done.wait()
            elapsed = time.perf_counter() - start
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()
        for client in [publisher, *subscribers]:
            await client.aclose()
    return writes / elapsed


# -- 3. reads ------------------------------------------------------------------------


async def podshare_reads(url: str, reads: int) -> float:
    async with (
        RedisTransport(url, channel_prefix="bench-rd") as tr,
        Store("rd", tr, hydrate_timeout=0.2) as store,
    ):
        await store.set("config", PAYLOAD)
        get = store.get
        start = time.perf_counter()
        for _ in range(reads):
            get("config")
        return (time.perf_counter() - start) / reads


async def raw_reads(url: str, reads: int) -> float:
    client = aioredis.Redis.from_url(url)
    await client.set("config", b'{"rate_limit": 1000, "flags": {"beta": true}}')
    start = time.perf_counter()
    for _ in range(reads):
        await client.get("config")
    elapsed = time.perf_counter() - start
    await client.aclose()
    return elapsed / reads


async def main(args: argparse.Namespace) -> None:
    with redis_server() as url:
        ps_lat = await podshare_latency(url, args.rounds)
        raw_lat = await raw_latency(url, args.rounds)
        tr_lat = await transport_latency(url, args.rounds)
        ps_seq = await podshare_throughput(url, args.writes // 4, 1)
        raw_seq = await raw_throughput(url, args.writes // 4, 1)
        ps_tp = await podshare_throughput(url, args.writes, args.concurrency)
        raw_tp = await raw_throughput(url, args.writes, args.concurrency)
        ps_rd = await podshare_reads(url, 200_000)
        raw_rd = await raw_reads(url, 5_000)

    rows = [
        ("set→watch event p50 (µs)", statistics.median(ps_lat) * 1e6,
         "PUBLISH→subscriber p50", statistics.median(raw_lat) * 1e6),
        ("set→watch event p99 (µs)", pct(ps_lat, 0.99) * 1e6,
         "PUBLISH→subscriber p99", pct(raw_lat, 0.99) * 1e6),
        ("RedisTransport publish→subscription p50", statistics.median(tr_lat) * 1e6,
         "PUBLISH→subscriber p50", statistics.median(raw_lat) * 1e6),
        ("replicated writes/s → 3 pods, 1 task", ps_seq,
         "PUBLISH per msg, 1 task", raw_seq),
        (f"replicated writes/s → 3 pods, {args.concurrency} tasks", ps_tp,
         "PUBLISH per msg, 1 task", raw_seq),
        (f"replicated writes/s → 3 pods, {args.concurrency} tasks", ps_tp,
         f"PUBLISH per msg, {args.concurrency} tasks", raw_tp),
        ("store.get (ns/read)", ps_rd * 1e9, "redis-py GET (ns/read)", raw_rd * 1e9),
    ]  # fmt: skip
    print(f"redis-server on loopback; {os.cpu_count()} CPUs; latency rounds={args.rounds}, "
          f"writes={args.writes}")  # fmt: skip
    print(f"{'podshare':<44} {'figure':>12}  {'peer':<30} {'figure':>12}  {'ratio':>8}")
    for name, ours, peer_name, peer in rows:
        print(f"{name:<44} {ours:>12.1f}  {peer_name:<30} {peer:>12.1f}  {ours / peer:>7.2f}x")
    print("ratios: latency and reads are podshare/peer (lower is better); "
          "throughput is podshare/peer (higher is better)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="latency samples")
    parser.add_argument("--writes", type=int, default=20_000, help="writes for throughput")
    parser.add_argument("--concurrency", type=int, default=256, help="concurrent writer tasks")
    anyio.run(main, parser.parse_args(), backend="asyncio")
