"""Benchmark: persisting a large store incrementally beside a full snapshot; cold starts.

Run: ``python benchmarks/bench_persistence.py [--keys N] [--changes N] [--intervals N]``.
It starts ``redis-server`` (from PATH) on a free loopback port without persistence, uses
an SQLite file in a temporary directory, and prints two tables:

1. bytes written per second for a store of ``--keys`` keys (100k) where ``--changes``
   keys (100) change per second, persisted once per 1 s interval: podshare's incremental
   records (the changed keys and the meta record per interval) beside a full snapshot
   per interval (every record rewritten, as the Go library does), on Redis, SQLite and
   memory. The store's writes are simulated: realistic records (an LWW entry with a
   small msgpack value, about 60 bytes) handed to ``write`` as the persister would.
   The write time per interval is shown too.
2. cold start: ``load`` of all ``--keys`` records by a new instance, from Redis and from
   SQLite, beside the bare client doing the same read (redis-py ``HGETALL``; ``sqlite3``
   ``SELECT`` on the calling thread), median of three.

Figures are printed, never asserted (targets: O(changed) bytes per interval; a cold start
of 100k keys from Redis in <= 1 s).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import redis.asyncio as aioredis

from podshare.crdt import Stamp
from podshare.persistence import MemoryPersistence, RedisPersistence, SQLitePersistence
from podshare.persistence.base import encode_meta, encode_record
from podshare.store.wire import make_entry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_redis import redis_server  # the benchmarks' shared server helper

STORE = "bench-flags"
NODES = [f"pod-{i}" for i in range(3)]

Backend = MemoryPersistence | SQLitePersistence | RedisPersistence


def record(i: int, version: int) -> bytes:
    """A realistic record: an LWW entry whose value is a small msgpack-encoded dict."""
    value = msgspec.msgpack.encode({"enabled": version % 2 == 0, "rollout": i % 100})
    stamp = Stamp(1_700_000_000_000 + version, 0, NODES[i % len(NODES)])
    return encode_record(make_entry(f"flag:{i:06d}", stamp, 0, value))


def meta(interval: int) -> bytes:
    return encode_meta(interval, [(node, 1_700_000_000_000 + interval) for node in NODES])


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


async def persist(
    place: Backend, keys: int, changes: int, intervals: int, incremental: bool
) -> tuple[float, float]:
    """Bytes written and seconds spent per interval (means), after an initial full write."""
    records: dict[str, bytes] = {f"flag:{i:06d}": record(i, 0) for i in range(keys)}
    await place.write(STORE, records, meta(0))
    before = place.stats().bytes_written
    spent = 0.0
    for interval in range(1, intervals + 1):
        changed: dict[str, bytes | None] = {}
        for j in range(changes):
            i = (interval * changes + j) * 7919 % keys  # spread over the keys
            records[f"flag:{i:06d}"] = changed[f"flag:{i:06d}"] = record(i, interval)
        batch: Mapping[str, bytes | None] = changed if incremental else records
        started = time.perf_counter()
        await place.write(STORE, batch, meta(interval))
        spent += time.perf_counter() - started
    written = place.stats().bytes_written - before
    return written / intervals, spent / intervals


async def timed(fn: Callable[[], Any], rounds: int = 3) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def main(args: argparse.Namespace) -> None:
    keys, changes, intervals = args.keys, args.changes, args.intervals
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        rows: list[tuple[str, float, float, float, float]] = []
        places: list[tuple[str, Callable[[str], Backend]]] = [
            ("Redis", lambda name: RedisPersistence(url, channel_prefix=name)),
            ("SQLite", lambda name: SQLitePersistence(Path(tmp) / f"{name}.db")),
            ("memory", lambda _name: MemoryPersistence()),
        ]
        for label, make in places:
            figures = []
            for incremental in (True, False):
                place = make("incremental" if incremental else "full")
                figures.append(await persist(place, keys, changes, intervals, incremental))
                await place.aclose()
            (inc_bytes, inc_time), (full_bytes, full_time) = figures
            rows.append((label, inc_bytes, full_bytes, inc_time, full_time))

        print(
            f"\nbytes written per second: {keys:,} keys, {changes} changes/s, "
            f"1 s interval ({intervals} intervals)"
        )
        print(
            "| backend | incremental (podshare) | full snapshot (peer) | ratio "
            "| write time per interval, incremental / full |"
        )
        print("|---|---|---|---|---|")
        for label, inc_bytes, full_bytes, inc_time, full_time in rows:
            print(
                f"| {label} | {fmt_bytes(inc_bytes)}/s | {fmt_bytes(full_bytes)}/s "
                f"| {inc_bytes / full_bytes:.3%} | {inc_time * 1e3:.2f} ms / "
                f"{full_time * 1e3:.0f} ms |"
            )

        # Cold start: a new instance loads everything the last one wrote.
        records = {f"flag:{i:06d}": record(i, 0) for i in range(keys)}
        async with RedisPersistence(url, channel_prefix="cold") as to_redis:
            await to_redis.write(STORE, records, meta(0))
        sqlite_path = Path(tmp) / "cold.db"
        async with SQLitePersistence(sqlite_path) as to_sqlite:
            await to_sqlite.write(STORE, records, meta(0))

        async def load_redis() -> None:
            async with RedisPersistence(url, channel_prefix="cold") as place:
                state = await place.load(STORE)
            assert len(state.records) == keys

        raw = aioredis.Redis.from_url(url)

        async def hgetall() -> None:
            assert len(await raw.hgetall(f"cold:ps/{STORE}:state")) == keys

        async def load_sqlite() -> None:
            async with SQLitePersistence(sqlite_path) as place:
                state = await place.load(STORE)
            assert len(state.records) == keys

        async def select() -> None:
            conn = sqlite3.connect(sqlite_path)
            try:
                rows_ = conn.execute(
                    "SELECT key, record FROM records WHERE store = ?", (STORE,)
                ).fetchall()
            finally:
                conn.close()
            assert len(dict(rows_)) == keys

        redis_load, redis_peer = await timed(load_redis), await timed(hgetall)
        sqlite_load, sqlite_peer = await timed(load_sqlite), await timed(select)
        await raw.aclose()
        print(f"\ncold start: load {keys:,} keys by a new instance (median of 3)")
        print("| backend | podshare load | bare client (peer) | ratio | target |")
        print("|---|---|---|---|---|")
        print(
            f"| Redis (HSCAN pages) | {redis_load:.3f} s | {redis_peer:.3f} s (HGETALL) "
            f"| {redis_load / redis_peer:.2f}x | ≤ 1 s |"
        )
        print(
            f"| SQLite (worker thread) | {sqlite_load:.3f} s | {sqlite_peer:.3f} s "
            f"(sqlite3 SELECT, blocking) | {sqlite_load / sqlite_peer:.2f}x | — |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--intervals", type=int, default=5)
    anyio.run(main, parser.parse_args())
