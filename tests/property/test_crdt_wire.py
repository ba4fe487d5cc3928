"""Property tests for wire forms: round trips, canonical encodings, and garbage input."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
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

DECODERS = [GSet.from_wire, PNCounter.from_wire, ORSet.from_wire, Stamp.from_wire, LWW.from_wire]


@pytest.mark.parametrize("decode", DECODERS, ids=lambda f: f.__qualname__)
@given(data=garbage)
def test_garbage_raises_decode_error_and_nothing_else(decode: Any, data: Any) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


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
    # Whatever was accepted is a well-formed value that re-encodes.
    assert type(decoded).from_wire(through_msgpack(decoded.to_wire())) == decoded
