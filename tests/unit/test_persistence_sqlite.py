"""SQLitePersistence: the persistence kit, the file format, foreign files, the event loop."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from podshare.exceptions import ClosedError, ConfigurationError, InvalidValue, PersistenceError
from podshare.persistence import Persistence, SQLitePersistence
from podshare.persistence.sqlite import APPLICATION_ID, SCHEMA_VERSION
from podshare.testing import PersistenceConformance, check_persistence

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _locked(p: Persistence) -> AsyncIterator[None]:
    """Another connection holds the file's write lock: our writes hit busy_timeout."""
    assert isinstance(p, SQLitePersistence)
    other = sqlite3.connect(p.path, isolation_level=None, check_same_thread=False)
    try:
        await anyio.to_thread.run_sync(other.execute, "BEGIN IMMEDIATE")
        yield
        await anyio.to_thread.run_sync(other.execute, "ROLLBACK")
    finally:
        other.close()


async def test_passes_check_persistence_with_a_locked_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await check_persistence(
        lambda: SQLitePersistence(path, busy_timeout=0.05), break_writes=_locked
    )


class TestSQLiteConformance(PersistenceConformance):
    """The mixin, one test per property, a file of each test's own."""

    @pytest.fixture(autouse=True)
    def _path(self, tmp_path: Path) -> None:
        self.path = tmp_path / "state.db"

    def persistence_factory(self) -> Persistence:
        return SQLitePersistence(self.path, busy_timeout=0.05)

    def break_writes(self, persistence: Persistence) -> AbstractAsyncContextManager[object]:
        return _locked(persistence)


async def test_the_file_is_marked_ours_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path) as place:
        assert place.shared is False
        await place.write("s", {"k": b"v"}, b"m")
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT store, key, record FROM records").fetchall() == [
            ("s", "k", b"v")
        ]
        assert conn.execute("SELECT store, meta FROM meta").fetchall() == [("s", b"m")]
    finally:
        conn.close()


async def test_a_foreign_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    place = SQLitePersistence(path)
    with pytest.raises(PersistenceError, match=r"podshare did not create.*tables: users"):
        await place.load("s")
    with pytest.raises(PersistenceError, match="podshare did not create"):
        await place.write("s", {"k": b"v"}, None)
    await place.aclose()
    assert path.read_bytes() == before
    assert not (tmp_path / "app.db-wal").exists()
    assert place.stats().load_errors == 1
    assert place.stats().write_errors == 1


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(PersistenceError, match="not an SQLite database"):
        async with SQLitePersistence(path):
            pass
    assert path.read_bytes().startswith(b"these are not")


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path) as place:
        await place.write("s", {"k": b"v"}, None)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(PersistenceError, match="newer podshare"):
        async with SQLitePersistence(path):
            pass


async def test_a_damaged_file_of_ours_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE meta")
    conn.close()
    with pytest.raises(PersistenceError, match="damaged"):
        async with SQLitePersistence(path):
            pass


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PersistenceError, match="does not exist"):
        await SQLitePersistence(tmp_path / "no" / "state.db").load("s")


async def test_closed_raises_closed_error(tmp_path: Path) -> None:
    place = SQLitePersistence(tmp_path / "state.db")
    await place.write("s", {"k": b"v"}, None)
    await place.aclose()
    await place.aclose()
    with pytest.raises(ClosedError):
        await place.load("s")
    with pytest.raises(ClosedError):
        await place.write("s", {"k": b"v"}, None)


async def test_bad_input_raises_invalid_value_and_writes_nothing(tmp_path: Path) -> None:
    async with SQLitePersistence(tmp_path / "state.db") as place:
        with pytest.raises(InvalidValue):
            await place.write("s", {"k": b"v", "bad": 1}, None)  # type: ignore[dict-item]
        assert (await place.load("s")).records == {}
        assert place.stats().writes == 0


async def test_rows_of_the_wrong_types_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path) as place:
        await place.write("s", {"good": b"v"}, b"m")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO records VALUES ('s', 'text-record', 'not a blob')")
    conn.execute("INSERT INTO records VALUES ('s', x'ff', x'00')")  # a blob key
    conn.commit()
    conn.close()
    async with SQLitePersistence(path) as place:
        state = await place.load("s")
        assert state.records == {"good": b"v"}
        assert place.stats().decode_errors == 2


async def test_several_stores_in_one_file_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path) as place:
        await place.write("config", {"flag": b"on"}, b"m1")
        await place.write("routes", {"r": b"pod-3"}, None)
    async with SQLitePersistence(str(path)) as place:
        assert dict((await place.load("config")).records) == {"flag": b"on"}
        assert (await place.load("config")).meta == b"m1"
        assert dict((await place.load("routes")).records) == {"r": b"pod-3"}


async def test_a_big_write_does_not_block_the_event_loop(tmp_path: Path) -> None:
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        # Sleeps, not bare checkpoints: a loop that never blocks keeps the GIL from the
        # worker thread for whole switch intervals, and the write then crawls.
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.001)

    records: dict[str, bytes | None] = {f"key-{i}": b"x" * 200 for i in range(100_000)}
    async with SQLitePersistence(tmp_path / "state.db") as place, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()  # the ticker starts; `start` is its count
        start = ticks
        await place.write("big", records, None)
        state = await place.load("big")
        done.set()
    assert len(state.records) == 100_000
    # The loop kept running while SQLite worked in its thread (a blocking call: 0 ticks).
    assert ticks - start > 10


async def test_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with SQLitePersistence(path, synchronous="full") as place:
        await place.write("s", {"k": b"v"}, None)
        assert dict((await place.load("s")).records) == {"k": b"v"}


def test_bad_options(tmp_path: Path) -> None:
    for kwargs in ({"busy_timeout": -1}, {"busy_timeout": True}, {"synchronous": "off"}):
        with pytest.raises(ConfigurationError):
            SQLitePersistence(tmp_path / "x.db", **kwargs)
    with pytest.raises(ConfigurationError):
        SQLitePersistence("")
    with pytest.raises(ConfigurationError):
        SQLitePersistence(3)  # type: ignore[arg-type]


async def test_a_locked_file_fails_the_write_with_a_persistence_error(tmp_path: Path) -> None:
    async with SQLitePersistence(tmp_path / "state.db", busy_timeout=0.05) as place:
        await place.write("s", {"k": b"1"}, None)
        async with _locked(place):
            with pytest.raises(PersistenceError, match="locked"):
                await place.write("s", {"k": b"2"}, None)
            # WAL: reads go on while another connection writes.
            assert dict((await place.load("s")).records) == {"k": b"1"}
        assert place.stats().write_errors == 1


async def test_leaving_by_cancellation_still_closes_the_file(tmp_path: Path) -> None:
    place = SQLitePersistence(tmp_path / "state.db")
    with anyio.CancelScope() as scope:
        async with place:
            await place.write("s", {"k": b"v"}, None)
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    with pytest.raises(ClosedError):
        await place.load("s")
