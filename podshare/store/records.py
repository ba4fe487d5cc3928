"""A replica's persisted form: the records of changed keys, and decoding what a backend holds.

Part of the sans-I/O core (no I/O: the `Store`'s persister moves the bytes). A record is
one entry, packed as it travels (`podshare.persistence.base.encode_raw_record`); the
meta record holds the horizon vector, so deletes stay deleted across a cold restart.
Ephemeral entries are never persisted: a cold restart must not bring back a route to a
dead pod.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from podshare.exceptions import DecodeError, PodshareError
from podshare.persistence.base import (
    PersistedState,
    decode_meta,
    decode_record,
    encode_raw_record,
)
from podshare.store.events import Stats
from podshare.store.state import MapState
from podshare.store.wire import EPHEMERAL, WireEntry

__all__ = ["changed_records", "decode_records", "decode_vector"]


def changed_records(state: MapState[Any], keys: Iterable[str]) -> dict[str, bytes | None]:
    """The record of each key of ``keys``; ``None`` for a key whose entry is gone or
    ephemeral (to be deleted from the backend)."""
    records: dict[str, bytes | None] = {}
    entries = state.entries
    for key in keys:
        e = entries.get(key)
        if e is None or e.flags & EPHEMERAL:
            records[key] = None
        else:
            raw = state.raw(key)
            records[key] = None if raw is None else encode_raw_record(raw)
    return records


def decode_records(
    persisted: PersistedState, stats: Stats, errors: list[PodshareError]
) -> list[WireEntry]:
    """The entries of a persisted state; a corrupt record is skipped, counted in
    ``persist_corrupt`` and queued on ``errors``."""
    entries: list[WireEntry] = []
    for key, data in persisted.records.items():
        try:
            entry = decode_record(data)
            if entry.key != key:
                raise DecodeError(f"the record of {key!r} holds key {entry.key!r}")
        except DecodeError as exc:
            stats.persist_corrupt += 1
            errors.append(DecodeError(f"persisted record of {key!r} skipped: {exc}"))
            continue
        entries.append(entry)
    return entries


def decode_vector(
    persisted: PersistedState, stats: Stats, errors: list[PodshareError]
) -> list[tuple[str, int]] | None:
    """The horizon vector of a persisted state; None without a meta record, or when it is
    corrupt (then counted in ``persist_corrupt`` and queued on ``errors``)."""
    if persisted.meta is None:
        return None
    try:
        _, vector = decode_meta(persisted.meta)
    except DecodeError as exc:
        stats.persist_corrupt += 1
        errors.append(DecodeError(f"persisted meta record skipped: {exc}"))
        return None
    return vector
