"""What a `Replica` will send: local writes queued per key, and every other message.

Part of the sans-I/O core. A local write is queued under its key, so writes to the same
key between two drains travel once: the latest for last-writer-wins, the joined delta
for a merger store (unless joined it would not fit one message: then the queued one
ships apart). `Outbox.drain()` packs the queued writes into as few `Writes` batches as
fit below the size limit, then appends the other messages (sync, hellos, leave) in the
order they were queued.

Example:
    >>> from podshare.crdt.clock import Stamp
    >>> from podshare.store.wire import make_entry
    >>> box = Outbox("a", 1, limit=60_000)
    >>> box.pending["k"] = (make_entry("k", Stamp(5, 0, "a"), 0, b"1"), None)
    >>> box.pending["k"] = (make_entry("k", Stamp(6, 0, "a"), 0, b"2"), None)
    >>> box.broadcast(b"hello")
    >>> [out.to for out in box.drain(6)], box.drain(6)
    ([None, None], [])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from podshare.crdt.clock import Stamp
from podshare.crdt.merger import Merger
from podshare.store import wire
from podshare.store.codec import ValueCodec
from podshare.store.packing import split
from podshare.store.wire import WireEntry

__all__ = ["Outbox", "Outgoing"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message the driver must publish.

    Attributes:
        to: ``None`` for the store's broadcast topic, else the node id whose inbox gets it.
        data: the encoded message.
    """

    to: str | None
    data: bytes


class Outbox:
    """The messages one replica queued since the driver last drained them.

    Args:
        node_id: this replica's node id (the sender of its write batches).
        nonce: this incarnation's nonce.
        limit: the largest batch body (``max_message_size`` less the envelope's slack).
    """

    __slots__ = ("_limit", "_node_id", "_nonce", "messages", "pending", "spill")

    def __init__(self, node_id: str, nonce: int, *, limit: int) -> None:
        self._node_id = node_id
        self._nonce = nonce
        self._limit = limit
        #: key -> its queued entry and, for a merger store, the delta it carries.
        self.pending: dict[str, tuple[WireEntry, Any]] = {}
        #: Entries that must travel apart from the key's queued one.
        self.spill: list[WireEntry] = []
        #: Every other message, in order.
        self.messages: list[Outgoing] = []

    def send_to(self, peer: str, data: bytes) -> None:
        """Queue ``data`` for ``peer``'s inbox."""
        self.messages.append(Outgoing(peer, data))

    def broadcast(self, data: bytes) -> None:
        """Queue ``data`` for the store's broadcast topic."""
        self.messages.append(Outgoing(None, data))

    def join_queued(
        self,
        key: str,
        epoch: Stamp,
        delta: Any,
        data: bytes,
        merger: Merger[Any],
        codec: ValueCodec[Any],
    ) -> tuple[Any, bytes]:
        """A merger write's delta (and its encoding) joined with the one queued for
        ``key`` in the same epoch, when joined it still fits one message; else the
        queued one is set to ship apart and ``(delta, data)`` is returned as given."""
        pending = self.pending.get(key)
        if pending is not None and pending[0].epoch == epoch and pending[1] is not None:
            joined = merger.merge(pending[1], delta)
            joined_data = codec.encode(joined)
            if len(joined_data) + len(key.encode()) <= self._limit:
                return joined, joined_data
            # Joined, the deltas would not fit one message: ship the queued one apart.
            self.spill.append(pending[0])
        return delta, data

    def drain(self, sent_at: int) -> list[Outgoing]:
        """Everything queued: write batches (coalesced, below the size limit), then the
        rest; the outbox is empty afterwards."""
        if not (self.pending or self.spill or self.messages):
            return []
        out: list[Outgoing] = []
        if self.pending or self.spill:
            pending, self.pending = self.pending, {}
            entries, self.spill = self.spill, []
            entries.extend(e for e, _ in pending.values())
            for group in split(entries, wire.entry_size, self._limit):
                msg = wire.Writes(self._node_id, self._nonce, sent_at, [])
                out.append(
                    Outgoing(None, wire.encode_raw(msg, [wire.entry_list(e) for e in group]))
                )
        if self.messages:
            out.extend(self.messages)
            self.messages.clear()
        return out
