"""Benchmark: podshare over NATS beside raw nats-py and NATS KV, in separate processes.

Run: ``python benchmarks/bench_nats.py [--rounds N] [--writes N]``. It starts
``nats-server -js`` (from PATH) on a free loopback port with its store in a temporary
directory, runs every measurement with writers and readers in processes of their own
(this script, started again with ``--role``), and prints one table with the ratios:

1. latency, one writer process, one reader process (p50 and p99): ``store.set`` until
   the reader's watch event, against a nats-py ``publish`` until a nats-py subscriber
   has the message; the same with ``jetstream=True`` (a stream per store); and, as the
   peer teams would pick instead, NATS KV: ``kv.put`` until a ``kv.watch`` has it;
2. throughput, one writer process, three receiver processes: replicated writes/s
   (``store.set`` from many concurrent tasks, coalesced into batches) until all three
   hold every write, against one nats-py ``publish`` per write to three subscribers;
   and NATS KV ``put``s/s (each acknowledged by JetStream).

The modes take turns (``--slices`` slices of the latency samples, ``--repeat`` runs of
each throughput, the median printed), so the load of a shared machine weighs on each
alike. A ``jetstream=True`` store also persists to NATS KV by default (its transport's
``default_persistence()``): the JetStream rows include that.

Each sample's send time travels in the message (``time.monotonic_ns``, one clock for every
process of the machine); the reader acknowledges on a plain subject before the next is
sent, so latencies never queue. Figures are printed, never asserted (targets: latency <=
1.3x raw, throughput >= 5x one publish per write).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import Any

import anyio
import anyio.to_thread
import nats
from _common import pct

from podshare import Store
from podshare.transport import NatsTransport

PAYLOAD = {"rate_limit": 1000, "flags": {"beta": True}}
WARMUP = 20


# -- the server and the processes -----------------------------------------------------------


@contextmanager
def nats_server() -> Iterator[str]:
    """A throwaway nats-server with JetStream on a free loopback port; yields its URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        sys.exit("nats-server is not on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:  # readiness of a child process: poll its port, bounded
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                        if conn.recv(5) == b"INFO ":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("nats-server did not start")
                time.sleep(0.01)
            yield f"nats://127.0.0.1:{port}"
        finally:
            process.kill()
            process.wait()


class Child:
    """This script in another process, in one ``--role``; talks JSON lines on stdout."""

    def __init__(self, url: str, role: str, **options: object) -> None:
        args = [sys.executable, __file__, "--role", role, "--url", url]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def tell(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def line(self) -> Any:
        assert self.process.stdout is not None
        text = self.process.stdout.readline()
        if not text:
            sys.exit(f"a benchmark process exited early ({self.process.wait()})")
        return json.loads(text)

    def wait(self) -> None:
        if self.process.wait(timeout=120) != 0:
            sys.exit("a benchmark process failed")


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


# -- the roles -----------------------------------------------------------------------------


def _transport(args: argparse.Namespace) -> NatsTransport:
    # Each repetition has subjects (and so streams) of its own.
    return NatsTransport(
        args.url,
        subject_prefix=f"bench-{args.mode}-{args.tag}",
        jetstream=args.mode == "podshare-js",
    )


async def latency_reader(args: argparse.Namespace) -> None:
    acks = await nats.connect(args.url)
    samples: list[float] = []
    async with AsyncExitStack() as stack:
        if args.mode == "raw":
            done = anyio.Event()

            async def on_message(msg: Any) -> None:
                now = time.monotonic_ns()
                value = json.loads(msg.data)
                samples.append((now - value["t"]) / 1e3)
                await acks.publish("bench.ack", b"")
                if len(samples) >= args.rounds + WARMUP:
                    done.set()

            nc = await nats.connect(args.url)
            await nc.subscribe("raw.lat", cb=on_message)
            await nc.flush()
            say(ready=True)
            await done.wait()
            await nc.close()
        elif args.mode == "transport":
            tr = await stack.enter_async_context(_transport(args))
            messages = await stack.enter_async_context(tr.subscribe("t"))
            say(ready=True)
            async for message in messages:
                now = time.monotonic_ns()
                samples.append((now - json.loads(message)["t"]) / 1e3)
                await acks.publish("bench.ack", b"")
                if len(samples) >= args.rounds + WARMUP:
                    break
        elif args.mode == "kv":
            nc = await nats.connect(args.url)
            kv = await nc.jetstream().key_value("bench")
            watcher = await kv.watch(f"k{args.tag}")  # a key of its own: no earlier value
            say(ready=True)
            async for entry in watcher:
                now = time.monotonic_ns()
                if entry is None or not entry.value:
                    continue  # the end of the initial values
                samples.append((now - json.loads(entry.value)["t"]) / 1e3)
                await acks.publish("bench.ack", b"")
                if len(samples) >= args.rounds + WARMUP:
                    break
            await nc.close()
        else:
            tr = await stack.enter_async_context(_transport(args))
            store = await stack.enter_async_context(
                Store(f"lat{args.tag}", tr, node_id="reader", hydrate_timeout=0.5)
            )
            events = await stack.enter_async_context(store.watch(key="k"))
            say(ready=True)
            async for event in events:
                now = time.monotonic_ns()
                samples.append((now - event.value["t"]) / 1e3)
                await acks.publish("bench.ack", b"")
                if len(samples) >= args.rounds + WARMUP:
                    break
    await acks.close()
    say(samples=samples[WARMUP:])


async def latency_writer(args: argparse.Namespace) -> None:
    acks = await nats.connect(args.url)
    acked = anyio.Event()

    async def on_ack(_msg: Any) -> None:
        acked.set()

    await acks.subscribe("bench.ack", cb=on_ack)
    await acks.flush()
    async with AsyncExitStack() as stack:
        if args.mode == "raw":
            nc = await nats.connect(args.url)

            async def send(value: dict[str, Any]) -> None:
                await nc.publish("raw.lat", json.dumps({"k": value}["k"]).encode())

        elif args.mode == "kv":
            nc = await nats.connect(args.url)
            kv = await nc.jetstream().key_value("bench")

            async def send(value: dict[str, Any]) -> None:
                await kv.put(f"k{args.tag}", json.dumps(value).encode())

        elif args.mode == "transport":
            tr = await stack.enter_async_context(_transport(args))

            async def send(value: dict[str, Any]) -> None:
                await tr.publish("t", json.dumps(value).encode())

        else:
            tr = await stack.enter_async_context(_transport(args))
            store = await stack.enter_async_context(
                Store(f"lat{args.tag}", tr, node_id="writer", hydrate_timeout=0.5)
            )

            async def send(value: dict[str, Any]) -> None:
                await store.set("k", value)

        for i in range(args.rounds + WARMUP):
            acked = anyio.Event()
            await send({**PAYLOAD, "i": i, "t": time.monotonic_ns()})
            with anyio.fail_after(10):
                await acked.wait()
        if args.mode in ("raw", "kv"):
            await nc.close()
    await acks.close()
    say(done=True)


async def throughput_reader(args: argparse.Namespace) -> None:
    received = 0
    done = anyio.Event()
    async with AsyncExitStack() as stack:
        if args.mode.startswith("raw"):

            async def on_message(_msg: Any) -> None:
                nonlocal received
                received += 1
                if received >= args.writes:
                    done.set()

            nc = await nats.connect(args.url, pending_size=64 * 1024 * 1024)
            await nc.subscribe("raw.tp", cb=on_message)
            await nc.flush()
            say(ready=True)
            await done.wait()
            finished = time.monotonic_ns()
            await nc.close()
        else:
            tr = await stack.enter_async_context(_transport(args))
            store = await stack.enter_async_context(
                Store(
                    f"tp{args.tag}",
                    tr,
                    node_id=f"reader-{os.getpid()}",
                    hydrate_timeout=0.5,
                    watch_buffer=args.writes,
                )
            )
            events = await stack.enter_async_context(store.watch(prefix="w:"))
            say(ready=True)
            async for _ in events:
                received += 1
                if received >= args.writes:
                    break
            finished = time.monotonic_ns()
    say(finished=finished)


async def throughput_writer(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        if args.mode == "raw":
            nc = await nats.connect(args.url, pending_size=64 * 1024 * 1024)

            async def write(first: int) -> None:
                for i in range(first, args.writes, args.concurrency):
                    await nc.publish("raw.tp", b'{"w:%d": %d}' % (i, i))

        elif args.mode == "raw-flushed":
            nc = await nats.connect(args.url, pending_size=64 * 1024 * 1024)

            async def write(first: int) -> None:
                for i in range(first, args.writes, args.concurrency):
                    await nc.publish("raw.tp", b'{"w:%d": %d}' % (i, i))
                    await nc.flush()  # the server has it, as a podshare publish waits for

        else:
            tr = await stack.enter_async_context(_transport(args))
            store = await stack.enter_async_context(
                Store(f"tp{args.tag}", tr, node_id="writer", hydrate_timeout=0.5)
            )

            async def write(first: int) -> None:
                for i in range(first, args.writes, args.concurrency):
                    await store.set(f"w:{i}", i)

        start = time.monotonic_ns()
        async with anyio.create_task_group() as tg:
            for first in range(args.concurrency):
                tg.start_soon(write, first)
        if args.mode.startswith("raw"):
            await nc.flush()
        say(start=start)
        # Stay until every receiver has every write: a writer that leaves says so (on
        # the liveness topic) while receivers may still be behind on its writes.
        await anyio.to_thread.run_sync(sys.stdin.readline)
        if args.mode.startswith("raw"):
            await nc.close()


async def kv_puts(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.url)
    kv = await nc.jetstream().key_value("bench")

    async def put(first: int) -> None:
        for i in range(first, args.writes, args.concurrency):
            await kv.put(f"w.{i}", b"%d" % i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for first in range(args.concurrency):
            tg.start_soon(put, first)
    elapsed = time.perf_counter() - start
    await nc.close()
    say(rate=args.writes / elapsed)


ROLES = {
    "latency-reader": latency_reader,
    "latency-writer": latency_writer,
    "throughput-reader": throughput_reader,
    "throughput-writer": throughput_writer,
    "kv-puts": kv_puts,
}


# -- the run -------------------------------------------------------------------------------


def latency(url: str, mode: str, rounds: int, tag: int) -> list[float]:
    reader = Child(url, "latency-reader", mode=mode, rounds=rounds, tag=tag)
    reader.line()  # ready
    writer = Child(url, "latency-writer", mode=mode, rounds=rounds, tag=tag)
    writer.line()
    samples: list[float] = reader.line()["samples"]
    reader.wait()
    writer.wait()
    return samples


def throughput(url: str, mode: str, writes: int, concurrency: int, tag: int) -> float:
    readers = [Child(url, "throughput-reader", mode=mode, writes=writes, tag=tag) for _ in range(3)]
    for reader in readers:
        reader.line()  # ready
    writer = Child(
        url, "throughput-writer", mode=mode, writes=writes, concurrency=concurrency, tag=tag
    )
    start = writer.line()["start"]
    finished = max(reader.line()["finished"] for reader in readers)
    writer.tell("exit")
    for child in (*readers, writer):
        child.wait()
    return writes / ((finished - start) / 1e9)


async def make_bucket(url: str) -> None:
    nc = await nats.connect(url)
    await nc.jetstream().create_key_value(bucket="bench", history=1)
    await nc.close()


def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def ratio_row(what: str, ours: float, peer: float, unit: str) -> None:
        rows.append((what, f"{ours:,.0f} {unit}", f"{peer:,.0f} {unit}", f"{ours / peer:.2f}x"))

    with nats_server() as url:
        anyio.run(make_bucket, url)
        # The modes take turns, a slice of the samples (or one throughput run) at a
        # time, so a change in the machine's load weighs on all of them alike.
        samples: dict[str, list[float]] = {}
        modes = ("raw", "transport", "podshare", "podshare-js", "kv")
        per_slice = max(1, args.rounds // args.slices)
        for tag in range(args.slices):
            for mode in modes:
                samples.setdefault(mode, []).extend(latency(url, mode, per_slice, tag))
        raw, transport, core, js, kv = (samples[mode] for mode in modes)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            ratio_row(f"NatsTransport publish->sub {name}", pct(transport, q), pct(raw, q), "us")
            ratio_row(f"set->event {name}, core NATS", pct(core, q), pct(raw, q), "us")
            ratio_row(f"set->event {name}, JetStream", pct(js, q), pct(raw, q), "us")
            ratio_row(f"KV put->watch {name}", pct(kv, q), pct(raw, q), "us")
        rates: dict[str, list[float]] = {}
        for tag in range(args.repeat):
            for mode in ("raw", "raw-flushed", "podshare", "podshare-js"):
                rate = throughput(url, mode, args.writes, args.concurrency, tag)
                rates.setdefault(mode, []).append(rate)
        raw_tp, flushed_tp, core_tp, js_tp = (
            statistics.median(rates[mode])
            for mode in ("raw", "raw-flushed", "podshare", "podshare-js")
        )
        ratio_row("writes/s 1 -> 3 processes, core NATS", core_tp, raw_tp, "/s")
        ratio_row("writes/s 1 -> 3 processes, JetStream", js_tp, raw_tp, "/s")
        ratio_row("writes/s core NATS vs publish+flush/write", core_tp, flushed_tp, "/s")
        kv_rate = Child(url, "kv-puts", writes=args.writes, concurrency=args.concurrency)
        ratio_row("KV puts/s (acknowledged)", kv_rate.line()["rate"], raw_tp, "/s")
        kv_rate.wait()
    print(
        f"podshare over NATS ({per_slice * args.slices} latency samples in {args.slices} "
        f"interleaved slices; {args.writes} writes, {args.concurrency} writer tasks, median "
        f"of {args.repeat} interleaved runs; median raw one-way {statistics.median(raw):.0f} us)"
    )
    print(f"{'':44} {'podshare / KV':>16} {'raw nats-py':>16} {'ratio':>8}")
    for what, ours, peer, ratio in rows:
        print(f"{what:44} {ours:>16} {peer:>16} {ratio:>8}")
    print("targets: set->event <= 1.3x raw; writes/s >= 5x one publish per write")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500, help="latency samples")
    parser.add_argument("--writes", type=int, default=20_000, help="writes for throughput")
    parser.add_argument("--concurrency", type=int, default=256, help="concurrent writer tasks")
    parser.add_argument("--slices", type=int, default=5, help="latency slices per mode")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per mode")
    parser.add_argument("--tag", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.role is None:
        main(arguments)
    else:
        anyio.run(ROLES[arguments.role], arguments, backend="asyncio")
