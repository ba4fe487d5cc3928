"""Property tests for ORSet: add-wins semantics, deltas and the fast merge path."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.crdt import ORSet

NODES = ("a", "b", "c")
ELEMENTS = st.sampled_from(["x", "y", "z", 1, 2, (3, "t")])

# One step of a small cluster: a replica adds, removes or pulls a peer's state.
steps = st.lists(
    st.tuples(
        st.integers(0, 2), st.sampled_from(["add", "remove", "sync"]), ELEMENTS, st.integers(0, 2)
    ),
    max_size=15,
)


def run(
    ops: list[tuple[int, str, Any, int]], replicas: list[ORSet[Any]] | None = None
) -> list[ORSet[Any]]:
    states = replicas or [ORSet() for _ in NODES]
    for i, op, x, j in ops:
        if op == "add":
            states[i] = states[i].add(x, NODES[i])
        elif op == "remove":
            states[i] = states[i].remove(x)
        else:
            states[i] = states[i].merge(states[j])
    return states


@given(steps, ELEMENTS)
def test_concurrent_add_and_remove_of_the_same_element_add_wins(
    ops: list[tuple[int, str, Any, int]], x: Any
) -> None:
    a, b, _ = run(ops)
    base = a.merge(b)
    added = base.add(x, "a")
    removed = base.remove(x)
    assert x in added.merge(removed)
    assert x in removed.merge(added)


@given(steps, ELEMENTS, steps)
def test_remove_after_an_observed_add_wins(
    ops: list[tuple[int, str, Any, int]], x: Any, more: list[tuple[int, str, Any, int]]
) -> None:
    a, b, c = run(ops)
    a = a.add(x, "a")
    # b has seen every add of x (a's new one included) when it removes x.
    b = b.merge(a).merge(c).remove(x)
    # Further activity that never re-adds x cannot bring it back.
    others = run([op for op in more if op[2] != x], [a, b, c])
    merged = others[0].merge(others[1]).merge(others[2])
    assert x not in merged


@given(steps)
def test_elements_match_a_sequential_model_on_one_replica(
    ops: list[tuple[int, str, Any, int]],
) -> None:
    s: ORSet[Any] = ORSet()
    model: set[Any] = set()
    for _, op, x, _ in ops:
        if op == "add":
            s = s.add(x, "a")
            model.add(x)
        elif op == "remove":
            s = s.remove(x)
            model.discard(x)
    assert set(s) == model
    assert len(s) == len(model)


@given(steps, st.integers(0, 2), st.integers(0, 2))
def test_delta_from_any_earlier_or_concurrent_state_reaches_the_join(
    ops: list[tuple[int, str, Any, int]], i: int, j: int
) -> None:
    states = run(ops)
    old, new = states[i], states[j]
    delta = new.delta_from(old)
    assert old.merge(delta) == old.merge(new)


@given(steps, st.lists(st.tuples(st.sampled_from(["add", "remove"]), ELEMENTS), max_size=4))
def test_each_mutators_delta_rebuilds_the_new_state(
    ops: list[tuple[int, str, Any, int]], edits: list[tuple[str, Any]]
) -> None:
    state = run(ops)[0]
    receiver = state
    for op, x in edits:
        new = state.add(x, "a") if op == "add" else state.remove(x)
        receiver = receiver.merge(new.delta_from(state))
        state = new
    assert receiver == state


@settings(max_examples=60)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.sampled_from(NODES)), min_size=20, max_size=60),
    steps,
)
def test_fast_merge_of_a_small_state_into_a_big_one_equals_the_full_merge(
    adds: list[tuple[int, str]], ops: list[tuple[int, str, Any, int]]
) -> None:
    big: ORSet[Any] = ORSet()
    for x, node in adds:
        big = big.add(x, node)
    _, small, other = run(ops, [big, ORSet().merge(big), ORSet()])
    for s in (small, other, small.remove(adds[0][0]), other.add(adds[-1][0], "c")):
        expected = big._merge_entries(s)
        assert big.merge(s)._entries == expected
        assert s.merge(big)._entries == expected
        assert big.merge(s) == s.merge(big)
