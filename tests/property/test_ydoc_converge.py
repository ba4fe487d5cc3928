"""Property: YDoc replicas editing concurrently converge under any delivery order."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.crdt import YDoc


@dataclass
class Replica:
    state: YDoc
    inbox: list[bytes] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)


def _edit(doc: YDoc, kind: str, pos: int, text: str) -> YDoc:
    if kind == "insert":
        return doc.insert_text("t", min(pos, len(doc.text("t"))), text or "x")
    if kind == "delete":
        return doc.delete_text("t", pos, 1 + len(text))
    return doc.append("log", text)


_edits = st.tuples(
    st.sampled_from(["insert", "delete", "append"]),
    st.integers(0, 12),
    st.text(alphabet="abxé😀", max_size=3),
)


def _wire(doc: YDoc) -> bytes:
    # What a store ships: msgpack of the canonical wire form.
    packed: bytes = msgpack.packb(doc.to_wire())
    return packed


def _receive(replica: Replica, message: bytes) -> None:
    replica.state = replica.state.merge(YDoc.from_wire(msgpack.unpackb(message)))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 4),
    shared_start=st.booleans(),
    script=st.lists(
        st.tuples(st.integers(0, 3), st.booleans(), _edits, st.booleans()), max_size=25
    ),
    data=st.data(),
)
def test_concurrent_edits_converge_in_any_delivery_order(
    n: int,
    shared_start: bool,
    script: list[tuple[int, bool, tuple[str, int, str], bool]],
    data: st.DataObject,
) -> None:
    start = YDoc().insert_text("t", 0, "hello world") if shared_start else YDoc()
    replicas = [Replica(start) for _ in range(n)]
    for step, (who, deliver_first, (kind, pos, text), ship_delta) in enumerate(script):
        me = replicas[who % n]
        if deliver_first and me.inbox:
            # Deliver one queued message, chosen by Hypothesis; sometimes keep it queued
            # as well, so it arrives twice.
            k = data.draw(st.integers(0, len(me.inbox) - 1), label="deliver")
            message = me.inbox[k]
            if not data.draw(st.booleans(), label="duplicate"):
                del me.inbox[k]
            _receive(me, message)
        before = me.state
        me.state = _edit(before, kind, pos, text)
        if kind == "append":
            me.appended.append(text)
        # Ship a delta (as a store does after an edit) or the whole state (as a refresh).
        shipped = me.state.delta_from(before) if ship_delta else me.state
        for other in replicas:
            if other is not me:
                other.inbox.append(_wire(shipped))
        del step
    for replica in replicas:
        order = data.draw(st.permutations(replica.inbox), label="final delivery order")
        for message in order:
            _receive(replica, message)
        replica.inbox.clear()

    first = replicas[0].state
    for replica in replicas[1:]:
        assert replica.state == first
        assert replica.state.to_wire() == first.to_wire()
        assert replica.state.text("t") == first.text("t")
        assert replica.state.array("log") == first.array("log")
    # Nothing appended anywhere is lost, and nothing appears twice.
    assert Counter(first.array("log")) == Counter(a for r in replicas for a in r.appended)
    # Every delta has been applied, so nothing is left waiting for a dependency.
    assert isinstance(first.to_wire(), bytes)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_edits, min_size=1, max_size=5), min_size=2, max_size=4), st.data())
def test_full_states_merge_the_same_in_any_order(
    scripts: list[list[tuple[str, int, str]]], data: st.DataObject
) -> None:
    base = YDoc().insert_text("t", 0, "base").append("log", "b")
    states = []
    for script in scripts:
        doc = base
        for kind, pos, text in script:
            doc = _edit(doc, kind, pos, text)
        states.append(doc)
    expected = states[0]
    for s in states[1:]:
        expected = expected.merge(s)
    order = data.draw(st.permutations(states))
    got = YDoc()
    for s in order + order[: data.draw(st.integers(0, len(order)))]:
        got = got.merge(YDoc.from_wire(s.to_wire()))
    assert got == expected
    assert got.to_wire() == expected.to_wire()
    assert got.text("t") == expected.text("t")
