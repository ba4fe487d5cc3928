"""Unit tests for ORSet: add-wins semantics, causal context, wire form and deltas."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from podshare.crdt import ORSet
from podshare.exceptions import DecodeError, InvalidValue


def test_empty() -> None:
    s: ORSet[str] = ORSet()
    assert len(s) == 0
    assert list(s) == []
    assert "x" not in s
    assert s == ORSet()
    assert repr(s) == "ORSet()"


def test_add_remove_contains() -> None:
    s = ORSet[Any]().add("a", "n1").add("b", "n1")
    assert set(s) == {"a", "b"}
    assert len(s) == 2
    t = s.remove("a")
    assert set(t) == {"b"}
    assert set(s) == {"a", "b"}  # immutable
    assert t.remove("a") is t
    assert repr(s) == "ORSet(['a', 'b'])"


def test_concurrent_add_and_remove_add_wins() -> None:
    base = ORSet[Any]().add("x", "a")
    added = base.add("x", "a")
    removed = base.remove("x")
    assert "x" in added.merge(removed)
    assert "x" in removed.merge(added)


def test_concurrent_fresh_add_on_other_node_survives_remove() -> None:
    base = ORSet[Any]().add("x", "a")
    removed = base.remove("x")
    other = ORSet[Any]().add("x", "b")  # never saw base
    assert "x" in removed.merge(other)


def test_remove_after_observed_add_wins() -> None:
    a = ORSet[Any]().add("x", "a")
    b = ORSet[Any]().merge(a).remove("x")
    assert "x" not in a.merge(b)
    assert "x" not in b.merge(a)


def test_remove_leaves_no_element_tombstone() -> None:
    s: ORSet[Any] = ORSet()
    for i in range(100):
        s = s.add(i, "a").remove(i)
    wire = s.to_wire()
    assert wire == {"c": [], "e": [], "v": {"a": 100}}


def test_dots_are_unique_per_node() -> None:
    s = ORSet[Any]().add("x", "a").add("y", "a").add("x", "b")
    wire = s.to_wire()
    assert wire["v"] == {"a": 2, "b": 1}
    assert wire["e"] == [["x", [["b", 1]]], ["y", [["a", 2]]]]


def test_out_of_order_dots_go_to_the_cloud_and_compact() -> None:
    s: ORSet[Any] = ORSet()
    for i in range(3):
        s = s.add(i, "a")
    d3 = s.add("late", "a").delta_from(s)  # dot (a, 4) only
    gapped = ORSet[Any]().merge(d3)
    assert gapped.to_wire()["c"] == [["a", 4]]
    assert gapped.to_wire()["v"] == {}
    # The node's earlier dots arrive: the cloud folds into the version vector.
    full = gapped.merge(s)
    assert full.to_wire()["c"] == []
    assert full.to_wire()["v"] == {"a": 4}
    assert set(full) == {0, 1, 2, "late"}


def test_clear_removes_only_observed_elements() -> None:
    base = ORSet[Any]().add(1, "a").add(2, "a")
    cleared = base.clear()
    concurrent = base.add(3, "b")
    assert set(cleared.merge(concurrent)) == {3}
    assert ORSet[Any]().clear() == ORSet()


@pytest.mark.parametrize("bad", [True, 1.5, [1], {"k": 1}])
def test_unsupported_elements_raise_invalid_value(bad: object) -> None:
    with pytest.raises(InvalidValue):
        ORSet[Any]().add(bad, "a")


@pytest.mark.parametrize("node", ["", None, 5, "n" * 257])
def test_bad_node_raises_invalid_value(node: object) -> None:
    with pytest.raises(InvalidValue):
        ORSet[Any]().add("x", node)  # type: ignore[arg-type]


def test_equality_covers_history_and_hash() -> None:
    a = ORSet[Any]().add("x", "a")
    b = ORSet[Any]().add("x", "b")
    assert set(a) == set(b)
    assert a != b  # different dots: different states
    assert a.merge(b) == b.merge(a)
    assert hash(a.merge(b)) == hash(b.merge(a))
    assert a != {"x"}


def test_wire_round_trip_and_canonical_form() -> None:
    s = ORSet[Any]().add("b", "n2").add(("t", 1), "n1").add("a", "n1").remove("b").add(7, "n3")
    wire = msgpack.unpackb(msgpack.packb(s.to_wire()))
    back = ORSet.from_wire(wire)
    assert back == s
    assert msgpack.packb(back.to_wire()) == msgpack.packb(s.to_wire())
    assert ORSet.from_wire({"v": {}, "e": [], "c": [], "later": "ignored"}) == ORSet()
    assert ORSet.from_wire({}) == ORSet()


def test_from_wire_compacts_a_non_canonical_cloud() -> None:
    s = ORSet.from_wire({"c": [["a", 1], ["a", 2], ["a", 5]], "e": [["x", [["a", 2]]]], "v": {}})
    assert s.to_wire() == {"c": [["a", 5]], "e": [["x", [["a", 2]]]], "v": {"a": 2}}


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"e": {}},
        {"v": []},
        {"v": {"a": 0}},
        {"v": {"a": -3}},
        {"v": {"": 1}},
        {"c": [["a"]]},
        {"c": [["a", 0]]},
        {"c": [[1, 1]]},
        {"c": "x"},
        {"v": {"a": 1}, "e": [["x"]]},
        {"v": {"a": 1}, "e": [["x", []]]},
        {"v": {"a": 1}, "e": [[1.5, [["a", 1]]]]},
        {"v": {"a": 1}, "e": [["x", [["a", 2]]]]},  # dot outside the context
        {"v": {"a": 2}, "e": [["x", [["a", 1]]], ["x", [["a", 2]]]]},  # element twice
        {"v": {"a": 2}, "e": [["x", [["a", 1]]], ["y", [["a", 1]]]]},  # dot twice
        {"v": {"a": 1}, "e": [["x", "a1"]]},
    ],
)
def test_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(DecodeError):
        ORSet.from_wire(bad)


def test_one_add_to_a_10k_element_set_ships_in_at_most_200_bytes() -> None:
    big: ORSet[str] = ORSet()
    for i in range(10_000):
        big = big.add(f"user-{i}", f"pod-{i % 7}")
    new = big.add("user-new", "pod-3")
    delta = new.delta_from(big)
    assert len(msgpack.packb(delta.to_wire())) <= 200
    assert delta is new.delta_from(big)  # cached by the mutator
    assert big.merge(delta) == new
    # Re-adding a present element also ships small (it carries the replaced dot).
    again = new.add("user-5", "pod-1")
    assert len(msgpack.packb(again.delta_from(new).to_wire())) <= 200
    assert new.merge(again.delta_from(new)) == again
    # And so does a remove.
    gone = again.remove("user-9")
    assert len(msgpack.packb(gone.delta_from(again).to_wire())) <= 200
    assert again.merge(gone.delta_from(again)) == gone


def test_delta_by_diff_matches_full_merge() -> None:
    old = ORSet[Any]().add("a", "n").add("b", "n")
    new = old.remove("a").add("c", "m").add("b", "m")
    delta = new.delta_from(old)
    assert old.merge(delta) == new
    assert new.delta_from(new) == ORSet()


def test_delta_between_unrelated_states_gives_the_join() -> None:
    left = ORSet[Any]().add("a", "n").add("b", "n")
    right = ORSet[Any]().add("c", "m").merge(left).remove("a")
    stale = left.add("d", "n")
    delta = right.delta_from(stale)
    assert stale.merge(delta) == stale.merge(right)


def test_merge_with_a_derived_state_returns_the_derived_state() -> None:
    s = ORSet[Any]().add("a", "n")
    t = s.add("b", "n")
    assert s.merge(t) is t
    assert t.merge(s) is t


def test_diff_against_a_huge_version_vector_sends_the_whole_state() -> None:
    old = ORSet.from_wire({"v": {"a": 1}})
    new = ORSet.from_wire({"v": {"a": 2**60}, "e": [["x", [["a", 2**60]]]]})
    delta = new.delta_from(old)
    assert old.merge(delta) == old.merge(new)
