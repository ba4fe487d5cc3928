"""One TCP peer's send queue, and the rule that says when the peer is stalled.

``publish`` never waits for the network: frames for a peer wait in its queue and the
connection's writer drains it. A queue may grow past its soft limit (``send_queue``)
during a burst, such as a large sync answer; the peer is dropped as stalled only when

- its queue has stayed above the soft limit for ``stall_timeout`` seconds in a row, or
- a write to its socket has made no progress for ``stall_timeout`` seconds (writes go
  out in chunks of at most `WRITE_CHUNK` bytes, so progress is visible), or
- its queue would exceed the hard limit (`HARD_LIMIT_FACTOR` times the soft one),
  which bounds the memory one peer can hold whatever the timing.

The queue only keeps the state; the transport's housekeeping task reads
`stall_reason` on its tick and drops the peer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio

__all__ = ["HARD_LIMIT_FACTOR", "WRITE_CHUNK", "QueueStats", "SendQueue"]

#: The most bytes handed to one socket write (at least one whole frame is always taken).
WRITE_CHUNK = 256 * 1024
#: A queue is never allowed beyond this many times its soft limit.
HARD_LIMIT_FACTOR = 8


class QueueStats(Protocol):
    """The fields of the transport's stats record that queues update."""

    queued_bytes: int
    queued_bytes_peak: int
    queue_over_limit_seconds: float


class SendQueue:
    """Frames waiting for one peer's writer, with the stall rule's bookkeeping.

    Args:
        soft_limit: bytes beyond which the queue counts as over its limit.
        stats: the transport's record (gauge of queued bytes, peak, time over limit).
        clock: the time source.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class S:
        ...     queued_bytes: int = 0
        ...     queued_bytes_peak: int = 0
        ...     queue_over_limit_seconds: float = 0.0
        >>> now = [0.0]
        >>> q = SendQueue(soft_limit=10, stats=S(), clock=lambda: now[0])
        >>> q.put(b"x" * 8), q.put(b"y" * 8), q.stall_reason(now[0], 5.0)
        (True, True, None)
        >>> now[0] = 6.0
        >>> q.stall_reason(now[0], 5.0)
        'its send queue stayed above 10 bytes for 6.0 s'
        >>> q.take(), q.stats.queued_bytes, q.stats.queue_over_limit_seconds
        ([b'xxxxxxxx', b'yyyyyyyy'], 0, 6.0)
    """

    __slots__ = (
        "_clock",
        "_frames",
        "hard_limit",
        "over_since",
        "sending_since",
        "size",
        "soft_limit",
        "stats",
        "wakeup",
    )

    def __init__(
        self,
        soft_limit: int,
        stats: QueueStats,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.soft_limit = soft_limit
        self.hard_limit = soft_limit * HARD_LIMIT_FACTOR
        self.stats = stats
        self._clock = clock
        self._frames: deque[bytes] = deque()
        #: Bytes queued (not counting a chunk being written).
        self.size = 0
        #: When the queue went above the soft limit (``None``: it is not above it).
        self.over_since: float | None = None
        #: When the write in progress started (``None``: no write in progress).
        self.sending_since: float | None = None
        #: Set when something is queued; the writer waits on it when the queue is empty.
        self.wakeup = anyio.Event()

    def __bool__(self) -> bool:
        return bool(self._frames)

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes stay within the hard limit."""
        return self.size + size <= self.hard_limit

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; ``False`` (nothing queued) if it would pass the hard limit."""
        size = self.size + len(frame)
        if size > self.hard_limit:
            return False
        self._frames.append(frame)
        self.size = size
        stats = self.stats
        stats.queued_bytes += len(frame)
        if size > stats.queued_bytes_peak:
            stats.queued_bytes_peak = size
        if size > self.soft_limit and self.over_since is None:
            self.over_since = self._clock()
        self.wakeup.set()
        return True

    def take(self, max_bytes: int = WRITE_CHUNK) -> list[bytes]:
        """Remove and return the oldest frames, about ``max_bytes`` of them (at least one)."""
        frames = self._frames
        taken: list[bytes] = []
        size = 0
        while frames and size < max_bytes:
            frame = frames.popleft()
            taken.append(frame)
            size += len(frame)
        self.size -= size
        self.stats.queued_bytes -= size
        if self.over_since is not None and self.size <= self.soft_limit:
            self.stats.queue_over_limit_seconds += self._clock() - self.over_since
            self.over_since = None
        return taken

    def clear(self) -> None:
        """Forget everything queued (the connection ended)."""
        self.take(self.size + 1)

    def stall_reason(self, now: float, stall_timeout: float) -> str | None:
        """Why the peer counts as stalled at ``now``, or ``None`` while it does not."""
        if self.over_since is not None and now - self.over_since >= stall_timeout:
            return (
                f"its send queue stayed above {self.soft_limit} bytes for "
                f"{now - self.over_since:.1f} s"
            )
        if self.sending_since is not None and now - self.sending_since >= stall_timeout:
            return f"a write made no progress for {now - self.sending_since:.1f} s"
        return None
