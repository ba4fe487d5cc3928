"""The sync exchange: digest rounds, key summaries and flow-controlled entry streams.

One *exchange* brings two replicas of a store to the same state: a requester (R) asks
one responder (P). Everything travels to the other side's inbox:

1. **Rounds.** R sends its level-1 digest (16 hashes). P answers with the buckets that
   differ, split into those to *descend* into (R sends their level-2 children next, then
   level 3) and *final* ones (small, or at level 3), which P summarises key by key
   (key, stamp, state hash) on its KEYS stream. An empty requester asks for everything
   instead (level 0).
2. **Transfer.** Once every round is answered and every summary arrived, R knows, key by
   key, what it lacks (it sends those keys on its WANT stream; P streams their entries
   back on the ANSWER stream) and what P lacks (R streams its entries on the PUSH
   stream). Entries the receiving side refuses as deleted there (see
   `podshare.store.horizon`) come back in the acknowledgements, and the sender
   forgets them too.
3. **Completion.** R is done when the ANSWER stream ended and every PUSH part was
   acknowledged; then R holds everything P held when it first answered, and adopts P's
   horizon vector. P adopts R's (sent with the first PUSH part) when the PUSH ended.

Every stream is flow-controlled: parts are at most ``chunk_bytes``; a sender keeps at
most ``window`` bytes unacknowledged, starting from `INITIAL_WINDOW` and growing
by what is acknowledged (slow start), so a large transfer never floods a TCP send queue
or Redis's pub/sub output buffer, a receiver never applies more than one part at a
time, and a request nobody acknowledges costs its responder at most the first window.
Unacknowledged parts are sent again after ``retransmit_ms``; an exchange with no
progress for ``timeout_ms`` ends, as failed.

`SyncEngine` holds the exchanges of one replica, both roles; it is sans-I/O like
the rest of the core: messages go out through the replica's outbox, and each exchange R
started ends with exactly one `SyncFinished` notice.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from podshare.store import wire
from podshare.store.digest import FINAL_BUCKET_KEYS, LEVELS, children
from podshare.store.horizon import Horizon
from podshare.store.state import MapState
from podshare.store.wire import (
    STREAM_ANSWER,
    STREAM_KEYS,
    STREAM_PUSH,
    STREAM_WANT,
    SYNC_BUSY,
    SYNC_OK,
    SYNC_REFUSED,
    SYNC_UNKNOWN,
    KeySummary,
    WireEntry,
)

__all__ = ["INITIAL_WINDOW", "SyncEngine", "SyncFinished", "SyncLimits"]

#: Bytes a stream may have unacknowledged before its first acknowledgement.
INITIAL_WINDOW: Final = 4096
# Most summaries one exchange accepts from a responder (a bound a peer cannot push).
_MAX_SUMMARIES: Final = 1 << 21
# Most parts of one stream a receiver tracks.
_MAX_PARTS: Final = 1 << 20
_RETRIES: Final = 5


@dataclass(frozen=True, slots=True)
class SyncFinished:
    """An exchange this replica asked for ended.

    Attributes:
        peer: the responder.
        ok: it completed (this replica now holds what the peer held when it answered).
        full: it was a full transfer (the requester held nothing).
        reason: why it failed (``"timeout"``, ``"refused"``, ``"busy"``, ``"unknown"``,
            ``"gone"``); empty when ``ok``.
    """

    peer: str
    ok: bool
    full: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SyncLimits:
    """Sizes and times of the exchange; times in milliseconds.

    Attributes:
        chunk_bytes: the largest part of a stream (a part holds at least one item).
        window: the most unacknowledged bytes per stream once warmed up.
        timeout_ms: an exchange without progress for this long fails.
        retransmit_ms: an unacknowledged part is sent again after this long.
        max_serving: exchanges this replica answers at once; more get "busy".
    """

    chunk_bytes: int = 64 * 1024
    window: int = 1024 * 1024
    timeout_ms: int = 2_000
    retransmit_ms: int = 500
    max_serving: int = 4


# --- streams ----------------------------------------------------------------------------


class _Out:
    """The sending side of one stream: lazy packing, a window, retransmission."""

    __slots__ = (
        "acked",
        "done_producing",
        "inflight",
        "items",
        "last_sent",
        "next_part",
        "pos",
        "retries",
        "unacked",
        "window",
    )

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.pos = 0
        self.done_producing = False
        self.next_part = 0
        # part -> (encoded message, sent at, bytes)
        self.unacked: dict[int, tuple[bytes, int, int]] = {}
        self.inflight = 0
        self.window = INITIAL_WINDOW
        self.last_sent = False
        self.acked = 0
        self.retries = 0

    @property
    def complete(self) -> bool:
        """Every part went out (the last one marked) and was acknowledged."""
        return self.last_sent and not self.unacked

    def ack(self, part: int, cap: int) -> bool:
        """Part ``part`` was acknowledged; False if it was not outstanding."""
        sent = self.unacked.pop(part, None)
        if sent is None:
            return False
        self.inflight -= sent[2]
        self.acked += 1
        self.retries = 0
        self.window = min(cap, self.window + sent[2])
        return True


class _In:
    """The receiving side of one stream: duplicates dropped, completion detected."""

    __slots__ = ("last", "parts")

    def __init__(self) -> None:
        self.parts: set[int] = set()
        self.last: int | None = None

    def receive(self, part: int, last: bool) -> bool:
        """Record a part; False for a duplicate (acknowledge it again, apply nothing)."""
        if part in self.parts:
            return False
        self.parts.add(part)
        if last:
            self.last = part
        return True

    @property
    def complete(self) -> bool:
        last = self.last
        return last is not None and len(self.parts) == last + 1


# --- the two roles ------------------------------------------------------------------------


class _Exchange:
    """An exchange this replica asked for (the requester's side)."""

    __slots__ = (
        "answer",
        "deadline",
        "finals",
        "full",
        "id",
        "keys",
        "level",
        "my_vector",
        "peer",
        "peer_vector",
        "push",
        "replied",
        "rounds_open",
        "summaries",
        "summary_count",
        "transfer",
        "want",
    )

    def __init__(self, sync_id: int, peer: str, full: bool, deadline: int) -> None:
        self.id = sync_id
        self.peer = peer
        self.full = full
        self.deadline = deadline
        self.level = 0
        self.rounds_open = 1  # requests awaiting their reply
        self.replied = False
        self.peer_vector: list[tuple[str, int]] | None = None
        self.my_vector: list[tuple[str, int]] = []
        self.keys = _In()
        self.summaries: dict[str, KeySummary] = {}
        self.summary_count = 0
        self.finals: list[tuple[int, int]] = []  # (level, bucket)
        self.transfer = False
        self.want = _Out()
        self.push = _Out()
        self.answer = _In()


class _Serving:
    """An exchange this replica answers (the responder's side)."""

    __slots__ = (
        "answer",
        "deadline",
        "descend",
        "full",
        "id",
        "keys",
        "level",
        "peer",
        "peer_vector",
        "push",
        "want",
    )

    def __init__(self, sync_id: int, peer: str, deadline: int) -> None:
        self.id = sync_id
        self.peer = peer
        self.full = False
        self.deadline = deadline
        # The last level answered, and the buckets it told the requester to descend into:
        # a round may only name their children, once (so one exchange summarises each
        # key at most once, whatever a peer sends).
        self.level = -1
        self.descend: frozenset[int] = frozenset()
        self.keys = _Out()
        self.answer = _Out()
        self.want = _In()
        self.push = _In()
        self.peer_vector: list[tuple[str, int]] | None = None


# --- the engine ---------------------------------------------------------------------------


class SyncEngine:
    """Every exchange of one replica, in both roles (see the module docstring).

    Args:
        node_id, nonce: this replica's identity (the sender of every message).
        state: the replica's map.
        horizon: the replica's horizon (vectors out and in).
        send: queues one encoded message for a peer's inbox: ``send(peer, data)``.
        clock: this replica's clock bound (``HLC.peek``) for its own vector entry.
        limits: sizes and times.
        may_serve: whether to answer ``peer`` now (``"ok"``, ``"refused"``, ``"busy"``).
        rng: chooses exchange ids.
    """

    def __init__(
        self,
        node_id: str,
        nonce: int,
        state: MapState[Any],
        horizon: Horizon,
        *,
        send: Callable[[str, bytes], None],
        clock: Callable[[], int],
        limits: SyncLimits,
        may_serve: Callable[[str], str],
        rng: random.Random,
    ) -> None:
        self.node_id = node_id
        self.nonce = nonce
        self.state = state
        self.horizon = horizon
        self._send = send
        self._clock = clock
        self.limits = limits
        self._may_serve = may_serve
        self._rng = rng
        self.exchanges: dict[int, _Exchange] = {}
        self.serving: dict[tuple[str, int], _Serving] = {}
        #: When each recent full transfer started (pruned by the replica).
        self.full_served: collections.deque[int] = collections.deque()
        #: Full transfers served since the start.
        self.full_transfers = 0
        #: SyncFinished notices not yet taken by the replica.
        self.finished: list[SyncFinished] = []
        #: Sync bytes sent (for stats).
        self.bytes_sent = 0
        #: Rounds of served exchanges ignored (repeated, or naming buckets not asked for).
        self.rounds_ignored = 0

    # --- small helpers -----------------------------------------------------------------

    def _out(self, peer: str, data: bytes) -> None:
        self.bytes_sent += len(data)
        self._send(peer, data)

    def _vector(self) -> list[tuple[str, int]]:
        # Every later stamp of this node is at or after the clock's bound: every write it
        # stamped before that millisecond is in its state.
        return self.horizon.vector(self._clock() - 1)

    def requesting(self, peer: str | None = None) -> bool:
        """Whether an exchange this replica asked for is running (with ``peer``)."""
        if peer is None:
            return bool(self.exchanges)
        return any(x.peer == peer for x in self.exchanges.values())

    def next_deadline(self) -> int | None:
        """When `tick()` is next due (a timeout or a retransmission), if ever."""
        due: int | None = None
        retransmit = self.limits.retransmit_ms
        for x in self.exchanges.values():
            due = x.deadline if due is None else min(due, x.deadline)
            for out in (x.want, x.push):
                for _, sent, _ in out.unacked.values():
                    due = min(due, sent + retransmit)
        for s in self.serving.values():
            due = s.deadline if due is None else min(due, s.deadline)
            for out in (s.keys, s.answer):
                for _, sent, _ in out.unacked.values():
                    due = min(due, sent + retransmit)
        return due

    # --- the requester -----------------------------------------------------------------

    def start(self, peer: str, now: int, *, full: bool) -> int:
        """Ask ``peer`` for an exchange (``full``: send everything); returns its id."""
        sync_id = self._rng.getrandbits(62)
        x = _Exchange(sync_id, peer, full, now + self.limits.timeout_ms)
        self.exchanges[sync_id] = x
        x.my_vector = self._vector()
        if full:
            # Nothing to push: the (empty) push with this replica's vector goes at once.
            x.level = 0
            x.push.done_producing = True
            request = wire.SyncRequest(self.node_id, self.nonce, sync_id, 0, None, b"")
        else:
            x.level = 1
            tree = self.state.tree  # brought up to date (a full transfer needs no digest)
            request = wire.SyncRequest(
                self.node_id, self.nonce, sync_id, 1, None, tree.hashes(1, None)
            )
        self._out(peer, wire.encode(request))
        if full:
            self._pump_requester(x, now)
        return sync_id

    def abandon(self, peer: str, reason: str) -> None:
        """End every exchange with ``peer`` (it went away) as failed."""
        for sync_id in [i for i, x in self.exchanges.items() if x.peer == peer]:
            self._finish(self.exchanges[sync_id], ok=False, reason=reason)
        for key in [k for k in self.serving if k[0] == peer]:
            del self.serving[key]

    def _finish(self, x: _Exchange, *, ok: bool, reason: str = "") -> None:
        if self.exchanges.pop(x.id, None) is None:
            return
        if ok and x.peer_vector is not None:
            self.horizon.merge(x.peer_vector, self._clock())
        self.finished.append(SyncFinished(x.peer, ok, x.full, reason))

    def on_reply(self, msg: wire.SyncReply, now: int) -> None:
        """A round's answer."""
        x = self.exchanges.get(msg.sync_id)
        if x is None or msg.sender != x.peer:
            return
        if msg.status != SYNC_OK:
            reason = {SYNC_REFUSED: "refused", SYNC_BUSY: "busy", SYNC_UNKNOWN: "unknown"}
            self._finish(x, ok=False, reason=reason.get(msg.status, "refused"))
            return
        if msg.level != x.level or x.rounds_open <= 0:
            return  # a duplicate or out-of-turn reply
        x.deadline = now + self.limits.timeout_ms
        x.rounds_open -= 1
        if not x.replied:
            x.replied = True
            x.peer_vector = list(msg.vector) if msg.vector is not None else []
        if x.full:
            return  # everything follows on the ANSWER stream
        x.finals.extend((msg.level, b) for b in msg.final)
        if msg.differ and msg.level < LEVELS:
            x.level = msg.level + 1
            x.rounds_open += 1
            buckets = children(msg.level, msg.differ)
            request = wire.SyncRequest(
                self.node_id,
                self.nonce,
                x.id,
                x.level,
                buckets,
                self.state.tree.hashes(x.level, buckets),
            )
            self._out(x.peer, wire.encode(request))
        self._maybe_transfer(x, now)

    def on_keys(self, msg: wire.SyncKeys, now: int) -> None:
        """A part of the responder's key summaries."""
        x = self.exchanges.get(msg.sync_id)
        if x is None or msg.sender != x.peer or x.full:
            return
        if msg.part >= _MAX_PARTS:
            self._finish(x, ok=False, reason="refused")
            return
        fresh = x.keys.receive(msg.part, msg.last)
        self._ack(x.peer, x.id, STREAM_KEYS, msg.part, ())
        if not fresh:
            return
        x.deadline = now + self.limits.timeout_ms
        x.summary_count += len(msg.items)
        if x.summary_count > _MAX_SUMMARIES:
            self._finish(x, ok=False, reason="refused")
            return
        for item in msg.items:
            x.summaries[item.key] = item
        self._maybe_transfer(x, now)

    def _maybe_transfer(self, x: _Exchange, now: int) -> None:
        """Every round answered and every summary in: decide what to want and push."""
        if x.transfer or x.rounds_open > 0 or not x.keys.complete:
            return
        x.transfer = True
        state = self.state
        state.refresh_digest()
        entries = state.entries
        merged = state.merger is not None
        mine = state.tree.keys_in_many(x.finals)
        theirs = x.summaries
        want: list[str] = []
        push: list[str] = []
        for key, summary in theirs.items():
            e = entries.get(key)
            if e is None:
                want.append(key)
                continue
            ours = (e.time, e.counter, e.origin)
            other = (summary.time, summary.counter, summary.origin)
            if merged:
                if state.hash_of(key) != summary.hash:
                    want.append(key)
                    push.append(key)
            elif other > ours:
                want.append(key)
            elif ours > other:
                push.append(key)
            elif state.hash_of(key) != summary.hash:
                # Equal stamps, different states (two processes, one node id): both
                # sides apply both and keep the same winner.
                want.append(key)
                push.append(key)
        for key in mine:
            if key not in theirs:
                push.append(key)
        x.summaries = {}
        x.want.items = want
        x.want.done_producing = True
        x.push.items = push
        x.push.done_producing = True
        self._pump_requester(x, now)

    def on_data(self, msg: wire.SyncData, now: int) -> None:
        """A part of an entry stream, either role."""
        if msg.stream == STREAM_ANSWER:
            x = self.exchanges.get(msg.sync_id)
            if x is None or msg.sender != x.peer:
                # A late part of an abandoned exchange still carries valid state.
                self.state.apply(msg.entries, now)
                return
            fresh = x.answer.receive(msg.part, msg.last) if msg.part < _MAX_PARTS else False
            drops: list[WireEntry] = []
            if fresh:
                x.deadline = now + self.limits.timeout_ms
                self.state.apply(msg.entries, now, drops)
            self._ack(x.peer, x.id, STREAM_ANSWER, msg.part, drops)
            self._maybe_done(x)
            return
        s = self.serving.get((msg.sender, msg.sync_id))
        if s is None:
            self.state.apply(msg.entries, now)
            return
        fresh = s.push.receive(msg.part, msg.last) if msg.part < _MAX_PARTS else False
        drops = []
        if fresh:
            s.deadline = now + 2 * self.limits.timeout_ms
            if msg.vector is not None:
                s.peer_vector = list(msg.vector)
            self.state.apply(msg.entries, now, drops)
        self._ack(s.peer, s.id, STREAM_PUSH, msg.part, drops)
        self._maybe_served(s)

    def on_want(self, msg: wire.SyncWant, now: int) -> None:
        """A part of the requester's wanted keys (the responder's side)."""
        s = self.serving.get((msg.sender, msg.sync_id))
        if s is None or msg.part >= _MAX_PARTS:
            return
        fresh = s.want.receive(msg.part, msg.last)
        self._ack(s.peer, s.id, STREAM_WANT, msg.part, ())
        if not fresh:
            return
        s.deadline = now + 2 * self.limits.timeout_ms
        s.answer.items.extend(msg.keys)
        if s.want.complete:
            s.answer.done_producing = True
        self._pump_serving(s, now)

    def on_ack(self, msg: wire.SyncAck, now: int) -> None:
        """A part of one of this replica's streams arrived at the other side."""
        cap = self.limits.window
        if msg.stream in (STREAM_WANT, STREAM_PUSH):
            x = self.exchanges.get(msg.sync_id)
            if x is None or msg.sender != x.peer:
                return
            out = x.want if msg.stream == STREAM_WANT else x.push
            if out.ack(msg.part, cap):
                x.deadline = now + self.limits.timeout_ms
                self._apply_drops(msg.drops)
                self._pump_requester(x, now)
            self._maybe_done(x)
            return
        s = self.serving.get((msg.sender, msg.sync_id))
        if s is None:
            return
        out = s.keys if msg.stream == STREAM_KEYS else s.answer
        if out.ack(msg.part, cap):
            s.deadline = now + 2 * self.limits.timeout_ms
            self._apply_drops(msg.drops)
            self._pump_serving(s, now)
        self._maybe_served(s)

    def _apply_drops(self, drops: Iterable[tuple[str, int, int, str]]) -> None:
        drop = self.state.drop
        for key, t, c, o in drops:
            drop(key, t, c, o)

    def _maybe_done(self, x: _Exchange) -> None:
        if x.answer.complete and x.push.complete and (x.full or x.want.complete):
            self._finish(x, ok=True)

    def _pump_requester(self, x: _Exchange, now: int) -> None:
        if not x.full:
            self._pump(
                x.want,
                x.peer,
                now,
                lambda part, last, items: wire.encode(
                    wire.SyncWant(self.node_id, self.nonce, x.id, part, last, items)
                ),
                _key_size,
            )
        vector = x.my_vector

        def push_part(part: int, last: bool, items: list[list[Any]]) -> bytes:
            msg = wire.SyncData(
                self.node_id, self.nonce, x.id, STREAM_PUSH, part, last, [],
                vector if part == 0 else None,
            )  # fmt: skip
            return wire.encode_raw(msg, items)

        self._pump(x.push, x.peer, now, push_part, None)

    # --- the responder -----------------------------------------------------------------

    def on_request(self, msg: wire.SyncRequest, now: int) -> None:
        """One round of an exchange a peer asked for."""
        peer = msg.sender
        key = (peer, msg.sync_id)
        s = self.serving.get(key)
        if s is None:
            verdict = self._may_serve(peer)
            if verdict == "ok" and len(self.serving) >= self.limits.max_serving:
                verdict = "busy"
            if verdict != "ok":
                status = SYNC_REFUSED if verdict == "refused" else SYNC_BUSY
                self._reply(peer, msg.sync_id, status, msg.level, [], [], None)
                return
            if msg.level > 1:
                # A round of an exchange this replica does not know (it timed out).
                self._reply(peer, msg.sync_id, SYNC_UNKNOWN, msg.level, [], [], None)
                return
            # One exchange per peer: a new request replaces an older one.
            for old in [k for k in self.serving if k[0] == peer]:
                del self.serving[old]
            s = self.serving[key] = _Serving(msg.sync_id, peer, now + 2 * self.limits.timeout_ms)
            first = True
        else:
            first = False
            if (
                msg.level <= s.level
                or s.full
                or msg.buckets is None
                or not s.descend.issuperset(msg.buckets)
            ):
                # A repeated round (a duplicate delivery) or one this exchange did not
                # ask for: answered already, or never.
                self.rounds_ignored += 1
                return
            s.deadline = now + 2 * self.limits.timeout_ms
        s.level = msg.level
        state = self.state
        vector = self._vector() if first else None
        if msg.level == 0:
            s.full = True
            if first:
                self.full_served.append(now)
                self.full_transfers += 1
            self._reply(peer, s.id, SYNC_OK, 0, [], [], vector)
            s.keys.done_producing = True
            s.keys.last_sent = True  # no summaries in a full transfer
            s.answer.items = list(state.entries)
            s.answer.done_producing = True
            self._pump_serving(s, now)
            return
        tree = state.tree  # brought up to date (a full transfer needs no digest)
        differing = tree.differing(msg.level, msg.buckets, msg.hashes)
        descend: list[int] = []
        final: list[int] = []
        if differing:
            counts = tree.counts(msg.level, differing)
            for bucket, count in zip(differing, counts, strict=True):
                if msg.level >= LEVELS or count <= FINAL_BUCKET_KEYS:
                    final.append(bucket)
                else:
                    descend.append(bucket)
        self._reply(peer, s.id, SYNC_OK, msg.level, descend, final, vector)
        s.descend = frozenset(children(msg.level, descend))
        if final:
            s.keys.items.extend(tree.keys_in(msg.level, final))
        if not descend:
            s.keys.done_producing = True
        self._pump_serving(s, now)

    def _reply(
        self,
        peer: str,
        sync_id: int,
        status: int,
        level: int,
        differ: list[int],
        final: list[int],
        vector: list[tuple[str, int]] | None,
    ) -> None:
        msg = wire.SyncReply(
            self.node_id, self.nonce, sync_id, status, level, differ, final, vector
        )
        self._out(peer, wire.encode(msg))

    def _pump_serving(self, s: _Serving, now: int) -> None:
        if not s.full:

            def keys_part(part: int, last: bool, items: list[KeySummary]) -> bytes:
                msg = wire.SyncKeys(self.node_id, self.nonce, s.id, part, last, items)
                return wire.encode(msg)

            self._pump(s.keys, s.peer, now, keys_part, _summary_size, convert=self._summaries)

        def answer_part(part: int, last: bool, items: list[list[Any]]) -> bytes:
            msg = wire.SyncData(self.node_id, self.nonce, s.id, STREAM_ANSWER, part, last, [])
            return wire.encode_raw(msg, items)

        self._pump(s.answer, s.peer, now, answer_part, None)

    def _summaries(self, keys: list[str]) -> list[Any]:
        present = [k for k in keys if k in self.state.entries]
        return self.state.summaries(present)

    def _maybe_served(self, s: _Serving) -> None:
        if not (s.answer.complete and s.push.complete and (s.full or s.keys.complete)):
            return
        if self.serving.pop((s.peer, s.id), None) is not None and s.peer_vector is not None:
            self.horizon.merge(s.peer_vector, self._clock())

    # --- packing and pacing ----------------------------------------------------------------

    def _pump(
        self,
        out: _Out,
        peer: str,
        now: int,
        encode: Callable[[int, bool, list[Any]], bytes],
        size_of: Callable[[Any], int] | None,
        *,
        convert: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        """Send as many parts of ``out`` as its window allows."""
        limits = self.limits
        while not out.last_sent:
            # Parts grow with the window (about four in flight), and a part goes out only
            # when there is room for a whole one: no trickle of tiny parts.
            target = min(limits.chunk_bytes, max(INITIAL_WINDOW, out.window // 4))
            room = out.window - out.inflight
            if out.unacked and room < target:
                return
            budget = target
            if out.pos >= len(out.items) and not out.done_producing:
                return  # nothing to send yet
            batch = self._take(out, budget, size_of)
            if convert is not None:
                batch = convert(batch)
            last = out.done_producing and out.pos >= len(out.items)
            part = out.next_part
            out.next_part += 1
            data = encode(part, last, batch)
            out.unacked[part] = (data, now, len(data))
            out.inflight += len(data)
            if last:
                out.last_sent = True
            self._out(peer, data)
            if not batch and not last:
                return

    def _take(self, out: _Out, budget: int, size_of: Callable[[Any], int] | None) -> list[Any]:
        """The next items of ``out`` fitting ``budget`` bytes (at least one)."""
        items = out.items
        batch: list[Any] = []
        size = 0
        if size_of is None:
            # Entry streams hold keys: pack each key's current entry (skip vanished ones).
            raw = self.state.raw
            while out.pos < len(items):
                entry = raw(items[out.pos])
                if entry is None:
                    out.pos += 1
                    continue
                n = _raw_size(entry)
                if batch and size + n > budget:
                    break
                batch.append(entry)
                size += n
                out.pos += 1
            return batch
        while out.pos < len(items):
            n = size_of(items[out.pos])
            if batch and size + n > budget:
                break
            batch.append(items[out.pos])
            size += n
            out.pos += 1
        return batch

    def _ack(
        self, peer: str, sync_id: int, stream: int, part: int, drops: Iterable[WireEntry]
    ) -> None:
        msg = wire.SyncAck(
            self.node_id,
            self.nonce,
            sync_id,
            stream,
            part,
            [(d.key, d.time, d.counter, d.origin) for d in drops],
        )
        self._out(peer, wire.encode(msg))

    # --- time ------------------------------------------------------------------------

    def tick(self, now: int) -> None:
        """Fail exchanges without progress, resend unacknowledged parts, drop dead serves."""
        for x in list(self.exchanges.values()):
            if now >= x.deadline:
                self._finish(x, ok=False, reason="timeout")
                continue
            for out in (x.want, x.push):
                if not self._retransmit(out, x.peer, now):
                    self._finish(x, ok=False, reason="timeout")
                    break
        for key, s in list(self.serving.items()):
            if now >= s.deadline:
                del self.serving[key]
                continue
            for out in (s.keys, s.answer):
                if not self._retransmit(out, s.peer, now):
                    del self.serving[key]
                    break

    def _retransmit(self, out: _Out, peer: str, now: int) -> bool:
        """Send again parts unacknowledged for too long; False after too many tries."""
        late = [
            (part, data)
            for part, (data, sent, _) in out.unacked.items()
            if now - sent >= self.limits.retransmit_ms
        ]
        if not late:
            return True
        out.retries += 1
        if out.retries > _RETRIES:
            return False
        for part, data in late:
            _, _, n = out.unacked[part]
            out.unacked[part] = (data, now, n)
            self._out(peer, data)
        return True

    def __iter__(self) -> Iterator[_Exchange]:
        return iter(self.exchanges.values())


def _key_size(key: str) -> int:
    return len(key) + 4


def _summary_size(key: str) -> int:
    return len(key) + 48


def _raw_size(entry: list[Any]) -> int:
    size = 48 + len(entry[0]) + len(entry[3])
    value = entry[5] if len(entry) > 5 else None
    if value is not None:
        size += len(value)
    return size
