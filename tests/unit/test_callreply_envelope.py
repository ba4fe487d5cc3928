"""The callreply envelope: exact round trips and strict, bounded decoding of garbage."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from podshare.callreply._envelope import (
    MAX_ERROR_MESSAGE,
    MAX_NAME,
    Reply,
    Request,
    Status,
    decode,
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


@given(requests)
def test_request_round_trips(request_: Request) -> None:
    assert decode(encode_request(request_), max_size=LIMIT) == request_


@given(replies)
def test_reply_round_trips(reply: Reply) -> None:
    assert decode(encode_reply(reply), max_size=LIMIT) == reply


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
}


@pytest.mark.parametrize("data", BAD.values(), ids=BAD.keys())
def test_garbage_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, max_size=LIMIT)


def _assert_says_what_its_msgpack_says(data: bytes, decoded: Request | Reply) -> None:
    """``decoded`` is the envelope ``data`` holds, read independently by msgpack itself,
    and it re-encodes to the same msgpack value (not always the same bytes: msgpack has
    several encodings of one integer)."""
    items = msgpack.unpackb(data, raw=False)
    if isinstance(decoded, Request):
        assert items[:2] == [1, 0]
        assert tuple(decoded) == tuple(items[2:])
        again = encode_request(decoded)
    else:
        assert items[:2] == [1, 1]
        assert tuple(decoded) == (items[2], Status(items[3]), *items[4:])
        again = encode_reply(decoded)
    assert msgpack.unpackb(again, raw=False) == items
    assert decode(again, max_size=LIMIT) == decoded


@given(st.binary(max_size=300))
@example(encode_request(Request(7, "pod-1", "user:42", "push", b"hi", 5000)))
@example(encode_reply(Reply(7, Status.ERROR, b"", "ValueError", "bad")))
# The call id as a uint64 and the status as a uint8: other bytes, the same envelope.
@example(b"\x97\x01\x01\xcf" + (7).to_bytes(8, "big") + b"\xcc\x00\xc4\x01x\xa0\xa0")
def test_random_bytes_decode_to_what_they_say_or_raise_protocol_errors(data: bytes) -> None:
    try:
        decoded = decode(data, max_size=256)
    except ProtocolError:
        return
    _assert_says_what_its_msgpack_says(data, decoded)


@given(requests, st.data())
def test_corrupted_requests_decode_to_what_they_say_or_raise_protocol_errors(
    request_: Request, data: st.DataObject
) -> None:
    raw = bytearray(encode_request(request_))
    index = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[index] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = decode(bytes(raw), max_size=LIMIT)
    except ProtocolError:
        return
    _assert_says_what_its_msgpack_says(bytes(raw), decoded)
