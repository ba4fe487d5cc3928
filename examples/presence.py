"""Presence: a "who is online" registry whose entries vanish when their pod dies.

Shows ephemeral entries: each pod writes ``user:<name> -> pod`` with
``set(..., ephemeral=True)``, which ties the entry to the pod's liveness. A pod that
leaves cleanly takes its users with it at once; a pod that crashes or loses its network
stops heartbeating, and once it is silent for ``down_after`` every other replica removes
its users (each removal is a ``DELETE`` event whose origin is the dead pod).

Run it with ``python examples/presence.py``.
"""

import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from podshare import EventKind, Store
from podshare.transport import MemoryNetwork, MemoryTransport

# Short timings so the demo is quick; the defaults are 1 s and 5 s.
HEARTBEAT_INTERVAL = 0.1
DOWN_AFTER = 0.5


async def run_pod(
    name: str,
    network: MemoryNetwork,
    users: list[str],
    scope: anyio.CancelScope,
    *,
    task_status: TaskStatus[Store[str]],
) -> None:
    """A pod: its users are online while it lives (until ``scope`` is cancelled)."""
    async with MemoryTransport(network=network, name=name) as transport:
        with scope:
            async with Store[str](
                "presence",
                transport,
                node_id=name,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                down_after=DOWN_AFTER,
            ) as online:
                for user in users:
                    await online.set(f"user:{user}", name, ephemeral=True)
                task_status.started(online)
                await anyio.sleep_forever()  # serving its users' connections


async def wait_until(store: Store[str], condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds, re-checking after each change to ``store``."""
    async with store.watch() as events:
        if condition():
            return
        async for _ in events:
            if condition():
                return


def who(store: Store[str]) -> str:
    return ", ".join(f"{key[5:]}@{pod}" for key, pod in sorted(store.items()))


async def main() -> None:
    network = MemoryNetwork()
    scopes = {name: anyio.CancelScope() for name in ("pod-a", "pod-b", "pod-c")}
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            a = await tg.start(run_pod, "pod-a", network, ["alice", "bob"], scopes["pod-a"])
            b = await tg.start(run_pod, "pod-b", network, ["carol"], scopes["pod-b"])
            await tg.start(run_pod, "pod-c", network, ["dave", "erin"], scopes["pod-c"])
            await wait_until(a, lambda: len(a) == 5)
            await wait_until(b, lambda: len(b) == 5)
            print("online, seen from pod-a:", who(a))

            async with a.watch(prefix="user:") as events:
                # pod-c crashes: its network goes first, so it cannot say goodbye.
                network.disconnect("pod-c")
                scopes["pod-c"].cancel()
                crashed_at = anyio.current_time()
                print(f"pod-c crashed (down_after={DOWN_AFTER}s)")
                gone = 0
                async for event in events:
                    if event.kind is EventKind.DELETE:
                        after = anyio.current_time() - crashed_at
                        print(
                            f"pod-a: {event.key[5:]} went offline {after:.1f}s later "
                            f"(owner {event.origin} is down)"
                        )
                        gone += 1
                        if gone == 2:
                            break
            await wait_until(b, lambda: len(b) == 3)
            print("online, seen from pod-a:", who(a))
            print("online, seen from pod-b:", who(b))

            # pod-b shuts down cleanly: its goodbye removes carol at once.
            scopes["pod-b"].cancel()
            await wait_until(a, lambda: "user:carol" not in a)
            print("pod-b left; online, seen from pod-a:", who(a))
            scopes["pod-a"].cancel()


if __name__ == "__main__":
    # podshare logs through stdlib logging; the crashed pod's store warns that it could
    # not publish its goodbye.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(main)
