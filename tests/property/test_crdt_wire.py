"""Property tests for wire forms: round trips, canonical encodings, and garbage input."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from podshare.crdt import LWW, GSet, ORSet, PNCounter, Stamp
from podshare.exceptions import DecodeError

NODES = st.sampled_from(["a", "b", "pod-3"])
scalars = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=8),
    st.binary(max_size=8),
)
elements = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6
)


def through_msgpack(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj), strict_map_key=False)


@st.composite
def orsets(draw: st.DrawFn) -> ORSet[Any]:
    replicas: list[ORSet[Any]] = [ORSet(), ORSet()]
    for i, op, x in draw(
        st.lists(st.tuples(st.integers(0, 1), st.sampled_from("arm"), elements), max_size=10)
    ):
        if op == "a":
            replicas[i] = replicas[i].add(x, f"n{i}")
        elif op == "r":
            replicas[i] = replicas[i].remove(x)
        else:
            replicas[i] = replicas[i].merge(replicas[1 - i])
    return replicas[0]


@st.composite
def counters(draw: st.DrawFn) -> PNCounter:
    c = PNCounter()
    for node, up, n in draw(
        st.lists(st.tuples(NODES, st.booleans(), st.integers(1, 2**32)), max_size=6)
    ):
        c = c.increment(node, n) if up else c.decrement(node, n)
    return c


stamps = st.builds(
    Stamp, st.integers(0, 2**53 - 1), st.integers(0, 2**32 - 1), st.text(max_size=256)
)
values = st.one_of(
    st.lists(elements, max_size=6).map(GSet),
    counters(),
    orsets(),
)


@given(values)
def test_value_round_trips_through_msgpack_and_encodes_canonically(value: Any) -> None:
    wire = value.to_wire()
    back = type(value).from_wire(through_msgpack(wire))
    assert back == value
    assert msgpack.packb(back.to_wire()) == msgpack.packb(wire)


@given(st.lists(elements, max_size=6), st.randoms())
def test_gset_wire_does_not_depend_on_insertion_order(items: list[Any], rnd: Any) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert msgpack.packb(GSet(items).to_wire()) == msgpack.packb(GSet(shuffled).to_wire())


@settings(max_examples=100)
@given(orsets(), orsets())
def test_orset_merge_orders_give_the_same_bytes(a: ORSet[Any], b: ORSet[Any]) -> None:
    assert msgpack.packb(a.merge(b).to_wire()) == msgpack.packb(b.merge(a).to_wire())


@given(stamps)
def test_stamp_round_trips(stamp: Stamp) -> None:
    assert Stamp.from_wire(through_msgpack(stamp.to_wire())) == stamp


@given(stamps, st.text(max_size=10))
def test_lww_round_trips(stamp: Stamp, value: str) -> None:
    reg = LWW(value, stamp)
    assert LWW.from_wire(through_msgpack(reg.to_wire())) == reg


# Garbage: arbitrary msgpack-able structures, including near-misses of real forms.
garbage = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**65),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.binary(max_size=5),
        st.sampled_from(["e", "p", "n", "c", "v", "a"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(
            st.one_of(
                st.sampled_from(["e", "p", "n", "c", "v"]), st.text(max_size=3), st.integers()
            ),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def _element(x: Any) -> Any:
    """The model of an element's wire form: arrays are tuples."""
    return tuple(_element(item) for item in x) if isinstance(x, list | tuple) else x


def _packed(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj)
    return data


# What each decoder must make of input it accepts, written from the documented wire forms
# (not from the decoders): the canonical wire form of the decoded value, or its content.
def _expect_gset(data: Any, value: GSet[Any]) -> None:
    assert set(value) == {_element(x) for x in data.get("e", [])}


def _expect_pncounter(data: Any, value: PNCounter) -> None:
    p, n = data.get("p", {}), data.get("n", {})
    assert value.to_wire() == {"n": dict(sorted(n.items())), "p": dict(sorted(p.items()))}
    assert value.value == sum(p.values()) - sum(n.values())


def _expect_orset(data: Any, value: ORSet[Any]) -> None:
    entries = {_element(x): {tuple(dot) for dot in dots} for x, dots in data.get("e", [])}
    assert set(value) == set(entries)
    wire = value.to_wire()
    assert {_element(x): {tuple(dot) for dot in dots} for x, dots in wire["e"]} == entries


def _expect_stamp(data: Any, value: Stamp) -> None:
    assert value.to_wire() == list(data)


def _expect_lww(data: Any, value: LWW[Any]) -> None:
    # Compared as bytes: a NaN value is not equal to itself.
    assert _packed(value.to_wire()) == _packed([data[0], list(data[1])])


MODELS: list[tuple[Any, Any]] = [
    (GSet, _expect_gset),
    (PNCounter, _expect_pncounter),
    (ORSet, _expect_orset),
    (Stamp, _expect_stamp),
    (LWW, _expect_lww),
]
# One valid form of each type, so the accepting branch below runs for every decoder.
VALID_FORMS = [
    {"e": [None, 1, "x", b"y", ["t", [2]]]},
    {"p": {"a": 5, "b": 1}, "n": {"a": 2}},
    {"v": {"a": 2}, "c": [["b", 1]], "e": [["x", [["a", 1], ["b", 1]]], [7, [["a", 2]]]]},
    [5, 0, "n"],
    [42.5, [9, 0, "a"]],
]


@pytest.mark.parametrize(("tp", "expect"), MODELS, ids=lambda x: getattr(x, "__name__", ""))
@given(data=garbage)
@example(data=VALID_FORMS[0])
@example(data=VALID_FORMS[1])
@example(data=VALID_FORMS[2])
@example(data=VALID_FORMS[3])
@example(data=VALID_FORMS[4])
def test_garbage_raises_decode_error_or_decodes_to_what_it_says(
    tp: Any, expect: Any, data: Any
) -> None:
    try:
        value = tp.from_wire(data)
    except DecodeError:
        return
    expect(data, value)
    # And the value round-trips to the same canonical bytes.
    again = tp.from_wire(through_msgpack(value.to_wire()))
    assert _packed(again.to_wire()) == _packed(value.to_wire())


def _mutate(obj: Any, path: list[int], replacement: Any) -> Any:
    """Replace the subtree that ``path`` picks (indices wrap) with ``replacement``."""
    if not path or not isinstance(obj, list | dict) or not obj:
        return replacement
    if isinstance(obj, dict):
        keys = list(obj)
        key = keys[path[0] % len(keys)]
        return {**obj, key: _mutate(obj[key], path[1:], replacement)}
    i = path[0] % len(obj)
    return [*obj[:i], _mutate(obj[i], path[1:], replacement), *obj[i + 1 :]]


@given(values, st.lists(st.integers(0, 10), max_size=5), garbage)
def test_corrupted_real_wire_forms_raise_decode_error_and_nothing_else(
    value: Any, path: list[int], replacement: Any
) -> None:
    corrupted = _mutate(through_msgpack(value.to_wire()), path, replacement)
    try:
        decoded = type(value).from_wire(corrupted)
    except DecodeError:
        return
    # Whatever was accepted is what the corrupted form says, and a value that re-encodes.
    dict(MODELS)[type(value)](corrupted, decoded)
    assert type(decoded).from_wire(through_msgpack(decoded.to_wire())) == decoded
