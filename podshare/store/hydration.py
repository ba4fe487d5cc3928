"""Joining a store: hellos and their answers, the choice of a donor, the evidence that
no synced replica exists, and the tie-break of a cold-started fleet.

Part of the sans-I/O core (every method takes ``now``, wall-clock milliseconds). A
joining replica broadcasts a `Hello`; synced peers answer (`HelloAck`), about
`_HELLO_ANSWERS` of them on average however large the fleet, and the joiner syncs with
the least loaded one (`Hydration.hydrate_from_best()`). When no synced peer answers,
the transport's evidence (connected? how many other subscribers?) decides whether the
cluster has none (`Hydration.weigh_evidence()`); `Hydration.break_the_tie()` ends a wait
no synced replica will ever end. The `Replica` wires it to its peer table and sync
engine and feeds it the hellos it receives.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any, Final

from podshare.store import wire
from podshare.store.events import Stats
from podshare.store.peers import Peer, PeerTable
from podshare.store.state import MapState
from podshare.store.sync import SyncEngine

__all__ = ["Hydration"]

# Synced peers answer a hello with this many answers on average, fleet-wide.
_HELLO_ANSWERS: Final = 4
# The longest pause between two hellos of a replica that is still not synced.
_HELLO_BACKOFF_MAX: Final = 5_000
_COLLECT_MS: Final = 50  # a joiner waits at most this long for more hello answers
_TRANSFER_MEMORY_MS: Final = 60_000  # full transfers served this recently count as load


class Hydration:
    """Whether a replica holds the cluster's state yet, and how it gets there.

    Args:
        node_id: this replica's node id.
        nonce: this incarnation's nonce.
        commitment: the hash of the token this replica's Leave reveals (in its hellos).
        peers: the replica's peer table.
        sync: the replica's sync engine (a donor is asked with ``sync.start``).
        state: the replica's map (its size goes in hellos; empty: a full transfer).
        stats: the replica's statistics record (``hydration_seconds``).
        send_to: ``send_to(node, data)`` queues a message for one node's inbox.
        broadcast: ``broadcast(data)`` queues a message for the store's topic.
        live_nodes: the node ids the process's liveness knows alive, or None.
        rng: random choices (whether to answer, ties between donors).
        hello_window_ms: how long a joiner waits for answers before weighing evidence.
        started_at: when the replica started (for ``hydration_seconds``).
    """

    __slots__ = (
        "_broadcast",
        "_commitment",
        "_live_nodes",
        "_node_id",
        "_nonce",
        "_peers",
        "_rng",
        "_send_to",
        "_started_at",
        "_state",
        "_stats",
        "_sync",
        "_window",
        "candidates",
        "collect_at",
        "evidence_others",
        "evidence_ready",
        "hello_at",
        "hello_backoff",
        "hydrating",
        "rejoining",
        "synced",
        "unsynced_answers",
    )

    def __init__(
        self,
        node_id: str,
        nonce: int,
        commitment: bytes,
        *,
        peers: PeerTable,
        sync: SyncEngine,
        state: MapState[Any],
        stats: Stats,
        send_to: Callable[[str, bytes], None],
        broadcast: Callable[[bytes], None],
        live_nodes: Callable[[], Iterable[str]] | None,
        rng: random.Random,
        hello_window_ms: int,
        started_at: int,
    ) -> None:
        self._node_id = node_id
        self._nonce = nonce
        self._commitment = commitment
        self._peers = peers
        self._sync = sync
        self._state = state
        self._stats = stats
        self._send_to = send_to
        self._broadcast = broadcast
        self._live_nodes = live_nodes
        self._rng = rng
        self._window = hello_window_ms
        self._started_at = started_at
        #: Hydrated from a synced peer, or the evidence says no synced peer exists.
        self.synced = False
        #: Joining: hellos out, waiting for answers or an exchange.
        self.hydrating = False
        #: When the next hello is due (None: none).
        self.hello_at: int | None = None
        self.hello_backoff = hello_window_ms
        #: Synced peers that answered and were not asked yet.
        self.candidates: set[str] = set()
        #: Peers that answered they are not synced either.
        self.unsynced_answers: set[str] = set()
        self.evidence_ready = False
        self.evidence_others: int | None = None
        #: When the joiner stops waiting for more answers (None: not waiting).
        self.collect_at: int | None = None
        #: A synced replica with nobody to sync with asked who is there (see `rejoin`).
        self.rejoining = False

    def start(self, now: int) -> None:
        """Start joining: ask the store's synced peers (a broadcast hello)."""
        if self.synced or self.hydrating:
            return
        self.hydrating = True
        self.hello_backoff = self._window
        self._send_hello(now)

    def rejoin(self, now: int) -> None:
        """A synced replica has a repair to make but knows no peer to ask (its hello
        went out before its transport reached anyone, say): ask who is there. The first
        synced replica to answer is asked for an exchange; answering also makes the
        others know this replica."""
        if not self.synced or self.hydrating:
            return
        self.rejoining = True
        msg = wire.Hello(
            self._node_id,
            self._nonce,
            now,
            True,
            True,
            len(self._state.entries),
            self._commitment,
        )
        self._broadcast(wire.encode(msg))

    def _send_hello(self, now: int) -> None:
        msg = wire.Hello(
            self._node_id,
            self._nonce,
            now,
            self.synced,
            True,
            len(self._state.entries),
            self._commitment,
        )
        self._broadcast(wire.encode(msg))
        self.hello_at = now + self.hello_backoff

    def tick(self, now: int) -> None:
        """What is due: the next hello (after weighing the evidence), the end of the wait
        for more answers."""
        if self.hello_at is not None and now >= self.hello_at:
            self.hello_at = None
            if self.hydrating and not self._sync.requesting():
                self.weigh_evidence(now, final=True)
                if self.hydrating:
                    self.hello_backoff = min(2 * self.hello_backoff, _HELLO_BACKOFF_MAX)
                    self._send_hello(now)
        if self.collect_at is not None and now >= self.collect_at:
            self.collect_at = None
            if self.hydrating and not self._sync.requesting():
                self.hydrate_from_best(now)

    def cluster_evidence(self, now: int, *, ready: bool, others: int | None) -> None:
        """What the transport knows: connected to its cluster? other subscribers?"""
        self.evidence_ready = ready
        self.evidence_others = others
        if self.hydrating and not self.candidates and not self._sync.requesting():
            self.weigh_evidence(now, final=False)

    def weigh_evidence(self, now: int, *, final: bool) -> None:
        """No synced peer answered: decide whether the cluster has none."""
        if not self.evidence_ready:
            return
        others = self.evidence_others
        if others == 0 or (others is not None and len(self.unsynced_answers) >= others):
            self.become_synced(now)
        elif others is None and final:
            self.become_synced(now)  # no evidence either way: the hello window decides

    def break_the_tie(self, now: int) -> bool:
        """No synced replica answered for long: become synced if this replica has the
        lowest node id among the unsynced replicas it knows of. Returns whether it did."""
        if self.synced or not self.hydrating or self._sync.requesting():
            return False
        if self._peers.any_synced_up():
            return False
        if any(n < self._node_id for n in self._peers.live()):
            return False
        self.become_synced(now)
        return True

    def become_synced(self, now: int) -> None:
        """Synced: stop joining, and say so (peers choose partners among synced ones)."""
        self.synced = True
        self.hydrating = False
        self.hello_at = None
        self._stats.hydration_seconds = (now - self._started_at) / 1000
        msg = wire.Hello(
            self._node_id,
            self._nonce,
            now,
            True,
            False,
            len(self._state.entries),
            self._commitment,
        )
        self._broadcast(wire.encode(msg))

    def on_hello(self, msg: wire.Hello, peer: Peer, now: int) -> None:
        """A peer's hello: note what it says; answer it when it asks and this replica's
        answer is needed."""
        peer.pin_commitment(msg.commitment, now)
        peer.synced = msg.synced
        peer.keys = msg.keys
        if not msg.ask:
            return
        sync = self._sync
        if self.synced:
            # About _HELLO_ANSWERS synced replicas answer, fewer of those serving: the
            # fleet's size is the larger of the store's peers and the live processes (a
            # replica that was written to by few peers knows few of them). In a fleet
            # large enough that others will answer, the full transfers served lately
            # count too (joins spread over the fleet; a joiner no one answered says
            # hello again, backing off).
            live = sum(1 for _ in self._peers.live())
            if self._live_nodes is not None:
                live = max(live, len(set(self._live_nodes())) - 1)
            if live > 2 * _HELLO_ANSWERS:
                load = 1 + self.recent_transfers(now)
            else:
                load = 1 + len(sync.serving)
            if self._rng.random() * max(1, live) * load >= _HELLO_ANSWERS:
                return  # enough others answer, on average
        elif self._peers.any_synced_up():
            return  # a synced peer will answer; an unsynced answer is no evidence then
        ack = wire.HelloAck(
            self._node_id,
            self._nonce,
            now,
            self.synced,
            len(self._state.entries),
            self.recent_transfers(now),
            self._commitment,
        )
        self._send_to(msg.sender, wire.encode(ack))

    def recent_transfers(self, now: int) -> int:
        """Exchanges served now plus full transfers served lately: a joiner asks the
        least loaded of the replicas that answered its hello."""
        sync = self._sync
        recent = sync.full_served
        while recent and now - recent[0] > _TRANSFER_MEMORY_MS:
            recent.popleft()
        return len(sync.serving) + len(recent)

    def on_hello_ack(self, msg: wire.HelloAck, peer: Peer, now: int) -> None:
        """An answer to this replica's hello: a donor candidate, or evidence."""
        peer.pin_commitment(msg.commitment, now)
        peer.synced = msg.synced
        peer.transfers = msg.transfers
        peer.keys = msg.keys
        if self.rejoining and msg.synced and not self._sync.requesting():
            self.rejoining = False
            self._sync.start(msg.sender, now, full=self.wants_full(msg.sender))
            return
        if not self.hydrating:
            return
        if msg.synced:
            self.candidates.add(msg.sender)
            if self._sync.requesting():
                pass
            elif len(self.candidates) >= self._answers_expected():
                self.hydrate_from_best(now)
            elif self.collect_at is None:
                # Wait a moment for the other answers, to ask the least loaded.
                self.collect_at = now + min(_COLLECT_MS, self._window // 4)
        else:
            self.unsynced_answers.add(msg.sender)
            self.weigh_evidence(now, final=False)

    def _answers_expected(self) -> int:
        """How many synced answers a joiner waits for (at most `_COLLECT_MS`): about
        `_HELLO_ANSWERS` answer, fewer when the transport counts fewer others."""
        others = self.evidence_others
        if others is None:
            return _HELLO_ANSWERS
        return max(1, min(_HELLO_ANSWERS, others))

    def hydrate_from_best(self, now: int) -> None:
        """Ask the least loaded synced candidate for its state (if any is left)."""
        self.collect_at = None
        peers = self._peers.by_node
        candidates = [n for n in self.candidates if peers.get(n) is not None]
        if not candidates:
            return
        best = min(candidates, key=lambda n: (peers[n].transfers, self._rng.random()))
        self.candidates.discard(best)
        self._sync.start(best, now, full=self.wants_full(best))

    def wants_full(self, partner: str) -> bool:
        """Whether to ask ``partner`` for everything rather than a digest exchange: when
        this replica holds nothing, or while it hydrates and holds under 90 % of the keys
        the partner said it holds (a transfer cut short: comparing digests would summarise
        every key the joiner lacks, which costs both sides more than sending them; a
        replica loaded from persistence holds about as many and compares digests)."""
        held = len(self._state.entries)
        if not held:
            return True
        peer = self._peers.by_node.get(partner)
        return self.hydrating and peer is not None and 10 * held < 9 * peer.keys

    def exchange_ended(self, ok: bool, peer: Peer | None, now: int) -> None:
        """An exchange this replica asked for ended (``peer``: its partner, if a known
        replica): synced after a complete one with a synced partner; else the next
        candidate."""
        if not self.hydrating:
            return
        if ok:
            if peer is None or peer.synced:
                self.become_synced(now)
        else:
            self.hydrate_from_best(now)
