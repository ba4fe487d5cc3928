"""Circuit breaker: one pod trips a breaker, every other pod backs off within milliseconds.

Shows a shared circuit breaker. Each pod checks the breaker locally before calling a
downstream service (a dict lookup, so it is cheap on every request). The first pod that
sees the service fail repeatedly opens the breaker for everyone, with a time after which
a probe may be tried. Any pod may then probe; its success closes the breaker everywhere.
Concurrent trips or probes are harmless: the breaker is last-writer-wins, and every pod
converges to the same state.

Run it with ``python examples/circuit_breaker.py``.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from podshare import Store
from podshare.transport import MemoryNetwork, MemoryTransport

FAILURES_TO_TRIP = 3
COOLDOWN = 0.2  # seconds the breaker stays open before a probe is allowed


@dataclass(frozen=True)
class Breaker:
    open: bool
    retry_at: float = 0.0  # wall-clock seconds: when a probe may be tried
    changed_by: str = ""


class CircuitOpen(Exception):
    """The breaker is open: fail fast instead of calling the service."""


class PaymentsService:
    """A stand-in for the downstream service, which we can break and repair."""

    def __init__(self) -> None:
        self.healthy = True
        self.calls = 0

    async def charge(self, amount: int) -> str:
        self.calls += 1
        await anyio.sleep(0.001)  # simulated network latency
        if not self.healthy:
            raise ConnectionError("payments: 503 Service Unavailable")
        return f"charged {amount}"


class Client:
    """One pod's client of the payments service, guarded by the shared breaker."""

    def __init__(self, breakers: Store[Breaker], service: PaymentsService) -> None:
        self.breakers = breakers
        self.service = service
        self.failures = 0

    @property
    def name(self) -> str:
        return self.breakers.node_id

    async def charge(self, amount: int) -> str:
        breaker = self.breakers.get("payments")  # local read: no network round trip
        if breaker is not None and breaker.open and time.time() < breaker.retry_at:
            raise CircuitOpen(f"payments breaker opened by {breaker.changed_by}")
        try:
            result = await self.service.charge(amount)
        except ConnectionError:
            self.failures += 1
            if self.failures >= FAILURES_TO_TRIP:
                print(f"{self.name}: {self.failures} failures in a row, opening the breaker")
                await self.breakers.set(
                    "payments", Breaker(True, time.time() + COOLDOWN, changed_by=self.name)
                )
            raise
        self.failures = 0
        if breaker is not None and breaker.open:  # this call was the probe: it worked
            print(f"{self.name}: probe succeeded, closing the breaker")
            await self.breakers.set("payments", Breaker(False, changed_by=self.name))
        return result


def is_open(store: Store[Breaker]) -> bool:
    breaker = store.get("payments")
    return breaker is not None and breaker.open


async def wait_until(store: Store[Breaker], condition: Callable[[Store[Breaker]], bool]) -> None:
    """Return once ``condition(store)`` holds, re-checking after each change to the breaker."""
    async with store.watch(key="payments") as events:
        if condition(store):
            return
        async for _ in events:
            if condition(store):
                return


async def main() -> None:
    network = MemoryNetwork()
    service = PaymentsService()
    async with (
        MemoryTransport(network=network, name="pod-1") as t1,
        MemoryTransport(network=network, name="pod-2") as t2,
        MemoryTransport(network=network, name="pod-3") as t3,
        Store[Breaker]("breakers", t1, node_id="pod-1") as b1,
        Store[Breaker]("breakers", t2, node_id="pod-2") as b2,
        Store[Breaker]("breakers", t3, node_id="pod-3") as b3,
    ):
        clients = [Client(b, service) for b in (b1, b2, b3)]
        print("pod-1:", await clients[0].charge(10))

        service.healthy = False
        print("payments goes down")
        for _ in range(FAILURES_TO_TRIP):
            try:
                await clients[0].charge(10)
            except ConnectionError as exc:
                print("pod-1: failed:", exc)

        with anyio.fail_after(5):
            for store in (b2, b3):
                await wait_until(store, is_open)
        calls_before = service.calls
        for client in clients[1:]:
            try:
                await client.charge(20)
            except CircuitOpen as exc:
                print(f"{client.name}: failing fast: {exc}")
        print("calls that reached payments while open:", service.calls - calls_before)

        service.healthy = True
        print("payments recovers; the cooldown passes")
        await anyio.sleep(COOLDOWN)  # stands for time passing in a real service
        print("pod-3:", await clients[2].charge(30))
        with anyio.fail_after(5):
            for store in (b1, b2):
                await wait_until(store, lambda s: not is_open(s))
        print("pod-1:", await clients[0].charge(40))
        print("breaker everywhere:", {b.node_id: b["payments"].open for b in (b1, b2, b3)})


if __name__ == "__main__":
    anyio.run(main)
