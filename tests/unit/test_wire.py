"""The wire format: round trips, strict rejections, only DecodeError/FrameTooLarge on bad input."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.crdt import Stamp
from podshare.exceptions import DecodeError, FrameTooLarge
from podshare.store import wire
from podshare.store.wire import (
    EPHEMERAL,
    MERGED,
    TOMBSTONE,
    Heartbeat,
    Hello,
    Leave,
    SyncData,
    SyncPush,
    SyncRequest,
    Writes,
    decode,
    encode,
    make_entry,
)

S = Stamp(1_700_000_000_000, 3, "pod-a")
E = Stamp(1_600_000_000_000, 0, "pod-b")
LWW = make_entry("k", S, 0, b"\x01", None)
EPH = make_entry("presence:alice", S, EPHEMERAL, b'"pod-a"', None)
TOMB = make_entry("gone", S, TOMBSTONE, None, None)
MERGE = make_entry("tags", S, MERGED, b"\x91\x01", E)
MERGE_TOMB = make_entry("tags", S, MERGED | TOMBSTONE, None, S)
ALL = [LWW, EPH, TOMB, MERGE, MERGE_TOMB]
CAP = 1 << 20

MESSAGES: list[wire.Message] = [
    Writes("pod-a", ALL),
    Writes("pod-a", []),
    Hello("pod-a", 1_700_000_000_000, False, 1_700_000_000_000, 0),
    Heartbeat("pod-a", 1_700_000_000_000, True, 5, 100_000),
    Leave("pod-a"),
    SyncRequest("pod-a", 7, False, 4, bytes(range(32)), 123),
    SyncRequest("pod-a", 8, True, 1, b"", 123),
    SyncData("pod-b", 7, 0, 2, False, 99, 4, [0, 3], ALL),
    SyncData("pod-b", 7, 1, 2, False, 99, 4, [], [LWW]),
    SyncData("pod-b", 8, 0, 1, False, 99, 1, None, []),
    SyncData("pod-b", 9, 0, 1, True, 99, 1, None, []),
    SyncPush("pod-a", 7, ALL),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: wire.Message) -> None:
    assert decode(encode(msg), max_size=CAP) == msg


def test_entry_accessors() -> None:
    assert MERGE.stamp == S
    assert MERGE.epoch == E
    assert LWW.epoch is None
    assert TOMB.value is None


def test_trimmed_entries_are_small() -> None:
    # A tombstone leaves out value and epoch entirely.
    tomb = make_entry("k", S, TOMBSTONE, None, None)
    assert len(encode(Writes("a", [tomb]))) < len(encode(Writes("a", [LWW])))
    assert wire.entry_size(LWW) >= len(encode(Writes("a", [LWW]))) - len(encode(Writes("a", [])))


def test_extra_trailing_fields_are_ignored() -> None:
    # A later minor revision may append fields; this reader still understands the rest.
    raw = msgpack.packb([1, 4, "pod-a", "future", 42])
    assert decode(raw, max_size=CAP) == Leave("pod-a")
    raw = msgpack.packb([1, 1, "pod-a", [["k", 1, 0, "o", 0, b"v", None, None, None, "x"]]])
    assert decode(raw, max_size=CAP) == Writes(
        "pod-a", [make_entry("k", Stamp(1, 0, "o"), 0, b"v", None)]
    )


def test_oversized_is_refused_before_decoding() -> None:
    data = encode(Writes("pod-a", ALL))
    with pytest.raises(FrameTooLarge):
        decode(data, max_size=len(data) - 1)
    assert decode(data, max_size=len(data)) == Writes("pod-a", ALL)


def test_every_truncation_is_a_decode_error() -> None:
    data = encode(SyncData("pod-b", 7, 0, 2, False, 99, 4, [0, 3], ALL))
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            decode(data[:n], max_size=CAP)


def _entry(*fields: Any) -> bytes:
    return msgpack.packb([1, 1, "pod-a", [list(fields)]])


BAD: dict[str, bytes] = {
    "not an array": msgpack.packb({"v": 1}),
    "empty array": msgpack.packb([]),
    "unknown version": msgpack.packb([2, 4, "pod-a"]),
    "version as bool": msgpack.packb([True, 4, "pod-a"]),
    "unknown kind": msgpack.packb([1, 99, "pod-a"]),
    "kind as str": msgpack.packb([1, "4", "pod-a"]),
    "empty sender": msgpack.packb([1, 4, ""]),
    "sender too long": msgpack.packb([1, 4, "x" * 300]),
    "sender as bytes": msgpack.packb([1, 4, b"pod-a"], use_bin_type=True),
    "missing entries": msgpack.packb([1, 1, "pod-a"]),
    "entries as map": msgpack.packb([1, 1, "pod-a", {"k": 1}]),
    "heartbeat truncated": msgpack.packb([1, 3, "pod-a", 1, True, 1]),
    "synced as int": msgpack.packb([1, 3, "pod-a", 1, 1, 1, 1]),
    "negative keys": msgpack.packb([1, 3, "pod-a", 1, True, 1, -1]),
    "bool as int": _entry("k", True, 0, "o", 0, b"v"),
    "negative time": _entry("k", -1, 0, "o", 0, b"v"),
    "huge counter": _entry("k", 1, 2**40, "o", 0, b"v"),
    "float time": _entry("k", 1.5, 0, "o", 0, b"v"),
    "empty key": _entry("", 1, 0, "o", 0, b"v"),
    "key too long": _entry("k" * 2000, 1, 0, "o", 0, b"v"),
    "unknown flag": _entry("k", 1, 0, "o", 8, b"v"),
    "value as str": _entry("k", 1, 0, "o", 0, "v"),
    "live without value": _entry("k", 1, 0, "o", 0),
    "tombstone with value": _entry("k", 1, 0, "o", TOMBSTONE, b"v"),
    "merged without epoch": _entry("k", 1, 0, "o", MERGED, b"v"),
    "epoch without merged": _entry("k", 1, 0, "o", 0, b"v", 1, 0, "o"),
    "short entry": _entry("k", 1, 0),
    "ext type": msgpack.packb([1, 4, msgpack.ExtType(1, b"x")]),
    "timestamp ext": msgpack.packb([1, 1, "pod-a", msgpack.Timestamp(1, 0)], datetime=False),
    "nbuckets not a power of two": msgpack.packb([1, 5, "a", 1, False, 3, bytes(24), 0]),
    "hash length mismatch": msgpack.packb([1, 5, "a", 1, False, 4, bytes(31), 0]),
    "zero buckets": msgpack.packb([1, 5, "a", 1, True, 0, b"", 0]),
    "seq not below total": msgpack.packb([1, 6, "b", 1, 2, 2, 0, 0, 1, None, []]),
    "unknown status": msgpack.packb([1, 6, "b", 1, 0, 1, 7, 0, 1, None, []]),
    "bucket out of range": msgpack.packb([1, 6, "b", 1, 0, 1, 0, 0, 4, [4], []]),
    "trailing garbage": encode(Leave("pod-a")) + b"\x00",
    "invalid utf-8": b"\x93\x01\x04\xa2\xff\xfe",
    "reserved byte": b"\xc1",
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "huge declared bin": b"\x93\x01\x04\xc6\xff\xff\xff\xff",
}


@pytest.mark.parametrize("data", BAD.values(), ids=list(BAD))
def test_rejects(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, max_size=CAP)


def test_rejects_non_bytes() -> None:
    with pytest.raises(DecodeError):
        decode("text", max_size=CAP)  # type: ignore[arg-type]


def test_make_entry_checks_flags() -> None:
    with pytest.raises(ValueError):
        make_entry("k", S, TOMBSTONE, b"v", None)
    with pytest.raises(ValueError):
        make_entry("k", S, MERGED, b"v", None)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_decode_errors(data: bytes) -> None:
    try:
        decode(data, max_size=256)
    except (DecodeError, FrameTooLarge):
        pass


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_objects = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1), inner, max_size=4)
    ),
    max_leaves=30,
)


_envelopes = st.tuples(
    st.sampled_from([1, 1, 1, 0, 2]),
    st.integers(0, 8),
    st.text(min_size=1, max_size=5),
    st.lists(_objects, max_size=10),
).map(lambda t: [t[0], t[1], t[2], *t[3]])


@settings(max_examples=150, deadline=None)
@given(_envelopes | st.lists(_objects, max_size=6) | _objects)
def test_arbitrary_msgpack_raise_only_decode_errors(obj: Any) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    try:
        msg = decode(data, max_size=CAP)
    except (DecodeError, FrameTooLarge):
        return
    # Anything accepted re-encodes to something that decodes to the same message.
    assert decode(encode(msg), max_size=CAP) == msg


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(MESSAGES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_corrupted_messages_raise_only_decode_errors(
    msg: wire.Message, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode(msg))
    for pos, byte in flips:
        data[pos % len(data)] = byte
    try:
        decode(bytes(data), max_size=CAP)
    except (DecodeError, FrameTooLarge):
        pass


def test_own_messages_are_dropped_after_the_head_only() -> None:
    e = make_entry("k", Stamp(1000, 0, "me"), 0, b"1", None)
    data = encode(Writes("me", [e]))
    assert wire.decode_unless_from(data, "me", max_size=1024) is None
    assert wire.decode_unless_from(data, "other", max_size=1024) == Writes("me", [e])
    # A body that would not decode is never looked at when the head says "mine" ...
    broken = msgpack.packb([1, 1, "me", [["k", -1]]])
    assert wire.decode_unless_from(broken, "me", max_size=1024) is None
    # ... but is refused from anyone else, and the head is still checked.
    with pytest.raises(DecodeError):
        wire.decode_unless_from(broken, "other", max_size=1024)
    with pytest.raises(DecodeError):
        wire.decode_unless_from(msgpack.packb([9, 1, "me", []]), "me", max_size=1024)
    with pytest.raises(FrameTooLarge):
        wire.decode_unless_from(data, "me", max_size=4)
