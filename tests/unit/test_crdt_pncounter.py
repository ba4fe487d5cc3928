"""Unit tests for PNCounter."""

from __future__ import annotations

import msgpack
import pytest

from podshare.crdt import PNCounter
from podshare.exceptions import DecodeError, InvalidValue


def test_empty_counter_is_zero() -> None:
    assert PNCounter().value == 0
    assert PNCounter() == PNCounter()


def test_increment_and_decrement() -> None:
    c = PNCounter().increment("a").increment("a", 4).decrement("b", 2)
    assert c.value == 3
    assert dict(c.increments) == {"a": 5}
    assert dict(c.decrements) == {"b": 2}


def test_mutators_leave_the_original_unchanged() -> None:
    c = PNCounter().increment("a")
    c.increment("a", 10)
    c.decrement("a", 10)
    assert c.value == 1


def test_merge_takes_per_node_maximum_and_never_double_counts() -> None:
    base = PNCounter().increment("a", 2)
    left = base.increment("a")
    right = base.decrement("b", 5).increment("c")
    merged = left.merge(right)
    assert merged.value == 3 - 5 + 1
    assert merged.merge(left).merge(right).merge(merged) == merged
    assert right.merge(left) == merged


@pytest.mark.parametrize("n", [0, -1, 1.0, True, "1", None, 2**63, 2**64])
def test_amount_must_be_positive_int(n: object) -> None:
    with pytest.raises(InvalidValue):
        PNCounter().increment("a", n)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        PNCounter().decrement("a", n)  # type: ignore[arg-type]


@pytest.mark.parametrize("node", ["", None, 1, "x" * 257])
def test_node_must_be_non_empty_str(node: object) -> None:
    with pytest.raises(InvalidValue):
        PNCounter().increment(node)  # type: ignore[arg-type]


def test_total_overflow_refused() -> None:
    c = PNCounter().increment("a", 2**63 - 1)
    with pytest.raises(InvalidValue):
        c.increment("a")


def test_wire_is_canonical_and_round_trips() -> None:
    a = PNCounter().increment("z").increment("a", 2).decrement("m")
    b = PNCounter().decrement("m").increment("a", 2).increment("z")
    assert a.to_wire() == {"n": {"m": 1}, "p": {"a": 2, "z": 1}}
    assert msgpack.packb(a.to_wire()) == msgpack.packb(b.to_wire())
    assert PNCounter.from_wire(msgpack.unpackb(msgpack.packb(a.to_wire()))) == a
    assert PNCounter.from_wire({"p": {"a": 1}, "future": [1]}).value == 1


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"p": []},
        {"p": {"a": -1}},
        {"p": {"a": 0}},
        {"p": {"a": True}},
        {"p": {"a": 1.0}},
        {"p": {"": 1}},
        {"p": {1: 1}},
        {"n": {"a": 2**64}},
        {"n": None},
    ],
)
def test_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(DecodeError):
        PNCounter.from_wire(bad)


def test_delta_of_one_mutation_is_cached() -> None:
    c = PNCounter().increment("a", 3).increment("b")
    up = c.increment("a")
    assert up.delta_from(c).to_wire() == {"n": {}, "p": {"a": 4}}
    assert up.delta_from(c) is up.delta_from(c)
    down = c.decrement("b", 2)
    assert down.delta_from(c).to_wire() == {"n": {"b": 2}, "p": {}}
    assert c.merge(down.delta_from(c)) == down


def test_delta_by_diff() -> None:
    c = PNCounter().increment("a")
    later = c.increment("a").decrement("b").increment("c")
    d = later.delta_from(c)
    assert d.to_wire() == {"n": {"b": 1}, "p": {"a": 2, "c": 1}}
    assert c.merge(d) == later


def test_repr_and_hash() -> None:
    c = PNCounter().increment("a", 2).decrement("b")
    assert repr(c) == "PNCounter(value=1, p={'a': 2}, n={'b': 1})"
    assert hash(c) == hash(PNCounter().decrement("b").increment("a", 2))
    assert c != 1
