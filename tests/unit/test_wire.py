"""The wire format: every message round-trips; untrusted bytes decode exactly, or DecodeError."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from podshare.crdt import Stamp
from podshare.crdt.clock import MAX_COUNTER, MAX_TIME
from podshare.exceptions import DecodeError, FrameTooLarge
from podshare.store import wire
from podshare.store.wire import (
    EPHEMERAL,
    EXPIRING,
    MERGED,
    TOMBSTONE,
    Ack,
    Alive,
    Bye,
    Hello,
    HelloAck,
    KeySummary,
    Leave,
    MemberInfo,
    Members,
    Ping,
    Suspect,
    SyncAck,
    SyncData,
    SyncKeys,
    SyncReply,
    SyncRequest,
    SyncWant,
    WireEntry,
    Writes,
    decode,
    decode_unless_own,
    encode,
    encode_raw,
    entry_list,
    entry_size,
    make_entry,
)

S = Stamp(1_700_000_000_000, 3, "pod-a")
EPOCH = Stamp(1_600_000_000_000, 0, "pod-b")
TOKEN = bytes(range(16))
CAP = 1 << 20

PLAIN = make_entry("k", S, 0, b"\x01")
TOMB = make_entry("gone", S, TOMBSTONE, None)
EPH = make_entry("presence:alice", S, EPHEMERAL, b'"here"', owner_nonce=2**63 - 1)
EXP = make_entry("session", S, EXPIRING, b"1", expires=S.time + 30_000)
EXP_TOMB = make_entry("session", S, TOMBSTONE | EXPIRING, None, expires=S.time)
MERGE = make_entry("tags", S, MERGED, b"\x91\x01", EPOCH)
MERGE_TOMB = make_entry("tags", S, MERGED | TOMBSTONE, None, S)
ENTRIES = [PLAIN, TOMB, EPH, EXP, EXP_TOMB, MERGE, MERGE_TOMB]
EXTREME = make_entry("k" * 1024, Stamp(MAX_TIME, MAX_COUNTER, "o" * 256), 0, b"")


def pack(obj: Any) -> bytes:
    """``obj`` packed by msgpack (an implementation independent of the one under test)."""
    data: bytes = msgpack.packb(obj)
    return data


# One message of every kind (several for the kinds with optional or variable parts).
MESSAGES: list[wire.Message] = [
    Writes("pod-a", 7, S.time, ENTRIES),
    Writes("pod-a", 0, 0, []),
    Writes("pod-a", 7, MAX_TIME, [EXTREME]),
    Hello("pod-a", 7, S.time, False, True, 0),
    HelloAck("pod-b", 8, S.time, True, 100_000, 3),
    Hello("pod-a", 7, S.time, True, False, 3, bytes(range(16))),
    HelloAck("pod-b", 8, S.time, True, 100_000, 3, bytes(16)),
    Leave("pod-a", 7, bytes(16)),
    Leave("pod-a", 7),
    SyncRequest("pod-a", 7, 1, 0, None, b""),
    SyncRequest("pod-a", 7, 2**63 - 1, 1, None, bytes(range(128))),
    SyncRequest("pod-a", 7, 1, 2, [0x12, 0x34], bytes(16)),
    SyncRequest("pod-a", 7, 1, 3, [4095], bytes(8)),
    SyncReply("pod-b", 8, 1, wire.SYNC_OK, 1, [0, 3], [15], [("pod-a", 5), ("pod-b", 9)]),
    SyncReply("pod-b", 8, 1, wire.SYNC_BUSY, 2, [], []),
    SyncKeys("pod-b", 8, 1, 0, False, [KeySummary("k", 5, 0, "pod-a", 2**63 - 1)]),
    SyncKeys("pod-b", 8, 1, 1, True, []),
    SyncWant("pod-a", 7, 1, 0, True, ["k", "l"]),
    SyncData("pod-b", 8, 1, wire.STREAM_ANSWER, 0, False, ENTRIES, [("pod-b", 9)]),
    SyncData("pod-a", 7, 1, wire.STREAM_PUSH, 3, True, []),
    SyncAck("pod-a", 7, 1, wire.STREAM_ANSWER, 0, [("k", 5, 0, "pod-c")]),
    SyncAck("pod-b", 8, 1, wire.STREAM_WANT, 2, []),
    Alive("pod-a", 7, 3, S.time, TOKEN, S.time + 1, True, 1000),
    Ping("pod-a", 7, 42, "pod-b"),
    Ack("pod-b", 8, 42, 0, S.time, TOKEN),
    Suspect("pod-a", 7, "pod-b", 8, 0),
    Bye("pod-a", 7, TOKEN),
    Members("pod-a", 7, [MemberInfo("pod-b", 8, 1, S.time, TOKEN)]),
    Members("pod-a", 7, []),
]
KINDS = {type(m) for m in MESSAGES}


def _id(msg: wire.Message) -> str:
    return type(msg).__name__


def test_every_kind_is_listed() -> None:
    assert len(KINDS) == 16


@pytest.mark.parametrize("msg", MESSAGES, ids=_id)
def test_round_trip(msg: wire.Message) -> None:
    data = encode(msg)
    assert decode(data, max_size=CAP) == msg
    # Writes and SyncData pack entries as lists; Hello, HelloAck and Leave leave unset
    # trailing fields out.
    trimmed = isinstance(msg, Writes | SyncData | Hello | HelloAck | Leave)
    assert wire.packed_size(msg) == len(data) or trimmed


@pytest.mark.parametrize("msg", [m for m in MESSAGES if isinstance(m, Writes | SyncData)], ids=_id)
def test_encode_raw_equals_encode(msg: Writes | SyncData) -> None:
    raw = [entry_list(e) for e in msg.entries]
    assert encode_raw(msg, raw) == encode(msg)
    # The message's own entries are ignored: a replica packs lists from its state.
    empty = msgspec.structs.replace(msg, entries=[])
    assert encode_raw(empty, raw) == encode(msg)


def test_tag_is_version_and_kind() -> None:
    assert msgpack.unpackb(encode(Leave("a", 1))) == [wire.VERSION << 8 | 4, "a", 1]
    assert wire.TAG_ALIVE == wire.VERSION << 8 | 17


@pytest.mark.parametrize(
    ("entry", "length"),
    [(TOMB, 5), (PLAIN, 6), (MERGE, 9), (MERGE_TOMB, 9), (EPH, 10), (EXP, 11), (EXP_TOMB, 11)],
    ids=["tombstone", "plain", "merged", "merged-tombstone", "ephemeral", "expiring", "expired"],
)
def test_trailing_nil_fields_are_left_out(entry: WireEntry, length: int) -> None:
    packed = entry_list(entry)
    assert len(packed) == length
    assert packed[-1] is not None
    # What is left out reads back as None.
    assert msgspec.msgpack.decode(pack(packed), type=WireEntry) == entry


@pytest.mark.parametrize("entry", [*ENTRIES, EXTREME], ids=lambda e: f"flags={e.flags}")
def test_entry_size_bounds_the_packed_size(entry: WireEntry) -> None:
    assert entry_size(entry) >= len(pack(entry_list(entry)))


def test_entry_accessors() -> None:
    assert MERGE.stamp == S
    assert MERGE.epoch == EPOCH
    assert PLAIN.epoch is None
    assert EPH.owner_nonce == 2**63 - 1


def test_entry_consistency_follows_the_flags() -> None:
    assert all(e.consistent() for e in ENTRIES)
    bad = [
        make_entry("k", S, TOMBSTONE, b"v"),  # a tombstone with a value
        make_entry("k", S, 0, None),  # a live entry without one
        make_entry("k", S, MERGED, b"v"),  # merged without an epoch
        make_entry("k", S, 0, b"v", EPOCH),  # an epoch without MERGED
        make_entry("k", S, EPHEMERAL, b"v"),  # ephemeral without its owner's nonce
        make_entry("k", S, 0, b"v", owner_nonce=1),  # a nonce without EPHEMERAL
        make_entry("k", S, EXPIRING, b"v"),  # expiring without a deadline
        make_entry("k", S, 0, b"v", expires=5),  # a deadline without EXPIRING
        WireEntry("k", 1, 0, "o", MERGED | EPHEMERAL, b"v", 0, 0, "", 1),  # merged + ephemeral
        WireEntry("k", 1, 0, "o", MERGED, b"v", None, 0, "o"),  # a partial epoch
        WireEntry("k", 1, 0, "o", 0, b"v", 1, None, None),  # epoch parts without MERGED
    ]
    assert [e.consistent() for e in bad] == [False] * len(bad)


def test_extra_trailing_fields_are_ignored() -> None:
    # A later minor revision may append fields: this reader understands the rest.
    raw = pack([wire.TAG_LEAVE, "pod-a", 7, bytes(16), "future", 42])
    assert decode(raw, max_size=CAP) == Leave("pod-a", 7, bytes(16))
    entry = ["k", 1, 0, "o", 0, b"v", None, None, None, None, None, "future"]
    raw = pack([wire.TAG_WRITES, "pod-a", 7, 5, [entry], "future"])
    assert decode(raw, max_size=CAP) == Writes(
        "pod-a", 7, 5, [make_entry("k", Stamp(1, 0, "o"), 0, b"v")]
    )
    summary = ["k", 1, 0, "o", 9, "future"]
    raw = pack([wire.TAG_SYNC_KEYS, "b", 8, 1, 0, True, [summary]])
    assert decode(raw, max_size=CAP) == SyncKeys(
        "b", 8, 1, 0, True, [KeySummary("k", 1, 0, "o", 9)]
    )


def test_oversized_input_is_refused_before_decoding() -> None:
    data = encode(MESSAGES[0])
    with pytest.raises(FrameTooLarge, match=f"{len(data)} bytes exceeds the {len(data) - 1}-byte"):
        decode(data, max_size=len(data) - 1)
    assert decode(data, max_size=len(data)) == MESSAGES[0]
    # Garbage is never looked at when it is too large: the size decides first.
    with pytest.raises(FrameTooLarge):
        decode(b"\xc1" * 100, max_size=99)
    # A declared size larger than the data allocates nothing: it is malformed.
    with pytest.raises(DecodeError):
        decode(b"\x94\xc6\xff\xff\xff\xff", max_size=CAP)


@pytest.mark.parametrize("msg", MESSAGES, ids=_id)
def test_every_truncation_is_a_decode_error(msg: wire.Message) -> None:
    data = encode(msg)
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:n], max_size=CAP)


def test_unknown_version_and_unknown_kind_are_told_apart() -> None:
    with pytest.raises(DecodeError, match=r"unknown message version 3 \(this node speaks 2\)"):
        decode(pack([3 << 8 | 1, "a", 1]), max_size=CAP)
    with pytest.raises(DecodeError, match="unknown message version 1"):
        decode(pack([1 << 8 | 4, "a", 1]), max_size=CAP)
    with pytest.raises(DecodeError, match="unknown message kind 99"):
        decode(pack([wire.VERSION << 8 | 99, "a", 1]), max_size=CAP)


def _entry_msg(*fields: Any) -> bytes:
    return pack([wire.TAG_WRITES, "pod-a", 7, 5, [list(fields)]])


BAD: dict[str, bytes] = {
    "empty": b"",
    "reserved byte": b"\xc1",
    "not an array": pack({"tag": 1}),
    "empty array": pack([]),
    "tag as str": pack(["513", "a", 1, 5, []]),
    "tag as bool": pack([True, "a", 1]),
    "empty sender": pack([wire.TAG_LEAVE, "", 1]),
    "sender too long": pack([wire.TAG_LEAVE, "x" * 257, 1]),
    "sender as bytes": pack([wire.TAG_LEAVE, b"a", 1]),
    "negative nonce": pack([wire.TAG_LEAVE, "a", -1]),
    "nonce beyond 63 bits": pack([wire.TAG_LEAVE, "a", 2**63]),
    "missing entries": pack([wire.TAG_WRITES, "a", 1, 5]),
    "entries as map": pack([wire.TAG_WRITES, "a", 1, 5, {"k": 1}]),
    "bool as int": _entry_msg("k", True, 0, "o", 0, b"v"),
    "negative time": _entry_msg("k", -1, 0, "o", 0, b"v"),
    "time beyond the range": _entry_msg("k", MAX_TIME + 1, 0, "o", 0, b"v"),
    "counter beyond the range": _entry_msg("k", 1, MAX_COUNTER + 1, "o", 0, b"v"),
    "float time": _entry_msg("k", 1.5, 0, "o", 0, b"v"),
    "empty key": _entry_msg("", 1, 0, "o", 0, b"v"),
    "key too long": _entry_msg("k" * 1025, 1, 0, "o", 0, b"v"),
    "empty origin": _entry_msg("k", 1, 0, "", 0, b"v"),
    "unknown flag": _entry_msg("k", 1, 0, "o", 16, b"v"),
    "value as str": _entry_msg("k", 1, 0, "o", 0, "v"),
    "short entry": _entry_msg("k", 1, 0),
    "ext type": pack([wire.TAG_LEAVE, msgpack.ExtType(1, b"x"), 1]),
    "hello synced as int": pack([wire.TAG_HELLO, "a", 1, 5, 1, True, 0]),
    "hash bytes for no buckets": pack([wire.TAG_SYNC_REQUEST, "a", 1, 1, 0, None, b"x"]),
    "hash length mismatch": pack([wire.TAG_SYNC_REQUEST, "a", 1, 1, 1, None, bytes(127)]),
    "bucket beyond its level": pack([wire.TAG_SYNC_REQUEST, "a", 1, 1, 1, [16], bytes(8)]),
    "level beyond 3": pack([wire.TAG_SYNC_REQUEST, "a", 1, 1, 4, [], b""]),
    "unknown status": pack([wire.TAG_SYNC_REPLY, "b", 1, 1, 4, 1, [], []]),
    "unknown data stream": pack([wire.TAG_SYNC_DATA, "b", 1, 1, 2, 0, True, []]),
    "short token": pack([wire.TAG_BYE, "a", 1, bytes(15)]),
    "vector pair of three": pack([wire.TAG_SYNC_REPLY, "b", 1, 1, 0, 1, [], [], [["a", 1, 2]]]),
    "trailing garbage": encode(Leave("pod-a", 7)) + b"\x00",
    "invalid utf-8": b"\x93\xcd\x02\x04\xa2\xff\xfe\x01",
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "huge declared bin": b"\x94\xcd\x02\x17\xa1a\x01\xc6\xff\xff\xff\xff",
}


@pytest.mark.parametrize("data", BAD.values(), ids=list(BAD))
def test_malformed_input_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, max_size=CAP)


def test_sync_request_checks_its_hashes_when_built() -> None:
    with pytest.raises(ValueError, match="0 hash bytes for 16 buckets"):
        SyncRequest("a", 1, 1, 1, None, b"")
    with pytest.raises(ValueError, match="a bucket beyond its level"):
        SyncRequest("a", 1, 1, 2, [256], bytes(8))


@pytest.mark.parametrize("data", ["text", None, 42, [1, 2]], ids=repr)
def test_non_bytes_input_is_a_decode_error(data: Any) -> None:
    with pytest.raises(DecodeError, match="message must be bytes"):
        decode(data, max_size=CAP)


def test_bytearray_and_memoryview_are_bytes() -> None:
    data = encode(Leave("pod-a", 7))
    assert decode_unless_own(bytearray(data), None, 0, max_size=CAP) == Leave("pod-a", 7)
    assert decode_unless_own(memoryview(data), None, 0, max_size=CAP) == Leave("pod-a", 7)


def test_decode_unless_own_drops_only_this_incarnations_echoes() -> None:
    data = encode(Writes("me", 7, 5, [PLAIN]))
    assert decode_unless_own(data, "me", 7, max_size=CAP) is None
    # The same id with another nonce: a second process sharing the id, decoded.
    assert decode_unless_own(data, "me", 8, max_size=CAP) == Writes("me", 7, 5, [PLAIN])
    assert decode_unless_own(data, "other", 7, max_size=CAP) == Writes("me", 7, 5, [PLAIN])
    # An echo's body is never decoded ...
    broken = pack([wire.TAG_WRITES, "me", 7, 5, [["k", -1]]])
    assert decode_unless_own(broken, "me", 7, max_size=CAP) is None
    # ... but the same body from anyone else is refused ...
    with pytest.raises(DecodeError, match="malformed Writes message"):
        decode_unless_own(broken, "me", 8, max_size=CAP)
    # ... and the size and the head are checked first, echo or not.
    with pytest.raises(FrameTooLarge):
        decode_unless_own(data, "me", 7, max_size=4)
    with pytest.raises(DecodeError):
        decode_unless_own(b"\xc1", "me", 7, max_size=CAP)


# --- fuzzing: whatever decodes, decodes to exactly what the bytes say ------------------------

# The packed position of each list of nested structs, and those structs' field counts.
_NESTED: dict[type[Any], tuple[str, type[Any]]] = {
    Writes: ("entries", WireEntry),
    SyncData: ("entries", WireEntry),
    SyncKeys: ("items", KeySummary),
    Members: ("members", MemberInfo),
}
_BY_TAG: dict[Any, type[Any]] = {cls.__struct_config__.tag: cls for cls in KINDS}


def _as_read(cls: type[Any], raw: list[Any], offset: int) -> list[Any]:
    """``raw`` as a reader of ``cls`` sees it: extra trailing fields cut, missing ones defaulted."""
    fields = msgspec.structs.fields(cls)
    out = raw[: offset + len(fields)]
    out.extend(f.default for f in fields[len(out) - offset :])
    return out


def _expected(raw: Any) -> list[Any]:
    """What a correct decoder must produce from ``raw`` (msgpack's own reading of the bytes)."""
    cls = _BY_TAG[raw[0]]
    out = _as_read(cls, raw, 1)
    nested = _NESTED.get(cls)
    if nested is not None:
        name, inner = nested
        at = 1 + [f.name for f in msgspec.structs.fields(cls)].index(name)
        out[at] = [_as_read(inner, item, 0) for item in out[at]]
    return out


def _lists(obj: Any) -> Any:
    """``obj`` with every tuple a list (msgpack has one array type)."""
    if isinstance(obj, list | tuple):
        return [_lists(x) for x in obj]
    return obj


def _check_outcome(data: bytes, max_size: int = CAP) -> None:
    """Decode ``data``: either a ProtocolError of the two kinds, or exactly what it says."""
    if len(data) > max_size:
        with pytest.raises(FrameTooLarge):
            decode(data, max_size=max_size)
        return
    try:
        msg = decode(data, max_size=max_size)
    except DecodeError:
        return
    event(f"decoded {type(msg).__name__}")
    # Succeeded: the message holds exactly what msgpack reads from the bytes ...
    got = _lists(msgspec.to_builtins(msg, builtin_types=(bytes,)))
    assert got == _expected(msgpack.unpackb(data))
    # ... it round-trips (entries pack the fields their flags call for: an inconsistent
    # one loses the others), and its echo is recognised.
    if all(e.consistent() for e in getattr(msg, "entries", ())):
        assert decode(encode(msg), max_size=CAP) == msg
    else:
        assert type(decode(encode(msg), max_size=CAP)) is type(msg)
    assert decode_unless_own(data, msg.sender, msg.nonce, max_size=max_size) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _check_outcome(data, max_size=256)


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.integers(0, 5)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=20)
)
_objects = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)
_envelopes = st.tuples(
    st.sampled_from(sorted(_BY_TAG)) | st.integers(0, 2**16),
    st.text(min_size=1, max_size=4),
    st.integers(0, 9),
    st.lists(_objects, max_size=9),
).map(lambda t: [t[0], t[1], t[2], *t[3]])


@settings(max_examples=200, deadline=None)
@given(_envelopes | _objects)
def test_arbitrary_msgpack(obj: Any) -> None:
    _check_outcome(pack(obj))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MESSAGES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 3),
)
def test_mutated_messages(msg: wire.Message, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(encode(msg))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    _check_outcome(bytes(data[: len(data) - cut]))


def _like(obj: Any) -> st.SearchStrategy[Any]:
    """Values of ``obj``'s type, in range or just beyond it (most mutations should parse)."""
    if isinstance(obj, bool):
        return st.booleans()
    if isinstance(obj, int):
        return st.integers(0, 16) | st.integers(-1, 2**64 - 1) | st.just(min(obj + 1, 2**64 - 1))
    if isinstance(obj, str):
        return st.text(max_size=10) | st.just("x" * 257)
    if isinstance(obj, bytes):
        return st.binary(max_size=24)
    if isinstance(obj, list):
        return st.lists(st.integers(0, 4095), max_size=3) | st.just([])
    return _leaves


def _mutate(obj: Any, data: st.DataObject) -> Any:
    """``obj`` with one random change somewhere inside: a field replaced, added or cut."""
    if not isinstance(obj, list) or not obj or data.draw(st.integers(0, 3)) == 0:
        action = data.draw(st.sampled_from(["replace", "append", "cut"]))
        if action == "replace" or not isinstance(obj, list):
            return data.draw(_like(obj) | _leaves if data.draw(st.booleans()) else _like(obj))
        if action == "append":
            return [*obj, data.draw(_leaves)]
        return obj[:-1]
    at = data.draw(st.integers(0, len(obj) - 1))
    return [*obj[:at], _mutate(obj[at], data), *obj[at + 1 :]]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MESSAGES), st.integers(1, 3), st.data())
def test_structurally_mutated_messages(
    msg: wire.Message, changes: int, data: st.DataObject
) -> None:
    obj = _lists(msgspec.to_builtins(msg, builtin_types=(bytes,)))
    for _ in range(changes):
        obj = _mutate(obj, data)
    _check_outcome(pack(obj))
