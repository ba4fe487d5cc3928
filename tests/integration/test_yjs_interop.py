"""Real editors across pods: Node.js yjs + y-websocket clients on two bridged pods.

Two pods (a pycrdt-websocket server each, bridged by podshare) over Redis and over the
TCP mesh; one Node.js client per pod. The clients type concurrently, Redis is restarted
mid-typing, awareness crosses pods, a 10 MB paste reaches the other client. The Node
packages are pinned in tests/integration/ynode and installed by scripts/npm-test-deps.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

pytest.importorskip("pycrdt.websocket", reason="the server needs the yjs-server extra")
pytest.importorskip("websockets", reason="the server needs the yjs-server extra")

from tests.integration._ynode import NodeClient, Pod, node_client, node_modules, pod

# The websockets library (the pods' server) runs on asyncio only.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

TIMEOUT = 30
ROOM = "notes/interop"  # y-websocket connects to {server}/{room}: the path is /notes/interop
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase


@pytest.fixture(scope="module", autouse=True)
def _node_installed() -> None:
    node_modules()  # skips (or fails under CI) when node is missing


async def eventually(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` (async) every 20 ms until it returns something truthy (bounded)."""
    with anyio.fail_after(TIMEOUT):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover


async def converged(a: NodeClient, b: NodeClient) -> dict[str, Any]:
    async def same() -> dict[str, Any] | None:
        da, db = await a.request("digest"), await b.request("digest")
        return da if (da["sha"], da["length"]) == (db["sha"], db["length"]) else None

    result: dict[str, Any] = await eventually(same, "the clients did not converge")
    return result


async def sees_state(client: NodeClient, user: str) -> bool:
    states = (await client.request("states"))["states"]
    return any(state.get("user") == user for _, state in states)


def redis_pods(server: Any) -> list[AbstractAsyncContextManager[Any]]:
    from podshare.transport import RedisTransport

    return [RedisTransport(url=server.url), RedisTransport(url=server.url)]


@asynccontextmanager
async def two_pods(
    transports: list[AbstractAsyncContextManager[Any]],
) -> AsyncIterator[tuple[Pod, Pod]]:
    async with pod(transports[0], "pod-1") as p1, pod(transports[1], "pod-2") as p2:
        yield p1, p2


async def typing_session(
    c1: NodeClient, c2: NodeClient, during: Callable[[NodeClient, NodeClient], Any]
) -> None:
    """Both clients type 104 letters each (5 ms apart); ``during`` runs meanwhile."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: c1.request("type", chars=LOWER * 4, interval=5))
        tg.start_soon(lambda: c2.request("type", chars=UPPER * 4, interval=5))
        await during(c1, c2)
    final = await converged(c1, c2)
    assert final["length"] == 2 * 4 * 26
    for client in (c1, c2):
        assert (await client.request("count", set=LOWER))["count"] == 4 * 26
        assert (await client.request("count", set=UPPER))["count"] == 4 * 26


async def editors_on(
    p1: Pod, p2: Pod, during_typing: Callable[[NodeClient, NodeClient], Any]
) -> list[Any]:
    """The editing session; returns both rooms' bridge stats, taken before the clients leave."""
    async with node_client(p1.url, ROOM) as c1, node_client(p2.url, ROOM) as c2:
        await c1.event("synced")
        await c2.event("synced")
        # Awareness crosses pods, both ways.
        await c1.request("set_awareness", state={"user": "ada", "cursor": 1})
        await c2.request("set_awareness", state={"user": "grace", "cursor": 2})
        await eventually(lambda: sees_state(c2, "ada"), "ada's cursor never reached pod 2")
        await eventually(lambda: sees_state(c1, "grace"), "grace's cursor never reached pod 1")
        await typing_session(c1, c2, during_typing)
        # A 10 MB paste on one pod arrives whole on the other.
        pasted = await c1.request("paste", size=10_000_000, prefix="PASTE")
        with anyio.fail_after(TIMEOUT):
            got = await c2.request("wait_length", min=pasted["length"])
        assert (got["sha"], got["length"]) == (pasted["sha"], pasted["length"])
        stats = [p.server.rooms["/" + ROOM].bridge.stats() for p in (p1, p2)]
        # Each pod published every edit of its client once: no echoes.
        assert all(s.updates_sent <= 4 * 26 + 2 for s in stats)
        # A client that leaves is removed from the other pod's awareness.
        await c2.request("close")
        await eventually(
            lambda: _not(sees_state(c1, "grace")), "grace's cursor stayed after she left"
        )
    return stats


async def _not(check: Any) -> bool:
    return not await check


async def test_two_pods_over_redis_survive_a_restart_mid_typing(restartable_redis: Any) -> None:
    async with two_pods(redis_pods(restartable_redis)) as (p1, p2):

        async def restart_redis(c1: NodeClient, c2: NodeClient) -> None:
            async def typed_a_little() -> bool:
                mine = await c1.request("count", set=LOWER)
                theirs = await c2.request("count", set=UPPER)
                return bool(mine["count"] >= 10 and theirs["count"] >= 10)

            await eventually(typed_a_little, "the clients never started typing")
            await anyio.to_thread.run_sync(restartable_redis.restart)
            typed = await c1.request("count", set=LOWER)
            assert typed["count"] < 4 * 26, "Redis restarted after the typing: proves nothing"

        stats = await editors_on(p1, p2, restart_redis)
        # Both pods lost Redis mid-typing (the test proves nothing otherwise) and resynced.
        assert all(s.gaps >= 1 for s in stats), stats
        assert all(s.resyncs >= 1 for s in stats), stats


async def test_two_pods_over_tcp() -> None:
    from podshare.transport import TcpTransport

    async with (
        TcpTransport(node_id="tcp-1") as t1,
        TcpTransport(node_id="tcp-2", peers=[t1.address]) as t2,
    ):
        with anyio.fail_after(TIMEOUT):
            await t1.wait_connected(1)
            await t2.wait_connected(1)

        @asynccontextmanager
        async def opened(tr: Any) -> AsyncIterator[Any]:
            yield tr  # already open: the pods share the mesh built above

        async def nothing(c1: NodeClient, c2: NodeClient) -> None:
            pass

        async with two_pods([opened(t1), opened(t2)]) as (p1, p2):
            await editors_on(p1, p2, nothing)


async def test_a_client_joining_a_pod_that_must_fetch_the_room_syncs_with_its_content() -> None:
    from podshare.transport import FaultPlan, MemoryNetwork, MemoryTransport

    # 60 ms between the pods: a pod that answered its client before fetching the room
    # would hand it an empty document (the editor would then insert a template twice).
    net = MemoryNetwork()
    slow = FaultPlan(delay=(0.06, 0.06))
    transports = [
        MemoryTransport(network=net, name=name, faults=slow) for name in ("mem-1", "mem-2")
    ]
    async with two_pods(list(transports)) as (p1, p2):
        for room in range(5):
            name = f"{ROOM}/{room}"
            async with node_client(p1.url, name) as writer:
                await writer.event("synced")
                await writer.request("insert", text=f"content of room {room}")
                # Pod 2 has never opened this room: it must fetch it before it answers.
                async with node_client(p2.url, name) as reader:
                    synced = await reader.event("synced")
                    assert synced["head"] == f"content of room {room}"
