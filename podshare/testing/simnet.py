"""A simulated network: a deterministic, in-thread cluster of replicas with faults and a fake clock.

:class:`SimNetwork` drives :class:`~podshare.store.replica.Replica` cores directly (no
anyio, no sockets, no real time), so a test or a Hypothesis state machine can run a
whole cluster in one thread and replay any failure from its seed. Messages in flight
can be dropped, duplicated and reordered; nodes can be partitioned, healed, crashed,
made to leave and join; each node may run its clock ahead or behind.

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
from podshare.store.replica import Outgoing, Replica, ReplicaOptions

__all__ = ["SimNetwork", "SimNode"]

#: The fake clock's default start: a realistic wall-clock time in ms (2023-11-14).
DEFAULT_START_MS = 1_700_000_000_000


@dataclass
class SimNode:
    """One node of a :class:`SimNetwork`.

    Attributes:
        node_id: the node's id.
        replica: its replica core.
        clock_offset_ms: added to the network's clock for this node (a skewed clock).
        events: every event its replica returned, in order.
        errors: every error its replica returned, in order.
    """

    node_id: str
    replica: Replica[Any]
    clock_offset_ms: int = 0
    events: list[Event[Any]] = field(default_factory=list)
    errors: list[PodshareError] = field(default_factory=list)


class SimNetwork:
    """A deterministic cluster of replicas of one store on a faulty simulated network.

    Args:
        seed: seeds every random choice (faults, reordering), so a run replays exactly.
        value_type: the store's value type (``None``: plain JSON-like data).
        merger: the store's merger; default ``merger_for(value_type)``.
        codec: the value codec's format (``"json"``, ``"msgpack"`` or a ``Codec``).
        options: every replica's :class:`~podshare.store.replica.ReplicaOptions`.
        start_ms: the fake clock's start.
        drop: probability that a delivery is lost.
        duplicate: probability that a delivered message is delivered again later.
        reorder: probability that the next delivery is a random in-flight message
            rather than the oldest.

    The fault probabilities are plain attributes; change them at any time.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        value_type: Any = None,
        merger: Merger[Any] | None = None,
        codec: Codec | str | None = None,
        options: ReplicaOptions | None = None,
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
        #: The network's clock (wall-clock ms); nodes add their ``clock_offset_ms``.
        self.now = start_ms
        self.drop = drop
        self.duplicate = duplicate
        self.reorder = reorder
        self.nodes: dict[str, SimNode] = {}
        #: Messages in flight: ``(destination, data)``.
        self.in_flight: list[tuple[str, bytes]] = []
        self._groups: dict[str, int] | None = None
        #: Messages delivered, dropped (by faults or partitions), and bytes sent per kind.
        self.delivered = 0
        self.dropped = 0
        self.bytes_sent = 0

    # --- membership -----------------------------------------------------------------

    def add(self, node_id: str, *, clock_offset_ms: int = 0, hydrate: bool = True) -> Replica[Any]:
        """Start a replica (and, with ``hydrate``, its hydration); return it."""
        if node_id in self.nodes:
            raise ConfigurationError(f"node {node_id!r} is already running")
        replica: Replica[Any] = Replica(
            self.name,
            node_id,
            self.codec,
            merger=self.merger,
            options=self.options,
            now=self.now + clock_offset_ms,
        )
        node = SimNode(node_id, replica, clock_offset_ms)
        self.nodes[node_id] = node
        if hydrate:
            replica.start_sync(self._now_of(node), hydrate=True)
        self._tick(node)
        return replica

    def replica(self, node_id: str) -> Replica[Any]:
        """The replica of a running node."""
        return self.nodes[node_id].replica

    def crash(self, node_id: str) -> None:
        """Stop a node without a goodbye; its messages already in flight still arrive."""
        del self.nodes[node_id]

    def leave(self, node_id: str) -> None:
        """Stop a node cleanly: it publishes what it queued and a goodbye."""
        node = self.nodes.pop(node_id)
        self._publish(node, node.replica.take_outgoing())
        self._publish(node, node.replica.leave(self._now_of(node)))

    # --- faults ---------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes in different groups cannot reach each other.

        Nodes named in no group form one more group together.
        """
        self._groups = {}
        for i, group in enumerate(groups, start=1):
            for node_id in group:
                self._groups[node_id] = i

    def heal(self) -> None:
        """Remove the partition (messages lost to it stay lost)."""
        self._groups = None

    def reachable(self, src: str, dst: str) -> bool:
        """Whether a message from ``src`` reaches ``dst`` under the current partition."""
        if self._groups is None:
            return True
        return self._groups.get(src, 0) == self._groups.get(dst, 0)

    # --- writes ---------------------------------------------------------------------

    def set(self, node_id: str, key: str, value: Any, *, ephemeral: bool = False) -> None:
        """``node_id`` writes ``value`` at ``key`` and publishes it."""
        node = self.nodes[node_id]
        self._record(
            node, node.replica.local_set(key, value, self._now_of(node), ephemeral=ephemeral)
        )
        self.flush(node_id)

    def delete(self, node_id: str, key: str) -> None:
        """``node_id`` deletes ``key`` and publishes it."""
        node = self.nodes[node_id]
        self._record(node, node.replica.local_delete(key, self._now_of(node)))
        self.flush(node_id)

    def update(self, node_id: str, key: str, fn: Callable[[Any], Any]) -> None:
        """``node_id`` replaces ``key``'s value by ``fn(current)`` (as ``Store.update``)."""
        replica = self.nodes[node_id].replica
        current = replica.values.get(key)
        if current is None:
            current = replica.empty_value(key)
        self.set(node_id, key, fn(current))

    def inject(self, node_id: str, data: bytes) -> None:
        """Deliver raw bytes to ``node_id`` at once (garbage, replays, forged messages)."""
        self._deliver(self.nodes[node_id], data)

    # --- driving --------------------------------------------------------------------

    def flush(self, node_id: str | None = None) -> None:
        """Put what ``node_id`` (default: every node) queued onto the network."""
        targets = [self.nodes[node_id]] if node_id is not None else list(self.nodes.values())
        for node in targets:
            self._publish(node, node.replica.take_outgoing())

    def step(self) -> bool:
        """Deliver one message in flight (subject to faults); False when none is left."""
        if not self.in_flight:
            return False
        rng = self.rng
        if self.reorder and len(self.in_flight) > 1 and rng.random() < self.reorder:
            dst, data = self.in_flight.pop(rng.randrange(len(self.in_flight)))
        else:
            dst, data = self.in_flight.pop(0)
        node = self.nodes.get(dst)
        if node is None or (self.drop and rng.random() < self.drop):
            self.dropped += 1
            return True
        if self.duplicate and rng.random() < self.duplicate:
            self.in_flight.append((dst, data))
        self._deliver(node, data)
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
        step = step_ms if step_ms is not None else self.options.heartbeat_interval_ms
        end = self.now + ms
        while self.now < end:
            self.now = min(end, self.now + step)
            for node in list(self.nodes.values()):
                if node.node_id in self.nodes:
                    self._tick(node)
            self.run()

    def settle(self, ms: int | None = None) -> None:
        """Deliver everything, then let ``ms`` (default: a hello window and a sync timeout) pass."""
        self.flush()
        self.run()
        wait = ms if ms is not None else self.options.hello_window_ms + self.options.sync_timeout_ms
        self.advance(wait, step_ms=min(wait, self.options.heartbeat_interval_ms))

    def sync_all(self, rounds: int = 2) -> None:
        """Anti-entropy: every node syncs with each other node in turn, ``rounds`` times.

        Faults stay as configured; heal first (and zero ``drop``) to reach convergence.
        """
        for _ in range(rounds):
            for node_id in sorted(self.nodes):
                for peer in sorted(self.nodes):
                    node = self.nodes.get(node_id)
                    if node is None or peer == node_id or peer not in self.nodes:
                        continue
                    node.replica.start_sync(self._now_of(node), prefer=peer)
                    self.flush(node_id)
                    self.run()
                    if node.replica.sync_in_progress:
                        self.advance(self.options.sync_timeout_ms)

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

    def _record(self, node: SimNode, events: Iterable[Event[Any]]) -> None:
        node.events.extend(events)

    def _tick(self, node: SimNode) -> None:
        replica = node.replica
        now = self._now_of(node)
        while replica.next_deadline() <= now:
            events, errors = replica.tick(now)
            node.events.extend(events)
            node.errors.extend(errors)
            if replica.next_deadline() <= now:
                break
        self._publish(node, replica.take_outgoing())

    def _publish(self, node: SimNode, outgoing: list[Outgoing]) -> None:
        src = node.node_id
        for out in outgoing:
            self.bytes_sent += len(out.data)
            if out.to is None:
                for dst in self.nodes:
                    if dst != src:
                        self._enqueue(src, dst, out.data)
            else:
                self._enqueue(src, out.to, out.data)

    def _enqueue(self, src: str, dst: str, data: bytes) -> None:
        if self.reachable(src, dst):
            self.in_flight.append((dst, data))
        else:
            self.dropped += 1

    def _deliver(self, node: SimNode, data: bytes) -> None:
        self.delivered += 1
        events, errors = node.replica.receive(data, self._now_of(node))
        node.events.extend(events)
        node.errors.extend(errors)
        self._publish(node, node.replica.take_outgoing())
