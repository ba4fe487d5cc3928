"""Two pods sharing maps through a local Redis.

Shows podshare across a broker: each pod has its own ``RedisTransport`` (its own Redis
connections), exactly as two processes would. A plain last-writer-wins map carries a
setting; a ``PNCounter`` map adds up increments made concurrently on both pods. Redis only
relays messages (pub/sub): the state lives in the replicas.

Needs a Redis server and the ``redis`` extra (``pip install "podshare[redis]"``).
Run it with ``python examples/redis.py``; set ``PODSHARE_REDIS_URL`` to use another
server than ``redis://127.0.0.1:6379/0``.
"""

import os
import sys

# This script is named redis.py and Python puts its folder first on the import path, so
# `import redis` (inside podshare) would find this file instead of redis-py: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import anyio  # noqa: E402

from podshare import Store, TransportError  # noqa: E402
from podshare.crdt import PNCounter  # noqa: E402
from podshare.transport import RedisTransport  # noqa: E402

REDIS_URL = os.environ.get("PODSHARE_REDIS_URL", "redis://127.0.0.1:6379/0")


async def main() -> None:
    async with (
        RedisTransport(REDIS_URL) as transport_1,
        RedisTransport(REDIS_URL) as transport_2,
        Store[str]("settings", transport_1, node_id="pod-1") as settings_1,
        Store[str]("settings", transport_2, node_id="pod-2") as settings_2,
        Store[PNCounter]("hits", transport_1, node_id="pod-1") as hits_1,
        Store[PNCounter]("hits", transport_2, node_id="pod-2") as hits_2,
    ):
        print(f"two pods on {REDIS_URL}")

        # A last-writer-wins value: pod-2 reacts to pod-1's write.
        async with settings_2.watch(key="motd") as events:
            await settings_1.set("motd", "maintenance at 22:00")
            print("pod-1 set  motd")
            with anyio.fail_after(5):
                async for event in events:
                    print(f"pod-2 saw  motd = {event.value!r} (from {event.origin})")
                    break

        # A merging value: concurrent increments on both pods add up instead of one
        # overwriting the other. Each pod counts under its own node id.
        async with hits_1.watch(key="home") as counts:
            await hits_1.update("home", lambda c: c.increment(hits_1.node_id, 3))
            await hits_2.update("home", lambda c: c.increment(hits_2.node_id, 4))
            with anyio.fail_after(5):
                async for change in counts:
                    if change.value is not None and change.value.value == 7:
                        break
        print("pod-1 reads hits =", hits_1["home"].value)
        with anyio.fail_after(5):
            async with hits_2.watch(key="home") as counts:
                # pod-2 may already have both increments; if not, its next event brings them.
                if hits_2["home"].value != 7:
                    async for change in counts:
                        if change.value is not None and change.value.value == 7:
                            break
        print("pod-2 reads hits =", hits_2["home"].value)
        print("converged:", hits_1.snapshot() == hits_2.snapshot())


if __name__ == "__main__":
    try:
        anyio.run(main, backend="asyncio")  # redis-py is asyncio-only
    except TransportError as exc:
        sys.exit(f"cannot use Redis at {REDIS_URL}: {exc}")
