"""Rooms that outlive every pod: a RoomPersistence (runs as it is: memory transport).

In production the persistence would be a database, or a ``StorePersistence`` over a
``Store[YDoc]`` made durable by a store persistence backend.
"""

import anyio
import pycrdt

from podshare.transport import MemoryTransport
from podshare.yjs import RoomBridge


class InMemoryRooms:
    """The smallest RoomPersistence: a dict (use a database or a durable store)."""

    def __init__(self) -> None:
        self.rooms: dict[str, bytes] = {}

    async def load(self, room: str) -> bytes | None:
        return self.rooms.get(room)

    async def save(self, room: str, state: bytes) -> None:
        self.rooms[room] = state


async def main() -> None:
    saved = InMemoryRooms()
    async with MemoryTransport() as tr:
        doc = pycrdt.Doc()
        async with RoomBridge(doc, tr, "notes", persistence=saved, sync_timeout=0.1):
            doc.get("text", type=pycrdt.Text).insert(0, "kept across restarts")
        # Every pod stopped. A new one starts from the saved state:
        fresh = pycrdt.Doc()
        async with RoomBridge(fresh, tr, "notes", persistence=saved, sync_timeout=0.1):
            print(str(fresh.get("text", type=pycrdt.Text)))


anyio.run(main)
