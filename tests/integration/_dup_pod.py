"""A pod for test_duplicate_ids.py: ``python _dup_pod.py redis|tcp ARG TAG``.

Opens store "dup" as node id "dup-node" (the same in every process started by the
test), writes ``KEYS`` keys named after ``TAG``, waits until it also holds the other
process's keys (``PEER_TAG``), then prints one JSON line: the keys it holds, its
``duplicate_node_ids`` counter and whether ``on_error`` received ``DuplicateNodeId``.
For "redis", ARG is ``URL PREFIX``; for "tcp", ARG is ``LISTEN_PORT PEER_PORT``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from podshare import Store
from podshare.exceptions import DuplicateNodeId, PodshareError

KEYS = 50


async def main(kind: str, a: str, b: str, tag: str, peer_tag: str) -> None:
    reports: list[str] = []
    reported = anyio.Event()

    def on_error(exc: PodshareError) -> None:
        if isinstance(exc, DuplicateNodeId):
            reports.append(str(exc))
            reported.set()

    transport: Any
    if kind == "redis":
        from podshare.transport import RedisTransport

        transport = RedisTransport(a, channel_prefix=b)
    else:
        from podshare.transport import TcpTransport

        peers = [f"127.0.0.1:{b}"] if b != "-" else []
        transport = TcpTransport(listen=f"127.0.0.1:{a}", peers=peers)
    want = {f"{t}-{i}" for t in (tag, peer_tag) for i in range(KEYS)}
    async with transport:
        store: Store[int] = Store(
            "dup",
            transport,
            node_id="dup-node",
            type=int,
            on_error=on_error,
            persistence=False,
            hydrate_timeout=2.0,
        )
        async with store, store.watch(buffer=4 * KEYS) as events:
            for i in range(KEYS):
                await store.set(f"{tag}-{i}", i)
            try:
                with anyio.fail_after(30):
                    if not want <= set(store.keys()):
                        async for _ in events:
                            if want <= set(store.keys()):
                                break
                    if not want <= set(store.keys()):
                        raise RuntimeError("the watch ended before every key arrived")
                    await reported.wait()
            except TimeoutError:
                missing = sorted(want - set(store.keys()))
                print(f"timed out: missing {missing}, reported {reports[:1]}", file=sys.stderr)
                print(f"stats {store.stats()}", file=sys.stderr)
                raise
            print(
                json.dumps(
                    {
                        "keys": sorted(store.keys()),
                        "duplicates": store.stats().duplicate_node_ids,
                        "reported": reports[:1],
                        "refused": store.stats().writes_refused,
                        "stale": store.stats().writes_stale,
                    }
                ),
                flush=True,
            )
            # Stay until the test closes stdin, once both processes have printed.
            await anyio.to_thread.run_sync(sys.stdin.readline)


if __name__ == "__main__":
    kind, a, b, tag, peer_tag = sys.argv[1:6]
    anyio.run(main, kind, a, b, tag, peer_tag)
