"""The TCP mesh under floods: caps on unauthenticated connections and rate-limited logging.

`HandshakeGate` admits every new inbound connection but bounds how many may be in
their handshake (not yet authenticated) at once, in total and per source address. When a
cap is reached the *oldest* pending handshake is dropped: a flood of idle connections
then only ever evicts itself, and a legitimate peer, which completes its handshake within
a round trip or two, gets in however long the flood lasts.

`RateLimitedLog` keeps a port scanner or a flood from flooding the log: at most one
line per reason per interval, and the next line says how many were suppressed.

Neither reads a clock of its own or touches a socket beyond cancelling a scope, so both
are tested directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio

__all__ = ["HandshakeGate", "RateLimitedLog", "Ticket"]


class Ticket:
    """One pending handshake: its source and the scope that cancels it if evicted."""

    __slots__ = ("evicted", "scope", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.scope = anyio.CancelScope()
        #: Set when the gate dropped this handshake to admit a newer one.
        self.evicted = False


class HandshakeGate:
    """Bounds the handshakes in progress, dropping the oldest first.

    Args:
        total: pending handshakes allowed at once, from all sources.
        per_source: pending handshakes allowed at once from one source address.

    Example:
        >>> async def main() -> list[object]:
        ...     gate = HandshakeGate(total=3, per_source=2)
        ...     a1, a2 = gate.admit("10.0.0.1"), gate.admit("10.0.0.1")
        ...     a3 = gate.admit("10.0.0.1")  # a third from the same source: a1 goes
        ...     seen: list[object] = [a1.evicted, a2.evicted, len(gate)]
        ...     b1, b2 = gate.admit("10.0.0.2"), gate.admit("10.0.0.3")  # over the total
        ...     return [*seen, a2.evicted, len(gate), gate.evictions]
        >>> anyio.run(main)
        [True, False, 2, True, 3, 2]
    """

    __slots__ = ("_by_source", "_pending", "_per_source", "_total", "evictions")

    def __init__(self, total: int, per_source: int) -> None:
        self._total = total
        self._per_source = per_source
        # Both dicts keep insertion order: the first key is the oldest handshake.
        self._pending: dict[Ticket, None] = {}
        self._by_source: dict[str, dict[Ticket, None]] = {}
        #: Handshakes dropped so far to make room.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._pending)

    def admit(self, source: str) -> Ticket:
        """Register a new pending handshake from ``source``, evicting the oldest if full."""
        same = self._by_source.get(source)
        if same is not None and len(same) >= self._per_source:
            self._evict(next(iter(same)))
        elif len(self._pending) >= self._total:
            self._evict(next(iter(self._pending)))
        ticket = Ticket(source)
        self._pending[ticket] = None
        self._by_source.setdefault(source, {})[ticket] = None
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The handshake ended (opened, failed or evicted); safe to call twice."""
        if ticket not in self._pending:
            return
        del self._pending[ticket]
        same = self._by_source[ticket.source]
        del same[ticket]
        if not same:
            del self._by_source[ticket.source]

    def _evict(self, ticket: Ticket) -> None:
        self.release(ticket)
        ticket.evicted = True
        ticket.scope.cancel()
        self.evictions += 1


class RateLimitedLog:
    """At most one log line per reason per ``interval`` seconds, counting the rest.

    Args:
        logger: where lines go.
        interval: seconds between two lines of the same reason.
        clock: the time source (anyio's by default; inject one in tests).

    Example:
        >>> import logging, sys
        >>> now = [0.0]
        >>> log = logging.getLogger("demo.flood")
        >>> log.addHandler(logging.StreamHandler(sys.stdout)); log.setLevel(logging.INFO)
        >>> log.propagate = False
        >>> limited = RateLimitedLog(log, interval=10, clock=lambda: now[0])
        >>> [limited.log(logging.INFO, "auth", "rejected %s", "10.0.0.9") for _ in range(3)]
        rejected 10.0.0.9
        [True, False, False]
        >>> now[0] = 11.0
        >>> limited.log(logging.INFO, "auth", "rejected %s", "10.0.0.8")
        rejected 10.0.0.8 (2 similar lines suppressed in the last 11 s)
        True
    """

    __slots__ = ("_clock", "_interval", "_last", "_logger")

    #: Reasons remembered at most; past it the memory is reset (keys are few in practice).
    MAX_REASONS = 4096

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, reason: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``reason`` was logged within the interval.

        Returns whether the line was written.
        """
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        last, suppressed = self._last.get(reason, (-math.inf, 0))
        if now - last < self._interval:
            self._last[reason] = (last, suppressed + 1)
            return False
        if len(self._last) >= self.MAX_REASONS and reason not in self._last:
            self._last.clear()
        self._last[reason] = (now, 0)
        if suppressed:
            message += " (%d similar lines suppressed in the last %.0f s)"
            args = (*args, suppressed, now - last)
        self._logger.log(level, message, *args)
        return True
