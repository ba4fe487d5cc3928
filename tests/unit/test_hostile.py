"""Hostile peers without a secret: what a forged message can cost a cluster, measured.

Each test plays one attack of issue 13 against a :class:`SimNetwork` (the sans-I/O
cores, one thread, a fake clock), with messages a sender with publish access could
forge: anything on the wire, any sender id and nonce. The properties are bounds (memory,
bytes answered per byte forged, peers tracked) and live peers staying up. With a secret
(``podshare.transport.Authenticated``) none of these reaches a store at all: see
``tests/unit/test_auth_transport.py`` and ``tests/integration/test_hostile_redis.py``.
"""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest

from podshare.crdt import ORSet, PNCounter, Stamp
from podshare.exceptions import DecodeError
from podshare.store import wire
from podshare.store.events import EventKind
from podshare.store.membership import LivenessOptions, commitment_of
from podshare.store.replica import ReplicaOptions
from podshare.testing import SimNetwork

LIVE = LivenessOptions(heartbeat_interval_ms=100, down_after_ms=500)
OPTS = ReplicaOptions(hello_window_ms=100, sync_timeout_ms=400)
KEYS = 2_000


def cluster(*names: str, keys: int = 0) -> SimNetwork:
    net = SimNetwork(seed=13, options=OPTS, liveness=LIVE)
    for name in names:
        net.add(name)
        net.settle()
    for i in range(keys):
        net.set(names[0], f"key-{i:05d}", "v" * 40)
    net.settle()
    assert all(r.replica.synced for r in net.nodes.values())
    return net


def downs(net: SimNetwork, node: str) -> list[str]:
    """The nodes ``node``'s replica saw go down."""
    return [e.key for e in net.nodes[node].events if e.kind is EventKind.NODE_DOWN]


def ghost_alive(name: str, nonce: int, now: int) -> bytes:
    return wire.encode(wire.Alive(name, nonce, 0, now, commitment_of(bytes(16)), now, True, 100))


# --- forged heartbeats -------------------------------------------------------------------


def test_a_thousand_forged_heartbeats_claiming_a_million_keys_cost_little() -> None:
    net = cluster("a", "b", keys=KEYS)
    a = net.nodes["a"]
    forged = [
        wire.encode(wire.Hello(f"ghost-{i}", i, net.now, True, True, 1_000_000))
        for i in range(1_000)
    ]
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i, data in enumerate(forged):
            net.inject("a", ghost_alive(f"ghost-{i}", i, net.now), liveness=True)
            net.inject("a", data)
        net.run()
        net.advance(4 * LIVE.down_after_ms)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # ~32 KB of forgeries: a few KB of state per ghost at most, nothing sized by the claim.
    assert peak < 8 * 1024 * 1024, peak
    assert "b" not in downs(net, "a")
    assert "a" not in downs(net, "b")
    assert net.replica("a").members() == {"a", "b"}
    assert len(a.replica.values) == KEYS


# --- amplification -----------------------------------------------------------------------


def answered(net: SimNetwork, attack: list[bytes], *, run_ms: int = 3_000) -> int:
    """Bytes the cluster publishes in answer to ``attack`` (injected into a)."""
    net.run()
    before = net.bytes_sent
    for data in attack:
        net.inject("a", data)
    net.advance(run_ms)
    return net.bytes_sent - before - quiet_traffic(run_ms)


def quiet_traffic(run_ms: int) -> int:
    """What the same cluster publishes in ``run_ms`` with nobody attacking it."""
    net = cluster("a", "b", keys=KEYS)
    before = net.bytes_sent
    net.advance(run_ms)
    return net.bytes_sent - before


@pytest.mark.parametrize("level", [0, 1])
def test_a_forged_sync_request_for_a_nonexistent_node_is_not_amplified(level: int) -> None:
    net = cluster("a", "b", keys=KEYS)
    hashes = bytes(16 * wire.HASH_SIZE) if level else b""
    request = wire.encode(wire.SyncRequest("nobody", 1, 7, level, None, hashes))
    # The forger acknowledges blindly, as if it read the answer.
    acks = [
        wire.encode(wire.SyncAck("nobody", 1, 7, stream, part, []))
        for part in range(64)
        for stream in (wire.STREAM_ANSWER, wire.STREAM_KEYS)
    ]
    sent = sum(map(len, [request, *acks]))
    got = answered(net, [request, *acks])
    assert got <= 4 * sent, (got, sent)
    assert net.replica("a").snapshot_stats().syncs_unserved == 1


def test_repeated_rounds_of_one_exchange_are_answered_once() -> None:
    net = cluster("a", "b", keys=KEYS)
    net.inject("a", ghost_alive("mallory", 5, net.now), liveness=True)
    zero1 = bytes(16 * wire.HASH_SIZE)
    first = wire.encode(wire.SyncRequest("mallory", 5, 9, 1, None, zero1))
    # Every level-3 bucket, then the same round again and again: each key summarised once.
    every = list(range(16**3))
    level3 = wire.encode(
        wire.SyncRequest("mallory", 5, 9, 3, every, bytes(len(every) * wire.HASH_SIZE))
    )
    engine = net.replica("a").sync
    answered(net, [first, *[level3] * 20], run_ms=200)
    assert engine.rounds_ignored == 20


def test_a_round_naming_a_bucket_twice_is_malformed() -> None:
    raw = msgpack.packb([wire.TAG_SYNC_REQUEST, "m", 1, 9, 2, [3, 3], bytes(16)])
    with pytest.raises(DecodeError):
        wire.decode(raw, max_size=1 << 20)


def test_one_peer_gets_a_bounded_number_of_new_exchanges() -> None:
    net = cluster("a", "b", keys=10)
    net.inject("a", ghost_alive("mallory", 5, net.now), liveness=True)
    engine = net.replica("a").sync
    served = engine.full_transfers
    for i in range(100):
        net.inject("a", wire.encode(wire.SyncRequest("mallory", 5, 100 + i, 0, None, b"")))
    assert engine.full_transfers - served == 8  # the burst, then "busy"
    assert net.replica("a").snapshot_stats().syncs_unserved == 92
    # The budget refills at one exchange per 250 ms.
    net.advance(250, step_ms=250)
    for i in range(10):
        net.inject("a", wire.encode(wire.SyncRequest("mallory", 5, 300 + i, 0, None, b"")))
    assert engine.full_transfers - served == 9


# --- refresh -----------------------------------------------------------------------------


@pytest.mark.parametrize("who_hydrated", ["a from b", "b from a"])
def test_fifty_forged_synced_peers_do_not_delay_a_refresh(who_hydrated: str) -> None:
    first, second = ("b", "a") if who_hydrated == "a from b" else ("a", "b")
    net = SimNetwork(seed=13, options=OPTS, liveness=LIVE)
    net.add(first)
    net.settle()
    net.set(first, "k", 1)
    net.add(second)
    net.settle()
    for i in range(50):
        net.inject("a", wire.encode(wire.Hello(f"ghost-{i}", i, net.now, True, False, 10)))
    finished = net.nodes["a"].finished
    for _ in range(8):
        before = len(finished)
        net.request_sync("a")
        net.run()
        assert [(f.peer, f.ok) for f in finished[before:]] == [("b", True)]
        net.advance(OPTS.sync_timeout_ms)


# --- the peer table ----------------------------------------------------------------------


def test_ghost_peers_are_forgotten_once_down() -> None:
    net = cluster("a", "b")
    for i in range(200):
        net.inject("a", wire.encode(wire.Hello(f"ghost-{i}", i, net.now, False, False, 0)))
    a = net.replica("a")
    assert len(a.peers) == 201
    net.advance(2 * LIVE.down_after_ms)
    assert a.members() == {"a", "b"}
    net.advance(61_000, step_ms=1_000)
    assert set(a.peers.by_node) == {"b"}


# --- goodbyes ----------------------------------------------------------------------------


def test_a_forged_goodbye_with_a_forged_commitment_changes_nothing() -> None:
    net = cluster("a", "b")
    net.set("b", "presence:b", "here", ephemeral=True)
    net.settle()
    b = net.nodes["b"].membership
    token = bytes(range(16))
    # Announce b's incarnation again with a commitment of the forger's, then say its bye.
    alive = wire.Alive(
        "b", b.nonce, b.version, b.started_at, commitment_of(token), net.now, False, 100
    )
    net.inject("a", wire.encode(alive), liveness=True)
    net.inject("a", wire.encode(wire.Bye("b", b.nonce, token)), liveness=True)
    net.advance(3 * LIVE.down_after_ms)
    a = net.nodes["a"]
    assert a.membership.forged_byes == 1
    assert a.membership.forged_commitments == 1
    assert "b" not in downs(net, "a")
    assert net.replica("a").values == {"presence:b": "here"}


def test_a_forged_store_leave_changes_nothing() -> None:
    net = cluster("a", "b")
    b = net.nodes["b"].replica
    a = net.replica("a")
    # Without the token, and with a token of the forger's announced late: b is known for
    # longer than a commitment is taken, so the forged hello contests b's instead.
    net.advance(11_000, step_ms=1_000)
    token = bytes(range(16))
    hello = wire.Hello("b", b.nonce, net.now, True, False, 0, wire.leave_commitment(token))
    net.inject("a", wire.encode(hello))
    net.inject("a", wire.encode(wire.Leave("b", b.nonce)))
    net.inject("a", wire.encode(wire.Leave("b", b.nonce, token)))
    net.settle()
    assert a.snapshot_stats().leaves_unproven == 2
    assert a.members() == {"a", "b"}
    assert "b" not in downs(net, "a")


def test_a_genuine_store_leave_is_honoured_at_once() -> None:
    net = cluster("a", "b")
    b = net.nodes["b"]
    b.replica.leave(net.now)  # the store closes; the process (its liveness) lives on
    net.flush("b")
    net.run()
    assert net.replica("a").members() == {"a"}
    assert downs(net, "a") == ["b"]
    assert net.nodes["a"].membership.alive("b", b.membership.nonce) is True


def test_a_suspicion_no_refutation_can_answer_is_ignored() -> None:
    net = cluster("a", "b")
    b = net.nodes["b"].membership
    top = 2**63 - 1
    for target in ("a", "b"):
        suspect = wire.Suspect("mallory", 1, "b", b.nonce, top)
        net.inject(target, wire.encode(suspect), liveness=True)
    net.advance(3 * LIVE.down_after_ms)
    assert b.forged_suspicions == 1
    assert net.nodes["a"].membership.forged_suspicions == 1
    assert "b" not in downs(net, "a")
    assert b.version < top


# --- CRDT counts -------------------------------------------------------------------------


def test_a_count_beyond_63_bits_is_malformed_and_increment_still_works() -> None:
    net = SimNetwork(seed=13, options=OPTS, liveness=LIVE, value_type=PNCounter)
    net.add("a")
    net.add("b")
    net.settle()
    net.update("a", "hits", lambda c: c.increment("a"))
    net.settle()
    a = net.replica("a")
    held = a.state.raw("hits")
    assert held is not None
    forged = wire.make_entry(
        "hits",
        Stamp(net.now, 0, "mallory"),
        wire.MERGED,
        msgpack.packb({"n": {}, "p": {"a": 2**64 - 1}}),
        Stamp(held[6], held[7], held[8]),
    )
    errors = a.snapshot_stats().decode_errors
    net.inject("a", wire.encode(wire.Writes("mallory", 1, net.now, [forged])))
    assert a.snapshot_stats().decode_errors == errors + 1
    net.update("a", "hits", lambda c: c.increment("a"))
    net.settle()
    assert a.values["hits"].value == 2
    assert net.replica("b").values["hits"].value == 2
    with pytest.raises(DecodeError):
        PNCounter.from_wire({"p": {"a": 2**63}})
    with pytest.raises(DecodeError):
        ORSet.from_wire({"v": {"a": 2**63}})
