"""Yjs bridge benchmark: bytes on the transport per edit, and cross-pod edit latency.

Run: ``python benchmarks/bench_yjs_bridge.py [--edits N] [--pods N] [--no-redis]``.

1. Bytes per edit. One pod types ``--edits`` characters, one transaction each, in a
   room of ``--pods`` pods (memory transport). Every byte every pod publishes meanwhile
   is counted and divided by the edits, beside the raw Yjs update of each edit (the
   peer figure: what the document itself emits) and beside pycrdt's own ``Provider``
   over a ``TransportChannel`` (the old bridge), which re-publishes every update it
   applies.
2. Latency. An edit on one pod until the other pod's document has it (its observer
   fires), p50 and p99, beside the transport's own one-way latency (publish until a
   subscriber on the other pod has the message), over memory and Redis (a
   redis-server of its own, started from PATH).

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pycrdt

from podshare.transport import MemoryNetwork, MemoryTransport
from podshare.yjs import RoomBridge, TransportChannel


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Counted:
    """Wraps a transport's publish to count messages and bytes."""

    def __init__(self, tr: Any) -> None:
        self.messages = 0
        self.bytes = 0
        real = tr.publish

        async def publish(topic: str, message: bytes) -> None:
            self.messages += 1
            self.bytes += len(message)
            await real(topic, message)

        tr.publish = publish


async def wait_text(doc: pycrdt.Doc[Any], length: int) -> None:
    with anyio.fail_after(30):
        async with doc.events() as events:
            if len(str(doc.get("t", type=pycrdt.Text))) >= length:
                return
            async for _ in events:
                if len(str(doc.get("t", type=pycrdt.Text))) >= length:
                    return


@asynccontextmanager
async def bridged(
    docs: list[pycrdt.Doc[Any]], transports: list[Any], old: bool
) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for i, (doc, tr) in enumerate(zip(docs, transports, strict=True)):
            if old:
                channel = await stack.enter_async_context(
                    TransportChannel(tr, "bench", node_id=f"pod-{i}", doc=doc)
                )
                await stack.enter_async_context(pycrdt.Provider(doc, channel))
            else:
                await stack.enter_async_context(
                    RoomBridge(doc, tr, "bench", node_id=f"pod-{i}", sync_timeout=0.2)
                )
        await anyio.sleep(0.3)  # hellos answered on every side
        yield


async def bytes_per_edit(pods: int, edits: int, old: bool) -> tuple[float, float, float]:
    """(transport bytes per edit, raw update bytes per edit, messages per edit)."""
    net = MemoryNetwork()
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(MemoryTransport(network=net, name=f"m{i}"))
            for i in range(pods)
        ]
        docs: list[pycrdt.Doc[Any]] = [pycrdt.Doc() for _ in range(pods)]
        async with bridged(docs, transports, old):
            counters = [Counted(tr) for tr in transports]
            raw: list[int] = []
            subscription = docs[0].observe(lambda event: raw.append(len(event.update)))
            text = docs[0].get("t", type=pycrdt.Text)
            for i in range(edits):
                text.insert(len(str(text)), "abcdefghij"[i % 10])
                await anyio.sleep(0.0005)  # a fast typist: each keystroke its own message
            for doc in docs[1:]:
                await wait_text(doc, edits)
            await anyio.sleep(0.05)
            docs[0].unobserve(subscription)
            sent = sum(c.bytes for c in counters)
            messages = sum(c.messages for c in counters)
            return sent / edits, sum(raw) / edits, messages / edits


async def latency(
    make: Callable[[], AbstractAsyncContextManager[Any]], samples: int
) -> tuple[list[float], list[float]]:
    """(edit-to-edit seconds across pods, raw one-way publish-to-receive seconds)."""
    async with make() as ta, make() as tb:
        a, b = pycrdt.Doc(), pycrdt.Doc()
        bridge_ms: list[float] = []
        raw_ms: list[float] = []
        async with (
            RoomBridge(a, ta, "latency", node_id="a", sync_timeout=0.2),
            RoomBridge(b, tb, "latency", node_id="b", sync_timeout=0.2) as pb,
        ):
            await pb.synced.wait()
            text = a.get("t", type=pycrdt.Text)
            for i in range(samples):
                started = time.perf_counter()
                text.insert(len(str(text)), "x")
                await wait_text(b, i + 1)
                bridge_ms.append(time.perf_counter() - started)
        # The transport alone: one publish, until the other pod's subscriber has it.
        async with tb.subscribe("raw") as messages:
            await anyio.sleep(0.1)
            iterator = messages.__aiter__()
            for _ in range(samples):
                started = time.perf_counter()
                await ta.publish("raw", b"x" * 40)
                await iterator.__anext__()
                raw_ms.append(time.perf_counter() - started)
        return bridge_ms, raw_ms


async def main(args: argparse.Namespace) -> None:
    print(f"Yjs bridge: {args.edits} one-character edits typed on one pod of {args.pods}")
    header = (
        f"{'bridge':<34} | {'transport B/edit':>16} | {'raw update B':>12} | "
        f"{'ratio':>6} | {'msgs/edit':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, old in (
        ("podshare RoomBridge", False),
        ("pycrdt Provider + TransportChannel", True),
    ):
        per_edit, raw, messages = await bytes_per_edit(args.pods, args.edits, old)
        print(
            f"{label:<34} | {per_edit:>16.1f} | {raw:>12.1f} | "
            f"{per_edit / raw:>5.1f}x | {messages:>9.2f}"
        )

    print(f"\ncross-pod edit latency, {args.samples} edits (ms)")
    header = (
        f"{'transport':<9} | {'bridge p50':>10} | {'bridge p99':>10} | "
        f"{'raw p50':>8} | {'raw p99':>8} | {'p50 ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    net = MemoryNetwork()
    names = iter(f"lat-{i}" for i in range(1000))
    rows: list[tuple[str, Callable[[], AbstractAsyncContextManager[Any]]]] = [
        ("memory", lambda: MemoryTransport(network=net, name=next(names)))
    ]
    server: Any = None
    if not args.no_redis and shutil.which("redis-server") is not None:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
        from bench_redis import redis_server

        from podshare.transport import RedisTransport

        server = redis_server()
        url = server.__enter__()
        rows.append(("redis", lambda: RedisTransport(url=url)))
    try:
        for label, make in rows:
            bridge, raw = await latency(make, args.samples)
            b50, b99 = pct(bridge, 0.5) * 1e3, pct(bridge, 0.99) * 1e3
            r50, r99 = pct(raw, 0.5) * 1e3, pct(raw, 0.99) * 1e3
            print(
                f"{label:<9} | {b50:>10.3f} | {b99:>10.3f} | {r50:>8.3f} | {r99:>8.3f} | "
                f"{b50 / r50:>8.1f}x"
            )
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    if len(rows) == 1:
        print("(redis-server not on PATH, or --no-redis: Redis row skipped)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=500)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--no-redis", action="store_true")
    anyio.run(main, parser.parse_args(), backend="asyncio")
