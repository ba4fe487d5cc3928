"""The TCP subscription inbox: bounded, never blocks the sender, drains before ending."""

from __future__ import annotations

import anyio
import pytest

from podshare.transport._inbox import Inbox

pytestmark = pytest.mark.anyio


async def test_receives_in_order_and_refuses_past_capacity() -> None:
    inbox = Inbox(capacity=3)
    assert [inbox.put(bytes([i])) for i in range(4)] == [True, True, True, False]
    assert [await inbox.receive() for _ in range(3)] == [b"\x00", b"\x01", b"\x02"]
    with pytest.raises(anyio.WouldBlock):
        inbox.receive_nowait()
    assert inbox.put(b"again")  # room again once drained
    assert inbox.receive_nowait() == b"again"


async def test_a_waiting_receiver_is_woken_by_put() -> None:
    inbox = Inbox(capacity=4)
    got: list[bytes] = []

    async def consume() -> None:
        async for message in inbox:
            got.append(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        assert inbox.put(b"one")
        await anyio.wait_all_tasks_blocked()
        assert got == [b"one"]
        assert inbox.put(b"two")
        assert inbox.put(b"three")
        inbox.end()
    assert got == [b"one", b"two", b"three"]  # drained before the iteration ended


async def test_every_waiting_receiver_gets_a_message() -> None:
    inbox = Inbox(capacity=4)
    got: list[bytes] = []

    async def take_one() -> None:
        got.append(await inbox.receive())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_one)
            tg.start_soon(take_one)
            await anyio.wait_all_tasks_blocked()
            inbox.put(b"a")
            await anyio.wait_all_tasks_blocked()
            inbox.put(b"b")
    assert sorted(got) == [b"a", b"b"]


async def test_end_wakes_a_waiter_with_end_of_stream() -> None:
    inbox = Inbox(capacity=1)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                with pytest.raises(anyio.EndOfStream):
                    await inbox.receive()

            tg.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            inbox.end()
    with pytest.raises(anyio.ClosedResourceError):
        inbox.put(b"late")


async def test_closing_the_receiving_end_refuses_messages() -> None:
    inbox = Inbox(capacity=2)
    inbox.put(b"dropped with the inbox")
    with inbox:
        pass
    assert inbox.closed
    with pytest.raises(anyio.BrokenResourceError):
        inbox.put(b"x")
    with pytest.raises(anyio.ClosedResourceError):
        await inbox.receive()


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Inbox(capacity=0)
