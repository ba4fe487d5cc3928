"""The Yjs bridge's wire: room topics, envelopes, fragments, reassembly limits, y-protocols."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pycrdt", reason="the bridge needs the yjs extra (pycrdt)")

from podshare.exceptions import ConfigurationError, DecodeError
from podshare.yjs import _protocol, _wire, room_topic

HEAD = _wire.header("pod-a")


# -- room names ---------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["notes", "a/b/c", "/notes/42", "x:y@z+w=v-u_t.s", "x" * 128])
def test_plain_room_names_keep_their_name(room: str) -> None:
    assert room_topic(room) == "yjs/" + room


@pytest.mark.parametrize(
    "room",
    ["", "x" * 129, "x" * 100_000, "with space", "a#b", "~x", "café", "日本語", "\ud800", "a\nb"],
)
def test_other_room_names_are_hashed_to_a_short_valid_topic(room: str) -> None:
    topic = room_topic(room)
    assert topic.startswith("yjs/~")
    assert len(topic) == len("yjs/~") + 32
    assert "#" not in topic
    assert topic.isascii()
    assert room_topic(room) == topic  # stable


def test_hashed_topics_never_collide_with_kept_names() -> None:
    # A kept name cannot start with "~", so "yjs/~..." is only ever a hash.
    hashed = room_topic("x" * 129)
    assert room_topic(hashed[len("yjs/") :]) != hashed
    assert len({room_topic("x" * n) for n in range(120, 140)}) == 20


def test_room_names_must_be_strings() -> None:
    with pytest.raises(ConfigurationError):
        room_topic(b"notes")  # type: ignore[arg-type]


# -- envelopes and fragments ----------------------------------------------------------------


def test_a_small_message_is_one_envelope() -> None:
    [data] = _wire.encode(HEAD, _wire.UPDATE, b"\x01\x02", limit=1000, message_id=0)
    assert data == bytes([2, _wire.UPDATE, 5]) + b"pod-a\x01\x02"
    assert _wire.decode(data) == _wire.Message(_wire.UPDATE, "pod-a", b"\x01\x02")


@settings(max_examples=100, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=5000),
    limit=st.integers(min_value=200, max_value=2000),
    order=st.randoms(use_true_random=False),
)
def test_fragments_fit_the_limit_and_join_in_any_order(
    body: bytes, limit: int, order: random.Random
) -> None:
    parts = _wire.encode(HEAD, _wire.SYNC2, body, limit=limit, message_id=7)
    assert all(len(p) <= limit for p in parts)
    joiner = _wire.Reassembler(max_message=10_000, max_buffered=10_000)
    order.shuffle(parts)
    results = []
    duplicate = parts[:1] if len(parts) > 1 else []  # a repeated fragment changes nothing
    for part in parts + duplicate:
        message = _wire.decode(part)
        assert message.sender == "pod-a"
        if message.kind == _wire.FRAGMENT:
            results.append(joiner.add(message.sender, message.body, now=0.0))
        else:
            results.append((message.kind, message.body))
    whole = [r for r in results if r is not None]
    assert whole == [(_wire.SYNC2, body)]
    assert joiner.buffered == 0
    assert joiner.dropped == 0


def test_a_limit_too_small_for_fragments_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        _wire.encode(HEAD, _wire.UPDATE, bytes(500), limit=60, message_id=0)


def _fragments(sender: str, ident: int, size: int, chunk: int = 100) -> list[bytes]:
    parts = _wire.encode(
        _wire.header(sender), _wire.UPDATE, bytes(size), limit=chunk + 60, message_id=ident
    )
    return [_wire.decode(p).body for p in parts]


def test_reassembly_memory_is_bounded_whatever_a_peer_sends() -> None:
    joiner = _wire.Reassembler(max_message=1_000_000, max_buffered=5_000, max_partials=4)
    # Many senders each start huge messages and never finish them.
    for sender in range(50):
        for ident in range(10):
            first = _fragments(f"p{sender}", ident, 50_000)[0]
            assert joiner.add(f"p{sender}", first, now=0.0) is None
            assert joiner.buffered <= 5_000
    assert joiner.dropped > 0
    assert len(joiner) <= 5_000 // 100
    # A complete message still gets through afterwards.
    done = [joiner.add("late", f, now=0.0) for f in _fragments("late", 1, 1_000)]
    assert done[-1] == (_wire.UPDATE, bytes(1_000))


def test_a_sender_has_a_bounded_number_of_messages_in_progress() -> None:
    joiner = _wire.Reassembler(max_message=1_000_000, max_buffered=1_000_000, max_partials=3)
    for ident in range(10):
        joiner.add("p", _fragments("p", ident, 1_000)[0], now=0.0)
    assert len(joiner) == 3
    assert joiner.dropped == 7


def test_incomplete_messages_time_out() -> None:
    joiner = _wire.Reassembler(max_message=1_000_000, max_buffered=1_000_000, timeout=30.0)
    parts = _fragments("p", 1, 1_000)
    joiner.add("p", parts[0], now=0.0)
    joiner.expire(now=31.0)
    assert len(joiner) == 0
    assert joiner.buffered == 0
    assert joiner.dropped == 1


def test_oversized_and_inconsistent_fragments_are_refused() -> None:
    joiner = _wire.Reassembler(max_message=1_000, max_buffered=1_000_000)
    with pytest.raises(DecodeError, match="limit"):
        joiner.add("p", _fragments("p", 1, 5_000)[0], now=0.0)
    a = _fragments("p", 2, 1_000)
    b = _fragments("p", 2, 900)  # same id, another size
    joiner.add("p", a[0], now=0.0)
    with pytest.raises(DecodeError, match="disagree"):
        joiner.add("p", b[1], now=0.0)
    assert len(joiner) == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02",
        b"\x01\x03\x01a",  # version 1 (the old bridge)
        b"\x02\x09\x01a",  # unknown kind
        b"\x02\x03\x00",  # empty sender
        b"\x02\x03\x09ab",  # truncated sender
        b"\x02\x03\x02\xff\xfe",  # sender not UTF-8
    ],
)
def test_malformed_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(DecodeError):
        _wire.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_fragments_are_refused_or_held_within_bounds(data: bytes) -> None:
    joiner = _wire.Reassembler(max_message=1_000, max_buffered=2_000)
    try:
        result = joiner.add("p", data, now=0.0)
    except DecodeError:
        assert joiner.buffered == 0
        return
    assert result is None  # one fragment never completes a message of two or more
    assert joiner.buffered <= 2_000


def test_sync1_bodies_round_trip() -> None:
    digest = bytes(range(16))
    body = _wire.encode_sync1(_wire.HELLO, digest, b"\x01\x05\x03")
    assert _wire.decode_sync1(body) == _wire.Sync1(
        _wire.HELLO | _wire.HAS_DIGEST, digest, b"\x01\x05\x03"
    )
    assert _wire.decode_sync1(_wire.encode_sync1(_wire.REPLY, None, b"\x00")) == _wire.Sync1(
        _wire.REPLY, None, b"\x00"
    )
    for bad in (b"", b"\x80\x00", b"\x04\x01\x02"):
        with pytest.raises(DecodeError):
            _wire.decode_sync1(bad)


# -- y-protocols ----------------------------------------------------------------------------


def test_sync_messages_round_trip_and_are_checked() -> None:
    message = _protocol.sync_message(_protocol.STEP1, b"\x00")
    assert _protocol.parse_sync_message(message) == (_protocol.STEP1, b"\x00")
    update = _protocol.sync_message(_protocol.UPDATE, b"\x00\x00")
    assert _protocol.parse_sync_message(update) == (_protocol.UPDATE, b"\x00\x00")
    for bad in (
        b"",
        b"\x01\x00\x00",  # awareness, not sync
        b"\x00\x05\x01\x00",  # unknown sync type
        b"\x00\x00\x05\x00",  # length past the end
        b"\x00\x00\x01\x00\x00",  # trailing byte
        _protocol.sync_message(_protocol.STEP1, b"\x01\x05"),  # truncated state vector
        _protocol.sync_message(_protocol.UPDATE, b"\x00\x00\x00"),  # not one update
    ):
        with pytest.raises(DecodeError):
            _protocol.parse_sync_message(bad)


def test_awareness_updates_round_trip_with_utf8_lengths() -> None:
    entries = [
        _protocol.AwarenessEntry(1, 5, '{"user":"zoë","cursor":[1,2]}'),
        _protocol.AwarenessEntry(2**40, 0, "null"),
    ]
    update = _protocol.encode_awareness(entries)
    assert _protocol.decode_awareness(update) == entries
    assert entries[1].removed
    assert not entries[0].removed
    assert _protocol.parse_awareness_message(_protocol.awareness_message(update)) == update


@pytest.mark.parametrize(
    "update",
    [
        b"",
        b"\x01\x01",  # truncated entry
        b"\x01\x01\x01\x03{}",  # state length past the end
        b"\x01\x01\x01\x02{x",  # not JSON
        b"\x01\x01\x01\x02\xff\xfe",  # not UTF-8
        b"\x00\x00",  # trailing byte
    ],
)
def test_malformed_awareness_updates_are_refused(update: bytes) -> None:
    with pytest.raises(DecodeError):
        _protocol.decode_awareness(update)
