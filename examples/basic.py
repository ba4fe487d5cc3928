"""Basic podshare: one map, three replicas, in one process.

Shows the core pattern: a typed ``Store`` per pod, writes that every replica sees,
local reads, ``watch`` to react to changes, and a late replica that hydrates from its
peers. The in-memory transport links the replicas, so nothing else is needed.

Run it with ``python examples/basic.py``.
"""

from dataclasses import dataclass

import anyio

from podshare import Store
from podshare.transport import MemoryTransport


@dataclass(frozen=True)
class Config:
    rate_limit: int
    dark_mode: bool = False


async def main() -> None:
    # Swap MemoryTransport for RedisTransport or TcpTransport to span processes;
    # nothing else changes.
    async with (
        MemoryTransport() as transport,
        Store[Config]("app-config", transport, node_id="pod-a") as pod_a,
        Store[Config]("app-config", transport, node_id="pod-b") as pod_b,
    ):
        # Watch on pod-b before writing on pod-a, so the event cannot be missed.
        async with pod_b.watch(key="global") as events:
            await pod_a.set("global", Config(rate_limit=1000))
            print("pod-a set   global =", pod_a.get("global"))
            with anyio.fail_after(5):
                async for event in events:
                    print(f"pod-b saw   {event.kind.value} {event.key} (from {event.origin})")
                    break

        # Reads are local and synchronous: about one dict lookup.
        config = pod_b["global"]
        print("pod-b reads rate_limit =", config.rate_limit, "| keys:", sorted(pod_b.keys()))

        # A replica that joins later hydrates from its peers before `async with` returns.
        async with Store[Config]("app-config", transport, node_id="pod-c") as pod_c:
            print("pod-c joined and reads global =", pod_c.get("global"))

            # A delete on any pod removes the key everywhere.
            async with pod_c.watch(key="global") as events:
                await pod_a.delete("global")
                with anyio.fail_after(5):
                    async for event in events:
                        print(f"pod-c saw   {event.kind.value} {event.key}")
                        break
            print("converged:", pod_a.snapshot() == pod_b.snapshot() == pod_c.snapshot() == {})


if __name__ == "__main__":
    anyio.run(main)  # or anyio.run(main, backend="trio")
