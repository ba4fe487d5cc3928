"""The peer table of a `Replica`: the other replicas of one store it has heard from.

Part of the sans-I/O core (no clock reads: every method takes ``now``, wall-clock
milliseconds). The table knows each peer's incarnation, whether it is up, whether it
says it is synced, how exchanges with it went and its leave commitment; from that it
chooses a sync partner (`PeerTable.choose()`), decides whether to serve an exchange a
peer asks for (`PeerTable.may_serve()`), forgets peers down for a while
(`PeerTable.forget_down()`) and schedules one sync with the peers that came back after a
partition (`PeerTable.recontact()`).

The `Replica` wires it to the rest of the core: it feeds what it receives and what
liveness says, and passes the hydration state (``synced``) where a rule depends on it.

Example:
    >>> from podshare.store.events import Stats
    >>> table = PeerTable("me", alive=lambda n, i: None, has_liveness=False, live_nodes=None,
    ...     rng=random.Random(1), stats=Stats(), events=[], hello_window_ms=300,
    ...     sync_timeout_ms=2_000)
    >>> peer = table.heard("b", 7, 1_000, synced=True)
    >>> peer is not None and peer.up, sorted(table.live())
    (True, ['b'])
    >>> table.choose(1_000)
    'b'
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any, Final

from podshare.store import wire
from podshare.store.events import Event, EventKind, Stats
from podshare.store.sync import SyncFinished

__all__ = ["MAX_PEERS", "Peer", "PeerTable"]

#: Most store peers remembered (a bound no peer can push past).
MAX_PEERS: Final = 4096
_MAX_RETURNED: Final = 64  # peers remembered as "came back" between two recontact syncs
# A peer down this long that never wrote (the horizon does not track it) is forgotten.
_PEER_MEMORY_MS: Final = 60_000
# A peer's leave commitment is taken only this soon after it is first heard from: its
# hellos come first, a forger's claim for a peer known for a while is not believed.
_COMMIT_WINDOW_MS: Final = 10_000
# New exchanges one peer may ask this replica to serve: a burst, then one per interval.
_SERVE_BURST: Final = 8
_SERVE_EVERY_MS: Final = 250


class Peer:
    """Another replica of this store."""

    __slots__ = (
        "commitment",
        "down_at",
        "failed_at",
        "heard_at",
        "keys",
        "last_ok",
        "nonce",
        "served_at",
        "synced",
        "tokens",
        "transfers",
        "up",
    )

    def __init__(self, nonce: int, now: int) -> None:
        self.nonce = nonce
        self.heard_at = now  # when this incarnation was first heard (or back up)
        # Its budget of new exchanges to serve (refilled with time; see may_serve).
        self.tokens = float(_SERVE_BURST)
        self.served_at = -1
        # The hash of the token its Leave will reveal (from its hellos): None unknown,
        # b"" contested (two were claimed, one forged).
        self.commitment: bytes | None = None
        self.up = True
        self.synced: bool | None = None  # None: unknown
        self.transfers = 0
        self.keys = 0  # how many keys it said it holds (its hellos and answers)
        self.last_ok = -1
        self.failed_at = -1
        self.down_at = -1  # when it was last seen going down

    def pin_commitment(self, commitment: bytes | None, now: int) -> None:
        """Pin the first leave commitment a peer claims soon after it was first heard (a
        different one later is someone else's: then no Leave of it can be proven)."""
        if commitment is None or self.commitment == commitment:
            return
        if self.commitment is None and now - self.heard_at <= _COMMIT_WINDOW_MS:
            self.commitment = commitment
        else:
            self.commitment = b""


class PeerTable:
    """The peers of one replica, and the rules that read them.

    Args:
        node_id: this replica's node id.
        alive: ``alive(node, nonce)``: the process's liveness says alive (True), down
            (False) or unknown (None).
        has_liveness: whether ``alive`` reflects a liveness stream at all (without one,
            a peer need not be confirmed alive to be served).
        live_nodes: the node ids the process's liveness knows alive, or None.
        rng: random choices (partners, recontact jitter).
        stats: the replica's statistics record (``peers_seen``, ``syncs_unserved``,
            ``leaves_unproven``).
        events: the replica's queue of events (``NODE_UP``, ``NODE_DOWN``).
        hello_window_ms: the pause between two recontact attempts.
        sync_timeout_ms: a peer an exchange failed with is not asked again sooner.
    """

    __slots__ = (
        "_alive",
        "_events",
        "_has_liveness",
        "_hello_window",
        "_live_nodes",
        "_node_id",
        "_retry_after",
        "_rng",
        "_stats",
        "by_node",
        "prune_at",
        "recontact_at",
        "recontacting",
        "returned",
    )

    def __init__(
        self,
        node_id: str,
        *,
        alive: Callable[[str, int], bool | None],
        has_liveness: bool,
        live_nodes: Callable[[], Iterable[str]] | None,
        rng: random.Random,
        stats: Stats,
        events: list[Event[Any]],
        hello_window_ms: int,
        sync_timeout_ms: int,
    ) -> None:
        self._node_id = node_id
        self._alive = alive
        self._has_liveness = has_liveness
        self._live_nodes = live_nodes
        self._rng = rng
        self._stats = stats
        self._events = events
        self._hello_window = hello_window_ms
        self._retry_after = sync_timeout_ms
        #: node id -> its `Peer`.
        self.by_node: dict[str, Peer] = {}
        #: When down peers are next looked at for forgetting (None: none is down).
        self.prune_at: int | None = None
        #: Peers that came back (a partition healed), until one exchange with one works.
        self.returned: set[str] = set()
        #: When `recontact()` is next due (None: not scheduled).
        self.recontact_at: int | None = None
        #: The peer of the recontact exchange under way, if any.
        self.recontacting: str | None = None

    def __len__(self) -> int:
        return len(self.by_node)

    def get(self, node: str) -> Peer | None:
        """The peer ``node``, or None when unknown."""
        return self.by_node.get(node)

    def live(self) -> Iterator[str]:
        """The node ids of the peers that are up."""
        return (n for n, p in self.by_node.items() if p.up)

    def any_synced_up(self) -> bool:
        """Whether some peer that is up says it is synced."""
        return any(p.up and p.synced for p in self.by_node.values())

    # --- hearing and losing peers ----------------------------------------------------

    def heard(self, sender: str, nonce: int, now: int, *, synced: bool) -> Peer | None:
        """A message from ``sender``'s incarnation ``nonce``: know it as a peer.

        ``synced``: this replica is synced (a peer back up is then recontacted). Returns
        None when the message must be ignored (a late message of a life already over,
        or the table is full of live peers).
        """
        peer = self.by_node.get(sender)
        alive = self._alive
        if peer is not None and peer.nonce != nonce:
            if alive(sender, peer.nonce) is True and alive(sender, nonce) is True:
                return peer  # two live processes share the id: keep the first
            peer.nonce = nonce
            peer.synced = None
            peer.commitment = None
            peer.heard_at = now
        if peer is None:
            if len(self.by_node) >= MAX_PEERS and not self._prune():
                return None
            if alive(sender, nonce) is False:
                return None  # a late message of a life already over
            peer = self.by_node[sender] = Peer(nonce, now)
            self._stats.peers_seen += 1
            self._events.append(Event(EventKind.NODE_UP, sender, None, sender, None))
            return peer
        if not peer.up:
            if alive(sender, nonce) is False:
                return None
            peer.up = True
            peer.heard_at = now
            self._events.append(Event(EventKind.NODE_UP, sender, None, sender, None))
            self.schedule_recontact(sender, now, synced=synced)
        return peer

    def node_up(self, node: str, nonce: int, now: int, *, returned: bool, synced: bool) -> None:
        """Liveness says ``node``'s incarnation ``nonce`` is up (``returned``: from the
        other side of a partition)."""
        peer = self.by_node.get(node)
        if peer is not None and not peer.up and peer.nonce == nonce:
            peer.up = True
            self._events.append(Event(EventKind.NODE_UP, node, None, node, None))
            self.schedule_recontact(node, now, synced=synced)
        elif peer is None and returned:
            # A process back from the other side of a partition, never heard on this
            # store's topic (nothing was written there before): it may hold the store.
            self.schedule_recontact(node, now, synced=synced)

    def gone(self, node: str, peer: Peer, now: int) -> None:
        """``peer`` went down or left: mark it down (``NODE_DOWN`` once)."""
        if peer.up:
            peer.up = False
            peer.down_at = now
            peer.commitment = None  # a replica reopened in the same process commits anew
            if self.prune_at is None:
                self.prune_at = now + _PEER_MEMORY_MS
            peer.synced = None
            self._events.append(Event(EventKind.NODE_DOWN, node, None, node, None))

    def leave_believed(self, msg: wire.Leave, peer: Peer) -> bool:
        """Whether a `Leave` is honoured: its token matches its hellos' commitment, or
        liveness does not count its incarnation alive (a leaving process says its
        goodbye there too). Otherwise, as a forgery would be, it is counted."""
        proven = (
            msg.token is not None
            and bool(peer.commitment)
            and wire.leave_commitment(msg.token) == peer.commitment
        )
        if not proven and self._alive(msg.sender, msg.nonce) is True:
            self._stats.leaves_unproven += 1
            return False
        return True

    def _prune(self) -> bool:
        down = [n for n, p in self.by_node.items() if not p.up]
        for node in down:
            del self.by_node[node]
        return bool(down)

    def forget_down(self, now: int, writers: Container[str]) -> None:
        """Forget peers down for a while that never wrote (not in ``writers``, the
        horizon's): the table holds the live and the writers whose departure compaction
        weighs, not every sender ever seen."""
        self.prune_at = None
        first: int | None = None
        for node in [n for n, p in self.by_node.items() if not p.up]:
            p = self.by_node[node]
            if node in writers:
                continue  # compaction weighs how long it is down
            if now - p.down_at >= _PEER_MEMORY_MS:
                del self.by_node[node]
                self.returned.discard(node)
            elif first is None or p.down_at < first:
                first = p.down_at
        if first is not None:
            self.prune_at = first + _PEER_MEMORY_MS

    # --- choosing and serving --------------------------------------------------------

    def choose(self, now: int) -> str | None:
        """The peer to sync with: up, not refused lately, the one synced with least
        recently first (so exchanges spread over every pair), proven peers before others:
        those an exchange completed with, then those liveness confirms, then the rest
        (a sender that only claims to be synced is tried last)."""
        retry_after = self._retry_after
        best: tuple[int, int, float] | None = None
        chosen = None
        rng = self._rng
        for node, p in self.by_node.items():
            if not p.up or p.synced is False:
                continue
            if p.failed_at >= 0 and now - p.failed_at < retry_after:
                continue
            proven = 0 if p.last_ok >= 0 else 1 if self._alive(node, p.nonce) is True else 2
            rank = (proven, p.last_ok, rng.random())
            if best is None or rank < best:
                best, chosen = rank, node
        if chosen is None and self._live_nodes is not None:
            # No replica of this store known: ask a live node of the process's liveness
            # stream (it may hold the store; if not, the exchange times out).
            others = sorted(set(self._live_nodes()) - {self._node_id} - set(self.by_node))
            if others:
                chosen = rng.choice(others)
        return chosen

    def may_serve(self, peer: str, now: int, *, synced: bool) -> str:
        """Whether to answer a new exchange ``peer`` asks for: ``"ok"``, ``"busy"`` or
        ``"refused"``.

        Only a synced replica answers, only a peer liveness confirms alive (a request
        from a sender nobody heard on the liveness stream, a forged one naming a node
        that does not exist, gets a one-line "busy"), and each peer has a budget of new
        exchanges (`_SERVE_BURST`, then one per `_SERVE_EVERY_MS`).
        """
        if not synced:
            return "refused"
        p = self.by_node.get(peer)
        if p is None or not p.up:
            return "refused"
        if self._has_liveness and self._alive(peer, p.nonce) is not True:
            self._stats.syncs_unserved += 1
            return "busy"  # not confirmed yet: the requester retries later
        if p.served_at >= 0:
            p.tokens = min(float(_SERVE_BURST), p.tokens + (now - p.served_at) / _SERVE_EVERY_MS)
        p.served_at = now
        if p.tokens < 1:
            self._stats.syncs_unserved += 1
            return "busy"
        p.tokens -= 1
        return "ok"

    def sync_finished(self, notice: SyncFinished, now: int) -> Peer | None:
        """An exchange this replica asked for ended: note how it went; returns its peer
        (None when the partner is no known replica of this store)."""
        peer = self.by_node.get(notice.peer)
        if notice.peer == self.recontacting:
            self.recontacting = None
            if notice.ok:
                self.returned.clear()
            else:
                if peer is None:
                    self.returned.discard(notice.peer)  # it does not hold this store
                if self.returned:
                    self.recontact_at = now + self._hello_window
        if peer is not None:
            if notice.ok:
                peer.last_ok = now
                peer.synced = True
                peer.failed_at = -1
            else:
                peer.failed_at = now
                if notice.reason == "refused":
                    peer.synced = False
        return peer

    # --- peers that came back --------------------------------------------------------

    def schedule_recontact(self, peer: str, now: int, *, synced: bool) -> None:
        """A peer came back (a partition healed): one sync soon, however many came back,
        with one of those that came back (the peers on this side hold nothing new)."""
        if not synced:
            return
        if len(self.returned) < _MAX_RETURNED:
            self.returned.add(peer)
        if self.recontact_at is None:
            # Jittered, so that a peer every replica sees come back at once is not asked
            # by all of them in the same instant.
            window = self._hello_window
            self.recontact_at = now + window + self._rng.randrange(2 * window)

    def recontact(
        self, now: int, *, requesting: bool, request: Callable[[str], str | None]
    ) -> None:
        """Sync with one peer that came back (``request(peer)`` starts the exchange);
        until one such exchange succeeds, try again every hello window (the others may
        not count this replica as up yet, and refuse). ``requesting``: an exchange this
        replica asked for is under way (then later)."""
        self.recontact_at = None
        if requesting:
            self.recontact_at = now + self._hello_window
            return
        retry_after = self._retry_after
        returned = []
        unknown = []
        live = set(self._live_nodes()) if self._live_nodes is not None else set()
        for node in sorted(self.returned):
            p = self.by_node.get(node)
            if p is None:
                if node in live:
                    unknown.append(node)  # not known to hold the store: asked last
                else:
                    self.returned.discard(node)
            elif not p.up:
                self.returned.discard(node)
            elif p.failed_at < 0 or now - p.failed_at >= retry_after:
                returned.append(node)
        if not self.returned:
            return
        if not returned and not unknown:
            self.recontact_at = now + self._hello_window
            return
        self.recontacting = request(self._rng.choice(returned or unknown))
