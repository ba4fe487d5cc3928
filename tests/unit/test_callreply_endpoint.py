"""The Endpoint's call protocol over memory transports, with a fake in-process route table.

The route table is replaced by a shared dict and a set of live nodes, so these tests pin
the protocol (envelopes, inboxes, pending calls, concurrency, errors) independently of
the replicated store; tests/unit/test_callreply_memory.py covers the real thing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio
import pytest
from anyio.abc import TaskStatus

from podshare.callreply import Endpoint
from podshare.callreply._routes import RouteTable
from podshare.exceptions import (
    CallTimeout,
    ClosedError,
    ConfigurationError,
    EndpointBusy,
    NoRoute,
    OwnerUnavailable,
    RemoteError,
)
from podshare.transport.memory import MemoryNetwork, MemoryTransport
from tests._support import Held, answering, echo, eventually, raising

pytestmark = pytest.mark.anyio


class World:
    """The fake route table's shared state: routes, live nodes and down listeners."""

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.alive: set[str] = set()
        self.listeners: dict[str, Callable[[str], None]] = {}

    def down(self, node: str) -> None:
        """``node`` is declared down: its routes vanish and every endpoint is told."""
        self.alive.discard(node)
        self.listeners.pop(node, None)
        for target, owner in list(self.routes.items()):
            if owner == node:
                del self.routes[target]
        for listener in list(self.listeners.values()):
            listener(node)


class FakeRoutes:
    def __init__(self, world: World, node_id: str) -> None:
        self.world = world
        self.node_id = node_id

    def owner(self, target: str) -> str | None:
        return self.world.routes.get(target)

    def is_alive(self, node_id: str) -> bool:
        return node_id in self.world.alive

    def members(self) -> frozenset[str]:
        return frozenset(self.world.alive)

    def snapshot(self) -> dict[str, str]:
        return dict(self.world.routes)

    async def claim(self, target: str) -> None:
        await anyio.lowlevel.checkpoint()
        self.world.routes[target] = self.node_id

    async def release(self, target: str) -> None:
        await anyio.lowlevel.checkpoint()
        if self.world.routes.get(target) == self.node_id:
            del self.world.routes[target]

    async def run(
        self,
        on_down: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self.world.alive.add(self.node_id)
        self.world.listeners[self.node_id] = on_down
        task_status.started()
        await anyio.sleep_forever()


class FakeEndpoint(Endpoint):
    world: World

    def _open_routes(self) -> AbstractAsyncContextManager[RouteTable]:
        @asynccontextmanager
        async def routes() -> AsyncIterator[RouteTable]:
            try:
                yield FakeRoutes(self.world, self.node_id)
            finally:
                if self.node_id in self.world.alive:
                    self.world.down(self.node_id)  # a clean leave

        return routes()


class Cluster:
    def __init__(self, stack: AsyncExitStack, net: MemoryNetwork, world: World) -> None:
        self.stack = stack
        self.net = net
        self.world = world

    async def endpoint(self, name: str, **options: object) -> FakeEndpoint:
        tr = await self.stack.enter_async_context(MemoryTransport(network=self.net, name=name))
        ep = FakeEndpoint(tr, node_id=name, **options)  # type: ignore[arg-type]
        ep.world = self.world
        return await self.stack.enter_async_context(ep)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with AsyncExitStack() as stack:
        yield Cluster(stack, MemoryNetwork(), World())


class Boom(Exception):
    pass


async def test_call_is_forwarded_to_the_owner(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    seen: list[bytes] = []

    async def handler(payload: bytes) -> bytes:
        seen.append(payload)
        return payload.upper()

    await a.register("user:1", "push", handler)
    assert b.owner("user:1") == "a"
    assert b.routes() == {"user:1": "a"}
    assert b.members() == {"a", "b"}
    assert await b.call("user:1", "push", b"hi") == b"HI"
    assert seen == [b"hi"]
    assert b.stats().calls_remote == 1
    assert a.stats().requests_received == 1
    assert b.stats().calls_pending == 0


async def test_several_methods_per_target(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")

    async def shout(payload: bytes) -> bytes:
        return payload.upper()

    await a.register("t", "echo", echo)
    await a.register("t", "shout", shout)
    assert await b.call("t", "echo", b"x") == b"echo:x"
    assert await b.call("t", "shout", b"x") == b"X"


async def test_self_call_runs_in_process_and_keeps_the_exception(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    payload = b"the very object"
    received: list[bytes] = []

    async def handler(data: bytes) -> bytes:
        received.append(data)
        raise Boom("local")

    await a.register("t", "m", handler)
    with pytest.raises(Boom, match="local"):
        await a.call("t", "m", payload)
    assert received[0] is payload  # no serialisation on the way
    stats = a.stats()
    assert (stats.calls_local, stats.calls_remote, stats.requests_received) == (1, 0, 0)


async def test_self_call_keeps_a_handlers_timeout_error(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    await a.register("t", "m", raising(TimeoutError, "the handler's own"))
    with pytest.raises(TimeoutError, match="the handler's own") as info:
        await a.call("t", "m", b"")
    assert not isinstance(info.value, CallTimeout)


async def test_no_route(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    with pytest.raises(NoRoute):
        await a.call("nobody", "m", b"")


async def test_owner_down_at_call_time_fails_at_once(cluster: Cluster) -> None:
    a = await cluster.endpoint("a", call_timeout=60)
    await cluster.endpoint("b")
    cluster.world.routes["t"] = "b"
    cluster.world.alive.discard("b")
    with pytest.raises(OwnerUnavailable):
        await a.call("t", "m", b"")


async def test_owner_going_down_fails_the_waiting_call(cluster: Cluster) -> None:
    a = await cluster.endpoint("a", call_timeout=60)
    b = await cluster.endpoint("b")
    stuck = Held()
    await b.register("t", "m", stuck)

    async def caller() -> None:
        with pytest.raises(OwnerUnavailable):
            await a.call("t", "m", b"")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await stuck.started.wait()
            cluster.net.disconnect("b")  # b is killed: it never answers
            cluster.world.down("b")
    assert a.stats().calls_pending == 0


async def test_handler_error_becomes_remote_error(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    await a.register("t", "m", raising(Boom, "it broke"))
    with pytest.raises(RemoteError) as info:
        await b.call("t", "m", b"")
    assert info.value.type_name == f"{__name__}.Boom"
    assert info.value.message == "it broke"
    assert a.stats().handler_errors == 1


async def test_handler_returning_non_bytes_is_a_remote_type_error(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")

    async def handler(_payload: bytes) -> bytes:
        return "text"  # type: ignore[return-value]

    await a.register("t", "m", handler)
    with pytest.raises(RemoteError) as info:
        await b.call("t", "m", b"")
    assert info.value.type_name == "TypeError"


async def test_unknown_method_is_a_lookup_remote_error(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    await a.register("t", "m", echo)
    with pytest.raises(RemoteError) as info:
        await b.call("t", "other", b"")
    assert info.value.type_name == "LookupError"
    with pytest.raises(RemoteError) as local:
        await a.call("t", "other", b"")
    assert local.value.type_name == "LookupError"


async def test_route_moves_when_the_target_registers_elsewhere(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    c = await cluster.endpoint("c")
    await a.register("t", "m", echo)
    await b.register("t", "m", answering(b"b"))
    assert c.owner("t") == "b"
    assert await c.call("t", "m", b"") == b"b"
    # a's stale unregister must not erase b's newer claim.
    await a.unregister("t")
    assert c.owner("t") == "b"
    assert await a.call("t", "m", b"") == b"b"


async def test_stale_route_is_noroute_without_running_anything(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    cluster.world.routes["t"] = "a"  # a route a never registered (a stale replica)
    with pytest.raises(NoRoute):
        await b.call("t", "m", b"")
    assert a.stats().requests_unroutable == 1


async def test_stale_route_is_retried_once_on_the_new_owner(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    c = await cluster.endpoint("c")
    await c.register("t", "m", echo)
    # b's view is stale: it still routes t to a, which has no handler; a's NO_TARGET
    # answer arrives after b has learnt the new route.
    cluster.world.routes["t"] = "a"
    original = a._receive

    async def receive_then_move(data: bytes):  # type: ignore[no-untyped-def]
        cluster.world.routes["t"] = "c"
        return await original(data)

    a._receive = receive_then_move  # type: ignore[method-assign]
    assert await b.call("t", "m", b"x") == b"echo:x"


async def test_concurrency_limit_answers_busy(cluster: Cluster) -> None:
    a = await cluster.endpoint("a", max_concurrency=1)
    b = await cluster.endpoint("b")
    slow = Held(b"done")
    await a.register("t", "m", slow)
    results: list[bytes] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                results.append(await b.call("t", "m", b""))

            tg.start_soon(first)
            await slow.started.wait()
            with pytest.raises(EndpointBusy):
                await b.call("t", "m", b"")
            with pytest.raises(EndpointBusy):
                await a.call("t", "m", b"")  # a self-call counts too
            slow.release()
    assert results == [b"done"]
    assert a.stats().requests_busy == 1
    assert a.stats().handlers_active == 0


async def test_cancelled_caller_leaves_nothing_and_late_reply_is_counted(
    cluster: Cluster,
) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    slow = Held(b"late")
    await a.register("t", "m", slow)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.call, "t", "m", b"")
            await slow.started.wait()
            assert b.stats().calls_pending == 1
            tg.cancel_scope.cancel()
    assert b.stats().calls_pending == 0
    slow.release()
    await eventually(lambda: b.stats().replies_late == 1, timeout=5)


async def test_timeout_raises_call_timeout_and_stops_the_handler(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    stuck = Held()
    await a.register("t", "m", stuck)
    with pytest.raises(CallTimeout) as info:
        await b.call("t", "m", b"", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert b.stats().calls_pending == 0
    # The owner gives the handler the caller's budget, then cancels it.
    await eventually(lambda: a.stats().handlers_active == 0, timeout=5)
    assert stuck.cancelled.is_set()
    with pytest.raises(CallTimeout):
        await a.call("t", "m", b"", timeout=0.01)


async def test_garbage_in_the_inbox_is_counted_and_skipped(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    await a.register("t", "m", echo)
    tr = MemoryTransport(network=cluster.net, name="attacker")
    async with tr:
        for junk in (b"", b"\xc1", b"\x93\x01\x00\x05", b"\xdb\xff\xff\xff\xff"):
            await tr.publish("cr/default#a", junk)
    await eventually(lambda: a.stats().decode_errors == 4, timeout=5)
    assert await b.call("t", "m", b"still") == b"echo:still"


async def test_namespaces_are_separate(cluster: Cluster) -> None:
    a = await cluster.endpoint("a", namespace="one")
    b = await cluster.endpoint("b", namespace="two")
    assert a.namespace == "one"
    await a.register("t", "m", echo)
    # The fake world is shared, so b sees the route, but a's inbox is another topic.
    with pytest.raises(CallTimeout):
        await b.call("t", "m", b"", timeout=0.05)


async def test_closing_cancels_handlers_and_tells_the_caller(cluster: Cluster) -> None:
    b = await cluster.endpoint("b", call_timeout=60)
    tr = await cluster.stack.enter_async_context(MemoryTransport(network=cluster.net, name="a"))
    a = FakeEndpoint(tr, node_id="a")
    a.world = cluster.world
    stuck = Held()

    async def caller() -> None:
        with pytest.raises(OwnerUnavailable):
            await b.call("t", "m", b"")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            async with a:
                await a.register("t", "m", stuck)
                tg.start_soon(caller)
                await stuck.started.wait()
            assert stuck.cancelled.is_set()
    with pytest.raises(ClosedError):
        await a.call("t", "m", b"")


async def test_closing_fails_local_waiting_calls(cluster: Cluster) -> None:
    await cluster.endpoint("b")
    cluster.net.disconnect("b")  # b never answers
    tr = await cluster.stack.enter_async_context(MemoryTransport(network=cluster.net, name="a"))
    a = FakeEndpoint(tr, node_id="a", call_timeout=60)
    a.world = cluster.world
    cluster.world.routes["t"] = "b"
    closed = False

    async def caller() -> None:
        nonlocal closed
        with pytest.raises(ClosedError):
            await a.call("t", "m", b"")
        closed = True

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg, a:
            tg.start_soon(caller)
            await eventually(lambda: a.stats().calls_pending == 1, timeout=5)
    assert closed


@pytest.mark.parametrize(
    "options",
    [
        {"node_id": ""},
        {"node_id": "a#b"},
        {"namespace": "x" * 201},
        {"call_timeout": 0},
        {"call_timeout": float("inf")},
        {"max_concurrency": 0},
        {"max_concurrency": True},
        {"transport": object()},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Endpoint(**{"transport": MemoryTransport(), **options})  # type: ignore[arg-type]


async def test_register_validates_names(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    with pytest.raises(ConfigurationError):
        await a.register("", "m", echo)
    with pytest.raises(ConfigurationError):
        await a.register("t", "", echo)
    assert a.targets() == frozenset()


async def test_unopened_endpoint_is_closed() -> None:
    ep = Endpoint(MemoryTransport(), node_id="x")
    with pytest.raises(ClosedError):
        ep.owner("t")


async def test_a_blocked_handler_does_not_stop_the_inbox(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    gate = Held(b"through")

    async def open_gate(_payload: bytes) -> bytes:
        gate.release()
        return b"opened"

    await a.register("t", "wait", gate)
    await a.register("t", "open", open_gate)
    results: dict[str, bytes] = {}

    async def call(method: str) -> None:
        results[method] = await b.call("t", method, b"")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "wait")
            await eventually(lambda: a.stats().handlers_active == 1, timeout=5)
            tg.start_soon(call, "open")
    assert results == {"wait": b"through", "open": b"opened"}


async def test_many_concurrent_calls_are_all_served(cluster: Cluster) -> None:
    a = await cluster.endpoint("a", max_concurrency=64)
    b = await cluster.endpoint("b")
    running = 0
    peak = 0

    async def handler(payload: bytes) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        running -= 1
        return payload

    await a.register("t", "m", handler)
    results: list[bytes] = []

    async def call(i: int) -> None:
        results.append(await b.call("t", "m", str(i).encode()))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(call, i)
    assert sorted(results) == sorted(str(i).encode() for i in range(50))
    assert 1 < peak <= 64
    assert a.stats().handlers_active == 0
