"""The persistence glue of a `Store`: loading at open, the persister task, writer
election for a shared backend, and the last write at close.

The anyio side of persistence; the replica core builds and joins the records
(`Replica.persist_changes()`, `Replica.load()`, `podshare.store.records`). Every
``persist_interval`` the persister writes what changed since the last write; a failing
backend is counted, reported once until it works again, and retried with backoff (up
to 30 s), the failed keys kept as changed. A shared backend (``backend.shared``: one
Redis for every pod) is written by one replica only, the lowest live node id of the
store; a replica that takes the role over first joins what the backend holds, then
writes the whole joined state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio

from podshare._limits import type_name
from podshare.exceptions import ConfigurationError, PersistenceError, PodshareError
from podshare.persistence.base import Persistence
from podshare.store.replica import Replica

__all__ = ["Persisting", "resolve_backend"]

# The longest pause between two attempts of a failing backend (seconds).
_BACKOFF_MAX = 30.0


def resolve_backend(option: Persistence | bool | None, transport: object) -> Persistence | None:
    """The backend a store uses: ``option`` itself, none (``False``), or for ``None`` the
    transport's ``default_persistence()`` (if it has one).

    Raises:
        ConfigurationError: the transport's default is not a `Persistence`.
    """
    if option is None:
        default = getattr(transport, "default_persistence", None)
        if callable(default):
            found = default()
            if found is not None and not isinstance(found, Persistence):
                raise ConfigurationError(f"{transport!r}.default_persistence() returned {found!r}")
            return found
        return None
    if option is not False:
        assert isinstance(option, Persistence)
        return option
    return None


class Persisting:
    """Moves one open store's replica to and from its persistence backend.

    Args:
        backend: the resolved backend.
        replica: the store's replica.
        name: the store's name (the backend's key).
        interval: seconds between two writes of what changed.
        after: drains the replica's outputs (the store's ``_after``), run after a load.
        report: reports an error (the store's ``on_error`` path).
        log: the store's logger.
    """

    __slots__ = (
        "_after",
        "_failing",
        "_interval",
        "_log",
        "_name",
        "_replica",
        "_report",
        "backend",
        "writer",
    )

    def __init__(
        self,
        backend: Persistence,
        replica: Replica[Any],
        *,
        name: str,
        interval: float,
        after: Callable[[], None],
        report: Callable[[PodshareError], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.backend = backend
        self._replica = replica
        self._name = name
        self._interval = interval
        self._after = after
        self._report = report
        self._log = log
        #: This replica wrote the backend last (a shared backend: it holds the role).
        self.writer = False
        self._failing = False

    async def load(self, give_up_after: float) -> None:
        """Join what the backend holds into the replica (at open): a failure, or no answer
        within ``give_up_after`` seconds, is counted and reported."""
        replica = self._replica
        replica.track_changes()
        try:
            with anyio.fail_after(give_up_after):
                persisted = await self.backend.load(self._name)
        except Exception as exc:  # noqa: BLE001  # a backend's failure: counted, reported
            replica.stats.persist_errors += 1
            self._report(persistence_error("loading", self._name, exc))
            return
        loaded = replica.load(persisted, _now_ms())
        self._after()
        self._log.debug("store %r loaded %d persisted entries", self._name, loaded)

    def is_writer(self) -> bool:
        """Whether this replica writes the backend now (a shared one: the lowest live
        node id of the store does)."""
        if not self.backend.shared:
            return True
        replica = self._replica
        return min(replica.members()) == replica.node_id

    def writes_at_close(self) -> bool:
        """Whether a clean close writes what the interval had not (decided before the
        replica leaves: the elected writer is the lowest live member, this one included)."""
        return self.writer or self.is_writer()

    async def run(self) -> None:
        """Every ``interval``: write what changed (retrying failures with backoff)."""
        backoff = self._interval
        while True:
            await anyio.sleep(backoff)
            ok = await self.once()
            backoff = self._interval if ok else min(2 * backoff, _BACKOFF_MAX)

    async def once(self, *, closing: bool = False) -> bool:
        """One write of what changed; False when the backend failed."""
        backend = self.backend
        replica = self._replica
        now = _now_ms()
        if not closing and not self.is_writer():
            self.writer = False
            replica.persist_changes(now)  # the writer persists them; forget them here
            return True
        full = not self.writer and backend.shared
        if full:
            # Taking over a shared backend: join what it holds (another writer's work this
            # replica may lack, or everything, if loading at open had failed), then write
            # the whole joined state. Nothing it holds is dropped unless this replica
            # knows it deleted.
            try:
                current = await backend.load(self._name)
            except Exception as exc:  # noqa: BLE001  # a backend's failure: counted, reported
                return self._failed("loading", exc)
            replica.load(current, now, live=True)
            self._after()
        records, meta = replica.persist_changes(now, everything=full)
        if full:
            for key in current.records:
                records.setdefault(key, None)  # refused by the horizon: deleted here
        if not records and not full:
            return True
        try:
            await backend.write(self._name, records, meta)
        except Exception as exc:  # noqa: BLE001  # a backend's failure: counted, reported
            replica.changes_failed(records, now)
            return self._failed("writing", exc)
        self.writer = True
        stats = replica.stats
        stats.persist_writes += 1
        stats.persist_records += len(records)
        stats.persist_bytes += sum(len(r) for r in records.values() if r is not None)
        if self._failing:
            self._failing = False
            self._log.info("store %r: persistence works again", self._name)
        return True

    def _failed(self, what: str, exc: BaseException) -> bool:
        self._replica.stats.persist_errors += 1
        if not self._failing:
            self._failing = True
            self._report(persistence_error(what, self._name, exc))
        return False


def persistence_error(what: str, name: str, exc: BaseException) -> PodshareError:
    """The error reported when ``what`` ("loading", "writing") the state of ``name`` failed."""
    error = PersistenceError(
        f"store {name!r}: {what} its persisted state failed ({type_name(exc)}: {exc}); "
        "writes go on, and the state is written once the backend is back"
    )
    error.__cause__ = exc
    return error


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
