"""The horizon: what a replica provably holds, per writer, and when a tombstone may go.

Deletes are tombstones; a tombstone kept forever makes every delete win over the writes
it superseded, however late they arrive. Tombstones must be forgotten eventually, and
then an absent key is ambiguous: deleted long ago, or a write this replica never saw?

A `Horizon` answers that per writer. ``seen[origin]`` is a time such that this
replica holds every write ``origin`` stamped at or before it (or a state that supersedes
it). It grows only on evidence:

- this node's own writes are applied when made: every write of this incarnation (stamped
  since it started) is held, and its own entry in the vector it sends is its clock
  (unless another live process shares its node id: `Horizon.disown()`);
- after a completed sync with a peer, this replica holds everything the peer held when
  it answered, so it takes the peer's own clock for the peer and the larger of each
  entry of the peer's vector (the peer sends its whole vector with its answer).

Two rules follow, and they are the whole of the horizon (``docs/concepts.md``):

1. **Refusal.** An entry for a key this replica does not hold, stamped at or before
   ``seen[origin]``, was held here and then deleted, and its tombstone compacted: it is
   refused (and the sender is told to forget it). Any other absent key is a write this
   replica never saw, and it is applied: a write made by a node cut off for longer
   than the tombstone TTL is never mistaken for a compacted delete.
2. **Compaction.** A tombstone is forgotten once it is older than ``tombstone_ttl`` and
   older than the *frontier*: the smallest ``seen`` over every writer that is not known
   to be down for longer than ``tombstone_ttl``. While some live node's knowledge lags
   (a partition, a node that has not synced), tombstones newer than its ``seen`` stay;
   so a node returning from a partition meets the deletes it missed.

Entries stamped at or before `SEED_TIME` (loaded with ``Store.seed``: older than
any write) are never refused: they only fill keys a replica lacks, and whatever it holds
wins over them.

Writers are forgotten ``hard_cap`` after their ``seen`` last grew; an unknown writer
counts as seen up to ``now - hard_cap``, so entries older than the hard cap from a
writer nobody remembers are refused, and tombstones never outlive the hard cap. Memory:
one entry per writer active within the hard cap.

Example:
    >>> h = Horizon("a", started_at=1_000, hard_cap_ms=10_000)
    >>> h.merge([("b", 5_000)], now=6_000)
    >>> h.holds("b", 4_000, now=6_000), h.holds("b", 5_500, now=6_000)
    (True, False)
    >>> h.holds("a", 2_000, now=6_000)  # this incarnation's own write
    True
    >>> h.frontier(now=6_000, excluded=lambda node: False)
    5000
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

__all__ = ["SEED_TIME", "Horizon"]

#: The stamp time of seeded entries: older than any write, never taken for a deleted one.
SEED_TIME: Final = 1


class Horizon:
    """Per-writer knowledge of one replica (see the module docstring).

    Args:
        node_id: this node's id.
        started_at: when this incarnation started: its own writes since are held.
        hard_cap_ms: writers whose knowledge has not grown for this long are forgotten.
    """

    __slots__ = ("_grew", "_hard_cap", "_unique", "node_id", "seen", "started_at")

    def __init__(self, node_id: str, *, started_at: int = 0, hard_cap_ms: int) -> None:
        self.node_id = node_id
        self.started_at = started_at
        self._hard_cap = hard_cap_ms
        #: origin -> ms: every write of ``origin`` stamped at or before is held here.
        self.seen: dict[str, int] = {}
        # origin -> the local time its entry last grew (for forgetting writers).
        self._grew: dict[str, int] = {}
        # Whether this incarnation is the only writer stamping with node_id.
        self._unique = True

    def disown(self) -> None:
        """Another live process writes under this node id (a misconfiguration).

        Stamps carry the node id, not the incarnation, so this node can no longer tell
        its own writes from the other process's: it stops taking the writes stamped with
        its id since it started as held (they would be refused, and the peers that sent
        them told to forget them), and its vector stops vouching for them.
        """
        self._unique = False

    def floor(self, now: int) -> int:
        """What an unknown writer counts as seen up to."""
        return now - self._hard_cap

    def holds(self, origin: str, time: int, now: int) -> bool:
        """Whether every write ``origin`` stamped at or before ``time`` is held here."""
        if time <= SEED_TIME:
            return False  # a seeded entry, not a write: it fills what is missing
        if origin == self.node_id:
            if not self._unique:
                # Another process writes under this id: what this node saw of "its own"
                # writes says nothing of the other's (refusing one would lose it).
                return False
            if time >= self.started_at:
                return True  # this incarnation's own writes are applied when made
        seen = self.seen.get(origin)
        return time <= (seen if seen is not None else now - self._hard_cap)

    def advance(self, origin: str, time: int, now: int) -> None:
        """Record that every write of ``origin`` up to ``time`` is held here."""
        if time <= now - self._hard_cap:
            return
        if time > self.seen.get(origin, -1):
            self.seen[origin] = time
            self._grew[origin] = now

    def merge(self, vector: Iterable[tuple[str, int]], now: int) -> None:
        """Adopt a peer's vector after a completed sync with it (the larger entry wins)."""
        for origin, time in vector:
            self.advance(origin, time, now)

    def vector(self, clock: int) -> list[tuple[str, int]]:
        """This replica's vector to send with a sync answer (its own entry is ``clock``)."""
        out = [(o, t) for o, t in self.seen.items() if o != self.node_id]
        if self._unique:
            out.append((self.node_id, clock))
        return out

    def frontier(self, now: int, excluded: Callable[[str], bool]) -> int:
        """The time below which every relevant writer's writes are held here.

        ``excluded(origin)`` is true for writers that no longer hold the frontier back
        (known down for longer than the tombstone TTL); this node's own entry never does.
        """
        low = now
        me = self.node_id
        for origin, time in self.seen.items():
            if time < low and origin != me and not excluded(origin):
                low = time
        return max(low, now - self._hard_cap)

    def prune(self, now: int) -> int:
        """Forget writers whose knowledge has not grown for the hard cap; return how many."""
        limit = now - self._hard_cap
        old = [o for o, grew in self._grew.items() if grew < limit]
        for origin in old:
            del self._grew[origin]
            self.seen.pop(origin, None)
        return len(old)

    def __len__(self) -> int:
        return len(self.seen)
