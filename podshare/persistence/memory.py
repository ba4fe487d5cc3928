"""MemoryPersistence: an in-process persistence backend, for tests of durability.

One ``MemoryPersistence`` object stands for one durable place (a Redis server, a
volume): give the same object to the stores of several simulated pods, close them all,
start new ones on the same object, and you have modelled a cold restart of the fleet
without a server. The object outlives the stores that use it (``aclose`` keeps the
data), and it copies bytes in and out, so what a store wrote is exactly what the next
one loads.

For tests of the failure paths it can fail on demand (``fail_writes``, ``fail_loads``),
be slow (``delay``), and hold corrupt data (``corrupt``, ``corrupt_meta``);
``wait_until`` waits for what the stores wrote without polling.

Example:
    >>> import anyio
    >>> from podshare.persistence import MemoryPersistence
    >>> place = MemoryPersistence()
    >>> async def main() -> None:
    ...     await place.write("config", {"flag": b"record", "old": None}, b"meta")
    ...     state = await place.load("config")
    ...     print(dict(state.records), state.meta, place.stats().writes)
    >>> anyio.run(main)
    {'flag': b'record'} b'meta' 1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, Self

import anyio
import anyio.lowlevel

from podshare.exceptions import ConfigurationError, PersistenceError
from podshare.persistence._checks import check_store, check_write
from podshare.persistence.base import PersistedState
from podshare.persistence.stats import PersistenceStats

__all__ = ["CORRUPT_RECORD", "MemoryPersistence"]

#: What `MemoryPersistence.corrupt()` stores by default: bytes that
#: [`decode_record`][podshare.persistence.base.decode_record] refuses (``0xc1`` is never
#: valid msgpack).
CORRUPT_RECORD: Final = b"\xc1not a podshare record"


class MemoryPersistence:
    """A durable place in this process's memory, shared by every store given it.

    Args:
        shared: what the ``shared`` attribute says (``True``: several pods write here,
            as with Redis; ``False`` models a pod's own volume, as with SQLite).
        delay: seconds every ``load`` and ``write`` waits before doing anything (a slow
            backend); may be changed at any time.

    Attributes:
        fail_writes: while ``True``, every ``write`` raises
            [`PersistenceError`][podshare.exceptions.PersistenceError] and changes nothing
            (the backend is down).
        fail_loads: while ``True``, every ``load`` raises ``PersistenceError``.

    ``load``, ``write`` and ``aclose`` follow
    [`Persistence`][podshare.persistence.Persistence]; ``aclose`` (and leaving
    ``async with``) keeps the data, since the place outlives the stores that use it.
    Under asyncio and trio alike.
    """

    def __init__(self, *, shared: bool = True, delay: float = 0.0) -> None:
        if not isinstance(shared, bool):
            raise ConfigurationError(f"shared must be a bool, not {shared!r}")
        self.shared: bool = shared
        self.delay = delay
        self.fail_writes = False
        self.fail_loads = False
        self._records: dict[str, dict[str, bytes]] = {}
        self._meta: dict[str, bytes] = {}
        self._stats = PersistenceStats()
        self._waiters: list[anyio.Event] = []

    @property
    def delay(self) -> float:
        """Seconds each ``load`` and ``write`` waits first (``0``: none)."""
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ConfigurationError(f"delay must be a number of seconds >= 0, not {seconds!r}")
        self._delay = float(seconds)

    def __repr__(self) -> str:
        return f"MemoryPersistence(shared={self.shared}, stores={len(self._records)})"

    # -- the Persistence protocol ----------------------------------------------------

    async def load(self, store: str) -> PersistedState:
        """Everything stored for ``store`` (a copy).

        Raises:
            PersistenceError: ``fail_loads`` is set.
            InvalidValue: ``store`` is not a valid store name.
        """
        check_store(store)
        await self._wait()
        try:
            if self.fail_loads:
                self._stats.load_errors += 1
                raise PersistenceError(f"MemoryPersistence: load of {store!r} failed (fail_loads)")
            records = dict(self._records.get(store, {}))
            meta = self._meta.get(store)
            self._stats.loads += 1
            self._stats.records_loaded += len(records)
            self._stats.bytes_loaded += sum(len(k.encode()) + len(v) for k, v in records.items())
            self._stats.bytes_loaded += len(meta) if meta is not None else 0
            return PersistedState(records, meta)
        finally:
            self._notify()

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        """Apply ``records`` (``None`` deletes) and ``meta`` for ``store``, all or nothing.

        Raises:
            PersistenceError: ``fail_writes`` is set (nothing changed).
            InvalidValue: a bad store name, key or record (nothing changed).
        """
        changes = check_write(store, records, meta)
        await self._wait()
        try:
            if self.fail_writes:
                self._stats.write_errors += 1
                raise PersistenceError(
                    f"MemoryPersistence: write of {store!r} failed (fail_writes)"
                )
            # No await from here on: the write is atomic for every other task.
            stored = self._records.setdefault(store, {})
            stored.update(changes.upserts)
            for key in changes.deletes:
                stored.pop(key, None)
            if not stored:
                del self._records[store]
            if changes.meta is not None:
                self._meta[store] = changes.meta
            changes.count(self._stats)
        finally:
            self._notify()

    async def aclose(self) -> None:
        """Nothing to release; the data stays for the next store (idempotent)."""
        await anyio.lowlevel.checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- inspection and fault injection, for tests -------------------------------------

    def stores(self) -> list[str]:
        """The stores that have records or a meta record here, sorted."""
        return sorted(self._records.keys() | self._meta.keys())

    def records(self, store: str) -> dict[str, bytes]:
        """What is stored for ``store`` now: key -> record (a copy; empty when nothing)."""
        return dict(self._records.get(check_store(store), {}))

    def meta(self, store: str) -> bytes | None:
        """The meta record stored for ``store``, or ``None``."""
        return self._meta.get(check_store(store))

    def corrupt(self, store: str, key: str, data: bytes = CORRUPT_RECORD) -> None:
        """Store ``data`` (by default bytes that no decoder accepts) as ``key``'s record.

        The key need not exist. A store that loads it must count it and skip it.
        """
        self._records.setdefault(check_store(store), {})[key] = bytes(data)
        self._notify()

    def corrupt_meta(self, store: str, data: bytes = CORRUPT_RECORD) -> None:
        """Store ``data`` as ``store``'s meta record."""
        self._meta[check_store(store)] = bytes(data)
        self._notify()

    def clear(self, store: str | None = None) -> None:
        """Forget ``store`` (every store when ``None``): a place wiped clean."""
        if store is None:
            self._records.clear()
            self._meta.clear()
        else:
            self._records.pop(check_store(store), None)
            self._meta.pop(store, None)
        self._notify()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` is true, re-checking after every load, write
        attempt (failed ones included) and change made by the methods above.

        Bound it yourself (``with anyio.fail_after(5): ...``). Example:
        ``await place.wait_until(lambda: "k" in place.records("config"))``.
        """
        while not condition():
            event = anyio.Event()
            self._waiters.append(event)
            await event.wait()

    def stats(self) -> PersistenceStats:
        """A frozen snapshot of the counters
        ([`PersistenceStats`][podshare.persistence.PersistenceStats])."""
        return self._stats.snapshot()

    # -- internals ---------------------------------------------------------------------

    async def _wait(self) -> None:
        if self._delay:
            await anyio.sleep(self._delay)
        else:
            await anyio.lowlevel.checkpoint()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()
