"""The wire format: every message podshare's replicas and liveness exchange, each defined once.

Every message is one msgpack array ``[tag, sender, nonce, *fields]``, decoded straight
into the `msgspec.Struct` below that defines it (``array_like``, typed and bounded
field by field, so decoding untrusted bytes validates every type, range and length in C
and allocates nothing a peer's claim sizes). ``tag`` is ``VERSION << 8 | kind``: an
unknown version or kind is an unknown tag. ``sender`` is the node id, ``nonce`` the
sender's incarnation (a random 63-bit number drawn when the process's liveness stream
started), so a receiver tells a node's own echoes (same id, same nonce) from a second
live process that shares its id (same id, another nonce). Trailing fields a later minor
revision appends are ignored by older readers.

Store messages travel on ``ps/{name}`` (broadcast) and ``ps/{name}#{node}`` (a node's
inbox); liveness messages on ``pl/live`` and ``pl/live#{node}``:

======================  =========  ===========================================================
message                 topic      meaning
======================  =========  ===========================================================
`Writes`         broadcast  a batch of local writes
`Hello`          broadcast  a replica joined (or rejoins) and asks synced peers to answer
`HelloAck`       inbox      a peer's answer: synced?, keys, transfers it serves
`Leave`          broadcast  a replica of this store closed (proven with its hellos' token)
`SyncRequest`    inbox      one round of a digest exchange (or a full-transfer request)
`SyncReply`      inbox      the differing buckets, the responder's frontier vector
`SyncKeys`       inbox      a part of the responder's key summaries of final buckets
`SyncWant`       inbox      the requester asks for these keys' entries
`SyncData`       inbox      a part of an entry stream (answer or push), acknowledged
`SyncAck`        inbox      a part arrived; entries refused as deleted ride along
`Alive`          live       liveness: incarnation, refutation version, commitment
`Ping`           live inbox a liveness probe
`Ack`            live inbox the probe's answer
`Suspect`        live       a probe failed: the target refutes or is down after a while
`Bye`            live       a clean goodbye, proven with the token committed in Alive
`Members`        live inbox the member list handed to a newcomer
======================  =========  ===========================================================

An entry (`WireEntry`) is ``[key, time, counter, origin, flags, value,
epoch_time, epoch_counter, epoch_origin, owner_nonce, expires]``; ``flags`` is a bit set
of `TOMBSTONE`, `EPHEMERAL`, `MERGED` and `EXPIRING`. Trailing
``nil`` fields are left out when packing (`entry_list()`).

Example:
    >>> from podshare.crdt import Stamp
    >>> e = make_entry("flag", Stamp(1000, 0, "pod-a"), 0, b"true")
    >>> data = encode_raw(Writes("pod-a", 7, 1000, []), [entry_list(e)])
    >>> decode(data, max_size=1024).entries == [e]
    True
    >>> decode(b"\\xc1", max_size=1024)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    podshare.exceptions.DecodeError: malformed message: ...
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final, TypeAlias

import msgspec

from podshare._limits import MAX_KEY_LENGTH
from podshare.crdt.clock import MAX_COUNTER, MAX_ORIGIN_LENGTH, MAX_TIME, Stamp
from podshare.exceptions import DecodeError, FrameTooLarge

__all__ = [
    "ECHO_OFFSET",
    "EPHEMERAL",
    "EXPIRING",
    "MERGED",
    "TOMBSTONE",
    "VERSION",
    "Ack",
    "Alive",
    "Bye",
    "Hello",
    "HelloAck",
    "KeySummary",
    "Leave",
    "MemberInfo",
    "Members",
    "Message",
    "Ping",
    "Suspect",
    "SyncAck",
    "SyncData",
    "SyncKeys",
    "SyncReply",
    "SyncRequest",
    "SyncWant",
    "WireEntry",
    "Writes",
    "decode",
    "decode_unless_own",
    "echo_prefix",
    "encode",
    "encode_raw",
    "entry_list",
    "entry_size",
    "leave_commitment",
    "make_entry",
    "packed_size",
]
# (The TAG_* constants are public too: tests and tools build raw messages with them.)

#: The envelope version this module writes and the only one it reads.
VERSION: Final = 2
#: Entry flag: the entry is a delete (its ``value`` is ``None``).
TOMBSTONE: Final = 1
#: Entry flag: the entry lives only while its writer's incarnation (``owner_nonce``) does.
EPHEMERAL: Final = 2
#: Entry flag: a merger store's entry; it carries an epoch.
MERGED: Final = 4
#: Entry flag: the entry expires at ``expires`` (wall-clock ms) on every replica.
EXPIRING: Final = 8
_KNOWN_FLAGS: Final = TOMBSTONE | EPHEMERAL | MERGED | EXPIRING

#: Most buckets named in one sync round, and most keys in one summary or want part.
MAX_LIST: Final = 1 << 16
#: Bytes of one digest hash.
HASH_SIZE: Final = 8
#: Longest list of store beacons or members in one liveness message.
MAX_BEACONS: Final = 1024
_MAX_U63: Final = 2**63 - 1

Time = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME)]
Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
Node = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ORIGIN_LENGTH)]
EpochOrigin = Annotated[str, msgspec.Meta(max_length=MAX_ORIGIN_LENGTH)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
Flags = Annotated[int, msgspec.Meta(ge=0, le=_KNOWN_FLAGS)]
# Nonces and entry hashes are 63-bit (msgspec bounds ints to int64).
Nonce = Annotated[int, msgspec.Meta(ge=0, le=_MAX_U63)]
U63 = Annotated[int, msgspec.Meta(ge=0, le=_MAX_U63)]
Level = Annotated[int, msgspec.Meta(ge=0, le=3)]
Bucket = Annotated[int, msgspec.Meta(ge=0, lt=1 << 12)]
Token = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]


def _tag(kind: int) -> int:
    return VERSION << 8 | kind


TAG_WRITES: Final = _tag(1)
TAG_HELLO: Final = _tag(2)
TAG_HELLO_ACK: Final = _tag(3)
TAG_LEAVE: Final = _tag(4)
TAG_SYNC_REQUEST: Final = _tag(5)
TAG_SYNC_REPLY: Final = _tag(6)
TAG_SYNC_KEYS: Final = _tag(7)
TAG_SYNC_WANT: Final = _tag(8)
TAG_SYNC_DATA: Final = _tag(9)
TAG_SYNC_ACK: Final = _tag(10)
TAG_ALIVE: Final = _tag(17)
TAG_PING: Final = _tag(18)
TAG_ACK: Final = _tag(19)
TAG_SUSPECT: Final = _tag(20)
TAG_BYE: Final = _tag(21)
TAG_MEMBERS: Final = _tag(22)


class WireEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One key's state (or a write's delta) as it travels; build it with `make_entry()`.

    Attributes:
        key: the key.
        time, counter, origin: the write's stamp (a merger entry: the highest stamp
            merged into it); ``origin`` is the writer.
        flags: a bit set of `TOMBSTONE`, `EPHEMERAL`, `MERGED`,
            `EXPIRING`.
        value: the value codec's bytes; ``None`` exactly for a tombstone.
        epoch_time, epoch_counter, epoch_origin: a merger entry's epoch (present
            exactly when ``MERGED`` is set).
        owner_nonce: the writer's incarnation for an ephemeral entry.
        expires: wall-clock ms at which an ``EXPIRING`` entry turns into a delete.

    The consistency of flags and optional fields is checked by the replica when it
    applies an entry (one check per entry, in the same pass), not here.
    """

    key: Key
    time: Time
    counter: Counter
    origin: Node
    flags: Flags
    value: bytes | None = None
    epoch_time: Time | None = None
    epoch_counter: Counter | None = None
    epoch_origin: EpochOrigin | None = None
    owner_nonce: Nonce | None = None
    expires: Time | None = None

    @property
    def stamp(self) -> Stamp:
        """The entry's stamp."""
        return Stamp(self.time, self.counter, self.origin)

    @property
    def epoch(self) -> Stamp | None:
        """The merger entry's epoch, or ``None``."""
        if self.epoch_origin is None or self.epoch_time is None or self.epoch_counter is None:
            return None
        return Stamp(self.epoch_time, self.epoch_counter, self.epoch_origin)

    def consistent(self) -> bool:
        """Whether the optional fields match the flags (a peer may send anything)."""
        flags = self.flags
        if (self.value is None) != bool(flags & TOMBSTONE):
            return False
        merged = bool(flags & MERGED)
        if merged != (self.epoch_origin is not None):
            return False
        if merged and (self.epoch_time is None or self.epoch_counter is None):
            return False
        if not merged and (self.epoch_time is not None or self.epoch_counter is not None):
            return False
        if bool(flags & EPHEMERAL) != (self.owner_nonce is not None):
            return False
        if merged and flags & (EPHEMERAL | EXPIRING):
            return False
        return bool(flags & EXPIRING) == (self.expires is not None)


def make_entry(
    key: str,
    stamp: Stamp,
    flags: int,
    value: bytes | None,
    epoch: Stamp | None = None,
    *,
    owner_nonce: int | None = None,
    expires: int | None = None,
) -> WireEntry:
    """Build a `WireEntry` from stamps (the caller keeps it consistent)."""
    if epoch is None:
        return WireEntry(
            key, stamp[0], stamp[1], stamp[2], flags, value, None, None, None, owner_nonce, expires
        )
    return WireEntry(key, stamp[0], stamp[1], stamp[2], flags, value, epoch[0], epoch[1], epoch[2])


def entry_list(e: WireEntry) -> list[Any]:
    """The entry as it is packed: trailing ``nil`` fields left out."""
    if e.expires is not None:
        return [
            e.key, e.time, e.counter, e.origin, e.flags, e.value,
            None, None, None, e.owner_nonce, e.expires,
        ]  # fmt: skip
    if e.owner_nonce is not None:
        return [
            e.key, e.time, e.counter, e.origin, e.flags, e.value,
            None, None, None, e.owner_nonce,
        ]  # fmt: skip
    if e.epoch_origin is not None:
        return [
            e.key, e.time, e.counter, e.origin, e.flags, e.value,
            e.epoch_time, e.epoch_counter, e.epoch_origin,
        ]  # fmt: skip
    if e.value is None:
        return [e.key, e.time, e.counter, e.origin, e.flags]
    return [e.key, e.time, e.counter, e.origin, e.flags, e.value]


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode())


def entry_size(e: WireEntry) -> int:
    """An upper bound of the entry's packed size in bytes (cheap: nothing is packed)."""
    size = _utf8_len(e.key) + _utf8_len(e.origin) + 48
    if e.value is not None:
        size += len(e.value)
    if e.epoch_origin is not None:
        size += _utf8_len(e.epoch_origin)
    return size


class KeySummary(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What the responder holds for one key of a final bucket: its stamp and state hash."""

    key: Key
    time: Time
    counter: Counter
    origin: Node
    hash: Nonce


class MemberInfo(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One live incarnation in a `Members` list."""

    node: Node
    nonce: Nonce
    version: U63
    started_at: Time
    commitment: Token


class _Message(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What every message carries after its tag: the sender's node id and incarnation."""

    sender: Node
    nonce: Nonce


class _Head(msgspec.Struct, array_like=True, gc=False):
    """The first three fields of any message (read before the body is decoded)."""

    tag: int
    sender: Any = None
    nonce: Any = None


class Writes(_Message, tag=TAG_WRITES, frozen=True, gc=False):
    """A batch of writes, broadcast by their writer (``sent_at``: its wall clock)."""

    sent_at: Time
    entries: list[WireEntry]


class Hello(_Message, tag=TAG_HELLO, frozen=True, gc=False):
    """A replica announces itself; ``ask``: synced peers, answer with a `HelloAck`.

    ``commitment``: the hash of the token this replica's `Leave` will reveal.
    """

    sent_at: Time
    synced: bool
    ask: bool
    keys: U63
    commitment: Token | None = None


class HelloAck(_Message, tag=TAG_HELLO_ACK, frozen=True, gc=False):
    """A peer's answer to a hello (to the asker's inbox); ``commitment`` as in `Hello`."""

    sent_at: Time
    synced: bool
    keys: U63
    transfers: U63
    commitment: Token | None = None


class Leave(_Message, tag=TAG_LEAVE, frozen=True, gc=False):
    """A replica of this store closed: it serves no more syncs (liveness is separate).

    ``token`` hashes (`leave_commitment()`) to the commitment of its hellos.
    """

    token: Token | None = None


def leave_commitment(token: bytes) -> bytes:
    """The commitment a replica's hellos carry for the token its `Leave` reveals."""
    return hashlib.blake2b(token, digest_size=16, person=b"podshare-leave").digest()


class SyncRequest(_Message, tag=TAG_SYNC_REQUEST, frozen=True, gc=False):
    """One round of a digest exchange, to the responder's inbox.

    ``level`` 0 asks for everything (the requester holds nothing); levels 1-3 carry the
    requester's hashes of ``buckets`` (``None``: every bucket of that level; else in
    increasing order, each once), in order, ``HASH_SIZE`` bytes each.
    """

    sync_id: U63
    level: Level
    buckets: list[Bucket] | None
    hashes: bytes

    def __post_init__(self) -> None:
        n = (16**self.level if self.level else 0) if self.buckets is None else len(self.buckets)
        if self.buckets is not None and len(self.buckets) > MAX_LIST:
            raise ValueError("too many buckets")
        if len(self.hashes) != n * HASH_SIZE:
            raise ValueError(f"{len(self.hashes)} hash bytes for {n} buckets")
        if self.buckets is not None:
            if any(b >= 16**self.level for b in self.buckets):
                raise ValueError("a bucket beyond its level")
            # In increasing order, each once: a round never names a bucket twice.
            if any(a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
                raise ValueError("buckets not in increasing order")


#: SyncReply status: answered.
SYNC_OK: Final = 0
#: SyncReply status: not synced itself; ask another peer.
SYNC_REFUSED: Final = 1
#: SyncReply status: serving enough transfers already; ask another peer.
SYNC_BUSY: Final = 2
#: SyncReply status: this exchange is unknown (timed out or never started).
SYNC_UNKNOWN: Final = 3


class SyncReply(_Message, tag=TAG_SYNC_REPLY, frozen=True, gc=False):
    """The responder's answer to one `SyncRequest` round.

    ``differ``: buckets of ``level`` whose hashes differ and that the requester should
    descend into; ``final``: differing buckets the responder summarises key by key on
    its `SyncKeys` stream. ``vector`` (first reply only) is the responder's
    horizon: ``[origin, time]`` pairs (see `podshare.store.horizon`).
    """

    sync_id: U63
    status: Annotated[int, msgspec.Meta(ge=0, le=3)]
    level: Level
    differ: Annotated[list[Bucket], msgspec.Meta(max_length=MAX_LIST)]
    final: Annotated[list[Bucket], msgspec.Meta(max_length=MAX_LIST)]
    vector: Annotated[list[tuple[Node, Time]], msgspec.Meta(max_length=MAX_LIST)] | None = None


class SyncKeys(_Message, tag=TAG_SYNC_KEYS, frozen=True, gc=False):
    """Part ``part`` of the responder's key summaries of final buckets (``last``: the
    final part of the whole exchange's summaries)."""

    sync_id: U63
    part: U63
    last: bool
    items: Annotated[list[KeySummary], msgspec.Meta(max_length=MAX_LIST)]


class SyncWant(_Message, tag=TAG_SYNC_WANT, frozen=True, gc=False):
    """The requester wants these keys' entries (``last``: the final part of its list)."""

    sync_id: U63
    part: U63
    last: bool
    keys: Annotated[list[Key], msgspec.Meta(max_length=MAX_LIST)]


#: Stream: the responder's entries to the requester (SyncData).
STREAM_ANSWER: Final = 0
#: Stream: the requester's entries the responder lacked (SyncData).
STREAM_PUSH: Final = 1
#: Stream: the responder's key summaries (SyncKeys).
STREAM_KEYS: Final = 2
#: Stream: the keys the requester wants (SyncWant).
STREAM_WANT: Final = 3
_Stream = Annotated[int, msgspec.Meta(ge=0, le=3)]


class SyncData(_Message, tag=TAG_SYNC_DATA, frozen=True, gc=False):
    """Part ``part`` of an entry stream; the receiver acknowledges each part.

    ``last``: no part follows. ``vector``: in the first part of a full answer (the
    responder's frontier) or of a push (the requester's), else ``None``.
    """

    sync_id: U63
    stream: Annotated[int, msgspec.Meta(ge=0, le=1)]
    part: U63
    last: bool
    entries: list[WireEntry]
    vector: Annotated[list[tuple[Node, Time]], msgspec.Meta(max_length=MAX_LIST)] | None = None


class SyncAck(_Message, tag=TAG_SYNC_ACK, frozen=True, gc=False):
    """Part ``part`` of a stream arrived. ``drops``: entries of it refused as deleted
    here (``[key, time, counter, origin]``): the sender forgets its copy if it still
    holds exactly that stamp."""

    sync_id: U63
    stream: _Stream
    part: U63
    drops: Annotated[list[tuple[Key, Time, Counter, Node]], msgspec.Meta(max_length=MAX_LIST)]


class Alive(_Message, tag=TAG_ALIVE, frozen=True, gc=False):
    """Liveness of one incarnation (broadcast at join, on refutation, periodically).

    ``version`` grows when the node refutes a suspicion; ``started_at`` (wall ms) orders
    a restart after the life it replaces; ``commitment`` is the hash of the token its
    `Bye` will reveal; ``join`` asks a ring neighbour for the member list;
    ``interval_ms`` is the sender's current interval between Alive broadcasts.
    """

    version: U63
    started_at: Time
    commitment: Token
    sent_at: Time
    join: bool
    interval_ms: U63


class Ping(_Message, tag=TAG_PING, frozen=True, gc=False):
    """A probe of ``target`` (sent to its inbox)."""

    probe: U63
    target: Node


class Ack(_Message, tag=TAG_ACK, frozen=True, gc=False):
    """The answer to a `Ping`: who answered, at which incarnation and version."""

    probe: U63
    version: U63
    started_at: Time
    commitment: Token


class Suspect(_Message, tag=TAG_SUSPECT, frozen=True, gc=False):
    """``target`` (at ``target_nonce``, ``target_version``) failed its probes."""

    target: Node
    target_nonce: Nonce
    target_version: U63


class Bye(_Message, tag=TAG_BYE, frozen=True, gc=False):
    """A clean goodbye: ``token`` hashes to the commitment of the sender's Alive."""

    token: Token


class Members(_Message, tag=TAG_MEMBERS, frozen=True, gc=False):
    """The live incarnations the sender knows, handed to a newcomer."""

    members: Annotated[list[MemberInfo], msgspec.Meta(max_length=MAX_BEACONS)]


Message: TypeAlias = (
    Writes
    | Hello
    | HelloAck
    | Leave
    | SyncRequest
    | SyncReply
    | SyncKeys
    | SyncWant
    | SyncData
    | SyncAck
    | Alive
    | Ping
    | Ack
    | Suspect
    | Bye
    | Members
)

_TYPES: dict[int, type[Any]] = {
    TAG_WRITES: Writes,
    TAG_HELLO: Hello,
    TAG_HELLO_ACK: HelloAck,
    TAG_LEAVE: Leave,
    TAG_SYNC_REQUEST: SyncRequest,
    TAG_SYNC_REPLY: SyncReply,
    TAG_SYNC_KEYS: SyncKeys,
    TAG_SYNC_WANT: SyncWant,
    TAG_SYNC_DATA: SyncData,
    TAG_SYNC_ACK: SyncAck,
    TAG_ALIVE: Alive,
    TAG_PING: Ping,
    TAG_ACK: Ack,
    TAG_SUSPECT: Suspect,
    TAG_BYE: Bye,
    TAG_MEMBERS: Members,
}
# --- encoding -------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode(msg: Message) -> bytes:
    """Encode ``msg`` (entries are packed as they are; see `encode_raw()`).

    Example:
        >>> decode(encode(Leave("pod-a", 9)), max_size=64)
        Leave(sender='pod-a', nonce=9, token=None)
    """
    if isinstance(msg, Writes | SyncData):
        return encode_raw(msg, [entry_list(e) for e in msg.entries])
    if isinstance(msg, Hello | HelloAck | Leave):
        # Trailing fields a revision appended are left out when unset, as older
        # revisions wrote them.
        fields: list[Any] = [_TAG[type(msg)], *msgspec.structs.astuple(msg)]
        while fields[-1] is None:
            fields.pop()
        return _encoder.encode(fields)
    return _encoder.encode(msg)


def encode_raw(msg: Writes | SyncData, raw: list[list[Any]]) -> bytes:
    """Encode ``msg`` with ``raw`` (`entry_list()`-shaped lists) as its entries.

    ``msg.entries`` is ignored: a replica shipping its own state packs lists straight
    from its entries, without building a `WireEntry` per key.
    """
    fields: list[Any] = [_TAG[type(msg)], *msgspec.structs.astuple(msg)]
    fields[_ENTRIES_AT[type(msg)]] = raw
    return _encoder.encode(fields)


_TAG: dict[type[Any], int] = {cls: tag for tag, cls in _TYPES.items()}
# Where the entries sit in the packed array (after the tag).
_ENTRIES_AT: dict[type[Any], int] = {
    cls: 1 + [f.name for f in msgspec.structs.fields(cls)].index("entries")
    for cls in (Writes, SyncData)
}


def packed_size(obj: object) -> int:
    """The exact packed size of ``obj`` (one C-level encode)."""
    return len(_encoder.encode(obj))


# --- decoding -------------------------------------------------------------------------

_head_decoder = msgspec.msgpack.Decoder(_Head)
# Small messages (most of them) are decoded in one pass through the tagged union; a
# large one reads its head first, so a node's own echoed batches cost only the head.
_any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Message)
_ONE_PASS = 2048
_decoders: dict[int, msgspec.msgpack.Decoder[Any]] = {
    tag: msgspec.msgpack.Decoder(cls) for tag, cls in _TYPES.items()
}


def decode(data: bytes, *, max_size: int) -> Message:
    """Decode one message from untrusted ``data``.

    Raises:
        FrameTooLarge: ``data`` is longer than ``max_size`` (checked before unpacking).
        DecodeError: anything malformed; never another exception type.
    """
    msg = decode_unless_own(data, None, 0, max_size=max_size)
    assert msg is not None
    return msg


#: Where the sender and nonce of every encoded message start: after the array header
#: (one byte: no message has 16 fields) and the tag (``0xcd`` and two bytes).
ECHO_OFFSET: Final = 4


def echo_prefix(sender: str, nonce: int) -> bytes:
    """The bytes at [`ECHO_OFFSET`][podshare.store.wire.ECHO_OFFSET] of every message
    ``(sender, nonce)`` encodes: what an echo-skipping subscription leaves out.

    The sender's string header carries its length, so no other sender's messages (nor
    another incarnation's: the nonce follows) start with them.

    Example:
        >>> data = encode(Leave("pod-a", 9))
        >>> data.startswith(echo_prefix("pod-a", 9), ECHO_OFFSET)
        True
        >>> data.startswith(echo_prefix("pod-", 9), ECHO_OFFSET)
        False
    """
    return _encoder.encode(sender) + _encoder.encode(nonce)


def decode_unless_own(
    data: bytes | bytearray | memoryview, own: str | None, nonce: int, max_size: int
) -> Message | None:
    """`decode()`, but ``None`` (the body left undecoded) for this node's own echo.

    An echo is a message whose sender is ``own`` *and* whose nonce is ``nonce``; a
    message with this node's id and another nonce comes from a second process using the
    same node id, and is decoded.

    Example:
        >>> data = encode(Leave("pod-a", 9))
        >>> decode_unless_own(data, "pod-a", 9, max_size=64) is None
        True
        >>> decode_unless_own(data, "pod-a", 10, max_size=64).nonce
        9
    """
    if type(data) is not bytes and not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"message must be bytes, not {type(data).__name__}")
    size = len(data)
    if size > max_size:
        raise FrameTooLarge(f"message of {size} bytes exceeds the {max_size}-byte cap")
    if size <= _ONE_PASS:
        try:
            msg: Message = _any_decoder.decode(data)
        except Exception:  # noqa: BLE001, S110  # the two-step path below says what is wrong
            pass
        else:
            if own is not None and msg.nonce == nonce and msg.sender == own:
                return None
            return msg
    try:
        head = _head_decoder.decode(data)
    except Exception as exc:  # noqa: BLE001  # msgspec.DecodeError, ValidationError
        raise DecodeError(f"malformed message: {exc}") from None
    if own is not None and head.nonce == nonce and head.sender == own:
        return None
    decoder = _decoders.get(head.tag)
    if decoder is None:
        version, kind = divmod(head.tag, 256)
        if version != VERSION:
            raise DecodeError(f"unknown message version {version} (this node speaks {VERSION})")
        raise DecodeError(f"unknown message kind {kind}")
    try:
        msg = decoder.decode(data)
    except Exception as exc:  # noqa: BLE001  # msgspec.DecodeError, ValidationError (incl. __post_init__)
        name = _TYPES[head.tag].__name__
        raise DecodeError(f"malformed {name} message: {exc}") from None
    return msg
