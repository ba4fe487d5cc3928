"""Unit tests for the Merger protocol, merger_for/as_merger and the LWW register."""

from __future__ import annotations

import pytest

from podshare.crdt import (
    LWW,
    GSet,
    Merger,
    ORSet,
    PNCounter,
    SelfMerger,
    Stamp,
    as_merger,
    merger_for,
)
from podshare.exceptions import DecodeError


class MaxMerger(Merger[int]):
    def merge(self, a: int, b: int) -> int:
        return max(a, b)


class Structural:
    def merge(self, a: int, b: int) -> int:
        return a | b


def test_subclassed_and_structural_mergers_are_mergers() -> None:
    assert isinstance(MaxMerger(), Merger)
    assert isinstance(Structural(), Merger)
    assert not isinstance(3, Merger)
    assert MaxMerger().merge(2, 9) == 9


@pytest.mark.parametrize("tp", [GSet, PNCounter, ORSet, GSet[str], ORSet[int]])
def test_merger_for_value_types(tp: object) -> None:
    m = merger_for(tp)
    assert isinstance(m, SelfMerger)
    empty = m.empty()
    assert type(empty) is m.type
    assert empty == m.type()
    assert m.merge(empty, empty) == empty


@pytest.mark.parametrize("tp", [int, str, dict, None, dict[str, int], "GSet"])
def test_merger_for_plain_types_is_none(tp: object) -> None:
    assert merger_for(tp) is None


def test_self_merger_delegates_to_the_value() -> None:
    m = merger_for(GSet)
    assert m is not None
    assert m.merge(GSet([1]), GSet([2])) == GSet([1, 2])
    assert m == SelfMerger(GSet)
    assert hash(m) == hash(SelfMerger(GSet))
    assert repr(m) == "SelfMerger(GSet)"


def test_self_merger_empty_without_zero_argument_constructor() -> None:
    m = merger_for(LWW)
    assert m is not None
    with pytest.raises(TypeError):
        m.empty()


def test_as_merger() -> None:
    instance = MaxMerger()
    assert as_merger(instance) is instance
    assert as_merger(GSet[str]) == SelfMerger(GSet)
    with pytest.raises(TypeError):
        as_merger(int)
    with pytest.raises(TypeError):
        as_merger(42)


def test_lww_keeps_the_higher_stamp_whatever_the_order() -> None:
    a = LWW("a", Stamp(5, 0, "n1"))
    b = LWW("b", Stamp(5, 0, "n2"))
    c = LWW("c", Stamp(4, 9, "n3"))
    for x, y in [(a, b), (b, a), (b, c), (c, b)]:
        assert x.merge(y) is b
    assert a.merge(a) is a


def test_lww_is_frozen_and_hashable() -> None:
    r = LWW(1, Stamp(1, 0, "n"))
    with pytest.raises(AttributeError):
        r.value = 2  # type: ignore[misc]
    assert hash(r) == hash(LWW(1, Stamp(1, 0, "n")))


def _as_tuple(raw: object) -> tuple[object, ...]:
    assert isinstance(raw, list)
    return tuple(raw)


def test_lww_wire_with_and_without_codec() -> None:
    r = LWW((1, 2), Stamp(3, 4, "n"))
    assert r.to_wire(list) == [[1, 2], [3, 4, "n"]]
    assert LWW.from_wire([[1, 2], [3, 4, "n"]], _as_tuple) == r
    assert LWW.from_wire(["v", [3, 4, "n"]]) == LWW("v", Stamp(3, 4, "n"))


def _strict_int(x: object) -> int:
    if type(x) is not int:
        raise DecodeError("not an int")
    return x


def _broken(x: object) -> int:
    raise KeyError(x)


@pytest.mark.parametrize(
    "bad",
    [None, [1], [1, [3, 4, "n"], 5], ["x", [3, 4, "n"]], [1, [3, -4, "n"]], [1, "stamp"]],
)
def test_lww_from_wire_rejects_malformed(bad: object) -> None:
    with pytest.raises(DecodeError):
        LWW.from_wire(bad, _strict_int)


def test_lww_from_wire_wraps_decoder_errors() -> None:
    with pytest.raises(DecodeError):
        LWW.from_wire([1, [3, 4, "n"]], _broken)
