"""Liveness: which incarnations of which nodes are alive, for every store on one transport.

One `Membership` runs per process (node id) and transport, whatever the number of
stores and endpoints on it: a process is one node, with one liveness stream. It is
sans-I/O like the replica: bytes and time go in (`Membership.receive()`,
`Membership.tick()`), and the driver drains what it produced
(`Membership.data_to_send()`, `Membership.events_received()`,
`Membership.errors_received()`).

The protocol is a small SWIM. Its costs per node do not grow with the fleet:

- **Incarnations.** A node id can have several lives (restarts); each has a random
  ``nonce``, a start time and a *commitment* (a hash of a token its goodbye reveals).
  Everything is tracked per ``(node, nonce)``: a restart's ephemeral entries never
  outlive it because of a fast clock, and a second live process with the same node id
  is seen at once ([`DuplicateNodeId`][podshare.exceptions.DuplicateNodeId]).
- **Probes on a ring.** Live incarnations sit on a ring ordered by a hash of
  ``(node, nonce)``; each pings its ``monitors`` successors every
  ``heartbeat_interval`` and they answer to its inbox. A monitor that hears nothing from
  a successor for ``down_after * 0.6`` broadcasts a *suspicion*; the suspect refutes it
  (a higher version) or, ``down_after * 0.4`` later, every node counts it down. A dead
  node is thus down everywhere within about ``down_after`` of going silent, whatever
  the fleet size.
- **Alive beacons** are broadcast at join, on refutation, after a transport gap, and
  periodically at an interval that grows with the fleet (so every node receives at most
  about ``beacons_per_second`` of them): they repair views that missed a message, and a
  node nobody probes (views disagree) is still caught, later.
- **Goodbye.** A node leaving cleanly broadcasts `Bye` with
  the token of its commitment; a goodbye without it is ignored (counted): nobody with
  publish access can make a live node look gone.

Each node receives, per second, ``2 * monitors`` probe messages plus the beacons: about
25 at any fleet size with the defaults.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Final

from podshare.exceptions import DecodeError, DuplicateNodeId, PodshareError, ProtocolError
from podshare.store import wire

__all__ = [
    "LIVE_TOPIC",
    "LivenessOptions",
    "MemberEvent",
    "Membership",
    "commitment_of",
    "inbox_of",
]

#: The broadcast topic of the liveness stream.
LIVE_TOPIC: Final = "pl/live"

_ALIVE, _SUSPECT, _DOWN = 0, 1, 2
# The largest version a refutation may reach (the wire carries 63-bit versions).
_MAX_VERSION: Final = 2**63 - 1
# A suspicion naming a version this far beyond the one known here is not one a monitor
# can have heard (versions grow by one per refutation): forged, ignored.
_VERSION_STEP: Final = 1 << 16


def inbox_of(node: str) -> str:
    """The liveness inbox topic of ``node``."""
    return f"{LIVE_TOPIC}#{node}"


def commitment_of(token: bytes) -> bytes:
    """The commitment an Alive carries for the token its Bye will reveal."""
    return hashlib.blake2b(token, digest_size=16, person=b"podshare-bye").digest()


def _ring_position(node: str, nonce: int) -> int:
    digest = hashlib.blake2b(f"{node}\x00{nonce}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class LivenessOptions:
    """Timing of the liveness stream; every time in milliseconds.

    Attributes:
        heartbeat_interval_ms: how often each node probes its ring successors.
        down_after_ms: a silent incarnation is down this long after it went silent.
        monitors: ring successors each node probes.
        beacons_per_second: the beacon rate every node receives, fleet-wide (the
            interval of each node's beacon is the fleet size divided by it, and at least
            ``heartbeat_interval_ms``).
        max_members: the most incarnations tracked (a bound no peer can push past).
    """

    heartbeat_interval_ms: int = 1_000
    down_after_ms: int = 5_000
    monitors: int = 2
    beacons_per_second: float = 20.0
    max_members: int = 16_384

    @property
    def suspect_after_ms(self) -> int:
        """Silence after which a monitor suspects its successor."""
        return max(1, self.down_after_ms * 6 // 10)

    @property
    def suspicion_ms(self) -> int:
        """How long a suspicion lasts before the suspect is down."""
        return max(1, self.down_after_ms - self.suspect_after_ms)


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A change in liveness.

    Attributes:
        kind: ``"up"`` (an incarnation is alive), ``"down"`` (it is gone) or
            ``"duplicate"`` (``node`` is this node's id, used by another live process).
        node: the node id.
        nonce: the incarnation.
        returned: for ``"up"``: the incarnation had been counted down (a partition
            healed), so what it holds may differ from what this side holds.
    """

    kind: str
    node: str
    nonce: int
    returned: bool = False


class _Member:
    __slots__ = (
        "bye",
        "commitment",
        "confirmed",
        "contested",
        "counted",
        "down_at",
        "interval",
        "last_heard",
        "node",
        "nonce",
        "position",
        "started_at",
        "state",
        "suspect_until",
        "told",
        "version",
    )

    def __init__(self, node: str, nonce: int, now: int) -> None:
        self.node = node
        self.nonce = nonce
        self.version = 0
        self.started_at = 0
        self.commitment = b""
        self.state = _ALIVE
        self.confirmed = False
        self.counted = False  # counted in Membership._live (confirmed and not down)
        self.last_heard = now
        self.suspect_until = 0
        self.down_at = 0
        self.interval = 0
        self.position = _ring_position(node, nonce)
        self.bye = False  # left with a valid goodbye: nothing it says later is news
        # Two commitments were claimed for this incarnation (one forged): no goodbye is
        # taken for it, it goes down through the probes instead.
        self.contested = False
        self.told = 0  # when it was last told it counts as down here


class Membership:
    """The liveness of every incarnation this node knows (see the module docstring).

    Args:
        node_id: this node's id.
        nonce: this incarnation (random, 63 bits).
        token: the 16 random bytes its goodbye will reveal.
        options: timing.
        now: the wall clock (ms) when this incarnation started.
        max_message_size: the largest message the transport carries.
        rng: jitter.
    """

    def __init__(
        self,
        node_id: str,
        nonce: int,
        *,
        token: bytes,
        options: LivenessOptions,
        now: int,
        max_message_size: int,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.nonce = nonce
        self.options = options
        self.started_at = now
        self.version = 0
        self._token = token
        self._commitment = commitment_of(token)
        self._max_size = max_message_size
        self._rng = rng if rng is not None else random.Random()
        self._members: dict[tuple[str, int], _Member] = {}
        self._by_node: dict[str, set[int]] = {}
        # Confirmed incarnations not down, kept in step so live_count() walks nothing.
        self._live = 0
        self._out: list[tuple[str | None, bytes]] = []
        self._events: list[MemberEvent] = []
        self._errors: list[PodshareError] = []
        self._ring: list[_Member] | None = None
        self._probe = 0
        self._next_probe = now
        self._next_beacon = now
        self._duplicates_reported: set[int] = set()
        self._left = False
        self._now = now
        self._position = _ring_position(node_id, nonce)
        #: Counters (read by the driver's stats).
        self.forged_byes = 0
        self.forged_commitments = 0
        self.forged_suspicions = 0
        self.refused_members = 0
        self.duplicates = 0
        self.messages_received = 0
        self.decode_errors = 0
        self._beacon(now, join=True)

    # --- outputs ---------------------------------------------------------------------

    def data_to_send(self) -> list[tuple[str | None, bytes]]:
        """Messages to publish: ``(None, data)`` to broadcast, ``(node, data)`` to an inbox."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[MemberEvent]:
        """Liveness changes since the last call."""
        events, self._events = self._events, []
        return events

    def errors_received(self) -> list[PodshareError]:
        """Errors to report since the last call (bad input, duplicate node ids)."""
        errors, self._errors = self._errors, []
        return errors

    # --- queries ---------------------------------------------------------------------

    def alive(self, node: str, nonce: int) -> bool | None:
        """Whether incarnation ``(node, nonce)`` is alive: True, False (down) or None.

        ``None`` means not yet confirmed; asking makes this node expect it: an
        incarnation never heard from within ``down_after`` is then reported down, so an
        entry owned by a ghost cannot linger.
        """
        if node == self.node_id:
            if nonce == self.nonce:
                return True
            # Another process with this id: never expected (it is not tracked as a member,
            # so it would be "down" after down_after and its messages taken for a past
            # life's); alive once it was seen.
            return True if nonce in self._duplicates_reported else None
        m = self._members.get((node, nonce))
        if m is None:
            if len(self._members) < self.options.max_members:
                self._add(node, nonce, self._now)
            return None
        if m.state == _DOWN:
            return False
        return True if m.confirmed else None

    def down_since(self, node: str) -> int | None:
        """Since when every known incarnation of ``node`` is down, or None."""
        nonces = self._by_node.get(node)
        if not nonces:
            return None
        latest = 0
        for nonce in nonces:
            m = self._members[(node, nonce)]
            if m.state != _DOWN:
                return None
            latest = max(latest, m.down_at)
        return latest

    def live_nodes(self) -> frozenset[str]:
        """The node ids with a live confirmed incarnation, this one included."""
        live = {m.node for m in self._members.values() if m.state != _DOWN and m.confirmed}
        live.add(self.node_id)
        return frozenset(live)

    def live_count(self) -> int:
        """How many confirmed incarnations are alive, this one included."""
        return 1 + self._live

    def beacon_interval(self) -> int:
        """The current interval of this node's Alive beacon (ms)."""
        opts = self.options
        fleet_ms = int(1000 * self.live_count() / opts.beacons_per_second)
        return max(opts.heartbeat_interval_ms, fleet_ms)

    def next_deadline(self) -> int:
        """When `tick()` is next due (after the goodbye: nothing is, for an hour)."""
        if self._left:
            return self._now + 3_600_000
        return min(self._next_probe, self._next_beacon)

    # --- inputs ----------------------------------------------------------------------

    def receive(self, data: bytes, now: int) -> None:
        """One message from the liveness topics; never raises for bad input."""
        self._now = now
        self.messages_received += 1
        try:
            msg = wire.decode_unless_own(data, self.node_id, self.nonce, max_size=self._max_size)
        except ProtocolError as exc:
            self.decode_errors += 1
            self._errors.append(exc)
            return
        if msg is None:
            return
        if isinstance(msg, wire.Alive):
            self._on_alive(msg, now)
        elif isinstance(msg, wire.Ping):
            self._on_ping(msg, now)
        elif isinstance(msg, wire.Ack):
            self._on_ack(msg, now)
        elif isinstance(msg, wire.Suspect):
            self._on_suspect(msg, now)
        elif isinstance(msg, wire.Bye):
            self._on_bye(msg, now)
        elif isinstance(msg, wire.Members):
            for info in msg.members:
                self._learn(
                    info.node, info.nonce, info.version, info.started_at, info.commitment, now
                )
        else:
            self.decode_errors += 1
            self._errors.append(DecodeError(f"{type(msg).__name__} on the liveness topic"))

    def gap(self, now: int) -> None:
        """The transport may have lost messages: announce this node again."""
        if not self._left:
            self._beacon(now, join=True)

    def leave(self, now: int) -> None:
        """Say goodbye (the token proves it is this incarnation)."""
        self._now = now
        if self._left:
            return
        self._left = True
        self._out.append((None, wire.encode(wire.Bye(self.node_id, self.nonce, self._token))))

    def tick(self, now: int) -> None:
        """Probe, time suspicions out, beacon, prune: whatever is due at ``now``."""
        self._now = now
        if self._left:
            return
        opts = self.options
        if now >= self._next_probe:
            self._next_probe = now + opts.heartbeat_interval_ms
            self._check(now)
            self._ping_successors()
        if now >= self._next_beacon:
            self._beacon(now, join=False)

    # --- the protocol ------------------------------------------------------------------

    def _add(self, node: str, nonce: int, now: int) -> _Member:
        m = self._members[(node, nonce)] = _Member(node, nonce, now)
        self._by_node.setdefault(node, set()).add(nonce)
        self._ring = None
        return m

    def _learn(
        self, node: str, nonce: int, version: int, started_at: int, commitment: bytes, now: int
    ) -> _Member | None:
        """Record that incarnation ``(node, nonce)`` is alive at ``version``."""
        if node == self.node_id:
            if nonce != self.nonce:
                self._duplicate(nonce, now)
            return None
        m = self._members.get((node, nonce))
        if m is None:
            if len(self._members) >= self.options.max_members and not self._evict():
                self.refused_members += 1
                return None
            m = self._add(node, nonce, now)
        m.last_heard = max(m.last_heard, now)
        if m.state == _DOWN:
            if version <= m.version:
                if not m.bye:
                    self._tell_down(m, now)
                return m
            m.state = _ALIVE
            self._ring = None
            self._events.append(MemberEvent("up", node, nonce, returned=True))
        elif m.state == _SUSPECT and version > m.version:
            m.state = _ALIVE
        m.version = max(m.version, version)
        if not m.commitment:
            # The first commitment heard for an incarnation is its own (it announced it
            # when it started); a later, different one is someone else's.
            m.started_at = started_at
            m.commitment = commitment
        elif commitment != m.commitment and not m.contested:
            m.contested = True
            self.forged_commitments += 1
        if not m.confirmed:
            m.confirmed = True
            self._ring = None
            self._events.append(MemberEvent("up", node, nonce))
            self._replaced(m, now)
        self._recount(m)
        return m

    def _recount(self, m: _Member) -> None:
        """Keep ``_live`` in step with ``m``'s state."""
        live = m.confirmed and m.state != _DOWN
        if live != m.counted:
            m.counted = live
            self._live += 1 if live else -1

    def _replaced(self, new: _Member, now: int) -> None:
        """A new incarnation of a node: an older, still-alive one is over (a restart)."""
        for nonce in list(self._by_node.get(new.node, ())):
            old = self._members[(new.node, nonce)]
            if old is new or old.state == _DOWN or not old.confirmed:
                continue
            if old.started_at < new.started_at:
                self._down(old, now)
            elif old.state == _ALIVE:
                # Clocks disagree about which life is older: let the probes decide.
                old.state = _SUSPECT
                old.suspect_until = now + self.options.suspicion_ms

    def _down(self, m: _Member, now: int) -> None:
        if m.state == _DOWN:
            return
        m.state = _DOWN
        m.down_at = now
        self._ring = None
        self._recount(m)
        # Also for one never heard from: stores holding its entries must hear it is gone.
        self._events.append(MemberEvent("down", m.node, m.nonce))

    def _tell_down(self, m: _Member, now: int) -> None:
        """A node this one counts as down speaks (a partition healed, or a late message):
        tell it, so that, if it is alive, it refutes with a higher version everyone takes."""
        if now - m.told < self.options.heartbeat_interval_ms:
            return
        m.told = now
        suspect = wire.Suspect(self.node_id, self.nonce, m.node, m.nonce, m.version)
        self._out.append((m.node, wire.encode(suspect)))

    def _duplicate(self, nonce: int, now: int) -> None:
        self.duplicates += 1
        if nonce not in self._duplicates_reported:
            self._duplicates_reported.add(nonce)
            self._events.append(MemberEvent("duplicate", self.node_id, nonce))
            self._errors.append(
                DuplicateNodeId(
                    f"another live process uses node id {self.node_id!r} (its incarnation "
                    f"{nonce:#x}, this one {self.nonce:#x}): give every process its own id "
                    "(PODSHARE_NODE_ID, or node_id=)"
                )
            )
            # Make sure everyone knows this incarnation is alive too.
            self.version += 1
            self._beacon(now, join=False)

    def _on_alive(self, msg: wire.Alive, now: int) -> None:
        known = (msg.sender, msg.nonce) in self._members
        m = self._learn(msg.sender, msg.nonce, msg.version, msg.started_at, msg.commitment, now)
        if m is None:
            return
        m.interval = msg.interval_ms
        if msg.join and not known and self._is_predecessor_of(m):
            self._send_members(msg.sender)

    def _on_ping(self, msg: wire.Ping, now: int) -> None:
        if msg.target != self.node_id:
            return
        ack = wire.Ack(
            self.node_id, self.nonce, msg.probe, self.version, self.started_at, self._commitment
        )
        self._out.append((msg.sender, wire.encode(ack)))
        m = self._members.get((msg.sender, msg.nonce))
        if m is not None:
            m.last_heard = max(m.last_heard, now)

    def _on_ack(self, msg: wire.Ack, now: int) -> None:
        self._learn(msg.sender, msg.nonce, msg.version, msg.started_at, msg.commitment, now)

    def _on_suspect(self, msg: wire.Suspect, now: int) -> None:
        if msg.target == self.node_id:
            if msg.target_nonce != self.nonce or msg.target_version < self.version:
                return
            if msg.target_version >= _MAX_VERSION:
                self.forged_suspicions += 1  # no higher version exists to refute it with
                return
            # Refute: this incarnation is alive.
            self.version = msg.target_version + 1
            self._beacon(now, join=False)
            return
        m = self._members.get((msg.target, msg.target_nonce))
        if m is None or m.state != _ALIVE or msg.target_version < m.version:
            return
        if msg.target_version > m.version + _VERSION_STEP:
            self.forged_suspicions += 1
            return
        m.state = _SUSPECT
        m.suspect_until = now + self.options.suspicion_ms

    def _on_bye(self, msg: wire.Bye, now: int) -> None:
        m = self._members.get((msg.sender, msg.nonce))
        if m is None or not m.commitment or m.contested or commitment_of(msg.token) != m.commitment:
            self.forged_byes += 1
            return
        m.bye = True
        self._down(m, now)

    # --- probing ---------------------------------------------------------------------

    def _ring_members(self) -> list[_Member]:
        ring = self._ring
        if ring is None:
            ring = self._ring = sorted(
                (m for m in self._members.values() if m.state != _DOWN and m.confirmed),
                key=lambda m: m.position,
            )
        return ring

    def _successors(self) -> list[_Member]:
        ring = self._ring_members()
        if not ring:
            return []
        k = min(self.options.monitors, len(ring))
        me = self._position
        start = next((i for i, m in enumerate(ring) if m.position > me), 0)
        return [ring[(start + i) % len(ring)] for i in range(k)]

    def _is_predecessor_of(self, m: _Member) -> bool:
        """Whether ``m`` is among this node's ring successors (this node monitors it)."""
        return m in self._successors()

    def _ping_successors(self) -> None:
        for m in self._successors():
            self._probe += 1
            ping = wire.Ping(self.node_id, self.nonce, self._probe, m.node)
            self._out.append((m.node, wire.encode(ping)))

    def _check(self, now: int) -> None:
        opts = self.options
        monitored = {(m.node, m.nonce) for m in self._successors()}
        fallback_floor = 2 * opts.down_after_ms
        for key, m in list(self._members.items()):
            if m.state == _DOWN:
                if now - m.down_at > 10 * opts.down_after_ms + 3 * self.beacon_interval():
                    self._forget(key)
                continue
            if m.state == _SUSPECT:
                if now >= m.suspect_until:
                    self._down(m, now)
                continue
            silent = now - m.last_heard
            if not m.confirmed:
                if silent >= opts.down_after_ms:
                    self._down(m, now)
                continue
            if key in monitored:
                limit = opts.suspect_after_ms
            else:
                # Nobody's monitor caught it (views disagree): every node waits a little
                # differently, so one suspicion, not a storm, goes out.
                limit = max(fallback_floor, 3 * max(m.interval, opts.heartbeat_interval_ms))
                limit += int(limit * 0.5 * self._rng.random())
            if silent >= limit:
                m.state = _SUSPECT
                m.suspect_until = now + opts.suspicion_ms
                suspect = wire.Suspect(self.node_id, self.nonce, m.node, m.nonce, m.version)
                self._out.append((None, wire.encode(suspect)))

    def _forget(self, key: tuple[str, int]) -> None:
        m = self._members.pop(key, None)
        if m is not None and m.counted:
            self._live -= 1
        nonces = self._by_node.get(key[0])
        if nonces is not None:
            nonces.discard(key[1])
            if not nonces:
                del self._by_node[key[0]]

    def _evict(self) -> bool:
        """Make room by forgetting the longest-down incarnation, else the longest-expected
        one never heard from (forged senders fill the table with those); False if none."""
        down = [(m.down_at, k) for k, m in self._members.items() if m.state == _DOWN]
        if not down:
            down = [(m.last_heard, k) for k, m in self._members.items() if not m.confirmed]
        if not down:
            return False
        self._forget(min(down)[1])
        return True

    def _beacon(self, now: int, *, join: bool) -> None:
        interval = self.beacon_interval()
        alive = wire.Alive(
            self.node_id,
            self.nonce,
            self.version,
            self.started_at,
            self._commitment,
            now,
            join,
            interval,
        )
        self._out.append((None, wire.encode(alive)))
        jitter = self._rng.uniform(0.9, 1.1)
        self._next_beacon = now + int(interval * jitter)

    def _send_members(self, to: str) -> None:
        infos = [
            wire.MemberInfo(m.node, m.nonce, m.version, m.started_at, m.commitment)
            for m in self._members.values()
            if m.state != _DOWN and m.confirmed and m.node != to
        ]
        infos.append(
            wire.MemberInfo(
                self.node_id, self.nonce, self.version, self.started_at, self._commitment
            )
        )
        per_message = max(1, min(wire.MAX_BEACONS, (self._max_size - 256) // 320))
        for i in range(0, len(infos), per_message):
            msg = wire.Members(self.node_id, self.nonce, infos[i : i + per_message])
            self._out.append((to, wire.encode(msg)))
