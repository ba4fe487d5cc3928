"""MemoryPersistence: it passes the persistence kit, copies bytes, and fails on demand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from podshare.exceptions import ConfigurationError, DecodeError, InvalidValue, PersistenceError
from podshare.persistence import (
    MemoryPersistence,
    PersistedState,
    Persistence,
    PersistenceStats,
)
from podshare.persistence.base import decode_record
from podshare.persistence.memory import CORRUPT_RECORD
from podshare.testing import PersistenceConformance, check_persistence

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def _failing(p: Persistence) -> AsyncIterator[None]:
    assert isinstance(p, MemoryPersistence)
    p.fail_writes = True
    try:
        yield
    finally:
        p.fail_writes = False


async def test_passes_check_persistence_with_failing_writes() -> None:
    place = MemoryPersistence()
    await check_persistence(lambda: place, break_writes=_failing)


async def test_a_private_place_passes_too() -> None:
    place = MemoryPersistence(shared=False)
    await check_persistence(lambda: place, many_keys=1000, large_value_size=1024)


class TestMemoryConformance(PersistenceConformance):
    """The mixin, one test per property, with the failure injection as break_writes."""

    place: MemoryPersistence | None = None

    def persistence_factory(self) -> Persistence:
        if self.place is None:
            self.place = MemoryPersistence()
        return self.place

    def break_writes(self, persistence: Persistence) -> AbstractAsyncContextManager[object]:
        return _failing(persistence)


async def test_is_a_persistence_and_shared_by_default() -> None:
    assert isinstance(MemoryPersistence(), Persistence)
    assert MemoryPersistence().shared is True
    assert MemoryPersistence(shared=False).shared is False


async def test_bytes_are_copied_in() -> None:
    place = MemoryPersistence()
    record = bytearray(b"before")
    await place.write("s", {"k": record}, bytearray(b"meta"))  # type: ignore[dict-item,arg-type]
    record[:] = b"after!"
    state = await place.load("s")
    assert state.records == {"k": b"before"}
    assert type(state.records["k"]) is bytes
    assert state.meta == b"meta"


async def test_loads_return_a_copy() -> None:
    place = MemoryPersistence()
    await place.write("s", {"k": b"1"}, None)
    state = await place.load("s")
    assert isinstance(state.records, dict)
    state.records["other"] = b"x"
    assert (await place.load("s")).records == {"k": b"1"}
    assert place.records("s") == {"k": b"1"}


async def test_several_stores_and_pods_share_one_place() -> None:
    place = MemoryPersistence()
    pod_a, pod_b = place, place  # the same object given to two pods' stores
    await pod_a.write("config", {"a": b"1"}, b"m")
    await pod_b.write("routes", {"r": b"2"}, None)
    assert place.stores() == ["config", "routes"]
    assert (await pod_b.load("config")) == PersistedState({"a": b"1"}, b"m")
    await place.aclose()  # a store closing: the place keeps its data
    assert place.records("config") == {"a": b"1"}


async def test_fail_writes_changes_nothing_and_is_counted() -> None:
    place = MemoryPersistence()
    await place.write("s", {"k": b"1"}, b"m1")
    place.fail_writes = True
    with pytest.raises(PersistenceError, match="fail_writes"):
        await place.write("s", {"k": b"2", "j": b"3"}, b"m2")
    assert place.records("s") == {"k": b"1"}
    assert place.meta("s") == b"m1"
    place.fail_writes = False
    await place.write("s", {"k": b"2"}, None)
    stats = place.stats()
    assert (stats.writes, stats.write_errors) == (2, 1)


async def test_fail_loads() -> None:
    place = MemoryPersistence()
    place.fail_loads = True
    with pytest.raises(PersistenceError, match="fail_loads"):
        await place.load("s")
    place.fail_loads = False
    assert (await place.load("s")).records == {}
    assert (place.stats().loads, place.stats().load_errors) == (1, 1)


async def test_delay_makes_every_call_slow() -> None:
    place = MemoryPersistence(delay=0.05)
    start = anyio.current_time()
    await place.write("s", {"k": b"1"}, None)
    await place.load("s")
    assert anyio.current_time() - start >= 0.1
    place.delay = 0
    with pytest.raises(ConfigurationError):
        place.delay = -1


async def test_corrupt_records_are_refused_by_the_decoder() -> None:
    place = MemoryPersistence()
    place.corrupt("s", "k")
    place.corrupt_meta("s")
    state = await place.load("s")
    assert state.records == {"k": CORRUPT_RECORD}
    with pytest.raises(DecodeError):
        decode_record(state.records["k"])
    assert state.meta == CORRUPT_RECORD
    place.corrupt("s", "j", b"custom")
    assert place.records("s")["j"] == b"custom"


async def test_clear() -> None:
    place = MemoryPersistence()
    await place.write("a", {"k": b"1"}, b"m")
    await place.write("b", {"k": b"1"}, None)
    place.clear("a")
    assert place.stores() == ["b"]
    place.clear()
    assert place.stores() == []


async def test_wait_until_wakes_on_writes_and_failures() -> None:
    place = MemoryPersistence()
    place.fail_writes = True
    seen: list[str] = []

    async def waiter() -> None:
        await place.wait_until(lambda: place.stats().write_errors >= 1)
        seen.append("failed")
        await place.wait_until(lambda: "k" in place.records("s"))
        seen.append("written")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(PersistenceError):
                await place.write("s", {"k": b"1"}, None)
            place.fail_writes = False
            await place.write("s", {"k": b"1"}, None)
    assert seen == ["failed", "written"]


async def test_bad_input_raises_invalid_value() -> None:
    place = MemoryPersistence()
    for store, records, meta in (
        ("", {}, None),
        ("a#b", {}, None),
        ("s", {"": b"x"}, None),
        ("s", {"k": "text"}, None),
        ("s", {"k": b"x"}, "meta"),
        ("s", [("k", b"x")], None),
        ("s", {"\udc80": b"x"}, None),
    ):
        with pytest.raises(InvalidValue):
            await place.write(store, records, meta)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await place.load("")
    assert place.stores() == []


async def test_stats_count_records_and_bytes() -> None:
    place = MemoryPersistence()
    await place.write("s", {"ab": b"123", "gone": None}, b"mm")
    await place.load("s")
    assert place.stats() == PersistenceStats(
        loads=1,
        records_loaded=1,
        bytes_loaded=2 + 3 + 2,
        writes=1,
        records_written=1,
        records_deleted=1,
        bytes_written=2 + 3 + 4 + 2,
    )


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError):
        MemoryPersistence(shared="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        MemoryPersistence(delay=float("nan"))
