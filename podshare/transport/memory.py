"""The in-process transport, with a public fault plan for tests.

[`MemoryTransport`][podshare.transport.MemoryTransport] moves messages between subscriptions in one
Python process. It is the transport of podshare's own tests, of the demo, and of users' tests:
several stores may share one transport (each subscribes its own topics), or each store may get
its own transport on a shared [`MemoryNetwork`][podshare.transport.MemoryNetwork] to model separate
pods that can be partitioned, disconnected and healed. A [`FaultPlan`][podshare.transport.FaultPlan]
makes delivery drop, duplicate, reorder and delay messages, reproducibly from a seed.

Example:
    >>> import anyio
    >>> async def main() -> None:
    ...     async with MemoryTransport() as tr, tr.subscribe("news") as messages:
    ...         await tr.publish("news", b"hello")
    ...         async for message in messages:
    ...             print(message)
    ...             break
    >>> anyio.run(main)
    b'hello'

Two pods that lose each other and find each other again:

```python
net = MemoryNetwork()
async with (
    MemoryTransport(network=net, name="a") as ta,
    MemoryTransport(network=net, name="b") as tb,
    Store("app", ta) as a,
    Store("app", tb) as b,
):
    net.partition(["a"], ["b"])     # messages between a and b are lost
    await a.set("k", 1)             # b does not see it
    net.heal()                      # both report a gap; the stores refresh
```
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Self

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from podshare._counters import StatsRecord
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.exceptions import ConfigurationError, MessageTooLarge, TransportError
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE, GapListeners, check_skip

__all__ = [
    "FaultPlan",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryTransportStats",
]

#: Messages a subscription buffers before further ones are dropped (and a gap reported).
DEFAULT_BUFFER_SIZE = 4096

# A message held back by ``FaultPlan.reorder`` goes out after the next message to the
# same subscription, or after this long if none comes, so reordering never turns into a
# silent permanent loss.
_HOLD_MAX_SECONDS = 0.05

_names = itertools.count(1)
_log = logging.getLogger("podshare.transport.memory")


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong with each delivery: drop, duplicate, reorder and delay.

    Each delivery (one message to one subscription) draws independently from a
    ``random.Random(seed)`` owned by the publishing transport, so a run with a ``seed``
    and the same sequence of publishes is reproducible.

    Args:
        drop: probability that the delivery is lost.
        duplicate: probability that it is delivered twice.
        reorder: probability that it is held back and delivered after the next message
            to the same subscription (or after 50 ms if none comes).
        delay: ``(low, high)`` seconds; each delivery waits a uniform time in that range
            in a task of the transport, never blocking the publisher.
        seed: seed of the random generator; ``None`` for a random one.

    Raises:
        ConfigurationError: naming the field, for a probability outside ``[0, 1]`` or a
            negative, non-finite or inverted delay.

    Example:
        >>> FaultPlan(drop=0.1, delay=(0.0, 0.005), seed=42)
        FaultPlan(drop=0.1, duplicate=0.0, reorder=0.0, delay=(0.0, 0.005), seed=42)
        >>> FaultPlan(drop=1.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        podshare.exceptions.ConfigurationError: FaultPlan.drop must be a probability ...
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "reorder"):
            p = getattr(self, name)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise ConfigurationError(
                    f"FaultPlan.{name} must be a probability in [0, 1], not {p!r}"
                )
        delay: object = self.delay
        if (
            not isinstance(delay, tuple | list)
            or len(delay) != 2
            or not all(
                isinstance(d, int | float) and not isinstance(d, bool) and math.isfinite(d)
                for d in delay
            )
            or not 0.0 <= delay[0] <= delay[1]
        ):
            raise ConfigurationError(
                "FaultPlan.delay must be (low, high) seconds with 0 <= low <= high, "
                f"not {self.delay!r}"
            )
        object.__setattr__(self, "delay", (float(delay[0]), float(delay[1])))
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ConfigurationError(f"FaultPlan.seed must be an int or None, not {self.seed!r}")

    @property
    def active(self) -> bool:
        """Whether this plan changes anything at all."""
        return bool(self.drop or self.duplicate or self.reorder or self.delay[1])


@dataclass(slots=True)
class MemoryTransportStats(StatsRecord):
    """Counters of one [`MemoryTransport`][podshare.transport.MemoryTransport];
    [`MemoryTransport.stats()`][podshare.transport.MemoryTransport.stats] returns a
    frozen snapshot.

    Attributes:
        published: messages accepted by ``publish``.
        delivered: deliveries put in a subscription's buffer (duplicates included).
        dropped: deliveries lost to the fault plan or to a partition.
        duplicated: extra deliveries made by the fault plan.
        reordered: deliveries held back by the fault plan.
        delayed: deliveries postponed by the fault plan.
        overflowed: deliveries *to this transport's* subscriptions lost because the
            subscription's buffer was full.
        gaps_reported: times this transport notified its gap listeners (``gaps`` in
            0.1; the name the other transports use).
        gap_listener_failures: gap listener calls that raised; each is logged on the
            ``podshare.transport.memory`` logger and never reaches a subscriber or a
            publisher.
    """

    published: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    delayed: int = 0
    overflowed: int = 0
    gaps_reported: int = 0
    gap_listener_failures: int = 0

    @property
    def gaps(self) -> int:
        """Deprecated alias of `gaps_reported`."""
        warnings.warn(
            "MemoryTransportStats.gaps is deprecated: use gaps_reported",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.gaps_reported


class MemoryNetwork:
    """The medium several [`MemoryTransport`][podshare.transport.MemoryTransport]\\ s share: models
    pods and their links.

    Transports join the network when they are entered and leave when they close; they are
    known by their ``name``. Every transport always reaches its own subscriptions.

    Example:
        >>> net = MemoryNetwork()
        >>> net.partition(["a", "b"], ["c"])
        >>> net.can_reach("a", "b"), net.can_reach("a", "c")
        (True, False)
        >>> net.heal()
        >>> net.can_reach("a", "c")
        True
    """

    def __init__(self) -> None:
        self._transports: dict[str, MemoryTransport] = {}
        self._subscriptions: dict[str, dict[int, _Subscription]] = {}
        # name -> group index while partitioned; names in no group are isolated.
        self._groups: dict[str, int] | None = None
        self._disconnected: set[str] = set()
        # True when delivery needs a reachability check (the common case skips it).
        self._restricted = False

    @property
    def names(self) -> frozenset[str]:
        """The names of the transports currently on the network."""
        return frozenset(self._transports)

    def partition(self, *groups: Iterable[str] | str) -> None:
        """Split the network: messages only travel within a group.

        Each group is an iterable of transport names (a bare string is a group of one).
        A transport named in no group is isolated. Calling it again replaces the
        previous partition.

        Raises:
            ConfigurationError: when a name appears in two groups.
        """
        assignment: dict[str, int] = {}
        for index, group in enumerate(groups):
            for name in [group] if isinstance(group, str) else group:
                if assignment.get(name, index) != index:
                    raise ConfigurationError(f"partition: {name!r} is in two groups")
                assignment[name] = index
        self._groups = assignment
        self._update_restricted()

    def heal(self) -> None:
        """End the partition and tell every transport's gap listeners that messages may
        have been lost, so stores refresh by themselves."""
        was_partitioned = self._groups is not None
        self._groups = None
        self._update_restricted()
        if was_partitioned:
            self._notify_all()

    def disconnect(self, name: str) -> None:
        """Cut transport ``name`` off: its ``publish`` raises
        [`TransportError`][podshare.TransportError] and it receives nothing from others
        (as a pod whose connection dropped) until
        [`reconnect()`][podshare.transport.MemoryNetwork.reconnect]."""
        self._disconnected.add(name)
        self._update_restricted()

    def reconnect(self, name: str) -> None:
        """Undo [`disconnect()`][podshare.transport.MemoryNetwork.disconnect] and report a gap to
        every transport's listeners (the
        returning pod missed messages, and the others missed its writes)."""
        if name in self._disconnected:
            self._disconnected.discard(name)
            self._update_restricted()
            self._notify_all()

    def is_connected(self, name: str) -> bool:
        """Whether ``name`` is not disconnected."""
        return name not in self._disconnected

    def can_reach(self, sender: str, receiver: str) -> bool:
        """Whether a message from ``sender`` currently reaches ``receiver``."""
        if sender == receiver:
            return sender not in self._disconnected
        if sender in self._disconnected or receiver in self._disconnected:
            return False
        if self._groups is None:
            return True
        group = self._groups.get(sender)
        return group is not None and group == self._groups.get(receiver)

    def _update_restricted(self) -> None:
        self._restricted = self._groups is not None or bool(self._disconnected)

    def _notify_all(self) -> None:
        # A listener that raises is logged and counted by its transport, never raised
        # here: every transport is told.
        for transport in list(self._transports.values()):
            transport.simulate_gap()

    def _remote_subscribers(self, transport: MemoryTransport, topic: str) -> int:
        subs = self._subscriptions.get(topic)
        if not subs:
            return 0
        others = {sub.transport for sub in subs.values() if sub.transport is not transport}
        if not self._restricted:
            return len(others)
        return sum(1 for other in others if self.can_reach(transport.name, other.name))

    def _join(self, transport: MemoryTransport) -> None:
        if transport.name in self._transports:
            raise ConfigurationError(
                f"name {transport.name!r} is already used by another transport on this network"
            )
        self._transports[transport.name] = transport

    def _leave(self, transport: MemoryTransport) -> None:
        if self._transports.get(transport.name) is transport:
            del self._transports[transport.name]


class _Subscription:
    """One ``subscribe`` context: a bounded buffer and its iterator."""

    __slots__ = (
        "flush_pending",
        "held",
        "overflowed",
        "receive",
        "send",
        "skip",
        "topic",
        "transport",
    )

    def __init__(
        self,
        transport: MemoryTransport,
        topic: str,
        buffer_size: int,
        skip: tuple[int, bytes] | None = None,
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.skip = skip
        self.send: MemoryObjectSendStream[bytes]
        self.receive: MemoryObjectReceiveStream[bytes]
        self.send, self.receive = anyio.create_memory_object_stream[bytes](buffer_size)
        self.overflowed = False
        self.held: list[bytes] = []
        self.flush_pending = False

    def put(self, message: bytes) -> bool:
        """Buffer ``message``; False when the buffer is full or closed (never blocks)."""
        skip = self.skip
        if skip is not None and message.startswith(skip[1], skip[0]):
            return True  # the subscriber's own message: left out, as it asked
        try:
            self.send.send_nowait(message)
        except anyio.WouldBlock:
            self.overflowed = True
            self.transport._stats.overflowed += 1
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            message = await self.receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        if self.overflowed:
            # The consumer is draining again: the buffer has room, so delivery is
            # re-established and whatever was lost meanwhile can be pulled.
            self.overflowed = False
            self.transport.simulate_gap()
        return message

    def close(self) -> None:
        # Send side first: a consumer waiting in receive() sees the end of the stream.
        self.send.close()
        self.receive.close()


class MemoryTransport(Service):
    """An in-process [`Transport`][podshare.transport.Transport] with fault injection.

    Use it as an async context manager; it implements the transport contract exactly
    (``podshare.testing.check_transport`` verifies it), reports gaps
    ([`GapReporting`][podshare.transport.GapReporting]), is ready at once
    ([`ClusterReadiness`][podshare.transport.ClusterReadiness]) and counts the other transports
    subscribed to a topic ([`SubscriberCounting`][podshare.transport.SubscriberCounting]).

    - ``publish`` delivers to every subscription of the topic on every transport it
      reaches, including its own; it never blocks on a slow subscriber.
    - Each subscription buffers up to ``buffer_size`` messages. When the buffer is full,
      further messages *to that subscription* are dropped (counted in
      ``stats().overflowed``); once its consumer reads again the transport notifies its
      gap listeners, so a store refreshes and recovers what it missed. The subscription
      itself stays open.
    - ``faults`` (a [`FaultPlan`][podshare.transport.FaultPlan], settable at any time) applies to
      every delivery of the messages this transport publishes.
    - A gap listener that raises is logged and counted
      (``stats().gap_listener_failures``); the error never reaches the subscriber whose
      read noticed the gap, nor the code that healed or reconnected the network.

    Args:
        network: the [`MemoryNetwork`][podshare.transport.MemoryNetwork] to join; ``None`` gives a
            private one.
        name: this transport's name on the network (unique there); default
            ``"memory-<n>"``.
        faults: the fault plan for messages this transport publishes.
        max_message_size: the largest message ``publish`` accepts, in bytes.
        buffer_size: messages each subscription buffers.
        close_timeout: the most seconds closing may take (closing is immediate here;
            the option exists for every service alike).

    Raises:
        ConfigurationError: naming the option, for a bad option.

    Example:
        >>> import anyio
        >>> async def main() -> None:
        ...     net = MemoryNetwork()
        ...     async with (
        ...         MemoryTransport(network=net, name="a") as a,
        ...         MemoryTransport(network=net, name="b") as b,
        ...         b.subscribe("t") as inbox,
        ...     ):
        ...         net.partition(["a"], ["b"])
        ...         await a.publish("t", b"lost")
        ...         net.heal()
        ...         await a.publish("t", b"arrives")
        ...         print(await anext(aiter(inbox)), await a.remote_subscribers("t"))
        >>> anyio.run(main)
        b'arrives' 1
    """

    def __init__(
        self,
        *,
        network: MemoryNetwork | None = None,
        name: str | None = None,
        faults: FaultPlan | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__(close_timeout=close_timeout)
        if network is not None and not isinstance(network, MemoryNetwork):
            raise ConfigurationError(f"network must be a MemoryNetwork, not {network!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"name must be a non-empty string, not {name!r}")
        if faults is not None and not isinstance(faults, FaultPlan):
            raise ConfigurationError(f"faults must be a FaultPlan, not {faults!r}")
        for option, size in (("max_message_size", max_message_size), ("buffer_size", buffer_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ConfigurationError(f"{option} must be a positive int, not {size!r}")
        self.network = network if network is not None else MemoryNetwork()
        self.name = name if name is not None else f"memory-{next(_names)}"
        #: The largest message ``publish`` accepts, in bytes.
        self.max_message_size = max_message_size
        self._buffer_size = buffer_size
        self._faults: FaultPlan | None = None
        self._active_faults: FaultPlan | None = None  # None when the plan changes nothing
        self._random = random.Random()
        self.faults = faults
        self._gaps = GapListeners(_log)
        self._stats = MemoryTransportStats()
        self._subscriptions: dict[int, _Subscription] = {}
        self._joined = False

    # --- fault plan ------------------------------------------------------------------

    @property
    def faults(self) -> FaultPlan | None:
        """The fault plan for messages this transport publishes (settable; reseeds)."""
        return self._faults

    @faults.setter
    def faults(self, plan: FaultPlan | None) -> None:
        if plan is not None and not isinstance(plan, FaultPlan):
            raise ConfigurationError(f"faults must be a FaultPlan, not {plan!r}")
        self._faults = plan
        self._active_faults = plan if plan is not None and plan.active else None
        self._random = random.Random(plan.seed if plan is not None else None)

    # --- lifecycle (podshare._service.Service) -----------------------------------------

    def _describe(self) -> str:
        return f"MemoryTransport {self.name!r}"

    async def _open(self) -> None:
        self.network._join(self)
        self._joined = True

    def _closed(self) -> None:
        # Leave the network first: nothing published from now on reaches a closed
        # subscription. Pending delayed deliveries are background tasks: the service
        # cancels them.
        if self._joined:
            self._joined = False
            self.network._leave(self)
        for sub in list(self._subscriptions.values()):
            self._unregister(sub)

    async def aclose(self) -> None:
        """Close every subscription (their iterators end), cancel pending delayed
        deliveries and leave the network. Idempotent; ``publish`` afterwards raises
        [`ClosedError`][podshare.ClosedError]."""
        await super().aclose()

    @property
    def closed(self) -> bool:
        """Whether closing has begun ([`aclose()`][podshare.transport.MemoryTransport.aclose], or
        the end of ``async with``)."""
        return self.state in ("closing", "closed")

    # --- the transport protocol --------------------------------------------------------

    async def publish(self, topic: str, message: bytes) -> None:
        """Deliver ``message`` to every subscription of ``topic`` this transport reaches.

        Raises:
            ClosedError: the transport is not open.
            MessageTooLarge: ``message`` is longer than ``max_message_size``.
            TransportError: the network disconnected this transport.
        """
        # One checkpoint, before any side effect: cancelled means not published.
        await anyio.lowlevel.checkpoint()
        self._check_open()
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, not {topic!r}")
        if type(message) is not bytes:
            if not isinstance(message, bytes | bytearray | memoryview):
                raise TypeError(f"message must be bytes, not {type(message).__name__}")
            message = bytes(message)  # a private copy: the caller may reuse its buffer
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size="
                f"{self.max_message_size} of MemoryTransport {self.name!r}"
            )
        network = self.network
        if network._restricted and not network.is_connected(self.name):
            raise TransportError(f"MemoryTransport {self.name!r} is disconnected")
        stats = self._stats
        stats.published += 1
        subs = network._subscriptions.get(topic)
        if subs:
            faults = self._active_faults
            restricted = network._restricted
            for sub in list(subs.values()):
                if restricted and not network.can_reach(self.name, sub.transport.name):
                    stats.dropped += 1
                elif faults is None:
                    if sub.put(message):
                        stats.delivered += 1
                else:
                    self._deliver_with_faults(sub, message, faults)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``: entering registers the subscription (messages published
        afterwards are delivered), iterating yields them, leaving unsubscribes.

        Raises:
            ClosedError: on entering, when the transport is not open.
        """
        _check_topic(topic)
        return self._subscribe(topic, None)

    def subscribe_skipping(
        self, topic: str, *, prefix: bytes, offset: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """As [`subscribe`][podshare.transport.MemoryTransport.subscribe], leaving out
        the messages whose bytes at ``offset`` start with ``prefix`` (see
        [`EchoSkipping`][podshare.transport.EchoSkipping])."""
        _check_topic(topic)
        return self._subscribe(topic, check_skip(prefix, offset))

    @asynccontextmanager
    async def _subscribe(
        self, topic: str, skip: tuple[int, bytes] | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        sub = _Subscription(self, topic, self._buffer_size, skip)
        self._subscriptions[id(sub)] = sub
        self.network._subscriptions.setdefault(topic, {})[id(sub)] = sub
        try:
            yield sub
        finally:
            self._unregister(sub)

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Register ``listener``, called when messages to this transport may have been
        lost (heal, reconnect, buffer overflow,
        [`simulate_gap()`][podshare.transport.MemoryTransport.simulate_gap]); returns its remover. A
        listener that raises is logged and counted, never re-raised."""
        return self._gaps.add(listener)

    # --- optional capabilities ---------------------------------------------------------

    async def wait_ready(self) -> None:
        """Return at once: an open memory transport is always connected to its network.

        Raises:
            ClosedError: the transport is not open.
        """
        await anyio.lowlevel.checkpoint()
        self._check_open()

    async def remote_subscribers(self, topic: str) -> int | None:
        """How many *other* transports on this network subscribe to ``topic`` now and can
        be reached from this one.

        Each transport counts once, however many subscriptions it holds; this
        transport's own subscriptions never count, nor do transports that are
        disconnected or on the other side of a partition. ``None`` while this transport
        is itself disconnected (it cannot tell, as a client that lost its broker).

        Raises:
            ClosedError: the transport is not open.

        Example:
            >>> import anyio
            >>> async def main() -> None:
            ...     net = MemoryNetwork()
            ...     async with (
            ...         MemoryTransport(network=net, name="a") as a,
            ...         MemoryTransport(network=net, name="b") as b,
            ...         a.subscribe("t"),
            ...         b.subscribe("t"),
            ...         b.subscribe("t"),
            ...     ):
            ...         print(await a.remote_subscribers("t"), end=" ")
            ...         net.partition(["a"], ["b"])
            ...         print(await a.remote_subscribers("t"), end=" ")
            ...         net.disconnect("a")
            ...         print(await a.remote_subscribers("t"))
            >>> anyio.run(main)
            1 0 None
        """
        await anyio.lowlevel.checkpoint()
        self._check_open()
        _check_topic(topic)
        if not self.network.is_connected(self.name):
            return None
        return self.network._remote_subscribers(self, topic)

    # --- test helpers ------------------------------------------------------------------

    def simulate_gap(self) -> None:
        """Notify this transport's gap listeners now, as after a reconnect.

        A listener that raises is logged and counted in
        ``stats().gap_listener_failures``; this method does not raise it.
        """
        self._stats.gaps_reported += 1
        self._gaps.notify()

    def stats(self) -> MemoryTransportStats:
        """A frozen snapshot of this transport's counters."""
        self._stats.gap_listener_failures = self._gaps.failures
        return self._stats.snapshot()

    def __repr__(self) -> str:
        return f"MemoryTransport(name={self.name!r}, state={self.state!r})"

    # --- internals -------------------------------------------------------------------

    def _unregister(self, sub: _Subscription) -> None:
        key = id(sub)
        self._subscriptions.pop(key, None)
        subs = self.network._subscriptions.get(sub.topic)
        if subs is not None and subs.get(key) is sub:
            del subs[key]
            if not subs:
                del self.network._subscriptions[sub.topic]
        sub.close()

    def _deliver_with_faults(self, sub: _Subscription, message: bytes, faults: FaultPlan) -> None:
        rng = self._random
        stats = self._stats
        if faults.drop and rng.random() < faults.drop:
            stats.dropped += 1
            return
        copies = 1
        if faults.duplicate and rng.random() < faults.duplicate:
            copies = 2
            stats.duplicated += 1
        low, high = faults.delay
        for _ in range(copies):
            if faults.reorder and rng.random() < faults.reorder:
                stats.reordered += 1
                sub.held.append(message)
                if not sub.flush_pending:
                    sub.flush_pending = True
                    self.start_soon(self._flush_later, sub)
            elif high:
                stats.delayed += 1
                self.start_soon(self._deliver_later, sub, message, rng.uniform(low, high))
            else:
                self._put(sub, message)

    def _put(self, sub: _Subscription, message: bytes) -> None:
        if sub.put(message):
            self._stats.delivered += 1
        if sub.held:
            self._release_held(sub)

    def _release_held(self, sub: _Subscription) -> None:
        held, sub.held = sub.held, []
        for late in held:
            if sub.put(late):
                self._stats.delivered += 1

    async def _deliver_later(self, sub: _Subscription, message: bytes, delay: float) -> None:
        # A background task of this transport: closing cancels it.
        await anyio.sleep(delay)
        self._put(sub, message)

    async def _flush_later(self, sub: _Subscription) -> None:
        await anyio.sleep(_HOLD_MAX_SECONDS)
        sub.flush_pending = False
        self._release_held(sub)


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be a non-empty str, not {topic!r}")
