"""Benchmark: the per-message receive path, against msgspec's floor (issue 15, target 4).

Run: ``python benchmarks/bench_receive.py [--messages N] [--repeats N]``.

Each row times one kind of received message through ``Replica.receive`` (the sans-I/O
core every store runs), per entry, beside its *floor*: what the least a Python receiver
must do costs in the same run, namely a msgspec decode of the same bytes into the same
struct, a decode of each value and a dict set (for the PN-counter, a hand-rolled
max-merge of the per-node counts). Each figure is the median of ``--repeats`` runs,
interleaved with the floor's so that a noisy machine moves both alike.

- single-entry LWW, applied: a peer's write of a newer value (the live case);
- single-entry LWW, stale: the same messages again (a duplicate costs less);
- batched LWW (50 entries per message), applied, per entry;
- PN-counter, single entry, applied;
- a Store over the memory transport with one watcher: messages from a peer published
  on the store's topic until the watcher has seen them all, per message (target 15 µs;
  no floor: it is an absolute target).

Targets: applied LWW <= 3x the floor, PN-counter <= 5x, a stale write cheaper than an
applied one. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from podshare import Store
from podshare.crdt import PNCounter
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.replica import Replica
from podshare.transport import MemoryNetwork, MemoryTransport

NOW = 1_700_000_000_000


def _pair(tp: Any) -> tuple[Replica[Any], Replica[Any]]:
    codec = value_codec(None if tp is object else tp)
    merger = None
    if tp is PNCounter:
        from podshare.crdt.merger import merger_for

        merger = merger_for(PNCounter)
    a: Replica[Any] = Replica("s", "a", 1, codec, merger=merger, now=NOW)
    b: Replica[Any] = Replica("s", "b", 2, codec, merger=merger, now=NOW)
    a.local_set("warm", codec.empty() if codec.empty else 1, NOW)
    for out in a.data_to_send():
        b.receive(out.data, NOW)
    b.events_received()
    b.emit_data_events = False
    return a, b


def lww_messages(n: int, batch: int) -> tuple[list[bytes], Callable[[], Replica[Any]]]:
    a, _ = _pair(object)
    out: list[bytes] = []
    for i in range(n):
        if batch == 1:
            a.local_set(f"k{i % 1000}", {"v": i, "name": "x"}, NOW + i)
        else:
            a.local_set_many(
                [(f"k{(i * batch + j) % 5000}", {"v": i, "name": "x"}) for j in range(batch)],
                NOW + i,
            )
        out.extend(o.data for o in a.data_to_send())
    return out, lambda: _pair(object)[1]


def counter_messages(n: int) -> tuple[list[bytes], Callable[[], Replica[Any]]]:
    a, _ = _pair(PNCounter)
    out: list[bytes] = []
    for i in range(n):
        a.local_update(f"c{i % 100}", lambda c: c.increment("a", 1), NOW + i)
        out.extend(o.data for o in a.data_to_send())
    return out, lambda: _pair(PNCounter)[1]


def time_receive(make: Callable[[], Replica[Any]], messages: list[bytes], twice: bool) -> float:
    """Seconds to receive every message (``twice``: the second, stale, delivery)."""
    replica = make()
    if twice:
        for i, data in enumerate(messages):
            replica.receive(data, NOW + i)
    started = time.perf_counter()
    for i, data in enumerate(messages):
        replica.receive(data, NOW + i)
    return time.perf_counter() - started


def floor_lww(messages: list[bytes]) -> float:
    decoder = msgspec.msgpack.Decoder(wire.Writes)
    values = msgspec.json.Decoder()
    table: dict[str, Any] = {}
    started = time.perf_counter()
    for data in messages:
        for e in decoder.decode(data).entries:
            table[e.key] = values.decode(e.value)
    return time.perf_counter() - started


def floor_counter(messages: list[bytes]) -> float:
    """Decode plus a hand-rolled max-merge of per-node counts (what a PN-counter does)."""
    decoder = msgspec.msgpack.Decoder(wire.Writes)
    counts = msgspec.msgpack.Decoder(Any)
    table: dict[str, dict[str, int]] = {}
    started = time.perf_counter()
    for data in messages:
        for e in decoder.decode(data).entries:
            state = counts.decode(e.value)
            mine = table.setdefault(e.key, {})
            for side in ("p", "n"):
                for node, c in state.get(side, {}).items():
                    slot = side + node
                    if c > mine.get(slot, 0):
                        mine[slot] = c
    return time.perf_counter() - started


def median_ratio(
    mine: Callable[[], float], floor: Callable[[], float], repeats: int
) -> tuple[float, float, float]:
    ours: list[float] = []
    base: list[float] = []
    for _ in range(repeats):
        ours.append(mine())
        base.append(floor())
    m, f = statistics.median(ours), statistics.median(base)
    return m, f, m / f


async def store_per_message(n: int) -> float:
    """µs per message through a Store on the memory transport, with one watcher."""
    a, _ = _pair(object)
    messages: list[bytes] = []
    for i in range(n):
        a.local_set(f"k{i % 1000}", {"v": i}, int(time.time() * 1000) + i % 10)
        messages.extend(o.data for o in a.data_to_send())
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, buffer_size=n + 10) as peer,
        MemoryTransport(network=net, buffer_size=n + 10) as tr,
    ):
        # Two transports on one network: "peer" plays the remote writer.
        store: Store[Any] = Store("s", tr, node_id="b", anti_entropy_interval=3600.0)
        async with store, store.watch(buffer=n + 10) as events:
            started = time.perf_counter()
            for data in messages:
                await peer.publish("ps/s", data)
            seen = 0
            async for _ in events:
                seen += 1
                if seen >= n:
                    break
            return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n, r = args.messages, args.repeats
    rows: list[tuple[str, float, float, float, str]] = []

    single, make = lww_messages(n, 1)
    m, f, ratio = median_ratio(
        lambda: time_receive(make, single, False), lambda: floor_lww(single), r
    )
    applied_us = m / n * 1e6
    rows.append(("LWW single entry, applied", applied_us, f / n * 1e6, ratio, "<= 3x"))
    m2, f2, ratio2 = median_ratio(
        lambda: time_receive(make, single, True), lambda: floor_lww(single), r
    )
    rows.append(("LWW single entry, stale", m2 / n * 1e6, f2 / n * 1e6, ratio2, "< applied"))

    batched, make_b = lww_messages(n // 50, 50)
    entries = sum(1 for _ in range(len(batched))) * 50
    m3, f3, ratio3 = median_ratio(
        lambda: time_receive(make_b, batched, False), lambda: floor_lww(batched), r
    )
    per_entry = (m3 / entries * 1e6, f3 / entries * 1e6)
    rows.append(("LWW 50 per message, per entry", *per_entry, ratio3, "<= 3x"))

    counters, make_c = counter_messages(n)
    m4, f4, ratio4 = median_ratio(
        lambda: time_receive(make_c, counters, False), lambda: floor_counter(counters), r
    )
    rows.append(("PN-counter single entry", m4 / n * 1e6, f4 / n * 1e6, ratio4, "<= 5x"))

    store_us = statistics.median(anyio.run(store_per_message, n) for _ in range(3))

    print(f"{'message (µs per entry)':<32}{'podshare':>10}{'floor':>10}{'ratio':>8}  target")
    for what, mine, floor, ratio, target in rows:
        print(f"{what:<32}{mine:>10.2f}{floor:>10.2f}{ratio:>8.2f}  {target}")
    print(f"{'Store + watcher, per message':<32}{store_us:>10.2f}{'':>10}{'':>8}  <= 15 µs")
    print(f"stale is {m2 / m:.2f}x an applied write (target < 1)")


if __name__ == "__main__":
    main()
