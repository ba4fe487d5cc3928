"""The Endpoint's call protocol over memory transports, with a fake in-process route table.

The route table is replaced by a shared dict and a set of live nodes, so these tests pin
the protocol (envelopes, inboxes, pending calls, concurrency, errors) independently of
the replicated store; tests/unit/test_callreply_memory.py covers the real thing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from podshare.callreply import Endpoint, EndpointStats, Handler
from podshare.callreply._envelope import Cancel, Request, decode, encode_cancel
from podshare.callreply._routes import RouteTable
from podshare.exceptions import (
    CallTimeout,
    ClosedError,
    ConfigurationError,
    DecodeError,
    EndpointBusy,
    InvalidValue,
    NoRoute,
    OwnerUnavailable,
    PodshareError,
    ProtocolError,
    RemoteError,
    TransportError,
)
from podshare.transport.memory import FaultPlan, MemoryNetwork, MemoryTransport
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
        _on_reclaim_failed: Callable[[str, PodshareError], None],
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

    async def receive_then_move(data: bytes) -> Any:
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


async def test_cancelled_caller_leaves_nothing_and_the_owner_cancels_the_handler(
    cluster: Cluster,
) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    started, cancelled = anyio.Event(), anyio.Event()

    async def slow(_payload: bytes) -> bytes:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    await a.register("t", "m", slow)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.call, "t", "m", b"")
            await started.wait()
            assert b.stats().calls_pending == 1
            assert a.stats().handlers_active == 1
            tg.cancel_scope.cancel()
        await cancelled.wait()  # the cancel envelope reached the owner
    assert b.stats().calls_pending == 0
    assert b.stats().cancels_sent == 1
    await eventually(lambda: a.stats().calls_abandoned == 1)
    stats = a.stats()
    assert (stats.cancels_applied, stats.handlers_active, stats.cancels_unmatched) == (1, 0, 0)
    assert stats.handler_errors == 0


async def test_a_reply_crossing_the_cancel_is_dropped_and_counted_late(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    await a.register("t", "m", echo)
    owner_transport = a._transport
    assert isinstance(owner_transport, MemoryTransport)
    # The owner answers at once, but its reply is slow on the wire: the caller gives up
    # while the reply is on its way, and the cancel finds nothing left to cancel.
    owner_transport.faults = FaultPlan(delay=(0.5, 0.5))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.call, "t", "m", b"")
            await eventually(lambda: owner_transport.stats().delayed == 1)
            tg.cancel_scope.cancel()
        await eventually(lambda: a.stats().cancels_unmatched == 1)
        await eventually(lambda: b.stats().replies_late == 1)
    assert a.stats().calls_abandoned == 0
    assert b.stats().calls_pending == 0


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
        {"on_error": 42},
        {"close_timeout": -1},
        {"namespace": "x" * 191},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Endpoint(**{"transport": MemoryTransport(), **options})  # type: ignore[arg-type]


async def test_register_validates_names(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    with pytest.raises(InvalidValue):
        await a.register("", "m", echo)  # a target is a route key
    with pytest.raises(InvalidValue):
        await a.register("t" * 1025, "m", echo)
    with pytest.raises(ConfigurationError):
        await a.register("t", "", echo)
    with pytest.raises(ConfigurationError):
        await a.register("t", "a#b", echo)
    assert a.targets() == frozenset()
    # call() checks the same, before anything goes out (an owner would refuse the
    # envelope and the caller would wait for its whole timeout).
    with pytest.raises(InvalidValue):
        await a.call("t" * 1025, "m", b"")
    with pytest.raises(ConfigurationError):
        await a.call("t", "m" * 1025, b"")


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


@pytest.mark.parametrize("how", ["deadline", "cancel"])
async def test_cancelled_callers_free_the_owners_slots_at_once(cluster: Cluster, how: str) -> None:
    # Issue 13: 200 callers cancelled after 50 ms kept the owner's slots until their
    # budget (here 30 s) ran out, and every new caller got EndpointBusy meanwhile.
    # "deadline": each caller runs under move_on_after(0.05), as in the issue (the budget
    # that travels with the call and the cancel envelope both stop the handler).
    # "cancel": the callers are cancelled from outside, with no deadline, so only the
    # cancel envelopes can tell the owner.
    a = await cluster.endpoint("a", max_concurrency=4)
    b = await cluster.endpoint("b", call_timeout=30)
    started = 0

    async def stuck(_payload: bytes) -> bytes:
        nonlocal started
        started += 1
        await anyio.sleep_forever()
        raise AssertionError

    await a.register("t", "stuck", stuck)
    await a.register("t", "echo", echo)
    busy = 0

    async def caller() -> None:
        nonlocal busy
        with anyio.move_on_after(0.05 if how == "deadline" else math.inf):
            try:
                await b.call("t", "stuck", b"")
            except EndpointBusy:
                busy += 1

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(caller)
            if how == "cancel":
                await eventually(lambda: started + busy == 200)
                tg.cancel_scope.cancel()
    assert started == 4
    # Under "deadline" a busy answer may come after its caller's 50 ms on a loaded
    # machine; the owner's count below is exact either way.
    assert busy == 196 if how == "cancel" else busy <= 196
    if how == "cancel":
        assert b.stats().cancels_sent == 4
        # The cancels are in a's inbox before the next request: nothing to wait for.
        assert await b.call("t", "echo", b"next", timeout=5) == b"echo:next"
        assert a.stats().cancels_applied == 4
    else:
        # Right after the cancellations, long before the 30 s budget: served, not busy.
        assert await b.call("t", "echo", b"next", timeout=5) == b"echo:next"
    if how == "cancel":
        await eventually(lambda: a.stats().requests_busy == 196)
    else:
        # A caller whose 50 ms ran out before its request left never reached the owner.
        assert a.stats().requests_busy <= 196


# --- deadlines travel with the call (issue 17) --------------------------------------


def budget_recorder() -> tuple[list[float], anyio.Event, Handler]:
    """A handler that records its budget, then waits until it is cancelled."""
    budgets: list[float] = []
    cancelled = anyio.Event()

    async def stuck(_payload: bytes) -> bytes:
        budgets.append(anyio.current_effective_deadline() - anyio.current_time())
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    return budgets, cancelled, stuck


async def test_an_enclosing_deadline_is_the_remote_handlers_budget(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")  # call_timeout: the default 5 s
    budgets, cancelled, stuck = budget_recorder()
    await a.register("t", "m", stuck)
    with pytest.raises(TimeoutError) as info, anyio.fail_after(0.3):
        await b.call("t", "m", b"")
    assert not isinstance(info.value, CallTimeout)  # the enclosing scope's own timeout
    with anyio.fail_after(5):
        await cancelled.wait()
    assert len(budgets) == 1
    assert 0 < budgets[0] <= 0.3


async def test_the_owner_stops_the_handler_at_the_budget_when_the_cancel_is_lost(
    cluster: Cluster,
) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")  # call_timeout: the default 5 s
    budgets, cancelled, stuck = budget_recorder()
    caller_transport = b._transport
    assert isinstance(caller_transport, MemoryTransport)

    async def stuck_and_deaf(payload: bytes) -> bytes:
        caller_transport.faults = FaultPlan(drop=1.0)  # the caller's cancel will be lost
        return await stuck(payload)

    await a.register("t", "m", stuck_and_deaf)
    with pytest.raises(TimeoutError), anyio.fail_after(0.3):
        await b.call("t", "m", b"")
    with anyio.fail_after(3):  # well before the 5 s default: the budget did it
        await cancelled.wait()
    assert 0 < budgets[0] <= 0.3
    assert b.stats().cancels_sent == 1
    assert caller_transport.stats().dropped >= 1
    await eventually(lambda: a.stats().calls_abandoned == 1)
    assert a.stats().cancels_applied == 0
    assert a.stats().handlers_active == 0


async def test_an_explicit_timeout_still_works_and_the_nearer_deadline_wins(
    cluster: Cluster,
) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b", call_timeout=30)
    budgets, _, stuck = budget_recorder()
    await a.register("t", "m", stuck)
    with anyio.fail_after(10), pytest.raises(CallTimeout):
        await b.call("t", "m", b"", timeout=0.2)  # the timeout is nearer
    with pytest.raises(TimeoutError) as info, anyio.fail_after(0.2):
        await b.call("t", "m", b"", timeout=10)  # the enclosing deadline is nearer
    assert not isinstance(info.value, CallTimeout)
    assert len(budgets) == 2
    assert all(0 < budget <= 0.2 for budget in budgets)


async def test_without_a_deadline_the_budget_is_call_timeout(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b", call_timeout=7)
    budgets: list[float] = []

    async def record(_payload: bytes) -> bytes:
        budgets.append(anyio.current_effective_deadline() - anyio.current_time())
        return b"ok"

    await a.register("t", "m", record)
    assert await b.call("t", "m", b"") == b"ok"
    assert 6 < budgets[0] <= 7


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "1"])
async def test_bad_timeouts_are_refused(cluster: Cluster, bad: object) -> None:
    a = await cluster.endpoint("a")
    with pytest.raises(ConfigurationError, match="timeout"):
        await a.call("t", "m", b"", timeout=bad)  # type: ignore[arg-type]


# --- cancellation (issue 13) ---------------------------------------------------------


async def test_only_the_callers_own_cancel_stops_its_call(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b", call_timeout=30)
    _, cancelled, stuck = budget_recorder()
    await a.register("t", "m", stuck)
    # Mallory reads a's inbox (as anyone can on a shared broker) and learns the call id.
    mallory = await cluster.stack.enter_async_context(
        MemoryTransport(network=cluster.net, name="mallory")
    )
    async with mallory.subscribe("cr/default#a") as spied, anyio.create_task_group() as tg:
        tg.start_soon(b.call, "t", "m", b"")
        with anyio.fail_after(5):
            request = decode(await anext(spied), max_size=1 << 20)
        assert isinstance(request, Request)
        await eventually(lambda: a.stats().handlers_active == 1)
        forged = [
            Cancel(request.call_id, "mallory"),  # the right call, the wrong caller
            Cancel(request.call_id + 1, "b"),  # the right caller, another call
        ]
        for cancel in forged:
            await mallory.publish("cr/default#a", encode_cancel(cancel))
        await eventually(lambda: a.stats().cancels_unmatched == 2)
        assert not cancelled.is_set()  # the handler still runs
        assert a.stats().cancels_applied == 0
        # The pair is what the owner checks; that anyone who knows it can send it is
        # what an authenticated transport is for.
        await mallory.publish("cr/default#a", encode_cancel(Cancel(request.call_id, "b")))
        with anyio.fail_after(5):
            await cancelled.wait()
        tg.cancel_scope.cancel()
    assert a.stats().cancels_applied == 1


async def test_a_duplicated_request_runs_its_handler_once(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    release = anyio.Event()
    runs = 0

    async def once(_payload: bytes) -> bytes:
        nonlocal runs
        runs += 1
        await release.wait()
        return b"done"

    await a.register("t", "m", once)
    caller_transport = b._transport
    assert isinstance(caller_transport, MemoryTransport)
    caller_transport.faults = FaultPlan(duplicate=1.0)
    async with anyio.create_task_group() as tg:

        async def call() -> None:
            assert await b.call("t", "m", b"") == b"done"

        tg.start_soon(call)
        await eventually(lambda: a.stats().requests_duplicate == 1)
        release.set()
    assert runs == 1


# --- on_error: errors no call receives (issue 17) -----------------------------------


async def test_undecodable_envelopes_reach_on_error(cluster: Cluster) -> None:
    errors: list[Exception] = []
    a = await cluster.endpoint("a", on_error=errors.append)
    intruder = await cluster.stack.enter_async_context(
        MemoryTransport(network=cluster.net, name="intruder")
    )
    await intruder.publish("cr/default#a", b"\xc1")
    await eventually(lambda: len(errors) == 1)
    assert isinstance(errors[0], DecodeError)
    assert a.stats().decode_errors == 1


async def test_an_async_on_error_is_awaited(cluster: Cluster) -> None:
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(exc)

    await cluster.endpoint("a", on_error=on_error)
    intruder = await cluster.stack.enter_async_context(
        MemoryTransport(network=cluster.net, name="intruder")
    )
    await intruder.publish("cr/default#a", b"\x93\x01\x00\x05")
    await eventually(lambda: len(seen) == 1)
    assert isinstance(seen[0], ProtocolError)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_on_error_that_raises_is_logged_and_the_endpoint_carries_on(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    def broken_sync(_exc: Exception) -> None:
        raise RuntimeError("on_error bug")

    async def broken_async(_exc: Exception) -> None:
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("on_error bug")

    a = await cluster.endpoint("a", on_error=broken_sync if kind == "sync" else broken_async)
    b = await cluster.endpoint("b")
    await a.register("t", "m", echo)
    intruder = await cluster.stack.enter_async_context(
        MemoryTransport(network=cluster.net, name="intruder")
    )
    with caplog.at_level(logging.ERROR, logger="podshare.callreply"):
        await intruder.publish("cr/default#a", b"junk")
        await eventually(lambda: any("on_error raised" in r.message for r in caplog.records))
    assert await b.call("t", "m", b"still here") == b"echo:still here"


async def test_a_reply_that_cannot_be_sent_is_counted_and_reported(cluster: Cluster) -> None:
    errors: list[Exception] = []
    a = await cluster.endpoint("a", on_error=errors.append)
    b = await cluster.endpoint("b")
    started, go = anyio.Event(), anyio.Event()

    async def slow(_payload: bytes) -> bytes:
        started.set()
        await go.wait()
        return b"never arrives"

    await a.register("t", "m", slow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.call, "t", "m", b"")
        await started.wait()
        cluster.net.disconnect("a")  # the reply's publish raises TransportError
        go.set()
        await eventually(lambda: a.stats().replies_failed == 1)
        tg.cancel_scope.cancel()
    assert [type(e) for e in errors] == [TransportError]


async def test_without_on_error_a_failed_reply_is_logged_as_a_warning(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    started, go = anyio.Event(), anyio.Event()

    async def slow(_payload: bytes) -> bytes:
        started.set()
        await go.wait()
        return b""

    await a.register("t", "m", slow)
    with caplog.at_level(logging.WARNING, logger="podshare.callreply"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.call, "t", "m", b"")
            await started.wait()
            cluster.net.disconnect("a")
            go.set()
            await eventually(lambda: a.stats().replies_failed == 1)
            tg.cancel_scope.cancel()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("could not send a reply to 'b'" in r.getMessage() for r in warnings)


async def test_a_handler_failing_after_its_caller_left_reaches_on_error(
    cluster: Cluster,
) -> None:
    errors: list[Exception] = []
    a = await cluster.endpoint("a", on_error=errors.append)
    b = await cluster.endpoint("b")
    started = anyio.Event()

    class CleanupFailed(Exception):
        pass

    async def fails_on_the_way_out(_payload: bytes) -> bytes:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            raise CleanupFailed("while cancelled")
        raise AssertionError

    await a.register("t", "m", fails_on_the_way_out)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.call, "t", "m", b"")
        await started.wait()
        tg.cancel_scope.cancel()
    await eventually(lambda: len(errors) == 1)
    assert isinstance(errors[0], CleanupFailed)
    stats = a.stats()
    assert (stats.handler_errors, stats.calls_abandoned, stats.handlers_active) == (1, 1, 0)
    assert b.stats().replies_late == 0  # nothing was sent back


# --- lifecycle ------------------------------------------------------------------------


async def test_a_handler_can_close_its_own_endpoint(cluster: Cluster) -> None:
    b = await cluster.endpoint("b", call_timeout=30)
    tr = await cluster.stack.enter_async_context(MemoryTransport(network=cluster.net, name="a"))
    a = FakeEndpoint(tr, node_id="a", close_timeout=30)
    a.world = cluster.world

    async def shutdown(_payload: bytes) -> bytes:
        await a.aclose()
        return b"closed"  # pragma: no cover - cancelled by the close it asked for

    with anyio.fail_after(5):  # far below close_timeout: the close does not wait on itself
        async with a:
            await a.register("t", "m", shutdown)
            with pytest.raises(OwnerUnavailable):
                await b.call("t", "m", b"")
    assert a.state == "closed"


async def test_stats_is_a_frozen_snapshot(cluster: Cluster) -> None:
    a = await cluster.endpoint("a")
    b = await cluster.endpoint("b")
    await a.register("t", "m", echo)
    before = b.stats()
    await b.call("t", "m", b"")
    assert isinstance(before, EndpointStats)
    assert (before.calls_remote, b.stats().calls_remote) == (0, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.calls_remote = 3
