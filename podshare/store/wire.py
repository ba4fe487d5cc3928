"""The replica wire format: a versioned msgpack envelope, decoded from untrusted bytes with bounds.

Every message is one msgpack array ``[version, kind, sender, *fields]``. ``version`` is
:data:`VERSION`; a receiver rejects any other version with
:class:`~podshare.exceptions.DecodeError` (and ignores extra trailing fields, so a later
minor revision can append fields without breaking older readers). ``kind`` is a
:class:`Kind`. Values travel as opaque ``bin`` blobs produced by the store's value codec,
so this module never decodes a user's value.

Message kinds (fields after ``sender``):

- ``WRITES`` (1): ``entries`` — a batch of local writes (broadcast).
- ``HELLO`` (2): ``incarnation, synced, lineage, keys`` — a new replica announces
  itself (broadcast); every peer answers with a ``HEARTBEAT`` to its inbox.
- ``HEARTBEAT`` (3): the same fields — periodic liveness (broadcast), or a hello's
  answer (inbox).
- ``LEAVE`` (4): nothing — a clean goodbye: receivers mark the sender down at once.
- ``SYNC_REQUEST`` (5): ``sync_id, full, nbuckets, hashes, lineage`` — a digest sent to
  one peer's inbox: one 8-byte hash per bucket (``full``: the requester holds nothing,
  send everything).
- ``SYNC_DATA`` (6): ``sync_id, seq, total, status, lineage, nbuckets, buckets,
  entries`` — one chunk of the answer (``status`` 1: refused, the responder is not
  synced itself); ``buckets`` lists the differing buckets in chunk 0 (``nil``: all).
- ``SYNC_PUSH`` (7): ``sync_id, entries`` — what the requester holds and the responder
  lacked, sent back to the responder's inbox.

An entry is ``[key, time, counter, origin, flags, value, epoch_time, epoch_counter,
epoch_origin]``; ``flags`` is a bit set of :data:`TOMBSTONE`, :data:`EPHEMERAL` and
:data:`MERGED` (the three epoch fields are present exactly when ``MERGED`` is set, and
``value`` is ``nil`` exactly for tombstones).

Decoding caps the message size before unpacking (:class:`~podshare.exceptions.FrameTooLarge`),
then decodes with msgspec against a typed schema of every field (types, ranges, string
lengths; no ext types, no maps; every declared length is checked against the bytes
present before anything is allocated): garbage, truncation, unknown versions or kinds
raise :class:`~podshare.exceptions.DecodeError`, never another exception. Tombstones and
LWW entries omit their trailing ``nil`` fields.

Example:
    >>> from podshare.crdt import Stamp
    >>> e = make_entry("flag", Stamp(1000, 0, "pod-a"), 0, b"true", None)
    >>> data = encode(Writes("pod-a", [e]))
    >>> decode(data, max_size=1024) == Writes("pod-a", [e])
    True
    >>> decode(b"\\xc1", max_size=1024)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    podshare.exceptions.DecodeError: malformed message: ...
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeAlias

import msgspec

from podshare.crdt.clock import MAX_COUNTER, MAX_ORIGIN_LENGTH, MAX_TIME, Stamp
from podshare.exceptions import DecodeError, FrameTooLarge

__all__ = [
    "EPHEMERAL",
    "HASH_SIZE",
    "MAX_BUCKETS",
    "MAX_KEY_LENGTH",
    "MERGED",
    "TOMBSTONE",
    "VERSION",
    "Heartbeat",
    "Hello",
    "Kind",
    "Leave",
    "Message",
    "SyncData",
    "SyncPush",
    "SyncRequest",
    "WireEntry",
    "Writes",
    "decode",
    "decode_unless_from",
    "encode",
    "encode_raw",
    "entry_size",
    "make_entry",
    "packed_size",
    "raw_entry",
]

#: The envelope version this module writes and the only one it reads.
VERSION = 1
#: Entry flag: the entry is a delete (its ``value`` is ``None``).
TOMBSTONE = 1
#: Entry flag: the entry lives only while its writer (``stamp.origin``) is alive.
EPHEMERAL = 2
#: Entry flag: a merger store's entry; it carries an epoch.
MERGED = 4
_KNOWN_FLAGS = TOMBSTONE | EPHEMERAL | MERGED
#: Longest key accepted from the wire, in characters (the store enforces the same).
MAX_KEY_LENGTH = 1024
#: Most buckets a digest may have.
MAX_BUCKETS = 1 << 20
#: Bytes per bucket hash in a digest.
HASH_SIZE = 8
_MAX_INT = 2**63 - 1
_MAX_SEQ = 2**31 - 1

_SYNC_OK = 0
_SYNC_REFUSED = 1

_Time = Annotated[int, msgspec.Meta(ge=0, le=MAX_TIME)]
_Counter = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNTER)]
_Node = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ORIGIN_LENGTH)]
_EpochOrigin = Annotated[str, msgspec.Meta(max_length=MAX_ORIGIN_LENGTH)]
_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
_Flags = Annotated[int, msgspec.Meta(ge=0, le=_KNOWN_FLAGS)]
_NonNeg = Annotated[int, msgspec.Meta(ge=0, le=_MAX_INT)]
_Seq = Annotated[int, msgspec.Meta(ge=0, le=_MAX_SEQ)]
_Buckets = Annotated[int, msgspec.Meta(ge=1, le=MAX_BUCKETS)]


class Kind(enum.IntEnum):
    """The message kinds of envelope version 1."""

    WRITES = 1
    HELLO = 2
    HEARTBEAT = 3
    LEAVE = 4
    SYNC_REQUEST = 5
    SYNC_DATA = 6
    SYNC_PUSH = 7


class WireEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One key's state (or a write's delta) as it travels; build it with :func:`make_entry`.

    Attributes:
        key: the key.
        time, counter, origin: the write's stamp (a merger entry: the highest stamp
            merged into it); ``origin`` is the writer.
        flags: a bit set of :data:`TOMBSTONE`, :data:`EPHEMERAL`, :data:`MERGED`.
        value: the value codec's bytes; ``None`` exactly for a tombstone.
        epoch_time, epoch_counter, epoch_origin: a merger entry's epoch (present
            exactly when ``MERGED`` is set).
    """

    key: _Key
    time: _Time
    counter: _Counter
    origin: _Node
    flags: _Flags
    value: bytes | None = None
    epoch_time: _Time | None = None
    epoch_counter: _Counter | None = None
    epoch_origin: _EpochOrigin | None = None

    def __post_init__(self) -> None:
        # Runs on decode too: msgspec reports the ValueError as a validation error.
        flags = self.flags
        if (self.value is None) != bool(flags & TOMBSTONE):
            raise ValueError("an entry has a value exactly when it is not a tombstone")
        has_epoch = self.epoch_origin is not None
        if (
            has_epoch != bool(flags & MERGED)
            or (self.epoch_time is None) == has_epoch
            or (self.epoch_counter is None) == has_epoch
        ):
            raise ValueError("an entry has an epoch exactly when it is MERGED")

    @property
    def stamp(self) -> Stamp:
        """The entry's stamp."""
        return Stamp(self.time, self.counter, self.origin)

    @property
    def epoch(self) -> Stamp | None:
        """The merger entry's epoch, or ``None``."""
        if self.epoch_origin is None:
            return None
        return Stamp(self.epoch_time, self.epoch_counter, self.epoch_origin)  # type: ignore[arg-type]


def make_entry(
    key: str, stamp: Stamp, flags: int, value: bytes | None, epoch: Stamp | None
) -> WireEntry:
    """Build a :class:`WireEntry` from stamps.

    Raises:
        ValueError: ``value``/``epoch`` do not match ``flags``.
    """
    if epoch is None:
        return WireEntry(key, stamp[0], stamp[1], stamp[2], flags, value)
    return WireEntry(key, stamp[0], stamp[1], stamp[2], flags, value, epoch[0], epoch[1], epoch[2])


def _entry_list(e: WireEntry) -> list[Any]:
    """The entry as it is packed: trailing ``nil`` fields left out."""
    if e.epoch_origin is not None:
        return [
            e.key,
            e.time,
            e.counter,
            e.origin,
            e.flags,
            e.value,
            e.epoch_time,
            e.epoch_counter,
            e.epoch_origin,
        ]
    if e.value is None:
        return [e.key, e.time, e.counter, e.origin, e.flags]
    return [e.key, e.time, e.counter, e.origin, e.flags, e.value]


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode())


def entry_size(e: WireEntry) -> int:
    """An upper bound of the entry's packed size in bytes (cheap: nothing is packed)."""
    size = _utf8_len(e.key) + _utf8_len(e.origin) + 32
    if e.value is not None:
        size += len(e.value)
    if e.epoch_origin is not None:
        size += _utf8_len(e.epoch_origin) + 24
    return size


@dataclass(frozen=True, slots=True)
class Writes:
    """A batch of writes, broadcast by their writer."""

    sender: str
    entries: Sequence[WireEntry]


@dataclass(frozen=True, slots=True)
class _Presence:
    """What :class:`Hello` and :class:`Heartbeat` carry.

    Attributes:
        incarnation: the wall-clock ms at which this replica started (a restart with the
            same node id has a new incarnation).
        synced: the sender finished hydrating, so it may serve syncs.
        lineage: the sender's state holds every write it could have seen since this
            wall-clock ms (see the replica's tombstone horizon).
        keys: how many entries the sender holds (sizes digests).
    """

    sender: str
    incarnation: int
    synced: bool
    lineage: int
    keys: int


@dataclass(frozen=True, slots=True)
class Hello(_Presence):
    """A replica announcing itself; peers answer with a :class:`Heartbeat` to its inbox."""


@dataclass(frozen=True, slots=True)
class Heartbeat(_Presence):
    """Periodic liveness (broadcast), or a hello's answer (to the new replica's inbox)."""


@dataclass(frozen=True, slots=True)
class Leave:
    """A clean goodbye: receivers mark the sender down at once."""

    sender: str


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A digest sent to one peer's inbox: ``nbuckets`` hashes of ``HASH_SIZE`` bytes each.

    Attributes:
        sync_id: the requester's id for this exchange (echoed in the answer).
        full: the requester holds nothing: send every entry, skip the comparison.
        nbuckets: a power of two; a key's bucket is ``crc32(key) % nbuckets``.
        hashes: ``nbuckets * 8`` bytes (empty when ``full``).
        lineage: the requester's lineage (see :class:`Hello`).
    """

    sender: str
    sync_id: int
    full: bool
    nbuckets: int
    hashes: bytes
    lineage: int


@dataclass(frozen=True, slots=True)
class SyncData:
    """One chunk of a sync answer, sent to the requester's inbox.

    Attributes:
        sync_id: the request's id.
        seq: this chunk's index, ``0 <= seq < total``.
        total: how many chunks the answer has.
        refused: the responder is not synced itself; ask another peer.
        lineage: the responder's lineage.
        nbuckets: the request's bucket count.
        buckets: the differing buckets (meaningful in chunk 0; ``None`` means all).
        entries: every entry the responder holds in the differing buckets (this chunk's share).
    """

    sender: str
    sync_id: int
    seq: int
    total: int
    refused: bool
    lineage: int
    nbuckets: int
    buckets: Sequence[int] | None
    entries: Sequence[WireEntry]


@dataclass(frozen=True, slots=True)
class SyncPush:
    """Entries the requester holds and the responder lacked, sent to the responder's inbox."""

    sender: str
    sync_id: int
    entries: Sequence[WireEntry]


Message: TypeAlias = Writes | Hello | Heartbeat | Leave | SyncRequest | SyncData | SyncPush

# --- encoding -------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def raw_entry(
    key: str, stamp: Stamp, flags: int, value: bytes | None, epoch: Stamp | None
) -> list[Any]:
    """An entry as packed, without building a :class:`WireEntry` (for :func:`encode_raw`).

    The caller vouches for its consistency (it comes from the replica's own state).
    """
    if epoch is not None:
        return [key, stamp[0], stamp[1], stamp[2], flags, value, epoch[0], epoch[1], epoch[2]]
    if value is None:
        return [key, stamp[0], stamp[1], stamp[2], flags]
    return [key, stamp[0], stamp[1], stamp[2], flags, value]


def packed_size(raw: list[list[Any]]) -> int:
    """The exact packed size of a list of :func:`raw_entry` lists (one C-level encode)."""
    return len(_encoder.encode(raw))


def encode_raw(msg: Writes | SyncData | SyncPush, raw: list[list[Any]]) -> bytes:
    """Encode ``msg`` with ``raw`` (:func:`raw_entry` lists) as its entries.

    ``msg.entries`` is ignored; this spares building a :class:`WireEntry` per entry when
    a replica ships its own state (hydration answers carry every key).
    """
    obj = _envelope(msg)
    obj[-1] = raw
    return _encoder.encode(obj)


def encode(msg: Message) -> bytes:
    """Encode ``msg`` into one envelope.

    Example:
        >>> decode(encode(Leave("pod-a")), max_size=64)
        Leave(sender='pod-a')
    """
    return _encoder.encode(_envelope(msg))


def _envelope(msg: Message) -> list[Any]:
    if isinstance(msg, Writes):
        obj: list[Any] = [VERSION, Kind.WRITES, msg.sender, [_entry_list(e) for e in msg.entries]]
    elif isinstance(msg, Hello | Heartbeat):
        kind = Kind.HELLO if isinstance(msg, Hello) else Kind.HEARTBEAT
        obj = [VERSION, kind, msg.sender, msg.incarnation, msg.synced, msg.lineage, msg.keys]
    elif isinstance(msg, Leave):
        obj = [VERSION, Kind.LEAVE, msg.sender]
    elif isinstance(msg, SyncRequest):
        obj = [
            VERSION,
            Kind.SYNC_REQUEST,
            msg.sender,
            msg.sync_id,
            msg.full,
            msg.nbuckets,
            msg.hashes,
            msg.lineage,
        ]
    elif isinstance(msg, SyncData):
        obj = [
            VERSION,
            Kind.SYNC_DATA,
            msg.sender,
            msg.sync_id,
            msg.seq,
            msg.total,
            _SYNC_REFUSED if msg.refused else _SYNC_OK,
            msg.lineage,
            msg.nbuckets,
            None if msg.buckets is None else list(msg.buckets),
            [_entry_list(e) for e in msg.entries],
        ]
    elif isinstance(msg, SyncPush):
        obj = [
            VERSION,
            Kind.SYNC_PUSH,
            msg.sender,
            msg.sync_id,
            [_entry_list(e) for e in msg.entries],
        ]
    else:
        raise TypeError(f"not a podshare message: {msg!r}")
    return obj


# --- decoding -------------------------------------------------------------------------
# One typed schema per kind; msgspec checks every type and range in C. Trailing fields
# beyond the schema are ignored, so a later minor revision may append fields.


class _Head(msgspec.Struct, array_like=True, gc=False):
    version: int
    kind: int
    # Read (unvalidated) so a node drops its own echoed broadcasts before the body.
    sender: Any = None


class _WritesS(msgspec.Struct, array_like=True):
    version: int
    kind: int
    sender: _Node
    entries: list[WireEntry]


class _PresenceS(msgspec.Struct, array_like=True, gc=False):
    version: int
    kind: int
    sender: _Node
    incarnation: _NonNeg
    synced: bool
    lineage: _NonNeg
    keys: _NonNeg


class _LeaveS(msgspec.Struct, array_like=True, gc=False):
    version: int
    kind: int
    sender: _Node


class _SyncRequestS(msgspec.Struct, array_like=True, gc=False):
    version: int
    kind: int
    sender: _Node
    sync_id: _NonNeg
    full: bool
    nbuckets: _Buckets
    hashes: bytes
    lineage: _NonNeg


class _SyncDataS(msgspec.Struct, array_like=True):
    version: int
    kind: int
    sender: _Node
    sync_id: _NonNeg
    seq: _Seq
    total: _Seq
    status: Annotated[int, msgspec.Meta(ge=_SYNC_OK, le=_SYNC_REFUSED)]
    lineage: _NonNeg
    nbuckets: _Buckets
    buckets: list[Annotated[int, msgspec.Meta(ge=0, lt=MAX_BUCKETS)]] | None
    entries: list[WireEntry]


class _SyncPushS(msgspec.Struct, array_like=True):
    version: int
    kind: int
    sender: _Node
    sync_id: _NonNeg
    entries: list[WireEntry]


_head_decoder = msgspec.msgpack.Decoder(_Head)
_decoders: dict[int, msgspec.msgpack.Decoder[Any]] = {
    Kind.WRITES: msgspec.msgpack.Decoder(_WritesS),
    Kind.HELLO: msgspec.msgpack.Decoder(_PresenceS),
    Kind.HEARTBEAT: msgspec.msgpack.Decoder(_PresenceS),
    Kind.LEAVE: msgspec.msgpack.Decoder(_LeaveS),
    Kind.SYNC_REQUEST: msgspec.msgpack.Decoder(_SyncRequestS),
    Kind.SYNC_DATA: msgspec.msgpack.Decoder(_SyncDataS),
    Kind.SYNC_PUSH: msgspec.msgpack.Decoder(_SyncPushS),
}


def decode(data: bytes, *, max_size: int) -> Message:
    """Decode one envelope from untrusted ``data``.

    Raises:
        FrameTooLarge: ``data`` is longer than ``max_size`` (checked before unpacking).
        DecodeError: anything malformed; never another exception type.
    """
    msg = decode_unless_from(data, None, max_size=max_size)
    assert msg is not None
    return msg


def decode_unless_from(data: bytes, own: str | None, *, max_size: int) -> Message | None:
    """:func:`decode`, but ``None`` (the body left undecoded) when ``own`` sent ``data``.

    Transports echo a node's broadcasts back to it; reading only the envelope's head
    spares decoding every entry of its own write batches.

    Example:
        >>> data = encode(Leave("pod-a"))
        >>> decode_unless_from(data, "pod-a", max_size=64) is None
        True
        >>> decode_unless_from(data, "pod-b", max_size=64)
        Leave(sender='pod-a')
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"message must be bytes, not {type(data).__name__}")
    if len(data) > max_size:
        raise FrameTooLarge(f"message of {len(data)} bytes exceeds the {max_size}-byte cap")
    try:
        head = _head_decoder.decode(data)
    except Exception as exc:  # msgspec.DecodeError, ValidationError
        raise DecodeError(f"malformed message: {exc}") from None
    if head.version != VERSION:
        raise DecodeError(f"unknown message version {head.version} (this node speaks {VERSION})")
    if own is not None and head.sender == own:
        return None
    decoder = _decoders.get(head.kind)
    if decoder is None:
        raise DecodeError(f"unknown message kind {head.kind}")
    try:
        return _convert(decoder.decode(data))
    except DecodeError:
        raise
    except Exception as exc:  # msgspec.DecodeError, ValidationError, or a check below
        raise DecodeError(f"malformed {Kind(head.kind).name} message: {exc}") from None


def _convert(obj: Any) -> Message:
    if isinstance(obj, _WritesS):
        return Writes(obj.sender, obj.entries)
    if isinstance(obj, _PresenceS):
        cls = Hello if obj.kind == Kind.HELLO else Heartbeat
        return cls(obj.sender, obj.incarnation, obj.synced, obj.lineage, obj.keys)
    if isinstance(obj, _LeaveS):
        return Leave(obj.sender)
    if isinstance(obj, _SyncRequestS):
        n = obj.nbuckets
        if n & (n - 1):
            raise DecodeError("SYNC_REQUEST nbuckets must be a power of two")
        if not obj.full and len(obj.hashes) != n * HASH_SIZE:
            raise DecodeError(f"SYNC_REQUEST has {len(obj.hashes)} hash bytes for {n} buckets")
        return SyncRequest(obj.sender, obj.sync_id, obj.full, n, obj.hashes, obj.lineage)
    if isinstance(obj, _SyncDataS):
        n = obj.nbuckets
        if n & (n - 1):
            raise DecodeError("SYNC_DATA nbuckets must be a power of two")
        if not obj.seq < obj.total:
            raise DecodeError(f"SYNC_DATA seq {obj.seq} not below total {obj.total}")
        if obj.buckets is not None and any(b >= n for b in obj.buckets):
            raise DecodeError("SYNC_DATA names a bucket beyond nbuckets")
        return SyncData(
            obj.sender,
            obj.sync_id,
            obj.seq,
            obj.total,
            obj.status == _SYNC_REFUSED,
            obj.lineage,
            n,
            obj.buckets,
            obj.entries,
        )
    assert isinstance(obj, _SyncPushS)
    return SyncPush(obj.sender, obj.sync_id, obj.entries)
