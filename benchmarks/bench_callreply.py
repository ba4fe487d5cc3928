"""callreply benchmarks: call round trip beside the raw transport, and presence at scale.

Run: ``python benchmarks/bench_callreply.py [--calls N] [--users N] [--backend trio]``.

1. Round trip. *podshare*: ``Endpoint.call`` from pod A to a target on pod B whose
   handler echoes. *peer*: the same exchange by hand on the same transports — A
   publishes to B's topic, B's loop publishes the message back to A's topic. Target:
   p50 and p99 within 2x of the peer. Memory always; TCP and Redis when available
   (Redis needs ``redis-server`` on PATH and runs under asyncio only).
2. Presence. ``--users`` connected users (targets) spread over four pods; *memory* is the
   route table's heap per user on one replica (tracemalloc) beside a plain
   ``dict[str, str]`` of the same routes; *converge* is the time from one pod with a
   tenth of the users dying (no goodbye) until every surviving replica has dropped its
   routes, beside ``down_after`` (the detection delay the configuration asks for).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from typing import Any

import anyio

from podshare.callreply import Endpoint
from podshare.transport.base import Transport
from podshare.transport.memory import MemoryNetwork, MemoryTransport

ROWS: list[tuple[str, str, str, str]] = []


def row(what: str, podshare: float, peer: float, unit: str) -> None:
    ratio = podshare / peer if peer else float("nan")
    ROWS.append((what, f"{podshare:,.1f} {unit}", f"{peer:,.1f} {unit}", f"{ratio:.2f}x"))


async def poll_until(condition: Callable[[], bool], interval: float = 0.001) -> None:
    """Wait for replicas to converge (``interval`` resolution, which the figures allow for)."""
    with anyio.fail_after(60):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(interval)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


TransportFactory = Callable[[str], AbstractAsyncContextManager[Transport]]


async def raw_round_trips(a: Transport, b: Transport, calls: int) -> list[float]:
    samples: list[float] = []
    async with (
        a.subscribe("bench/a") as at_a,
        b.subscribe("bench/b") as at_b,
        anyio.create_task_group() as tg,
    ):

        async def echo_loop() -> None:
            async for message in at_b:
                await b.publish("bench/a", message)

        tg.start_soon(echo_loop)
        replies = aiter(at_a)
        # Warm up (and make sure both subscriptions are live end to end).
        with anyio.fail_after(10):
            await a.publish("bench/b", b"warm")
            await anext(replies)
        payload = b"x" * 64
        for _ in range(calls):
            start = time.perf_counter()
            await a.publish("bench/b", payload)
            await anext(replies)
            samples.append(time.perf_counter() - start)
        tg.cancel_scope.cancel()
    return samples


async def call_round_trips(ta: Transport, tb: Transport, calls: int) -> list[float]:
    samples: list[float] = []
    options: dict[str, Any] = {"route_options": {"hydrate_timeout": 0.5}}
    async with (
        Endpoint(ta, node_id="bench-a", **options) as a,
        Endpoint(tb, node_id="bench-b", **options) as b,
    ):

        async def echo(payload: bytes) -> bytes:
            return payload

        await b.register("target", "echo", echo)
        await poll_until(lambda: a.owner("target") == "bench-b")
        with anyio.fail_after(10):
            await a.call("target", "echo", b"warm")
        payload = b"x" * 64
        for _ in range(calls):
            start = time.perf_counter()
            await a.call("target", "echo", payload)
            samples.append(time.perf_counter() - start)
    return samples


async def bench_round_trip(label: str, factory: TransportFactory, calls: int) -> None:
    async with factory("a") as ta, factory("b") as tb:
        raw = await raw_round_trips(ta, tb, calls)
    async with factory("c") as ta, factory("d") as tb:
        podshare = await call_round_trips(ta, tb, calls)
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        row(
            f"call round trip {name} ({label})",
            percentile(podshare, q) * 1e6,
            percentile(raw, q) * 1e6,
            "us",
        )


def memory_factory() -> TransportFactory:
    network = MemoryNetwork()

    def open_transport(name: str) -> AbstractAsyncContextManager[Transport]:
        return MemoryTransport(network=network, name=name)

    return open_transport


def tcp_factory() -> TransportFactory | None:
    try:
        from podshare.transport.tcp import TcpTransport
    except ImportError:
        return None
    addresses: list[str] = []

    @asynccontextmanager
    async def open_transport(_name: str) -> AsyncIterator[Transport]:
        peers = list(addresses)
        async with TcpTransport(peers=peers) as tr:
            await tr.wait_connected(len(peers))
            addresses.append(tr.address)
            try:
                yield tr
            finally:
                addresses.remove(tr.address)

    return open_transport


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway redis-server on a free port, or ``None`` when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--dir", workdir]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


def redis_factory(url: str) -> TransportFactory | None:
    try:
        from podshare.transport.redis import RedisTransport
    except ImportError:
        return None

    def open_transport(_name: str) -> AbstractAsyncContextManager[Transport]:
        return RedisTransport(url, channel_prefix="bench")

    return open_transport


class Crashable:
    """A transport wrapper that goes silent on ``crash()``, as a killed pod."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.dead = False

    async def publish(self, topic: str, message: bytes) -> None:
        if not self.dead:
            await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        @asynccontextmanager
        async def subscription() -> AsyncIterator[AsyncIterator[bytes]]:
            async with self.inner.subscribe(topic) as messages:

                async def live() -> AsyncIterator[bytes]:
                    async for message in messages:
                        if not self.dead:
                            yield message

                yield live()

        return subscription()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def bench_presence(users: int) -> None:
    down_after = 1.0
    options: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "down_after": down_after,
        "route_options": {"hydrate_timeout": 5.0},
    }
    network = MemoryNetwork()
    pods = 4
    victim_users = max(1, users // 10)
    shares = [victim_users] + [(users - victim_users) // (pods - 1)] * (pods - 1)
    shares[-1] += users - sum(shares)
    names = [f"user:{n}" for n in range(users)]

    async def handler(payload: bytes) -> bytes:
        return payload

    def transport(name: str) -> MemoryTransport:
        return MemoryTransport(network=network, name=name, buffer_size=1 << 17)

    async with AsyncExitStack() as stack:
        endpoints: list[Endpoint] = []
        wrappers: list[Crashable] = []
        for index in range(pods):
            wrapped = Crashable(await stack.enter_async_context(transport(f"p{index}")))
            wrappers.append(wrapped)
            ep = Endpoint(wrapped, node_id=f"pod-{index}", **options)
            endpoints.append(await stack.enter_async_context(ep))
        start = 0
        for index, share in enumerate(shares):
            targets = names[start : start + share]
            start += share
            async with anyio.create_task_group() as tg:
                for chunk in range(0, len(targets), 500):

                    async def register_all(
                        part: list[str], ep: Endpoint = endpoints[index]
                    ) -> None:
                        for target in part:
                            await ep.register(target, "push", handler)

                    tg.start_soon(register_all, targets[chunk : chunk + 500])
        await poll_until(lambda: all(ep.owner(n) is not None for ep in endpoints for n in names))

        # Memory: what one more replica holds once it has hydrated every route.
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        observer_transport = Crashable(await stack.enter_async_context(transport("observer")))
        observer = await stack.enter_async_context(
            Endpoint(observer_transport, node_id="observer", **options)
        )
        await poll_until(lambda: all(observer.owner(n) is not None for n in names), 0.01)
        gc.collect()
        replica_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        # The peer: a plain dict of the same routes (fresh key strings, one owner string).
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        plain = {(name + ".")[:-1]: "pod-1" for name in names}
        dict_bytes = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del plain
        row(
            f"presence of {users:,} users: bytes/user",
            replica_bytes / users,
            dict_bytes / users,
            "B",
        )

        # Kill pod 0 (no goodbye): its users' routes must vanish from every survivor.
        gone = names[:victim_users]
        survivors = [*endpoints[1:], observer]
        wrappers[0].dead = True
        crashed_at = time.perf_counter()
        await poll_until(lambda: all(ep.owner(n) is None for ep in survivors for n in gone), 0.002)
        converge = time.perf_counter() - crashed_at
        assert all(ep.owner(names[-1]) is not None for ep in survivors)
        row(
            f"converge after a pod with {victim_users:,} users dies",
            converge * 1000,
            down_after * 1000,
            "ms",
        )


async def main(args: argparse.Namespace, redis_url: str | None) -> None:
    await bench_round_trip("memory", memory_factory(), args.calls)
    tcp = tcp_factory()
    if tcp is not None:
        await bench_round_trip("tcp", tcp, args.calls)
    factory = redis_factory(redis_url) if redis_url is not None else None
    if factory is not None and args.backend == "asyncio":  # redis-py is asyncio-only
        await bench_round_trip("redis", factory, args.calls)
    await bench_presence(args.users)


def print_table() -> None:
    header = ("benchmark", "podshare", "peer", "ratio")
    widths = [max(len(r[i]) for r in [header, *ROWS]) for i in range(4)]
    for line in [header, tuple("-" * w for w in widths), *ROWS]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    arguments = parser.parse_args()
    with redis_server() as url:
        anyio.run(main, arguments, url, backend=arguments.backend)
    print_table()
    sys.exit(0)
