"""Persistence: durable state for stores, so a fleet that stops and starts keeps its map.

``Persistence`` is the protocol (two methods); the backends live in their own modules.
"""

from __future__ import annotations

from podshare.persistence.base import PersistedState as PersistedState
from podshare.persistence.base import Persistence as Persistence

__all__ = ["PersistedState", "Persistence"]
