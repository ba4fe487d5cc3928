"""Live pycrdt documents kept in sync across pods: multi-server Yjs over any transport.

Every pod that opens the same *room* edits the same ``pycrdt.Doc``, over Redis, the TCP
mesh or memory, with no Yjs server in between:

```python
async with open_provider(doc, transport, "chat:42") as bridge:
    await bridge.synced.wait()
    doc.get("messages", type=Array).append("hi")   # reaches every pod in the room
```

The pieces:

- `RoomBridge` (what `open_provider` opens): one live document in one room;
  it survives transport faults, never echoes, fragments large updates, answers
  ``synced`` only once it holds the room's state, and runs anti-entropy by state
  vectors. See [`podshare.yjs.bridge`][podshare.yjs.bridge].
- [`podshare.yjs.server`][podshare.yjs.server] (needs the ``yjs-server`` extra): a
  pycrdt-websocket ``WebsocketServer`` whose rooms are bridged, with awareness
  (cursors, presence) across pods; the recipe for a multi-server collaborative editor
  behind y-websocket clients.
- [`podshare.yjs.persistence`][podshare.yjs.persistence]: load and save rooms, so they
  outlive every pod.
- `TransportChannel`: a ``pycrdt.Channel`` for code that runs pycrdt's own
  ``Provider`` (which echoes every edit it receives; prefer the bridge).
- `room_topic`: how room names (of any length) map to transport topics.

Why not a [`Store`][podshare.Store] of [`YDoc`][podshare.crdt.YDoc] values? Use that to
cache many documents as values; use this to keep one *live* ``Doc`` (with its observers,
undo manager and so on) in sync, as a Yjs editor backend does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from logging import Logger
from typing import Any

try:
    import pycrdt
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("podshare.yjs needs pycrdt: pip install 'podshare[yjs]'") from exc

from podshare.exceptions import PodshareError
from podshare.transport.base import Transport
from podshare.yjs._names import room_topic as room_topic
from podshare.yjs.bridge import BridgeStats as BridgeStats
from podshare.yjs.bridge import RoomBridge as RoomBridge
from podshare.yjs.channel import TransportChannel as TransportChannel
from podshare.yjs.persistence import RoomPersistence as RoomPersistence
from podshare.yjs.persistence import StorePersistence as StorePersistence

__all__ = [
    "BridgeStats",
    "RoomBridge",
    "RoomPersistence",
    "StorePersistence",
    "TransportChannel",
    "open_provider",
    "room_topic",
]


@asynccontextmanager
async def open_provider(
    doc: pycrdt.Doc[Any],
    transport: Transport,
    room: str,
    *,
    node_id: str | None = None,
    resync_interval: float | None = 30.0,
    on_error: Callable[[PodshareError], object] | None = None,
    log: Logger | None = None,
    **options: Any,
) -> AsyncIterator[RoomBridge]:
    """Keep ``doc`` in sync with every other pod's doc in ``room`` while inside.

    Yields the `RoomBridge`; its ``synced`` event is set once the pods in the
    room answered (or after ``sync_timeout``, 5 s by default, in a room where nobody
    answers). On exit, edits already made are sent first. ``options`` go to
    `RoomBridge` (``presence``, ``persistence``, ``sync_timeout``, ...).

    Example:

    ```python
    doc = pycrdt.Doc()
    async with RedisTransport(url) as tr, open_provider(doc, tr, "notes"):
        doc.get("text", type=pycrdt.Text).insert(0, "hello")   # every pod sees it
    ```
    """
    async with RoomBridge(
        doc,
        transport,
        room,
        node_id=node_id,
        resync_interval=resync_interval,
        on_error=on_error,
        logger=log,
        **options,
    ) as bridge:
        yield bridge
