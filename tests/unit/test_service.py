"""The one lifecycle helper every background-task owner uses (podshare._service)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import anyio
import pytest

from podshare._counters import StatsRecord
from podshare._service import Service, check_close_timeout, is_cancellation
from podshare.exceptions import ClosedError, ConfigurationError

pytestmark = pytest.mark.anyio


class Recorder(Service):
    """A service whose hooks record what happened, with knobs to misbehave."""

    def __init__(self, *, fail_open: bool = False, close_takes: float = 0.0, **kw: float) -> None:
        super().__init__(**kw)
        self.log: list[str] = []
        self.fail_open = fail_open
        self.close_takes = close_takes
        self.started = anyio.Event()
        self.child_cancelled = False
        self.crash = anyio.Event()

    async def _open(self) -> None:
        self.log.append("open")
        self.start_soon(self._child)
        await self.started.wait()
        if self.fail_open:
            raise ValueError("open refused")

    async def _child(self) -> None:
        self.started.set()
        try:
            await self.crash.wait()
            raise RuntimeError("child crashed")
        except anyio.get_cancelled_exc_class():
            self.child_cancelled = True
            raise

    async def _close(self) -> None:
        self.log.append("close")
        if self.close_takes:
            await anyio.sleep(self.close_takes)
            self.log.append("close done")

    def _closed(self) -> None:
        self.log.append("closed")


async def test_open_and_close_run_each_hook_once_in_order() -> None:
    svc = Recorder()
    async with svc:
        assert svc.state == "open"
        assert svc.is_open
    assert svc.log == ["open", "close", "closed"]
    assert svc.state == "closed"
    assert svc.child_cancelled
    with pytest.raises(ClosedError, match="only once"):
        await svc.__aenter__()


async def test_the_body_exception_leaves_unwrapped() -> None:
    svc = Recorder()
    with pytest.raises(KeyError) as info:
        async with svc:
            raise KeyError("mine")
    assert type(info.value) is KeyError
    assert svc.log == ["open", "close", "closed"]
    assert svc.child_cancelled


async def test_a_failing_open_cleans_up_and_raises_its_error() -> None:
    svc = Recorder(fail_open=True)
    with pytest.raises(ValueError, match="open refused"):
        async with svc:
            pytest.fail("the body must not run")  # pragma: no cover
    # No graceful close after a failed open, but the synchronous cleanup ran.
    assert svc.log == ["open", "closed"]
    assert svc.state == "closed"
    assert svc.child_cancelled


async def test_a_failing_background_task_fails_the_block_with_its_exception() -> None:
    svc = Recorder()
    body_cancelled: list[bool] = []

    async def use() -> None:
        async with svc:
            svc.crash.set()
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                body_cancelled.append(True)
                raise

    with pytest.raises(RuntimeError, match="child crashed"):
        await use()
    assert body_cancelled
    assert svc.state == "closed"
    assert "closed" in svc.log


async def test_cancellation_from_outside_is_forwarded_and_closes() -> None:
    svc = Recorder()
    with anyio.CancelScope() as scope:
        async with svc:
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert svc.log == ["open", "close", "closed"]
    assert svc.child_cancelled


async def test_aclose_twice_and_then_exit_is_harmless() -> None:
    svc = Recorder()
    async with svc:
        await svc.aclose()
        await svc.aclose()
        assert svc.state == "closed"
        with pytest.raises(ClosedError, match="closed"):
            svc._check_open()
        with pytest.raises(ClosedError):
            svc.start_soon(anyio.sleep, 0)
    assert svc.log == ["open", "close", "closed"]


async def test_close_from_inside_a_background_task() -> None:
    svc = Recorder()
    done = anyio.Event()

    async def closer() -> None:
        await svc.aclose()
        done.set()

    async with svc:
        svc.start_soon(closer)
        with anyio.fail_after(5):
            await done.wait()
        assert svc.state == "closed"
    assert svc.log == ["open", "close", "closed"]


async def test_a_concurrent_second_close_waits_for_the_first() -> None:
    svc = Recorder(close_takes=0.05)
    order: list[str] = []
    async with svc, anyio.create_task_group() as tg:
        tg.start_soon(svc.aclose)
        await anyio.wait_all_tasks_blocked()
        await svc.aclose()
        order.append("second returned")
    assert svc.log[:3] == ["open", "close", "close done"]
    assert order == ["second returned"]


async def test_the_graceful_close_respects_the_callers_deadline() -> None:
    svc = Recorder(close_takes=30.0, close_timeout=30.0)
    async with svc:
        with anyio.move_on_after(0.1):
            await svc.aclose()
        # Cut short at the caller's deadline: the 30 s graceful part never finished.
        assert svc.state == "closed"
        assert "close" in svc.log
    assert "close done" not in svc.log


async def test_the_graceful_close_is_bounded_by_close_timeout_even_when_cancelled() -> None:
    svc = Recorder(close_takes=30.0, close_timeout=0.05)
    with anyio.CancelScope() as scope:
        async with svc:
            scope.cancel()
            await anyio.sleep_forever()
    assert "close" in svc.log
    assert "close done" not in svc.log


async def test_closing_an_unopened_service_needs_nothing() -> None:
    svc = Recorder()
    await svc.aclose()
    assert svc.state == "closed"
    assert svc.log == ["closed"]
    with pytest.raises(ClosedError, match="not open"):
        Recorder()._check_open()


def test_close_timeout_is_validated() -> None:
    assert check_close_timeout(0) == 0.0
    for bad in (-1, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ConfigurationError, match="close_timeout"):
            check_close_timeout(bad)


async def test_is_cancellation_sees_through_groups() -> None:
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except BaseException as exc:  # the backend's own cancellation, to inspect
            caught.append(exc)
            raise
    cancelled = caught[0]
    assert is_cancellation(cancelled)
    assert not is_cancellation(None)
    assert not is_cancellation(ValueError())
    assert is_cancellation(BaseExceptionGroup("g", [cancelled]))
    assert not is_cancellation(BaseExceptionGroup("g", [cancelled, ValueError()]))


@dataclass(slots=True)
class _Stats(StatsRecord):
    messages_sent: int = 0
    ratio: float = 0.0


def test_stats_record_snapshots_are_frozen_equal_copies() -> None:
    record = _Stats()
    record.messages_sent += 3
    snap = record.snapshot()
    record.messages_sent += 1
    assert snap == _Stats(3)
    assert record == _Stats(4)
    assert snap != record
    assert isinstance(snap, _Stats)
    assert repr(snap) == "_Stats(messages_sent=3, ratio=0.0)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.messages_sent = 0
    changed = dataclasses.replace(snap, ratio=0.5)
    assert changed == _Stats(3, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.ratio = 1.0
    assert hash(snap) == hash(_Stats(3).snapshot())
