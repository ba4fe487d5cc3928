"""SQLitePersistence: stores' state in an SQLite file, for a pod with a persistent volume.

The embedded default for TCP meshes: each pod keeps its own file (``shared`` is
``False``), on a volume that outlives the pod (a Kubernetes PersistentVolume per pod of
a StatefulSet, see the durability docs). Any number of stores share one file.

**How it never blocks the event loop.** The standard library's ``sqlite3`` runs in a
worker thread (``anyio.to_thread.run_sync``), on one dedicated connection guarded by a
lock; every ``load`` and every ``write`` is one trip to the thread, and a write is one
transaction. This was chosen over the async SQLite libraries because:

- ``aiosqlite`` is asyncio-only (it resolves asyncio futures from its thread), and
  podshare runs under trio as well;
- ``sqlite-anyio`` works under both, but it is a thin wrapper that makes one thread trip
  per statement and serialises statements, not transactions: a transaction spanning
  several statements still needs a lock of our own around it, so it would add a
  dependency and thread trips without removing any code;
- ``anyio.to_thread`` is backend-neutral, and one trip per call keeps the loop free
  while SQLite does all of a write's statements at C speed.

A cancelled ``load`` or ``write`` waits for its thread to finish (anyio does not abandon
it), so a transaction is never left half-done and the lock is never leaked.

**The file.** WAL journal mode (readers never block the writer; a crash or SIGKILL
loses no committed write), ``synchronous=NORMAL`` by default (``synchronous="full"``
also survives power loss at the cost of an fsync per write). Two tables: ``records``
(store, key, record; primary key (store, key)) and ``meta`` (store, meta). The file is
marked with an SQLite ``application_id`` (``PdSh``) and its schema version is
``user_version``: a file that is not podshare's, or from a newer podshare, is refused
with a clear [`PersistenceError`][podshare.exceptions.PersistenceError] and left
untouched.

Example:
    >>> import anyio, tempfile, os
    >>> from podshare.persistence import SQLitePersistence
    >>> async def main(path: str) -> None:
    ...     async with SQLitePersistence(path) as place:
    ...         await place.write("config", {"flag": b"record"}, b"meta")
    ...     async with SQLitePersistence(path) as place:  # a restarted pod
    ...         state = await place.load("config")
    ...     print(dict(state.records), state.meta)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     anyio.run(main, os.path.join(tmp, "podshare.db"))
    {'flag': b'record'} b'meta'
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

import anyio
import anyio.to_thread

from podshare.exceptions import ClosedError, ConfigurationError, PersistenceError
from podshare.persistence._checks import Changes, check_store, check_write
from podshare.persistence.base import PersistedState
from podshare.persistence.stats import PersistenceStats

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLitePersistence"]

_log = logging.getLogger("podshare.persistence.sqlite")

#: The SQLite ``application_id`` of podshare's files: ``b"PdSh"`` as a big-endian int.
APPLICATION_ID: Final = int.from_bytes(b"PdSh", "big")
#: The schema version this module writes (``PRAGMA user_version``) and the only one it reads.
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    "CREATE TABLE records ("
    " store TEXT NOT NULL, key TEXT NOT NULL, record BLOB NOT NULL,"
    " PRIMARY KEY (store, key))",
    "CREATE TABLE meta (store TEXT NOT NULL PRIMARY KEY, meta BLOB NOT NULL)",
)
_UPSERT: Final = "INSERT OR REPLACE INTO records (store, key, record) VALUES (?, ?, ?)"
_DELETE: Final = "DELETE FROM records WHERE store = ? AND key = ?"
_SET_META: Final = "INSERT OR REPLACE INTO meta (store, meta) VALUES (?, ?)"

_T = TypeVar("_T")


class SQLitePersistence:
    """Stores' states in one SQLite file (see the module docs).

    Args:
        path: the database file; created (with its schema) when it does not exist. Its
            directory must exist. Give each pod its own file on its own volume.
        busy_timeout: seconds a write waits for another connection's lock on the file
            before failing with [`PersistenceError`][podshare.exceptions.PersistenceError].
        synchronous: ``"normal"`` (the default: committed writes survive a crash of the
            process, the last ones may be lost on power loss) or ``"full"`` (an fsync per
            write: they survive power loss too).

    The file is opened on first use, or on entering ``async with``; ``aclose()`` (or
    leaving the block) closes it, after which ``load`` and ``write`` raise
    [`ClosedError`][podshare.exceptions.ClosedError]. Works under asyncio and trio.
    """

    shared: bool = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        try:
            self._path = os.fspath(path)
        except TypeError:
            raise ConfigurationError(f"path must be a str or os.PathLike, not {path!r}") from None
        if not isinstance(self._path, str) or not self._path:
            raise ConfigurationError(f"path must be a non-empty file path, not {path!r}")
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, int | float)
            or not 0 <= busy_timeout < 86400
        ):
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds in [0, 86400), not {busy_timeout!r}"
            )
        if synchronous not in ("normal", "full"):
            raise ConfigurationError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self._busy_timeout = float(busy_timeout)
        self._synchronous = synchronous
        self._lock = threading.Lock()  # guards _conn and _closed; held in worker threads
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._stats = PersistenceStats()

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLitePersistence({self._path!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._call(_nothing)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the file (idempotent); later ``load``/``write`` raise ``ClosedError``."""
        with anyio.CancelScope(shield=True):  # closes even when the caller is cancelled
            await anyio.to_thread.run_sync(self._close_in_thread)

    def _close_in_thread(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    _log.warning("closing %s failed: %s", self._path, exc)

    # -- the Persistence protocol ----------------------------------------------------

    async def load(self, store: str) -> PersistedState:
        """Every record and the meta record of ``store``, as one consistent snapshot.

        Raises:
            PersistenceError: the file cannot be read, or is not podshare's.
            ClosedError: after ``aclose()``.
            InvalidValue: ``store`` is not a valid store name.
        """
        check_store(store)
        try:
            records, meta, skipped = await self._call(lambda conn: _load(conn, store))
        except PersistenceError:
            self._stats.load_errors += 1
            raise
        if skipped:
            self._stats.decode_errors += skipped
            _log.warning(
                "%s: skipped %d rows of store %r that are not (text key, blob record)",
                self._path,
                skipped,
                store,
            )
        self._stats.loads += 1
        self._stats.records_loaded += len(records)
        self._stats.bytes_loaded += sum(len(k.encode()) + len(v) for k, v in records.items())
        self._stats.bytes_loaded += len(meta) if meta is not None else 0
        return PersistedState(records, meta)

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        """Apply ``records`` (``None`` deletes) and ``meta`` in one transaction.

        Raises:
            PersistenceError: SQLite refused or failed (busy past ``busy_timeout``, disk
                full, read-only, not podshare's file); nothing was changed.
            ClosedError: after ``aclose()``.
            InvalidValue: a bad store name, key or record (nothing changed).
        """
        changes = check_write(store, records, meta)
        if changes.empty:
            await self._call(_nothing)  # still a checkpoint, still checks the file
            return
        try:
            await self._call(lambda conn: _write(conn, store, changes))
        except PersistenceError:
            self._stats.write_errors += 1
            raise
        changes.count(self._stats)

    def stats(self) -> PersistenceStats:
        """A frozen snapshot of this instance's counters."""
        return self._stats.snapshot()

    # -- the worker-thread side ----------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn(connection)`` in a worker thread, holding the lock, errors mapped."""
        return await anyio.to_thread.run_sync(self._in_thread, fn)

    def _in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._closed:
                raise ClosedError(f"{self!r} is closed")
            try:
                if self._conn is None:
                    self._conn = self._open()
                return fn(self._conn)
            except sqlite3.Error as exc:
                raise PersistenceError(f"SQLite at {self._path}: {_describe(exc)}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._path != ":memory:" and not Path(self._path).parent.is_dir():
            raise PersistenceError(
                f"SQLite at {self._path}: the directory {Path(self._path).parent} does not "
                f"exist (mount the volume, or create it)"
            )
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: every transaction is our explicit BEGIN
            check_same_thread=False,  # used from worker threads, one at a time (the lock)
        )
        try:
            self._prepare(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        try:
            app_id, version, tables = _identify(conn)
        except sqlite3.DatabaseError as exc:
            raise PersistenceError(
                f"{self._path} is not an SQLite database ({_describe(exc)}), so not a "
                f"podshare state file: give SQLitePersistence a file of its own"
            ) from exc
        fresh = app_id == 0 and not tables
        if not fresh:
            self._check_ours(app_id, version, tables)
        # WAL only on a file known to be ours: a foreign file is left as it was.
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() not in ("wal", "memory"):
            _log.warning(
                "%s: SQLite refused WAL mode (journal_mode is %s; a network filesystem?): "
                "writes will block reads",
                self._path,
                mode,
            )
        conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        if fresh:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have created the schema since we looked.
                app_id, version, tables = _identify(conn)
                if app_id == 0 and not tables:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                else:
                    self._check_ours(app_id, version, tables)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    def _check_ours(self, app_id: int, version: int, tables: set[str]) -> None:
        if app_id != APPLICATION_ID:
            found = ", ".join(sorted(tables)) or "none"
            raise PersistenceError(
                f"{self._path} is an SQLite database that podshare did not create "
                f"(application_id {app_id:#x}, tables: {found}); it is left untouched: "
                f"give SQLitePersistence a file of its own"
            )
        if version > SCHEMA_VERSION:
            raise PersistenceError(
                f"{self._path} has podshare schema version {version}, written by a newer "
                f"podshare; this one reads version {SCHEMA_VERSION}: upgrade podshare"
            )
        if version != SCHEMA_VERSION or not {"records", "meta"} <= tables:
            raise PersistenceError(
                f"{self._path} is marked as podshare's but has schema version {version} "
                f"and tables {sorted(tables)}: it is damaged; move it away to start afresh"
            )


def _identify(conn: sqlite3.Connection) -> tuple[int, int, set[str]]:
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return app_id, version, {str(row[0]) for row in rows}


def _load(conn: sqlite3.Connection, store: str) -> tuple[dict[str, bytes], bytes | None, int]:
    conn.execute("BEGIN")  # one read transaction: records and meta from one snapshot
    try:
        rows = conn.execute("SELECT key, record FROM records WHERE store = ?", (store,)).fetchall()
        row = conn.execute("SELECT meta FROM meta WHERE store = ?", (store,)).fetchone()
    finally:
        _rollback(conn)  # nothing was written: ending the read transaction either way
    records: dict[str, bytes] = {}
    skipped = 0
    for key, record in rows:
        # Only we write this file, but SQLite columns take any type: check, never trust.
        if isinstance(key, str) and isinstance(record, bytes):
            records[key] = record
        else:
            skipped += 1
    meta = row[0] if row is not None and isinstance(row[0], bytes) else None
    if row is not None and meta is None:
        skipped += 1
    return records, meta, skipped


def _write(conn: sqlite3.Connection, store: str, changes: Changes) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if changes.upserts:
            conn.executemany(_UPSERT, ((store, key, record) for key, record in changes.upserts))
        if changes.deletes:
            conn.executemany(_DELETE, ((store, key) for key in changes.deletes))
        if changes.meta is not None:
            conn.execute(_SET_META, (store, changes.meta))
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _nothing(_conn: sqlite3.Connection) -> None:
    """Opens the file (``_call`` does) and nothing more."""


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back after a failure; the failure is what gets raised, not this."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:  # SQLite may already have rolled back (SQLITE_FULL)
            _log.warning("rolling back failed: %s", exc)


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+: "SQLITE_BUSY", ...
    return f"{exc} ({name})" if name else str(exc)
