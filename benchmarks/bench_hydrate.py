"""Benchmark: a late joiner hydrates a big store, over Redis (default config) and TCP.

Run: ``python benchmarks/bench_hydrate.py [--quick] [--repeat N] [--cases ...]``.

For each case (``100k x 1KB``, ``1M x 100B``; ``--quick``: ``10k x 1KB``) and transport:

- a *seed* process (spawned) opens a ``Store`` and writes N keys of S bytes with
  ``set_many`` in batches, then waits;
- a *joiner* process (spawned, one per repetition) opens a ``Store`` of the same name;
  it measures the seconds from entering ``async with`` until it is ``synced`` holding
  all N keys, and the longest stall of its event loop (a task sleeping 1 ms in a loop
  records its largest lateness), which bounds how long the receive loop was blocked.

Redis: a ``redis-server`` of the benchmark's own on a free loopback port with the
default configuration (notably ``client-output-buffer-limit pubsub 32mb 8mb 60``), no
persistence of Redis's own, and ``persistence=False`` on both stores, so the keys can
only come from the seed over pub/sub. Disconnects: ``RedisStats.reconnects`` of the seed
and the joiner (``gaps_reported`` and ``messages_dropped`` are printed beside them).

TCP: the joiner dials the seed. Disconnects: ``TcpStats.peers_stalled``,
``peers_silent`` and ``reconnects`` of both sides.

Each figure is the median of ``--repeat`` joiners (default 3) against one seed, and the
first joiner's seconds are printed beside it: its sync is the first the seed answers, so
it pays for the seed's first digest of everything written so far. Figures are printed,
never asserted. ``BENCH_TRACE=1`` prints the joiner's progress every second,
``BENCH_STALLS=1`` every stall over 10 ms, ``BENCH_JOIN_TIMEOUT`` bounds a joiner
(default 120 s); ``--profile`` profiles the seed too unless ``BENCH_PROFILE_SEED=0``.

Targets (issue 12): 100k x 1KB in <= 5 s, 1M x 100B in <= 10 s, zero disconnects,
receive-loop stalls of a few ms at most.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import random
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
from _common import redis_server

CASES: dict[str, tuple[int, int, float]] = {  # name: (keys, value bytes, target seconds)
    "10k x 1KB": (10_000, 1000, 5.0),
    "100k x 1KB": (100_000, 1000, 5.0),
    "1M x 100B": (1_000_000, 100, 10.0),
}
BATCH = 1000  # keys per set_many while seeding
PROFILE_SEED = os.environ.get("BENCH_PROFILE_SEED", "1") != "0"  # with --profile
JOIN_TIMEOUT = float(
    os.environ.get("BENCH_JOIN_TIMEOUT", 120)
)  # a joiner that is not complete by then reports what it holds


def make_transport(kind: str, target: str, *, seed: bool) -> Any:
    """A RedisTransport on ``target`` (a URL), or a TcpTransport (the joiner dials it)."""
    from podshare.transport import RedisTransport, TcpTransport

    if kind == "redis":
        return RedisTransport(target, channel_prefix="bench-hydrate")
    if seed:
        return TcpTransport(listen="127.0.0.1:0")
    return TcpTransport(listen="127.0.0.1:0", peers=[target])


def disconnect_counts(kind: str, stats: Any) -> dict[str, int]:
    """The transport counters that say a connection was lost or messages missed."""
    if kind == "redis":
        return {
            "reconnects": stats.reconnects,
            "gaps": stats.gaps_reported,
            "dropped": stats.messages_dropped,
        }
    return {
        "stalled": stats.peers_stalled,
        "silent": stats.peers_silent,
        "reconnects": stats.reconnects,
        "dropped": stats.messages_dropped,
    }


def values(count: int, size: int) -> Iterator[dict[str, str]]:
    """Batches of ``count`` keys whose JSON-encoded values are ``size`` bytes each."""
    rng = random.Random(12)
    chars = size - 2  # a JSON string: its characters and two quotes
    for start in range(0, count, BATCH):
        yield {
            f"k{i:07d}": rng.randbytes(chars // 2 + 1).hex()[:chars]
            for i in range(start, min(count, start + BATCH))
        }


# -- the seed process ----------------------------------------------------------------


def seed_main(
    conn: multiprocessing.connection.Connection,
    kind: str,
    target: str,
    name: str,
    n: int,
    s: int,
    profile: str | None,
) -> None:
    anyio.run(_seed, conn, kind, target, name, n, s, profile)


async def _seed(
    conn: multiprocessing.connection.Connection,
    kind: str,
    target: str,
    name: str,
    n: int,
    s: int,
    profile: str | None,
) -> None:
    from podshare import Store

    async with (
        make_transport(kind, target, seed=True) as transport,
        Store[str](name, transport, persistence=False, hydrate_timeout=1.0) as store,
    ):
        started = time.perf_counter()
        for batch in values(n, s):
            await store.set_many(batch)
        seeded = time.perf_counter() - started
        address = transport.address if kind == "tcp" else target
        conn.send(("ready", address, seeded, len(store)))
        profiler = None
        if profile:  # the serving side only, not the seeding
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        while True:  # commands from the parent, read in a thread so the loop keeps serving
            command = await anyio.to_thread.run_sync(conn.recv)
            if command == "stats":
                conn.send(disconnect_counts(kind, transport.stats()))
            else:
                break
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


async def trace(store: Any, started: float) -> None:
    """Print the joiner's sync progress every second (``BENCH_TRACE=1``)."""
    while True:
        await anyio.sleep(1)
        if store.state not in ("opening", "open"):
            continue
        st = store.stats()
        print(
            f"      t={time.perf_counter() - started:5.1f}s keys={len(store)} "
            f"refreshes={st.refreshes} failed={st.syncs_failed} received={st.messages_received}",
            flush=True,
        )


# -- the joiner process --------------------------------------------------------------


@dataclass
class JoinResult:
    """What one joiner measured."""

    entered: float  # seconds until ``async with`` returned
    complete: float | None  # seconds until synced with all keys (None: not within timeout)
    synced_on_entry: bool
    held_on_entry: int
    held: int
    max_stall_ms: float
    counts: dict[str, int]


def joiner_main(
    conn: multiprocessing.connection.Connection,
    kind: str,
    target: str,
    name: str,
    n: int,
    profile: str | None,
) -> None:
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        result = anyio.run(_join, kind, target, name, n)
        profiler.disable()
        profiler.dump_stats(profile)
    else:
        result = anyio.run(_join, kind, target, name, n)
    conn.send(result)


async def _join(kind: str, target: str, name: str, n: int) -> JoinResult:
    from podshare import Store

    max_stall = 0.0
    started = time.perf_counter()
    stalls: list[tuple[float, float]] = []

    async def watch_loop() -> None:
        nonlocal max_stall
        while True:
            before = time.perf_counter()
            await anyio.sleep(0.001)
            late = time.perf_counter() - before - 0.001
            max_stall = max(max_stall, late)
            if late > 0.01:
                stalls.append((before - started, late))

    transport = make_transport(kind, target, seed=False)  # imports done before measuring
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_loop)
        await anyio.sleep(0.01)
        async with transport:
            started = time.perf_counter()
            store: Store[str] = Store(
                name, transport, persistence=False, hydrate_timeout=JOIN_TIMEOUT
            )
            if os.environ.get("BENCH_TRACE"):
                tg.start_soon(trace, store, started)
            async with store:
                entered = time.perf_counter() - started
                synced_on_entry, held_on_entry = store.synced, len(store)
                complete: float | None = None
                with anyio.move_on_after(max(0.0, started + JOIN_TIMEOUT - time.perf_counter())):
                    await store.wait_synced()
                    # Synced but short of n keys would be a bug worth timing: poll (5 ms,
                    # bounded by the timeout above) rather than trust a watcher's buffer.
                    while len(store) < n:  # noqa: ASYNC110
                        await anyio.sleep(0.005)
                    complete = time.perf_counter() - started
                counts = disconnect_counts(kind, transport.stats())
                held = len(store)
        tg.cancel_scope.cancel()
    if os.environ.get("BENCH_STALLS"):
        print(
            "stalls > 10 ms (start s, ms):", [(round(a, 3), round(b * 1000, 1)) for a, b in stalls]
        )
    return JoinResult(
        entered, complete, synced_on_entry, held_on_entry, held, max_stall * 1000, counts
    )


# -- the parent ----------------------------------------------------------------------


def run_case(
    ctx: Any, kind: str, url: str, case: str, repeat: int, profile: str | None
) -> dict[str, Any]:
    n, s, target = CASES[case]
    name = f"hydrate-{kind}-{n}-{s}"
    parent, child = ctx.Pipe()
    seed_prof = f"{profile}.{kind}.{n}.seed" if profile and PROFILE_SEED else None
    seed = ctx.Process(
        target=seed_main, args=(child, kind, url, name, n, s, seed_prof), daemon=True
    )
    seed.start()
    try:
        if not parent.poll(1800):
            raise RuntimeError("the seed did not finish seeding in 30 min")
        _, address, seeded, seed_held = parent.recv()
        print(
            f"  {case} {kind}: seeded {seed_held} keys in {seeded:.1f} s "
            f"({seed_held / seeded:,.0f} keys/s)",
            flush=True,
        )
        results: list[JoinResult] = []
        seed_counts: list[dict[str, int]] = []
        for i in range(repeat):
            parent.send("stats")
            before = parent.recv()
            jparent, jchild = ctx.Pipe()
            prof = f"{profile}.{kind}.{n}.{i}" if profile else None
            joiner = ctx.Process(
                target=joiner_main, args=(jchild, kind, address, name, n, prof), daemon=True
            )
            joiner.start()
            if not jparent.poll(JOIN_TIMEOUT + 60):
                joiner.kill()
                raise RuntimeError("the joiner did not report")
            result: JoinResult = jparent.recv()
            joiner.join(10)
            parent.send("stats")
            after = parent.recv()
            seed_counts.append({k: after[k] - before[k] for k in after})
            results.append(result)
            complete = "-" if result.complete is None else f"{result.complete:.2f}"
            print(
                f"    run {i + 1}: entered {result.entered:.2f} s (synced={result.synced_on_entry},"
                f" {result.held_on_entry} keys), complete {complete} s, stall "
                f"{result.max_stall_ms:.1f} ms, joiner {result.counts}, seed {seed_counts[-1]}",
                flush=True,
            )
    finally:
        if seed.is_alive():
            parent.send("stop")  # it writes its profile, if asked, and leaves
            seed.join(30)
        if seed.is_alive():
            seed.kill()
    times = [r.complete if r.complete is not None else float("inf") for r in results]
    disconnects = [
        _disconnects(kind, r.counts) + _disconnects(kind, c)
        for r, c in zip(results, seed_counts, strict=True)
    ]
    return {
        "case": case,
        "kind": kind,
        "seconds": statistics.median(times),
        "first": times[0],
        "disconnects": statistics.median(disconnects),
        "stall": statistics.median(r.max_stall_ms for r in results),
        "target": target,
        "on_entry": sum(r.synced_on_entry and r.held_on_entry == n for r in results),
        "runs": len(results),
    }


def _disconnects(kind: str, counts: dict[str, int]) -> int:
    if kind == "redis":
        return counts["reconnects"]
    return counts["stalled"] + counts["silent"] + counts["reconnects"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k x 1KB only")
    parser.add_argument("--repeat", type=int, default=3, help="joiners per case (median)")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), help="cases to run")
    parser.add_argument(
        "--transports", nargs="*", default=["redis", "tcp"], choices=["redis", "tcp"]
    )
    parser.add_argument(
        "--profile",
        help="cProfile each joiner into PROFILE.<kind>.<n>.<i>, the seed's serving into .seed",
    )
    args = parser.parse_args()
    cases = args.cases or (["10k x 1KB"] if args.quick else ["100k x 1KB", "1M x 100B"])
    ctx = multiprocessing.get_context("spawn")
    rows = []
    with redis_server() as url:
        for case in cases:
            for kind in args.transports:
                rows.append(run_case(ctx, kind, url, case, args.repeat, args.profile))
    print()
    header = (
        *("case", "transport", "seconds", "first joiner s", "disconnects", "max stall ms"),
        *("target", "on entry"),
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print(
            f"| {row['case']} | {row['kind']} | {row['seconds']:.2f} | {row['first']:.2f} |"
            f" {row['disconnects']:g} |"
            f" {row['stall']:.1f} | <= {row['target']:g} s, 0 | {row['on_entry']}/{row['runs']} |"
        )
    print(
        f"\nmedian of {args.repeat} joiners (the first joiner, beside it, is the first sync"
        f" the seed answers); cpu count {os.cpu_count()}"
    )


if __name__ == "__main__":
    main()
