"""The bridge's messages between pods: an envelope naming the sender, and fragments.

Pods in a room talk over one broadcast topic and one inbox topic each (see
`podshare.yjs._names`). Every message is an envelope:

```text
version:u8 (2)  kind:u8  sender_len:u8  sender (UTF-8, 1..255 bytes)  body
```

and ``kind`` says what the body is:

``SYNC1``
    ``flags:u8`` [``digest:16`` when ``HAS_DIGEST``] ``state_vector``: "this is what I
    have". ``HELLO``: a newcomer asking; every peer answers, even with nothing, so the
    newcomer can tell it heard from them. ``REPLY``: an answer's own question, never
    answered with another ``SYNC1``. The digest is a hash of the sender's delete set:
    deletes change no state vector, so two pods with equal state vectors compare
    digests to find out whether they differ.
``SYNC2``
    a Yjs v1 update: what the asker lacked, sent to its inbox.
``UPDATE``
    a Yjs v1 update: a local edit, broadcast once (never re-broadcast by receivers).
``FRAGMENT``
    ``id`` ``index`` ``count`` ``total`` (unsigned LEB128 varints) ``kind:u8`` ``chunk``:
    one piece of a message whose body is larger than the transport's
    ``max_message_size``. `Reassembler` joins them, within a memory budget.

Every decoder checks lengths before it slices and raises
[`DecodeError`][podshare.exceptions.DecodeError].

Example:
    >>> head = header("pod-a")
    >>> [m] = encode(head, UPDATE, b"\\x00\\x00", limit=1024, message_id=1)
    >>> decode(m)
    Message(kind=3, sender='pod-a', body=b'\\x00\\x00')
    >>> parts = encode(head, UPDATE, bytes(3000), limit=1024, message_id=2)
    >>> len(parts), all(len(p) <= 1024 for p in parts)
    (4, True)
    >>> joiner = Reassembler(max_message=1 << 20, max_buffered=1 << 20)
    >>> [joiner.add("pod-a", decode(p).body, now=0.0) for p in parts][-1] == (UPDATE, bytes(3000))
    True
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from podshare.exceptions import ConfigurationError, DecodeError

__all__ = [
    "DIGEST_SIZE",
    "FRAGMENT",
    "HAS_DIGEST",
    "HELLO",
    "REPLY",
    "SYNC1",
    "SYNC2",
    "UPDATE",
    "VERSION",
    "Message",
    "Reassembler",
    "Sync1",
    "decode",
    "decode_sync1",
    "encode",
    "encode_sync1",
    "header",
]

VERSION = 2
SYNC1, SYNC2, UPDATE, FRAGMENT = 1, 2, 3, 4
_WHOLE_KINDS = (SYNC1, SYNC2, UPDATE)
# SYNC1 flags.
HELLO, REPLY, HAS_DIGEST = 1, 2, 4
DIGEST_SIZE = 16
# A fragment's own header: four varints of at most 10 bytes each, and the inner kind.
_FRAGMENT_HEADER = 4 * 10 + 1
# The smallest chunk worth sending; a limit leaving less is a configuration error.
_MIN_CHUNK = 64


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded envelope."""

    kind: int
    sender: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Sync1:
    """A decoded ``SYNC1`` body."""

    flags: int
    digest: bytes | None
    state_vector: bytes


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
            raise DecodeError("a truncated or overlong varint in a Yjs bridge message")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def header(sender: str) -> bytes:
    """The envelope header for messages from ``sender`` (everything before the body).

    The kind byte is a placeholder that `encode` overwrites.
    """
    raw = sender.encode()
    if not 1 <= len(raw) <= 255:
        raise ConfigurationError("a node id must be 1 to 255 bytes of UTF-8")
    return bytes([VERSION, 0, len(raw)]) + raw


def encode(head: bytes, kind: int, body: bytes, *, limit: int, message_id: int) -> list[bytes]:
    """The messages carrying ``body``: one, or fragments when it exceeds ``limit`` bytes.

    ``message_id`` names the fragments of this message (unique per sender for as long
    as fragments may be in flight; a counter does).
    """
    whole = bytes([head[0], kind]) + head[2:] + body
    if len(whole) <= limit:
        return [whole]
    chunk = limit - len(head) - _FRAGMENT_HEADER
    if chunk < _MIN_CHUNK:
        raise ConfigurationError(
            f"the transport's max_message_size ({limit}) leaves no room for fragments"
        )
    count = -(-len(body) // chunk)
    prefix = bytes([head[0], FRAGMENT]) + head[2:]
    ident = _uint(message_id)
    total = _uint(len(body))
    return [
        prefix
        + ident
        + _uint(i)
        + _uint(count)
        + total
        + bytes([kind])
        + body[i * chunk : (i + 1) * chunk]
        for i in range(count)
    ]


def decode(data: bytes) -> Message:
    """Decode an envelope (the body is not looked into)."""
    if len(data) < 4 or data[0] != VERSION:
        raise DecodeError("not a podshare Yjs bridge message (or an unknown version)")
    kind = data[1]
    if kind not in (SYNC1, SYNC2, UPDATE, FRAGMENT):
        raise DecodeError(f"a Yjs bridge message of unknown kind {kind}")
    end = 3 + data[2]
    if data[2] == 0 or end > len(data):
        raise DecodeError("a truncated Yjs bridge envelope")
    try:
        sender = data[3:end].decode()
    except UnicodeDecodeError as exc:
        raise DecodeError("a Yjs bridge envelope whose sender is not UTF-8") from exc
    return Message(kind, sender, data[end:])


def encode_sync1(flags: int, digest: bytes | None, state_vector: bytes) -> bytes:
    """A ``SYNC1`` body."""
    if digest is None:
        return bytes([flags & ~HAS_DIGEST]) + state_vector
    return bytes([flags | HAS_DIGEST]) + digest + state_vector


def decode_sync1(body: bytes) -> Sync1:
    """Decode a ``SYNC1`` body (the state vector is checked by its user)."""
    if not body:
        raise DecodeError("an empty SYNC1 message")
    flags = body[0]
    if flags & ~(HELLO | REPLY | HAS_DIGEST):
        raise DecodeError(f"a SYNC1 message with unknown flags {flags:#x}")
    if flags & HAS_DIGEST:
        if len(body) < 1 + DIGEST_SIZE:
            raise DecodeError("a truncated SYNC1 digest")
        return Sync1(flags, body[1 : 1 + DIGEST_SIZE], body[1 + DIGEST_SIZE :])
    return Sync1(flags, None, body[1:])


@dataclass(slots=True)
class _Partial:
    kind: int
    count: int
    total: int
    started: float
    size: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)


class Reassembler:
    """Joins fragments into messages, holding at most ``max_buffered`` bytes of them.

    A peer cannot make it buffer more: a message may declare at most ``max_message``
    bytes, a sender may have at most ``max_partials`` messages in progress, a message
    not complete within ``timeout`` seconds is dropped, and when the budget is full the
    oldest messages in progress are dropped first. Every drop is counted in
    `dropped`; the bridge's state-vector resync repairs what was lost.
    """

    __slots__ = (
        "_max_buffered",
        "_max_message",
        "_max_partials",
        "_partials",
        "_per_sender",
        "_timeout",
        "buffered",
        "dropped",
    )

    def __init__(
        self,
        *,
        max_message: int,
        max_buffered: int,
        max_partials: int = 4,
        timeout: float = 30.0,
    ) -> None:
        self._max_message = max_message
        self._max_buffered = max_buffered
        self._max_partials = max_partials
        self._timeout = timeout
        self._partials: OrderedDict[tuple[str, int], _Partial] = OrderedDict()
        self._per_sender: dict[str, int] = {}
        #: Bytes of fragments held.
        self.buffered = 0
        #: Messages in progress given up: evicted, timed out or inconsistent.
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._partials)

    def _drop(self, key: tuple[str, int]) -> None:
        partial = self._partials.pop(key)
        self.buffered -= partial.size
        self.dropped += 1
        left = self._per_sender[key[0]] - 1
        if left:
            self._per_sender[key[0]] = left
        else:
            del self._per_sender[key[0]]

    def expire(self, now: float) -> None:
        """Drop the messages in progress for longer than ``timeout``."""
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if now - partial.started <= self._timeout:
                return
            self._drop(key)

    def add(self, sender: str, body: bytes, now: float) -> tuple[int, bytes] | None:
        """Take one ``FRAGMENT`` body; return ``(kind, body)`` once its message is whole.

        Raises:
            DecodeError: a malformed fragment, or one that contradicts the earlier
                fragments of its message (which is then dropped).
        """
        self.expire(now)
        ident, pos = _read_uint(body, 0)
        index, pos = _read_uint(body, pos)
        count, pos = _read_uint(body, pos)
        total, pos = _read_uint(body, pos)
        if pos >= len(body):
            raise DecodeError("a truncated Yjs bridge fragment")
        kind = body[pos]
        chunk = body[pos + 1 :]
        if kind not in _WHOLE_KINDS or not 2 <= count <= total or index >= count or not chunk:
            raise DecodeError("a Yjs bridge fragment with an impossible header")
        if total > self._max_message:
            raise DecodeError(
                f"a fragmented message of {total} bytes (the limit is {self._max_message})"
            )
        key = (sender, ident)
        partial = self._partials.get(key)
        if partial is None:
            if self._per_sender.get(sender, 0) >= self._max_partials:
                oldest = next(k for k in self._partials if k[0] == sender)
                self._drop(oldest)
            partial = self._partials[key] = _Partial(kind, count, total, now)
            self._per_sender[sender] = self._per_sender.get(sender, 0) + 1
        elif (partial.kind, partial.count, partial.total) != (kind, count, total):
            self._drop(key)
            raise DecodeError("fragments of one message disagree on its size or kind")
        if index in partial.chunks:
            return None  # a duplicate
        if partial.size + len(chunk) > total:
            self._drop(key)
            raise DecodeError("fragments longer than their message")
        while self.buffered + len(chunk) > self._max_buffered and self._partials:
            oldest = next(iter(self._partials))
            self._drop(oldest)
            if oldest == key:
                return None
        if self.buffered + len(chunk) > self._max_buffered:
            return None  # a single chunk above the budget: nothing to hold it in
        partial.chunks[index] = chunk
        partial.size += len(chunk)
        self.buffered += len(chunk)
        if len(partial.chunks) < count:
            return None
        whole = b"".join(partial.chunks[i] for i in range(count))
        self.dropped -= 1  # _drop counts a loss; this one completed
        self._drop(key)
        if len(whole) != total:
            self.dropped += 1
            raise DecodeError("fragments shorter than their message")
        return kind, whole
