"""Feature flags: an operator pod sets flags, every worker pod reacts through ``watch``.

Shows the first pattern of podshare: configuration written on one pod and seen by every
other pod within milliseconds. Workers read flags locally on every request (a dict
lookup, no network), and watch the map to react when a flag changes (warm a cache, log,
reconfigure). Each pod gets its own transport on a shared ``MemoryNetwork``, as separate
processes would on Redis or TCP.

Run it with ``python examples/feature_flags.py``.
"""

from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from podshare import EventKind, Store
from podshare.transport import MemoryNetwork, MemoryTransport


@dataclass(frozen=True)
class Flag:
    enabled: bool
    rollout_percent: int = 100


OFF = Flag(enabled=False)
# How many changes the operator makes below; each worker stops after seeing them all.
CHANGES = 3


def handle_request(flags: Store[Flag], user_id: int) -> str:
    """What a worker does per request: read the flag locally, no network round trip."""
    flag = flags.get("new-checkout", OFF) or OFF
    if flag.enabled and user_id % 100 < flag.rollout_percent:
        return "new checkout"
    return "old checkout"


async def worker(name: str, network: MemoryNetwork, *, task_status: TaskStatus[None]) -> None:
    async with (
        MemoryTransport(network=network, name=name) as transport,
        Store[Flag]("flags", transport, node_id=name) as flags,
        flags.watch() as events,
    ):
        task_status.started()  # watching: no change from now on can be missed
        seen = 0
        async for event in events:
            if event.kind is EventKind.SET:
                print(f"{name}: {event.key} -> {event.value} (set by {event.origin})")
            else:
                print(f"{name}: {event.key} removed, back to the default")
            print(f"{name}:   user 7 now gets the {handle_request(flags, 7)}")
            seen += 1
            if seen == CHANGES:
                return


async def main() -> None:
    network = MemoryNetwork()
    with anyio.fail_after(10):  # a bound for the demo: the workers end after CHANGES events
        async with (
            MemoryTransport(network=network, name="operator") as transport,
            Store[Flag]("flags", transport, node_id="operator") as flags,
            anyio.create_task_group() as workers,
        ):
            for n in (1, 2, 3):
                await workers.start(worker, f"worker-{n}", network)

            print("operator: roll new-checkout out to 10% of users")
            await flags.set("new-checkout", Flag(enabled=True, rollout_percent=10))
            print("operator: turn dark-mode on")
            await flags.set("dark-mode", Flag(enabled=True))
            print("operator: roll new-checkout back")
            await flags.delete("new-checkout")
    print("every worker saw every change")


if __name__ == "__main__":
    anyio.run(main)
