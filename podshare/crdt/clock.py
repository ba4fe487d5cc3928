"""Hybrid logical clock: [`Stamp`][podshare.crdt.Stamp] values and the [`HLC`][podshare.crdt.HLC]
that issues them.

A stamp is ``(time, counter, origin)``: wall-clock milliseconds, a logical counter that
orders stamps issued within the same millisecond (or while the wall clock lags behind a
stamp already seen), and the issuing node's id, which breaks ties between nodes. Stamps
compare as plain tuples, so ordering them is as fast as comparing tuples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from podshare.exceptions import ConfigurationError, DecodeError

__all__ = ["HLC", "MAX_COUNTER", "MAX_ORIGIN_LENGTH", "MAX_TIME", "Stamp"]

#: Largest ``Stamp.time`` accepted from the wire (milliseconds; far beyond any real date).
MAX_TIME = 2**53 - 1
#: Largest ``Stamp.counter``; a clock whose counter would pass it moves to the next millisecond.
MAX_COUNTER = 2**32 - 1
#: Longest ``Stamp.origin`` (a node id) accepted, in characters.
MAX_ORIGIN_LENGTH = 256


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Stamp(NamedTuple):
    """A hybrid-logical-clock stamp, totally ordered by ``(time, counter, origin)``.

    Attributes:
        time: wall-clock milliseconds since the Unix epoch (as the issuing clock saw it).
        counter: orders stamps that share a ``time``.
        origin: the id of the node that issued the stamp; breaks ties between nodes.

    Example:
        >>> a = Stamp(1_700_000_000_000, 0, "pod-a")
        >>> b = Stamp(1_700_000_000_000, 1, "pod-a")
        >>> a < b < Stamp(1_700_000_000_001, 0, "pod-0")
        True
        >>> a.to_wire()
        [1700000000000, 0, 'pod-a']
        >>> Stamp.from_wire([1700000000000, 0, "pod-a"]) == a
        True
    """

    time: int
    counter: int
    origin: str

    def to_wire(self) -> list[object]:
        """Return ``[time, counter, origin]``, msgpack-able builtins."""
        return [self.time, self.counter, self.origin]

    @classmethod
    def from_wire(cls, data: object) -> Stamp:
        """Decode ``[time, counter, origin]`` (a list or tuple), validating every field.

        Raises:
            DecodeError: anything else: wrong shape, a ``bool`` where an ``int`` belongs,
                negative or oversized numbers, an origin longer than 256 characters.

        Example:
            >>> Stamp.from_wire([5, 0, "n"])
            Stamp(time=5, counter=0, origin='n')
            >>> Stamp.from_wire([5, -1, "n"])
            Traceback (most recent call last):
            ...
            podshare.exceptions.DecodeError: stamp counter must be an int in [0, 4294967295]
        """
        if not isinstance(data, list | tuple) or len(data) != 3:
            raise DecodeError("stamp must be a list [time, counter, origin]")
        t, c, o = data
        if type(t) is not int or not 0 <= t <= MAX_TIME:
            raise DecodeError(f"stamp time must be an int in [0, {MAX_TIME}]")
        if type(c) is not int or not 0 <= c <= MAX_COUNTER:
            raise DecodeError(f"stamp counter must be an int in [0, {MAX_COUNTER}]")
        if type(o) is not str or len(o) > MAX_ORIGIN_LENGTH:
            raise DecodeError(f"stamp origin must be a str of at most {MAX_ORIGIN_LENGTH} chars")
        return cls(t, c, o)


_ZERO = Stamp(0, 0, "")


class HLC:
    """A hybrid logical clock for one node: issues stamps and absorbs remote ones.

    Every stamp from [`now()`][podshare.crdt.HLC.now] is strictly greater than every stamp this
    clock issued or observed before, whatever the wall clock does (it may stand still or go back).
    [`observe()`][podshare.crdt.HLC.observe] a remote stamp before acting on what it stamps, and
    anything stamped afterwards orders after it: causality holds even between nodes whose wall
    clocks disagree.

    Args:
        origin: this node's id, written into every stamp (1 to 256 characters).
        time_source: returns wall-clock milliseconds since the epoch; tests pass a fake.
        max_skew_ms: the clock follows a remote stamp at most this far ahead of the local
            wall clock; [`observe()`][podshare.crdt.HLC.observe] reports stamps beyond.

    Raises:
        ConfigurationError: a bad argument; the message names it.

    Example:
        >>> wall = [1000]
        >>> clock = HLC("pod-a", time_source=lambda: wall[0])
        >>> clock.now()
        Stamp(time=1000, counter=0, origin='pod-a')
        >>> clock.now()                       # same millisecond: the counter moves
        Stamp(time=1000, counter=1, origin='pod-a')
        >>> clock.observe(Stamp(5000, 7, "pod-b"))   # ahead, but within max_skew_ms
        False
        >>> clock.now()                       # orders after what it observed
        Stamp(time=5000, counter=8, origin='pod-a')
        >>> clock.observe(Stamp(100_000, 0, "pod-c"))  # more than 60 s ahead: reported
        True
        >>> clock.now()                       # ... and followed only up to 60 s ahead
        Stamp(time=61000, counter=1, origin='pod-a')
    """

    __slots__ = ("_last", "_max_skew_ms", "_origin", "_time_source")

    def __init__(
        self,
        origin: str,
        *,
        time_source: Callable[[], int] = _wall_ms,
        max_skew_ms: int = 60_000,
    ) -> None:
        if not isinstance(origin, str) or not 0 < len(origin) <= MAX_ORIGIN_LENGTH:
            raise ConfigurationError(
                f"origin must be a non-empty str of at most {MAX_ORIGIN_LENGTH} characters, "
                f"got {origin!r}"
            )
        if not callable(time_source):
            raise ConfigurationError(f"time_source must be callable, got {time_source!r}")
        if type(max_skew_ms) is not int or max_skew_ms < 0:
            raise ConfigurationError(f"max_skew_ms must be an int >= 0, got {max_skew_ms!r}")
        self._origin = origin
        self._time_source = time_source
        self._max_skew_ms = max_skew_ms
        self._last = _ZERO

    @property
    def origin(self) -> str:
        """This clock's node id."""
        return self._origin

    @property
    def max_skew_ms(self) -> int:
        """How far ahead of the wall clock a remote stamp may be before it is reported."""
        return self._max_skew_ms

    @property
    def last(self) -> Stamp:
        """The greatest stamp issued or observed so far (``Stamp(0, 0, "")`` before any)."""
        return self._last

    def now(self) -> Stamp:
        """Issue a stamp strictly greater than every stamp issued or observed so far.

        Example:
            >>> clock = HLC("n", time_source=lambda: 7)
            >>> clock.now() < clock.now()
            True
        """
        wall = self._time_source()
        last = self._last
        if wall > last.time:
            stamp = Stamp(wall, 0, self._origin)
        elif last.counter < MAX_COUNTER:
            stamp = Stamp(last.time, last.counter + 1, self._origin)
        else:
            # Counter exhausted within one millisecond: borrow the next one.
            stamp = Stamp(last.time + 1, 0, self._origin)
        self._last = stamp
        return stamp

    def observe(self, remote: Stamp) -> bool:
        """Advance past ``remote`` so every later [`now()`][podshare.crdt.HLC.now] orders after it,
        within bounds.

        The clock moves past ``remote`` only while ``remote.time`` is at most
        ``max_skew_ms`` ahead of the local wall clock; a stamp further ahead moves it to
        that bound and no further, so a single stamp from a far-future clock (or a
        forged one) can neither drag every later stamp along nor push them out of the
        wire's range.

        Returns:
            True when ``remote.time`` is more than ``max_skew_ms`` ahead of the local wall
            clock, for the caller to count and report.

        Example:
            >>> clock = HLC("a", time_source=lambda: 0)
            >>> clock.observe(Stamp(10, 3, "b"))
            False
            >>> clock.now() > Stamp(10, 3, "b")
            True
            >>> clock.observe(Stamp(10**12, 0, "c")), clock.now().time
            (True, 60000)
        """
        bound = self._time_source() + self._max_skew_ms
        if remote.time > bound:
            capped = Stamp(bound, 0, "")
            if capped > self._last:
                self._last = capped
            return True
        if remote > self._last:
            self._last = remote
        return False

    def witness(self, time: int, counter: int, origin: str) -> None:
        """[`observe()`][podshare.crdt.HLC.observe] of ``Stamp(time, counter, origin)`` for a caller
        that checked
        ``time`` is at most ``max_skew_ms`` ahead of the wall clock (a received write's
        fast path): no stamp is built unless it is newer, and no bound is computed.

        Example:
            >>> clock = HLC("a", time_source=lambda: 0)
            >>> clock.witness(10, 3, "b")
            >>> clock.now()
            Stamp(time=10, counter=4, origin='a')
        """
        last = self._last
        t = last.time
        if time > t or (time == t and (counter, origin) > (last.counter, last.origin)):
            self._last = Stamp(time, counter, origin)

    def peek(self) -> int:
        """The time every stamp issued from now on will be at or after (no stamp is issued)."""
        return max(self._time_source(), self._last.time)
