"""callreply end to end over the memory transport: real route stores, pods that crash."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from podshare.exceptions import OwnerUnavailable
from podshare.transport.base import Transport
from podshare.transport.memory import MemoryNetwork, MemoryTransport
from tests.integration._callreply_contract import CallReplyContract, Cluster, echo, eventually

pytestmark = pytest.mark.anyio


class TestMemory(CallReplyContract):
    """Every pod on its own MemoryTransport of one MemoryNetwork."""

    @pytest.fixture(autouse=True)
    def _network(self) -> None:
        self.network = MemoryNetwork()

    def open_transport(self, name: str) -> AbstractAsyncContextManager[Transport]:
        return MemoryTransport(network=self.network, name=name)

    async def test_disconnected_owner_is_unavailable(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        await a.register("t", "m", echo)
        await eventually(lambda: b.owner("t") == "a")
        started = anyio.Event()
        outcome: list[BaseException] = []

        async def slow(payload: bytes) -> bytes:
            started.set()
            await anyio.sleep_forever()
            raise AssertionError

        await a.register("t", "slow", slow)

        async def caller() -> None:
            try:
                await b.call("t", "slow", b"")
            except Exception as exc:
                outcome.append(exc)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await started.wait()
                self.network.disconnect("a")  # the pod lives on, unreachable
        assert isinstance(outcome[0], OwnerUnavailable), outcome

    async def test_delete_that_wins_over_a_newer_claim_is_healed(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        c = await cluster.start("c")

        async def on_b(payload: bytes) -> bytes:
            return b"from b"

        await a.register("t", "m", echo)
        await eventually(lambda: b.owner("t") == "a" and c.owner("t") == "a")
        # a cannot see b's claim, and its delete gets the later stamp: last-writer-wins
        # alone would erase the route b holds.
        self.network.partition(["a"], ["b", "c"])
        await b.register("t", "m", on_b)
        claimed_at = time.time()
        # Not synchronisation: the wall clock must move on so a's stamp is the later one.
        while time.time() < claimed_at + 0.003:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        await a.unregister("t")
        assert a.owner("t") is None
        self.network.heal()  # both sides refresh and exchange what they missed
        await eventually(lambda: all(ep.owner("t") == "b" for ep in (a, b, c)))
        assert await a.call("t", "m", b"") == b"from b"
