"""Watchers: the per-store registry that fans events out to bounded watcher buffers.

A `WatcherRegistry` belongs to one store. `WatcherRegistry.dispatch()` is
synchronous and never blocks: each event goes through every watcher's filter first,
then into that watcher's bounded buffer (a deque; the consumer is woken only when it
waits). A watcher whose buffer is
full is a slow consumer: it is dropped on the spot (its iterator ends after the events
already buffered) and counted, so one slow reader can never stall a writer or the
receive loop. The remedy for a dropped watcher is to watch again and ``refresh()``.

Filters are indexed so a write touches only the watchers that can want it: watchers of
one key sit in a dict keyed by that key, prefix and catch-all watchers in short lists,
and membership events (``NODE_UP``/``NODE_DOWN``) go only to watchers opened with
``members=True``, whatever their key or prefix filter (the filters select data keys). A
``filter=`` callable runs after the key or prefix matched and before the buffer; one
that raises ends its watcher (reported like a drop: the user's bug must surface).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel

from podshare.exceptions import ConfigurationError
from podshare.store.events import Event, EventKind

__all__ = ["Watch", "WatcherRegistry"]

T = TypeVar("T")

_NODE_UP = EventKind.NODE_UP
_NODE_DOWN = EventKind.NODE_DOWN
# A consumer that never has to wait still checks for cancellation this often (events).
_CANCEL_CHECK_EVERY = 16


class _Watcher(Generic[T]):
    """One open watch: its filter and its bounded buffer.

    The buffer is a plain deque plus an ``anyio.Event`` made only while the consumer
    waits: dispatch is one append (and a wake-up if the consumer sleeps), several times
    cheaper than a memory object stream's ``send_nowait`` per event.
    """

    __slots__ = (
        "buffer",
        "capacity",
        "closed",
        "dropped",
        "key",
        "members",
        "predicate",
        "prefix",
        "streak",
        "waiter",
    )

    def __init__(
        self,
        capacity: int,
        key: str | None,
        prefix: str | None,
        members: bool,
        predicate: Callable[[Event[T]], object] | None = None,
    ) -> None:
        self.predicate = predicate
        self.buffer: deque[Event[T]] = deque()
        self.capacity = capacity
        self.closed = False
        self.waiter: anyio.Event | None = None
        self.streak = 0  # events returned since the last cancellation check
        self.key = key
        self.prefix = prefix
        self.members = members
        self.dropped = False

    def put(self, event: Event[T]) -> bool:
        """Buffer ``event``; False when the buffer is full."""
        buffer = self.buffer
        if len(buffer) >= self.capacity:
            return False
        buffer.append(event)
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()
        return True

    def close(self) -> None:
        """No more events: the consumer ends after what is buffered."""
        self.closed = True
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            waiter.set()


class Watch(Generic[T]):
    """The async iterator of [`Event`][podshare.Event] that ``watch()`` yields.

    Iteration ends when the store closes or when this watcher was dropped because its
    buffer filled up (check `dropped` to tell which). Events already buffered are
    delivered before the end.

    Example:

    ```python
    async with store.watch(prefix="ws:") as events:
        async for ev in events:
            print(ev.kind, ev.key, ev.value)
    ```
    """

    __slots__ = ("_watcher",)

    def __init__(self, watcher: _Watcher[T]) -> None:
        self._watcher = watcher

    @property
    def dropped(self) -> bool:
        """True when this watcher was dropped as a slow consumer (its buffer was full)."""
        return self._watcher.dropped

    def __aiter__(self) -> Watch[T]:
        return self

    async def __anext__(self) -> Event[T]:
        # A buffered event is returned without a scheduling round trip (the buffer is
        # bounded, so a consumer cannot starve others). Looking for a cancellation costs
        # more than the rest of this call on asyncio, so it is done every few events: a
        # consumer kept busy by a producer still notices it within that many events.
        watcher = self._watcher
        buffer = watcher.buffer
        if buffer:
            watcher.streak += 1
            if watcher.streak < _CANCEL_CHECK_EVERY:
                return buffer.popleft()
        watcher.streak = 0
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if buffer:
                return buffer.popleft()
            if watcher.closed:
                raise StopAsyncIteration
            waiter = watcher.waiter
            if waiter is None:
                waiter = watcher.waiter = anyio.Event()
            await waiter.wait()

    def receive_nowait(self) -> Event[T]:
        """Return the next buffered event without waiting.

        Raises ``anyio.WouldBlock`` when none is buffered yet and ``StopAsyncIteration``
        when the watch has ended.
        """
        watcher = self._watcher
        if watcher.buffer:
            return watcher.buffer.popleft()
        if watcher.closed:
            raise StopAsyncIteration
        raise anyio.WouldBlock


class WatcherRegistry(Generic[T]):
    """All open watchers of one store, and the non-blocking dispatch into them.

    Example:
        >>> import anyio
        >>> from podshare.store.events import Event, EventKind
        >>> async def main() -> None:
        ...     reg = WatcherRegistry(buffer=8)
        ...     async with reg.open(prefix="a") as events:
        ...         reg.dispatch([Event(EventKind.SET, "ab", 1, "n1", None),
        ...                       Event(EventKind.SET, "b", 2, "n1", None)])
        ...         reg.close()
        ...         print([ev.key async for ev in events])
        >>> anyio.run(main)
        ['ab']
    """

    __slots__ = (
        "_all",
        "_by_key",
        "_closed",
        "_default_buffer",
        "_members",
        "_on_drop",
        "_prefixed",
        "dispatched",
        "dropped",
    )

    def __init__(self, *, buffer: int = 64, on_drop: Callable[[str], None] | None = None) -> None:
        check_buffer("watch_buffer", buffer)
        self._on_drop = on_drop
        self._default_buffer = buffer
        self._by_key: dict[str, list[_Watcher[T]]] = {}
        self._prefixed: list[_Watcher[T]] = []
        self._all: list[_Watcher[T]] = []
        self._members: list[_Watcher[T]] = []
        self._closed = False
        #: Events delivered into watcher buffers.
        self.dispatched = 0
        #: Watchers dropped because their buffer was full.
        self.dropped = 0

    @property
    def active(self) -> int:
        """How many watchers are open."""
        return sum(len(ws) for ws in self._by_key.values()) + len(self._prefixed) + len(self._all)

    @property
    def wants_data(self) -> bool:
        """Whether any open watcher takes ``SET``/``DELETE`` events (some filter)."""
        return bool(self._by_key or self._prefixed or self._all)

    def open(
        self,
        *,
        key: str | None = None,
        prefix: str | None = None,
        buffer: int | None = None,
        members: bool = False,
        filter: Callable[[Event[T]], object] | None = None,  # the public name
    ) -> AbstractAsyncContextManager[Watch[T]]:
        """An async context manager yielding a `Watch` filtered by key or prefix
        (and ``filter``, a callable taking an event and returning whether to keep it).

        Raises [`ConfigurationError`][podshare.ConfigurationError] for both ``key`` and
        ``prefix``, a non-string filter, a ``filter`` that is not callable, or a
        ``buffer`` that is not a positive int.
        """
        if filter is not None and not callable(filter):
            raise ConfigurationError(f"filter must be callable, not {filter!r}")
        if key is not None and prefix is not None:
            raise ConfigurationError("watch() takes key or prefix, not both")
        if key is not None and not isinstance(key, str):
            raise ConfigurationError(f"key must be a str, not {type(key).__name__}")
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigurationError(f"prefix must be a str, not {type(prefix).__name__}")
        if buffer is None:
            buffer = self._default_buffer
        else:
            check_buffer("buffer", buffer)
        if not isinstance(members, bool):
            raise ConfigurationError(f"members must be a bool, not {type(members).__name__}")
        return _WatchContext(self, key, prefix or None, buffer, members, filter)

    def _add(self, watcher: _Watcher[T]) -> None:
        if watcher.key is not None:
            self._by_key.setdefault(watcher.key, []).append(watcher)
        elif watcher.prefix is not None:
            self._prefixed.append(watcher)
        else:
            self._all.append(watcher)
        if watcher.members:
            self._members.append(watcher)

    def _remove(self, watcher: _Watcher[T]) -> None:
        if watcher.key is not None:
            group = self._by_key.get(watcher.key)
            if group is not None:
                _discard(group, watcher)
                if not group:
                    del self._by_key[watcher.key]
        elif watcher.prefix is not None:
            _discard(self._prefixed, watcher)
        else:
            _discard(self._all, watcher)
        if watcher.members:
            _discard(self._members, watcher)
        watcher.close()

    def dispatch(self, events: Iterable[Event[T]]) -> None:
        """Deliver ``events`` to every watcher whose filter matches; never blocks.

        Call it only when the store's state is consistent: a watcher may read the store
        as soon as it wakes up.
        """
        if self._closed:
            return
        every, by_key, prefixed, members = self._all, self._by_key, self._prefixed, self._members
        if not (every or by_key or prefixed or members):
            return  # nobody watches: nothing to look at
        deliver = self._deliver
        for event in events:
            kind = event.kind
            # Identity tests: an Enum's hash (for a set lookup) runs Python code.
            if kind is _NODE_UP or kind is _NODE_DOWN:
                if members:
                    deliver(members, event, False)
                continue
            if every:
                deliver(every, event)
            if by_key:
                group = by_key.get(event.key)
                if group:
                    deliver(group, event)
            if prefixed:
                key = event.key
                matched = [w for w in prefixed if key.startswith(w.prefix)]  # type: ignore[arg-type]
                if matched:
                    deliver(matched, event)

    def _deliver(self, watchers: list[_Watcher[T]], event: Event[T], filtered: bool = True) -> None:
        slow: list[_Watcher[T]] | None = None
        for watcher in watchers:
            if watcher.closed:
                continue  # the consumer already left; its context exit removes it
            predicate = watcher.predicate
            if predicate is not None and filtered:
                try:
                    keep = predicate(event)
                except Exception as exc:  # noqa: BLE001  # the user's filter: end its watcher, report it
                    watcher.dropped = True
                    self.dropped += 1
                    self._remove(watcher)
                    if self._on_drop is not None:
                        self._on_drop(f"a watch filter raised {exc!r}; the watcher ended")
                    continue
                if not keep:
                    continue
            if watcher.put(event):
                self.dispatched += 1
            else:
                if slow is None:
                    slow = []
                slow.append(watcher)
        if slow is not None:
            for watcher in slow:
                watcher.dropped = True
                self.dropped += 1
                self._remove(watcher)
                if self._on_drop is not None:
                    self._on_drop(
                        f"a watcher's buffer ({watcher.capacity} events) was full: it was "
                        "dropped; watch again and read snapshot() (or refresh())"
                    )

    def close(self) -> None:
        """End every watcher's iteration (after what is buffered) and refuse new events."""
        self._closed = True
        for watcher in [
            *(w for ws in self._by_key.values() for w in ws),
            *self._prefixed,
            *self._all,
        ]:
            watcher.close()
        self._by_key.clear()
        self._prefixed.clear()
        self._all.clear()
        self._members.clear()


class _WatchContext(Generic[T]):
    """``async with registry.open(...) as events``: registers on entry, removes on exit."""

    __slots__ = ("_buffer", "_key", "_members", "_predicate", "_prefix", "_registry", "_watcher")

    def __init__(
        self,
        registry: WatcherRegistry[T],
        key: str | None,
        prefix: str | None,
        buffer: int,
        members: bool,
        predicate: Callable[[Event[T]], object] | None,
    ) -> None:
        self._predicate = predicate
        self._registry = registry
        self._key = key
        self._prefix = prefix
        self._buffer = buffer
        self._members = members
        self._watcher: _Watcher[T] | None = None

    async def __aenter__(self) -> Watch[T]:
        if self._watcher is not None:
            raise RuntimeError("a watch context can be entered only once")
        watcher: _Watcher[T] = _Watcher(
            self._buffer, self._key, self._prefix, self._members, self._predicate
        )
        self._watcher = watcher
        if self._registry._closed:
            watcher.close()  # a watch opened on a closing store ends at once
        else:
            self._registry._add(watcher)
        return Watch(watcher)

    async def __aexit__(self, *exc_info: Any) -> None:
        watcher = self._watcher
        assert watcher is not None
        if not watcher.dropped and not self._registry._closed:
            self._registry._remove(watcher)
        # Iteration after leaving the block ends at once.
        watcher.close()
        watcher.buffer.clear()


def _discard(watchers: list[_Watcher[Any]], watcher: _Watcher[Any]) -> None:
    for i, w in enumerate(watchers):
        if w is watcher:
            del watchers[i]
            return


def check_buffer(name: str, value: object) -> None:
    """Raise [`ConfigurationError`][podshare.ConfigurationError] naming ``name`` unless ``value`` is
    an int ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
