"""Hypothesis state machines over a simulated cluster of replica cores.

2 to 5 replicas of one store on a network that drops, duplicates, reorders and
partitions; nodes join (some in isolation, so first contact happens with state on both
sides), leave, crash, and run clocks far ahead. After heal + anti-entropy every live
replica must hold the same state, LWW keys must match a sequential model (the highest
stamp wins, deletes included; only writes of crashed nodes may be lost), and ephemeral
entries of dead writers must be gone everywhere.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from podshare.crdt import ORSet, Stamp
from podshare.store.events import EventKind
from podshare.store.replica import ReplicaOptions
from podshare.testing import SimNetwork

KEYS = ("a", "b", "c")
EPHEMERAL_KEYS = ("e1", "e2")
OPTIONS = ReplicaOptions(
    tombstone_ttl_ms=10**12,  # no compaction here: see TombstoneHorizonMachine
    heartbeat_interval_ms=100,
    down_after_ms=400,
    hello_window_ms=150,
    sync_timeout_ms=300,
    max_message_size=4096,
)
SKEW_MS = 10 * 60 * 1000  # far beyond max_clock_skew_ms


class ClusterMachine(RuleBasedStateMachine):
    """Common rules: membership, faults and partitions over a SimNetwork."""

    value_type: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.net = SimNetwork(seed=0, value_type=self.value_type, options=OPTIONS)
        self.next_id = 0
        self.groups: dict[str, int] = {}
        self.gone: set[str] = set()

    # --- membership ---------------------------------------------------------------

    def _new_id(self) -> str:
        self.next_id += 1
        return f"n{self.next_id}"

    def _apply_partition(self) -> None:
        if len(set(self.groups.values())) <= 1:
            self.net.heal()
            return
        by_group: dict[int, set[str]] = {}
        for node, group in self.groups.items():
            by_group.setdefault(group, set()).add(node)
        self.net.partition(*by_group.values())

    @initialize(n=st.integers(2, 4), seed=st.integers(0, 2**16))
    def start(self, n: int, seed: int) -> None:
        self.net.rng.seed(seed)
        for _ in range(n):
            node = self._new_id()
            self.groups[node] = 0
            self.net.add(node)
        self.net.settle()

    def live(self) -> list[str]:
        return sorted(self.net.nodes)

    @precondition(lambda self: len(self.net.nodes) < 5)
    @rule(isolated=st.booleans(), skewed=st.booleans())
    def join(self, isolated: bool, skewed: bool) -> None:
        node = self._new_id()
        self.groups[node] = 100 + self.next_id if isolated else 0
        self._apply_partition()
        self.net.add(node, clock_offset_ms=SKEW_MS if skewed else 0)
        self.net.settle()

    @precondition(lambda self: len(self.net.nodes) > 2)
    @rule(data=st.data(), clean=st.booleans())
    def stop(self, data: st.DataObject, clean: bool) -> None:
        node = data.draw(st.sampled_from(self.live()))
        if clean:
            self.net.leave(node)
        else:
            self.net.crash(node)
        # Either way, writes the network dropped before it left are gone with it.
        self.gone.add(node)
        self.groups.pop(node, None)

    # --- faults -------------------------------------------------------------------

    @rule(
        drop=st.sampled_from([0.0, 0.1, 0.5]),
        duplicate=st.sampled_from([0.0, 0.2]),
        reorder=st.sampled_from([0.0, 0.5, 1.0]),
    )
    def faults(self, drop: float, duplicate: float, reorder: float) -> None:
        self.net.drop, self.net.duplicate, self.net.reorder = drop, duplicate, reorder

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        for node in self.live():
            self.groups[node] = data.draw(st.integers(0, 1))
        self._apply_partition()

    @rule()
    def heal(self) -> None:
        for node in self.groups:
            self.groups[node] = 0
        self.net.heal()

    @rule(steps=st.integers(1, 30))
    def deliver(self, steps: int) -> None:
        for _ in range(steps):
            if not self.net.step():
                break

    @rule(ms=st.sampled_from([50, 200, 1_000]))
    def advance(self, ms: int) -> None:
        self.net.advance(ms, step_ms=50)

    @rule(data=st.data())
    def refresh(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.replica(node).start_sync(self.net.now + self.net.nodes[node].clock_offset_ms)
        self.net.flush(node)

    # --- the end ------------------------------------------------------------------

    def converge(self) -> None:
        net = self.net
        self.heal()
        net.drop = net.duplicate = net.reorder = 0.0
        net.run()
        # Long enough for every crash to be detected and every heartbeat to be heard.
        net.advance(3 * OPTIONS.down_after_ms, step_ms=50)
        net.sync_all(rounds=2)
        net.advance(OPTIONS.heartbeat_interval_ms, step_ms=50)

    def check_converged(self) -> None:
        states = self.net.states()
        first = next(iter(states.values()))
        for node, state in states.items():
            assert state == first, f"{node} diverged:\n{state}\nvs\n{first}"


class LwwMachine(ClusterMachine):
    """Last-writer-wins: converges, matches the sequential model, ephemeral entries agree."""

    def __init__(self) -> None:
        super().__init__()
        # key -> [(stamp, value or None for a delete, writer)]
        self.writes: dict[str, list[tuple[Stamp, Any, str]]] = {}

    def _record(self, node: str, before: int) -> None:
        for ev in self.net.nodes[node].events[before:]:
            if ev.origin == node and ev.stamp is not None and ev.kind is EventKind.SET:
                self.writes.setdefault(ev.key, []).append((ev.stamp, ev.value, node))

    @rule(data=st.data(), key=st.sampled_from(KEYS), value=st.integers(0, 9))
    def set(self, data: st.DataObject, key: str, value: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        before = len(self.net.nodes[node].events)
        self.net.set(node, key, value)
        self._record(node, before)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def delete(self, data: st.DataObject, key: str) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.delete(node, key)
        stamp = self.net.replica(node).entry_stamp(key)
        assert stamp is not None
        self.writes.setdefault(key, []).append((stamp, None, node))

    @rule(data=st.data(), key=st.sampled_from(EPHEMERAL_KEYS), value=st.integers(0, 9))
    def set_ephemeral(self, data: st.DataObject, key: str, value: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.set(node, key, value, ephemeral=True)

    @invariant()
    def values_match_entries(self) -> None:
        for node in self.net.nodes.values():
            replica = node.replica
            for key in replica.values:
                assert replica.entry_stamp(key) is not None

    def teardown(self) -> None:
        if not self.net.nodes:
            return
        self.converge()
        self.check_converged()
        live = set(self.net.nodes)
        replica = self.net.replica(self.live()[0])
        for key in KEYS:
            writes = self.writes.get(key, [])
            survivors = [w for w in writes if w[2] not in self.gone]
            final = replica.entry_stamp(key)
            if final is None:
                assert not survivors, f"{key}: writes of live nodes lost: {survivors}"
                continue
            chosen = [w for w in writes if w[0] == final]
            assert len(chosen) == 1, f"{key}: final stamp {final} is no recorded write"
            stamp, value, _ = chosen[0]
            assert all(w[0] <= stamp for w in survivors), f"{key}: a newer write lost"
            assert replica.values.get(key) == value
        for key in EPHEMERAL_KEYS:
            if key in replica.values:
                stamp = replica.entry_stamp(key)
                assert stamp is not None
                assert stamp.origin in live, f"{key} outlived its writer {stamp.origin}"
                assert replica.is_ephemeral(key)


class OrSetMachine(ClusterMachine):
    """A merger store (ORSet): adds, removes, whole-state merges and deletes converge."""

    value_type = ORSet

    @rule(data=st.data(), key=st.sampled_from(KEYS), x=st.integers(0, 5))
    def add(self, data: st.DataObject, key: str, x: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.update(node, key, lambda s: s.add(x, node))

    @rule(data=st.data(), key=st.sampled_from(KEYS), x=st.integers(0, 5))
    def remove(self, data: st.DataObject, key: str, x: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.update(node, key, lambda s: s.remove(x))

    @rule(data=st.data(), key=st.sampled_from(KEYS), xs=st.lists(st.integers(0, 5), max_size=3))
    def merge_state(self, data: st.DataObject, key: str, xs: list[int]) -> None:
        node = data.draw(st.sampled_from(self.live()))
        state: ORSet[int] = ORSet()
        for x in xs:
            state = state.add(x, f"{node}-side")
        self.net.set(node, key, state)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def delete(self, data: st.DataObject, key: str) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.delete(node, key)

    def teardown(self) -> None:
        if not self.net.nodes:
            return
        self.converge()
        self.check_converged()


# Explicit, because the CI profile's 200 examples of 50 steps would take minutes.
_SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestLww = LwwMachine.TestCase
TestLww.settings = _SETTINGS
TestOrSet = OrSetMachine.TestCase
TestOrSet.settings = _SETTINGS


HORIZON_OPTIONS = ReplicaOptions(
    tombstone_ttl_ms=5_000,
    compaction_interval_ms=500,
    heartbeat_interval_ms=100,
    down_after_ms=400,
    hello_window_ms=150,
    sync_timeout_ms=300,
)


class TombstoneHorizonMachine(RuleBasedStateMachine):
    """Replicas cut off longer than ``tombstone_ttl`` come back without resurrecting deletes.

    Deletes compact after the TTL. Whatever the partitions, after heal + anti-entropy the
    replicas agree, no key lives on under a value older than a surviving delete of it,
    and no write younger than the TTL is lost.
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = SimNetwork(seed=0, options=HORIZON_OPTIONS)
        self.writes: dict[str, list[tuple[Stamp, bool]]] = {}  # key -> (stamp, is_delete)

    @initialize(n=st.integers(2, 4), seed=st.integers(0, 2**16))
    def start(self, n: int, seed: int) -> None:
        self.net.rng.seed(seed)
        for i in range(n):
            self.net.add(f"n{i}")
        self.net.settle()

    def live(self) -> list[str]:
        return sorted(self.net.nodes)

    @rule(data=st.data(), key=st.sampled_from(KEYS), value=st.integers(0, 9))
    def set(self, data: st.DataObject, key: str, value: int) -> None:
        node = data.draw(st.sampled_from(self.live()))
        (ev,) = self.net.replica(node).local_set(key, value, self.net.now)
        assert ev.stamp is not None
        self.writes.setdefault(key, []).append((ev.stamp, False))
        self.net.flush(node)

    @rule(data=st.data(), key=st.sampled_from(KEYS))
    def delete(self, data: st.DataObject, key: str) -> None:
        node = data.draw(st.sampled_from(self.live()))
        self.net.delete(node, key)
        stamp = self.net.replica(node).entry_stamp(key)
        assert stamp is not None
        self.writes.setdefault(key, []).append((stamp, True))

    @rule(data=st.data())
    def partition(self, data: st.DataObject) -> None:
        groups = [data.draw(st.integers(0, 1)) for _ in self.live()]
        self.net.partition(
            *({n for n, g in zip(self.live(), groups, strict=True) if g == k} for k in (0, 1))
        )

    @rule()
    def heal(self) -> None:
        self.net.heal()

    @rule(data=st.data(), key=st.sampled_from(KEYS), heal=st.booleans())
    def long_absence(self, data: st.DataObject, key: str, heal: bool) -> None:
        """One replica is cut off for longer than the TTL while the others delete a key."""
        away = data.draw(st.sampled_from(self.live()))
        rest = [n for n in self.live() if n != away]
        self.net.partition({away}, rest)
        node = data.draw(st.sampled_from(rest))
        self.net.delete(node, key)
        stamp = self.net.replica(node).entry_stamp(key)
        assert stamp is not None
        self.writes.setdefault(key, []).append((stamp, True))
        self.net.advance(HORIZON_OPTIONS.tombstone_ttl_ms + 2_000, step_ms=250)
        if heal:
            self.net.heal()

    @rule(drop=st.sampled_from([0.0, 0.3]))
    def faults(self, drop: float) -> None:
        self.net.drop = drop

    @rule(ms=st.sampled_from([100, 1_000, 6_000, 12_000]))
    def advance(self, ms: int) -> None:
        self.net.advance(ms, step_ms=100)

    def teardown(self) -> None:
        net = self.net
        net.heal()
        net.drop = 0.0
        net.advance(3 * HORIZON_OPTIONS.down_after_ms, step_ms=50)
        net.sync_all(rounds=2)
        states = net.states()
        first = next(iter(states.values()))
        assert all(s == first for s in states.values()), states
        replica = net.replica(self.live()[0])
        horizon = net.now - HORIZON_OPTIONS.tombstone_ttl_ms
        for key, writes in self.writes.items():
            final = replica.entry_stamp(key)
            if key in replica.values:
                assert final is not None
                resurrected = [s for s, is_delete in writes if is_delete and s > final]
                assert not resurrected, f"{key} outlived its delete {resurrected}"
            for stamp, _ in writes:
                if stamp.time >= horizon + HORIZON_OPTIONS.heartbeat_interval_ms:
                    assert final is not None, f"{key}: a recent write was lost"
                    assert final >= stamp, f"{key}: a recent write was lost"


TestTombstoneHorizon = TombstoneHorizonMachine.TestCase
TestTombstoneHorizon.settings = _SETTINGS
