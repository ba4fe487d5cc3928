"""The y-protocols messages editors speak: sync (step 1, step 2, update) and awareness.

What y-websocket clients and pycrdt's ``Provider`` send, in lib0's encoding:

```text
sync       0  type:varint (0 step 1, 1 step 2, 2 update)  payload:varbytes
awareness  1  update:varbytes
```

An awareness update is ``count:varint`` then, per client, ``client:varint``
``clock:varint`` ``state:varstring`` (JSON; ``null`` removes the client). Lengths of
strings count UTF-8 bytes, as lib0 writes them.

Decoders check every length before slicing and raise
[`DecodeError`][podshare.exceptions.DecodeError]; payloads are checked too (state vectors and
v1 updates, with `podshare.crdt._yupdate`).

Example:
    >>> entries = [AwarenessEntry(7, 3, '{"user":"ada"}')]
    >>> message = awareness_message(encode_awareness(entries))
    >>> decode_awareness(parse_awareness_message(message)) == entries
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from podshare.crdt import _yupdate
from podshare.exceptions import DecodeError

__all__ = [
    "AWARENESS",
    "MAX_STATE_SIZE",
    "STEP1",
    "STEP2",
    "SYNC",
    "UPDATE",
    "AwarenessEntry",
    "awareness_message",
    "check_state_vector",
    "check_update",
    "decode_awareness",
    "encode_awareness",
    "parse_awareness_message",
    "parse_sync_message",
    "sync_message",
]

SYNC, AWARENESS = 0, 1
STEP1, STEP2, UPDATE = 0, 1, 2
#: The longest awareness state (JSON) carried between pods, in bytes.
MAX_STATE_SIZE = 64 * 1024
_EMPTY_UPDATE = b"\x00\x00"


def _uint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_uint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("a truncated or overlong varint in a Yjs message")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _read_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise DecodeError("a truncated Yjs message")
    return data[pos:end], end


def check_update(update: bytes) -> None:
    """DecodeError unless ``update`` is one well-formed Yjs v1 update."""
    try:
        _yupdate.check_update(update)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def check_state_vector(state_vector: bytes) -> dict[int, int]:
    """Decode a state vector (``{client: clock}``); DecodeError when malformed."""
    try:
        return _yupdate.check_state_vector(state_vector)
    except ValueError as exc:
        raise DecodeError(f"not a Yjs state vector: {exc}") from exc


def sync_message(kind: int, payload: bytes) -> bytes:
    """A y-protocols sync message (``kind`` is STEP1, STEP2 or UPDATE)."""
    return bytes([SYNC, kind]) + _uint(len(payload)) + payload


def parse_sync_message(message: bytes) -> tuple[int, bytes]:
    """``(kind, payload)`` of a sync message, its payload checked.

    Raises:
        DecodeError: not a sync message, trailing bytes, or a payload that is not a
            state vector (step 1) or a v1 update (step 2, update).
    """
    if len(message) < 3 or message[0] != SYNC or message[1] not in (STEP1, STEP2, UPDATE):
        raise DecodeError("not a Yjs sync message")
    payload, end = _read_bytes(message, 2)
    if end != len(message):
        raise DecodeError("a Yjs sync message whose length does not match")
    if message[1] == STEP1:
        check_state_vector(payload)
    elif payload != _EMPTY_UPDATE:
        check_update(payload)
    return message[1], payload


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state: its id, its clock and its state as JSON text.

    ``state`` is ``"null"`` when the client is gone.
    """

    client: int
    clock: int
    state: str

    @property
    def removed(self) -> bool:
        """True for a removal (the state ``null``)."""
        return self.state == "null"


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """An awareness update holding ``entries``."""
    parts = [_uint(len(entries))]
    for entry in entries:
        raw = entry.state.encode()
        parts.append(_uint(entry.client) + _uint(entry.clock) + _uint(len(raw)) + raw)
    return b"".join(parts)


def decode_awareness(update: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness update.

    Raises:
        DecodeError: malformed, trailing bytes, a client id or clock beyond 53 bits, a
            state over `MAX_STATE_SIZE` bytes or not JSON.
    """
    count, pos = _read_uint(update, 0)
    entries: list[AwarenessEntry] = []
    for _ in range(count):
        client, pos = _read_uint(update, pos)
        clock, pos = _read_uint(update, pos)
        raw, pos = _read_bytes(update, pos)
        if client >= 2**53 or clock >= 2**53:
            raise DecodeError("an awareness client id or clock beyond 53 bits")
        if len(raw) > MAX_STATE_SIZE:
            raise DecodeError(f"an awareness state over {MAX_STATE_SIZE} bytes")
        try:
            state = raw.decode()
            json.loads(state)
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError
            raise DecodeError(f"an awareness state that is not JSON: {exc}") from exc
        entries.append(AwarenessEntry(client, clock, state))
    if pos != len(update):
        raise DecodeError("bytes after the end of an awareness update")
    return entries


def awareness_message(update: bytes) -> bytes:
    """A y-protocols awareness message carrying ``update``."""
    return bytes([AWARENESS]) + _uint(len(update)) + update


def parse_awareness_message(message: bytes) -> bytes:
    """The awareness update inside an awareness message (DecodeError when malformed)."""
    if len(message) < 2 or message[0] != AWARENESS:
        raise DecodeError("not a Yjs awareness message")
    update, end = _read_bytes(message, 1)
    if end != len(message):
        raise DecodeError("a Yjs awareness message whose length does not match")
    return update
