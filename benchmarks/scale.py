"""Fleet scale on the simulated network: liveness, writes, rolling restarts, partition heals.

Runs the real cores (one Membership and one Replica per pod, as the store drives them)
on :class:`~podshare.testing.SimNetwork`, with simulated time, for N = 3 ... 1,000 pods,
and prints one table row per N:

- **idle deliveries/s per pod**: messages each pod receives per second with nothing
  written (liveness: ring probes and beacons);
- **deliveries and bytes per write**: what one single-key write costs the fleet;
- **rolling restart**: N existing pods holding ``--keys`` keys, then N new pods joining
  one after the other: digest exchanges, bytes delivered over (state size x N), the
  most full transfers one replica served against its fair share (N transfers over N
  existing replicas), and simulated seconds from the last join until every replica
  holds every key and no exchange runs (run for N <= ``--restart-max``);
- **partition heal**: the fleet split in two for 30 s with 50 writes on each side, then
  healed: exchanges and bytes until every pod holds the same map;
- **per-message cost**: the CPU of one received heartbeat-like liveness message and of
  one single-entry write, against the number of peers known (flat is the goal).

Usage: ``python benchmarks/scale.py [--max 1000] [--keys 10000] [--restart-max 100]``.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from podshare.store import wire
from podshare.store.membership import LivenessOptions
from podshare.store.replica import ReplicaOptions
from podshare.testing import SimNetwork

LIVENESS = LivenessOptions(heartbeat_interval_ms=1_000, down_after_ms=5_000)
OPTIONS = ReplicaOptions(hello_window_ms=300, sync_timeout_ms=2_000)


def fleet(n: int, seed: int = 0) -> SimNetwork:
    net = SimNetwork(seed=seed, options=OPTIONS, liveness=LIVENESS)
    for i in range(n):
        net.add(f"pod-{i:04}")
        net.run()
    net.advance(10_000, step_ms=200)  # let views settle (join beacons, member lists)
    return net


def idle_rate(net: SimNetwork, seconds: int = 20) -> float:
    before = dict(net.deliveries)
    net.advance(seconds * 1000, step_ms=200)
    per_pod = [net.deliveries.get(p, 0) - before.get(p, 0) for p in net.nodes]
    return sum(per_pod) / len(per_pod) / seconds


def write_cost(net: SimNetwork) -> tuple[float, float]:
    d0, b0 = net.delivered, net.bytes_sent
    writes = 20
    for i in range(writes):
        net.set("pod-0000", f"w{i}", i)
        net.run()
    return (net.delivered - d0) / writes, (net.bytes_sent - b0) / writes


def rolling_restart(n: int, keys: int) -> dict[str, float]:
    net = fleet(n)
    first = net.replica("pod-0000")
    for i in range(keys):
        first.local_set(f"key:{i}", {"i": i}, net.now)
    net.flush()
    net.run()
    net.sync_all(rounds=1)
    served_before = {p: node.replica.sync.full_transfers for p, node in net.nodes.items()}
    d0, b0 = net.delivered, net.bytes_sent
    exchanges0 = sum(node.replica.stats.refreshes for node in net.nodes.values())
    old = list(net.nodes)
    for i in range(n):
        net.add(f"new-{i:04}")
        net.run()
        net.advance(200, step_ms=100)
    joined_at = net.now
    # Quiet: every replica holds every key and no exchange runs anywhere.
    quiet_since = None
    while net.now - joined_at < 120_000:
        net.advance(200, step_ms=200)
        if all(len(node.replica.values) == keys for node in net.nodes.values()) and not any(
            node.replica.sync.requesting() or node.replica.sync.serving
            for node in net.nodes.values()
        ):
            quiet_since = net.now
            break
    exchanges = sum(node.replica.stats.refreshes for node in net.nodes.values()) - exchanges0
    # Full transfers each replica served (old and new ones: a joined replica serves too);
    # the fair share is N transfers over the N replicas that existed.
    served = [
        node.replica.sync.full_transfers - served_before.get(p, 0) for p, node in net.nodes.items()
    ]
    state_bytes = sum(len(e.value or b"") + len(k) + 40 for k, e in first.state.entries.items())
    total = net.bytes_sent - b0
    return {
        "exchanges": exchanges,
        "bytes": total,
        "bytes_per_state_per_new": total / max(1, state_bytes * n),
        "max_served_share": max(served) / max(1.0, sum(served) / len(old)),
        "quiet_after_s": ((quiet_since or net.now) - joined_at) / 1000,
        "deliveries": net.delivered - d0,
    }


def partition_heal(n: int) -> dict[str, float]:
    net = fleet(n)
    names = sorted(net.nodes)
    left, right = names[: n // 2 or 1], names[n // 2 or 1 :]
    net.partition(left, right)
    for i in range(50):
        net.set(left[i % len(left)], f"left-{i}", i)
        if right:
            net.set(right[i % len(right)], f"right-{i}", i)
    net.advance(30_000, step_ms=500)
    b0 = net.bytes_sent
    exchanges0 = sum(node.replica.stats.refreshes for node in net.nodes.values())
    net.heal()
    start = net.now
    while net.now - start < 120_000 and not (
        net.converged()
        and not any(
            node.replica.sync.requesting() or node.replica.sync.serving
            for node in net.nodes.values()
        )
    ):
        net.advance(200, step_ms=200)
    return {
        "converged": float(net.converged()),
        "seconds": (net.now - start) / 1000,
        "exchanges": sum(node.replica.stats.refreshes for node in net.nodes.values()) - exchanges0,
        "bytes": net.bytes_sent - b0,
    }


def per_message_cost(peers: int) -> tuple[float, float]:
    """CPU (µs) of one liveness beacon and one single-entry write, with ``peers`` known."""
    net = SimNetwork(seed=1, options=OPTIONS, liveness=LIVENESS)
    net.add("me")
    node = net.nodes["me"]
    now = net.now
    for i in range(peers):
        alive = wire.Alive(f"peer-{i}", i + 1, 0, now, bytes(16), now, False, 1_000)
        node.membership.receive(wire.encode(alive), now)
        hello = wire.Hello(f"peer-{i}", i + 1, now, True, False, 0)
        node.replica.receive(wire.encode(hello), now)
    node.membership.events_received()
    node.replica.events_received()
    node.replica.data_to_send()
    beacons = [
        wire.encode(
            wire.Alive(f"peer-{i % peers}", i % peers + 1, 0, now, bytes(16), now, False, 1_000)
        )
        for i in range(2_000)
    ]
    start = time.perf_counter()
    for data in beacons:
        node.membership.receive(data, now)
        node.membership.data_to_send()
    beacon_us = (time.perf_counter() - start) / len(beacons) * 1e6
    writes = []
    for i in range(2_000):
        entry = wire.make_entry(f"k{i}", wire.Stamp(now + i, 0, "peer-0"), 0, b"1")
        writes.append(wire.encode(wire.Writes("peer-0", 1, now + i, [entry])))
    start = time.perf_counter()
    for i, data in enumerate(writes):
        node.replica.receive(data, now + i)
        node.replica.data_to_send()
        node.replica.next_deadline()
    write_us = (time.perf_counter() - start) / len(writes) * 1e6
    return beacon_us, write_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=1_000)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--restart-max", type=int, default=100)
    args = parser.parse_args()
    sizes = [n for n in (3, 10, 30, 100, 300, 1_000) if n <= args.max]
    print(
        f"{'N':>5} {'idle/s/pod':>10} {'deliv/write':>11} {'B/write':>9} "
        f"{'restart: exch':>13} {'bytes/(state*N)':>15} {'max share':>9} {'quiet s':>7} "
        f"{'heal: exch':>10} {'heal s':>6}"
    )
    for n in sizes:
        started = time.perf_counter()
        net = fleet(n)
        idle = idle_rate(net)
        deliveries, nbytes = write_cost(net)
        del net
        restart: dict[str, Any] = {}
        if n <= args.restart_max:
            restart = rolling_restart(n, args.keys)
        heal = partition_heal(n) if n <= 300 else {}
        print(
            f"{n:>5} {idle:>10.1f} {deliveries:>11.1f} {nbytes:>9.0f} "
            f"{restart.get('exchanges', float('nan')):>13.0f} "
            f"{restart.get('bytes_per_state_per_new', float('nan')):>15.2f} "
            f"{restart.get('max_served_share', float('nan')):>9.2f} "
            f"{restart.get('quiet_after_s', float('nan')):>7.1f} "
            f"{heal.get('exchanges', float('nan')):>10.0f} "
            f"{heal.get('seconds', float('nan')):>6.1f}"
            f"   ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print("\nper-message cost against peers known (µs of CPU, one process)")
    print(f"{'peers':>6} {'beacon':>8} {'write':>8}")
    base = None
    for peers in (3, 100, 1_000):
        beacon, write = per_message_cost(peers)
        base = base or (beacon, write)
        print(
            f"{peers:>6} {beacon:>8.2f} {write:>8.2f}   "
            f"(x{beacon / base[0]:.2f}, x{write / base[1]:.2f} of 3 peers)"
        )


if __name__ == "__main__":
    main()
