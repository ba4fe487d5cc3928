"""Live pycrdt documents kept in sync across pods: a ``pycrdt.Channel`` over any transport.

pycrdt's :class:`pycrdt.Provider` synchronises one ``Doc`` through a ``Channel`` with the
Yjs sync protocol (sync step 1: "here is my state vector"; step 2: "here is what you
lack"; then updates). pycrdt-websocket runs it over one websocket to one server.
:class:`TransportChannel` runs it over a podshare transport instead, so every pod that
opens the same *room* edits the same document, over Redis, the TCP mesh or memory, with
no Yjs server in between::

    async with open_provider(doc, transport, "chat:42"):
        doc.get("messages", type=Array).append("hi")   # reaches every pod in the room

A transport is broadcast, while the Yjs protocol is a conversation between two peers,
so the channel adds what a room of many peers needs:

- each message travels in a small envelope naming its sender; a pod ignores its own;
- sync step 1 is broadcast; each peer answers with step 2 to the asker's inbox topic
  (``yjs/{room}#{node}``), and, when the step 1 came on the broadcast topic, also sends
  its own step 1 to the asker, so a newcomer both receives and contributes content;
- updates are broadcast (``yjs/{room}``);
- after the transport reports a gap (a reconnect), and every ``resync_interval`` seconds
  if set, the channel broadcasts a fresh step 1, which repairs lost updates both ways;
- malformed messages are counted (``decode_errors``), reported to ``on_error`` and
  dropped before pycrdt sees them, so a bad peer cannot stop the provider.

Why not a :class:`~podshare.Store` of :class:`~podshare.crdt.YDoc` values? Use that to
cache many documents as values; use this to keep one *live* ``Doc`` (with its observers,
undo manager and so on) in sync, as a Yjs editor backend does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from logging import Logger
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from podshare.exceptions import ClosedError, ConfigurationError, DecodeError, PodshareError
from podshare.transport.base import GapReporting, Transport

__all__ = ["TransportChannel", "open_provider"]

_VERSION = 1
_SYNC, _STEP1, _STEP2, _UPDATE = 0, 0, 1, 2
_MAX_NAME = 200
_EMPTY_UPDATE = b"\x00\x00"


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME or "#" in value:
        raise ConfigurationError(
            f"{what} must be a non-empty str of at most {_MAX_NAME} characters without '#', "
            f"not {value!r}"
        )
    if len(value.encode()) > 255:
        raise ConfigurationError(f"{what} must encode to at most 255 UTF-8 bytes")
    return value


def _read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated or overlong length in a Yjs message")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _is_panic(exc: BaseException) -> bool:
    # pyo3's PanicException derives from BaseException; see podshare.crdt.ydoc.
    return not isinstance(exc, Exception) and type(exc).__name__ == "PanicException"


def _check_sync_message(message: bytes) -> None:
    """Raise DecodeError unless ``message`` is a well-formed Yjs sync message pycrdt accepts.

    pycrdt's Provider would otherwise fail (and stop) on a bad one; awareness and other
    message types are not handled by the Provider and are refused too.
    """
    if len(message) < 3 or message[0] != _SYNC or message[1] not in (_STEP1, _STEP2, _UPDATE):
        raise DecodeError("not a Yjs sync message")
    length, start = _read_var_uint(message, 2)
    if start + length != len(message):
        raise DecodeError("a Yjs sync message whose length does not match")
    payload = message[start:]
    try:
        if message[1] == _STEP1:
            pycrdt.Doc().get_update(payload)  # checks the state vector decodes
        elif payload != _EMPTY_UPDATE:
            pycrdt.Doc().apply_update(payload)
    except Exception as exc:
        raise DecodeError(f"a Yjs sync message pycrdt refuses: {exc}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise DecodeError(f"a Yjs sync message pycrdt refuses: {exc}") from exc


class TransportChannel:
    """A ``pycrdt.Channel`` carrying the Yjs sync protocol over a podshare transport.

    Use it as an async context manager around a ``pycrdt.Provider`` (or use
    :func:`open_provider`, which does both). Entering subscribes to the room's broadcast
    topic and this node's inbox; leaving unsubscribes and ends iteration.

    Args:
        transport: any :class:`~podshare.transport.Transport` (already open).
        room: the document's name; every pod using the same room shares the document.
        node_id: this peer's id in the room (unique); default a random one.
        doc: the ``pycrdt.Doc`` the provider syncs. Needed to answer a newcomer's step 1
            with our own and to resync; without it the channel only relays.
        resync_interval: seconds between broadcast resyncs; ``None`` (default): only
            after the transport reports a gap.
        on_error: called with each :class:`~podshare.exceptions.PodshareError` for a
            dropped message.
        buffer: received messages queued for the provider before the readers wait.

    Example::

        async with TransportChannel(tr, "notes", doc=doc) as channel:
            async with pycrdt.Provider(doc, channel):
                ...
    """

    def __init__(
        self,
        transport: Transport,
        room: str,
        *,
        node_id: str | None = None,
        doc: pycrdt.Doc[Any] | None = None,
        resync_interval: float | None = None,
        on_error: Callable[[PodshareError], object] | None = None,
        buffer: int = 1024,
    ) -> None:
        self._transport = transport
        #: The room's name.
        self.room = _check_name("room", room)
        #: This peer's id in the room.
        self.node_id = _check_name("node_id", node_id if node_id is not None else uuid.uuid4().hex)
        if resync_interval is not None and not (
            isinstance(resync_interval, int | float) and resync_interval > 0
        ):
            raise ConfigurationError(
                f"resync_interval must be > 0 or None, not {resync_interval!r}"
            )
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer <= 0:
            raise ConfigurationError(f"buffer must be a positive int, not {buffer!r}")
        self._doc = doc
        self._resync_interval = resync_interval
        self._on_error = on_error
        self._buffer = buffer
        self._topic = f"yjs/{room}"
        self._header = bytes([_VERSION, len(self.node_id.encode())]) + self.node_id.encode()
        self._reply_to: str | None = None
        self._send: MemoryObjectSendStream[tuple[str, bool, bytes]] | None = None
        self._receive: MemoryObjectReceiveStream[tuple[str, bool, bytes]] | None = None
        self._stack: AsyncExitStack | None = None
        self._resync_needed: anyio.Event | None = None
        self._state = "new"
        #: Messages dropped because they were malformed.
        self.decode_errors = 0
        #: Messages received from other peers and handed to the provider.
        self.messages_received = 0
        #: Messages published.
        self.messages_sent = 0

    @property
    def path(self) -> str:
        """The room's broadcast topic (what pycrdt logs as the endpoint)."""
        return self._topic

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError("a TransportChannel cannot be entered twice")
        async with AsyncExitStack() as stack:
            send, receive = anyio.create_memory_object_stream[tuple[str, bool, bytes]](self._buffer)
            stack.enter_context(send)
            stack.enter_context(receive)
            self._send, self._receive = send, receive
            self._resync_needed = anyio.Event()
            broadcast = await stack.enter_async_context(self._transport.subscribe(self._topic))
            inbox = await stack.enter_async_context(
                self._transport.subscribe(f"{self._topic}#{self.node_id}")
            )
            if isinstance(self._transport, GapReporting):
                stack.callback(self._transport.add_gap_listener(self._on_gap))
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs first on exit: stop the readers
            tg.start_soon(self._read, broadcast, True)
            tg.start_soon(self._read, inbox, False)
            if self._doc is not None:
                tg.start_soon(self._resync_loop)
            self._stack = stack.pop_all()
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe and end iteration (idempotent)."""
        self._state = "closed"
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _on_gap(self) -> None:
        if self._resync_needed is not None:
            self._resync_needed.set()

    async def _resync_loop(self) -> None:
        while True:
            assert self._resync_needed is not None
            with anyio.move_on_after(
                self._resync_interval if self._resync_interval is not None else float("inf")
            ):
                await self._resync_needed.wait()
            self._resync_needed = anyio.Event()
            await self.resync()

    async def resync(self) -> None:
        """Broadcast a sync step 1: every peer answers with what this doc lacks, and
        asks for what it lacks in turn. Needs ``doc``."""
        if self._doc is None:
            raise ConfigurationError("resync needs the channel's doc")
        await self._publish(self._topic, pycrdt.create_sync_message(self._doc))

    async def _read(self, messages: AsyncIterator[bytes], broadcast: bool) -> None:
        assert self._send is not None
        async for data in messages:
            try:
                origin, payload = self._unwrap(data)
                if origin == self.node_id:
                    continue  # transports deliver our own broadcasts back to us
                _check_sync_message(payload)
            except DecodeError as exc:
                self.decode_errors += 1
                if self._on_error is not None:
                    self._on_error(exc)
                continue
            await self._send.send((origin, broadcast, payload))

    def _unwrap(self, data: bytes) -> tuple[str, bytes]:
        if len(data) < 2 or data[0] != _VERSION:
            raise DecodeError("not a podshare Yjs envelope (or an unknown version)")
        end = 2 + data[1]
        if end > len(data) or data[1] == 0:
            raise DecodeError("truncated Yjs envelope")
        try:
            origin = data[2:end].decode()
        except UnicodeDecodeError as exc:
            raise DecodeError("a Yjs envelope whose sender is not UTF-8") from exc
        return origin, data[end:]

    async def _publish(self, topic: str, message: bytes) -> None:
        if self._state != "open":
            raise ClosedError("the TransportChannel is closed")
        await self._transport.publish(topic, self._header + message)
        self.messages_sent += 1

    async def send(self, message: bytes) -> None:
        """Send a Yjs message: a step 2 goes to the peer whose step 1 it answers (the
        sender of the message :meth:`recv` returned last), everything else to the room."""
        is_step2 = len(message) >= 2 and message[0] == _SYNC and message[1] == _STEP2
        if is_step2 and self._reply_to is not None:
            await self._publish(f"{self._topic}#{self._reply_to}", message)
            return
        await self._publish(self._topic, message)

    async def recv(self) -> bytes:
        """Return the next message from another peer.

        Raises:
            ClosedError: the channel is closed (iteration ends instead).
        """
        if self._receive is None:
            raise ClosedError("the TransportChannel is not open")
        try:
            origin, broadcast, payload = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedError("the TransportChannel is closed") from exc
        self.messages_received += 1
        self._reply_to = origin
        if broadcast and payload[1] == _STEP1 and self._doc is not None:
            # A peer asked the whole room: besides the provider's step 2 answer, ask
            # it for what we lack, so its content reaches us too.
            await self._publish(f"{self._topic}#{origin}", pycrdt.create_sync_message(self._doc))
        return payload

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ClosedError:
            raise StopAsyncIteration from None


@asynccontextmanager
async def open_provider(
    doc: pycrdt.Doc[Any],
    transport: Transport,
    room: str,
    *,
    node_id: str | None = None,
    resync_interval: float | None = None,
    on_error: Callable[[PodshareError], object] | None = None,
    log: Logger | None = None,
) -> AsyncIterator[pycrdt.Provider]:
    """Keep ``doc`` in sync with every other pod's doc in ``room`` while inside.

    Yields pycrdt's ``Provider``; its ``synced`` event is set once a peer answered (it
    stays unset in an empty room). On exit, updates already made are sent first.

    Example::

        doc = pycrdt.Doc()
        async with RedisTransport(url) as tr, open_provider(doc, tr, "notes"):
            doc.get("text", type=pycrdt.Text).insert(0, "hello")   # every pod sees it
    """
    async with (
        TransportChannel(
            transport,
            room,
            node_id=node_id,
            doc=doc,
            resync_interval=resync_interval,
            on_error=on_error,
        ) as channel,
        pycrdt.Provider(doc, channel, log=log) as provider,
    ):
        yield provider
