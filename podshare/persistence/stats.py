"""PersistenceStats: the counters every podshare persistence backend keeps."""

from __future__ import annotations

from dataclasses import dataclass

from podshare._counters import StatsRecord

__all__ = ["PersistenceStats"]


@dataclass(slots=True)
class PersistenceStats(StatsRecord):
    """Counters of one persistence backend (a frozen snapshot from ``stats()``).

    Every backend podshare ships ([`MemoryPersistence`][podshare.persistence.MemoryPersistence],
    [`SQLitePersistence`][podshare.persistence.SQLitePersistence],
    [`RedisPersistence`][podshare.persistence.RedisPersistence]) keeps these, counted by the
    instance (several instances on one place count separately).

    Attributes:
        loads: ``load`` calls that returned.
        load_errors: ``load`` calls that raised
            [`PersistenceError`][podshare.exceptions.PersistenceError].
        records_loaded: records returned by those loads.
        bytes_loaded: key, record and meta bytes returned by those loads.
        writes: ``write`` calls applied.
        write_errors: ``write`` calls that raised (nothing was applied).
        records_written: records stored by those writes (replacements included).
        records_deleted: keys deleted by those writes (``None`` records).
        bytes_written: key, record and meta bytes handed to the place by those writes
            (keys UTF-8 encoded; deletes count their key).
        decode_errors: stored items that could not be read back as a record (a Redis
            field name that is not UTF-8, an SQLite row of the wrong types): skipped,
            counted and logged.
    """

    loads: int = 0
    load_errors: int = 0
    records_loaded: int = 0
    bytes_loaded: int = 0
    writes: int = 0
    write_errors: int = 0
    records_written: int = 0
    records_deleted: int = 0
    bytes_written: int = 0
    decode_errors: int = 0
