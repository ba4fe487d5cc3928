"""After any run of joins, clean leaves, crashes, registers and unregisters, every live
pod's route table (a store of ephemeral entries) converges to the same routes: exactly
the newest claim of each target whose owner is still alive.

Each claim or release is awaited until every live pod has seen it, so that "newest" is
the causal order the model assumes.

Pods are real endpoints on a MemoryNetwork with fast heartbeats; each example takes a
fraction of a second of wall time, so the number of examples is kept small.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from podshare.transport.base import Transport
from podshare.transport.memory import MemoryNetwork, MemoryTransport
from tests._callreply import Cluster
from tests._support import echo, eventually

pytestmark = pytest.mark.anyio

OPTIONS: dict[str, Any] = {
    "heartbeat_interval": 0.05,
    "down_after": 0.4,
    "route_options": {"hydrate_timeout": 0.5, "anti_entropy_interval": 0.5},
}
TARGETS = [f"user:{i}" for i in range(4)]

pods_index = st.integers(min_value=0, max_value=7)
register = st.tuples(st.just("register"), pods_index, st.sampled_from(TARGETS))
operations = st.lists(
    st.one_of(
        register,
        st.tuples(st.just("crash"), pods_index),
        st.tuples(st.just("leave"), pods_index),
        st.tuples(st.just("join")),
        st.tuples(st.just("unregister"), pods_index, st.sampled_from(TARGETS)),
    ),
    min_size=2,
    max_size=12,
)


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first_pods=st.integers(min_value=2, max_value=4), ops=operations)
# Always run once: an owner crashes, another leaves, a newcomer hydrates, claims move.
@example(
    first_pods=3,
    ops=[
        ("register", 0, "user:0"),
        ("register", 1, "user:1"),
        ("register", 2, "user:2"),
        ("crash", 0),
        ("leave", 0),
        ("join",),
        ("register", 0, "user:1"),
        ("register", 1, "user:3"),
        ("unregister", 1, "user:3"),
    ],
)
async def test_live_pods_converge_on_the_live_owners_newest_claims(
    first_pods: int, ops: list[tuple[Any, ...]]
) -> None:
    network = MemoryNetwork()

    def open_transport(name: str) -> AbstractAsyncContextManager[Transport]:
        return MemoryTransport(network=network, name=name)

    expected: dict[str, str] = {}  # the model: target -> newest live claimer
    live: list[str] = []
    names = iter(f"pod{i}" for i in range(100))
    async with anyio.create_task_group() as tg:
        cluster = Cluster(tg, open_transport)

        async def everywhere(target: str, owner: str | None) -> None:
            # "Newer" means causally after: the next operation starts once every live pod
            # saw this one. (Two claims made within one millisecond by pods that have not
            # heard of each other are concurrent; the higher node id wins, as in any LWW.)
            await eventually(
                lambda: all(cluster.pods[n].endpoint.routes().get(target) == owner for n in live)
            )

        async def join() -> None:
            name = next(names)
            await cluster.start(name, **OPTIONS)
            live.append(name)

        try:
            for _ in range(first_pods):
                await join()
            for op in ops:
                kind = op[0]
                if kind == "join":
                    await join()
                    continue
                if not live:
                    continue
                name = live[op[1] % len(live)]
                endpoint = cluster.pods[name].endpoint
                if kind in ("leave", "crash"):
                    live.remove(name)
                    for target in [t for t, owner in expected.items() if owner == name]:
                        del expected[target]
                    if kind == "crash":
                        cluster.pods[name].crash()
                    else:
                        await cluster.pods[name].stop()
                elif kind == "register":
                    await endpoint.register(op[2], "m", echo)
                    expected[op[2]] = name
                    await everywhere(op[2], name)
                else:
                    await endpoint.unregister(op[2])
                    if expected.get(op[2]) == name:
                        del expected[op[2]]
                        await everywhere(op[2], None)
            if not live:
                await join()

            def converged() -> bool:
                return all(cluster.pods[name].endpoint.routes() == expected for name in live)

            await eventually(converged)
        finally:
            await cluster.stop_all()
