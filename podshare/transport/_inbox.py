"""A subscription's buffer: what a transport's ``subscribe`` yields, at one hop per batch.

An anyio memory object stream costs its receiver a scheduler round per message (every
``receive`` is a checkpoint) and a fresh waiter per empty wait. `Inbox` hands out what
is buffered without a checkpoint and parks only when it is empty, so a subscriber
handed ten messages by one socket read takes them in one go. It is bounded (the
transport counts what does not fit as dropped) and never blocks the sender.

Example:
    >>> import anyio
    >>> async def main() -> list[bytes]:
    ...     inbox = Inbox(capacity=2)
    ...     accepted = [inbox.put(b"a"), inbox.put(b"b"), inbox.put(b"c")]
    ...     inbox.end()
    ...     assert accepted == [True, True, False]  # full: the third is refused
    ...     return [message async for message in inbox]
    >>> anyio.run(main)
    [b'a', b'b']
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import anyio

__all__ = ["Inbox"]


class Inbox:
    """A bounded, single-producer buffer of messages with an async-iterator end.

    The receiving end offers what a `MemoryObjectReceiveStream` does for subscribers:
    ``async for``, `receive` (``anyio.EndOfStream`` once ended and drained),
    `receive_nowait` (``anyio.WouldBlock`` when empty), and `close` / `aclose` / ``with``.

    Args:
        capacity: the most messages buffered; `put` refuses more.
    """

    __slots__ = ("_buffer", "_capacity", "_closed", "_ended", "_waiter")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._buffer: deque[bytes] = deque()
        self._waiter: anyio.Event | None = None
        #: No more messages will come (the subscription ended or the transport closed).
        self._ended = False
        #: The receiver closed its end: messages are no longer wanted.
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the receiver closed its end (the sender should forget the inbox)."""
        return self._closed

    def put(self, message: bytes) -> bool:
        """Buffer ``message`` and wake the receiver; ``False`` if the buffer is full.

        Raises:
            anyio.ClosedResourceError: the inbox was ended.
            anyio.BrokenResourceError: the receiver closed its end.
        """
        if self._ended:
            raise anyio.ClosedResourceError
        if self._closed:
            raise anyio.BrokenResourceError
        buffer = self._buffer
        if len(buffer) >= self._capacity:
            return False
        buffer.append(message)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()
        return True

    def end(self) -> None:
        """No more messages: the receiver drains what is buffered, then its iteration ends."""
        self._ended = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def receive_nowait(self) -> bytes:
        """The oldest buffered message.

        Raises:
            anyio.WouldBlock: nothing is buffered yet.
            anyio.EndOfStream: the inbox ended and everything was received.
            anyio.ClosedResourceError: the receiver closed its end.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        if self._buffer:
            return self._buffer.popleft()
        if self._ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    async def receive(self) -> bytes:
        """The oldest message, waiting for one while the buffer is empty.

        Returns a buffered message without a checkpoint; waits (a checkpoint) otherwise.

        Raises:
            anyio.EndOfStream: the inbox ended and everything was received.
            anyio.ClosedResourceError: the receiver closed its end.
        """
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            waiter = self._waiter
            if waiter is None:  # shared by every task waiting on this inbox
                waiter = self._waiter = anyio.Event()
            await waiter.wait()

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Close the receiving end: buffered messages are dropped, later ones refused."""
        self._closed = True
        self._buffer.clear()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    async def aclose(self) -> None:
        """As `close`."""
        self.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
