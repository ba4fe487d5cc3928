"""Unit tests of the watcher registry: filters, buffers, slow-consumer drop, close."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from podshare.exceptions import ConfigurationError
from podshare.store.events import Event, EventKind
from podshare.store.watch import Watch, WatcherRegistry

pytestmark = pytest.mark.anyio


def ev(key: str, value: object = 1, kind: EventKind = EventKind.SET) -> Event[object]:
    return Event(kind, key, value, "n1", None)


def drain(events: Watch[object]) -> list[str]:
    """Every key buffered right now, without waiting."""
    keys = []
    while True:
        try:
            keys.append(events.receive_nowait().key)
        except (anyio.WouldBlock, StopAsyncIteration):
            return keys


async def test_key_filter_selects_one_key() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=8)
    async with reg.open(key="a") as events:
        reg.dispatch([ev("a"), ev("ab"), ev("b"), ev("a", 2)])
        assert drain(events) == ["a", "a"]
    assert reg.dispatched == 2


async def test_prefix_filter_and_catch_all() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=8)
    async with reg.open(prefix="ws:") as ws, reg.open() as everything:
        reg.dispatch([ev("ws:1"), ev("w"), ev("ws:2"), ev("x")])
        assert drain(ws) == ["ws:1", "ws:2"]
        assert drain(everything) == ["ws:1", "w", "ws:2", "x"]


async def test_empty_prefix_means_every_key() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=8)
    async with reg.open(prefix="") as events:
        reg.dispatch([ev("a"), ev("b")])
        assert drain(events) == ["a", "b"]


async def test_filters_run_before_the_buffer() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=2)
    async with reg.open(key="k") as events:
        # Far more unrelated events than the buffer holds: the watcher must survive.
        reg.dispatch([ev(f"other{i}") for i in range(100)])
        reg.dispatch([ev("k")])
        assert not events.dropped
        assert drain(events) == ["k"]
    assert reg.dropped == 0


async def test_full_buffer_drops_the_watcher_and_its_iteration_ends() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=2)
    async with reg.open() as slow, reg.open(buffer=10) as fast:
        reg.dispatch([ev("a"), ev("b"), ev("c")])
        assert slow.dropped
        assert not fast.dropped
        # What was buffered is still delivered, then the iteration ends.
        assert [e.key async for e in slow] == ["a", "b"]
        assert drain(fast) == ["a", "b", "c"]
        assert reg.dropped == 1
        assert reg.active == 1
        reg.dispatch([ev("d")])
        assert drain(fast) == ["d"]
    assert reg.active == 0


async def test_membership_events_only_reach_members_watchers() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=8)
    up: Event[object] = Event(EventKind.NODE_UP, "node-2", None, "node-2", None)
    async with reg.open() as plain, reg.open(prefix="ws:", members=True) as members:
        reg.dispatch([up, ev("ws:1"), ev("x")])
        assert drain(plain) == ["ws:1", "x"]
        assert drain(members) == ["node-2", "ws:1"]


async def test_close_ends_every_iteration() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=8)
    seen: list[str] = []

    async def consume(events: Watch[object]) -> None:
        seen.extend([e.key async for e in events])

    async with reg.open() as a, reg.open(key="k") as b:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume, a)
                tg.start_soon(consume, b)
                await anyio.wait_all_tasks_blocked()
                reg.dispatch([ev("k")])
                reg.close()
        assert seen == ["k", "k"]
        assert not a.dropped
    # A closed registry takes no new watchers' events and ends them at once.
    async with reg.open() as late:
        reg.dispatch([ev("k")])
        assert [e async for e in late] == []


async def test_leaving_the_context_unregisters() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=1)
    async with reg.open(key="k"):
        assert reg.active == 1
    assert reg.active == 0
    reg.dispatch([ev("k"), ev("k")])  # no watcher left: nothing to drop
    assert reg.dropped == 0


async def test_context_cannot_be_entered_twice() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry()
    ctx = reg.open()
    async with ctx:
        with pytest.raises(RuntimeError):
            await ctx.__aenter__()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key": "a", "prefix": "b"},
        {"key": 1},
        {"prefix": b"x"},
        {"buffer": 0},
        {"buffer": True},
        {"buffer": 1.5},
        {"members": "yes"},
    ],
)
def test_bad_watch_options_raise(kwargs: dict[str, object]) -> None:
    reg: WatcherRegistry[object] = WatcherRegistry()
    with pytest.raises(ConfigurationError):
        reg.open(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("buffer", [0, -1, 2.0, None])
def test_bad_default_buffer_names_watch_buffer(buffer: object) -> None:
    with pytest.raises(ConfigurationError, match="watch_buffer"):
        WatcherRegistry(buffer=buffer)  # type: ignore[arg-type]


async def test_a_consumer_that_never_waits_still_notices_cancellation() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=1_000)
    got = 0
    async with reg.open() as events:
        reg.dispatch([ev(f"k{i}") for i in range(1_000)])
        with anyio.CancelScope() as scope:
            scope.cancel()
            async for _ in events:
                got += 1
    assert scope.cancelled_caught
    assert got < 100  # the buffer never ran dry, yet the loop ended early


async def test_a_waiting_consumer_wakes_for_each_dispatch_and_at_close() -> None:
    reg: WatcherRegistry[object] = WatcherRegistry(buffer=4)
    seen: list[str] = []
    async with reg.open() as events, anyio.create_task_group() as tg:

        async def consume() -> None:
            async for event in events:
                seen.append(event.key)

        tg.start_soon(consume)
        for key in ("a", "b", "c"):
            await anyio.lowlevel.checkpoint()
            reg.dispatch([ev(key)])
        reg.close()
    assert seen == ["a", "b", "c"]
