"""Stores replicated over TcpTransport in one process: convergence, late joiners, healing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.transport import TcpTransport

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 15


async def wait_for_value(store: Store[Any], key: str, value: object) -> None:
    """Wait, bounded, until ``store[key] == value`` (watching, so no polling)."""
    with anyio.fail_after(TIMEOUT):
        async with store.watch(key=key) as events:
            if store.get(key) == value:
                return
            async for _ in events:
                if store.get(key) == value:
                    return
    raise AssertionError(f"{key!r} never became {value!r} on {store.node_id}")


async def connected(transport: TcpTransport, count: int) -> None:
    with anyio.fail_after(TIMEOUT):
        await transport.wait_connected(count)


async def disconnected(*transports: TcpTransport) -> None:
    """Wait, bounded, until none of ``transports`` has a connection."""
    with anyio.fail_after(TIMEOUT):
        while any(t.connections for t in transports):
            # Connection events set the transport's private change event; take it now.
            changed = next(t for t in transports if t.connections)._changed
            await changed.wait()


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
                Store("cfg", t, node_id=f"node-{i}", hydrate_timeout=2.0)
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
        for store in stores:
            for key, value in expected.items():
                await wait_for_value(store, key, value)
        snapshots = [store.snapshot() for store in stores]
        assert all(snapshot == snapshots[0] for snapshot in snapshots)
        # Concurrent writes to one key: every replica picked the same winner.
        assert all(f"shared-{round_}" in snapshots[0] for round_ in range(3))


async def test_deletes_replicate() -> None:
    async with cluster(3) as (_, stores):
        await stores[0].set("gone", "soon")
        await wait_for_value(stores[2], "gone", "soon")
        await stores[1].delete("gone")
        for store in stores:
            await wait_for_value(store, "gone", None)
            assert "gone" not in store


async def test_late_joiner_hydrates_on_entry() -> None:
    async with cluster(3) as (transports, stores):
        for i in range(50):
            await stores[i % 3].set(f"key-{i}", {"n": i})
        for store in stores:
            await wait_for_value(store, "key-49", {"n": 49})
            await wait_for_value(store, f"key-{48 - 48 % 3}", {"n": 48 - 48 % 3})
        # The newcomer knows one node; peer exchange connects it to the others.
        async with TcpTransport(peers=[transports[1].address], node_id="tcp-late") as late:
            await connected(late, 3)
            async with Store("cfg", late, node_id="node-late", hydrate_timeout=5.0) as joiner:
                for i in range(50):
                    await wait_for_value(joiner, f"key-{i}", {"n": i})
                assert joiner.snapshot() == stores[1].snapshot()
                # And it takes part: its writes reach the others.
                await joiner.set("from-late", True)
                for store in stores:
                    await wait_for_value(store, "from-late", True)


async def test_remove_peer_then_add_peer_heals_with_refresh() -> None:
    async with (
        TcpTransport(node_id="tcp-b") as tb,
        TcpTransport(node_id="tcp-a", peers=[tb.address]) as ta,
    ):
        await connected(ta, 1)
        async with (
            Store("cfg", ta, node_id="a", hydrate_timeout=2.0) as a,
            Store("cfg", tb, node_id="b", hydrate_timeout=2.0) as b,
        ):
            await a.set("before", 1)
            await wait_for_value(b, "before", 1)

            ta.remove_peer(tb.address)
            await disconnected(ta, tb)
            # Partitioned: each side writes what the other cannot see yet.
            await a.set("during-a", "x")
            await b.set("during-b", "y")
            await b.delete("before")
            assert "during-b" not in a
            gaps = ta.stats().gaps_reported

            ta.add_peer(tb.address)
            await wait_for_value(a, "during-b", "y")
            await wait_for_value(a, "before", None)
            await wait_for_value(b, "during-a", "x")
            assert ta.stats().gaps_reported > gaps  # the reconnect told the store to refresh
            assert a.snapshot() == b.snapshot()
