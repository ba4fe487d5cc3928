"""YDoc: the Yjs document value type (reading, editing, wire form, deltas, pycrdt traps)."""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any

import msgpack
import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Array, Map, Text

from podshare.crdt import YDoc, _yupdate, ydoc
from podshare.exceptions import DecodeError, InvalidValue
from podshare.testing import MergerLaws


def chat(n: int) -> YDoc:
    return YDoc().extend("messages", [{"role": "user", "text": f"message {i}"} for i in range(n)])


def clients(doc: YDoc) -> int:
    return len(_yupdate.parse_state_vector(doc.state_vector))


# -- empty value and wire form ----------------------------------------------------------


def test_empty_value() -> None:
    empty = YDoc()
    assert empty.is_empty
    assert empty == YDoc()
    assert empty.text("t") == ""
    assert empty.array("a") == []
    assert empty.map("m") == {}
    assert YDoc.from_wire(empty.to_wire()) == empty
    assert not chat(1).is_empty


def test_wire_round_trip_and_equality() -> None:
    doc = chat(3).insert_text("title", 0, "Hi").set("meta", "topic", "weather")
    wire = doc.to_wire()
    assert isinstance(wire, bytes)
    back = YDoc.from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert back == doc
    assert hash(back) == hash(doc)
    assert back.to_wire() == wire
    assert back.array("messages") == doc.array("messages")
    assert back.text("title") == "Hi"
    assert back.map("meta") == {"topic": "weather"}


def test_from_update_and_from_doc_wrap_pycrdt_documents() -> None:
    live: pycrdt.Doc[Any] = pycrdt.Doc()
    live.get("t", type=Text).insert(0, "from pycrdt")
    assert YDoc.from_doc(live).text("t") == "from pycrdt"
    assert YDoc.from_update(live.get_update()) == YDoc.from_doc(live)
    assert YDoc.from_doc(live).to_update() == YDoc.from_doc(live).to_wire()


@pytest.mark.parametrize(
    "data",
    [
        None,
        42,
        "text",
        b"",
        [b"\x00\x00", "x"],
        [],
        [b"\x00\x00"] * 65,
        b"garbage",
        b"\xff" * 20,
    ],
)
def test_from_wire_rejects_malformed_input(data: object) -> None:
    with pytest.raises(DecodeError):
        YDoc.from_wire(data)


def test_from_wire_rejects_truncated_updates() -> None:
    wire = chat(5).to_wire()
    assert isinstance(wire, bytes)
    with pytest.raises(DecodeError):
        YDoc.from_wire(wire[: len(wire) // 2])


def test_from_wire_caps_size(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = chat(20).to_wire()
    monkeypatch.setattr(ydoc, "MAX_UPDATE_SIZE", 100)
    with pytest.raises(DecodeError, match="over 100 bytes"):
        YDoc.from_wire(wire)


_GOOD = bytes(chat(2).insert_text("t", 0, "hey").to_wire())  # type: ignore[arg-type]


@settings(max_examples=100)
@given(st.binary(min_size=1, max_size=64), st.integers(0, len(_GOOD) - 1))
def test_from_wire_never_raises_anything_but_decode_error(noise: bytes, at: int) -> None:
    good = _GOOD
    candidates = [noise, bytes(good[:at] + noise + good[at + 1 :])]
    for candidate in candidates:
        try:
            doc = YDoc.from_wire(candidate)
        except DecodeError:
            continue
        # Whatever was accepted is a usable value.
        doc.array("messages")
        doc.text("t")
        assert YDoc.from_wire(doc.to_wire()) == doc


# -- reading ----------------------------------------------------------------------------


def test_readers_undo_yjs_number_quirk() -> None:
    doc = YDoc().append("xs", 1, -7, 1.5, 2**53, True, None, b"raw", "s")
    assert doc.array("xs") == [1, -7, 1.5, 2**53, True, None, b"raw", "s"]
    assert [type(x) for x in doc.array("xs")][:2] == [int, int]
    # Yjs stores numbers as doubles: without normalisation pycrdt returns floats.
    assert doc.array("xs", ints=False)[:2] == [1.0, -7.0]
    assert type(doc.array("xs", ints=False)[0]) is float


def test_nested_values_read_back_as_plain_python() -> None:
    msg = {"role": "user", "parts": [{"kind": "text", "text": "hi"}], "n": 3}
    doc = YDoc().append("messages", msg).set("m", "k", {"deep": [1, [2]]})
    assert doc.array("messages") == [msg]
    assert doc.map("m") == {"k": {"deep": [1, [2]]}}


def test_to_doc_is_an_independent_copy() -> None:
    doc = chat(2)
    live = doc.to_doc()
    live.get("messages", type=Array).append("added to the copy only")
    assert len(doc.array("messages")) == 2
    assert len(live.get("messages", type=Array)) == 3
    assert doc == YDoc.from_wire(doc.to_wire())


def test_reads_work_from_other_threads() -> None:
    doc = chat(3)
    seen: list[list[Any]] = []
    thread = threading.Thread(
        target=lambda: seen.append(doc.append("messages", "x").array("messages"))
    )
    thread.start()
    thread.join()
    assert len(seen[0]) == 4


# -- editing ----------------------------------------------------------------------------


def test_edits_return_new_values_and_keep_the_old() -> None:
    old = chat(2)
    new = old.append("messages", "third")
    assert len(old.array("messages")) == 2
    assert new.array("messages")[-1] == "third"
    assert old.merge(new) == new
    assert new.merge(old) == new


def test_text_and_map_helpers() -> None:
    doc = YDoc().insert_text("t", 0, "hello world").delete_text("t", 5, 6)
    assert doc.text("t") == "hello"
    doc = doc.insert_text("t", 5, "!")
    assert doc.text("t") == "hello!"
    with pytest.raises(InvalidValue):
        doc.insert_text("t", 99, "x")
    m = doc.set("cfg", "a", 1).set("cfg", "b", [1, 2]).delete("cfg", "a")
    assert m.map("cfg") == {"b": [1, 2]}
    assert m.delete("cfg", "missing") == m


def test_text_helpers_count_characters_not_utf8_bytes() -> None:
    # pycrdt's Text offsets are UTF-8 bytes: an offset inside "é" or "😀" would corrupt
    # the document. The helpers take character offsets.
    doc = YDoc().insert_text("t", 0, "a😀é b")
    doc = doc.insert_text("t", 2, "X").delete_text("t", 1, 1)
    assert doc.text("t") == "aXé b"
    doc = doc.delete_text("t", 2, 1).insert_text("t", 3, "€")
    assert doc.text("t") == "aX €b"
    assert YDoc.from_wire(doc.to_wire()).text("t") == "aX €b"


def test_edit_with_pycrdt_code() -> None:
    def fn(d: pycrdt.Doc[Any]) -> None:
        d.get("t", type=Text).insert(0, "abc")
        d.get("m", type=Map)["k"] = Map({"x": 1, "y": 2})

    doc = YDoc().edit(fn)
    assert doc.text("t") == "abc"
    assert doc.map("m") == {"k": {"x": 1, "y": 2}}


def test_edit_that_changes_nothing_returns_the_same_value() -> None:
    doc = chat(2)
    assert doc.edit(lambda d: d.get("messages", type=Array)) is doc
    assert doc.extend("messages", []) is doc
    assert doc.insert_text("t", 0, "") is doc


def test_failed_edit_leaves_the_value_unchanged() -> None:
    doc = chat(2)

    def boom(d: pycrdt.Doc[Any]) -> None:
        d.get("messages", type=Array).append("half-done")
        raise RuntimeError("user code failed")

    with pytest.raises(RuntimeError, match="user code failed"):
        doc.edit(boom)
    assert len(doc.array("messages")) == 2
    assert len(doc.append("messages", "ok").array("messages")) == 3


@pytest.mark.parametrize(
    "bad",
    [
        2**53 + 1,
        -(2**53) - 1,
        2**63,
        2**64,
        float("nan"),
        float("inf"),
        {1: "non-str key"},
        {"a", "set"},
        object(),
    ],
)
def test_helpers_refuse_bad_values_before_pycrdt(bad: Any) -> None:
    doc = chat(1)
    with pytest.raises(InvalidValue):
        doc.append("messages", bad)
    with pytest.raises(InvalidValue):
        doc.set("m", "k", [bad])
    assert len(doc.array("messages")) == 1


def test_helpers_refuse_deep_nesting() -> None:
    value: Any = "leaf"
    for _ in range(40):
        value = [value]
    with pytest.raises(InvalidValue, match="nest"):
        YDoc().append("xs", value)


@pytest.mark.parametrize("bad", [2**64, {1: 2}])
def test_pycrdt_panics_inside_edit_become_invalid_value(bad: Any) -> None:
    # pycrdt raises pyo3's PanicException (a BaseException) for these.
    doc = chat(1)
    with pytest.raises(InvalidValue, match="pycrdt refused"):
        doc.edit(lambda d: d.get("messages", type=Array).append(bad))
    assert doc.array("messages") == [{"role": "user", "text": "message 0"}]


def test_plain_dicts_have_one_wire_form_whatever_yrs_hash_order() -> None:
    # Yrs encodes plain objects in its hash maps' random order: one state, many
    # encodings. The wire form sorts their keys, so replica digests agree.
    nested = {"z": 1, "a": {"q": [1, {"k": 2, "b": 3}], "c": "d"}, "m": None}
    base = YDoc().edit(lambda d: d.get("a", type=Array).extend([nested, {"x": 1, "y": 2}]))
    raw = base.to_doc().get_update()
    encodings = set()
    forms = set()
    for _ in range(20):
        fresh: pycrdt.Doc[Any] = pycrdt.Doc()
        fresh.apply_update(raw)
        encodings.add(fresh.get_update())
        forms.add(YDoc.from_update(fresh.get_update()).to_wire())
    assert len(forms) == 1
    assert len(encodings) > 1, "Yrs's order is random: this test would prove nothing"
    assert base.array("a") == [nested, {"x": 1, "y": 2}]
    assert YDoc.from_wire(forms.pop()) == base


def test_embeds_and_formats_with_objects_have_one_wire_form() -> None:
    def rich(d: pycrdt.Doc[Any]) -> None:
        text = d.get("t", type=Text)
        text.insert(0, "hello world")
        text.format(0, 5, {"link": {"href": "https://x", "title": "t", "rel": "r"}})
        text.insert_embed(5, {"image": "a.png", "width": 10, "height": 20})

    doc = YDoc().edit(rich)
    forms = set()
    for _ in range(20):
        fresh: pycrdt.Doc[Any] = pycrdt.Doc()
        fresh.apply_update(doc.to_update())
        forms.add(YDoc.from_update(fresh.get_update()).to_wire())
    assert len(forms) == 1
    assert YDoc.from_wire(forms.pop()).to_doc().get("t", type=Text).diff() == (
        doc.to_doc().get("t", type=Text).diff()
    )


# A document made by the JavaScript yjs 13.6 package (tests/integration/ynode pins it):
#   d.getText('t').insert(0, 'hello'); d.getText('t').delete(1, 2)
#   d.getArray('a').push([{role: 'user', text: 'hi', meta: {x: 1, y: 2}}, 2])
#   d.getMap('m').set('k', 'v')
# encoded with Y.encodeStateAsUpdate (v1) and Y.encodeStateAsUpdateV2 (v2).
JS_V1 = bytes.fromhex(
    "01052a00040101740168812a0002842a02026c6f0801016102760304726f6c65770475736572047465787477"
    "026869046d657461760201787d0101797d027d022801016d016b01770176012a010102"
)
JS_V2 = bytes.fromhex(
    "0000026a0102000400090400810084000800280d0774686c6f616d6b410002410101010003420001010500"
    "760304726f6c65770475736572047465787477026869046d657461760201787d0101797d027d0277017601"
    "2a010101"
)


def test_a_javascript_v1_update_loads() -> None:
    doc = YDoc.from_update(JS_V1)
    assert doc.text("t") == "hlo"
    assert doc.array("a") == [{"meta": {"x": 1, "y": 2}, "role": "user", "text": "hi"}, 2]
    assert doc.map("m") == {"k": "v"}


def test_v2_updates_are_refused_not_read_as_empty_documents() -> None:
    assert pycrdt.Doc().get_state() == b"\x00"
    lenient: pycrdt.Doc[Any] = pycrdt.Doc()
    lenient.apply_update(JS_V2)  # what the check guards against: Yrs says nothing...
    assert lenient.get_update() == b"\x00\x00"  # ...and holds an empty document
    for load in (YDoc.from_update, YDoc.from_wire, lambda b: YDoc.from_wire([b])):
        with pytest.raises(DecodeError, match="v2 update"):
            load(JS_V2)
    empty_v2 = bytes.fromhex("00000000000001000000000000")
    with pytest.raises(DecodeError, match="v2 update"):
        YDoc.from_update(empty_v2)


@pytest.mark.parametrize(
    "bad",
    [
        JS_V1 + b"\x00",  # bytes after the update
        JS_V1[:-1],  # truncated delete set
        JS_V1[:20],  # truncated struct
        b"\x00\x00\x00",  # the empty update, then a byte
        b"\x00\x01",  # a delete set that is cut short
    ],
)
def test_malformed_v1_updates_are_refused(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        YDoc.from_update(bad)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_updates_are_refused_or_round_trip(data: st.DataObject) -> None:
    raw = bytearray(JS_V1)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw) - 1))
        raw[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(1, len(raw)))]
    try:
        doc = YDoc.from_update(bytes(raw))
    except DecodeError:
        return
    # Accepted: a real value, whose wire form decodes to the same value.
    again = YDoc.from_wire(doc.to_wire())
    assert again == doc
    assert again.to_wire() == doc.to_wire()


def test_interrupts_are_not_swallowed() -> None:
    def interrupt(_d: pycrdt.Doc[Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        YDoc().edit(interrupt)


def test_two_edits_of_one_state_never_clash() -> None:
    # Both edits start from the same state; they must not reuse one Yjs client id with
    # the same clock, or one edit would silently shadow the other.
    base = chat(3)
    left = base.append("messages", "left")
    right = base.append("messages", "right")
    merged = left.merge(right)
    assert sorted(merged.array("messages")[3:]) == ["left", "right"]
    assert merged == right.merge(left)


def test_chained_edits_reuse_one_client_id() -> None:
    doc = YDoc()
    for i in range(20):
        doc = doc.append("log", i)
    assert clients(doc) == 1


# -- deltas -----------------------------------------------------------------------------


def test_one_message_on_a_1000_message_chat_is_small_on_the_wire() -> None:
    big = chat(1000)
    newer = big.append("messages", {"role": "assistant", "text": "Sure, here it is."})
    delta = newer.delta_from(big)
    assert len(msgpack.packb(delta.to_wire())) <= 200
    assert len(msgpack.packb(big.to_wire())) > 20_000
    assert big.merge(delta) == newer


def test_delta_from_an_unrelated_copy_is_a_diff() -> None:
    big = chat(1000)
    newer = big.append("messages", "x").insert_text("t", 0, "y")
    old_copy = YDoc.from_wire(big.to_wire())  # no lineage: the diff path
    delta = newer.delta_from(old_copy)
    assert len(msgpack.packb(delta.to_wire())) <= 200
    assert old_copy.merge(delta) == newer
    assert newer.delta_from(newer).is_empty


def test_deltas_arriving_before_their_dependencies_are_kept() -> None:
    base = chat(2)
    one = base.append("messages", "one")
    two = one.append("messages", "two")
    gone = two.edit(lambda d: d.get("messages", type=Array).pop(0))
    d1, d2, d3 = one.delta_from(base), two.delta_from(one), gone.delta_from(two)
    receiver = YDoc.from_wire(base.to_wire())
    for order in ([d3, d2, d1], [d2, d3, d1], [d1, d3, d2]):
        state = receiver
        for d in order:
            state = state.merge(d)
            assert YDoc.from_wire(state.to_wire()) == state
        assert state == gone
        assert state.array("messages") == [{"role": "user", "text": "message 1"}, "one", "two"]


def test_pending_only_deletes_are_kept_too() -> None:
    base = YDoc().insert_text("t", 0, "abc")
    grown = base.insert_text("t", 3, "def")
    shrunk = grown.delete_text("t", 3, 3)
    late_delete = shrunk.delta_from(grown)
    state = base.merge(late_delete)  # deletes text this replica has not seen yet
    assert state.text("t") == "abc"
    assert isinstance(state.to_wire(), list)
    state = state.merge(grown.delta_from(base))
    assert state.text("t") == "abc"
    assert state == shrunk
    assert isinstance(state.to_wire(), bytes)


# -- compaction ---------------------------------------------------------------------------


def test_history_does_not_grow_like_accumulated_updates() -> None:
    doc = YDoc().insert_text("t", 0, "x" * 50)
    naive: list[bytes] = []
    sizes = []
    for round_ in range(400):
        newer = doc.insert_text("t", 10, "some words").delete_text("t", 10, 10)
        naive.append(newer.delta_from(doc).to_update())
        doc = newer
        if round_ in (199, 399):
            sizes.append(len(doc.to_update()))
    accumulated = sum(len(u) for u in naive)
    assert doc.text("t") == "x" * 50
    assert sizes[1] * 10 < accumulated
    # Deleted runs of one client collapse into ranges: the second 200 rounds add little.
    assert sizes[1] - sizes[0] < sizes[0]
    assert len(pycrdt.merge_updates(*naive)) > sizes[1]


def test_the_working_doc_is_rebuilt_after_many_edits() -> None:
    doc = YDoc().insert_text("t", 0, "start")
    for i in range(150):
        doc = doc.insert_text("t", 5, f"{i % 10}").delete_text("t", 5, 1).append("log", i)
    assert doc._since_squash < ydoc._SQUASH_EVERY  # rebuilt at least once on the way
    assert doc.text("t") == "start"
    assert doc.array("log") == list(range(150))
    assert doc.to_wire() == YDoc.from_wire(doc.to_wire()).to_wire()
    assert clients(doc) == 1  # the rebuilt Doc kept the leased client id


# -- immutability guards ------------------------------------------------------------------


def test_copies_are_the_value_and_pickle_is_refused() -> None:
    doc = chat(1)
    assert copy.copy(doc) is doc
    assert copy.deepcopy(doc) is doc
    with pytest.raises(TypeError):
        pickle.dumps(doc)
    with pytest.raises(TypeError):
        doc.merge("not a doc")  # type: ignore[arg-type]


# -- the merger laws ------------------------------------------------------------------------

_BASES = [YDoc(), chat(2).insert_text("t", 0, "shared")]


def _apply_op(doc: YDoc, op: tuple[str, int, str]) -> YDoc:
    kind, n, s = op
    if kind == "ins":
        return doc.insert_text("t", min(n, len(doc.text("t"))), s)
    if kind == "del":
        return doc.delete_text("t", n, 2)
    if kind == "app":
        return doc.append("messages", s)
    if kind == "pop":
        return doc.edit(
            lambda d: (
                d.get("messages", type=Array).pop(0) if len(d.get("messages", type=Array)) else None
            )
        )
    return doc.set("m", s or "k", n)


_ops = st.tuples(
    st.sampled_from(["ins", "del", "app", "pop", "set"]),
    st.integers(0, 8),
    st.text(alphabet="abc", max_size=3),
)


@st.composite
def ydocs(draw: st.DrawFn) -> YDoc:
    base = draw(st.sampled_from(_BASES))
    doc = base
    for op in draw(st.lists(_ops, max_size=4)):
        doc = _apply_op(doc, op)
    if draw(st.booleans()):
        return doc.delta_from(base)  # deltas are values too, and may arrive early
    return doc


class TestYDocMergerLaws(MergerLaws):
    merger = YDoc
    values = ydocs()
    max_examples = 40
