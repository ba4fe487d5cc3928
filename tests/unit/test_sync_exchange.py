"""The sync exchange: two SyncEngines wired directly, every message seen; flow control measured.

(``tests/unit/test_sync.py`` is the blocking API, ``podshare.sync``; this is
``podshare.store.sync``.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from podshare.crdt import Stamp
from podshare.exceptions import PodshareError
from podshare.store import wire
from podshare.store.codec import value_codec
from podshare.store.events import Event, Stats
from podshare.store.horizon import Horizon
from podshare.store.packing import ENVELOPE_SLACK
from podshare.store.state import MapState
from podshare.store.sync import INITIAL_WINDOW, SyncEngine, SyncFinished, SyncLimits
from podshare.store.wire import STREAM_ANSWER, STREAM_PUSH, WireEntry, make_entry

T0 = 1_700_000_000_000
LIMITS = SyncLimits(chunk_bytes=8 * 1024, window=64 * 1024, timeout_ms=2_000, retransmit_ms=500)


class Side:
    """One replica's map, horizon and sync engine, with its outbox."""

    def __init__(self, name: str, limits: SyncLimits, nonce: int) -> None:
        self.name = name
        self.now = T0
        self.events: list[Event[Any]] = []
        self.errors: list[PodshareError] = []
        self.stats = Stats()
        self.horizon = Horizon(name, started_at=T0, hard_cap_ms=10**12)
        self.state: MapState[Any] = MapState(
            name,
            nonce,
            value_codec(None, None),
            None,
            self.horizon,
            limit=1 << 20,
            events=self.events,
            errors=self.errors,
            stats=self.stats,
            liveness=lambda _node, _nonce: None,
        )
        self.verdict = "ok"
        self.outbox: list[tuple[str, bytes]] = []
        self.engine = SyncEngine(
            name,
            nonce,
            self.state,
            self.horizon,
            send=lambda peer, data: self.outbox.append((peer, data)),
            clock=lambda: self.now,
            limits=limits,
            may_serve=lambda _peer: self.verdict,
            rng=random.Random(nonce),
        )

    def fill(self, n: int, *, size: int = 20, origin: str = "w", start: int = 0) -> None:
        value = b'"' + b"v" * size + b'"'
        self.state.apply(
            [entry(f"key-{i}", T0 + i, value, origin) for i in range(start, start + n)], self.now
        )

    def take(self) -> list[SyncFinished]:
        done, self.engine.finished[:] = list(self.engine.finished), []
        return done


def entry(key: str, time: int, value: bytes, origin: str = "w") -> WireEntry:
    return make_entry(key, Stamp(time, 0, origin), 0, value)


_HANDLERS: dict[type[Any], str] = {
    wire.SyncRequest: "on_request",
    wire.SyncReply: "on_reply",
    wire.SyncKeys: "on_keys",
    wire.SyncWant: "on_want",
    wire.SyncData: "on_data",
    wire.SyncAck: "on_ack",
}


@dataclass
class Sent:
    src: str
    dst: str
    data: bytes
    msg: Any = field(init=False)

    def __post_init__(self) -> None:
        self.msg = wire.decode(self.data, max_size=1 << 24)


class Link:
    """Two sides and the messages between them, delivered in order unless a test says not."""

    def __init__(self, limits: SyncLimits = LIMITS) -> None:
        self.a = Side("a", limits, 1)
        self.b = Side("b", limits, 2)
        self.sides = {"a": self.a, "b": self.b}
        self.queue: list[Sent] = []
        self.log: list[Sent] = []

    def collect(self) -> None:
        for side in self.sides.values():
            for dst, data in side.outbox:
                sent = Sent(side.name, dst, data)
                self.queue.append(sent)
                self.log.append(sent)
            side.outbox.clear()

    def deliver(self, sent: Sent) -> None:
        side = self.sides[sent.dst]
        getattr(side.engine, _HANDLERS[type(sent.msg)])(sent.msg, side.now)

    def run(
        self, *, hold: Callable[[Sent], bool] = lambda _s: False, max_steps: int = 100_000
    ) -> list[Sent]:
        """Deliver until quiet; messages ``hold`` selects are kept back and returned."""
        held: list[Sent] = []
        self.collect()
        for _ in range(max_steps):
            if not self.queue:
                return held
            sent = self.queue.pop(0)
            if hold(sent):
                held.append(sent)
            else:
                self.deliver(sent)
            self.collect()
        raise AssertionError("the exchange did not go quiet")

    def tick(self, now: int) -> None:
        for side in self.sides.values():
            side.now = now
            side.engine.tick(now)
        self.collect()

    def of(self, kind: type[Any], src: str | None = None) -> list[Any]:
        return [s.msg for s in self.log if type(s.msg) is kind and src in (None, s.src)]

    def bytes_from(self, src: str) -> int:
        return sum(len(s.data) for s in self.log if s.src == src)


def test_full_transfer_of_n_keys() -> None:
    link = Link()
    link.a.fill(2_000)
    link.b.engine.start("a", T0, full=True)
    link.run()
    assert link.b.state.entries == link.a.state.entries
    assert link.b.take() == [SyncFinished("a", True, True)]
    assert link.a.engine.serving == {}  # the responder is done too
    assert [m.level for m in link.of(wire.SyncRequest)] == [0]
    answers = [m for m in link.of(wire.SyncData, "a") if m.stream == STREAM_ANSWER]
    assert sum(len(m.entries) for m in answers) == 2_000
    assert link.of(wire.SyncKeys) == []  # a full transfer has no summaries


def test_a_few_differences_ship_only_those_keys() -> None:
    link = Link()
    link.a.fill(5_000)
    link.b.fill(5_000)
    newer = [entry(f"key-{i}", T0 + 10_000 + i, b'"new"') for i in range(0, 5_000, 700)]
    link.a.state.apply(newer, T0)  # 8 keys newer on a
    only_b = [entry(f"extra-{i}", T0 + i, b'"b"') for i in range(3)]
    link.b.state.apply(only_b, T0)
    link.b.engine.start("a", T0, full=False)
    link.run()
    assert link.a.state.entries == link.b.state.entries
    assert link.b.take() == [SyncFinished("a", True, False)]
    answer = [e.key for m in link.of(wire.SyncData, "a") for e in m.entries]
    push = [e.key for m in link.of(wire.SyncData, "b") for e in m.entries]
    assert sorted(answer) == sorted(e.key for e in newer)
    assert sorted(push) == sorted(e.key for e in only_b)
    assert sorted(k for m in link.of(wire.SyncWant) for k in m.keys) == sorted(answer)
    # Summaries cover only the differing final buckets, not the map.
    summaries = sum(len(m.items) for m in link.of(wire.SyncKeys))
    assert summaries < 11 * 40
    total = link.bytes_from("a") + link.bytes_from("b")
    full = Link()
    full.a.fill(5_000)
    full.b.engine.start("a", T0, full=True)
    full.run()
    assert total < full.bytes_from("a") // 10


def test_equal_states_exchange_only_digests() -> None:
    link = Link()
    link.a.fill(3_000)
    link.b.fill(3_000)
    link.b.engine.start("a", T0, full=False)
    link.run()
    assert link.b.take() == [SyncFinished("a", True, False)]
    assert [len(m.items) for m in link.of(wire.SyncKeys)] == [0]
    assert all(m.entries == [] for m in link.of(wire.SyncData))
    assert all(m.keys == [] for m in link.of(wire.SyncWant))
    (reply,) = link.of(wire.SyncReply)
    assert (reply.differ, reply.final) == ([], [])
    # The level-1 digest (16 hashes) and a few empty stream ends: well under a kilobyte.
    assert link.bytes_from("a") + link.bytes_from("b") < 1_000


def test_flow_control_windows_and_part_sizes() -> None:
    link = Link()
    link.a.fill(3_000, size=100)
    link.b.engine.start("a", T0, full=True)
    outstanding: dict[int, int] = {}  # the answer stream's unacknowledged parts: bytes
    most = 0
    link.collect()
    first_window_checked = False
    while link.queue:
        sent = link.queue.pop(0)
        msg = sent.msg
        if isinstance(msg, wire.SyncData) and msg.stream == STREAM_ANSWER:
            # Parts never exceed a chunk (plus the envelope around its entries).
            assert len(sent.data) <= LIMITS.chunk_bytes + ENVELOPE_SLACK
            outstanding.setdefault(msg.part, len(sent.data))
        if isinstance(msg, wire.SyncAck) and msg.stream == STREAM_ANSWER:
            if not first_window_checked:
                # Before the first acknowledgement: the first window, nothing more.
                assert sum(outstanding.values()) <= INITIAL_WINDOW + ENVELOPE_SLACK
                first_window_checked = True
            outstanding.pop(msg.part)
        link.deliver(sent)
        link.collect()
        in_flight = sum(outstanding.values())
        assert in_flight <= LIMITS.window + LIMITS.chunk_bytes
        most = max(most, in_flight)
    assert first_window_checked
    assert most > 4 * INITIAL_WINDOW  # the window grew with the acknowledgements
    assert link.b.take() == [SyncFinished("a", True, True)]
    assert len(link.b.state.entries) == 3_000


def test_an_entry_larger_than_a_chunk_travels_alone() -> None:
    link = Link()
    link.a.fill(5)
    big = entry("big", T0, b'"' + b"x" * (3 * LIMITS.chunk_bytes) + b'"')
    link.a.state.apply([big], T0)
    link.b.engine.start("a", T0, full=True)
    link.run()
    parts = [m for m in link.of(wire.SyncData, "a") if any(e.key == "big" for e in m.entries)]
    assert [len(m.entries) for m in parts] == [1]
    assert link.b.state.entries == link.a.state.entries


def test_an_unacknowledged_request_costs_at_most_the_first_window() -> None:
    forged = wire.encode(wire.SyncRequest("b", 2, 12345, 0, None, b""))
    answered: dict[int, int] = {}
    for keys in (10, 10_000):
        link = Link()
        link.a.fill(keys, size=100)
        link.deliver(Sent("b", "a", forged))
        sizes = [len(data) for _, data in link.a.outbox]
        link.a.outbox.clear()
        answered[keys] = sum(sizes)
        # A reply and one first window, whatever the store holds.
        assert answered[keys] <= sizes[0] + INITIAL_WINDOW + ENVELOPE_SLACK
        # Over the serve's whole life (retransmissions, then it is dropped): bounded too.
        total = answered[keys]
        for t in range(T0, T0 + 3 * LIMITS.timeout_ms, 100):
            link.a.now = t
            link.a.engine.tick(t)
            total += sum(len(data) for _, data in link.a.outbox)
            link.a.outbox.clear()
        assert link.a.engine.serving == {}
        assert total <= 6 * answered[keys]
    # The amplification of a forged 14-byte request: about 235x once, never more.
    ratio = answered[10_000] / len(forged)
    assert ratio <= (INITIAL_WINDOW + ENVELOPE_SLACK) / len(forged), ratio
    assert answered[10] < answered[10_000]


def test_unacknowledged_parts_are_sent_again_after_retransmit_ms() -> None:
    link = Link()
    link.a.fill(20)
    link.b.engine.start("a", T0, full=True)
    lost = link.run(hold=lambda s: isinstance(s.msg, wire.SyncData) and s.src == "a")
    assert len(lost) == 1
    link.tick(T0 + LIMITS.retransmit_ms - 1)
    assert link.queue == []
    link.tick(T0 + LIMITS.retransmit_ms)
    assert [s.data for s in link.queue] == [lost[0].data]  # the same part, byte for byte
    link.run()
    assert link.b.take() == [SyncFinished("a", True, True)]
    assert link.b.state.entries == link.a.state.entries


def test_no_progress_for_timeout_ms_fails_the_exchange() -> None:
    link = Link()
    link.b.engine.start("a", T0, full=False)
    link.collect()
    link.queue.clear()  # a never hears of it
    assert link.b.engine.next_deadline() == T0 + LIMITS.timeout_ms
    link.tick(T0 + LIMITS.timeout_ms - 1)
    assert link.b.take() == []
    link.tick(T0 + LIMITS.timeout_ms)
    assert link.b.take() == [SyncFinished("a", False, False, "timeout")]
    assert not link.b.engine.requesting()
    assert link.b.engine.next_deadline() is None


def test_a_lost_push_is_resent_a_few_times_then_the_exchange_fails() -> None:
    link = Link()
    link.b.fill(20)
    link.b.engine.start("a", T0, full=False)

    def lost(sent: Sent) -> bool:
        return isinstance(sent.msg, wire.SyncData) and sent.msg.stream == STREAM_PUSH

    link.run(hold=lost)
    for t in range(T0, T0 + LIMITS.timeout_ms + 1, LIMITS.retransmit_ms // 2):
        link.tick(t)
        link.run(hold=lost)
    assert len({s.data for s in link.log if lost(s)}) == 1  # one part, sent again and again
    # Sent at T0, again every retransmit_ms, until no progress for timeout_ms.
    assert sum(1 for s in link.log if lost(s)) == LIMITS.timeout_ms // LIMITS.retransmit_ms
    assert link.b.take() == [SyncFinished("a", False, False, "timeout")]


def test_too_many_retransmissions_fail_before_the_timeout() -> None:
    limits = SyncLimits(chunk_bytes=8 * 1024, window=64 * 1024, timeout_ms=2_000, retransmit_ms=100)
    link = Link(limits)
    link.b.fill(20)
    link.b.engine.start("a", T0, full=False)

    def lost(sent: Sent) -> bool:
        return isinstance(sent.msg, wire.SyncData) and sent.msg.stream == STREAM_PUSH

    link.run(hold=lost)
    for t in range(T0 + 100, T0 + 600, 100):
        link.tick(t)
        link.run(hold=lost)
    assert link.b.take() == []  # five retransmissions
    link.tick(T0 + 600)
    assert link.b.take() == [SyncFinished("a", False, False, "timeout")]


@pytest.mark.parametrize(("verdict", "reason"), [("busy", "busy"), ("refused", "refused")])
def test_busy_and_refused_answers_end_the_exchange(verdict: str, reason: str) -> None:
    link = Link()
    link.a.fill(10)
    link.a.verdict = verdict
    link.b.engine.start("a", T0, full=True)
    link.run()
    assert link.b.take() == [SyncFinished("a", False, True, reason)]
    assert link.a.engine.serving == {}
    assert link.b.state.entries == {}


def test_a_responder_serving_enough_is_busy() -> None:
    limits = SyncLimits(chunk_bytes=8 * 1024, window=64 * 1024, max_serving=1)
    link = Link(limits)
    link.a.fill(10)
    link.deliver(Sent("c", "a", wire.encode(wire.SyncRequest("c", 3, 1, 0, None, b""))))
    link.a.outbox.clear()
    link.b.engine.start("a", T0, full=True)
    link.run()
    assert link.b.take() == [SyncFinished("a", False, True, "busy")]


def test_a_round_of_an_unknown_exchange_is_answered_unknown() -> None:
    link = Link()
    link.a.fill(10)
    link.b.engine.start("a", T0, full=False)
    sync_id = next(iter(link.b.engine.exchanges))
    link.collect()
    link.queue.clear()
    later = wire.SyncRequest("b", 2, sync_id, 2, [0], bytes(8))
    link.deliver(Sent("b", "a", wire.encode(later)))
    link.run()
    assert link.b.take() == [SyncFinished("a", False, False, "unknown")]


def test_duplicate_and_reordered_parts() -> None:
    for seed in range(5):
        rng = random.Random(seed)
        link = Link()
        link.a.fill(2_000, size=50)
        link.b.fill(300, size=50, start=1_900)
        link.b.engine.start("a", T0, full=False)
        link.collect()
        steps = 0
        while link.queue:
            steps += 1
            assert steps < 100_000
            sent = link.queue.pop(rng.randrange(len(link.queue)))  # any order
            link.deliver(sent)
            dst = link.sides[sent.dst]
            running = bool(dst.engine.exchanges or dst.engine.serving)
            if rng.random() < 0.3:
                before = (dst.stats.writes_applied, dst.stats.writes_stale)
                link.deliver(sent)  # and twice
                if running and isinstance(sent.msg, wire.SyncData):
                    # A duplicate part is acknowledged again and applies nothing.
                    assert (dst.stats.writes_applied, dst.stats.writes_stale) == before
                    assert isinstance(
                        wire.decode(dst.outbox[-1][1], max_size=1 << 20), wire.SyncAck
                    )
            link.collect()
        assert link.a.state.entries == link.b.state.entries, seed
        assert link.b.take() == [SyncFinished("a", True, False)], seed
        assert link.a.engine.serving == {}, seed
        # Only what differed travelled: a's 1,900 keys one way, b's 200 the other.
        shipped = [e.key for m in link.of(wire.SyncData) for e in m.entries]
        assert len(set(shipped)) == 2_100, seed


def test_equal_stamps_with_different_values_travel_both_ways_and_converge() -> None:
    link = Link()
    link.a.state.apply([entry("k", T0, b'"apple"'), entry("same", T0, b"1")], T0)
    link.b.state.apply([entry("k", T0, b'"banana"'), entry("same", T0, b"1")], T0)
    link.b.engine.start("a", T0, full=False)
    link.run()
    assert [e.key for m in link.of(wire.SyncData, "a") for e in m.entries] == ["k"]
    assert [e.key for m in link.of(wire.SyncData, "b") for e in m.entries] == ["k"]
    assert link.a.state.values == link.b.state.values == {"k": "banana", "same": 1}


def test_drops_travel_back_in_acks_and_the_sender_forgets() -> None:
    link = Link()
    link.a.fill(3)
    # b held every write of "w" up to key-1's stamp and deleted key-0 and key-1 since.
    link.b.horizon.merge([("w", T0 + 1)], now=T0)
    link.b.engine.start("a", T0, full=True)
    link.run()
    acks = [m for m in link.of(wire.SyncAck, "b") if m.drops]
    assert [sorted(d[0] for d in m.drops) for m in acks] == [["key-0", "key-1"]]
    assert sorted(link.a.state.entries) == ["key-2"]  # a forgot them too
    assert link.a.stats.writes_refused == 2
    assert link.b.take() == [SyncFinished("a", True, True)]


def test_pushed_entries_refused_by_the_responder_are_forgotten_by_the_requester() -> None:
    link = Link()
    link.a.fill(1, start=10)
    link.b.fill(2)  # key-0 and key-1, which a held and deleted
    link.a.horizon.merge([("w", T0 + 1)], now=T0)
    link.b.engine.start("a", T0, full=False)
    link.run()
    acks = [m for m in link.of(wire.SyncAck, "a") if m.drops]
    assert [sorted(d[0] for d in m.drops) for m in acks] == [["key-0", "key-1"]]
    assert sorted(link.b.state.entries) == ["key-10"]
    assert link.b.take() == [SyncFinished("a", True, False)]


def test_horizon_vectors_are_merged_only_on_completion() -> None:
    link = Link()
    link.a.fill(200)
    link.a.horizon.merge([("x", T0 - 5_000)], now=T0)
    link.b.horizon.merge([("y", T0 - 7_000)], now=T0)
    link.b.fill(200, start=1_000)
    link.b.engine.start("a", T0, full=False)
    # Hold a's entries back: no exchange completes, no vector is adopted.
    held = link.run(hold=lambda s: isinstance(s.msg, wire.SyncData) and s.src == "a")
    assert held
    assert "x" not in link.b.horizon.seen
    assert "a" not in link.b.horizon.seen
    for sent in held:
        link.deliver(sent)
    link.run()
    assert link.b.take() == [SyncFinished("a", True, False)]
    assert link.b.horizon.seen["x"] == T0 - 5_000
    assert link.b.horizon.seen["a"] == T0 - 1  # the responder's clock when it answered
    # The responder adopts the requester's vector when the push ended.
    assert link.a.horizon.seen["y"] == T0 - 7_000
    assert link.a.horizon.seen["b"] == T0 - 1


def test_a_failed_exchange_adopts_no_vector() -> None:
    link = Link()
    link.a.horizon.merge([("x", T0 - 5_000)], now=T0)
    link.a.fill(50)
    link.b.engine.start("a", T0, full=True)
    link.run(hold=lambda s: isinstance(s.msg, wire.SyncData) and s.src == "a")
    link.tick(T0 + LIMITS.timeout_ms)
    assert link.b.take() == [SyncFinished("a", False, True, "timeout")]
    assert "x" not in link.b.horizon.seen


def test_abandon_ends_every_exchange_with_the_peer() -> None:
    link = Link()
    link.b.engine.start("a", T0, full=True)
    link.collect()
    link.b.engine.abandon("a", "gone")
    assert link.b.take() == [SyncFinished("a", False, True, "gone")]
    assert not link.b.engine.requesting("a")


def test_next_deadline_is_the_earliest_retransmission_or_timeout() -> None:
    link = Link()
    link.a.fill(20)
    link.b.engine.start("a", T0, full=True)
    link.run(hold=lambda s: isinstance(s.msg, wire.SyncData) and s.src == "a")
    assert link.a.engine.next_deadline() == T0 + LIMITS.retransmit_ms
    assert link.b.engine.next_deadline() == T0 + LIMITS.timeout_ms
