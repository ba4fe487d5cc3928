"""Unit tests for GSet."""

from __future__ import annotations

import msgpack
import pytest

from podshare.crdt import GSet
from podshare.exceptions import DecodeError, InvalidValue


def test_empty_and_construction() -> None:
    assert len(GSet()) == 0
    assert list(GSet()) == []
    s = GSet(["a", "b", "a"])
    assert len(s) == 2
    assert set(s) == {"a", "b"}
    assert "a" in s
    assert "c" not in s


def test_add_returns_new_value_and_leaves_original_unchanged() -> None:
    s = GSet(["a"])
    t = s.add("b")
    assert set(s) == {"a"}
    assert set(t) == {"a", "b"}
    assert t.add("b") is t


def test_merge_is_union() -> None:
    a = GSet([1, 2])
    b = GSet([2, 3])
    assert a.merge(b) == GSet([1, 2, 3])
    assert b.merge(a) == GSet([1, 2, 3])
    assert a.merge(GSet()) is a


def test_equality_hash_repr() -> None:
    assert GSet(["x", "y"]) == GSet(["y", "x"])
    assert hash(GSet(["x", "y"])) == hash(GSet(["y", "x"]))
    assert GSet(["x"]) != GSet(["y"])
    assert GSet(["x"]) != {"x"}
    assert repr(GSet()) == "GSet()"
    assert repr(GSet(["b", "a"])) == "GSet(['a', 'b'])"


@pytest.mark.parametrize(
    "element",
    [None, 0, -(2**63), 2**64 - 1, "", "text", b"\x00", (), (1, "a", (b"x", None))],
)
def test_supported_elements(element: object) -> None:
    s = GSet[object]().add(element)
    assert element in s
    wire = msgpack.unpackb(msgpack.packb(s.to_wire()))
    assert GSet.from_wire(wire) == s


@pytest.mark.parametrize(
    "element",
    [True, 1.5, float("nan"), [1], {"a": 1}, {1}, 2**64, -(2**63) - 1, (1, [2]), object()],
)
def test_unsupported_elements_raise_invalid_value(element: object) -> None:
    with pytest.raises(InvalidValue):
        GSet[object]().add(element)
    with pytest.raises(InvalidValue):
        GSet([element])


def test_deeply_nested_tuple_refused() -> None:
    deep: object = ()
    for _ in range(40):
        deep = (deep,)
    with pytest.raises(InvalidValue):
        GSet[object]().add(deep)


def test_to_wire_is_canonical_and_sorted() -> None:
    a = GSet(["b", 3, None, b"z", ("t",), "a", -1])
    b = GSet(reversed(["b", 3, None, b"z", ("t",), "a", -1]))
    assert a.to_wire() == b.to_wire()
    assert a.to_wire() == {"e": [None, -1, 3, "a", "b", b"z", ("t",)]}
    assert msgpack.packb(a.to_wire()) == msgpack.packb(b.to_wire())


def test_from_wire_tolerates_unknown_fields_and_turns_arrays_into_tuples() -> None:
    s = GSet.from_wire({"e": [[1, [2]]], "future": 1})
    assert s == GSet([(1, (2,))])
    assert GSet.from_wire({}) == GSet()


@pytest.mark.parametrize(
    "bad",
    [None, [], "e", {"e": None}, {"e": "ab"}, {"e": [1.5]}, {"e": [True]}, {"e": [{}]}],
)
def test_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(DecodeError):
        GSet.from_wire(bad)


def test_delta_of_one_add_is_cached_and_small() -> None:
    big = GSet[int | str](range(10_000))
    new = big.add("fresh")
    delta = new.delta_from(big)
    assert delta == GSet(["fresh"])
    assert delta is new.delta_from(big)  # cached, not recomputed
    assert big.merge(delta) == new


def test_delta_by_diff() -> None:
    old = GSet([1, 2])
    new = old.add(3).add(4)
    delta = new.delta_from(old)
    assert delta == GSet([3, 4])
    assert old.merge(delta) == new
    assert new.delta_from(new) == GSet()
