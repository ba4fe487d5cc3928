"""Stores replicating through real nats-servers: convergence, late joiners, restarts, failover.

Each scenario runs on core NATS and, where it differs, with JetStream streams.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.exceptions import TransportError
from podshare.transport import NatsTransport
from tests._nats import NatsCluster, NatsServer
from tests._support import Notifier, eventually

pytestmark = pytest.mark.integration

TIMEOUT = 20
# Fast to open (an empty cluster waits out its hello window) and quick to notice peers.
STORE_OPTIONS: dict[str, Any] = {"hydrate_timeout": 1.0}
# Anti-entropy far beyond every test's timeout: only the gap repair (or JetStream's
# replay) can carry what a restart lost, never a periodic exchange.
NO_ANTI_ENTROPY: dict[str, Any] = {"anti_entropy_interval": 3600.0}
MODES = [pytest.param(False, id="core"), pytest.param(True, id="jetstream")]


@pytest.fixture
def anyio_backend() -> str:
    """nats-py is asyncio-only, so NATS-backed stores run under asyncio alone."""
    return "asyncio"


def _transport(servers: str | list[str], prefix: str, jetstream: bool) -> NatsTransport:
    return NatsTransport(
        servers, subject_prefix=prefix, jetstream=jetstream, reconnect_time_wait=0.05, timeout=2.0
    )


@asynccontextmanager
async def pods(
    servers: str | list[str], count: int, name: str, *, jetstream: bool, **options: Any
) -> AsyncIterator[tuple[list[NatsTransport], list[Store[Any]]]]:
    """``count`` pods, each with its own NatsTransport (own connection) and Store."""
    prefix = f"test-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(_transport(servers, prefix, jetstream))
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
@pytest.mark.parametrize("jetstream", MODES)
async def test_stores_converge(nats_server: NatsServer, jetstream: bool) -> None:
    async with pods(nats_server.url, 3, "converge", jetstream=jetstream) as (transports, stores):
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
        for tr in transports:
            assert tr.stats().jetstream_subscriptions == (1 if jetstream else 0)


@pytest.mark.anyio
@pytest.mark.parametrize("jetstream", MODES)
async def test_late_joiner_hydrates(nats_server: NatsServer, jetstream: bool) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        first = [
            await stack.enter_async_context(
                Store[int](
                    "late",
                    await stack.enter_async_context(_transport(nats_server.url, prefix, jetstream)),
                    node_id=f"pod-{i}",
                    **STORE_OPTIONS,
                )
            )
            for i in range(2)
        ]
        await first[0].set_many({f"k{i}": i for i in range(500)})
        await first[1].set("other", -1)
        expected = {**{f"k{i}": i for i in range(500)}, "other": -1}
        await eventually(same_everywhere(first, expected), stores=first, timeout=TIMEOUT)
        late_transport = await stack.enter_async_context(
            _transport(nats_server.url, prefix, jetstream)
        )
        late = await stack.enter_async_context(
            Store[int]("late", late_transport, node_id="late", **STORE_OPTIONS)
        )
        await late.wait_synced()
        await eventually(lambda: late.snapshot() == expected, stores=[late], timeout=TIMEOUT)
        assert late.synced


@pytest.mark.anyio
@pytest.mark.parametrize("jetstream", MODES)
async def test_restarts_lose_no_acknowledged_write(
    restartable_nats: NatsServer, jetstream: bool
) -> None:
    """Kill nats-server twice while two pods write and a third only reads; no refresh().

    Core NATS: every pod reports a gap after each restart and repairs it with one peer;
    the periodic anti-entropy (1 s here) spreads the rest, so every write, acknowledged
    or not, ends up on every pod. JetStream: anti-entropy is off; every acknowledged
    write reaches every pod (the reader by replay, without a gap), and the writes that
    stood only locally reach the other writer through the writers' gap repair.
    """
    kills = 2
    options = NO_ANTI_ENTROPY if jetstream else {"anti_entropy_interval": 1.0}
    async with pods(restartable_nats.url, 3, "restarts", jetstream=jetstream, **options) as (
        transports,
        stores,
    ):
        writers = stores[:2]
        acked: dict[str, int] = {}
        written: dict[str, int] = {}  # acknowledged or not
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
                try:
                    await store.set(key, i)
                except TransportError:
                    # The write stands locally and must still reach the others.
                    failed[index] += 1
                    failed_total[index] += 1
                    progress.notify()
                    if failed[index] >= 3:
                        await outage_over.wait()  # enough writes during this outage
                    await anyio.sleep(0.01)  # pacing while reconnecting, not a sync
                else:
                    acked[key] = i
                    ok[index] += 1
                    progress.notify()
                    # Pacing, not a sync: a core NATS publish returns at once, and an
                    # unpaced writer would only measure how fast readers fall behind.
                    await anyio.sleep(0.002)
                i += 1

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
                restartable_nats.kill()
                await eventually(
                    lambda: all(f >= 3 for f in failed), wake=[progress], timeout=TIMEOUT
                )
                restartable_nats.start()
                outage_over.set()
            await more_successes(20)  # keep writing after the last recovery, then stop
            done = True
        assert all(f >= 3 * kills for f in failed_total)

        def holds(store: Store[Any], expected: dict[str, int]) -> bool:
            snapshot = store.snapshot()
            return all(snapshot.get(key) == value for key, value in expected.items())

        await eventually(
            lambda: all(holds(store, acked) for store in stores), stores=stores, timeout=TIMEOUT
        )
        expected_on = stores if not jetstream else writers
        await eventually(
            lambda: all(store.snapshot() == written for store in expected_on),
            stores=stores,
            timeout=TIMEOUT,
        )
        for transport in transports:
            stats = transport.stats()
            assert 1 <= stats.reconnects <= kills
            assert stats.gaps_reported + stats.replays >= stats.reconnects
        if jetstream:
            for transport in transports[:2]:
                # Their publishes failed: peers cannot replay those, so a gap each time.
                assert transport.stats().gaps_reported >= transport.stats().reconnects
            reader = transports[2].stats()
            assert reader.gaps_reported == 0
            assert reader.replays == reader.reconnects


@pytest.mark.anyio
async def test_pod_fails_over_to_another_server_of_the_cluster(
    nats_cluster: NatsCluster,
) -> None:
    """Kill the server a pod is connected to, mid-writes: it moves to another server of
    the cluster, and both pods converge on every write."""
    prefix = f"test-{secrets.token_hex(4)}"
    async with _transport(nats_cluster.urls, prefix, False) as ta:
        assert ta.remote is not None
        victim = next(s for s in nats_cluster.servers if s.port == ta.remote.port)
        others = [s.url for s in nats_cluster.servers if s is not victim]
        async with (
            _transport(others[0], prefix, False) as tb,
            Store[int]("failover", ta, node_id="a", **STORE_OPTIONS, **NO_ANTI_ENTROPY) as a,
            Store[int]("failover", tb, node_id="b", **STORE_OPTIONS, **NO_ANTI_ENTROPY) as b,
        ):
            reconnected = anyio.Event()
            ta.add_gap_listener(reconnected.set)
            await a.set_many({f"before-{i}": i for i in range(50)})
            await b.set("from-b", 1)
            expected = {**{f"before-{i}": i for i in range(50)}, "from-b": 1}
            await eventually(same_everywhere([a, b], expected), stores=[a, b], timeout=TIMEOUT)
            victim.kill()
            written = 0
            with anyio.fail_after(TIMEOUT):
                while not reconnected.is_set() or written < 50:
                    key = f"after-{written}"
                    expected[key] = written
                    try:
                        await a.set(key, written)
                    except TransportError:
                        await anyio.sleep(0.02)  # pacing while it fails over
                    written += 1
            await b.set("from-b", 2)
            expected["from-b"] = 2
            await eventually(same_everywhere([a, b], expected), stores=[a, b], timeout=TIMEOUT)
            assert ta.remote is not None
            assert ta.remote.port != victim.port
            assert ta.stats().reconnects == 1
