"""The clock rules for received stamps: what the replica's clock follows, what is refused.

Part of the sans-I/O core. Every entry a replica receives (a write batch, a part of an
entry stream, a persisted record) passes here before it is applied:

- the clock *observes* the newest stamp (its time, counter and origin), so a local write
  made after seeing it orders after it, even in the same millisecond;
- a sender whose clock is more than ``max_clock_skew_ms`` ahead is reported (at most once
  a minute per node, as a `ProtocolError` telling to run NTP);
- entries stamped more than twice ``max_clock_skew_ms`` ahead are refused until time
  catches up (counted in ``stamps_refused``): one bad clock cannot drag every replica's
  clock, and so every later write, into the future.

Example:
    >>> from podshare.crdt.clock import HLC
    >>> from podshare.store.events import Stats
    >>> from podshare.store.wire import make_entry
    >>> errors = []
    >>> now = 1_000_000
    >>> guard = SkewGuard(HLC("me", time_source=lambda: now), 60_000, Stats(), errors)
    >>> ahead = make_entry("k", Stamp(now + 500_000, 0, "b"), 0, b"1")
    >>> guard.admit_writes(wire.Writes("b", 2, now, [ahead]), now)
    []
    >>> type(errors[0]).__name__
    'ProtocolError'
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Final

from podshare.crdt.clock import HLC, Stamp
from podshare.exceptions import PodshareError, ProtocolError
from podshare.store import wire
from podshare.store.events import Stats
from podshare.store.peers import MAX_PEERS
from podshare.store.wire import WireEntry

__all__ = ["SkewGuard"]

# A skewed sender is reported at most this often (ms).
_SKEW_REPORT_EVERY: Final = 60_000
# Orders wire entries by stamp: (time, counter, origin).
_STAMP_ORDER: Final = attrgetter("time", "counter", "origin")


class SkewGuard:
    """Applies the clock rules of received stamps to one replica's clock.

    Args:
        clock: the replica's hybrid logical clock.
        max_skew_ms: ``ReplicaOptions.max_clock_skew_ms``.
        stats: the replica's statistics record (``clock_skew_reports``,
            ``stamps_refused``).
        errors: the replica's queue of errors for ``on_error``.
    """

    __slots__ = ("_clock", "_errors", "_reported", "_skew", "_stats")

    def __init__(
        self, clock: HLC, max_skew_ms: int, stats: Stats, errors: list[PodshareError]
    ) -> None:
        self._clock = clock
        self._skew = max_skew_ms
        self._stats = stats
        self._errors = errors
        # node -> when its skew was last reported.
        self._reported: dict[str, int] = {}

    def admit_writes(self, msg: wire.Writes, now: int) -> Sequence[WireEntry]:
        """The entries of a write batch to apply (the clock has observed them): a sender
        too far ahead is reported, entries too far ahead are refused."""
        entries = msg.entries
        if not entries:
            return entries
        skew = self._skew
        if msg.sent_at > now + skew:
            self.report(msg.sender, msg.sent_at - now, now)
        top = max(e.time for e in entries) if len(entries) > 1 else entries[0].time
        if top > now + 2 * skew:
            entries = self.refuse_future(entries, now)
            if not entries:
                return entries
        self.observe(entries)
        return entries

    def bound_stamps(self, msg: wire.SyncData, now: int) -> wire.SyncData:
        """The clock rules of `admit_writes()` for a part of an entry stream: entries too
        far ahead are refused, and the clock observes the rest before they are applied (a
        local write after hydration must order after what it replaces)."""
        entries = msg.entries
        top = max(e.time for e in entries)
        if top > now + 2 * self._skew:
            entries = self.refuse_future(entries, now)
            msg = wire.SyncData(
                msg.sender, msg.nonce, msg.sync_id, msg.stream, msg.part, msg.last, entries,
                msg.vector,
            )  # fmt: skip
            if not entries:
                return msg
        self.observe(entries)
        return msg

    def observe(self, entries: Sequence[WireEntry]) -> None:
        """Move the clock past the newest stamp received: its time, counter *and* origin,
        so a write made after seeing it orders after it, even in the same millisecond."""
        newest = max(entries, key=_STAMP_ORDER) if len(entries) > 1 else entries[0]
        self._clock.observe(newest.stamp)

    def observe_persisted(self, top: int, now: int) -> None:
        """Move the clock past the newest persisted time (at most ``max_skew`` ahead)."""
        self._clock.observe(Stamp(min(top, now + self._skew), 0, ""))

    def refuse_future(self, entries: Sequence[WireEntry], now: int) -> list[WireEntry]:
        """Drop entries stamped more than twice ``max_clock_skew`` ahead (reported)."""
        bound = now + 2 * self._skew
        kept = [e for e in entries if e.time <= bound]
        refused = len(entries) - len(kept)
        self._stats.stamps_refused += refused
        worst = max(entries, key=lambda e: e.time)
        self.report(worst.origin, worst.time - now, now, refused=refused)
        return kept

    def report(self, node: str, ahead: int, now: int, *, refused: int = 0) -> None:
        """Count a skewed sender; queue an error about it at most once a minute."""
        self._stats.clock_skew_reports += 1
        reported = self._reported
        last = reported.get(node)
        if last is not None and now - last < _SKEW_REPORT_EVERY:
            return
        if len(reported) >= MAX_PEERS:
            reported.clear()
        reported[node] = now
        what = f"; {refused} entries refused until time catches up" if refused else ""
        self._errors.append(
            ProtocolError(
                f"the clock of node {node!r} is {ahead} ms ahead of this node's "
                f"(max_clock_skew {self._skew} ms){what}: run NTP"
            )
        )
