"""TcpTransport benchmarks: latency and replicated throughput beside raw anyio TCP.

Run: ``python benchmarks/bench_tcp.py [--samples N] [--writes N] [--backend trio]``.

1. Latency. *podshare*: ``store.set`` on node A until the ``watch`` event on node B, over
   TcpTransport (p50, p99). *peer*: the one-way latency of a raw anyio TCP echo (half the
   round trip of a length-prefixed frame) in the same process and run. Target ≤ 1.5x.
   For reference, the transport alone (``publish`` on A until B's subscription yields).
2. Throughput. *podshare*: one writer ``set``s ``--writes`` keys (concurrently, as an
   application's requests would) until all three other nodes hold the last one.
   *peer*: the same writes as one raw TCP frame per write to three receivers, each send
   awaited. Target ≥ 5x. For reference: one task awaiting each ``set`` (nothing to
   coalesce), and ``set_many`` of 100 keys (the replication pipeline's own capacity).

Every figure comes from one process on loopback; both sides share the event loop.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from podshare import Store
from podshare.transport import TcpTransport

ROWS: list[tuple[str, str, str, str, str]] = []


def row(what: str, podshare: float, peer: float, unit: str, target: str) -> None:
    ratio = podshare / peer if peer else float("nan")
    ROWS.append((what, f"{podshare:,.1f} {unit}", f"{peer:,.1f} {unit}", f"{ratio:.2f}x", target))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- raw anyio TCP: the peer figures ---------------------------------------------------


async def _echo(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        buffered = BufferedByteReceiveStream(stream)
        try:
            while True:
                header = await buffered.receive_exactly(4)
                body = await buffered.receive_exactly(int.from_bytes(header, "big"))
                await stream.send(header + body)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            pass


@asynccontextmanager
async def raw_server(handler: Any) -> AsyncIterator[int]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield port
        tg.cancel_scope.cancel()


async def raw_one_way_latency(samples: int, payload: bytes) -> list[float]:
    frame = len(payload).to_bytes(4, "big") + payload
    async with raw_server(_echo) as port, await anyio.connect_tcp("127.0.0.1", port) as client:
        buffered = BufferedByteReceiveStream(client)
        results = []
        for i in range(samples + 50):
            started = time.perf_counter()
            await client.send(frame)
            await buffered.receive_exactly(len(frame))
            if i >= 50:  # warm-up
                results.append((time.perf_counter() - started) / 2)
        return results


async def raw_frames_per_write(writes: int, payload: bytes, receivers: int = 3) -> float:
    """Writes/s sending one length-prefixed frame per write to ``receivers`` sockets."""
    frame = len(payload).to_bytes(4, "big") + payload
    done = [anyio.Event() for _ in range(receivers)]
    counter = iter(range(receivers))

    async def sink(stream: anyio.abc.SocketStream) -> None:
        me = next(counter)
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            for _ in range(writes):
                header = await buffered.receive_exactly(4)
                await buffered.receive_exactly(int.from_bytes(header, "big"))
            done[me].set()

    async with raw_server(sink) as port, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(await anyio.connect_tcp("127.0.0.1", port))
            for _ in range(receivers)
        ]
        started = time.perf_counter()
        for _ in range(writes):
            for client in clients:
                await client.send(frame)
        for event in done:
            await event.wait()
        return writes / (time.perf_counter() - started)


# -- podshare --------------------------------------------------------------------------


@asynccontextmanager
async def tcp_cluster(count: int) -> AsyncIterator[list[TcpTransport]]:
    async with AsyncExitStack() as stack:
        nodes: list[TcpTransport] = []
        for i in range(count):
            transport = TcpTransport(peers=[n.address for n in nodes], node_id=f"bench-{i}")
            nodes.append(await stack.enter_async_context(transport))
        with anyio.fail_after(10):
            for node in nodes:
                await node.wait_connected(count - 1)
        yield nodes


async def transport_latency(samples: int, payload: bytes) -> list[float]:
    async with tcp_cluster(2) as (a, b), b.subscribe("bench") as messages:
        results = []
        for i in range(samples + 50):
            started = time.perf_counter()
            await a.publish("bench", payload)
            await messages.receive()
            if i >= 50:
                results.append(time.perf_counter() - started)
        return results


async def store_latency(samples: int) -> list[float]:
    async with (
        tcp_cluster(2) as (ta, tb),
        Store("bench", ta, node_id="a", hydrate_timeout=0.5) as a,
        Store("bench", tb, node_id="b", hydrate_timeout=0.5) as b,
        b.watch(key="k") as events,
    ):
        results = []
        for i in range(samples + 50):
            started = time.perf_counter()
            await a.set("k", i)
            async for event in events:
                if event.value == i:
                    break
            if i >= 50:
                results.append(time.perf_counter() - started)
        return results


async def store_throughput(writes: int, *, mode: str) -> tuple[float, int]:
    async with tcp_cluster(4) as transports, AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(Store("bench", t, node_id=f"n{i}", hydrate_timeout=0.5))
            for i, t in enumerate(transports)
        ]
        writer, receivers = stores[0], stores[1:]
        last = f"key-{writes - 1}"
        watchers = [await stack.enter_async_context(r.watch(key=last)) for r in receivers]
        sent_before = transports[0].stats().messages_sent
        started = time.perf_counter()
        if mode == "concurrent":
            async with anyio.create_task_group() as tg:
                for i in range(writes):
                    tg.start_soon(writer.set, f"key-{i}", {"n": i})
        elif mode == "set_many":
            for start in range(0, writes, 100):
                await writer.set_many(
                    {f"key-{i}": {"n": i} for i in range(start, min(start + 100, writes))}
                )
        else:
            for i in range(writes):
                await writer.set(f"key-{i}", {"n": i})
        for events in watchers:
            with anyio.fail_after(60):
                await anext(aiter(events))
        elapsed = time.perf_counter() - started
        frames_per_peer = (transports[0].stats().messages_sent - sent_before) // 3
        return writes / elapsed, frames_per_peer


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * 64  # about the size of one small write on the wire
    raw = await raw_one_way_latency(args.samples, payload)
    transport = await transport_latency(args.samples, payload)
    store = await store_latency(args.samples)
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        peer = percentile(raw, q) * 1e6
        row(f"set->watch on another node, {name}", percentile(store, q) * 1e6, peer, "us", "<=1.5x")
        row(
            f"  (transport publish->receive, {name})",
            percentile(transport, q) * 1e6,
            peer,
            "us",
            "",
        )

    raw_rate = await raw_frames_per_write(args.writes, payload)
    rate, frames = await store_throughput(args.writes, mode="concurrent")
    row("replicated writes/s, 1 writer -> 3 nodes", rate, raw_rate, "/s", ">=5x")
    seq_rate, seq_frames = await store_throughput(args.writes // 4, mode="sequential")
    row("  (the same, one task awaiting each set)", seq_rate, raw_rate, "/s", "")
    many_rate, _ = await store_throughput(args.writes, mode="set_many")
    row("  (the same, set_many of 100 keys)", many_rate, raw_rate, "/s", "")

    widths = [
        max(len(r[i]) for r in [*ROWS, ("what", "podshare", "peer", "ratio", "target")])
        for i in range(5)
    ]
    header = ("what", "podshare", "raw anyio TCP", "ratio", "target")
    print(f"TcpTransport benchmarks ({args.backend}, loopback, one process)")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in ROWS:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(
        f"({args.writes} concurrent sets went out in {frames} frames per peer; "
        f"{args.writes // 4} sequential sets in {seq_frames})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--writes", type=int, default=20000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
