"""The callreply scenarios every transport passes, end to end with real route stores.

Not a test module: ``tests/unit/test_callreply_memory.py``,
``tests/integration/test_callreply_redis.py`` and ``tests/integration/test_callreply_tcp.py``
subclass `CallReplyContract` with their own `open_transport`. Each pod runs in its own
task and cancel scope, on its own transport wrapped in a `Severable`: ``crash`` severs it (nothing
in or out, as a killed process) and then cancels the pod, so even the goodbye a store
sends from a shielded scope is lost and the others see a silent pod; ``refuse_publish``
makes its publishes fail (a broken uplink) while it still receives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus

from podshare import Store
from podshare.callreply import Endpoint
from podshare.callreply._store_routes import route_store_name
from podshare.exceptions import (
    CallTimeout,
    EndpointBusy,
    NoRoute,
    OwnerUnavailable,
    RemoteError,
    TransportError,
)
from podshare.transport.base import GapReporting, Transport, max_message_size
from tests._support import echo, eventually

# Fast liveness so crashes are detected quickly; the call timeout is far longer, so a
# test that fails by timing out instead of OwnerUnavailable cannot pass by accident.
FAST = {
    "heartbeat_interval": 0.05,
    "down_after": 0.3,
    "call_timeout": 30.0,
    "route_options": {"hydrate_timeout": 0.5},
}


class Severable:
    """Wraps a transport; after :meth:`sever` nothing goes in or out (a crashed pod)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.severed = False
        #: While set, publish raises TransportError (receiving still works).
        self.refuse_publish = False
        self.max_message_size = max_message_size(inner)

    def sever(self) -> None:
        self.severed = True

    async def publish(self, topic: str, message: bytes) -> None:
        if self.refuse_publish:
            raise TransportError("publishing is refused (test)")
        if not self.severed:
            await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        @asynccontextmanager
        async def subscription() -> AsyncIterator[AsyncIterator[bytes]]:
            async with self.inner.subscribe(topic) as messages:
                yield self._filter(messages)

        return subscription()

    async def _filter(self, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for message in messages:
            if not self.severed:
                yield message

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        if isinstance(self.inner, GapReporting):
            return self.inner.add_gap_listener(listener)
        return lambda: None

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Pod:
    name: str
    endpoint: Endpoint
    transport: Severable
    scope: anyio.CancelScope
    stop_requested: anyio.Event = field(default_factory=anyio.Event)
    stopped: anyio.Event = field(default_factory=anyio.Event)

    def crash(self) -> None:
        """Die without a goodbye: severed first, so nothing it sends afterwards gets out."""
        self.transport.sever()
        self.scope.cancel()

    async def stop(self) -> None:
        """Close cleanly (the endpoint leaves the route table)."""
        self.stop_requested.set()
        with anyio.fail_after(10):
            await self.stopped.wait()


class Cluster:
    def __init__(
        self,
        tg: TaskGroup,
        open_transport: Callable[[str], AbstractAsyncContextManager[Transport]],
    ) -> None:
        self.tg = tg
        self.open_transport = open_transport
        self.pods: dict[str, Pod] = {}

    async def start(self, name: str, **options: Any) -> Endpoint:
        pod: Pod = await self.tg.start(self._run, name, {**FAST, **options})
        self.pods[name] = pod
        return pod.endpoint

    async def stop_all(self) -> None:
        for pod in self.pods.values():
            pod.stop_requested.set()
        for pod in self.pods.values():
            with anyio.fail_after(10):
                await pod.stopped.wait()

    async def _run(
        self, name: str, options: dict[str, Any], *, task_status: TaskStatus[Pod]
    ) -> None:
        try:
            with anyio.CancelScope() as scope:
                async with self.open_transport(name) as inner:
                    transport = Severable(inner)
                    async with Endpoint(transport, node_id=name, **options) as ep:
                        pod = Pod(name, ep, transport, scope)
                        task_status.started(pod)
                        await pod.stop_requested.wait()
        finally:
            if name in self.pods:
                self.pods[name].stopped.set()


class Boom(Exception):
    pass


class CallReplyContract:
    """Scenarios every transport passes; subclasses provide ``open_transport``."""

    peers_need_wiring: ClassVar[bool] = False
    #: Concurrent callers of the cancellation burst (issue 13 used 200).
    cancel_burst: ClassVar[int] = 200

    def open_transport(self, name: str) -> AbstractAsyncContextManager[Transport]:
        raise NotImplementedError

    @pytest.fixture
    async def cluster(self) -> AsyncIterator[Cluster]:
        async with anyio.create_task_group() as tg:
            cluster = Cluster(tg, self.open_transport)
            try:
                yield cluster
            finally:
                await cluster.stop_all()

    async def test_call_is_forwarded_to_the_owner(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        await a.register("user:1", "push", echo)
        await eventually(lambda: b.owner("user:1") == "a")
        assert await b.call("user:1", "push", b"hi") == b"echo:hi"
        assert b.stats().calls_remote == 1
        assert a.stats().requests_received == 1

    async def test_self_call_short_circuits(self, cluster: Cluster) -> None:
        a = await cluster.start("a")

        async def handler(payload: bytes) -> bytes:
            raise Boom(payload.decode())

        await a.register("t", "m", handler)
        assert a.owner("t") == "a"
        with pytest.raises(Boom, match="local"):
            await a.call("t", "m", b"local")
        assert a.stats().calls_local == 1
        assert a.stats().calls_remote == 0

    async def test_no_route(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        with pytest.raises(NoRoute):
            await a.call("nobody", "m", b"")

    async def test_handler_error_is_a_remote_error(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")

        async def handler(_payload: bytes) -> bytes:
            raise Boom("it broke")

        await a.register("t", "m", handler)
        await eventually(lambda: b.owner("t") == "a")
        with pytest.raises(RemoteError) as info:
            await b.call("t", "m", b"")
        assert info.value.type_name.endswith("Boom")
        assert info.value.message == "it broke"

    async def test_killed_owner_fails_pending_call_with_owner_unavailable(
        self, cluster: Cluster
    ) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        started = anyio.Event()

        async def stuck(_payload: bytes) -> bytes:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError

        await a.register("t", "m", stuck)
        await eventually(lambda: b.owner("t") == "a" and "a" in b.members())
        outcome: list[BaseException] = []

        async def caller() -> None:
            with pytest.raises(OwnerUnavailable) as info:
                await b.call("t", "m", b"")
            outcome.append(info.value)

        # Far below call_timeout (30 s): only the liveness path can end the call in time.
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await started.wait()
                cluster.pods["a"].crash()
        assert len(outcome) == 1
        assert isinstance(outcome[0], OwnerUnavailable), outcome
        assert b.stats().calls_pending == 0
        # The dead owner's route vanishes too.
        await eventually(lambda: b.owner("t") is None)
        with pytest.raises(NoRoute):
            await b.call("t", "m", b"")

    async def test_route_moves_and_stale_unregister_keeps_the_new_claim(
        self, cluster: Cluster
    ) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        c = await cluster.start("c")

        async def on_b(_payload: bytes) -> bytes:
            return b"from b"

        await a.register("t", "m", echo)
        await eventually(lambda: b.owner("t") == "a" and c.owner("t") == "a")
        await b.register("t", "m", on_b)  # the connection moved to b
        await eventually(lambda: all(ep.owner("t") == "b" for ep in (a, b, c)))
        assert await c.call("t", "m", b"") == b"from b"
        await a.unregister("t")  # the old connection closes late on a
        # a's writes arrive in order, so once c sees a's later write, it has seen
        # anything a's unregister sent.
        await a.register("barrier", "m", echo)
        await eventually(lambda: c.owner("barrier") == "a" and b.owner("barrier") == "a")
        assert c.owner("t") == "b"
        assert await c.call("t", "m", b"") == b"from b"

    async def test_racing_unregister_cannot_erase_a_newer_claim(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        c = await cluster.start("c")
        await a.register("t", "m", echo)
        await eventually(lambda: b.owner("t") == "a")

        async def on_b(_payload: bytes) -> bytes:
            return b"from b"

        # b claims and a unregisters at once: a may not have seen b's claim yet, and its
        # delete may carry the later stamp. The route must still end up on b.
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.register, "t", "m", on_b)
            tg.start_soon(a.unregister, "t")
        await eventually(lambda: all(ep.owner("t") == "b" for ep in (a, b, c)))
        assert await c.call("t", "m", b"") == b"from b"

    async def test_concurrency_limit(self, cluster: Cluster) -> None:
        a = await cluster.start("a", max_concurrency=1)
        b = await cluster.start("b")
        started, release = anyio.Event(), anyio.Event()

        async def slow(_payload: bytes) -> bytes:
            started.set()
            await release.wait()
            return b"done"

        await a.register("t", "m", slow)
        await eventually(lambda: b.owner("t") == "a")
        results: list[bytes] = []

        async def first() -> None:
            results.append(await b.call("t", "m", b""))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await started.wait()
                with pytest.raises(EndpointBusy):
                    await b.call("t", "m", b"")
                release.set()
        assert results == [b"done"]

    async def test_cancelled_caller_cancels_the_owners_handler(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        started, cancelled = anyio.Event(), anyio.Event()

        async def slow(_payload: bytes) -> bytes:
            started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
            raise AssertionError

        await a.register("t", "m", slow)
        await eventually(lambda: b.owner("t") == "a")
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(b.call, "t", "m", b"")
                await started.wait()
                tg.cancel_scope.cancel()
            await cancelled.wait()  # long before the 30 s budget: the cancel arrived
        assert b.stats().calls_pending == 0
        assert b.stats().cancels_sent == 1
        await eventually(lambda: a.stats().calls_abandoned == 1)
        assert a.stats().cancels_applied == 1
        assert a.stats().handlers_active == 0

    async def test_cancelled_callers_free_the_owners_slots_at_once(self, cluster: Cluster) -> None:
        # Issue 13: 200 callers cancelled after 50 ms kept the owner's slots for their
        # whole budget, and the owner refused everyone meanwhile. Cancelled from outside,
        # with no deadline, so only the cancel envelopes can tell the owner.
        burst = self.cancel_burst
        a = await cluster.start("a", max_concurrency=4)
        b = await cluster.start("b")
        started = 0

        async def stuck(_payload: bytes) -> bytes:
            nonlocal started
            started += 1
            await anyio.sleep_forever()
            raise AssertionError

        await a.register("t", "stuck", stuck)
        await a.register("t", "echo", echo)
        await eventually(lambda: b.owner("t") == "a")
        busy = 0

        async def caller() -> None:
            nonlocal busy
            try:
                await b.call("t", "stuck", b"")
            except EndpointBusy:
                busy += 1

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(burst):
                    tg.start_soon(caller)
                await eventually(lambda: started + busy == burst)
                tg.cancel_scope.cancel()
        assert (started, busy) == (4, burst - 4)
        # Far below the 30 s budget the stuck handlers had.
        await eventually(lambda: a.stats().cancels_applied == 4)
        assert a.stats().handlers_active == 0
        assert await b.call("t", "echo", b"next", timeout=5) == b"echo:next"

    async def test_the_callers_deadline_is_the_handlers_budget(self, cluster: Cluster) -> None:
        a = await cluster.start("a")  # call_timeout is 30 s (FAST)
        b = await cluster.start("b")
        budgets: list[float] = []
        cancelled = anyio.Event()

        async def stuck(_payload: bytes) -> bytes:
            budgets.append(anyio.current_effective_deadline() - anyio.current_time())
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()
            raise AssertionError

        await a.register("t", "m", stuck)
        await eventually(lambda: b.owner("t") == "a")
        with pytest.raises(TimeoutError), anyio.fail_after(0.3):
            await b.call("t", "m", b"")  # no timeout=: the enclosing deadline counts
        with anyio.fail_after(10):
            await cancelled.wait()
        assert len(budgets) == 1
        assert 0 < budgets[0] <= 0.3
        await eventually(lambda: a.stats().handlers_active == 0)

    async def test_a_failed_reclaim_is_counted_and_reported(self, cluster: Cluster) -> None:
        errors: list[Exception] = []
        a = await cluster.start("a", on_error=errors.append)
        await a.register("t", "m", echo)
        # Another node's delete erases a's route; a claims it again, and that claim's
        # publish fails.
        async with (
            self.open_transport("rogue") as tr,
            Store[str](route_store_name("default"), tr, node_id="rogue") as rogue,
        ):
            await eventually(lambda: rogue.get("t") == "a")
            cluster.pods["a"].transport.refuse_publish = True
            try:
                await rogue.delete("t")
                await eventually(lambda: a.stats().reclaims_failed == 1)
            finally:
                cluster.pods["a"].transport.refuse_publish = False
        assert any(isinstance(e, TransportError) for e in errors), errors

    async def test_timeout(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")

        async def stuck(_payload: bytes) -> bytes:
            await anyio.sleep_forever()
            raise AssertionError

        await a.register("t", "m", stuck)
        await eventually(lambda: b.owner("t") == "a")
        with pytest.raises(CallTimeout):
            await b.call("t", "m", b"", timeout=0.1)
        assert b.stats().calls_pending == 0
