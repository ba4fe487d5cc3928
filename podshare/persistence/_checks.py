"""The argument checks every persistence backend applies before it touches its place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from podshare._limits import MAX_NAME_LENGTH, check_key
from podshare.exceptions import InvalidValue
from podshare.persistence.stats import PersistenceStats

__all__ = ["MAX_RECORD_SIZE", "Changes", "check_store", "check_write"]

#: The largest record (or meta record) a backend accepts: Redis's bulk-string ceiling.
MAX_RECORD_SIZE: Final = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Changes:
    """One checked ``write``: what to store, what to delete, and the meta record."""

    upserts: list[tuple[str, bytes]]
    deletes: list[str]
    meta: bytes | None
    size: int  # key, record and meta bytes, for bytes_written

    def count(self, stats: PersistenceStats) -> None:
        """Add this write to ``stats`` (once it was applied)."""
        stats.writes += 1
        stats.records_written += len(self.upserts)
        stats.records_deleted += len(self.deletes)
        stats.bytes_written += self.size

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.deletes and self.meta is None


def check_store(store: object) -> str:
    """``store`` if it is a valid store name, else InvalidValue."""
    if (
        not isinstance(store, str)
        or not store
        or len(store) > MAX_NAME_LENGTH
        or "#" in store
        or not _utf8(store)
    ):
        raise InvalidValue(
            f"a store name must be a non-empty str of at most {MAX_NAME_LENGTH} characters "
            f"without '#', not {store!r}"
        )
    return store


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _blob(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidValue(f"{what} must be bytes, not {type(value).__name__}")
    data = bytes(value)  # a copy: the caller may change a bytearray afterwards
    if len(data) > MAX_RECORD_SIZE:
        raise InvalidValue(f"{what} is {len(data)} bytes, above the 512 MiB limit")
    return data


def check_write(store: object, records: object, meta: object) -> Changes:
    """Check every argument of ``write`` before anything is applied; InvalidValue if bad."""
    check_store(store)
    if not isinstance(records, Mapping):
        raise InvalidValue(f"records must be a mapping, not {type(records).__name__}")
    upserts: list[tuple[str, bytes]] = []
    deletes: list[str] = []
    size = 0
    for key, record in records.items():
        check_key(key)
        if not _utf8(key):
            raise InvalidValue(f"key {key!r} cannot be encoded as UTF-8")
        size += len(key.encode())
        if record is None:
            deletes.append(key)
        else:
            data = _blob(record, f"the record of {key!r}")
            upserts.append((key, data))
            size += len(data)
    checked_meta = None if meta is None else _blob(meta, "meta")
    if checked_meta is not None:
        size += len(checked_meta)
    return Changes(upserts, deletes, checked_meta, size)
