"""The Transport protocol: three byte-level methods any wire can implement.

A transport moves opaque ``bytes`` between processes on named topics. podshare's stores
and callreply endpoints need nothing more:

```python
class Transport(Protocol):
    async def publish(self, topic: str, message: bytes) -> None: ...
    def subscribe(self, topic: str) -> AsyncContextManager[AsyncIterator[bytes]]: ...
    async def aclose(self) -> None: ...
```

Contract (checked by [`podshare.testing.check_transport()`][podshare.testing.check_transport]):

- ``publish`` delivers ``message`` to every live subscription of ``topic`` in every
  process, *possibly including the publisher's own*; receivers filter by node id.
  Delivery is at most once per subscription and may be lost on failure; podshare's
  anti-entropy repairs losses. ``publish`` raises [`TransportError`][podshare.TransportError]
  when it knows the message did not go out (not connected, refused), and
  [`MessageTooLarge`][podshare.MessageTooLarge] for a message above ``max_message_size``.
- ``subscribe`` returns an async context manager; entering it subscribes (messages
  published after ``__aenter__`` returns are delivered), iterating yields messages in the
  order this process received them, leaving it unsubscribes and stops delivery.
- ``aclose`` releases everything; later calls raise [`ClosedError`][podshare.ClosedError].

Optional extras, discovered with ``isinstance`` against the runtime-checkable protocols
below:

- [`GapReporting`][podshare.transport.GapReporting]: the transport tells listeners when messages may
  have been lost (after a reconnect); stores then refresh by themselves.
- [`ClusterReadiness`][podshare.transport.ClusterReadiness]: ``wait_ready()`` returns once the
  transport is connected to its cluster as far as it can tell (memory: at once; TCP: every
  configured and discovered peer connected or failed to connect; Redis: connected and subscribed). A
  store entering ``async with`` waits for it before asking peers for their state.
- [`SubscriberCounting`][podshare.transport.SubscriberCounting]: ``remote_subscribers(topic)`` says
  how many *other* processes subscribe to a topic right now (Redis: ``PUBSUB NUMSUB``; TCP: what
  peers announced; memory: the network's table), or ``None`` when it cannot tell. A joining
  store uses it as evidence: with other subscribers it waits for them (up to
  ``hydrate_timeout``); with none, the cluster is empty and it is synced at once.
- `EchoSkipping`: ``subscribe_skipping(topic, prefix=..., offset=...)`` subscribes
  like ``subscribe`` but leaves out the messages whose bytes at ``offset`` start with
  ``prefix``: a store passes the header its own messages carry, so its task is not
  woken for its own echoes (a sequential writer's cost halves). Without it the store
  recognises and drops its echoes itself.
- ``max_message_size`` (an ``int`` attribute): the largest message ``publish`` accepts;
  stores split their batches and sync chunks below it. Absent means
  `DEFAULT_MAX_MESSAGE_SIZE`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from podshare.exceptions import ConfigurationError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ClusterReadiness",
    "EchoSkipping",
    "GapListeners",
    "GapReporting",
    "SubscriberCounting",
    "Transport",
    "check_skip",
    "max_message_size",
    "skips",
]

_log = logging.getLogger("podshare.transport")

#: The message size assumed for a transport that does not declare ``max_message_size``.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


@runtime_checkable
class Transport(Protocol):
    """Moves opaque messages between processes on named topics.

    Implement these three methods (and, ideally, ``__aenter__``/``__aexit__``) to carry
    podshare over any wire; [`podshare.testing.check_transport()`][podshare.testing.check_transport]
    verifies the result.
    """

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every subscription of ``topic`` (at most once each)."""
        ...

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``: an async context manager yielding the message iterator."""
        ...

    async def aclose(self) -> None:
        """Release every connection and subscription; idempotent."""
        ...


@runtime_checkable
class GapReporting(Protocol):
    """A transport that reports gaps: moments after which messages may have been lost.

    The listener is called synchronously from the transport's own task after it has
    re-established delivery (for example after a reconnect and resubscribe). It must not
    block; a store's listener only sets a flag that schedules a refresh.
    """

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Register ``listener``; returns a function that unregisters it."""
        ...


@runtime_checkable
class ClusterReadiness(Protocol):
    """A transport that can tell when it is connected to its cluster."""

    async def wait_ready(self) -> None:
        """Return once connected to the cluster as far as this transport can tell.

        It never raises for peers that cannot be reached (they count as failed); the
        caller bounds the wait. Without this capability a transport counts as ready at
        once.
        """
        ...


@runtime_checkable
class SubscriberCounting(Protocol):
    """A transport that can count the other processes subscribed to a topic."""

    async def remote_subscribers(self, topic: str) -> int | None:
        """How many other processes subscribe to ``topic`` now, or ``None`` if unknown.

        "Other" excludes this process's own subscriptions, however many it holds.
        """
        ...


@runtime_checkable
class EchoSkipping(Protocol):
    """A transport that can leave a subscriber's own messages out of its subscription."""

    def subscribe_skipping(
        self, topic: str, *, prefix: bytes, offset: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """As ``subscribe(topic)``, but messages whose bytes at ``offset`` start with
        ``prefix`` are not delivered to this subscription (the other subscriptions of
        ``topic``, in this process and elsewhere, still get them)."""
        ...


def check_skip(prefix: object, offset: object) -> tuple[int, bytes]:
    """Validate the arguments of ``subscribe_skipping``; return them as a pair.

    Raises:
        ConfigurationError: ``prefix`` is not non-empty bytes, or ``offset`` not an
            int >= 0.
    """
    if not isinstance(prefix, bytes) or not prefix:
        raise ConfigurationError(f"prefix must be non-empty bytes, not {prefix!r}")
    if type(offset) is not int or offset < 0:
        raise ConfigurationError(f"offset must be an int >= 0, not {offset!r}")
    return offset, prefix


def skips(message: bytes, skip: tuple[int, bytes] | None) -> bool:
    """Whether ``message`` is one an `EchoSkipping` subscription leaves out.

    Example:
        >>> skips(b"..ab..", (2, b"ab")), skips(b"..ab..", (1, b"ab")), skips(b"x", None)
        (True, False, False)
    """
    return skip is not None and message.startswith(skip[1], skip[0])


class GapListeners:
    """A small helper for transport authors: a set of gap listeners to notify.

    One policy for listeners that fail: the exception is logged (with its traceback)
    and counted in `failures`; it never reaches the transport's task or a
    subscriber, and the other listeners still run.

    Example:
        >>> gaps = GapListeners()
        >>> seen = []
        >>> remove = gaps.add(lambda: seen.append("gap"))
        >>> gaps.notify()
        >>> remove(); gaps.notify()
        >>> seen
        ['gap']
    """

    __slots__ = ("_listeners", "_log", "failures")

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._listeners: dict[int, Callable[[], None]] = {}
        self._log = logger if logger is not None else _log
        #: Listener calls that raised (each logged).
        self.failures = 0

    def add(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Register ``listener`` and return its remover (safe to call twice)."""
        token = id(listener) ^ len(self._listeners) << 48
        while token in self._listeners:
            token += 1
        self._listeners[token] = listener

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove

    def notify(self) -> None:
        """Call every listener; one that raises is logged and counted, never raised."""
        for listener in list(self._listeners.values()):
            try:
                listener()
            except Exception:  # noqa: BLE001  # a listener's bug: logged and counted, see the class docs
                self.failures += 1
                self._log.exception("a gap listener failed")

    def __len__(self) -> int:
        return len(self._listeners)


def max_message_size(transport: object) -> int:
    """The largest message ``transport`` accepts (its attribute, or the default)."""
    size = getattr(transport, "max_message_size", None)
    if isinstance(size, int) and size > 0:
        return size
    return DEFAULT_MAX_MESSAGE_SIZE
