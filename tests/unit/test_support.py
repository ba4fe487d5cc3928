"""The suite's own helpers (tests/_support.py): eventually, ErrorLog, the callreply handlers.

A wait helper that passes too early, or that fails without saying what it waited for,
makes every test built on it weaker; so it is pinned here once.
"""

from __future__ import annotations

import anyio
import pytest

from podshare.exceptions import DecodeError
from podshare.store import Store
from podshare.transport import MemoryTransport
from tests._support import ErrorLog, Held, Notifier, answering, echo, eventually, raising

pytestmark = pytest.mark.anyio

# Longer than any wake-up below may take, far shorter than a test's patience: a wake-up
# that came only from the poll fallback (every 50 ms with sources) would still pass, so
# these tests disable the fallback (poll=60) to prove that the source woke the waiter.
NO_POLL = 60.0


async def test_returns_at_once_when_the_condition_holds() -> None:
    with anyio.fail_after(1):
        await eventually(lambda: True, timeout=0.01)


async def test_fails_naming_the_condition_and_the_timeout() -> None:
    state = {"n": 1}
    with pytest.raises(AssertionError, match=r'lambda: state\["n"\] == 2.* within 0\.05 s'):
        await eventually(lambda: state["n"] == 2, timeout=0.05)
    with pytest.raises(AssertionError, match=r"^eventually: the moon is full did not hold"):
        await eventually(lambda: False, timeout=0.01, what="the moon is full")


async def test_a_condition_that_raises_fails_with_its_own_error() -> None:
    def broken() -> bool:
        raise KeyError("inside the condition")

    with pytest.raises(KeyError, match="inside the condition"):  # not an ExceptionGroup
        await eventually(broken, timeout=1)


async def test_a_store_event_wakes_the_waiter() -> None:
    woken = anyio.Event()
    async with MemoryTransport() as tr, Store[int]("s", tr, hydrate_timeout=0) as store:

        async def waiter() -> None:
            await eventually(lambda: store.get("k") == 1, stores=[store], poll=NO_POLL)
            woken.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                # Written only once the waiter watches, so only the event can wake it.
                await eventually(lambda: store.stats().watchers_active == 1)
                await store.set("k", 1)
        assert woken.is_set()


async def test_a_notifier_and_an_event_wake_the_waiter() -> None:
    changed = Notifier()
    done = anyio.Event()
    state = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
            state["n"] += 1
            changed.notify()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(bump)
        with anyio.fail_after(5):
            await eventually(lambda: state["n"] == 3, wake=[changed], poll=NO_POLL)
            await eventually(done.is_set, wake=[done], poll=NO_POLL)


async def test_without_sources_the_poll_finds_the_change() -> None:
    state = {"ready": False}

    async def later() -> None:
        await anyio.lowlevel.checkpoint()
        state["ready"] = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        with anyio.fail_after(5):
            await eventually(lambda: state["ready"])


async def test_a_closed_store_leaves_the_poll_to_decide() -> None:
    async with MemoryTransport() as tr:
        store: Store[int] = Store("s", tr)  # never opened: watching it raises ClosedError
        with pytest.raises(AssertionError):
            await eventually(lambda: False, stores=[store], timeout=0.05)
        await eventually(lambda: True, stores=[store], timeout=0.05)


async def test_error_log_keeps_errors_in_order_and_wakes_waiters() -> None:
    errors = ErrorLog()
    first, second = DecodeError("first"), DecodeError("second")

    async def report() -> None:
        await anyio.lowlevel.checkpoint()
        errors(first)
        await anyio.lowlevel.checkpoint()
        errors(second)

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        await errors.wait_for(2, timeout=5)
    assert errors.errors == [first, second]
    assert len(errors) == 2
    with pytest.raises(AssertionError, match="at least 3 errors"):
        await errors.wait_for(3, timeout=0.01)


async def test_handlers() -> None:
    assert await echo(b"x") == b"echo:x"
    assert await answering(b"fixed")(b"anything") == b"fixed"
    with pytest.raises(ValueError, match="nope"):
        await raising(ValueError, "nope")(b"")
    held = Held(b"done")
    async with anyio.create_task_group() as tg:
        tg.start_soon(held, b"")
        await held.started.wait()
        tg.cancel_scope.cancel()
    assert held.cancelled.is_set()
    held.release()
    assert await held(b"") == b"done"
