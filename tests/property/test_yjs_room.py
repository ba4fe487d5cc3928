"""The bridge's sans-I/O core on a simulated network: pods converge, never echo, go quiet.

Several :class:`~podshare.yjs._room.RoomCore` (one pycrdt Doc each) exchange messages
through an in-test network that Hypothesis drives: local edits (text, deletes, plain
JSON objects in arrays, shared maps), deliveries that are lost, duplicated or
reordered, and resyncs. Once the network heals and every pod resyncs, all documents
are equal; an edit is sent once, never re-sent by its receivers; and once equal, a
resync round carries state vectors only, never a document.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pycrdt = pytest.importorskip("pycrdt", reason="the bridge needs the yjs extra (pycrdt)")

from podshare.crdt import _yupdate  # noqa: E402
from podshare.yjs import _wire, room_topic  # noqa: E402
from podshare.yjs._room import RoomCore  # noqa: E402

TOPIC = room_topic("room")


@dataclass
class Pod:
    name: str
    doc: Any
    core: RoomCore
    inbox: list[bytes] = field(default_factory=list)
    transactions: int = 0


class Network:
    """Routes the cores' output: the room's topic to every other pod, an inbox to one."""

    def __init__(self, count: int, limit: int) -> None:
        self.pods: list[Pod] = []
        self.sent: list[tuple[str, int]] = []  # (sender, kind) of every message published
        for i in range(count):
            doc = pycrdt.Doc(client_id=i + 1)
            core = RoomCore(
                doc,
                f"pod-{i}",
                TOPIC,
                max_message_size=limit,
                max_update_size=1 << 20,
                max_buffered=1 << 22,
            )
            pod = Pod(f"pod-{i}", doc, core)

            def observe(event: Any, pod: Pod = pod) -> None:
                if not pod.core.applying:
                    pod.transactions += 1
                pod.core.on_transaction(event.update)

            doc.observe(observe)
            self.pods.append(pod)

    def flush(self, pod: Pod) -> None:
        for topic, data in pod.core.data_to_send():
            message = _wire.decode(data)
            self.sent.append((pod.name, message.kind))
            if topic == TOPIC:
                targets = [p for p in self.pods if p is not pod]
            else:
                targets = [p for p in self.pods if topic == p.core.inbox]
            for target in targets:
                target.inbox.append(data)

    def deliver_all(self, rng: random.Random | None = None) -> None:
        """Deliver until every inbox is empty (answers included), in a random order."""
        for _ in range(10_000):
            waiting = [p for p in self.pods if p.inbox]
            if not waiting:
                return
            pod = rng.choice(waiting) if rng else waiting[0]
            data = pod.inbox.pop(0)
            pod.core.receive(data, 0.0)
            assert pod.core.errors_received() == []
            self.flush(pod)
        raise AssertionError("the pods never went quiet")


def state(doc: Any) -> tuple[Any, ...]:
    sv = _yupdate.parse_state_vector(doc.get_state())
    _, ds = _yupdate.parse_update(doc.get_update(doc.get_state()))
    return (
        str(doc.get("text", type=pycrdt.Text)),
        doc.get("items", type=pycrdt.Array).to_py(),
        doc.get("meta", type=pycrdt.Map).to_py(),
        sorted(sv.items()),
        sorted(ds.items()),
    )


def edit(pod: Pod, kind: int, n: int) -> None:
    doc = pod.doc
    with doc.transaction():
        text = doc.get("text", type=pycrdt.Text)
        if kind == 0:
            text.insert(len(str(text)) if n % 2 else 0, f"<{pod.name}:{n}>")
        elif kind == 1 and len(str(text)) > 2:
            start = n % (len(str(text)) - 1)
            del text[start : start + 2]
        elif kind == 2:
            # A plain JSON object in an array: what yarray.push([{...}]) makes.
            doc.get("items", type=pycrdt.Array).append({"by": pod.name, "n": n, "ok": True})
        else:
            doc.get("meta", type=pycrdt.Map)[f"k{n % 3}"] = pycrdt.Map({"by": pod.name, "n": n})


actions = st.lists(
    st.tuples(
        st.sampled_from(["edit", "deliver", "drop", "duplicate", "resync"]),
        st.integers(0, 2),  # pod
        st.integers(0, 3),  # edit kind
        st.integers(0, 1000),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=actions, limit=st.sampled_from([120, 1 << 20]), seed=st.integers(0, 2**32))
def test_pods_converge_after_any_losses_and_then_go_quiet(
    steps: list[tuple[str, int, int, int]], limit: int, seed: int
) -> None:
    rng = random.Random(seed)
    net = Network(3, limit)
    for pod in net.pods:
        pod.core.hello()
        net.flush(pod)
    edits = 0
    for action, index, kind, n in steps:
        pod = net.pods[index]
        if action == "edit":
            before = pod.transactions
            edit(pod, kind, n)
            edits += pod.transactions - before
            net.flush(pod)
        elif pod.inbox:
            position = rng.randrange(len(pod.inbox))
            if action == "drop":
                pod.inbox.pop(position)
            elif action == "duplicate":
                pod.inbox.append(pod.inbox[position])
            elif action == "deliver":
                data = pod.inbox.pop(position)  # out of order
                pod.core.receive(data, 0.0)
                assert pod.core.errors_received() == []
                net.flush(pod)
        if action == "resync":
            pod.core.resync()
            net.flush(pod)
    # No echoes: only local edits were ever sent as updates, each once.
    updates = [kind for _, kind in net.sent if kind == _wire.UPDATE]
    fragments = sum(1 for _, kind in net.sent if kind == _wire.FRAGMENT)
    assert len(updates) <= edits
    if fragments == 0:
        assert len(updates) == edits

    # Heal: deliver everything, then resync until equal (a round or two suffices).
    net.deliver_all(rng)
    for _ in range(3):
        for pod in net.pods:
            pod.core.resync()
            net.flush(pod)
        net.deliver_all(rng)
    states = [state(p.doc) for p in net.pods]
    assert states[0] == states[1] == states[2]

    # Equal pods exchange state vectors only: no document travels.
    before = len(net.sent)
    for pod in net.pods:
        pod.core.resync()
        net.flush(pod)
    net.deliver_all(rng)
    kinds = {kind for _, kind in net.sent[before:]}
    assert kinds == {_wire.SYNC1}


def synced(pod: Pod) -> bool:
    """``pod.core.synced``, read through a call (each input may change it)."""
    return pod.core.synced


def test_a_newcomer_is_synced_once_every_expected_peer_answered() -> None:
    net = Network(3, 1 << 20)
    a, b, c = net.pods
    a.doc.get("text", type=pycrdt.Text).insert(0, "from a")
    b.doc.get("items", type=pycrdt.Array).append("from b")
    c.core.expect(peers=frozenset({"pod-0", "pod-1", "pod-2"}))
    c.core.hello()
    assert not synced(c)
    net.flush(c)
    # a answers first: c is not synced until b has answered too.
    a.core.receive(a.inbox.pop(0), 0.0)
    net.flush(a)
    c.core.receive(c.inbox.pop(0), 0.0)
    assert str(c.doc.get("text", type=pycrdt.Text)) == "from a"
    assert not synced(c)
    net.deliver_all()
    assert c.core.synced
    assert c.doc.get("items", type=pycrdt.Array).to_py() == ["from b"]


def test_alone_in_a_room_is_synced_at_once() -> None:
    net = Network(1, 1 << 20)
    [pod] = net.pods
    pod.core.expect(count=0)
    pod.core.hello()
    assert pod.core.synced


def test_malformed_and_foreign_messages_are_counted_not_raised() -> None:
    net = Network(2, 1 << 20)
    a, _ = net.pods
    head = _wire.header("mallory")
    bad = [
        b"garbage",
        _wire.encode(head, _wire.UPDATE, b"\x00\x00\x00", limit=1000, message_id=0)[0],
        _wire.encode(head, _wire.SYNC1, b"\x00\x01\x05", limit=1000, message_id=0)[0],
        _wire.encode(_wire.header("a#b"), _wire.UPDATE, b"\x00\x00", limit=1000, message_id=0)[0],
        _wire.encode(
            head, _wire.SYNC2, bytes.fromhex("000000000000010000"), limit=99, message_id=0
        )[0],
    ]
    for data in bad:
        a.core.receive(data, 0.0)
    assert len(a.core.errors_received()) == len(bad)
    assert a.core.counters().decode_errors == len(bad)
    assert str(a.doc.get("text", type=pycrdt.Text)) == ""
