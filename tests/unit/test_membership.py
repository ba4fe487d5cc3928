"""Liveness (a small SWIM): joins, ring probes, suspicion, restarts, goodbyes, and its costs."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from podshare.exceptions import DecodeError, DuplicateNodeId, PodshareError
from podshare.store import wire
from podshare.store.membership import (
    LIVE_TOPIC,
    LivenessOptions,
    MemberEvent,
    Membership,
    commitment_of,
    inbox_of,
)

T0 = 1_700_000_000_000
OPTS = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=500, monitors=2)


class Node:
    """One membership core with what it produced."""

    def __init__(
        self, name: str, nonce: int, now: int, options: LivenessOptions, seed: int
    ) -> None:
        rng = random.Random(seed)
        self.token = rng.randbytes(16)
        self.core = Membership(
            name,
            nonce,
            token=self.token,
            options=options,
            now=now,
            max_message_size=1 << 20,
            rng=rng,
        )
        self.offset = now - T0
        self.events: list[MemberEvent] = []
        self.errors: list[PodshareError] = []

    @property
    def name(self) -> str:
        return self.core.node_id

    def took(self, kind: str, node: str) -> list[int]:
        """The nonces of ``node`` this node reported ``kind`` for."""
        return [e.nonce for e in self.events if e.kind == kind and e.node == node]


class Fleet:
    """Membership cores wired directly: broadcasts reach every other core, inboxes by id."""

    def __init__(self, options: LivenessOptions = OPTS) -> None:
        self.options = options
        self.now = T0
        self.nodes: list[Node] = []
        self.log: list[tuple[str, str | None, Any]] = []  # (sender, to, message)
        self.cut: set[str] = set()  # nodes whose messages are lost both ways
        self._seed = 0

    def add(self, name: str, *, nonce: int | None = None, clock_offset: int = 0) -> Node:
        self._seed += 1
        node = Node(
            name,
            nonce if nonce is not None else 1000 + self._seed,
            self.now + clock_offset,
            self.options,
            self._seed,
        )
        self.nodes.append(node)
        self.run()
        return node

    def get(self, name: str) -> Node:
        (node,) = [n for n in self.nodes if n.name == name]
        return node

    def crash(self, node: Node) -> None:
        self.nodes.remove(node)

    def run(self) -> None:
        """Deliver everything queued, and what that causes, until quiet."""
        for _ in range(10_000):
            moved = False
            for node in list(self.nodes):
                assert node.core.live_count() == recounted(node.core)
                node.events.extend(node.core.events_received())
                node.errors.extend(node.core.errors_received())
                for to, data in node.core.data_to_send():
                    moved = True
                    self.log.append((node.name, to, wire.decode(data, max_size=1 << 20)))
                    for other in list(self.nodes):
                        if other is node or (to is not None and other.name != to):
                            continue
                        if {node.name, other.name} & self.cut:
                            continue
                        other.core.receive(data, self.now + other.offset)
            if not moved:
                return
        raise AssertionError("the fleet did not go quiet")

    def advance(self, ms: int, step: int | None = None) -> None:
        step = step if step is not None else self.options.heartbeat_interval_ms // 2
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + step)
            for node in list(self.nodes):
                now = self.now + node.offset
                if node.core.next_deadline() <= now:
                    node.core.tick(now)
            self.run()

    def sent(self, kind: type[Any], sender: str | None = None) -> list[tuple[str, str | None, Any]]:
        return [e for e in self.log if type(e[2]) is kind and sender in (None, e[0])]


def fleet(*names: str, options: LivenessOptions = OPTS) -> Fleet:
    f = Fleet(options)
    for name in names:
        f.add(name)
    f.advance(3 * options.heartbeat_interval_ms)
    return f


def live_view(node: Node) -> set[str]:
    return set(node.core.live_nodes())


# --- joining and probing -------------------------------------------------------------------


def test_a_node_announces_itself_at_start() -> None:
    f = Fleet()
    a = f.add("a")
    (alive,) = [m for _, to, m in f.sent(wire.Alive)]
    assert (alive.sender, alive.nonce, alive.join) == ("a", a.core.nonce, True)
    assert alive.commitment == commitment_of(a.token)
    assert inbox_of("a") == f"{LIVE_TOPIC}#a"


def test_a_newcomer_gets_the_member_list_from_a_ring_predecessor() -> None:
    f = fleet("a", "b", "c", "d", "e")
    f.log.clear()
    new = f.add("new")
    # Everyone learned of it from its join, and it learned of everyone at once.
    assert live_view(new) == {"a", "b", "c", "d", "e", "new"}
    assert all("new" in live_view(n) for n in f.nodes)
    senders = {src for src, to, _ in f.sent(wire.Members)}
    assert all(to == "new" for _, to, _ in f.sent(wire.Members))
    # Those that sent it are exactly those that now probe it: its ring predecessors.
    f.log.clear()
    f.advance(OPTS.heartbeat_interval_ms)
    probers = {src for src, _, m in f.sent(wire.Ping) if m.target == "new"}
    assert senders == probers
    assert 1 <= len(senders) <= OPTS.monitors


def test_each_node_probes_its_monitors_successors_and_is_probed_by_as_many() -> None:
    f = fleet("a", "b", "c", "d", "e", "f")
    f.log.clear()
    f.advance(OPTS.heartbeat_interval_ms, step=OPTS.heartbeat_interval_ms)
    pings = f.sent(wire.Ping)
    by_sender: dict[str, list[str]] = {}
    for src, to, m in pings:
        assert to == m.target
        by_sender.setdefault(src, []).append(m.target)
    assert all(len(set(t)) == len(t) == OPTS.monitors for t in by_sender.values())
    targets = [t for ts in by_sender.values() for t in ts]
    assert sorted(targets) == sorted(n.name for n in f.nodes for _ in range(OPTS.monitors))
    # Every ping is answered to the pinger's inbox.
    assert sorted((to, m.sender) for _, to, m in f.sent(wire.Ack)) == sorted(
        (src, m.target) for src, _, m in pings
    )


# --- failure, suspicion, refutation ----------------------------------------------------------


def test_a_silent_node_is_suspected_then_down_everywhere_after_down_after() -> None:
    f = fleet("a", "b", "c", "d")
    victim = f.get("c")
    f.crash(victim)
    f.log.clear()
    crashed_at = f.now
    f.advance(OPTS.suspect_after_ms - OPTS.heartbeat_interval_ms)
    assert f.sent(wire.Suspect) == []
    assert all(n.took("down", "c") == [] for n in f.nodes)
    f.advance(OPTS.down_after_ms + 2 * OPTS.heartbeat_interval_ms - (f.now - crashed_at))
    assert {m.target for _, _, m in f.sent(wire.Suspect)} == {"c"}
    assert all(n.took("down", "c") == [victim.core.nonce] for n in f.nodes)
    assert all(n.core.alive("c", victim.core.nonce) is False for n in f.nodes)
    assert all(n.core.down_since("c") is not None for n in f.nodes)


def test_a_forged_suspicion_of_a_live_node_changes_nothing() -> None:
    f = fleet("a", "b", "c")
    b = f.get("b")
    forged = wire.Suspect("mallory", 1, "b", b.core.nonce, b.core.version)
    for node in f.nodes:
        node.core.receive(wire.encode(forged), f.now)
    f.run()
    # b refuted with a higher version, which everyone took.
    assert b.core.version == 1
    refutation = [m for src, _, m in f.sent(wire.Alive, "b") if m.version == 1]
    assert refutation
    f.advance(2 * OPTS.down_after_ms)
    assert all(n.took("down", "b") == [] for n in f.nodes)
    assert all(n.core.alive("b", b.core.nonce) is True for n in f.nodes if n is not b)


def test_a_partitioned_node_is_down_then_comes_back_up() -> None:
    f = fleet("a", "b", "c")
    f.cut = {"c"}
    f.advance(OPTS.down_after_ms + 3 * OPTS.heartbeat_interval_ms)
    c = f.get("c")
    assert f.get("a").took("down", "c") == [c.core.nonce]
    f.cut = set()
    f.advance(3 * OPTS.down_after_ms)
    # It hears it counts as down (a Suspect to its inbox), refutes, and is up again.
    assert f.get("a").took("up", "c") == [c.core.nonce, c.core.nonce]
    assert f.get("a").core.alive("c", c.core.nonce) is True


# --- restarts and duplicate ids --------------------------------------------------------------


def test_a_restart_ends_the_previous_life_at_once() -> None:
    f = fleet("a", "b")
    old = f.get("b")
    f.crash(old)
    f.now += 10
    new = f.add("b", nonce=old.core.nonce + 1)
    a = f.get("a")
    assert a.took("down", "b") == [old.core.nonce]
    assert a.took("up", "b") == [old.core.nonce, new.core.nonce]
    assert a.core.alive("b", old.core.nonce) is False
    assert a.core.alive("b", new.core.nonce) is True


def test_a_restart_that_looks_older_is_suspected_not_downed() -> None:
    # The previous life ran on a fast clock: its start looks later than the new one's.
    f = Fleet()
    f.add("a")
    old = f.add("b", clock_offset=60_000)
    f.advance(3 * OPTS.heartbeat_interval_ms)
    f.crash(old)
    new = f.add("b", nonce=old.core.nonce + 1)
    a = f.get("a")
    assert a.took("down", "b") == []  # clocks disagree: the probes decide
    f.advance(OPTS.suspicion_ms + 2 * OPTS.heartbeat_interval_ms)
    assert a.took("down", "b") == [old.core.nonce]
    assert a.core.alive("b", new.core.nonce) is True


def test_a_second_process_with_this_node_id_is_reported_once_per_nonce() -> None:
    f = Fleet()
    one = f.add("a", nonce=1)
    two = f.add("a", nonce=2)
    f.advance(10 * OPTS.heartbeat_interval_ms)
    for me, other in ((one, two), (two, one)):
        assert [e for e in me.events if e.kind == "duplicate"] == [
            MemberEvent("duplicate", "a", other.core.nonce)
        ]
        (error,) = me.errors
        assert isinstance(error, DuplicateNodeId)
        assert "node id 'a'" in str(error)
        assert me.core.duplicates >= 2  # counted each time, reported once


def test_a_twin_is_alive_once_seen_and_never_expected() -> None:
    f = Fleet()
    one = f.add("a", nonce=1)
    assert one.core.alive("a", 2) is None  # unknown, and not made expected
    f.advance(2 * OPTS.down_after_ms)
    assert one.took("down", "a") == []
    f.add("a", nonce=2)
    assert one.core.alive("a", 2) is True
    assert one.core.live_count() == 1  # a twin is not a member of its own table


# --- goodbyes ----------------------------------------------------------------------------------


def test_a_goodbye_with_the_committed_token_is_down_at_once() -> None:
    f = fleet("a", "b", "c")
    b = f.get("b")
    b.core.leave(f.now)
    f.run()
    f.crash(b)
    assert all(n.took("down", "b") == [b.core.nonce] for n in f.nodes)
    b.core.leave(f.now)  # twice: one goodbye
    assert len(f.sent(wire.Bye)) == 1


def test_a_forged_goodbye_is_counted_and_ignored() -> None:
    f = fleet("a", "b")
    a, b = f.get("a"), f.get("b")
    forged = wire.Bye("b", b.core.nonce, bytes(16))
    a.core.receive(wire.encode(forged), f.now)
    a.core.receive(wire.encode(wire.Bye("ghost", 5, bytes(16))), f.now)
    f.run()
    assert a.core.forged_byes == 2
    assert a.took("down", "b") == []
    assert a.core.alive("b", b.core.nonce) is True


def test_a_late_message_of_a_life_that_said_goodbye_changes_nothing() -> None:
    f = fleet("a", "b")
    a, b = f.get("a"), f.get("b")
    late = [m for _, _, m in f.sent(wire.Alive, "b")][-1]
    b.core.leave(f.now)
    f.run()
    f.crash(b)
    f.log.clear()
    a.core.receive(wire.encode(late), f.now + 1)
    f.run()
    assert a.took("up", "b") == [b.core.nonce]  # only the first
    assert a.core.alive("b", b.core.nonce) is False
    assert f.log == []  # not even told it counts as down


# --- queries, bounds, pruning -----------------------------------------------------------------


def test_asking_about_an_unknown_incarnation_makes_it_expected() -> None:
    f = fleet("a")
    a = f.get("a")
    assert a.core.alive("ghost", 7) is None
    assert a.core.alive("a", a.core.nonce) is True  # itself
    f.advance(OPTS.down_after_ms + OPTS.heartbeat_interval_ms)
    assert a.took("down", "ghost") == [7]  # never heard from: its entries cannot linger
    assert a.core.alive("ghost", 7) is False


def test_an_expected_incarnation_that_speaks_is_alive() -> None:
    f = fleet("a")
    a = f.get("a")
    assert a.core.alive("b", 1001 + 1) is None
    b = f.add("b")
    assert b.core.nonce == 1002
    assert a.core.alive("b", b.core.nonce) is True


def test_the_member_table_is_bounded() -> None:
    options = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=500, max_members=5)
    f = fleet("a", options=options)
    a = f.get("a")
    commitment = commitment_of(bytes(16))
    for i in range(10):
        alive = wire.Alive(f"n{i}", i, 0, f.now, commitment, f.now, False, 100)
        a.core.receive(wire.encode(alive), f.now)
    assert len(a.core.live_nodes()) == 6  # five others and itself
    assert a.core.refused_members == 5
    assert a.core.alive("n9", 9) is None  # not even remembered as expected
    # A down member makes room for a new one.
    a.core.receive(wire.encode(wire.Bye("n0", 0, bytes(16))), f.now)
    alive = wire.Alive("late", 99, 0, f.now, commitment, f.now, False, 100)
    a.core.receive(wire.encode(alive), f.now)
    assert "late" in a.core.live_nodes()


def test_down_members_are_pruned_after_a_while() -> None:
    f = fleet("a", "b")
    a, b = f.get("a"), f.get("b")
    b.core.leave(f.now)
    f.run()
    f.crash(b)
    assert a.core.down_since("b") == f.now
    f.advance(
        10 * OPTS.down_after_ms + 3 * a.core.beacon_interval() + 2 * OPTS.heartbeat_interval_ms
    )
    assert a.core.down_since("b") is None  # forgotten
    assert a.core.live_count() == 1


def test_bad_input_is_counted_and_reported() -> None:
    f = fleet("a")
    a = f.get("a")
    a.core.receive(b"\xc1", f.now)
    a.core.receive(wire.encode(wire.Leave("b", 1)), f.now)  # a store message here
    f.run()
    assert a.core.decode_errors == 2
    assert [type(e) for e in a.errors] == [DecodeError, DecodeError]
    assert a.core.messages_received == 2


# --- costs -------------------------------------------------------------------------------------


def test_the_beacon_interval_grows_with_the_fleet() -> None:
    defaults = LivenessOptions()
    core = Membership("me", 1, token=bytes(16), options=defaults, now=T0, max_message_size=1 << 20)
    assert core.beacon_interval() == defaults.heartbeat_interval_ms
    join(core, 999, interval_ms=50_000)
    assert core.live_count() == 1_000
    interval = core.beacon_interval()
    assert interval == 1_000 * 1_000 / defaults.beacons_per_second == 50_000
    # What each node receives per second at N = 1,000: every other node's beacon, a ping
    # from each of its monitors and the acks of its own pings: under 25, well within the ~50 budget.
    beacons = 999 * 1_000 / interval
    probes = 2 * defaults.monitors * 1_000 / defaults.heartbeat_interval_ms
    assert beacons + probes < 25
    # And what it sends over 100 s (its probes answered): the first beacon after its
    # start, then one per interval, jittered by 10 %; monitors pings per heartbeat.
    sent: list[Any] = []
    for now in range(T0, T0 + 100_000, defaults.heartbeat_interval_ms):
        if core.next_deadline() <= now:
            core.tick(now)
        for _, data in core.data_to_send():
            msg = wire.decode(data, max_size=1 << 20)
            sent.append(msg)
            if isinstance(msg, wire.Ping):
                nonce = int(msg.target[1:])
                ack = wire.Ack(msg.target, nonce, msg.probe, 0, T0, commitment_of(bytes(16)))
                core.receive(wire.encode(ack), now)
    assert 2 <= sum(type(m) is wire.Alive for m in sent) <= 3
    assert sum(type(m) is wire.Ping for m in sent) == 100 * defaults.monitors
    assert not any(type(m) is wire.Suspect for m in sent)
    assert core.live_count() == 1_000


def join(core: Membership, n: int, *, interval_ms: int = 1_000) -> None:
    """Make ``core`` know ``n`` live members (``n{i}`` at nonce ``i``)."""
    commitment = commitment_of(bytes(16))
    for i in range(n):
        alive = wire.Alive(f"n{i}", i, 0, T0, commitment, T0, False, interval_ms)
        core.receive(wire.encode(alive), T0)
    core.data_to_send()
    core.events_received()


class CountingDict(dict[Any, Any]):
    """A dict that counts every walk over it."""

    walks = 0

    def __iter__(self) -> Iterator[Any]:
        CountingDict.walks += 1
        return super().__iter__()

    def values(self) -> Any:
        CountingDict.walks += 1
        return super().values()

    def items(self) -> Any:
        CountingDict.walks += 1
        return super().items()

    def keys(self) -> Any:
        CountingDict.walks += 1
        return super().keys()


def spy_on(core: Membership) -> None:
    core._members = CountingDict(core._members)
    CountingDict.walks = 0


def test_a_message_costs_the_same_whatever_the_table_size() -> None:
    core = Membership("me", 1, token=bytes(16), options=OPTS, now=T0, max_message_size=1 << 20)
    join(core, 1_000)
    core.tick(T0)  # the ring is built once per change of membership, by a tick
    core.data_to_send()
    spy_on(core)
    messages: list[wire.Message] = [
        wire.Ping("n5", 5, 1, "me"),
        wire.Ack("n6", 6, 1, 0, T0, commitment_of(bytes(16))),
        wire.Alive("n7", 7, 0, T0, commitment_of(bytes(16)), T0 + 1, False, 1_000),
        wire.Alive("n8", 8, 0, T0, commitment_of(bytes(16)), T0 + 1, True, 1_000),  # a gap
        wire.Suspect("n9", 9, "n10", 10, 0),
        wire.Suspect("n9", 9, "me", 1, 0),  # refuted
        wire.Bye("n11", 11, bytes(15) + b"x"),  # forged
        wire.Bye("n12", 12, bytes(16)),
    ]
    for msg in messages:
        core.receive(wire.encode(msg), T0 + 2)
        assert CountingDict.walks == 0, type(msg).__name__
    assert core.alive("n12", 12) is False
    assert core.alive("n10", 10) is True


def test_a_tick_walks_the_table_a_bounded_number_of_times() -> None:
    core = Membership("me", 1, token=bytes(16), options=OPTS, now=T0, max_message_size=1 << 20)
    join(core, 1_000)
    for i in range(0, 1_000, 2):  # half of them said goodbye
        core.receive(wire.encode(wire.Bye(f"n{i}", i, bytes(16))), T0)
    core.tick(T0)
    spy_on(core)
    core.tick(T0 + OPTS.heartbeat_interval_ms)
    # A pass to check timeouts and one to rebuild the ring: not one per down member.
    assert CountingDict.walks <= 3
    assert core.live_count() == 501 == recounted(core)


def recounted(core: Membership) -> int:
    """``live_count()`` computed the slow way."""
    return 1 + sum(1 for m in core._members.values() if m.confirmed and m.state != 2)


@pytest.mark.parametrize("monitors", [1, 3])
def test_probes_follow_the_monitors_option(monitors: int) -> None:
    options = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=500, monitors=monitors)
    f = fleet("a", "b", "c", "d", "e", options=options)
    f.log.clear()
    f.advance(100, step=100)
    assert len(f.sent(wire.Ping)) == 5 * monitors


def test_after_the_goodbye_nothing_is_due() -> None:
    """A core that left must not stay due: its driver's ticker would loop on it (and a
    loop that never sleeps starves the event loop, its cancellation included)."""
    core = Membership("me", 1, token=bytes(16), options=OPTS, now=T0, max_message_size=1 << 20)
    core.tick(T0)
    core.leave(T0 + 10)
    core.data_to_send()
    for now in (T0 + 10, T0 + 5_000, T0 + 60_000):
        core.tick(now)
        assert core.next_deadline() > now + 1_000_000
        assert core.data_to_send() == []
