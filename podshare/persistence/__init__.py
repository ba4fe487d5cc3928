"""Persistence: durable state for stores, so a fleet that stops and starts keeps its map.

``Persistence`` is the protocol (two methods); the backends live in their own modules:

- [`RedisPersistence`][podshare.persistence.RedisPersistence]: state in Redis beside a
  [`RedisTransport`][podshare.transport.RedisTransport]'s channels (the default there);
  needs the ``redis`` extra, imported on first use;
- [`SQLitePersistence`][podshare.persistence.SQLitePersistence]: an SQLite file on a
  pod's own volume (for TCP meshes);
- [`MemoryPersistence`][podshare.persistence.MemoryPersistence]: an in-process place
  several stores share, to test cold restarts without a server.

[`check_persistence`][podshare.testing.check_persistence] verifies any backend,
yours included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podshare.persistence.base import PersistedState as PersistedState
from podshare.persistence.base import Persistence as Persistence
from podshare.persistence.memory import MemoryPersistence as MemoryPersistence
from podshare.persistence.sqlite import SQLitePersistence as SQLitePersistence
from podshare.persistence.stats import PersistenceStats as PersistenceStats

__all__ = [
    "MemoryPersistence",
    "PersistedState",
    "Persistence",
    "PersistenceStats",
    "RedisPersistence",
    "SQLitePersistence",
]

if TYPE_CHECKING:
    from podshare.persistence.redis import RedisPersistence as RedisPersistence


def __getattr__(name: str) -> object:
    # RedisPersistence needs the optional ``redis`` extra: import it on first use, so
    # ``import podshare.persistence`` works without redis-py (whose absence the
    # module reports with the install hint).
    if name == "RedisPersistence":
        from podshare.persistence.redis import RedisPersistence

        return RedisPersistence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
