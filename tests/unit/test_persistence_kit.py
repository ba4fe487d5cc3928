"""The persistence conformance kit catches backends that break the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest

from podshare.persistence import MemoryPersistence, PersistedState, Persistence
from podshare.testing import check_persistence

pytestmark = pytest.mark.anyio

SMALL: dict[str, Any] = {"many_keys": 200, "large_value_size": 4096}


class _PartialWrites(MemoryPersistence):
    """Applies records one at a time and stops at the first bad one."""

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        for key, record in records.items():
            await super().write(store, {key: record}, None)
        if meta is not None:
            await super().write(store, {}, meta)


class _MetaNoneClears(MemoryPersistence):
    """Treats meta=None as "no meta record"."""

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        await super().write(store, records, meta)
        if meta is None:
            self._meta.pop(store, None)


class _CollidingStores(MemoryPersistence):
    """Keys stores by the part of their name before the first ':' (a careless layout)."""

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        await super().write(store.split(":")[0], records, meta)

    async def load(self, store: str) -> PersistedState:
        return await super().load(store.split(":")[0])


class _MemoryviewLoads(MemoryPersistence):
    """Returns records as memoryviews, not bytes."""

    async def load(self, store: str) -> PersistedState:
        state = await super().load(store)
        return PersistedState({k: memoryview(v) for k, v in state.records.items()}, state.meta)  # type: ignore[misc]


class _DropsEmpty(MemoryPersistence):
    """Loses empty records (treats b"" as a delete)."""

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        await super().write(store, {k: v or None for k, v in records.items()}, meta)


@pytest.mark.parametrize(
    ("backend", "prop"),
    [
        (_PartialWrites, "a write that fails leaves the previous state"),
        (_MetaNoneClears, "deletes"),
        (_CollidingStores, "stores are isolated"),
        (_MemoryviewLoads, "write/load round trip"),
        (_DropsEmpty, "write/load round trip"),
    ],
)
async def test_the_kit_names_the_broken_property(
    backend: type[MemoryPersistence], prop: str
) -> None:
    place = backend()
    with pytest.raises(AssertionError, match=f"persistence conformance: {prop}"):
        await check_persistence(lambda: place, **SMALL)


async def test_a_new_instance_must_see_what_the_last_one_wrote() -> None:
    # Each instance its own empty place: nothing survives a "restart".
    with pytest.raises(AssertionError, match="loaded by a new instance"):
        await check_persistence(MemoryPersistence, **SMALL)


async def test_break_writes_that_breaks_nothing_is_reported() -> None:
    @asynccontextmanager
    async def no_op(_p: Persistence) -> AsyncIterator[None]:
        yield

    place = MemoryPersistence()
    with pytest.raises(AssertionError, match="while the backend was broken did not raise"):
        await check_persistence(lambda: place, break_writes=no_op, **SMALL)


async def test_an_object_without_the_methods_is_refused() -> None:
    with pytest.raises(AssertionError, match="protocol"):
        await check_persistence(lambda: object(), **SMALL)  # type: ignore[arg-type,return-value]
