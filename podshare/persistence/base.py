"""The persistence protocol: a durable place for stores' states, and what it stores.

A store with persistence keeps its entries (tombstones included, ephemeral entries
never) in a [`Persistence`][podshare.persistence.Persistence] backend, so a fleet that stops and
starts keeps its map. The store does the work; a backend only keeps bytes:

- [`Persistence.load()`][podshare.persistence.Persistence.load] returns everything stored for one
  store: one opaque ``bytes`` record per key, and one ``meta`` record (the store's horizon) or
  ``None``.
- [`Persistence.write()`][podshare.persistence.Persistence.write] applies changes for one store:
  ``records`` maps each changed key to its new record, or to ``None`` when the key is gone
  (compacted, or replaced by an ephemeral entry); ``meta`` replaces the meta record when not
  ``None``. A write is all-or-nothing for what it names, and writing the same changes twice is
  harmless (stores retry after a failure).

Records are the store's own encoding ([`encode_record()`][podshare.persistence.base.encode_record]):
a versioned msgpack array of one wire entry, decoded with every bound checked
([`decode_record()`][podshare.persistence.base.decode_record]), so a backend never needs to
understand them and corrupt data is refused, counted and skipped by the store, never decoded with
pickle.

``shared`` says whether several processes write to the same place (one Redis, one
NATS KV bucket): a shared backend is written by one elected replica at a time (see the
durability docs), a private one (an SQLite file on a pod's volume) by its own replica.

Implement the two methods (and ``shared``; ``aclose`` if you hold resources) to keep
state anywhere; [`podshare.testing.check_persistence()`][podshare.testing.check_persistence]
verifies a backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from podshare.exceptions import DecodeError
from podshare.store.wire import WireEntry, entry_list

__all__ = [
    "RECORD_VERSION",
    "PersistedState",
    "Persistence",
    "decode_meta",
    "decode_record",
    "encode_meta",
    "encode_raw_record",
    "encode_record",
]

#: The version of the record encoding this module writes and the only one it reads.
RECORD_VERSION: Final = 1
_MAX_RECORD: Final = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PersistedState:
    """What [`Persistence.load()`][podshare.persistence.Persistence.load] returns for one store.

    Attributes:
        records: key -> record bytes (as written).
        meta: the meta record, or ``None`` when none was written.
    """

    records: Mapping[str, bytes]
    meta: bytes | None = None


@runtime_checkable
class Persistence(Protocol):
    """A durable place for the states of one or more stores (see the module docs)."""

    #: Whether several processes share this place (then one replica writes at a time).
    shared: bool

    async def load(self, store: str) -> PersistedState:
        """Everything stored for ``store`` (empty records when nothing is)."""
        ...

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        """Store ``records`` (``None``: delete the key) and, unless ``None``, ``meta``."""
        ...


class _Record(msgspec.Struct, array_like=True, frozen=True):
    version: int
    entry: WireEntry


class _Meta(msgspec.Struct, array_like=True, frozen=True):
    version: int
    saved_at: int
    vector: list[tuple[str, int]]


_record_decoder = msgspec.msgpack.Decoder(_Record)
_meta_decoder = msgspec.msgpack.Decoder(_Meta)
_encoder = msgspec.msgpack.Encoder()


def encode_record(entry: WireEntry) -> bytes:
    """One key's record: the versioned encoding of its entry."""
    return _encoder.encode([RECORD_VERSION, entry_list(entry)])


def encode_raw_record(raw: list[Any]) -> bytes:
    """[`encode_record()`][podshare.persistence.base.encode_record] of an entry already packed as a
    list."""
    return _encoder.encode([RECORD_VERSION, raw])


def decode_record(data: bytes) -> WireEntry:
    """Decode a record; raises [`DecodeError`][podshare.DecodeError] for anything else.

    Example:
        >>> from podshare.crdt import Stamp
        >>> from podshare.store.wire import make_entry
        >>> e = make_entry("k", Stamp(5, 0, "a"), 0, b"1")
        >>> decode_record(encode_record(e)) == e
        True
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_RECORD:
        raise DecodeError("a persisted record must be bytes of at most 512 MiB")
    try:
        record = _record_decoder.decode(data)
    except Exception as exc:  # noqa: BLE001  # msgspec's errors: all mean "not a record"
        raise DecodeError(f"not a podshare record: {exc}") from None
    if record.version != RECORD_VERSION:
        raise DecodeError(f"unknown record version {record.version}")
    if not record.entry.consistent():
        raise DecodeError("a persisted entry's fields do not match its flags")
    return record.entry


def encode_meta(saved_at: int, vector: list[tuple[str, int]]) -> bytes:
    """The meta record: when it was saved and the store's horizon vector."""
    return _encoder.encode([RECORD_VERSION, saved_at, vector])


def decode_meta(data: bytes) -> tuple[int, list[tuple[str, int]]]:
    """Decode a meta record: ``(saved_at, vector)``; DecodeError for anything else."""
    try:
        meta = _meta_decoder.decode(data)
    except Exception as exc:  # noqa: BLE001  # msgspec's errors: all mean "not a meta record"
        raise DecodeError(f"not a podshare meta record: {exc}") from None
    if meta.version != RECORD_VERSION:
        raise DecodeError(f"unknown meta record version {meta.version}")
    return meta.saved_at, list(meta.vector)
