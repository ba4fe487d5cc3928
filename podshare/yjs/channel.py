"""TransportChannel: a ``pycrdt.Channel`` over a podshare transport, for pycrdt's Provider.

For code that runs ``pycrdt.Provider`` itself. [`RoomBridge`][podshare.yjs.RoomBridge] is
the better choice for a live document (no echoes, presence, persistence, a ``synced``
that waits for the content); this channel exists because pycrdt's ``Provider`` sends
every transaction of its document, including those that applied a peer's update, so a
room of N pods publishes each edit N times.

It speaks the bridge's wire (`podshare.yjs._wire`), so channels and bridges share
rooms: the Provider's step 1 becomes a ``SYNC1``, its step 2 a ``SYNC2`` to the asker's
inbox, its updates ``UPDATE`` messages; large ones are fragmented. Malformed messages
are counted (``decode_errors``), reported to ``on_error`` and dropped before pycrdt
sees them, so a bad peer cannot stop the Provider.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
import pycrdt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from podshare.crdt.ydoc import MAX_UPDATE_SIZE
from podshare.exceptions import ClosedError, ConfigurationError, DecodeError, PodshareError
from podshare.transport.base import GapReporting, Transport, max_message_size
from podshare.yjs import _protocol, _wire
from podshare.yjs._names import room_topic

__all__ = ["TransportChannel"]


class TransportChannel:
    """A ``pycrdt.Channel`` carrying the Yjs sync protocol over a podshare transport.

    Use it as an async context manager around a ``pycrdt.Provider``. Entering
    subscribes to the room's broadcast topic and this node's inbox; leaving unsubscribes
    and ends iteration.

    Args:
        transport: any [`Transport`][podshare.transport.base.Transport] (already open).
        room: the document's name, any string (see [`room_topic`][podshare.yjs.room_topic]).
        node_id: this peer's id in the room (unique, 1 to 255 UTF-8 bytes, no ``#``);
            default a random one.
        doc: the ``pycrdt.Doc`` the provider syncs. Needed to ask a newcomer for its
            content and to resync; without it the channel only relays.
        resync_interval: seconds between broadcast resyncs; ``None`` (default): only
            after the transport reports a gap.
        on_error: called with each [`PodshareError`][podshare.exceptions.PodshareError] for a
            dropped message.
        buffer: received messages queued for the provider before the readers wait.

    Example:

    ```python
    async with TransportChannel(tr, "notes", doc=doc) as channel:
        async with pycrdt.Provider(doc, channel):
            ...
    ```
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
        self.room = room
        self._topic = room_topic(room)
        node_id = node_id if node_id is not None else uuid.uuid4().hex
        if not isinstance(node_id, str) or "#" in node_id or not 1 <= len(node_id.encode()) <= 255:
            raise ConfigurationError(
                f"node_id must be 1 to 255 UTF-8 bytes without '#', not {node_id!r}"
            )
        #: This peer's id in the room.
        self.node_id = node_id
        if resync_interval is not None and not (
            isinstance(resync_interval, int | float)
            and math.isfinite(resync_interval)
            and resync_interval > 0
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
        self._head = _wire.header(node_id)
        self._limit = max_message_size(transport)
        self._joiner = _wire.Reassembler(
            max_message=MAX_UPDATE_SIZE + 64, max_buffered=2 * MAX_UPDATE_SIZE
        )
        self._next_id = 0
        self._reply_to: str | None = None
        self._send_stream: MemoryObjectSendStream[tuple[str, bool, bytes]] | None = None
        self._receive: MemoryObjectReceiveStream[tuple[str, bool, bytes]] | None = None
        self._stack: AsyncExitStack | None = None
        self._resync_needed: anyio.Event | None = None
        self._state = "new"
        #: Messages dropped because they were malformed.
        self.decode_errors = 0
        #: Messages received from other peers and handed to the provider.
        self.messages_received = 0
        #: Messages published (fragments each count).
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
            self._send_stream, self._receive = send, receive
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
                self._resync_interval if self._resync_interval is not None else math.inf
            ):
                await self._resync_needed.wait()
            self._resync_needed = anyio.Event()
            await self.resync()

    async def resync(self) -> None:
        """Broadcast the doc's state vector: every peer answers with what this doc lacks,
        and asks for what it lacks in turn. Needs ``doc``."""
        if self._doc is None:
            raise ConfigurationError("resync needs the channel's doc")
        await self._publish(
            self._topic, _wire.SYNC1, _wire.encode_sync1(0, None, self._doc.get_state())
        )

    async def _read(self, messages: AsyncIterator[bytes], broadcast: bool) -> None:
        assert self._send_stream is not None
        async for data in messages:
            try:
                item = self._translate(data, broadcast)
            except DecodeError as exc:
                self.decode_errors += 1
                if self._on_error is not None:
                    self._on_error(exc)
                continue
            if item is not None:
                await self._send_stream.send(item)

    def _translate(self, data: bytes, broadcast: bool) -> tuple[str, bool, bytes] | None:
        """The y-protocols message for a bridge message (None: nothing for pycrdt)."""
        message = _wire.decode(data)
        if message.sender == self.node_id:
            return None  # transports deliver our own broadcasts back to us
        if "#" in message.sender:
            raise DecodeError("a Yjs bridge sender id with '#'")
        kind, body = message.kind, message.body
        if kind == _wire.FRAGMENT:
            whole = self._joiner.add(message.sender, body, anyio.current_time())
            if whole is None:
                return None
            kind, body = whole
        if kind == _wire.SYNC1:
            request = _wire.decode_sync1(body)
            _protocol.check_state_vector(request.state_vector)
            asks_back = broadcast and not request.flags & _wire.REPLY
            return (
                message.sender,
                asks_back,
                _protocol.sync_message(_protocol.STEP1, request.state_vector),
            )
        if body != b"\x00\x00":
            _protocol.check_update(body)
        step = _protocol.STEP2 if kind == _wire.SYNC2 else _protocol.UPDATE
        return message.sender, False, _protocol.sync_message(step, body)

    async def _publish(self, topic: str, kind: int, body: bytes) -> None:
        if self._state != "open":
            raise ClosedError("the TransportChannel is closed")
        parts = _wire.encode(self._head, kind, body, limit=self._limit, message_id=self._next_id)
        if len(parts) > 1:
            self._next_id += 1
        for part in parts:
            await self._transport.publish(topic, part)
            self.messages_sent += 1

    async def send(self, message: bytes) -> None:
        """Send a Yjs sync message: a step 2 goes to the peer whose step 1 it answers
        (the sender of the message `recv` returned last), the rest to the room.

        Raises:
            DecodeError: ``message`` is not a Yjs sync message.
        """
        kind, payload = _protocol.parse_sync_message(message)
        if kind == _protocol.STEP1:
            await self._publish(self._topic, _wire.SYNC1, _wire.encode_sync1(0, None, payload))
        elif kind == _protocol.STEP2 and self._reply_to is not None:
            await self._publish(f"{self._topic}#{self._reply_to}", _wire.SYNC2, payload)
        elif kind == _protocol.STEP2:
            await self._publish(self._topic, _wire.SYNC2, payload)
        else:
            await self._publish(self._topic, _wire.UPDATE, payload)

    async def recv(self) -> bytes:
        """Return the next message from another peer.

        Raises:
            ClosedError: the channel is closed (iteration ends instead).
        """
        if self._receive is None:
            raise ClosedError("the TransportChannel is not open")
        try:
            origin, asks_back, message = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError) as exc:
            raise ClosedError("the TransportChannel is closed") from exc
        self.messages_received += 1
        self._reply_to = origin
        if asks_back and self._doc is not None:
            # A peer asked the whole room: besides the provider's step 2 answer, ask it
            # for what we lack, so its content reaches us too.
            await self._publish(
                f"{self._topic}#{origin}",
                _wire.SYNC1,
                _wire.encode_sync1(_wire.REPLY, None, self._doc.get_state()),
            )
        return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ClosedError:
            raise StopAsyncIteration from None
