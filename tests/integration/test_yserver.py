"""podshare.yjs.server with Python websocket clients: the pycrdt-websocket integration.

(The Node.js y-websocket clients are in test_yjs_interop.py.) Raw clients here speak
y-protocols themselves, so the tests can close a connection abruptly and read exactly
which awareness messages a pod sends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

pycrdt = pytest.importorskip("pycrdt", reason="the server needs the yjs extra")
pytest.importorskip("pycrdt.websocket", reason="the server needs the yjs-server extra")
websockets = pytest.importorskip("websockets", reason="the server needs the yjs-server extra")

from pycrdt.websocket import WebsocketServer  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from podshare.transport import MemoryNetwork, MemoryTransport  # noqa: E402
from podshare.yjs import _protocol  # noqa: E402
from podshare.yjs.server import (  # noqa: E402
    WebsocketsChannel,
    YjsWebsocketServer,
    provider_factory,
    serve_websockets,
)
from tests.integration._ynode import pod  # noqa: E402

# The websockets library runs on asyncio only.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
]

TIMEOUT = 10


class RawClient:
    """A websocket client speaking y-protocols by hand."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.doc = pycrdt.Doc()
        self.awareness: list[_protocol.AwarenessEntry] = []
        self.synced = anyio.Event()
        self.changed = anyio.Event()

    async def run(self) -> None:
        async for message in WebsocketsChannel(self.connection):
            if message[0] == _protocol.AWARENESS:
                update = _protocol.parse_awareness_message(message)
                self.awareness.extend(_protocol.decode_awareness(update))
            else:
                kind, payload = _protocol.parse_sync_message(message)
                if kind == _protocol.STEP1:
                    reply = self.doc.get_update(payload)
                    await self.connection.send(_protocol.sync_message(_protocol.STEP2, reply))
                else:
                    if payload != b"\x00\x00":
                        self.doc.apply_update(payload)
                    if kind == _protocol.STEP2:
                        self.synced.set()
            self.changed.set()
            self.changed = anyio.Event()

    async def say(self, client: int, clock: int, state: dict[str, Any] | None) -> None:
        raw = "null" if state is None else json.dumps(state)
        entry = _protocol.AwarenessEntry(client, clock, raw)
        message = _protocol.awareness_message(_protocol.encode_awareness([entry]))
        await self.connection.send(message)

    async def until(self, condition: Any) -> None:
        with anyio.fail_after(TIMEOUT):
            while not condition():
                await self.changed.wait()

    def state_of(self, client: int) -> Any:
        entries = [e for e in self.awareness if e.client == client]
        return json.loads(entries[-1].state) if entries else None


@asynccontextmanager
async def raw_client(url: str, room: str) -> AsyncIterator[RawClient]:
    async with connect(f"{url}/{room}") as connection:
        client = RawClient(connection)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.run)
            await connection.send(_protocol.sync_message(_protocol.STEP1, client.doc.get_state()))
            with anyio.fail_after(TIMEOUT):
                await client.synced.wait()
            yield client
            tg.cancel_scope.cancel()


@asynccontextmanager
async def two_pods() -> AsyncIterator[tuple[str, str]]:
    net = MemoryNetwork()
    async with (
        pod(MemoryTransport(network=net, name="m1"), "pod-1") as p1,
        pod(MemoryTransport(network=net, name="m2"), "pod-2") as p2,
    ):
        yield p1.url, p2.url


async def test_an_abruptly_closed_clients_cursor_is_removed_on_every_pod() -> None:
    async with two_pods() as (url1, url2), raw_client(url2, "doc") as watcher:
        async with raw_client(url1, "doc") as leaver:
            await leaver.say(41, 1, {"user": "leaver"})
            await watcher.until(lambda: watcher.state_of(41) == {"user": "leaver"})
            # Gone without saying so: no null state, the TCP connection just closes.
            leaver.connection.transport.abort()
        await watcher.until(lambda: watcher.awareness[-1].client == 41)
        await watcher.until(lambda: watcher.state_of(41) is None)


async def test_a_new_client_receives_the_states_already_known() -> None:
    async with two_pods() as (url1, url2), raw_client(url1, "doc") as first:
        await first.say(7, 3, {"user": "first"})
        async with raw_client(url2, "doc") as second:
            await second.until(lambda: second.state_of(7) == {"user": "first"})
            assert [e.clock for e in second.awareness if e.client == 7][-1] == 3


async def test_documents_sync_and_the_room_name_ignores_the_query_string() -> None:
    async with (
        two_pods() as (url1, url2),
        raw_client(url1, "doc?token=1") as one,
        raw_client(url2, "doc?token=2") as two,
    ):
        with one.doc.transaction() as _:
            one.doc.get("t", type=pycrdt.Text).insert(0, "hello")
        update = one.doc.get_update(two.doc.get_state())
        await one.connection.send(_protocol.sync_message(_protocol.UPDATE, update))
        await two.until(lambda: str(two.doc.get("t", type=pycrdt.Text)) == "hello")


async def test_provider_factory_bridges_plain_websocket_servers() -> None:
    net = MemoryNetwork()
    async with AsyncExitStack() as stack:
        urls = []
        for name in ("m1", "m2"):
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=name))
            server = await stack.enter_async_context(
                WebsocketServer(provider_factory=provider_factory(tr, sync_timeout=0.2))
            )
            ws = await stack.enter_async_context(serve_websockets(server, "127.0.0.1", 0))
            urls.append(f"ws://127.0.0.1:{ws.sockets[0].getsockname()[1]}")
        async with raw_client(urls[0], "doc") as one, raw_client(urls[1], "doc") as two:
            one.doc.get("t", type=pycrdt.Text).insert(0, "through a provider_factory")
            await one.connection.send(
                _protocol.sync_message(_protocol.UPDATE, one.doc.get_update())
            )
            await two.until(
                lambda: str(two.doc.get("t", type=pycrdt.Text)) == "through a provider_factory"
            )


async def test_the_server_refuses_bad_options() -> None:
    from podshare.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError):
        YjsWebsocketServer(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        YjsWebsocketServer(MemoryTransport(), room_options={"presence": None})
