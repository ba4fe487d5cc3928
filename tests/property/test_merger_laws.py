"""The merger test kit: it passes on every built-in type and catches broken mergers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import strategies as st

from podshare.crdt import LWW, GSet, Merger, ORSet, PNCounter, Stamp
from podshare.testing import MergerLaws, check_merger

NODES = ("a", "b", "c")
ELEMENTS = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y", b"z", ("t", 1), None]))


@st.composite
def orset_states(draw: st.DrawFn) -> ORSet[Any]:
    """A state one replica of a small cluster reaches by adds, removes and merges."""
    replicas: list[ORSet[Any]] = [ORSet() for _ in NODES]
    ops = draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.sampled_from(["add", "remove", "sync"]), ELEMENTS),
            max_size=12,
        )
    )
    for i, op, x in ops:
        if op == "add":
            replicas[i] = replicas[i].add(x, NODES[i])
        elif op == "remove":
            replicas[i] = replicas[i].remove(x)
        else:
            replicas[i] = replicas[i].merge(replicas[(i + 1) % 3])
    return replicas[draw(st.integers(0, 2))]


@st.composite
def pncounter_states(draw: st.DrawFn) -> PNCounter:
    c = PNCounter()
    for node, up, n in draw(
        st.lists(st.tuples(st.sampled_from(NODES), st.booleans(), st.integers(1, 5)), max_size=8)
    ):
        c = c.increment(node, n) if up else c.decrement(node, n)
    return c


gset_states = st.lists(ELEMENTS, max_size=6).map(GSet)
# A stamp names one write, so equal stamps always carry the same value.
lww_states = st.builds(
    lambda t, c, o: LWW(f"{t}.{c}.{o}", Stamp(t, c, o)),
    st.integers(0, 4),
    st.integers(0, 2),
    st.sampled_from(NODES),
)


class TestGSetLaws(MergerLaws):
    merger = GSet
    values = gset_states
    max_examples = 100


class TestPNCounterLaws(MergerLaws):
    merger = PNCounter
    values = pncounter_states()
    max_examples = 100


class TestORSetLaws(MergerLaws):
    merger = ORSet
    values = orset_states()
    max_examples = 60


class TestLWWLaws(MergerLaws):
    merger = LWW
    values = lww_states
    max_examples = 100


class MaxMerger(Merger[int]):
    def merge(self, a: int, b: int) -> int:
        return max(a, b)

    def empty(self) -> int:
        return 0


class TestMergerInstanceLaws(MergerLaws):
    merger = MaxMerger()
    values = st.integers(0, 100)
    replicas = 5


# Broken mergers the kit must reject.


class KeepLeft:
    def merge(self, a: Any, _b: Any) -> Any:
        return a


class ListAppend:
    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return a + b


class DoubleCountingCounter:
    """Per-node counts summed on merge: a duplicate delivery counts twice."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = counts or {}

    def merge(self, other: DoubleCountingCounter) -> DoubleCountingCounter:
        keys = self.counts.keys() | other.counts.keys()
        return DoubleCountingCounter(
            {k: self.counts.get(k, 0) + other.counts.get(k, 0) for k in keys}
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DoubleCountingCounter) and self.counts == other.counts

    def __repr__(self) -> str:
        return f"DoubleCountingCounter({self.counts})"


class Midpoint:
    """Commutative and idempotent, but not associative."""

    def merge(self, a: int, b: int) -> int:
        return (a + b) // 2


double_counts = st.dictionaries(st.sampled_from(NODES), st.integers(1, 3), min_size=1).map(
    DoubleCountingCounter
)


def test_keep_left_is_reported_as_not_commutative() -> None:
    with pytest.raises(AssertionError, match="commutativity") as info:
        check_merger(KeepLeft(), st.integers())
    # The minimal counterexample is shown.
    assert "a = " in str(info.value)
    assert "b = " in str(info.value)


def test_list_append_is_reported() -> None:
    with pytest.raises(AssertionError, match="merger law violated"):
        check_merger(ListAppend(), st.lists(st.integers(), max_size=3))


def test_list_append_fails_idempotence_on_its_own() -> None:
    with pytest.raises(AssertionError, match="idempotence"):
        laws_for(ListAppend(), st.lists(st.integers(), max_size=3)).test_idempotent()


def test_double_counting_counter_is_reported() -> None:
    with pytest.raises(AssertionError, match="idempotence"):
        check_merger(DoubleCountingCounter, double_counts)


def test_double_counting_counter_fails_convergence_under_duplicate_delivery() -> None:
    laws = laws_for(DoubleCountingCounter, double_counts)
    with pytest.raises(AssertionError, match="convergence"):
        laws.test_convergence()


def test_non_associative_merge_is_reported() -> None:
    laws = laws_for(Midpoint(), st.integers(0, 10))
    laws.test_commutative()
    with pytest.raises(AssertionError, match="associativity"):
        laws.test_associative()


class NonCanonicalWire:
    """Equal states whose wire forms differ: digests would never match."""

    def __init__(self, items: frozenset[int], order: tuple[int, ...]) -> None:
        self.items, self.order = items, order

    def merge(self, other: NonCanonicalWire) -> NonCanonicalWire:
        return NonCanonicalWire(self.items | other.items, self.order + other.order)

    def to_wire(self) -> list[int]:
        return list(dict.fromkeys(self.order))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NonCanonicalWire) and self.items == other.items

    def __repr__(self) -> str:
        return f"NonCanonicalWire({sorted(self.items)})"


def test_non_canonical_wire_form_is_reported() -> None:
    values = st.integers(0, 5).map(lambda i: NonCanonicalWire(frozenset({i}), (i,)))
    with pytest.raises(AssertionError, match="to_wire"):
        check_merger(NonCanonicalWire, values)


def test_check_merger_accepts_types_generics_and_instances() -> None:
    check_merger(GSet[int], st.lists(st.integers(0, 3)).map(GSet), max_examples=10)
    check_merger(MaxMerger(), st.integers(), max_examples=10, replicas=2)


def test_check_merger_rejects_non_mergers_and_bad_replicas() -> None:
    with pytest.raises(TypeError):
        check_merger(int, st.integers())
    with pytest.raises(ValueError, match="replicas"):
        check_merger(MaxMerger(), st.integers(), replicas=0)


def test_mixin_without_configuration_says_what_is_missing() -> None:
    class Incomplete(MergerLaws):
        merger = GSet

    with pytest.raises(TypeError, match="values"):
        Incomplete().test_commutative()


def laws_for(merger: Any, values: st.SearchStrategy[Any]) -> MergerLaws:
    """A configured MergerLaws instance, as a user's subclass would be."""
    laws = MergerLaws()
    laws.merger = merger
    laws.values = values
    return laws


# --- a plain function (a, b) -> value, as Store(merger=fn) takes it (issue 17) ----------


def test_a_plain_function_that_is_a_join_passes_every_law() -> None:
    check_merger(max, st.integers(), max_examples=20)
    check_merger(lambda a, b: a | b, st.frozensets(st.integers(0, 5)), max_examples=20)


def test_a_plain_function_that_is_not_a_join_is_reported() -> None:
    with pytest.raises(AssertionError, match="idempotence"):
        check_merger(lambda a, b: a + b, st.integers(1, 5))  # adding double-counts
    with pytest.raises(AssertionError, match="commutativity"):
        check_merger(lambda a, _b: a, st.integers())  # the Go README's keep-existing


class TestMaxFunction(MergerLaws):
    """The mixin takes a plain function too."""

    merger = staticmethod(max)
    values = st.integers()
    max_examples = 20
