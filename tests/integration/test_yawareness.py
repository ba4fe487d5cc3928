"""AwarenessBridge: cursors and presence cross pods; a dead pod's users are removed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

pycrdt = pytest.importorskip("pycrdt", reason="the bridge needs the yjs extra (pycrdt)")

from podshare import Store  # noqa: E402
from podshare.transport import MemoryNetwork, MemoryTransport  # noqa: E402
from podshare.yjs import _protocol, room_topic  # noqa: E402
from podshare.yjs.awareness import AwarenessBridge  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 10
TOPIC = room_topic("room")
STORE_OPTIONS: dict[str, Any] = {
    "hydrate_timeout": 0.2,
    "heartbeat_interval": 0.1,
    "down_after": 0.5,
}


@dataclass
class Pod:
    name: str
    awareness: Any
    bridge: AwarenessBridge
    forwarded: list[_protocol.AwarenessEntry] = field(default_factory=list)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def client(self, client: int, state: dict[str, Any] | None, clock: int) -> None:
        """What pycrdt-websocket does with a client's awareness message."""
        raw = "null" if state is None else json.dumps(state)
        update = _protocol.encode_awareness([_protocol.AwarenessEntry(client, clock, raw)])
        self.awareness.apply_awareness_update(update, "a websocket client")

    async def until(self, condition: Any) -> None:
        with anyio.fail_after(TIMEOUT):
            while not condition():
                self.changed = anyio.Event()
                await self.changed.wait()


@asynccontextmanager
async def pods(names: list[str], net: MemoryNetwork) -> AsyncIterator[list[Pod]]:
    async with AsyncExitStack() as stack:
        out: list[Pod] = []
        for name in names:
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
            store = await stack.enter_async_context(
                Store("presence", tr, node_id=name, **STORE_OPTIONS)
            )
            awareness = pycrdt.Awareness(pycrdt.Doc())
            pod: Pod

            async def forward(message: bytes, name: str = name) -> None:
                target = next(p for p in out if p.name == name)
                update = _protocol.parse_awareness_message(message)
                target.forwarded.extend(_protocol.decode_awareness(update))
                target.changed.set()

            bridge = AwarenessBridge(awareness, store, TOPIC, forward=forward)
            pod = Pod(name, awareness, bridge)
            out.append(pod)
            await stack.enter_async_context(bridge)
        yield out


def users(pod: Pod) -> dict[int, Any]:
    own = pod.awareness.client_id
    return {c: s for c, s in pod.awareness.states.items() if c != own}


async def test_a_cursor_crosses_pods_and_leaves_with_its_client() -> None:
    async with pods(["pod-a", "pod-b"], MemoryNetwork()) as (a, b):
        a.client(101, {"user": "zoë", "cursor": 3}, clock=1)
        await b.until(lambda: users(b).get(101) == {"user": "zoë", "cursor": 3})
        assert b.forwarded[-1] == _protocol.AwarenessEntry(
            101, 1, json.dumps({"user": "zoë", "cursor": 3}, separators=(",", ":"))
        )
        # Moves and renewals follow (a newer clock).
        a.client(101, {"user": "zoë", "cursor": 9}, clock=2)
        await b.until(lambda: users(b).get(101, {}).get("cursor") == 9)
        # The client leaves: b's clients are told (same clock, null).
        a.client(101, None, clock=3)
        await b.until(lambda: 101 not in users(b))
        await b.until(lambda: b.forwarded[-1].removed)
        # Nothing of a's own server state crossed.
        assert a.awareness.client_id not in b.awareness.states


async def test_a_dead_pods_clients_are_removed_everywhere() -> None:
    net = MemoryNetwork()
    async with pods(["pod-a", "pod-b", "pod-c"], net) as (a, b, c):
        a.client(1, {"user": "ada"}, clock=1)
        a.client(2, {"user": "alan"}, clock=4)
        b.client(3, {"user": "grace"}, clock=1)
        for pod in (b, c):
            await pod.until(lambda pod=pod: {1, 2} <= set(users(pod)))
        await c.until(lambda: 3 in users(c))
        # pod-a vanishes without a goodbye (crash, network loss).
        net.partition(["pod-b", "pod-c"], ["pod-a"])
        for pod in (b, c):
            await pod.until(lambda pod=pod: not {1, 2} & set(users(pod)))
            removed = {e.client for e in pod.forwarded if e.removed}
            assert {1, 2} <= removed
        # grace, on a live pod, stays.
        assert users(c)[3] == {"user": "grace"}


async def test_a_joining_pod_learns_the_states_already_there() -> None:
    net = MemoryNetwork()
    async with pods(["pod-a"], net) as (a,):
        a.client(7, {"user": "ada", "name": "Ада"}, clock=5)
        async with pods(["pod-b"], net) as (b,):
            await b.until(lambda: users(b).get(7) == {"user": "ada", "name": "Ада"})
            assert b.awareness.meta[7]["clock"] == 5
