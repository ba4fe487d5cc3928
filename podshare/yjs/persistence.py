"""Rooms that outlive every pod: a small hook to load and save a room's state.

A [`RoomBridge`][podshare.yjs.RoomBridge] given a ``persistence`` loads the room's saved state
when it opens (before it asks its peers, so a room reopened after a full restart starts
from its last save), saves the whole state ``save_interval`` seconds after changes, and
saves once more when it closes.

Anything with two async methods is a persistence (`RoomPersistence`). Several
pods save the same room, each whenever it changed, so a backend that *replaces* the
saved state can be overwritten by a pod that is briefly behind; a backend that *joins*
states (as a CRDT) cannot lose an edit. `StorePersistence` joins: it keeps rooms
as [`YDoc`][podshare.crdt.YDoc] values of a ``Store[YDoc]``, which merges, replicates
and, with a durable store persistence, survives a full restart.

Example:
    >>> import anyio
    >>> from podshare.yjs.persistence import RoomPersistence
    >>> class InMemory:
    ...     def __init__(self) -> None:
    ...         self.rooms: dict[str, bytes] = {}
    ...     async def load(self, room: str) -> bytes | None:
    ...         return self.rooms.get(room)
    ...     async def save(self, room: str, state: bytes) -> None:
    ...         self.rooms[room] = state
    >>> isinstance(InMemory(), RoomPersistence)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from podshare.crdt.ydoc import YDoc
from podshare.yjs._names import room_topic

if TYPE_CHECKING:
    from podshare.store.store import Store

__all__ = ["RoomPersistence", "StorePersistence"]


@runtime_checkable
class RoomPersistence(Protocol):
    """Where a room's state is kept between lives of the pods (see the module docstring).

    ``state`` is a Yjs v1 update holding the whole document
    (``pycrdt.Doc.get_update()``). Both methods may raise; the bridge reports the error
    and carries on (it retries a failed save at the next change).
    """

    async def load(self, room: str) -> bytes | None:
        """The last state saved for ``room``, or ``None`` for a room never saved."""
        ...

    async def save(self, room: str, state: bytes) -> None:
        """Keep ``state`` as ``room``'s state."""
        ...


class StorePersistence:
    """Rooms as [`YDoc`][podshare.crdt.YDoc] values of an open ``Store[YDoc]``.

    Saving joins the state into the room's value (Yjs's merge), so pods saving in any
    order never lose each other's edits; the store ships only the difference. Make the
    store durable with a store persistence backend and the rooms survive a full restart
    of every pod. Keys are ``key_prefix`` followed by the room's topic
    ([`room_topic`][podshare.yjs.room_topic], which bounds their length).

    Example:

    ```python
    async with Store[YDoc]("yjs-rooms", transport, persistence=backend) as rooms:
        persistence = StorePersistence(rooms)
        async with RoomBridge(doc, transport, "notes", persistence=persistence):
            ...
    ```
    """

    def __init__(self, store: Store[YDoc], *, key_prefix: str = "") -> None:
        self._store = store
        self._prefix = key_prefix

    async def load(self, room: str) -> bytes | None:
        """The room's value as one update (``None`` when absent)."""
        value = self._store.get(self._key(room))
        return None if value is None else value.to_update()

    async def save(self, room: str, state: bytes) -> None:
        """Join ``state`` into the room's value."""
        incoming = YDoc.from_update(state)

        def join(current: YDoc | None) -> YDoc:
            return incoming if current is None else current.merge(incoming)

        await self._store.update(self._key(room), join)

    def _key(self, room: str) -> str:
        return self._prefix + room_topic(room)
