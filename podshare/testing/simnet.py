"""A simulated network: a deterministic, in-thread cluster of replicas with faults and a fake clock.

[`SimNetwork`][podshare.testing.SimNetwork] drives the sans-I/O cores directly, exactly as
[`Store`][podshare.Store] does (no anyio, no sockets, no real time): each node runs one
`Membership` (its liveness stream) and one
`Replica` of the store. A test or a Hypothesis state
machine can run a whole cluster in one thread and replay any failure from its seed.
Messages in flight can be dropped, duplicated and reordered; nodes can be partitioned,
healed, crashed, made to leave and join; each node may run its clock ahead or behind.

Example:
    >>> from podshare.testing import SimNetwork
    >>> net = SimNetwork(seed=1)
    >>> a, b = net.add("a"), net.add("b")
    >>> net.settle()
    >>> net.set("a", "greeting", "hello")
    >>> net.settle()
    >>> net.replica("b").values
    {'greeting': 'hello'}
    >>> net.partition({"a"}, {"b"})
    >>> net.delete("b", "greeting")
    >>> net.settle()
    >>> "greeting" in net.replica("a").values
    True
    >>> net.heal()
    >>> net.sync_all()
    >>> net.converged()
    True
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from podshare.crdt.merger import Merger, merger_for
from podshare.exceptions import ConfigurationError, PodshareError
from podshare.store.codec import Codec, value_codec
from podshare.store.events import Event
from podshare.store.membership import LivenessOptions, Membership
from podshare.store.replica import Replica, ReplicaOptions
from podshare.store.sync import SyncFinished

__all__ = ["DEFAULT_START_MS", "SimNetwork", "SimNode"]

#: The fake clock's default start: a realistic wall-clock time in ms (2023-11-14).
DEFAULT_START_MS = 1_700_000_000_000

_STORE, _LIVE = 0, 1


@dataclass
class SimNode:
    """One node of a [`SimNetwork`][podshare.testing.SimNetwork].

    Attributes:
        node_id: the node's id.
        replica: its replica core.
        membership: its liveness core.
        clock_offset_ms: added to the network's clock for this node (a skewed clock).
        events: every event its replica produced, in order.
        errors: every error its replica and liveness produced, in order.
        finished: every sync notice its replica produced, in order.
    """

    node_id: str
    replica: Replica[Any]
    membership: Membership
    clock_offset_ms: int = 0
    events: list[Event[Any]] = field(default_factory=list)
    errors: list[PodshareError] = field(default_factory=list)
    finished: list[SyncFinished] = field(default_factory=list)


class SimNetwork:
    """A deterministic cluster of replicas of one store on a faulty simulated network.

    Args:
        seed: seeds every random choice (faults, reordering, nonces), so a run replays.
        value_type: the store's value type (``None``: plain JSON-like data).
        merger: the store's merger; default ``merger_for(value_type)``.
        codec: the value codec's format (``"json"``, ``"msgpack"`` or a ``Codec``).
        options: every replica's `ReplicaOptions`.
        liveness: every node's `LivenessOptions`.
        start_ms: the fake clock's start.
        drop: probability that a delivery is lost.
        duplicate: probability that a delivered message is delivered again later.
        reorder: probability that the next delivery is a random in-flight message
            rather than the oldest.

    The fault probabilities are plain attributes; change them at any time. Counters:
    ``delivered``, ``dropped``, ``bytes_sent``, and ``deliveries`` (per node id).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        value_type: Any = None,
        merger: Merger[Any] | None = None,
        codec: Codec | str | None = None,
        options: ReplicaOptions | None = None,
        liveness: LivenessOptions | None = None,
        name: str = "sim",
        start_ms: int = DEFAULT_START_MS,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
    ) -> None:
        for what, p in (("drop", drop), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ConfigurationError(f"{what} must be a probability in [0, 1], got {p!r}")
        self.rng = random.Random(seed)
        self.name = name
        self.value_type = value_type
        self.merger = merger if merger is not None else merger_for(value_type)
        self.codec = value_codec(value_type, codec)
        self.options = options if options is not None else ReplicaOptions()
        self.liveness = liveness if liveness is not None else LivenessOptions()
        #: The network's clock (wall-clock ms); nodes add their ``clock_offset_ms``.
        self.now = start_ms
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.nodes: dict[str, SimNode] = {}
        #: Messages in flight: ``(destination, channel, data)``.
        self.in_flight: list[tuple[str, int, bytes]] = []
        self._groups: dict[str, int] | None = None
        self.delivered = 0
        self.dropped = 0
        self.bytes_sent = 0
        #: Deliveries per destination node id.
        self.deliveries: dict[str, int] = {}

    # --- membership -----------------------------------------------------------------

    def add(
        self,
        node_id: str,
        *,
        clock_offset_ms: int = 0,
        hydrate: bool = True,
        nonce: int | None = None,
    ) -> Replica[Any]:
        """Start a node (and, with ``hydrate``, its replica's hydration); return the replica.

        ``nonce`` sets the incarnation (two nodes with one id and different nonces model
        two processes sharing a node id).
        """
        key = node_id if node_id not in self.nodes else f"{node_id}\x00{nonce}"
        if key in self.nodes:
            raise ConfigurationError(f"node {node_id!r} is already running")
        now = self.now + clock_offset_ms
        nonce = nonce if nonce is not None else self.rng.getrandbits(62)
        membership = Membership(
            node_id,
            nonce,
            token=self.rng.randbytes(16),
            options=self.liveness,
            now=now,
            max_message_size=self.options.max_message_size,
            rng=random.Random(self.rng.getrandbits(32)),
        )
        replica: Replica[Any] = Replica(
            self.name,
            node_id,
            nonce,
            self.codec,
            merger=self.merger,
            options=self.options,
            now=now,
            liveness=membership.alive,
            down_since=membership.down_since,
            live_nodes=membership.live_nodes,
            rng=random.Random(self.rng.getrandbits(32)),
        )
        node = SimNode(node_id, replica, membership, clock_offset_ms)
        self.nodes[key] = node
        if hydrate:
            replica.hydrate(now)
            self._evidence(node)
        self._drain(node)
        return replica

    def replica(self, node_id: str) -> Replica[Any]:
        """The replica of a running node."""
        return self.nodes[node_id].replica

    def crash(self, node_id: str) -> None:
        """Stop a node without a goodbye; its messages already in flight still arrive."""
        del self.nodes[node_id]

    def leave(self, node_id: str) -> None:
        """Stop a node cleanly: it publishes what it queued and its goodbyes."""
        node = self.nodes[node_id]
        now = self._now_of(node)
        node.replica.leave(now)
        node.membership.leave(now)
        self._drain(node)
        del self.nodes[node_id]

    # --- faults ---------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes in different groups cannot reach each other.

        Nodes named in no group form one more group together.
        """
        self._groups = {}
        for i, group in enumerate(groups, start=1):
            for node_id in group:
                self._groups[node_id] = i

    def heal(self, *, gap: bool = False) -> None:
        """Remove the partition (messages lost to it stay lost).

        ``gap``: also tell every node its transport had a gap, as a real transport does
        after a reconnect (each announces itself and syncs with one peer).
        """
        self._groups = None
        if gap:
            for node in list(self.nodes.values()):
                self.gap(node.node_id)

    def gap(self, node_id: str) -> None:
        """Node ``node_id``'s transport reports a gap (as after a reconnect)."""
        node = self.nodes[node_id]
        now = self._now_of(node)
        node.membership.gap(now)
        node.replica.request_sync(now)
        self._drain(node)

    def reachable(self, src: str, dst: str) -> bool:
        """Whether a message from ``src`` reaches ``dst`` under the current partition."""
        if self._groups is None:
            return True
        return self._groups.get(src, 0) == self._groups.get(dst, 0)

    # --- writes ---------------------------------------------------------------------

    def set(
        self,
        node_id: str,
        key: str,
        value: Any,
        *,
        ephemeral: bool = False,
        ttl_ms: int | None = None,
    ) -> None:
        """``node_id`` writes ``value`` at ``key`` and publishes it."""
        node = self.nodes[node_id]
        node.replica.local_set(key, value, self._now_of(node), ephemeral=ephemeral, ttl_ms=ttl_ms)
        self._drain(node)

    def delete(self, node_id: str, key: str) -> None:
        """``node_id`` deletes ``key`` and publishes it."""
        node = self.nodes[node_id]
        node.replica.local_delete(key, self._now_of(node))
        self._drain(node)

    def update(self, node_id: str, key: str, fn: Callable[[Any], Any]) -> None:
        """``node_id`` replaces ``key``'s value by ``fn(current)`` (as ``Store.update``)."""
        node = self.nodes[node_id]
        node.replica.local_update(key, fn, self._now_of(node))
        self._drain(node)

    def inject(self, node_id: str, data: bytes, *, liveness: bool = False) -> None:
        """Deliver raw bytes to ``node_id`` at once (garbage, replays, forged messages)."""
        self._deliver(self.nodes[node_id], _LIVE if liveness else _STORE, data)

    def request_sync(self, node_id: str, peer: str | None = None) -> None:
        """``node_id`` starts one exchange (with ``peer`` if given), as ``refresh()``."""
        node = self.nodes[node_id]
        node.replica.request_sync(self._now_of(node), peer=peer)
        self._drain(node)

    # --- driving --------------------------------------------------------------------

    def flush(self, node_id: str | None = None) -> None:
        """Put what ``node_id`` (default: every node) queued onto the network."""
        targets = [self.nodes[node_id]] if node_id is not None else list(self.nodes.values())
        for node in targets:
            self._drain(node)

    def step(self) -> bool:
        """Deliver one message in flight (subject to faults); False when none is left."""
        if not self.in_flight:
            return False
        rng = self.rng
        if self.reorder and len(self.in_flight) > 1 and rng.random() < self.reorder:
            dst, channel, data = self.in_flight.pop(rng.randrange(len(self.in_flight)))
        else:
            dst, channel, data = self.in_flight.pop(0)
        node = self.nodes.get(dst)
        if node is None or (self.drop and rng.random() < self.drop):
            self.dropped += 1
            return True
        if self.duplicate and rng.random() < self.duplicate:
            self.in_flight.append((dst, channel, data))
        self._deliver(node, channel, data)
        return True

    def run(self, max_steps: int = 1_000_000) -> None:
        """Deliver until nothing is in flight (or ``max_steps`` deliveries)."""
        for _ in range(max_steps):
            if not self.step():
                return

    def advance(self, ms: int, *, step_ms: int | None = None) -> None:
        """Move the clock forward by ``ms``, ticking every node and delivering as it goes.

        ``step_ms`` (default: the heartbeat interval) is the tick granularity.
        """
        step = step_ms if step_ms is not None else self.liveness.heartbeat_interval_ms
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + step)
            for key in list(self.nodes):
                node = self.nodes.get(key)
                if node is not None:
                    self._tick(node)
            self.run()

    def settle(self, ms: int | None = None) -> None:
        """Deliver everything, then let ``ms`` (default: a hello window and a sync timeout) pass."""
        self.flush()
        self.run()
        wait = ms if ms is not None else self.options.hello_window_ms + self.options.sync_timeout_ms
        self.advance(wait, step_ms=min(wait, self.liveness.heartbeat_interval_ms))

    def sync_all(self, rounds: int = 2) -> None:
        """Anti-entropy: every node syncs with each other node in turn, ``rounds`` times.

        Faults stay as configured; heal first (and zero ``drop``) to reach convergence.
        """
        timeout = self.options.sync_timeout_ms
        for _ in range(rounds):
            for key in sorted(self.nodes):
                for peer_key in sorted(self.nodes):
                    node = self.nodes.get(key)
                    peer = self.nodes.get(peer_key)
                    if node is None or peer is None or peer_key == key:
                        continue
                    node.replica.request_sync(self._now_of(node), peer=peer.node_id)
                    self._drain(node)
                    self.run()
                    if node.replica.sync.requesting():
                        self.advance(timeout, step_ms=max(1, timeout // 4))

    # --- checks ---------------------------------------------------------------------

    def states(self) -> dict[str, dict[str, Any]]:
        """Every running node's live values."""
        return {n: dict(node.replica.values) for n, node in self.nodes.items()}

    def converged(self) -> bool:
        """Whether every running node holds the same live values."""
        states = list(self.states().values())
        return all(s == states[0] for s in states[1:])

    # --- internals ------------------------------------------------------------------

    def _now_of(self, node: SimNode) -> int:
        return self.now + node.clock_offset_ms

    def _evidence(self, node: SimNode) -> None:
        others = sum(
            1
            for key, other in self.nodes.items()
            if other is not node and self.reachable(node.node_id, other.node_id)
        )
        node.replica.cluster_evidence(self._now_of(node), ready=True, others=others)

    def _tick(self, node: SimNode) -> None:
        now = self._now_of(node)
        if node.membership.next_deadline() <= now:
            node.membership.tick(now)
        if node.replica.next_deadline() <= now:
            node.replica.tick(now)
        self._drain(node)

    def _drain(self, node: SimNode) -> None:
        """Take every output of the node's cores, as the store's driver does."""
        replica, membership = node.replica, node.membership
        now = self._now_of(node)
        for _ in range(8):
            for event in membership.events_received():
                replica.node_event(event, now)
            node.errors.extend(membership.errors_received())
            live = membership.data_to_send()
            store = replica.data_to_send()
            node.events.extend(replica.events_received())
            node.errors.extend(replica.errors_received())
            node.finished.extend(replica.syncs_finished())
            if not live and not store:
                break
            for to, data in live:
                self._publish(node, _LIVE, to, data)
            for out in store:
                self._publish(node, _STORE, out.to, out.data)

    def _publish(self, node: SimNode, channel: int, to: str | None, data: bytes) -> None:
        src = node.node_id
        self.bytes_sent += len(data)
        if to is None:
            for key, other in self.nodes.items():
                if other is not node:
                    self._enqueue(src, key, other.node_id, channel, data)
        else:
            for key, other in self.nodes.items():
                if other.node_id == to and other is not node:
                    self._enqueue(src, key, to, channel, data)

    def _enqueue(self, src: str, key: str, dst: str, channel: int, data: bytes) -> None:
        if self.reachable(src, dst):
            self.in_flight.append((key, channel, data))
        else:
            self.dropped += 1

    def _deliver(self, node: SimNode, channel: int, data: bytes) -> None:
        self.delivered += 1
        self.deliveries[node.node_id] = self.deliveries.get(node.node_id, 0) + 1
        now = self._now_of(node)
        if channel == _LIVE:
            node.membership.receive(data, now)
        else:
            node.replica.receive(data, now)
        self._drain(node)
