"""The callreply wire format: requests, replies and cancels as small, strict msgpack arrays.

Three kinds of envelope travel between endpoints, each a msgpack array whose first two
items are the format version and the kind:

```text
request: [1, 0, call_id, reply_to, target, method, payload, budget_ms]
reply:   [1, 1, call_id, status, payload, error_type, error_message]
cancel:  [1, 2, call_id, reply_to]
```

``call_id`` is an unsigned 64-bit integer chosen by the caller; ``reply_to`` is the
caller's node id (the reply goes to its inbox); ``budget_ms`` is the caller's remaining
time (its timeout or its enclosing deadline, whichever is nearer), so the owner can stop
a handler whose caller has given up. A cancel tells the owner that the caller of
``call_id`` gave up; it names the same ``reply_to`` as the request, and the owner only
cancels a call whose id *and* ``reply_to`` both match. Bytes from the network are
untrusted: `decode()` caps the input size before it allocates anything,
caps every string and byte field inside the msgpack decoder, checks every type exactly,
and raises [`DecodeError`][podshare.DecodeError] (or
[`FrameTooLarge`][podshare.FrameTooLarge]) for anything else. It never raises another
exception type.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

import msgpack

from podshare._limits import MAX_KEY_LENGTH, MAX_NODE_ID_LENGTH
from podshare.exceptions import DecodeError, FrameTooLarge

__all__ = [
    "MAX_ERROR_MESSAGE",
    "MAX_NAME",
    "VERSION",
    "Cancel",
    "Envelope",
    "Reply",
    "Request",
    "Status",
    "decode",
    "encode",
    "encode_cancel",
    "encode_reply",
    "encode_request",
]

#: The envelope format version this module writes and accepts.
VERSION: Final = 1
#: The longest target or method name accepted (characters): a target is a route key.
MAX_NAME: Final = MAX_KEY_LENGTH
#: Error type names and messages are truncated to this many characters when encoded.
MAX_ERROR_MESSAGE: Final = 2048

_KIND_REQUEST: Final = 0
_KIND_REPLY: Final = 1
_KIND_CANCEL: Final = 2
_MAX_CALL_ID: Final = 2**64 - 1
# A budget beyond a day is a bug or an attack; a handler never needs one that long.
_MAX_BUDGET_MS: Final = 86_400_000
# Room for the envelope around the largest string or binary field.
_MAX_ARRAY: Final = 8


class Status(enum.IntEnum):
    """What a reply reports."""

    OK = 0
    """The handler returned; ``payload`` is its result."""
    ERROR = 1
    """The handler raised; ``error_type`` and ``error_message`` describe it."""
    BUSY = 2
    """The owner is at its concurrency limit; the handler did not run."""
    NO_TARGET = 3
    """The receiving node has no handler for the target (a stale route); nothing ran."""
    NO_METHOD = 4
    """The target is registered there but has no such method; nothing ran."""
    CLOSING = 5
    """The owner closed while the handler ran; the handler was cancelled."""


class Request(NamedTuple):
    """A call on its way to the target's owner (a named tuple: cheap to build)."""

    call_id: int
    reply_to: str
    target: str
    method: str
    payload: bytes
    budget_ms: int


class Reply(NamedTuple):
    """The answer to one `Request`, sent to the caller's inbox."""

    call_id: int
    status: Status
    payload: bytes = b""
    error_type: str = ""
    error_message: str = ""


class Cancel(NamedTuple):
    """The caller of ``call_id`` gave up (cancelled or timed out): stop its handler."""

    call_id: int
    reply_to: str


#: Any envelope `decode()` returns.
Envelope = Request | Reply | Cancel


# One packer for the module: packing runs in C without releasing the GIL, so reuse is
# safe, and it saves building a Packer per message.
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode_request(request: Request) -> bytes:
    """The wire form of ``request``.

    Example:
        >>> req = Request(7, "pod-1", "user:42", "push", b"hi", 5000)
        >>> decode(encode_request(req), max_size=100) == req
        True
    """
    call_id, reply_to, target, method, payload, budget_ms = request
    return _pack(  # type: ignore[no-any-return]
        [VERSION, _KIND_REQUEST, call_id, reply_to, target, method, payload, budget_ms]
    )


def encode_reply(reply: Reply) -> bytes:
    """The wire form of ``reply`` (error texts truncated to `MAX_ERROR_MESSAGE`).

    Example:
        >>> rep = Reply(7, Status.ERROR, error_type="ValueError", error_message="bad")
        >>> decode(encode_reply(rep), max_size=100) == rep
        True
    """
    call_id, status, payload, error_type, error_message = reply
    return _pack(  # type: ignore[no-any-return]
        [
            VERSION,
            _KIND_REPLY,
            call_id,
            int(status),
            payload,
            error_type[:MAX_ERROR_MESSAGE],
            error_message[:MAX_ERROR_MESSAGE],
        ]
    )


def encode_cancel(cancel: Cancel) -> bytes:
    """The wire form of ``cancel``.

    Example:
        >>> decode(encode_cancel(Cancel(7, "pod-1")), max_size=100)
        Cancel(call_id=7, reply_to='pod-1')
    """
    call_id, reply_to = cancel
    return _pack([VERSION, _KIND_CANCEL, call_id, reply_to])  # type: ignore[no-any-return]


def encode(envelope: Envelope) -> bytes:
    """The wire form of any envelope."""
    if isinstance(envelope, Request):
        return encode_request(envelope)
    if isinstance(envelope, Reply):
        return encode_reply(envelope)
    return encode_cancel(envelope)


def decode(data: bytes, *, max_size: int) -> Envelope:
    """Decode one envelope from untrusted ``data`` of at most ``max_size`` bytes.

    Raises:
        FrameTooLarge: ``data`` is longer than ``max_size``.
        DecodeError: anything else that is not a well-formed version-1 envelope.

    Example:
        >>> decode(b"\\xc1", max_size=100)
        Traceback (most recent call last):
        ...
        podshare.exceptions.DecodeError: not a callreply envelope: ...
    """
    if len(data) > max_size:
        raise FrameTooLarge(f"callreply envelope of {len(data)} bytes exceeds {max_size}")
    try:
        # Every length cap is enforced by the decoder before it allocates the field.
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max(MAX_NAME, MAX_ERROR_MESSAGE) * 4,
            max_bin_len=max_size,
            max_array_len=_MAX_ARRAY,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001  # msgpack raises ValueError, its own errors, TypeError...
        raise DecodeError(f"not a callreply envelope: {type(exc).__name__}: {exc}") from None
    if type(obj) is not list or len(obj) < 2:
        raise DecodeError("callreply envelope is not an array of at least two items")
    if obj[0] != VERSION or type(obj[0]) is not int:
        raise DecodeError(f"unknown callreply envelope version {obj[0]!r}")
    kind = obj[1]
    if kind == _KIND_REQUEST and type(kind) is int:
        return _decode_request(obj)
    if kind == _KIND_REPLY and type(kind) is int:
        return _decode_reply(obj)
    if kind == _KIND_CANCEL and type(kind) is int:
        return _decode_cancel(obj)
    raise DecodeError(f"unknown callreply envelope kind {kind!r}")


def _decode_request(obj: list[object]) -> Request:
    if len(obj) != 8:
        raise DecodeError(f"callreply request has {len(obj)} items, expected 8")
    _, _, call_id, reply_to, target, method, payload, budget_ms = obj
    return Request(
        _call_id(call_id),
        _node(reply_to),
        _name(target, "target"),
        _name(method, "method"),
        _bytes(payload),
        _budget(budget_ms),
    )


def _decode_reply(obj: list[object]) -> Reply:
    if len(obj) != 7:
        raise DecodeError(f"callreply reply has {len(obj)} items, expected 7")
    _, _, call_id, status, payload, error_type, error_message = obj
    if type(status) is not int:
        raise DecodeError("callreply reply status is not an integer")
    try:
        status_ = Status(status)
    except ValueError:
        raise DecodeError(f"unknown callreply reply status {status}") from None
    if type(error_type) is not str or type(error_message) is not str:
        raise DecodeError("callreply reply error fields are not strings")
    if len(error_type) > MAX_ERROR_MESSAGE or len(error_message) > MAX_ERROR_MESSAGE:
        raise DecodeError("callreply reply error text too long")
    return Reply(_call_id(call_id), status_, _bytes(payload), error_type, error_message)


def _decode_cancel(obj: list[object]) -> Cancel:
    if len(obj) != 4:
        raise DecodeError(f"callreply cancel has {len(obj)} items, expected 4")
    _, _, call_id, reply_to = obj
    return Cancel(_call_id(call_id), _node(reply_to))


def _call_id(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_CALL_ID:
        raise DecodeError("callreply call id is not an unsigned 64-bit integer")
    return value


def _name(value: object, what: str) -> str:
    if type(value) is not str or not value or len(value) > MAX_NAME:
        raise DecodeError(f"callreply {what} is not a non-empty string of at most {MAX_NAME}")
    return value


def _node(value: object) -> str:
    # The caller's node id names its inbox topic: the same rule as check_name's.
    if type(value) is not str or not value or len(value) > MAX_NODE_ID_LENGTH or "#" in value:
        raise DecodeError(
            f"callreply reply_to is not a node id (1 to {MAX_NODE_ID_LENGTH} characters, no '#')"
        )
    return value


def _bytes(value: object) -> bytes:
    if type(value) is not bytes:
        raise DecodeError("callreply payload is not binary")
    return value


def _budget(value: object) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_BUDGET_MS:
        raise DecodeError("callreply budget is not an integer number of milliseconds")
    return value
