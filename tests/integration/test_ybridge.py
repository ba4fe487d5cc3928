"""The pycrdt provider bridge: live pycrdt Docs kept in sync over a podshare transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pycrdt
import pytest
from pycrdt import Array, Doc, Text

from podshare.exceptions import ConfigurationError, PodshareError
from podshare.transport import MemoryNetwork, MemoryTransport, RedisTransport
from podshare.yjs import TransportChannel, open_provider
from tests._support import ErrorLog, Notifier, RedisServer, eventually

# pycrdt's Provider is written with anyio, so the bridge runs under asyncio and trio.
# Only the Redis test needs a server: the others run on memory transports.
pytestmark = pytest.mark.anyio

TIMEOUT = 10


def text(doc: Doc[Any]) -> str:
    return str(doc.get("t", type=Text))


@asynccontextmanager
async def pods(
    count: int, network: MemoryNetwork | None = None
) -> AsyncIterator[list[tuple[MemoryTransport, Doc[Any]]]]:
    net = network if network is not None else MemoryNetwork()
    async with AsyncExitStack() as stack:
        out: list[tuple[MemoryTransport, Doc[Any]]] = []
        for i in range(count):
            tr = await stack.enter_async_context(MemoryTransport(network=net, name=f"pod-{i}"))
            out.append((tr, Doc()))
        yield out


async def test_two_live_docs_converge_after_edits_on_either_side() -> None:
    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room"),
        open_provider(b, tb, "room") as provider_b,
    ):
        with anyio.fail_after(TIMEOUT):
            await provider_b.synced.wait()
        a.get("t", type=Text).insert(0, "hello")
        await eventually(lambda: text(b) == "hello", feeds=[b.events])
        b.get("t", type=Text).insert(5, " world")
        await eventually(lambda: text(a) == "hello world", feeds=[a.events])
        with a.transaction():
            a.get("log", type=Array).append("from a")
        with b.transaction():
            b.get("log", type=Array).append("from b")
        both = {"from a", "from b"}
        await eventually(
            lambda: set(a.get("log", type=Array).to_py() or []) == both, feeds=[a.events]
        )
        await eventually(
            lambda: set(b.get("log", type=Array).to_py() or []) == both, feeds=[b.events]
        )
        assert a.get("log", type=Array).to_py() == b.get("log", type=Array).to_py()
        assert text(a) == text(b)


async def test_a_newcomer_receives_and_contributes_content() -> None:
    async with pods(3) as [(ta, a), (tb, b), (tc, c)]:
        a.get("t", type=Text).insert(0, "from a;")
        c.get("log", type=Array).append("c was offline")
        async with open_provider(a, ta, "room"), open_provider(b, tb, "room"):
            await eventually(lambda: text(b) == "from a;", feeds=[b.events])
            # c edited before joining: its step 1 is answered, and the peers ask it back.
            async with open_provider(c, tc, "room"):
                await eventually(lambda: text(c) == "from a;", feeds=[c.events])
                await eventually(
                    lambda: a.get("log", type=Array).to_py() == ["c was offline"], feeds=[a.events]
                )
                await eventually(
                    lambda: b.get("log", type=Array).to_py() == ["c was offline"], feeds=[b.events]
                )


async def test_rooms_are_separate() -> None:
    async with pods(2) as [(ta, a), (tb, b)]:
        other: Doc[Any] = Doc()
        async with (
            open_provider(a, ta, "room-1"),
            open_provider(b, tb, "room-1"),
            open_provider(other, tb, "room-2"),
        ):
            a.get("t", type=Text).insert(0, "only room 1")
            await eventually(lambda: text(b) == "only room 1", feeds=[b.events])
            assert text(other) == ""


class Publishes:
    """Counts a transport's publishes; ``changed`` is notified after each."""

    def __init__(self, tr: MemoryTransport) -> None:
        self.count = 0
        self.changed = Notifier()
        real = tr.publish

        async def publish(topic: str, message: bytes) -> None:
            await real(topic, message)
            self.count += 1
            self.changed.notify()

        tr.publish = publish  # type: ignore[method-assign]


async def test_updates_lost_in_a_partition_are_repaired_by_the_gap_resync() -> None:
    net = MemoryNetwork()
    async with pods(2, net) as [(ta, a), (tb, b)]:
        sent_a, sent_b = Publishes(ta), Publishes(tb)
        async with open_provider(a, ta, "room"), open_provider(b, tb, "room") as pb:
            with anyio.fail_after(TIMEOUT):
                await pb.synced.wait()
            net.partition(["pod-0"], ["pod-1"])
            before_a, before_b = sent_a.count, sent_b.count
            a.get("t", type=Text).insert(0, "made during the partition")
            b.get("log", type=Array).append("b too")
            # Both providers publish their update into the partition, where it is lost.
            await eventually(lambda: sent_a.count > before_a, wake=[sent_a.changed])
            await eventually(lambda: sent_b.count > before_b, wake=[sent_b.changed])
            assert text(b) == ""
            net.heal()  # both transports report a gap; both channels resync
            await eventually(lambda: text(b) == "made during the partition", feeds=[b.events])
            await eventually(
                lambda: a.get("log", type=Array).to_py() == ["b too"], feeds=[a.events]
            )


async def test_malformed_messages_are_dropped_and_reported() -> None:
    errors = ErrorLog()
    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room", on_error=errors),
        open_provider(b, tb, "room"),
    ):
        # Garbage, an unknown envelope version, a bad Yjs message, a broken update.
        bad_update = b"\x00\x02" + bytes([5]) + b"\xff\xff\xff\xff\xff"
        for junk in (b"", b"\x09xx", b"\x01\x01Z\x07", b"\x01\x01Z" + bad_update):
            await tb.publish("yjs/room", junk)
        await errors.wait_for(4, timeout=TIMEOUT)
        # The provider still works.
        b.get("t", type=Text).insert(0, "still fine")
        await eventually(lambda: text(a) == "still fine", feeds=[a.events])
    assert len(errors) == 4
    assert all(isinstance(e, PodshareError) for e in errors.errors)


async def test_channel_routes_step2_replies_to_the_asker() -> None:
    async with pods(1) as [(tr, _)]:
        sent: list[tuple[str, bytes]] = []
        real_publish = tr.publish

        async def publish(topic: str, message: bytes) -> None:
            sent.append((topic, message))
            await real_publish(topic, message)

        tr.publish = publish  # type: ignore[method-assign]
        async with TransportChannel(tr, "room", node_id="me") as channel:
            assert channel.path == "yjs/room"
            await channel.send(pycrdt.create_update_message(b"\x00\x00"))
            # No step 1 received yet: a step 2 has nobody to answer, so it is broadcast.
            await channel.send(bytes([0, 1, 2, 0, 0]))
            await tr.publish("yjs/room#me", b"\x01\x05peer1" + pycrdt.create_sync_message(Doc()))
            with anyio.fail_after(TIMEOUT):
                assert (await channel.recv())[:2] == b"\x00\x00"
            await channel.send(bytes([0, 1, 2, 0, 0]))
        assert [topic for topic, _ in sent if not topic.endswith("#me")] == [
            "yjs/room",
            "yjs/room",
            "yjs/room#peer1",
        ]
        assert all(m.startswith(b"\x01\x02me") for t, m in sent if not t.endswith("#me"))


def test_bad_options_are_refused() -> None:
    tr = MemoryTransport()
    for room in ("", "a#b", "x" * 201):
        with pytest.raises(ConfigurationError):
            TransportChannel(tr, room)
    with pytest.raises(ConfigurationError):
        TransportChannel(tr, "room", resync_interval=0)
    with pytest.raises(ConfigurationError):
        TransportChannel(tr, "room", buffer=0)


@pytest.mark.integration
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio-only
async def test_live_docs_sync_through_redis(redis_server: RedisServer) -> None:
    a: Doc[Any] = Doc()
    b: Doc[Any] = Doc()
    a.get("t", type=Text).insert(0, "before joining;")
    async with (
        RedisTransport(url=redis_server.url) as ta,
        RedisTransport(url=redis_server.url) as tb,
        open_provider(a, ta, "redis-room"),
        open_provider(b, tb, "redis-room"),
    ):
        await eventually(lambda: text(b) == "before joining;", feeds=[b.events])
        b.get("t", type=Text).insert(0, "b says hi;")
        await eventually(lambda: text(a) == "b says hi;before joining;", feeds=[a.events])
