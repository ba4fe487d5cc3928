"""The callreply envelope: exact round trips and strict, bounded decoding of garbage.

The fuzz tests check both outcomes: input that does not decode raises a ProtocolError and
nothing else; input that decodes is exactly what msgpack holds (same items, same types),
and encoding the result gives it back.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podshare._limits import MAX_NODE_ID_LENGTH
from podshare.callreply._envelope import (
    MAX_ERROR_MESSAGE,
    MAX_NAME,
    Cancel,
    Envelope,
    Reply,
    Request,
    Status,
    decode,
    encode,
    encode_cancel,
    encode_reply,
    encode_request,
)
from podshare.exceptions import DecodeError, FrameTooLarge, ProtocolError

LIMIT = 1 << 16

names = st.text(min_size=1, max_size=40)
node_ids = names.filter(lambda s: "#" not in s)
call_ids = st.integers(min_value=0, max_value=2**64 - 1)
requests = st.builds(
    Request,
    call_id=call_ids,
    reply_to=node_ids,
    target=names,
    method=names,
    payload=st.binary(max_size=200),
    budget_ms=st.integers(min_value=0, max_value=86_400_000),
)
replies = st.builds(
    Reply,
    call_id=call_ids,
    status=st.sampled_from(Status),
    payload=st.binary(max_size=200),
    error_type=st.text(max_size=40),
    error_message=st.text(max_size=200),
)
cancels = st.builds(Cancel, call_id=call_ids, reply_to=node_ids)
envelopes = st.one_of(requests, replies, cancels)


@given(requests)
def test_request_round_trips(request_: Request) -> None:
    assert decode(encode_request(request_), max_size=LIMIT) == request_


@given(replies)
def test_reply_round_trips(reply: Reply) -> None:
    assert decode(encode_reply(reply), max_size=LIMIT) == reply


@given(cancels)
def test_cancel_round_trips(cancel: Cancel) -> None:
    decoded = decode(encode_cancel(cancel), max_size=LIMIT)
    assert type(decoded) is Cancel
    assert decoded == cancel


@given(envelopes)
def test_encode_picks_the_kind(envelope: Envelope) -> None:
    decoded = decode(encode(envelope), max_size=LIMIT)
    assert type(decoded) is type(envelope)
    assert decoded == envelope


def test_error_text_is_truncated_on_encode() -> None:
    reply = Reply(1, Status.ERROR, b"", "E" * 5000, "m" * 5000)
    decoded = decode(encode_reply(reply), max_size=LIMIT)
    assert isinstance(decoded, Reply)
    assert decoded.error_type == "E" * MAX_ERROR_MESSAGE
    assert decoded.error_message == "m" * MAX_ERROR_MESSAGE


def test_oversized_input_is_refused_before_decoding() -> None:
    data = encode_request(Request(1, "a", "t", "m", b"x" * 100, 10))
    with pytest.raises(FrameTooLarge):
        decode(data, max_size=len(data) - 1)
    assert isinstance(decode(data, max_size=len(data)), Request)


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


GOOD_REQUEST = [1, 0, 5, "caller", "target", "method", b"payload", 1000]
GOOD_REPLY = [1, 1, 5, 0, b"payload", "", ""]
GOOD_CANCEL = [1, 2, 5, "caller"]


def _with(base: list[object], index: int, value: object) -> bytes:
    changed = list(base)
    changed[index] = value
    return _pack(changed)


BAD = {
    "empty": b"",
    "invalid byte": b"\xc1",
    "truncated": _pack(GOOD_REQUEST)[:-3],
    "trailing data": _pack(GOOD_REQUEST) + b"\x00",
    "not an array": _pack({"v": 1}),
    "too short": _pack([1]),
    "unknown version": _with(GOOD_REQUEST, 0, 2),
    "version as bool": _with(GOOD_REQUEST, 0, True),
    "unknown kind": _with(GOOD_REQUEST, 1, 7),
    "kind as float": _with(GOOD_REQUEST, 1, 0.0),
    "request too long": _pack([*GOOD_REQUEST, 1]),
    "reply too short": _pack(GOOD_REPLY[:-1]),
    "negative call id": _with(GOOD_REQUEST, 2, -1),
    "bool call id": _with(GOOD_REQUEST, 2, False),
    "string call id": _with(GOOD_REQUEST, 2, "5"),
    "empty reply_to": _with(GOOD_REQUEST, 3, ""),
    "reply_to with #": _with(GOOD_REQUEST, 3, "a#b"),
    "reply_to as bytes": _with(GOOD_REQUEST, 3, b"caller"),
    "long target": _with(GOOD_REQUEST, 4, "t" * (MAX_NAME + 1)),
    "method as int": _with(GOOD_REQUEST, 5, 3),
    "payload as str": _with(GOOD_REQUEST, 6, "payload"),
    "negative budget": _with(GOOD_REQUEST, 7, -5),
    "huge budget": _with(GOOD_REQUEST, 7, 10**12),
    "unknown status": _with(GOOD_REPLY, 3, 99),
    "status as str": _with(GOOD_REPLY, 3, "ok"),
    "error type as bytes": _with(GOOD_REPLY, 5, b"E"),
    "map inside": _with(GOOD_REPLY, 4, {"a": 1}),
    "ext type": _pack(msgpack.ExtType(1, b"xx")),
    "nested deep array": _pack([[[[[[[[[[1]]]]]]]]]]),
    "huge declared str": b"\x91\xdb\xff\xff\xff\xff",
    "huge declared array": b"\xdd\xff\xff\xff\xff",
    "cancel too short": _pack(GOOD_CANCEL[:-1]),
    "cancel too long": _pack([*GOOD_CANCEL, "x"]),
    "cancel negative call id": _with(GOOD_CANCEL, 2, -1),
    "cancel float call id": _with(GOOD_CANCEL, 2, 5.0),
    "cancel bool call id": _with(GOOD_CANCEL, 2, True),
    "cancel empty reply_to": _with(GOOD_CANCEL, 3, ""),
    "cancel reply_to with #": _with(GOOD_CANCEL, 3, "a#b"),
    "cancel reply_to as bytes": _with(GOOD_CANCEL, 3, b"caller"),
    "cancel long reply_to": _with(GOOD_CANCEL, 3, "n" * (MAX_NODE_ID_LENGTH + 1)),
    "request long reply_to": _with(GOOD_REQUEST, 3, "n" * (MAX_NODE_ID_LENGTH + 1)),
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_garbage_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, max_size=LIMIT)


def _items(envelope: Envelope) -> list[tuple[type, object]]:
    """What msgpack must hold for ``decode`` to have returned ``envelope``: each item's
    type and value (bools are not ints here)."""
    if isinstance(envelope, Request):
        items: list[object] = [1, 0, *envelope]
    elif isinstance(envelope, Reply):
        items = [1, 1, envelope.call_id, int(envelope.status), *envelope[2:]]
    else:
        items = [1, 2, *envelope]
    return [(type(item), item) for item in items]


def _assert_decodes_exactly(data: bytes, max_size: int) -> Envelope | None:
    """Decode ``data``; if that succeeds, check the result against msgpack and the
    round trip. Returns the envelope, or None when decoding refused the input."""
    try:
        decoded = decode(data, max_size=max_size)
    except ProtocolError:
        return None
    raw = msgpack.unpackb(data, raw=False)
    assert [(type(item), item) for item in raw] == _items(decoded)
    assert decode(encode(decoded), max_size=LIMIT) == decoded
    return decoded


@given(st.binary(max_size=300))
def test_random_bytes_raise_protocol_errors_or_decode_exactly(data: bytes) -> None:
    _assert_decodes_exactly(data, 256)


# Items of every msgpack type, to put into valid envelopes: most mutations are refused,
# some still decode (a payload replaced by other bytes), and both outcomes are checked.
_items_strategy = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.text(alphabet="ab#", min_size=1, max_size=4),
    st.binary(max_size=8),
    st.sampled_from([0, 1, 2, 5, "caller", "m", ""]),
)


@given(envelopes, st.data())
def test_mutated_envelopes_raise_protocol_errors_or_decode_exactly(
    envelope: Envelope, data: st.DataObject
) -> None:
    items: list[object] = msgpack.unpackb(encode(envelope), raw=False)
    for _ in range(data.draw(st.integers(min_value=0, max_value=3), label="mutations")):
        operation = data.draw(st.sampled_from(["replace", "drop", "append"]))
        if operation == "append" or not items:
            items.append(data.draw(_items_strategy))
        else:
            index = data.draw(st.integers(min_value=0, max_value=len(items) - 1))
            if operation == "drop":
                del items[index]
            else:
                items[index] = data.draw(_items_strategy)
    _assert_decodes_exactly(_pack(items), LIMIT)


def test_the_shaped_fuzzer_reaches_both_outcomes() -> None:
    # A check on the fuzz test itself: good envelopes of every kind decode through it.
    for good in (GOOD_REQUEST, GOOD_REPLY, GOOD_CANCEL):
        assert _assert_decodes_exactly(_pack(good), LIMIT) is not None
    assert _assert_decodes_exactly(_pack([1, 2, 5]), LIMIT) is None


@given(envelopes, st.data())
def test_corrupted_envelopes_raise_protocol_errors_or_decode_exactly(
    envelope: Envelope, data: st.DataObject
) -> None:
    raw = bytearray(encode(envelope))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    _assert_decodes_exactly(bytes(raw), LIMIT)
