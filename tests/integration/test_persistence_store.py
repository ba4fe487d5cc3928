"""Full restarts with real backends (issue 14): Redis as a RedisTransport's default, and
SQLite under a TCP mesh; every pod SIGKILLed mid-writes; a Redis that restarts empty.

Every test uses its own channel prefix (or its own files), so nothing one test persists
is seen by another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.crdt import GSet
from podshare.persistence import SQLitePersistence
from podshare.transport import RedisTransport, TcpTransport
from tests._support import RedisServer, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 20.0
FAST: dict[str, Any] = {"persist_interval": 0.1, "hydrate_timeout": 3.0}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py is asyncio only (the SQLite test below runs under both)


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def redis_pod(
    url: str, prefix: str, name: str, tp: Any = int, **options: Any
) -> AsyncIterator[Store[Any]]:
    async with AsyncExitStack() as stack:
        tr = await stack.enter_async_context(RedisTransport(url, channel_prefix=prefix))
        store: Store[Any] = Store("flags", tr, node_id=name, type=tp, **{**FAST, **options})
        yield await stack.enter_async_context(store)


async def test_redis_cold_restart_keeps_live_keys_deletes_and_merged_adds(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    url = redis_server.url
    async with (
        redis_pod(url, prefix, "a", GSet[str]) as a,
        redis_pod(url, prefix, "b", GSet[str]) as b,
    ):
        await a.set("live", GSet(["1"]))
        await a.set("doomed", GSet(["x"]))
        await a.update("tags", lambda s: s.add("from-a"))
        await b.update("tags", lambda s: s.add("from-b"))
        await eventually(lambda: "doomed" in b and len(b.get("tags") or ()) == 2, stores=[b])
        await b.delete("doomed")
        await eventually(lambda: "doomed" not in a, stores=[a])
    # Every pod stopped. A new pod (another node id) starts: it holds the state at once.
    async with redis_pod(url, prefix, "c", GSet[str]) as c:
        assert c.synced
        assert set(c) == {"live", "tags"}
        assert set(c.get("tags") or ()) == {"from-a", "from-b"}
        assert "doomed" not in c
        assert c.stats().persist_loaded >= 3


async def test_redis_persistence_false_keeps_nothing(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with redis_pod(redis_server.url, prefix, "a", persistence=False) as a:
        await a.set("k", 1)
    async with redis_pod(redis_server.url, prefix, "b", persistence=False) as b:
        assert "k" not in b


async def test_a_redis_that_restarts_empty_gets_the_whole_state_back(
    restartable_redis: RedisServer,
) -> None:
    """Redis without its own persistence restarts empty while the pods live: the writer
    rewrites everything after the reconnect, so a later cold restart still has it all."""
    prefix = _prefix()
    url = restartable_redis.url
    async with redis_pod(url, prefix, "a") as a:
        await a.set_many({f"k{i}": i for i in range(20)})
        await eventually(lambda: a.stats().persist_records >= 20, stores=[a], poll=0.05)
        restartable_redis.restart()  # a fresh, empty server on the same port
        await eventually(lambda: a.stats().persist_records >= 40, stores=[a], poll=0.05)
    async with redis_pod(url, prefix, "b") as b:
        assert b.snapshot() == {f"k{i}": i for i in range(20)}


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sqlite_under_a_tcp_mesh_survives_a_full_restart(tmp_path: Path) -> None:
    """Each pod keeps its own file (a persistent volume); all stop; they start again on
    their files and hold the map, deletes included, before any peer answers."""

    async def run(phase: int, work: Any) -> None:
        async with AsyncExitStack() as stack:
            transports: list[TcpTransport] = []
            for i in range(2):
                tr = TcpTransport(peers=[t.address for t in transports], node_id=f"t{i}-{phase}")
                transports.append(await stack.enter_async_context(tr))
            with anyio.fail_after(TIMEOUT):
                await transports[0].wait_connected(1)
            stores = []
            for i, tr in enumerate(transports):
                db = await stack.enter_async_context(SQLitePersistence(tmp_path / f"pod{i}.db"))
                store: Store[Any] = Store("mesh", tr, node_id=f"pod{i}", persistence=db, **FAST)
                stores.append(await stack.enter_async_context(store))
            await work(stores)

    async def first(stores: list[Store[Any]]) -> None:
        a, b = stores
        await a.set_many({"x": 1, "gone": 2})
        await eventually(lambda: "gone" in b, stores=[b])
        await b.delete("gone")
        await b.set("y", 3)
        await eventually(lambda: a.snapshot() == {"x": 1, "y": 3}, stores=[a])

    async def second(stores: list[Store[Any]]) -> None:
        for store in stores:
            assert store.snapshot() == {"x": 1, "y": 3}

    await run(0, first)
    await run(1, second)


WRITER = """
import json, sys, time
import anyio
from podshare import Store
from podshare.transport import RedisTransport

async def main(url: str, prefix: str, name: str) -> None:
    async with RedisTransport(url, channel_prefix=prefix) as tr, Store(
        "flags", tr, node_id=name, persist_interval=0.2, hydrate_timeout=3.0
    ) as store:
        print(json.dumps({"ready": True}), flush=True)
        i = 0
        while True:
            key = f"{name}-{i}"
            await store.set(key, i)
            print(json.dumps({"ack": key, "at": time.time()}), flush=True)
            i += 1
            await anyio.sleep(0.005)

anyio.run(main, *sys.argv[1:])
"""


ROOT = Path(__file__).resolve().parents[2]


def _write_then_kill(url: str, prefix: str, script: Path) -> tuple[dict[str, float], float]:
    """Start three writer processes, let each acknowledge 100 writes, SIGKILL all three
    at once; return every acknowledgement (key -> time) and the time of the kill."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, prefix, f"w{i}"],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for i in range(3)
    ]
    acks: dict[str, float] = {}

    def take(line: str) -> None:
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            return  # the last line, cut by the kill
        if "ack" in msg:
            acks[msg["ack"]] = msg["at"]

    try:
        for proc in procs:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline()) == {"ready": True}
        # Wait for 100 acknowledgements of each (they write on their own meanwhile).
        for proc in procs:
            assert proc.stdout is not None
            for _ in range(100):
                take(proc.stdout.readline())
        killed_at = time.time()
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
        for proc in procs:
            proc.wait(timeout=10)
            assert proc.stdout is not None
            for line in proc.stdout.read().splitlines():
                take(line)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return acks, killed_at


async def test_every_pod_sigkilled_mid_writes_loses_at_most_the_last_interval(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Three pods write to Redis as fast as they can; all are SIGKILLed at once. Every
    write acknowledged more than one persist_interval (0.2 s, plus 0.1 s for the write
    itself to reach Redis) before the kill is there when a new pod starts."""
    prefix = _prefix()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    acks, killed_at = await anyio.to_thread.run_sync(
        _write_then_kill, redis_server.url, prefix, script
    )
    assert len(acks) >= 300  # they did write
    old_enough = {key for key, at in acks.items() if at < killed_at - 0.3}
    assert old_enough
    async with redis_pod(redis_server.url, prefix, "after") as store:
        missing = old_enough - set(store)
        assert not missing, f"{len(missing)} of {len(old_enough)} old writes lost"
