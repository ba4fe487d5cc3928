"""Sync benchmarks of the replica core: hydration, refresh bytes, delta size, memory per key.

Runs the sans-I/O replicas on the simulated network (no transport, no event loop), so the
figures are the core's own. Every row prints podshare's figure, the peer figure it is
measured against, and their ratio:

- hydrate 100k keys: a new replica's complete hydration (digest, chunked answer, decode,
  apply) vs a bare msgpack dump + load of the same dict (the least any copy costs);
- refresh, 100 of 100k keys differing: bytes of the digest exchange vs a full snapshot;
- one add to a 10k-element ORSet: bytes on the wire vs shipping the whole state;
- memory per key beyond the value: what a hydrated replica holds beyond a plain ``dict``
  of the same keys and values (decoded the same way), vs that dict's own cost per key.

Usage: ``python benchmarks/bench_sync.py [--keys 100000]``
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack

from podshare.crdt import ORSet
from podshare.store.membership import LivenessOptions
from podshare.store.replica import Replica, ReplicaOptions
from podshare.testing import SimNetwork

OPTIONS = ReplicaOptions()
LIVENESS = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=1_000)


def value_of(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user-{i}", "active": i % 2 == 0}


def loaded_cluster(keys: int) -> SimNetwork:
    net = SimNetwork(seed=0, options=OPTIONS, liveness=LIVENESS)
    net.add("a")
    net.settle()
    a = net.replica("a")
    for i in range(keys):
        a.local_set(f"key:{i}", value_of(i), net.now)
    a.data_to_send()  # as if long delivered: the benchmark ships state by sync only
    return net


def best_of(n: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(n))


def bench_hydrate(keys: int) -> tuple[float, float]:
    def podshare() -> float:
        net = loaded_cluster(keys)
        gc.collect()
        start = time.perf_counter()
        net.add("new")
        net.run()
        elapsed = time.perf_counter() - start
        assert len(net.replica("new").values) == keys
        return elapsed

    snapshot = {f"key:{i}": value_of(i) for i in range(keys)}

    def peer() -> float:
        start = time.perf_counter()
        data = msgpack.packb(snapshot)
        copy = msgpack.unpackb(data)
        elapsed = time.perf_counter() - start
        assert len(copy) == keys
        return elapsed

    return best_of(3, podshare), best_of(3, peer)


def bench_refresh(keys: int, differing: int) -> tuple[int, int]:
    net = loaded_cluster(keys)
    before = net.bytes_sent
    net.add("b")
    net.run()
    full = net.bytes_sent - before  # hydration: the full snapshot, chunked
    net.advance(2 * LIVENESS.heartbeat_interval_ms, step_ms=50)
    b = net.replica("b")
    step = keys // differing
    for i in range(differing):
        b.local_set(f"key:{i * step}", {"changed": i}, net.now)
    b.data_to_send()  # lost on the way: only a refresh can repair it
    before = net.bytes_sent
    net.request_sync("a", "b")
    net.run()
    assert net.converged()
    return net.bytes_sent - before, full


def bench_orset_add(size: int) -> tuple[int, int]:
    net = SimNetwork(seed=0, value_type=ORSet, options=OPTIONS, liveness=LIVENESS)
    net.add("a")
    net.settle()
    a = net.replica("a")
    big: ORSet[int] = ORSet()
    for i in range(size):
        big = big.add(i, "a")
    a.local_set("online", big, net.now)
    a.data_to_send()
    a.local_set("online", a.values["online"].add(size + 1, "a"), net.now)
    one_add = sum(len(o.data) for o in a.data_to_send())
    whole = len(net.codec.encode(a.values["online"]))
    return one_add, whole


def _hydrate_directly(net: SimNetwork, node: str) -> Replica[Any]:
    """Hydrate a fresh replica from "a" by hand, keeping none of the events."""
    a = net.replica("a")
    new: Replica[Any] = Replica(
        net.name, node, 99, net.codec, merger=net.merger, options=OPTIONS, now=net.now
    )
    new.emit_data_events = False
    new.hydrate(net.now)
    new.cluster_evidence(net.now, ready=True, others=1)
    inbox = [o.data for o in new.data_to_send()]
    while inbox:
        for data in inbox:
            a.receive(data, net.now)
        for out in a.data_to_send():
            if out.to in (None, node):
                new.receive(out.data, net.now)
        new.syncs_finished()
        inbox = [o.data for o in new.data_to_send() if o.to in (None, "a")]
    assert new.synced
    return new


def bench_memory(keys: int) -> tuple[float, float]:
    """Bytes per key the replica holds beyond a plain dict of the same keys and values."""
    snapshot = {f"key:{i}": value_of(i) for i in range(keys)}
    packed = msgpack.packb(snapshot)
    del snapshot
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    plain = msgpack.unpackb(packed)
    peer = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(plain) == keys
    del plain, packed

    net = loaded_cluster(keys)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    replica = _hydrate_directly(net, "new")
    gc.collect()
    ours = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(replica.values) == keys
    return (ours - peer) / keys, peer / keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    args = parser.parse_args()
    keys = args.keys

    rows: list[tuple[str, str, str, float, str]] = []
    hydrate, dump = bench_hydrate(keys)
    rows.append(
        (
            f"hydrate {keys:,} keys",
            f"{hydrate * 1000:.0f} ms",
            f"{dump * 1000:.0f} ms msgpack dump+load",
            hydrate / dump,
            "<= 1 s",
        )
    )
    refresh, full = bench_refresh(keys, 100)
    rows.append(
        (
            f"refresh, 100 of {keys:,} differ",
            f"{refresh:,} B",
            f"{full:,} B full snapshot",
            refresh / full,
            "<= 5 %",
        )
    )
    one_add, whole = bench_orset_add(10_000)
    rows.append(
        (
            "one add to a 10k ORSet",
            f"{one_add:,} B",
            f"{whole:,} B whole state",
            one_add / whole,
            "<= 200 B",
        )
    )
    extra, dict_cost = bench_memory(keys)
    rows.append(
        (
            "memory per key beyond the value",
            f"{extra:.0f} B",
            f"{dict_cost:.0f} B/key plain dict",
            extra / dict_cost,
            "<= 300 B",
        )
    )
    print(f"{'benchmark':<34} {'podshare':>12} {'peer':>30} {'ratio':>9}  target")
    for name, ours, peer, ratio, target in rows:
        print(f"{name:<34} {ours:>12} {peer:>30} {ratio:>9.3f}  {target}")


if __name__ == "__main__":
    main()
