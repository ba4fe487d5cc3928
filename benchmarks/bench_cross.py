"""Benchmark: podshare across processes over Redis and TCP, beside the raw transport.

Run: ``python benchmarks/bench_cross.py [--rounds N] [--writes N] [--repeat N] [--quick]``.
Every podshare store and every raw client runs in a process of its own (``multiprocessing``
with the ``spawn`` start method, each process its own anyio event loop on asyncio); the
Redis figures use a ``redis-server`` this script starts on a free loopback port (as
``bench_redis.py`` does). The measurements, targets from issue 15 (items 5 and 6):

1. set→event, Redis: process A ``await store.set("ping", i)``; process B watches ``ping``
   and answers ``await store.set("pong", i)``; A waits for the ``pong`` event. One way =
   round trip / 2 (p50, p99). Peer: a redis-py ``PUBLISH`` → subscriber ping-pong between
   two processes. Target ≤ 1.3x.
2. set→event, TCP: the same with each store on a ``TcpTransport`` (a mesh of two). Peer:
   one length-prefixed frame each way on a raw anyio TCP connection. Target ≤ 1.3x.
3. Sequential writers: one writer process awaiting each of ``--writes`` ``store.set``
   calls while three receiver processes hold stores on the same channel; writes/s from
   the first write until every receiver has the last, and the writer's CPU seconds per
   write (``time.process_time`` in the writer, over its loop). Peer: one redis-py
   ``await publish()`` per write to three subscriber processes (TCP: one raw frame per
   write to each of three receiver processes). Targets: writes/s ≥ 0.8x, CPU/write ≤ 1.5x.
   For reference: a receiver's CPU per write (from the first write's arrival to the
   last's), and the writer's own loop rate. On a 2-core machine the writer, the three
   receivers and redis-server share the cores, so writes/s also pays for the receivers.

Each measurement runs ``--repeat`` times (podshare and its peer one after the other) and
the table shows the medians; the ratio column is the median ratio, with the range of the
repeats' ratios beside it. ``--profile redis|tcp`` instead runs the sequential writer
under cProfile timed by CPU (2,000 writes) and prints the top 15 cumulative entries in
``podshare/``. Timestamps cross processes as ``time.perf_counter()`` (one monotonic clock
for the whole machine on Linux). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import anyio
import anyio.abc
import redis
import redis.asyncio as aioredis
from _common import pct, redis_server
from anyio.streams.buffered import BufferedByteReceiveStream

from podshare import Store
from podshare.transport import RedisTransport, TcpTransport, Transport

CTX = multiprocessing.get_context("spawn")
WARMUP_ROUNDS = 50
WARMUP_WRITES = 200
RECEIVERS = 3
SETTLE = 0.5  # after the handshake: let a TCP mesh finish peer exchange and first syncs
PAYLOAD = b"x" * 64  # a raw frame about the size of one small write on the wire

Params = dict[str, Any]
Task = Callable[[], Coroutine[Any, Any, object]]


# -- the server and the processes ------------------------------------------------------


class Link:
    """A child's end of its pipe to the parent: small control messages only."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, *message: object) -> None:
        self.conn.send(message)

    async def recv(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = await anyio.to_thread.run_sync(self.conn.recv)
        return message

    async def serve_until_stop(self, *tasks: Task) -> None:
        """Run ``tasks`` until the parent says stop."""
        async with anyio.create_task_group() as tg:
            for task in tasks:
                tg.start_soon(task)
            await self.recv()
            tg.cancel_scope.cancel()


def _child(role: str, conn: Connection, params: Params) -> None:
    try:
        anyio.run(ROLES[role], Link(conn), params, backend="asyncio")
    except BaseException as exc:
        conn.send(("error", f"{role}: {exc!r}"))
        raise


class Child:
    """One spawned process running a role; the parent's end of its pipe."""

    def __init__(self, role: str, params: Params) -> None:
        self.role = role
        self.conn, theirs = CTX.Pipe()
        self.process = CTX.Process(target=_child, args=(role, theirs, params), daemon=True)
        self.process.start()
        theirs.close()

    def expect(self, kind: str, timeout: float = 120.0) -> tuple[Any, ...]:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.role}: no {kind!r} within {timeout} s")
        try:
            message: tuple[Any, ...] = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.role} exited (code {self.process.exitcode})") from None
        if message[0] != kind:
            raise RuntimeError(f"{self.role}: expected {kind!r}, got {message!r}")
        return message[1:]

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


@contextmanager
def spawned(role: str, params: Params, count: int = 1) -> Iterator[list[Child]]:
    """``count`` processes running ``role`` (each given its ``index``), stopped on exit."""
    children = [Child(role, {**params, "index": i}) for i in range(count)]
    try:
        yield children
    finally:
        for child in children:
            child.stop()


# -- podshare roles --------------------------------------------------------------------


@asynccontextmanager
async def open_store(
    p: Params, node_id: str, peers: list[str]
) -> AsyncIterator[tuple[Store[Any], str | None]]:
    """A store on the transport ``p`` names, and its TCP address (None over Redis)."""
    async with AsyncExitStack() as stack:
        transport: Transport
        if p["transport"] == "redis":
            transport = RedisTransport(p["url"], channel_prefix=p["channel"])
        else:
            transport = TcpTransport(peers=peers, node_id=node_id)
        await stack.enter_async_context(transport)
        store: Store[Any] = await stack.enter_async_context(
            Store("cross", transport, node_id=node_id, hydrate_timeout=0.2, watch_buffer=4096)
        )
        yield store, transport.address if isinstance(transport, TcpTransport) else None


async def handshake(store: Store[Any], count: int) -> None:
    """Until ``count`` answering stores echo a fresh ``hello``: both directions work."""
    async with store.watch(prefix="ready:") as events:
        with anyio.fail_after(30):
            nonce = 0
            while True:
                nonce += 1
                await store.set("hello", nonce)
                with anyio.move_on_after(0.2):
                    async for _ in events:
                        if all(store.get(f"ready:{i}") == nonce for i in range(count)):
                            break
                    else:
                        raise RuntimeError("the store closed during the handshake")
                    break
    await anyio.sleep(SETTLE)


def answer_hellos(store: Store[Any], index: int) -> Task:
    async def answer() -> None:
        async with store.watch(key="hello") as events:
            async for event in events:
                await store.set(f"ready:{index}", event.value)

    return answer


async def ps_pong(link: Link, p: Params) -> None:
    async with open_store(p, "pong", []) as (store, address):

        async def answer_pings() -> None:
            async with store.watch(key="ping") as events:
                async for event in events:
                    await store.set("pong", event.value)

        link.send("ready", address)
        await link.serve_until_stop(answer_hellos(store, 0), answer_pings)


async def ps_ping(link: Link, p: Params) -> None:
    peers = [p["peer"]] if p["peer"] else []
    async with open_store(p, "ping", peers) as (store, _), store.watch(key="pong") as events:
        await handshake(store, 1)
        samples = []
        for i in range(p["rounds"] + WARMUP_ROUNDS):
            started = time.perf_counter()
            await store.set("ping", i)
            async for event in events:
                if event.value == i:
                    break
            if i >= WARMUP_ROUNDS:
                samples.append((time.perf_counter() - started) / 2)
        link.send("result", samples)
        await link.recv()


async def ps_receiver(link: Link, p: Params) -> None:
    last = f"k{p['writes'] - 1}"
    cpu = 0.0
    async with (
        open_store(p, f"r{p['index']}", []) as (store, address),
        store.watch(key="k0") as first,
        store.watch(key=last) as events,
    ):

        async def wait_first() -> None:
            nonlocal cpu
            async for _ in first:
                cpu = time.process_time()
                return

        async def wait_last() -> None:
            async for _ in events:
                link.send("done", time.perf_counter(), time.process_time() - cpu)
                return

        link.send("ready", address)
        await link.serve_until_stop(answer_hellos(store, p["index"]), wait_first, wait_last)


async def ps_writer(link: Link, p: Params) -> None:
    async with open_store(p, "writer", p["peers"]) as (store, _):
        await handshake(store, RECEIVERS)
        for i in range(WARMUP_WRITES):
            await store.set(f"warm{i}", i)
        profile = cProfile.Profile(time.process_time) if p.get("profile") else None
        set_ = store.set
        started, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        for i in range(p["writes"]):
            await set_(f"k{i}", i)
        if profile is not None:
            profile.disable()
        cpu, ended = time.process_time() - cpu, time.perf_counter()
        link.send("result", started, ended, cpu, profile_text(profile))
        await link.recv()


def profile_text(profile: cProfile.Profile | None) -> str:
    if profile is None:
        return ""
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(f"{os.sep}podshare{os.sep}", 15)
    return out.getvalue()


# -- raw Redis roles -------------------------------------------------------------------


async def close_redis(client: aioredis.Redis, pubsub: Any) -> None:
    await pubsub.aclose()
    await client.aclose()


async def raw_redis_pong(link: Link, p: Params) -> None:
    client = aioredis.Redis.from_url(p["url"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{p['channel']}-ping")

    async def answer() -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None:
                await client.publish(f"{p['channel']}-pong", message["data"])

    link.send("ready", None)
    await link.serve_until_stop(answer)
    await close_redis(client, pubsub)


async def raw_redis_ping(link: Link, p: Params) -> None:
    client = aioredis.Redis.from_url(p["url"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{p['channel']}-pong")
    samples = []
    for i in range(p["rounds"] + WARMUP_ROUNDS):
        data = b'{"ping": %d}' % i
        started = time.perf_counter()
        await client.publish(f"{p['channel']}-ping", data)
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["data"] == data:
                break
        if i >= WARMUP_ROUNDS:
            samples.append((time.perf_counter() - started) / 2)
    link.send("result", samples)
    await link.recv()
    await close_redis(client, pubsub)


async def raw_redis_receiver(link: Link, p: Params) -> None:
    client = aioredis.Redis.from_url(p["url"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{p['channel']}-k")

    async def drain() -> None:
        received, cpu = 0, 0.0
        while received < WARMUP_WRITES + p["writes"]:
            if await pubsub.get_message(timeout=None) is not None:
                received += 1
                if received == WARMUP_WRITES + 1:
                    cpu = time.process_time()
        link.send("done", time.perf_counter(), time.process_time() - cpu)

    link.send("ready", None)
    await link.serve_until_stop(drain)
    await close_redis(client, pubsub)


async def raw_redis_writer(link: Link, p: Params) -> None:
    client = aioredis.Redis.from_url(p["url"])
    channel = f"{p['channel']}-k"
    for i in range(WARMUP_WRITES):
        if await client.publish(channel, b'{"warm%d": %d}' % (i, i)) != RECEIVERS:
            raise RuntimeError("not every subscriber is subscribed")
    publish = client.publish
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(p["writes"]):
        await publish(channel, b'{"k%d": %d}' % (i, i))
    cpu, ended = time.process_time() - cpu, time.perf_counter()
    link.send("result", started, ended, cpu, "")
    await link.recv()
    await client.aclose()


# -- raw TCP roles ---------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def read_frame(buffered: BufferedByteReceiveStream) -> bytes:
    header = await buffered.receive_exactly(4)
    return await buffered.receive_exactly(int.from_bytes(header, "big"))


async def _listen(link: Link, handler: Callable[[anyio.abc.SocketStream], Awaitable[Any]]) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))  # noqa: S610

    async def serve() -> None:
        await listener.serve(handler)

    async with listener:
        link.send("ready", f"127.0.0.1:{port}")
        await link.serve_until_stop(serve)


def _connect(address: str) -> Awaitable[anyio.abc.SocketStream]:
    host, port = address.rsplit(":", 1)
    return anyio.connect_tcp(host, int(port))


async def raw_tcp_pong(link: Link, _p: Params) -> None:
    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            try:
                while True:
                    await stream.send(frame(await read_frame(buffered)))
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                pass

    await _listen(link, echo)


async def raw_tcp_ping(link: Link, p: Params) -> None:
    message = frame(PAYLOAD)
    async with await _connect(p["peer"]) as client:
        buffered = BufferedByteReceiveStream(client)
        samples = []
        for i in range(p["rounds"] + WARMUP_ROUNDS):
            started = time.perf_counter()
            await client.send(message)
            await read_frame(buffered)
            if i >= WARMUP_ROUNDS:
                samples.append((time.perf_counter() - started) / 2)
        link.send("result", samples)
        await link.recv()


async def raw_tcp_receiver(link: Link, p: Params) -> None:
    async def sink(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            for _ in range(WARMUP_WRITES + 1):
                await read_frame(buffered)
            cpu = time.process_time()
            for _ in range(p["writes"] - 1):
                await read_frame(buffered)
            link.send("done", time.perf_counter(), time.process_time() - cpu)
            await anyio.sleep_forever()

    await _listen(link, sink)


async def raw_tcp_writer(link: Link, p: Params) -> None:
    message = frame(PAYLOAD)
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(await _connect(a)) for a in p["peers"]]
        for _ in range(WARMUP_WRITES):
            for client in clients:
                await client.send(message)
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(p["writes"]):
            for client in clients:
                await client.send(message)
        cpu, ended = time.process_time() - cpu, time.perf_counter()
        link.send("result", started, ended, cpu, "")
        await link.recv()


ROLES: dict[str, Callable[[Link, Params], Awaitable[None]]] = {
    f.__name__: f
    for f in (
        *(ps_pong, ps_ping, ps_receiver, ps_writer),
        *(raw_redis_pong, raw_redis_ping, raw_redis_receiver, raw_redis_writer),
        *(raw_tcp_pong, raw_tcp_ping, raw_tcp_receiver, raw_tcp_writer),
    )
}


# -- the measurements (in the parent) --------------------------------------------------


def latency(prefix: str, params: Params) -> list[float]:
    """One-way seconds per sample: ``{prefix}_ping`` against ``{prefix}_pong``."""
    with spawned(f"{prefix}_pong", params) as (pong,):
        (address,) = pong.expect("ready")
        with spawned(f"{prefix}_ping", {**params, "peer": address}) as (ping,):
            (samples,) = ping.expect("result", timeout=600)
    return list(samples)


class Sequential(NamedTuple):
    rate: float  # writes/s from the first write until every receiver has the last
    cpu: float  # the writer's CPU seconds per write, over its loop
    loop_rate: float  # writes/s of the writer's own loop
    receiver_cpu: float  # a receiver's CPU seconds per write (the mean of the receivers)
    profile: str


def sequential(prefix: str, params: Params) -> Sequential:
    writes = params["writes"]
    with spawned(f"{prefix}_receiver", params, RECEIVERS) as receivers:
        peers = [receiver.expect("ready")[0] for receiver in receivers]
        with spawned(f"{prefix}_writer", {**params, "peers": peers}) as (writer,):
            started, ended, cpu, profile = writer.expect("result", timeout=600)
            done = [receiver.expect("done", timeout=600) for receiver in receivers]
    finished = max(d[0] for d in done)
    return Sequential(
        writes / (finished - started),
        cpu / writes,
        writes / (ended - started),
        statistics.mean(d[1] for d in done) / writes,
        profile,
    )


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str, str, str]] = []

    def add(
        self,
        what: str,
        ours: list[float],
        peer_name: str,
        peer: list[float],
        unit: str,
        target: str,
    ) -> None:
        ratios = [a / b for a, b in zip(ours, peer, strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
        self.rows.append(
            (
                what,
                f"{statistics.median(ours):,.1f} {unit}",
                peer_name,
                f"{statistics.median(peer):,.1f} {unit}",
                f"{statistics.median(ratios):.2f}x",
                spread,
                target,
            )
        )

    def print(self) -> None:
        header = ("podshare", "figure", "peer", "figure", "ratio", "repeats", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(len(header))]
        for r in [header, *self.rows]:
            print("  ".join(c.rjust(w) if 0 < i < 6 and i != 2 else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True))))  # fmt: skip


def run_profile(url: str, transport: str) -> None:
    params = {"url": url, "channel": "bench-cross-profile", "transport": transport}
    result = sequential("ps", {**params, "writes": 2000, "profile": True})
    print(f"cProfile (CPU time) of the writer process, 2,000 sequential sets over {transport}:")
    print(result.profile)


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.writes, args.repeat = 200, 500, 1
    with redis_server() as url:
        if args.profile:
            run_profile(url, args.profile)
            return
        results: dict[str, list[Any]] = {}
        for n in range(args.repeat):
            for transport in args.transports:
                base = {"url": url, "channel": f"bench-cross-{n}-{transport}"}
                ps = {**base, "transport": transport}
                lat = {"rounds": args.rounds}
                results.setdefault(f"ps-lat-{transport}", []).append(latency("ps", {**ps, **lat}))
                raw = f"raw_{transport}"
                results.setdefault(f"raw-lat-{transport}", []).append(latency(raw, {**base, **lat}))
                seq = {"writes": args.writes}
                results.setdefault(f"ps-seq-{transport}", []).append(
                    sequential("ps", {**ps, **seq})
                )
                results.setdefault(f"raw-seq-{transport}", []).append(
                    sequential(raw, {**base, **seq})
                )
            print(f"repeat {n + 1}/{args.repeat} done", file=sys.stderr, flush=True)

    table = Table()
    for transport in args.transports:
        name = "Redis" if transport == "redis" else "TCP"
        raw_name = "redis-py PUBLISH→sub" if transport == "redis" else "raw anyio TCP frame"
        ps_lat, raw_lat = results[f"ps-lat-{transport}"], results[f"raw-lat-{transport}"]
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            table.add(
                f"{name} set→event one way, {label}",
                [pct(s, q) * 1e6 for s in ps_lat],
                f"{raw_name}, {label}",
                [pct(s, q) * 1e6 for s in raw_lat],
                "µs",
                "≤1.3x" if q == 0.5 else "",
            )
        ps_seq, raw_seq = results[f"ps-seq-{transport}"], results[f"raw-seq-{transport}"]
        per_write = "PUBLISH" if transport == "redis" else "frame"
        table.add(
            f"{name} sequential writes/s → {RECEIVERS} procs",
            [r.rate for r in ps_seq],
            f"one {per_write} per write",
            [r.rate for r in raw_seq],
            "/s",
            "≥0.8x",
        )
        table.add(
            f"{name} writer CPU per sequential write",
            [r.cpu * 1e6 for r in ps_seq],
            f"one {per_write} per write",
            [r.cpu * 1e6 for r in raw_seq],
            "µs",
            "≤1.5x",
        )
        table.add(
            f"  ({name} receiver CPU per write, mean of {RECEIVERS})",
            [r.receiver_cpu * 1e6 for r in ps_seq],
            "a raw subscriber's" if transport == "redis" else "a raw receiver's",
            [r.receiver_cpu * 1e6 for r in raw_seq],
            "µs",
            "",
        )
        table.add(
            f"  ({name} writer's own loop, writes/s)",
            [r.loop_rate for r in ps_seq],
            f"one {per_write} per write",
            [r.loop_rate for r in raw_seq],
            "/s",
            "",
        )
    parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "pure-Python parser"
    print(
        f"podshare across processes (spawn, asyncio), loopback; {os.cpu_count()} CPUs; "
        f"redis-py {redis.__version__} ({parser}); {args.rounds} latency rounds, "
        f"{args.writes} sequential writes; medians of {args.repeat} repeat(s)"
    )
    table.print()
    print("ratios: podshare/peer; latency and CPU lower is better, writes/s higher is better")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="latency round trips")
    parser.add_argument("--writes", type=int, default=5000, help="sequential writes")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--quick", action="store_true", help="a short run (one repeat)")
    parser.add_argument(
        "--transports", nargs="+", default=["redis", "tcp"], choices=["redis", "tcp"]
    )
    parser.add_argument(
        "--profile", choices=["redis", "tcp"], help="cProfile the sequential writer instead"
    )
    main(parser.parse_args())
