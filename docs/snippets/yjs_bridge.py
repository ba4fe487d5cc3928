"""Two pods keep one live pycrdt document in sync (runs as it is: memory transport)."""

import anyio
import pycrdt

from podshare.transport import MemoryNetwork, MemoryTransport
from podshare.yjs import open_provider


async def main() -> None:
    network = MemoryNetwork()
    ours, theirs = pycrdt.Doc(), pycrdt.Doc()
    async with (
        MemoryTransport(network=network, name="pod-1") as tr1,
        MemoryTransport(network=network, name="pod-2") as tr2,
        open_provider(ours, tr1, "notes"),
        open_provider(theirs, tr2, "notes") as bridge,
    ):
        await bridge.synced.wait()  # pod-1 answered: pod-2 holds the room
        text = theirs.get("text", type=pycrdt.Text)
        with anyio.fail_after(5):
            async with theirs.events() as events:
                ours.get("text", type=pycrdt.Text).insert(0, "hello from pod 1")
                async for _ in events:
                    if str(text):
                        break
        print(str(text))
        print(bridge.stats().updates_applied, "update applied, none sent back")


anyio.run(main)
