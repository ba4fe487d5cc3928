"""Property tests for PNCounter: the value survives any delivery order and duplication."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podshare.crdt import PNCounter

NODES = ("a", "b", "c")

operations = st.lists(
    st.tuples(st.sampled_from(NODES), st.booleans(), st.integers(1, 1000)), max_size=20
)


@given(operations, st.data())
def test_value_is_increments_minus_decrements_under_any_delivery(
    ops: list[tuple[str, bool, int]], data: st.DataObject
) -> None:
    # Each node applies its own operations and ships every delta.
    local = dict.fromkeys(NODES, PNCounter())
    deltas: list[PNCounter] = []
    for node, up, n in ops:
        old = local[node]
        local[node] = old.increment(node, n) if up else old.decrement(node, n)
        deltas.append(local[node].delta_from(old))
    expected = sum(n if up else -n for _, up, n in ops)

    dups = data.draw(st.lists(st.integers(0, max(len(deltas) - 1, 0)), max_size=len(deltas)))
    order = data.draw(st.permutations(list(range(len(deltas))) + (dups if deltas else [])))
    replica = PNCounter()
    for i in order:
        replica = replica.merge(deltas[i])
    assert replica.value == expected
    # Full states agree too, delivered in any order.
    full = PNCounter()
    for node in data.draw(st.permutations(NODES)):
        full = full.merge(local[node]).merge(local[node])
    assert full == replica


@given(operations)
def test_delta_by_diff_rebuilds_the_state(ops: list[tuple[str, bool, int]]) -> None:
    c = PNCounter()
    snapshots = [c]
    for node, up, n in ops:
        c = c.increment(node, n) if up else c.decrement(node, n)
        snapshots.append(c)
    for old in snapshots[:: max(1, len(snapshots) // 4)]:
        assert old.merge(c.delta_from(old)) == c
