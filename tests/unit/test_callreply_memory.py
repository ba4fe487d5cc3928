"""callreply end to end over memory transports: real route stores, pods that crash.

The scenarios every transport passes come from `tests._callreply.CallReplyContract`;
the ones here need the memory network's faults (disconnect, partition).
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager

import anyio
import pytest

from podshare.exceptions import OwnerUnavailable
from podshare.transport.base import Transport
from podshare.transport.memory import MemoryNetwork, MemoryTransport
from tests._callreply import CallReplyContract, Cluster
from tests._support import Held, answering, echo, eventually

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
        slow = Held()
        await a.register("t", "slow", slow)

        async def caller() -> None:
            with pytest.raises(OwnerUnavailable):
                await b.call("t", "slow", b"")

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(caller)
                await slow.started.wait()
                self.network.disconnect("a")  # the pod lives on, unreachable

    async def test_delete_that_wins_over_a_newer_claim_is_healed(self, cluster: Cluster) -> None:
        a = await cluster.start("a")
        b = await cluster.start("b")
        c = await cluster.start("c")
        await a.register("t", "m", echo)
        await eventually(lambda: b.owner("t") == "a" and c.owner("t") == "a")
        # a cannot see b's claim, and its delete gets the later stamp: last-writer-wins
        # alone would erase the route b holds.
        self.network.partition(["a"], ["b", "c"])
        await b.register("t", "m", answering(b"from b"))
        claimed_at = time.time()
        # Not synchronisation: the wall clock must move on so a's stamp is the later one.
        await eventually(lambda: time.time() > claimed_at + 0.003, what="3 ms of wall time")
        await a.unregister("t")
        assert a.owner("t") is None
        self.network.heal()  # both sides refresh and exchange what they missed
        await eventually(lambda: all(ep.owner("t") == "b" for ep in (a, b, c)))
        assert await a.call("t", "m", b"") == b"from b"
