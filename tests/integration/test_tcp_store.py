"""Stores replicated over TcpTransport in one process: convergence, late joiners, healing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.transport import TcpTransport
from tests._support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 15


def holds(stores: list[Store[Any]], expected: Mapping[str, object]) -> Callable[[], bool]:
    """Whether every store maps each key of ``expected`` to its value (None: absent)."""
    return lambda: all(s.get(k) == v for s in stores for k, v in expected.items())


async def connected(transport: TcpTransport, count: int) -> None:
    with anyio.fail_after(TIMEOUT):
        await transport.wait_connected(count)


@asynccontextmanager
async def cluster(count: int) -> AsyncIterator[tuple[list[TcpTransport], list[Store[Any]]]]:
    """``count`` nodes, each dialing the ones before it, each with a store "cfg"."""
    async with AsyncExitStack() as stack:
        transports: list[TcpTransport] = []
        for i in range(count):
            transport = TcpTransport(peers=[t.address for t in transports], node_id=f"tcp-{i}")
            transports.append(await stack.enter_async_context(transport))
        for transport in transports:
            await connected(transport, count - 1)
        stores = [
            await stack.enter_async_context(
                Store[Any]("cfg", t, node_id=f"node-{i}", hydrate_timeout=2.0)
            )
            for i, t in enumerate(transports)
        ]
        yield transports, stores


@pytest.mark.parametrize("count", [3, 5])
async def test_nodes_converge_on_concurrent_writes(count: int) -> None:
    async with cluster(count) as (_, stores):
        expected: dict[str, object] = {}
        for round_ in range(3):
            for i, store in enumerate(stores):
                await store.set(f"k{i}", round_)  # each key keeps being overwritten
                await store.set(f"shared-{round_}", i)  # concurrent writes to one key
                expected[f"k{i}"] = round_
        # A last marker from each node: once a replica has every marker it has every
        # earlier write too (each connection delivers in order).
        for i, store in enumerate(stores):
            await store.set(f"done-{i}", True)
            expected[f"done-{i}"] = True
        await eventually(holds(stores, expected), stores=stores, timeout=TIMEOUT)
        snapshots = [store.snapshot() for store in stores]
        assert all(snapshot == snapshots[0] for snapshot in snapshots)
        # Concurrent writes to one key: every replica picked the same winner.
        assert all(f"shared-{round_}" in snapshots[0] for round_ in range(3))


async def test_deletes_replicate() -> None:
    async with cluster(3) as (_, stores):
        await stores[0].set("gone", "soon")
        await eventually(holds(stores[2:], {"gone": "soon"}), stores=stores[2:], timeout=TIMEOUT)
        await stores[1].delete("gone")
        await eventually(holds(stores, {"gone": None}), stores=stores, timeout=TIMEOUT)
        assert all("gone" not in store for store in stores)


async def test_late_joiner_hydrates_on_entry() -> None:
    async with cluster(3) as (transports, stores):
        written = {f"key-{i}": {"n": i} for i in range(50)}
        for i, (key, value) in enumerate(written.items()):
            await stores[i % 3].set(key, value)
        await eventually(holds(stores, written), stores=stores, timeout=TIMEOUT)
        # The newcomer knows one node; peer exchange connects it to the others.
        async with TcpTransport(peers=[transports[1].address], node_id="tcp-late") as late:
            await connected(late, 3)
            async with Store[Any]("cfg", late, node_id="node-late", hydrate_timeout=5.0) as joiner:
                await eventually(holds([joiner], written), stores=[joiner], timeout=TIMEOUT)
                assert joiner.snapshot() == stores[1].snapshot()
                # And it takes part: its writes reach the others.
                await joiner.set("from-late", True)
                await eventually(holds(stores, {"from-late": True}), stores=stores, timeout=TIMEOUT)


async def test_remove_peer_then_add_peer_heals_with_refresh() -> None:
    async with (
        TcpTransport(node_id="tcp-b") as tb,
        TcpTransport(node_id="tcp-a", peers=[tb.address]) as ta,
    ):
        await connected(ta, 1)
        async with (
            Store[Any]("cfg", ta, node_id="a", hydrate_timeout=2.0) as a,
            Store[Any]("cfg", tb, node_id="b", hydrate_timeout=2.0) as b,
        ):
            await a.set("before", 1)
            await eventually(holds([b], {"before": 1}), stores=[b], timeout=TIMEOUT)

            ta.remove_peer(tb.address)
            # TcpTransport announces no connection change publicly: this one polls.
            await eventually(lambda: not ta.connections and not tb.connections, timeout=TIMEOUT)
            # Partitioned: each side writes what the other cannot see yet.
            await a.set("during-a", "x")
            await b.set("during-b", "y")
            await b.delete("before")
            assert "during-b" not in a
            gaps = ta.stats().gaps_reported

            ta.add_peer(tb.address)
            await eventually(
                holds([a], {"during-b": "y", "before": None}), stores=[a], timeout=TIMEOUT
            )
            await eventually(holds([b], {"during-a": "x"}), stores=[b], timeout=TIMEOUT)
            assert ta.stats().gaps_reported > gaps  # the reconnect told the store to refresh
            assert a.snapshot() == b.snapshot()
