"""Persistence conformance: check that a backend keeps the contract stores rely on.

Anyone keeping podshare's state somewhere of their own implements the two methods of
[`Persistence`][podshare.persistence.Persistence] and proves them with
[`check_persistence`][podshare.testing.check_persistence], or with the pytest mixin
[`PersistenceConformance`][podshare.testing.PersistenceConformance], which runs each
property as its own test. podshare's memory, SQLite and Redis backends pass the same
checks.

Example, with the memory backend (the factory returns the same object every time: it
is the place, and each call stands for a process using it):

```python
import pytest
from podshare.persistence import MemoryPersistence
from podshare.testing import PersistenceConformance, check_persistence

@pytest.mark.anyio
async def test_memory_backend() -> None:
    place = MemoryPersistence()
    await check_persistence(lambda: place)

@pytest.mark.anyio
class TestMyBackend(PersistenceConformance):
    def persistence_factory(self):
        return MyPersistence(url="...")   # a new instance on the same place per call
```
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from podshare.persistence.base import PersistedState, Persistence

__all__ = ["BreakWrites", "PersistenceConformance", "PersistenceFactory", "check_persistence"]

#: Makes one instance of the backend on the place under test (entered with ``async with``
#: when it is an async context manager, else closed with ``aclose()`` when it has one).
#: Each call stands for a separate process using the same place: what one instance
#: wrote, a later one must load.
PersistenceFactory = Callable[[], Persistence]

#: ``break_writes(persistence)``: an async context manager within which ``write`` on
#: that instance fails for a real reason of the backend (the server refuses, the file is
#: locked, the backend is marked down); leaving it repairs the backend.
BreakWrites = Callable[[Persistence], AbstractAsyncContextManager[object]]

_KEYS = (
    "k",
    "ключ/🔑",
    "a:b/c d",
    "with#hash",
    "state",
    "meta",
    "x" * 1024,
)
_VALUES = (b"", b"\x00", bytes(range(256)), b"\xff" * 3, b"record")
_CONCURRENT_STORES = 8
_CONCURRENT_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class _Context:
    factory: PersistenceFactory
    p: Persistence
    base: str
    break_writes: BreakWrites | None
    large_value_size: int
    many_keys: int

    def store(self, name: str) -> str:
        return f"{self.base}-{name}"


def _fail(prop: str, detail: str) -> AssertionError:
    return AssertionError(f"persistence conformance: {prop}: {detail}")


@asynccontextmanager
async def _opened(p: Persistence) -> AsyncIterator[Persistence]:
    """Enter ``p`` if it is an async context manager, else close it afterwards if it can."""
    if isinstance(p, AbstractAsyncContextManager):
        async with p as entered:
            yield entered if isinstance(entered, Persistence) else p
        return
    try:
        yield p
    finally:
        close = getattr(p, "aclose", None)
        if close is not None:
            await close()


def _describe(records: Mapping[str, Any], expected: Mapping[str, bytes]) -> str:
    missing = sorted(expected.keys() - records.keys())
    extra = sorted(records.keys() - expected.keys())
    changed = sorted(k for k in expected.keys() & records.keys() if records[k] != expected[k])
    parts = []
    for label, keys in (("missing", missing), ("unexpected", extra), ("different", changed)):
        if keys:
            shown = ", ".join(repr(k[:40]) for k in keys[:5])
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{label} keys {shown}{more}")
    return "; ".join(parts) or "the records differ"


async def _expect(
    p: Persistence,
    store: str,
    prop: str,
    records: Mapping[str, bytes],
    meta: bytes | None,
    situation: str,
) -> None:
    state = await p.load(store)
    if not isinstance(state, PersistedState):
        raise _fail(prop, f"load returned {type(state).__name__}, not PersistedState")
    if not isinstance(state.records, Mapping):
        raise _fail(prop, f"load's records are a {type(state.records).__name__}, not a mapping")
    for key, record in state.records.items():
        if not isinstance(key, str) or not isinstance(record, bytes):
            raise _fail(
                prop,
                f"{situation}: load returned {type(key).__name__} -> "
                f"{type(record).__name__}, not str -> bytes",
            )
    if dict(state.records) != dict(records):
        raise _fail(prop, f"{situation}: {_describe(state.records, records)}")
    if state.meta != meta:
        raise _fail(prop, f"{situation}: meta is {_short(state.meta)}, expected {_short(meta)}")


def _short(data: bytes | None) -> str:
    if data is None or len(data) <= 40:
        return repr(data)
    return f"<{len(data)} bytes starting {data[:16]!r}>"


# --- the properties ------------------------------------------------------------------


async def _check_protocol(ctx: _Context) -> None:
    prop = "protocol"
    if not isinstance(ctx.p, Persistence):
        raise _fail(prop, f"{ctx.p!r} lacks load or write (or the shared attribute)")
    if not isinstance(ctx.p.shared, bool):
        raise _fail(prop, f"shared must be a bool, not {ctx.p.shared!r}")


async def _check_empty(ctx: _Context) -> None:
    await _expect(ctx.p, ctx.store("empty"), "empty load", {}, None, "a store never written")


async def _check_round_trip(ctx: _Context) -> None:
    prop = "write/load round trip"
    store = ctx.store("round-trip")
    records = {key: _VALUES[i % len(_VALUES)] for i, key in enumerate(_KEYS)}
    records["random"] = secrets.token_bytes(1000)
    await ctx.p.write(store, records, b"meta-1")
    await _expect(ctx.p, store, prop, records, b"meta-1", "loaded by the instance that wrote")
    async with _opened(ctx.factory()) as other:
        await _expect(other, store, prop, records, b"meta-1", "loaded by a new instance")


async def _check_deletes(ctx: _Context) -> None:
    prop = "deletes"
    store = ctx.store("deletes")
    await ctx.p.write(store, {"a": b"1", "b": b"2", "c": b"3"}, b"meta")
    await ctx.p.write(store, {"b": None, "never-written": None}, None)
    await _expect(ctx.p, store, prop, {"a": b"1", "c": b"3"}, b"meta", "after deleting b")
    await ctx.p.write(store, {"a": None, "c": None}, None)
    await _expect(ctx.p, store, prop, {}, b"meta", "after deleting every key (meta stays)")
    await ctx.p.write(store, {"b": b"again"}, None)
    await _expect(ctx.p, store, prop, {"b": b"again"}, b"meta", "after writing b again")


async def _check_meta(ctx: _Context) -> None:
    prop = "meta replace"
    store, neighbour = ctx.store("meta"), ctx.store("meta-neighbour")
    await ctx.p.write(neighbour, {}, b"neighbour")
    await ctx.p.write(store, {"a": b"1"}, b"first")
    await ctx.p.write(store, {"b": b"2"}, None)
    records = {"a": b"1", "b": b"2"}
    await _expect(ctx.p, store, prop, records, b"first", "a write without meta keeps it")
    await ctx.p.write(store, {}, b"second")
    await _expect(ctx.p, store, prop, records, b"second", "a meta-only write replaces it")
    await ctx.p.write(store, {}, b"")
    await _expect(ctx.p, store, prop, records, b"", "an empty meta record is a meta record")
    await _expect(ctx.p, neighbour, prop, {}, b"neighbour", "another store's meta")


async def _check_idempotent(ctx: _Context) -> None:
    prop = "idempotent re-writes"
    store = ctx.store("idempotent")
    await ctx.p.write(store, {"a": b"1", "b": b"2"}, b"m1")
    change: dict[str, bytes | None] = {"a": b"changed", "b": None, "c": b"new"}
    await ctx.p.write(store, change, b"m2")
    await ctx.p.write(store, change, b"m2")
    await _expect(ctx.p, store, prop, {"a": b"changed", "c": b"new"}, b"m2", "written twice")


async def _check_isolation(ctx: _Context) -> None:
    prop = "stores are isolated"
    # Names that collide in a careless layout: one a prefix or a suffix of another.
    names = [ctx.store(n) for n in ("s", "s:state", "s:meta", "s/x", "s-ünï", "s:state:state")]
    for i, store in enumerate(names):
        await ctx.p.write(
            store, {"shared-key": f"{i}".encode(), f"own-{i}": b"x"}, f"m{i}".encode()
        )
    await ctx.p.write(names[0], {"shared-key": None}, None)
    for i, store in enumerate(names):
        expected = (
            {f"own-{i}": b"x"} if i == 0 else {"shared-key": f"{i}".encode(), f"own-{i}": b"x"}
        )
        await _expect(ctx.p, store, prop, expected, f"m{i}".encode(), f"store {store!r}")


async def _check_large_values(ctx: _Context) -> None:
    prop = "large values"
    store = ctx.store("large")
    big = secrets.token_bytes(ctx.large_value_size)
    meta = secrets.token_bytes(max(1, ctx.large_value_size // 4))
    await ctx.p.write(store, {"big": big, "small": b"s"}, meta)
    await _expect(ctx.p, store, prop, {"big": big, "small": b"s"}, meta, "written once")
    async with _opened(ctx.factory()) as other:
        await _expect(other, store, prop, {"big": big, "small": b"s"}, meta, "a new instance")


async def _check_many_keys(ctx: _Context) -> None:
    prop = "many keys"
    store = ctx.store("many")
    n = ctx.many_keys
    records = {f"key-{i:06d}": f"record-{i}".encode() * 4 for i in range(n)}
    await ctx.p.write(store, records, b"m")
    await _expect(ctx.p, store, prop, records, b"m", f"{n} keys in one write")
    change: dict[str, bytes | None] = {}
    for i in range(0, n, 2):
        change[f"key-{i:06d}"] = None
    for i in range(1, n, 4):
        change[f"key-{i:06d}"] = b"changed"
    await ctx.p.write(store, change, None)
    for key, record in change.items():
        if record is None:
            del records[key]
        else:
            records[key] = record
    async with _opened(ctx.factory()) as other:
        await _expect(other, store, prop, records, b"m", "after deleting half, changing a quarter")


async def _check_concurrent(ctx: _Context) -> None:
    prop = "concurrent writes of different stores"
    stores = [ctx.store(f"concurrent-{i}") for i in range(_CONCURRENT_STORES)]
    models: dict[str, dict[str, bytes]] = {store: {} for store in stores}

    async def writer(p: Persistence, store: str) -> None:
        model = models[store]
        for j in range(_CONCURRENT_ROUNDS):
            change: dict[str, bytes | None] = {
                f"r{j}-{k}": f"{store}/{j}/{k}".encode() for k in range(20)
            }
            if j:
                change[f"r{j - 1}-0"] = None
            await p.write(store, change, f"{store}/{j}".encode())
            for key, record in change.items():
                if record is None:
                    model.pop(key, None)
                else:
                    model[key] = record

    async with _opened(ctx.factory()) as second:
        # Several processes write a shared place at once; a private one has one writer.
        writers = [ctx.p, second] if ctx.p.shared else [ctx.p]
        async with anyio.create_task_group() as tg:
            for i, store in enumerate(stores):
                tg.start_soon(writer, writers[i % len(writers)], store)
    for store in stores:
        meta = f"{store}/{_CONCURRENT_ROUNDS - 1}".encode()
        await _expect(ctx.p, store, prop, models[store], meta, f"store {store!r}")


async def _write_raises(p: Persistence, store: str, records: Any, meta: bytes) -> bool:
    """Whether ``p.write`` raised (any error will do; the caller checks the state)."""
    try:
        await p.write(store, records, meta)
    except Exception:  # noqa: BLE001  # the error is the expected outcome, not swallowed
        return True
    return False


async def _check_failed_write(ctx: _Context) -> None:
    prop = "a write that fails leaves the previous state"
    store = ctx.store("failed")
    before = {"a": b"1", "b": b"2"}
    await ctx.p.write(store, before, b"before")
    bad_record = {"a": b"changed", "c": b"new", "b": None, "bad": "not bytes"}
    bad_key = {"a": b"changed", 7: b"x"}
    for label, records in (
        ("a record that is not bytes", bad_record),
        ("a key that is not a str", bad_key),
    ):
        if not await _write_raises(ctx.p, store, records, b"after"):
            raise _fail(prop, f"a write with {label} did not raise")
        await _expect(ctx.p, store, prop, before, b"before", f"after a write with {label}")
    if ctx.break_writes is None:
        return
    good: dict[str, bytes | None] = {"a": b"changed", "b": None, "c": b"new"}
    async with ctx.break_writes(ctx.p):
        if not await _write_raises(ctx.p, store, good, b"after"):
            raise _fail(prop, "a write while the backend was broken did not raise")
    await _expect(ctx.p, store, prop, before, b"before", "after a write the backend failed")
    await ctx.p.write(store, good, b"after")
    await _expect(
        ctx.p, store, prop, {"a": b"changed", "c": b"new"}, b"after", "the same write, repaired"
    )


async def _check_close(ctx: _Context) -> None:
    prop = "close"
    p = ctx.factory()
    close = getattr(p, "aclose", None)
    if close is None:
        return
    try:
        await p.load(ctx.store("close"))
        await close()
        await close()
    except Exception as exc:
        raise _fail(prop, f"load then aclose twice raised {type(exc).__name__}: {exc}") from exc


_CHECKS: tuple[tuple[str, Callable[[_Context], Awaitable[None]]], ...] = (
    ("protocol", _check_protocol),
    ("empty", _check_empty),
    ("round_trip", _check_round_trip),
    ("deletes", _check_deletes),
    ("meta", _check_meta),
    ("idempotent", _check_idempotent),
    ("isolation", _check_isolation),
    ("large_values", _check_large_values),
    ("many_keys", _check_many_keys),
    ("concurrent", _check_concurrent),
    ("failed_write", _check_failed_write),
    ("close", _check_close),
)


async def _run(
    factory: PersistenceFactory,
    checks: tuple[tuple[str, Callable[[_Context], Awaitable[None]]], ...],
    *,
    store_prefix: str,
    break_writes: BreakWrites | None,
    large_value_size: int,
    many_keys: int,
) -> None:
    run = secrets.token_hex(4)  # separate runs sharing a place do not see each other
    async with _opened(factory()) as p:
        for name, check in checks:
            base = f"{store_prefix}-{run}-{name}"
            await check(_Context(factory, p, base, break_writes, large_value_size, many_keys))


async def check_persistence(
    factory: PersistenceFactory,
    *,
    break_writes: BreakWrites | None = None,
    store_prefix: str = "conformance",
    large_value_size: int = 4 * 1024 * 1024,
    many_keys: int = 10_000,
) -> None:
    """Check that the backend ``factory`` makes keeps podshare's persistence contract.

    ``factory()`` returns an instance on the place under test (for a backend that is
    the place itself, like [`MemoryPersistence`][podshare.persistence.MemoryPersistence],
    the same object every time). One instance is used throughout; others are made to
    stand for a restarted process (and, on a ``shared`` backend, for a second process
    writing at the same time). Instances are entered with ``async with`` when they
    support it, and closed.

    Properties checked, on stores named ``{store_prefix}-{random}-...``:

    1. the instance implements ``load``/``write`` and a bool ``shared``;
    2. a store never written loads as no records and no meta;
    3. what is written loads back intact (keys of every kind, up to 1024 characters;
       records of every byte, the empty one included), on the writing instance and on
       a new one;
    4. ``None`` deletes a key (a missing one harmlessly), other keys stay;
    5. ``meta`` replaces the meta record, ``None`` leaves it, and each store has its own;
    6. the same write applied twice leaves what one leaves;
    7. stores whose names are prefixes or suffixes of each other never see each other's
       records or meta;
    8. a record of ``large_value_size`` bytes (and a meta record of a quarter of that)
       round-trips;
    9. ``many_keys`` records in one write load back, and a write deleting half and
       changing a quarter of them is applied exactly;
    10. writes to several stores at once (from two instances when ``shared``) all land;
    11. a write with a bad record or key anywhere in it raises and changes nothing; with
        ``break_writes``, a write the backend fails raises and changes nothing, and the
        same write succeeds once repaired;
    12. ``aclose()``, if the backend has it, may be called twice.

    Call it from an async test, under each backend your persistence supports.
    """
    await _run(
        factory,
        _CHECKS,
        store_prefix=store_prefix,
        break_writes=break_writes,
        large_value_size=large_value_size,
        many_keys=many_keys,
    )


class PersistenceConformance:
    """The persistence conformance checks as a pytest mixin: one test per property.

    Subclass it, mark the class for anyio, and define
    [`persistence_factory()`][podshare.testing.PersistenceConformance.persistence_factory]; define
    [`break_writes()`][podshare.testing.PersistenceConformance.break_writes] too to check that a
    failed write changes nothing:

    ```python
    @pytest.mark.anyio
    class TestMyBackend(PersistenceConformance):
        def persistence_factory(self) -> MyPersistence:
            return MyPersistence(path="...")
    ```
    """

    def persistence_factory(self) -> Persistence:
        """Return an instance on the place under test; override in the subclass."""
        raise NotImplementedError(
            "define persistence_factory() in the PersistenceConformance subclass"
        )

    def break_writes(self, persistence: Persistence) -> AbstractAsyncContextManager[object] | None:
        """Optionally return a context within which writes on ``persistence`` fail."""
        del persistence
        return None

    async def _conformance(self, name: str) -> None:
        overridden = type(self).break_writes is not PersistenceConformance.break_writes
        await _run(
            self.persistence_factory,
            tuple(check for check in _CHECKS if check[0] == name),
            store_prefix="conformance",
            break_writes=self._breaker if overridden else None,
            large_value_size=4 * 1024 * 1024,
            many_keys=10_000,
        )

    def _breaker(self, persistence: Persistence) -> AbstractAsyncContextManager[object]:
        context = self.break_writes(persistence)
        if context is None:
            raise NotImplementedError("break_writes() returned None")
        return context

    async def test_persistence_protocol(self) -> None:
        """Implements load/write and a bool shared."""
        await self._conformance("protocol")

    async def test_persistence_empty(self) -> None:
        """A store never written loads empty."""
        await self._conformance("empty")

    async def test_persistence_round_trip(self) -> None:
        """Written records and meta load back intact, on a new instance too."""
        await self._conformance("round_trip")

    async def test_persistence_deletes(self) -> None:
        """None deletes a key."""
        await self._conformance("deletes")

    async def test_persistence_meta(self) -> None:
        """Meta is replaced, kept on None, per store."""
        await self._conformance("meta")

    async def test_persistence_idempotent(self) -> None:
        """Writing the same changes twice is harmless."""
        await self._conformance("idempotent")

    async def test_persistence_isolation(self) -> None:
        """Stores never see each other's records."""
        await self._conformance("isolation")

    async def test_persistence_large_values(self) -> None:
        """A 4 MiB record round-trips."""
        await self._conformance("large_values")

    async def test_persistence_many_keys(self) -> None:
        """10 000 keys in one write load back; a bulk change is exact."""
        await self._conformance("many_keys")

    async def test_persistence_concurrent(self) -> None:
        """Concurrent writes of different stores all land."""
        await self._conformance("concurrent")

    async def test_persistence_failed_write(self) -> None:
        """A write that fails changes nothing."""
        await self._conformance("failed_write")

    async def test_persistence_close(self) -> None:
        """aclose may be called twice."""
        await self._conformance("close")
