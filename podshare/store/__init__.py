"""The replicated map: [`Store`][podshare.Store], its events, statistics and value codecs.

Example:
    >>> from podshare.store import Store, EventKind
    >>> EventKind.SET.value
    'set'
"""

from __future__ import annotations

from podshare.store.codec import Codec as Codec
from podshare.store.codec import JsonCodec as JsonCodec
from podshare.store.codec import MsgpackCodec as MsgpackCodec
from podshare.store.events import Event as Event
from podshare.store.events import EventKind as EventKind
from podshare.store.events import Stats as Stats
from podshare.store.store import Store as Store
from podshare.store.watch import Watch as Watch

__all__ = [
    "Codec",
    "Event",
    "EventKind",
    "JsonCodec",
    "MsgpackCodec",
    "Stats",
    "Store",
    "Watch",
]
