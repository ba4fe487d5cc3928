"""Session affinity: "user X lives on pod-3", known to every pod, forgotten when pod-3 dies.

Shows sticky sessions without a sticky load balancer. Any pod can receive a request
(the ingress); it reads the user's pod from the replicated affinity map (a local dict
lookup) and forwards the request there. A user without a pod gets one chosen by
rendezvous hashing over the live pods; that pod claims the user with an *ephemeral*
entry, so when it dies its users are released everywhere and re-assigned on their next
request, while everybody else stays where their session state is.

Run it with ``python examples/session_affinity.py``.
"""

import hashlib
import logging
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from podshare import Store
from podshare.transport import MemoryNetwork, MemoryTransport

PODS = ("pod-1", "pod-2", "pod-3")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
# Short timings so the demo is quick; the defaults are 1 s and 5 s.
HEARTBEAT_INTERVAL = 0.1
DOWN_AFTER = 0.5


def pick_pod(store: Store[str], user: str) -> str:
    """The user's sticky pod if it is alive, else a live pod chosen by rendezvous hashing."""
    live = store.members()
    owner = store.get(f"user:{user}")
    if owner is not None and owner in live:
        return owner
    return max(sorted(live), key=lambda pod: hashlib.sha256(f"{pod}/{user}".encode()).digest())


class Pod:
    """An application pod: it keeps session state for the users it serves."""

    def __init__(self, affinity: Store[str]) -> None:
        self.affinity = affinity
        self.sessions: dict[str, int] = {}  # user -> requests served here

    async def serve(self, user: str) -> None:
        if self.affinity.get(f"user:{user}") != self.affinity.node_id:
            # Claim the user: sticky from now on, and released if this pod dies.
            await self.affinity.set(f"user:{user}", self.affinity.node_id, ephemeral=True)
        self.sessions[user] = self.sessions.get(user, 0) + 1


async def run_pod(
    name: str, network: MemoryNetwork, scope: anyio.CancelScope, *, task_status: TaskStatus[Pod]
) -> None:
    async with MemoryTransport(network=network, name=name) as transport:
        with scope:
            async with Store[str](
                "affinity",
                transport,
                node_id=name,
                heartbeat_interval=HEARTBEAT_INTERVAL,
                down_after=DOWN_AFTER,
            ) as affinity:
                task_status.started(Pod(affinity))
                await anyio.sleep_forever()  # serving requests


async def wait_until(store: Store[str], condition: Callable[[Store[str]], bool]) -> None:
    """Return once ``condition(store)`` holds, re-checking after each change or membership
    event of ``store``."""
    async with store.watch(members=True) as events:
        if condition(store):
            return
        async for _ in events:
            if condition(store):
                return


async def main() -> None:
    network = MemoryNetwork()
    scopes = {name: anyio.CancelScope() for name in PODS}
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            pods = {name: await tg.start(run_pod, name, network, scopes[name]) for name in PODS}
            ingress_1, ingress_2 = pods["pod-1"].affinity, pods["pod-2"].affinity
            for store in (ingress_1, ingress_2):
                await wait_until(store, lambda s: len(s.members()) == len(PODS))

            print("first requests arrive at pod-1:")
            for user in USERS:
                target = pick_pod(ingress_1, user)
                await pods[target].serve(user)
                print(f"  {user:6} -> {target}")

            # pod-2's replica learns every claim; its routing agrees with pod-1's.
            await wait_until(ingress_2, lambda s: len(s) == len(USERS))
            moved = [u for u in USERS if pick_pod(ingress_2, u) != pick_pod(ingress_1, u)]
            print("later requests arrive at pod-2; users routed elsewhere:", moved or "none")

            stranded = sorted(u for u in USERS if ingress_1.get(f"user:{u}") == "pod-3")
            print(f"pod-3 crashes, taking the sessions of {', '.join(stranded)}")
            network.disconnect("pod-3")
            scopes["pod-3"].cancel()
            await wait_until(ingress_1, lambda s: "pod-3" not in s.snapshot().values())
            print("pod-1 sees pod-3's claims released; the next requests re-assign:")
            placed: dict[str, str] = {}
            for user in USERS:
                placed[user] = target = pick_pod(ingress_1, user)
                await pods[target].serve(user)
                note = "(re-assigned)" if user in stranded else "(sticky)"
                print(f"  {user:6} -> {target} {note}")
            for store in (ingress_1, ingress_2):
                await wait_until(
                    store, lambda s: all(s.get(f"user:{u}") == p for u, p in placed.items())
                )
            print("pod-1 and pod-2 agree on every user's pod")
            for scope in scopes.values():
                scope.cancel()  # shut the remaining pods down


if __name__ == "__main__":
    # podshare logs through stdlib logging; the crashed pod's store warns that it could
    # not publish its goodbye.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(main)
