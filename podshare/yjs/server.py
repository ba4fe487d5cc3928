"""A pycrdt-websocket server whose rooms span pods: multi-server Yjs for real editors.

Needs the ``yjs-server`` extra (``pip install "podshare[yjs-server]"``: pycrdt-websocket
and websockets). Run one `YjsWebsocketServer` per pod, all on the same
transport; y-websocket clients connect to any pod and edit together:

```python
async with (
    RedisTransport(url) as transport,
    YjsWebsocketServer(transport) as server,
    serve_websockets(server, "0.0.0.0", 1234),
):
    await anyio.sleep_forever()
```

Each room (the websocket URL's path, without its query string) is a pycrdt-websocket
``YRoom`` bridged to the same room on every other pod by a
[`RoomBridge`][podshare.yjs.RoomBridge], with:

- **sync only with the content**: a client's sync is answered once the pod holds the
  room's cross-pod state (every pod serving the room answered), or after the bridge's
  ``sync_timeout`` (5 s by default) when a pod stays silent;
- **awareness across pods** ([`AwarenessBridge`][podshare.yjs.awareness.AwarenessBridge]), with the
  clients of a pod that dies removed once the presence store sees it down, and a
  client's state removed when its connection closes, however it closes;
- a new client receives the awareness states already known, at once;
- **persistence** when ``room_options={"persistence": ...}`` is given
  ([`podshare.yjs.persistence`][podshare.yjs.persistence]).

A presence store (``Store("yjs-presence", transport)``) is opened by the server unless
one is given; it holds the rooms' members and awareness entries, all ephemeral.

`provider_factory` is the smaller alternative for a plain ``WebsocketServer``:
documents are bridged, but without awareness across pods or the wait for content.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import pycrdt

try:
    from pycrdt.websocket import WebsocketServer, YRoom
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.yjs.server needs pycrdt-websocket: pip install 'podshare[yjs-server]'"
    ) from exc

from podshare.exceptions import ConfigurationError, DecodeError
from podshare.store.store import Store
from podshare.transport.base import Transport
from podshare.yjs import _protocol
from podshare.yjs._protocol import AwarenessEntry, encode_awareness
from podshare.yjs.awareness import AwarenessBridge, _state_json
from podshare.yjs.bridge import RoomBridge

__all__ = [
    "BridgedRoom",
    "WebsocketsChannel",
    "YjsWebsocketServer",
    "provider_factory",
    "room_name",
    "serve_websockets",
]

#: The name of the presence store a server opens when none is given.
PRESENCE_STORE = "yjs-presence"
#: The largest websocket message `serve_websockets` accepts by default (a paste
#: of that size still reaches the room).
DEFAULT_MAX_SIZE = 64 * 1024 * 1024

_log = logging.getLogger("podshare.yjs")
# Seconds a room's bridge may take to start, on top of its sync_timeout.
_START_GRACE = 5.0


def room_name(path: str) -> str:
    """The room a websocket path names: the path without its query string.

    y-websocket clients connect to ``{server}/{room}?{params}``.

    Example:
        >>> room_name("/notes/42?token=abc")
        '/notes/42'
    """
    return path.split("?", 1)[0]


def log_and_continue(exception: Exception, log: logging.Logger) -> bool:
    """pycrdt-websocket exception handler: log the exception, keep the server running."""
    log.error("pycrdt-websocket: %r", exception, exc_info=exception)
    return True


class _TrackedChannel:
    """A client's channel that remembers the awareness client ids it announced."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel
        self.clients: set[int] = set()

    @property
    def path(self) -> str:
        return str(self._channel.path)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        message: bytes = await self._channel.__anext__()
        if message[:1] == bytes([_protocol.AWARENESS]):
            try:
                entries = _protocol.decode_awareness(_protocol.parse_awareness_message(message))
            except DecodeError:
                return message  # pycrdt-websocket's own handling reports it
            for entry in entries:
                if entry.removed:
                    self.clients.discard(entry.client)
                else:
                    self.clients.add(entry.client)
        return message

    async def send(self, message: bytes) -> None:
        await self._channel.send(message)

    async def recv(self) -> bytes:
        return await self.__anext__()


class BridgedRoom(YRoom):
    """A pycrdt-websocket room whose document and awareness span the pods.

    Made by `YjsWebsocketServer`; ``bridge`` is its
    [`RoomBridge`][podshare.yjs.RoomBridge], ``awareness_bridge`` its
    [`AwarenessBridge`][podshare.yjs.awareness.AwarenessBridge].
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        presence: Store[Any],
        *,
        ready: bool = True,
        exception_handler: Callable[[Exception, logging.Logger], bool] | None = None,
        log: logging.Logger | None = None,
        room_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            ready=ready,
            exception_handler=exception_handler,
            log=log,
            provider_factory=self._provider,
        )
        #: The room's name.
        self.name = name
        #: The room's bridge to the other pods.
        self.bridge = RoomBridge(
            self.ydoc, transport, name, presence=presence, logger=log, **(room_options or {})
        )
        #: The room's awareness bridge.
        self.awareness_bridge = AwarenessBridge(
            self.awareness, presence, self.bridge.topic, forward=self.broadcast, logger=log
        )
        #: Messages that could not be sent to a client (its connection was closing).
        self.send_failures = 0

    # pycrdt-websocket calls provider_factory(doc=..., log=..., path=...): the names stay.
    def _provider(self, doc: Any = None, log: Any = None, path: Any = None) -> Any:  # noqa: ARG002
        return self._bridged()

    @asynccontextmanager
    async def _bridged(self) -> AsyncIterator[None]:
        async with self.bridge, self.awareness_bridge:
            yield

    async def broadcast(self, message: bytes) -> None:
        """Send ``message`` to every client of this room on this pod (failures counted)."""
        async with anyio.create_task_group() as tg:
            for client in list(self.clients):
                tg.start_soon(self._send_quietly, client, message)

    async def _send_quietly(self, client: Any, message: bytes) -> None:
        try:
            await client.send(message)
        except Exception:  # noqa: BLE001  # a closing connection; its serve() ends by itself
            self.send_failures += 1

    def _known_states(self) -> bytes | None:
        entries = [
            AwarenessEntry(client, int(self.awareness.meta[client]["clock"]), _state_json(state))
            for client, state in self.awareness.states.items()
            if client != self.awareness.client_id and client in self.awareness.meta
        ]
        return _protocol.awareness_message(encode_awareness(entries)) if entries else None

    async def serve(self, channel: Any) -> None:
        """Serve one client: once the room holds its cross-pod state (or the bridge's
        ``sync_timeout`` passed), send it the known awareness states and run the Yjs
        protocol with it; when it leaves, remove the awareness states it announced."""
        # The bridge sets it by sync_timeout after it opened; bounded here too, in case
        # the room's provider never started.
        with anyio.move_on_after(self.bridge.sync_timeout + _START_GRACE):
            await self.bridge.synced.wait()
        tracked = _TrackedChannel(channel)
        known = self._known_states()
        try:
            if known is not None:
                await self._send_quietly(tracked, known)
            await super().serve(tracked)
        finally:
            with anyio.CancelScope(shield=True):
                await self._forget(tracked)

    async def _forget(self, tracked: _TrackedChannel) -> None:
        gone = [c for c in tracked.clients if c in self.awareness.states]
        if not gone:
            return
        clocks = {c: int(self.awareness.meta[c]["clock"]) for c in gone}
        self.awareness.remove_awareness_states(gone, tracked)
        removal = encode_awareness([AwarenessEntry(c, clocks[c], "null") for c in gone])
        await self.broadcast(_protocol.awareness_message(removal))


class YjsWebsocketServer(WebsocketServer):
    """A pycrdt-websocket ``WebsocketServer`` whose rooms are shared by every pod.

    Args:
        transport: the open transport every pod uses.
        presence: an open ``Store`` for room members and awareness; default: the
            server opens ``Store("yjs-presence", transport)`` for its lifetime.
        node_id: this pod's id (for the presence store it opens); default the store's.
        room_options: keyword arguments for each room's
            [`RoomBridge`][podshare.yjs.RoomBridge] (``persistence``, ``sync_timeout``,
            ``resync_interval``, ``on_error``, ...).
        presence_options: keyword arguments for the presence store it opens
            (``hydrate_timeout``, ``down_after``, ...).
        rooms_ready: as pycrdt-websocket's ``WebsocketServer``.
        auto_clean_rooms: as pycrdt-websocket's ``WebsocketServer``.
        log: as pycrdt-websocket's ``WebsocketServer``.
        exception_handler: as pycrdt-websocket's; default: log and keep serving.

    Use it as an async context manager, and hand it connections with
    `serve_websockets` (or ``await server.serve(channel)`` from any websocket
    framework).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        presence: Store[Any] | None = None,
        node_id: str | None = None,
        room_options: dict[str, Any] | None = None,
        presence_options: dict[str, Any] | None = None,
        rooms_ready: bool = True,
        auto_clean_rooms: bool = True,
        exception_handler: Callable[[Exception, logging.Logger], bool] | None = log_and_continue,
        log: logging.Logger | None = None,
    ) -> None:
        if not isinstance(transport, Transport):
            raise ConfigurationError(f"transport must be a podshare Transport, not {transport!r}")
        for option in ("presence", "logger"):
            if option in (room_options or {}):
                raise ConfigurationError(f"room_options cannot set {option!r}")
        super().__init__(
            rooms_ready=rooms_ready,
            auto_clean_rooms=auto_clean_rooms,
            exception_handler=exception_handler,
            log=log or _log,
        )
        self._transport = transport
        self._presence = presence
        self._own_presence = presence is None
        self._node_id = node_id
        self._room_options = dict(room_options or {})
        self._presence_options = {"hydrate_timeout": 2.0, **(presence_options or {})}
        self._presence_stack: AsyncExitStack | None = None

    @property
    def presence(self) -> Store[Any]:
        """The presence store (open while the server is)."""
        if self._presence is None:
            raise ConfigurationError("the server is not open")
        return self._presence

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            if self._own_presence:
                self._presence = await stack.enter_async_context(
                    Store(
                        PRESENCE_STORE,
                        self._transport,
                        node_id=self._node_id,
                        **self._presence_options,
                    )
                )
            await super().__aenter__()
        except BaseException:
            await stack.aclose()
            raise
        self._presence_stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)  # type: ignore[no-untyped-call]
        finally:
            stack, self._presence_stack = self._presence_stack, None
            if stack is not None:
                await stack.aclose()
            if self._own_presence:
                self._presence = None

    async def get_room(self, name: str) -> YRoom:
        """The room for a websocket path (its query string dropped), started."""
        name = room_name(name)
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = BridgedRoom(
                name,
                self._transport,
                self.presence,
                ready=self.rooms_ready,
                exception_handler=self.exception_handler,
                log=self.log,
                room_options=self._room_options,
            )
        await self.start_room(room)
        return room


def provider_factory(transport: Transport, **options: Any) -> Callable[..., Any]:
    """A pycrdt-websocket ``provider_factory`` bridging each room's document.

    The smaller recipe: ``WebsocketServer(provider_factory=provider_factory(tr))``. The
    documents are kept in sync across pods by a [`RoomBridge`][podshare.yjs.RoomBridge] each
    (``options`` go to it); awareness does not cross pods and clients are answered at
    once, even before the room's content arrived: use `YjsWebsocketServer` for
    both.
    """

    def factory(doc: pycrdt.Doc[Any] | None = None, log: Any = None, path: str = "") -> Any:
        if doc is None:
            raise ConfigurationError("provider_factory needs the room's doc")
        return RoomBridge(doc, transport, room_name(path), logger=log, **options)

    return factory


class WebsocketsChannel:
    """A pycrdt ``Channel`` over a connection of the ``websockets`` library (asyncio).

    Sending to a closed connection does nothing (the room's other clients must not fail
    with it); iteration ends when the connection closes; text frames are ignored.
    """

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @property
    def path(self) -> str:
        """The request's path (with its query string)."""
        return str(self._connection.request.path)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = await self._connection.recv()
            except ConnectionClosed:
                raise StopAsyncIteration from None
            if isinstance(message, bytes):
                return message

    async def recv(self) -> bytes:
        """The next binary message (``StopAsyncIteration`` once closed)."""
        return await self.__anext__()

    async def send(self, message: bytes) -> None:
        """Send ``message``; nothing happens if the connection is closed."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self._connection.send(message)
        except ConnectionClosed:
            pass  # the client left; its serve() ends on its own


@asynccontextmanager
async def serve_websockets(
    server: WebsocketServer,
    host: str,
    port: int,
    *,
    max_size: int | None = DEFAULT_MAX_SIZE,
    **options: Any,
) -> AsyncIterator[Any]:
    """Accept websocket connections on ``host:port`` for ``server`` (asyncio only).

    Yields the ``websockets`` server (``.sockets`` tells the port when ``port`` is 0).
    ``max_size`` is the largest message accepted from a client (websockets' own default,
    1 MiB, would close a connection that pastes more); ``options`` go to
    ``websockets.asyncio.server.serve``.
    """
    from websockets.asyncio.server import serve

    async def handler(connection: Any) -> None:
        await server.serve(WebsocketsChannel(connection))

    async with serve(handler, host, port, max_size=max_size, **options) as ws_server:
        yield ws_server
