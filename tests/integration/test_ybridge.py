"""RoomBridge: live pycrdt Docs kept in sync across pods, through faults, without echoes."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

pycrdt = pytest.importorskip("pycrdt", reason="the bridge needs the yjs extra (pycrdt)")

from pycrdt import Array, Doc, Map, Text  # noqa: E402

from podshare import Store  # noqa: E402
from podshare.crdt import YDoc  # noqa: E402
from podshare.exceptions import (  # noqa: E402
    ClosedError,
    ConfigurationError,
    DecodeError,
    PodshareError,
    TransportError,
)
from podshare.transport import FaultPlan, MemoryNetwork, MemoryTransport  # noqa: E402
from podshare.transport.base import GapListeners  # noqa: E402
from podshare.yjs import (  # noqa: E402
    RoomBridge,
    StorePersistence,
    TransportChannel,
    _wire,
    open_provider,
    room_topic,
)

# The bridge is written with anyio: every test runs under asyncio and trio.
pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 10


async def until(doc: Doc[Any], condition: Callable[[], bool]) -> None:
    """Wait, bounded, until ``condition()`` holds, re-checking on each change of ``doc``."""
    with anyio.fail_after(TIMEOUT):
        async with doc.events() as events:
            if condition():
                return
            async for _ in events:
                if condition():
                    return


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll a counter-like ``condition`` (no event to wait on), bounded."""
    with anyio.fail_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def text(doc: Doc[Any]) -> str:
    return str(doc.get("t", type=Text))


@asynccontextmanager
async def pods(
    count: int, network: MemoryNetwork | None = None, **options: Any
) -> AsyncIterator[list[tuple[MemoryTransport, Doc[Any]]]]:
    net = network if network is not None else MemoryNetwork()
    async with AsyncExitStack() as stack:
        out: list[tuple[MemoryTransport, Doc[Any]]] = []
        for i in range(count):
            tr = MemoryTransport(network=net, name=f"pod-{i}", **options)
            out.append((await stack.enter_async_context(tr), Doc()))
        yield out


class Published:
    """Every message a transport publishes, decoded (no polling: waiters are woken)."""

    def __init__(self, tr: Any) -> None:
        self.messages: list[tuple[str, _wire.Message, int]] = []
        self._changed = anyio.Event()
        real = tr.publish

        async def publish(topic: str, message: bytes) -> None:
            await real(topic, message)
            self.messages.append((topic, _wire.decode(message), len(message)))
            self._changed.set()

        tr.publish = publish

    def kinds(self, since: int = 0) -> list[int]:
        return [m.kind for _, m, _ in self.messages[since:]]

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while len(self.messages) < count:
                self._changed = anyio.Event()
                await self._changed.wait()


# -- the basics ---------------------------------------------------------------------------


async def test_two_live_docs_converge_after_edits_on_either_side() -> None:
    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room"),
        open_provider(b, tb, "room") as provider_b,
    ):
        with anyio.fail_after(TIMEOUT):
            await provider_b.synced.wait()
        a.get("t", type=Text).insert(0, "hello")
        await until(b, lambda: text(b) == "hello")
        b.get("t", type=Text).insert(5, " world")
        await until(a, lambda: text(a) == "hello world")
        with a.transaction():
            a.get("log", type=Array).append("from a")
        with b.transaction():
            b.get("log", type=Array).append("from b")
        both = {"from a", "from b"}
        await until(a, lambda: set(a.get("log", type=Array).to_py() or []) == both)
        await until(b, lambda: set(b.get("log", type=Array).to_py() or []) == both)
        assert a.get("log", type=Array).to_py() == b.get("log", type=Array).to_py()
        assert text(a) == text(b)


async def test_a_newcomer_receives_and_contributes_content() -> None:
    async with pods(3) as [(ta, a), (tb, b), (tc, c)]:
        a.get("t", type=Text).insert(0, "from a;")
        c.get("log", type=Array).append("c was offline")
        async with open_provider(a, ta, "room"), open_provider(b, tb, "room"):
            await until(b, lambda: text(b) == "from a;")
            # c edited before joining: its hello is answered, and the peers ask it back.
            async with open_provider(c, tc, "room") as pc:
                with anyio.fail_after(TIMEOUT):
                    await pc.synced.wait()
                assert text(c) == "from a;"
                await until(a, lambda: a.get("log", type=Array).to_py() == ["c was offline"])
                await until(b, lambda: b.get("log", type=Array).to_py() == ["c was offline"])


async def test_rooms_are_separate() -> None:
    async with pods(2) as [(ta, a), (tb, b)]:
        other: Doc[Any] = Doc()
        async with (
            open_provider(a, ta, "room-1"),
            open_provider(b, tb, "room-1"),
            open_provider(other, tb, "room-2"),
        ):
            a.get("t", type=Text).insert(0, "only room 1")
            await until(b, lambda: text(b) == "only room 1")
            assert text(other) == ""


async def test_room_names_of_any_length_and_alphabet_are_synced() -> None:
    rooms = ["x" * 5000, "notes for café ☕", "a#b", "", "/docs/42?token=1"]
    async with pods(2) as [(ta, _), (tb, _)]:
        for room in rooms:
            a: Doc[Any] = Doc()
            b: Doc[Any] = Doc()
            async with open_provider(a, ta, room) as pa, open_provider(b, tb, room) as pb:
                assert pa.topic == pb.topic == room_topic(room)
                a.get("t", type=Text).insert(0, room[:20] or "empty name")
                await until(b, lambda a=a, b=b: text(b) == text(a))  # type: ignore[misc]


# -- no echoes, small messages ----------------------------------------------------------------


async def test_an_edit_is_published_once_however_many_pods_receive_it() -> None:
    async with pods(4) as transports, AsyncExitStack() as stack:
        bridges = [
            await stack.enter_async_context(open_provider(doc, tr, "room", node_id=f"p{i}"))
            for i, (tr, doc) in enumerate(transports)
        ]
        for bridge in bridges:
            with anyio.fail_after(TIMEOUT):
                await bridge.synced.wait()
        published = [Published(tr) for tr, _ in transports]
        docs = [doc for _, doc in transports]
        updates: list[bytes] = []
        subscription = docs[0].observe(lambda event: updates.append(event.update))
        docs[0].get("t", type=Text).insert(0, "one edit")
        for doc in docs[1:]:
            await until(doc, lambda doc=doc: text(doc) == "one edit")  # type: ignore[misc]
        docs[0].unobserve(subscription)
        # Applying it on three pods made three transactions, and none was published.
        sent = [m for p in published for m in p.messages]
        assert [(topic, m.kind) for topic, m, _ in sent] == [(room_topic("room"), _wire.UPDATE)]
        [(_, message, size)] = sent
        assert message.body == updates[0]
        assert size == len(updates[0]) + 3 + len("p0")  # the update plus a 5-byte envelope
        for bridge in bridges[1:]:
            assert bridge.stats().updates_sent == 0
            assert bridge.stats().updates_applied >= 1


async def test_a_large_paste_travels_in_fragments() -> None:
    async with (
        pods(2, max_message_size=64 * 1024) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room") as pa,
        open_provider(b, tb, "room") as pb,
    ):
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        paste = "lorem ipsum dolor sit amet " * 120_000  # 3.2 MB
        a.get("t", type=Text).insert(0, paste)
        await until(b, lambda: len(text(b)) == len(paste))
        assert text(b) == paste
        assert pa.stats().fragments_sent >= len(paste) // (64 * 1024)
        assert pb.stats().fragments_dropped == 0
        # Small edits still follow.
        a.get("t", type=Text).insert(0, "after;")
        await until(b, lambda: text(b).startswith("after;"))


async def test_a_newcomer_receives_a_large_document_in_fragments() -> None:
    async with pods(2, max_message_size=32 * 1024) as [(ta, a), (tb, b)]:
        a.get("t", type=Text).insert(0, "x" * 500_000)
        async with open_provider(a, ta, "room"), open_provider(b, tb, "room") as pb:
            with anyio.fail_after(TIMEOUT):
                await pb.synced.wait()
            assert len(text(b)) == 500_000


# -- synced means synced ----------------------------------------------------------------------


async def test_synced_waits_for_the_rooms_content() -> None:
    net = MemoryNetwork()
    slow = FaultPlan(delay=(0.05, 0.05))
    async with pods(2, net, faults=slow) as [(ta, a), (tb, b)]:
        a.get("t", type=Text).insert(0, "content written before b came")
        async with open_provider(a, ta, "room"), open_provider(b, tb, "room") as pb:
            with anyio.fail_after(TIMEOUT):
                await pb.synced.wait()
            assert text(b) == "content written before b came"
            assert not pb.stats().synced_by_timeout


async def test_synced_waits_for_every_member_of_the_presence_registry() -> None:
    async with pods(3) as [(ta, a), (tb, b), (tc, c)], AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(
                Store[Any]("presence", tr, node_id=f"n{i}", hydrate_timeout=0.2)
            )
            for i, tr in enumerate((ta, tb, tc))
        ]
        a.get("t", type=Text).insert(0, "from a;")
        b.get("log", type=Array).append("from b")
        pa = await stack.enter_async_context(RoomBridge(a, ta, "room", presence=stores[0]))
        # Alone in the registry: synced at once, not after sync_timeout.
        with anyio.fail_after(1.0):
            await pa.synced.wait()
        pb = await stack.enter_async_context(RoomBridge(b, tb, "room", presence=stores[1]))
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        # The registry reaches c's store; c waits for both a and b.
        prefix = "m:" + room_topic("room") + "#"
        await eventually(lambda: sum(k.startswith(prefix) for k in stores[2]) >= 2)
        pc = await stack.enter_async_context(RoomBridge(c, tc, "room", presence=stores[2]))
        with anyio.fail_after(TIMEOUT):
            await pc.synced.wait()
        assert text(c) == "from a;"
        assert c.get("log", type=Array).to_py() == ["from b"]
        assert not pc.stats().synced_by_timeout


async def test_a_silent_member_delays_synced_only_until_the_timeout() -> None:
    async with pods(1) as [(ta, a)], AsyncExitStack() as stack:
        store = await stack.enter_async_context(
            Store[Any]("presence", ta, node_id="n0", hydrate_timeout=0.2)
        )
        # A member that never answers (its pod hangs, say).
        await store.set("m:" + room_topic("room") + "#ghost", True)
        bridge = await stack.enter_async_context(
            RoomBridge(a, ta, "room", presence=store, sync_timeout=0.3)
        )
        with anyio.fail_after(TIMEOUT):
            await bridge.synced.wait()
        assert bridge.stats().synced_by_timeout


class CountingTransport:
    """A MemoryTransport that can count a topic's other subscribers (SubscriberCounting)."""

    def __init__(self, inner: MemoryTransport, count: int | None) -> None:
        self.inner = inner
        self.count = count
        self.asked: list[str] = []
        self.max_message_size = inner.max_message_size

    async def publish(self, topic: str, message: bytes) -> None:
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.subscribe(topic)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def remote_subscribers(self, topic: str) -> int | None:
        self.asked.append(topic)
        return self.count


async def test_a_transport_that_counts_subscribers_tells_whom_to_wait_for() -> None:
    async with pods(3) as [(ta, a), (tb, b), (tc, c)]:
        # Nobody else subscribes to the room: synced at once, not at sync_timeout.
        alone = CountingTransport(ta, 0)
        async with RoomBridge(a, alone, "room") as pa:
            with anyio.fail_after(1.0):
                await pa.synced.wait()
            assert alone.asked == [room_topic("room")]
            assert not pa.stats().synced_by_timeout
            a.get("t", type=Text).insert(0, "from a;")
            b.get("log", type=Array).append("from b")
            # Two others: both must answer before c counts as synced.
            async with (
                open_provider(b, tb, "room"),
                RoomBridge(c, CountingTransport(tc, 2), "room") as pc,
            ):
                with anyio.fail_after(TIMEOUT):
                    await pc.synced.wait()
                assert text(c) == "from a;"
                assert c.get("log", type=Array).to_py() == ["from b"]
                assert not pc.stats().synced_by_timeout


async def test_an_empty_room_is_synced_at_once_when_the_transport_counts_nobody() -> None:
    async with pods(1) as [(ta, a)], RoomBridge(a, ta, "room", sync_timeout=30) as bridge:
        # The memory transport counts no other subscriber of the room: nothing to wait for.
        with anyio.fail_after(TIMEOUT):
            await bridge.synced.wait()
        assert not bridge.stats().synced_by_timeout


async def test_an_empty_room_is_synced_within_the_timeout_without_evidence() -> None:
    async with (
        pods(1) as [(ta, a)],
        RoomBridge(a, CountingTransport(ta, None), "room", sync_timeout=0.2) as bridge,
    ):
        with anyio.fail_after(TIMEOUT):
            await bridge.synced.wait()
        assert bridge.stats().synced_by_timeout


# -- faults ---------------------------------------------------------------------------------


class FlakyTransport:
    """A MemoryTransport whose publishes (and subscriptions) fail while ``down``.

    Reports a gap when it comes back, as RedisTransport does after a reconnect.
    """

    def __init__(self, inner: MemoryTransport, *, report_gaps: bool = True) -> None:
        self.inner = inner
        self.max_message_size = inner.max_message_size
        self.down = False
        self.refuse_subscriptions = 0
        self.report_gaps = report_gaps
        self._gaps = GapListeners()

    async def publish(self, topic: str, message: bytes) -> None:
        if self.down:
            raise TransportError("not connected (test outage)")
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if self.refuse_subscriptions:
            self.refuse_subscriptions -= 1
            raise TransportError("cannot subscribe (test outage)")
        return self.inner.subscribe(topic)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self._gaps.add(listener)

    def up(self) -> None:
        self.down = False
        if self.report_gaps:
            self._gaps.notify()


@pytest.mark.parametrize("report_gaps", [True, False], ids=["gap-reported", "no-gap"])
async def test_an_outage_is_survived_and_repaired(report_gaps: bool) -> None:
    errors: list[PodshareError] = []
    net = MemoryNetwork()
    async with pods(2, net) as [(ta, a), (tb, b)]:
        fa = FlakyTransport(ta, report_gaps=report_gaps)
        fb = FlakyTransport(tb, report_gaps=report_gaps)
        async with (
            RoomBridge(a, fa, "room", on_error=errors.append, resync_interval=None) as pa,
            RoomBridge(b, fb, "room", resync_interval=None) as pb,
        ):
            with anyio.fail_after(TIMEOUT):
                await pb.synced.wait()
            a.get("t", type=Text).insert(0, "before;")
            await until(b, lambda: text(b) == "before;")
            fa.down = fb.down = True
            # Both sides keep editing while nothing can be published.
            for i in range(5):
                a.get("t", type=Text).insert(len(text(a)), f"a{i};")
                b.get("log", type=Array).append(f"b{i}")
                await anyio.lowlevel.checkpoint()
            await eventually(lambda: pa.stats().publish_failures >= 2)
            assert text(b) == "before;"
            fa.up()
            fb.up()
            expected = "before;" + "".join(f"a{i};" for i in range(5))
            await until(b, lambda: text(b) == expected)
            await until(a, lambda: a.get("log", type=Array).to_py() == [f"b{i}" for i in range(5)])
            # Counted, and reported once for the outage, not once per failure.
            assert pa.stats().publish_failures >= 2
            assert len([e for e in errors if isinstance(e, TransportError)]) == 1
            # Later edits flow normally.
            a.get("t", type=Text).insert(0, "after;")
            await until(b, lambda: text(b).startswith("after;"))


async def test_a_transport_down_at_start_is_survived() -> None:
    async with pods(2) as [(ta, a), (tb, b)]:
        a.get("t", type=Text).insert(0, "from a")
        fb = FlakyTransport(tb)
        fb.refuse_subscriptions = 3
        async with (
            open_provider(a, ta, "room"),
            RoomBridge(b, fb, "room", sync_timeout=0.2) as pb,
        ):
            # Serves its clients after sync_timeout, then catches up once subscribed.
            with anyio.fail_after(TIMEOUT):
                await pb.synced.wait()
            await until(b, lambda: text(b) == "from a")
            assert pb.stats().subscribe_failures == 3


@pytest.mark.usefixtures("caplog")  # keeps the expected error log lines out of the output
async def test_a_closed_transport_stops_sync_without_raising() -> None:
    async with pods(1) as [(ta, a)]:
        async with RoomBridge(a, ta, "room", sync_timeout=0.1) as bridge:
            await ta.aclose()
            a.get("t", type=Text).insert(0, "still editable")
            await eventually(lambda: bridge.stats().publish_failures > 0)
        assert text(a) == "still editable"


async def test_updates_lost_in_a_partition_are_repaired_by_the_gap_resync() -> None:
    net = MemoryNetwork()
    async with (
        pods(2, net) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room"),
        open_provider(b, tb, "room") as pb,
    ):
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        sent_a, sent_b = Published(ta), Published(tb)
        net.partition(["pod-0"], ["pod-1"])
        a.get("t", type=Text).insert(0, "made during the partition")
        b.get("log", type=Array).append("b too")
        # Both publish their update into the partition, where it is lost.
        await sent_a.wait_for(1)
        await sent_b.wait_for(1)
        assert text(b) == ""
        net.heal()  # both transports report a gap; both bridges resync
        await until(b, lambda: text(b) == "made during the partition")
        await until(a, lambda: a.get("log", type=Array).to_py() == ["b too"])


async def test_deletes_lost_in_a_partition_are_repaired() -> None:
    # A delete changes no state vector: only the delete-set digest tells the pods apart.
    net = MemoryNetwork()
    async with (
        pods(2, net) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room") as pa,
        open_provider(b, tb, "room") as pb,
    ):
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        a.get("t", type=Text).insert(0, "keep this, not that")
        await until(b, lambda: text(b) == "keep this, not that")
        sent = Published(ta)
        net.partition(["pod-0"], ["pod-1"])
        del a.get("t", type=Text)[9:]
        await sent.wait_for(1)
        assert text(b) == "keep this, not that"
        net.heal()
        await until(b, lambda: text(b) == "keep this")
        assert pa.stats().resyncs >= 1


async def test_resyncs_between_agreeing_pods_carry_no_document() -> None:
    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room") as pa,
        open_provider(b, tb, "room") as pb,
    ):
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        with a.transaction():
            items = a.get("items", type=Array)
            for i in range(200):
                items.append({"id": i, "by": "ada", "text": "a plain JSON object"})
        del a.get("items", type=Array)[0:50]
        await until(b, lambda: len(b.get("items", type=Array)) == 150)
        sent_a, sent_b = Published(ta), Published(tb)
        for i in range(5):
            await pa.resync()
            await pb.resync()
            await sent_a.wait_for(i + 1)
            await sent_b.wait_for(i + 1)
        # One more exchange each way: any answer to the earlier ones precedes its replies.
        await pa.resync()
        await sent_a.wait_for(6)
        kinds = set(sent_a.kinds()) | set(sent_b.kinds())
        assert kinds == {_wire.SYNC1}
        assert max(size for p in (sent_a, sent_b) for _, _, size in p.messages) < 100


async def test_malformed_messages_are_dropped_and_reported() -> None:
    errors: list[PodshareError] = []
    got_error = anyio.Event()

    def on_error(exc: PodshareError) -> None:
        errors.append(exc)
        got_error.set()

    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room", on_error=on_error),
        open_provider(b, tb, "room"),
    ):
        head = _wire.header("mallory")
        junk = [
            b"",
            b"\x09xx",
            b"\x01\x01Z\x07",  # the old bridge's envelope
            _wire.encode(head, _wire.UPDATE, b"\x05\xff\xff", limit=999, message_id=0)[0],
            _wire.encode(
                head,
                _wire.UPDATE,
                bytes.fromhex("00000000000001000000000000"),
                limit=999,
                message_id=0,
            )[0],  # a v2 update
        ]
        for data in junk:
            await tb.publish(room_topic("room"), data)
        with anyio.fail_after(TIMEOUT):
            while len(errors) < len(junk):
                got_error = anyio.Event()
                await got_error.wait()
        assert all(isinstance(e, DecodeError) for e in errors)
        assert any("v2" in str(e) for e in errors)
        # The bridge still works.
        b.get("t", type=Text).insert(0, "still fine")
        await until(a, lambda: text(a) == "still fine")


async def test_a_failing_observer_of_the_document_does_not_stop_the_bridge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        pods(2) as [(ta, a), (tb, b)],
        open_provider(a, ta, "room"),
        open_provider(b, tb, "room") as pb,
    ):

        def broken(_event: Any) -> None:
            raise RuntimeError("a user's observer is broken")

        b.observe(broken)
        with caplog.at_level(logging.ERROR, logger="podshare.yjs"):
            a.get("t", type=Text).insert(0, "one")
            await eventually(lambda: pb.stats().callback_errors > 0)
            a.get("t", type=Text).insert(3, " two")
            await eventually(lambda: text(b) == "one two")
        assert "observer" in caplog.text


# -- persistence ------------------------------------------------------------------------------


class MemoryRooms:
    def __init__(self) -> None:
        self.rooms: dict[str, bytes] = {}
        self.saves = 0

    async def load(self, room: str) -> bytes | None:
        return self.rooms.get(room)

    async def save(self, room: str, state: bytes) -> None:
        self.rooms[room] = state
        self.saves += 1


async def test_a_room_survives_a_full_restart_through_its_persistence() -> None:
    saved = MemoryRooms()
    async with (
        pods(2) as [(ta, a), (tb, b)],
        RoomBridge(a, ta, "room", persistence=saved, save_interval=0.05) as pa,
        RoomBridge(b, tb, "room", persistence=saved, save_interval=0.05),
    ):
        a.get("t", type=Text).insert(0, "written before the restart")
        await until(b, lambda: text(b) == "written before the restart")
        await eventually(lambda: pa.stats().saves > 0)
    # Every pod is gone; new ones start from the saved state.
    async with pods(1) as [(tc, c)], RoomBridge(c, tc, "room", persistence=saved, sync_timeout=0.1):
        assert text(c) == "written before the restart"


async def test_store_persistence_joins_what_pods_save() -> None:
    async with pods(1) as [(tr, _)], Store[YDoc]("rooms", tr, hydrate_timeout=0.1) as rooms:
        persistence = StorePersistence(rooms, key_prefix="doc:")
        one: Doc[Any] = Doc()
        two: Doc[Any] = Doc()
        one.get("t", type=Text).insert(0, "from one;")
        two.get("log", type=Array).append("from two")
        await persistence.save("room", one.get_update())
        await persistence.save("room", two.get_update())  # joined, not replaced
        state = await persistence.load("room")
        assert state is not None
        joined: Doc[Any] = Doc()
        joined.apply_update(state)
        assert text(joined) == "from one;"
        assert joined.get("log", type=Array).to_py() == ["from two"]
        assert await persistence.load("never saved") is None
        assert list(rooms) == ["doc:" + room_topic("room")]


async def test_a_failing_persistence_is_reported_and_the_room_still_syncs() -> None:
    errors: list[PodshareError] = []

    class Broken:
        async def load(self, _room: str) -> bytes | None:
            raise OSError("disk on fire")

        async def save(self, _room: str, _state: bytes) -> None:
            raise OSError("disk on fire")

    async with (
        pods(2) as [(ta, a), (tb, b)],
        RoomBridge(
            a, ta, "room", persistence=Broken(), save_interval=0.01, on_error=errors.append
        ) as pa,
        open_provider(b, tb, "room"),
    ):
        a.get("t", type=Text).insert(0, "synced anyway")
        await until(b, lambda: text(b) == "synced anyway")
        await eventually(lambda: pa.stats().save_failures >= 2)
        assert errors


# -- pycrdt's own Provider over TransportChannel ----------------------------------------------


async def test_a_pycrdt_provider_on_a_channel_shares_a_room_with_bridges() -> None:
    async with pods(2) as [(ta, a), (tb, b)]:
        a.get("t", type=Text).insert(0, "from the bridge;")
        async with (
            open_provider(a, ta, "room"),
            TransportChannel(tb, "room", doc=b) as channel,
            pycrdt.Provider(b, channel) as provider,
        ):
            with anyio.fail_after(TIMEOUT):
                await provider.synced.wait()
            await until(b, lambda: text(b) == "from the bridge;")
            b.get("m", type=Map)["from"] = "provider"
            await until(a, lambda: a.get("m", type=Map).to_py() == {"from": "provider"})


async def test_channel_routes_step2_replies_to_the_asker() -> None:
    async with pods(1) as [(tr, _)]:
        sent: list[tuple[str, bytes]] = []
        real_publish = tr.publish

        async def publish(topic: str, message: bytes) -> None:
            sent.append((topic, message))
            await real_publish(topic, message)

        tr.publish = publish  # type: ignore[method-assign]
        topic = room_topic("room")
        async with TransportChannel(tr, "room", node_id="me") as channel:
            assert channel.path == topic
            await channel.send(pycrdt.create_update_message(b"\x00\x00"))
            # No step 1 received yet: a step 2 has nobody to answer, so it is broadcast.
            await channel.send(bytes([0, 1, 2, 0, 0]))
            sync1 = _wire.encode_sync1(0, None, Doc().get_state())
            [ask] = _wire.encode(_wire.header("peer1"), _wire.SYNC1, sync1, limit=999, message_id=0)
            await tr.publish(f"{topic}#me", ask)
            with anyio.fail_after(TIMEOUT):
                assert (await channel.recv())[:2] == b"\x00\x00"
            await channel.send(bytes([0, 1, 2, 0, 0]))
            with pytest.raises(DecodeError):
                await channel.send(b"\x01\x00")  # awareness is not the channel's business
        mine = [(t, _wire.decode(m)) for t, m in sent if not t.endswith("#me")]
        assert [(t, m.kind) for t, m in mine] == [
            (topic, _wire.UPDATE),
            (topic, _wire.SYNC2),
            (f"{topic}#peer1", _wire.SYNC2),
        ]
        assert all(m.sender == "me" for _, m in mine)


# -- options --------------------------------------------------------------------------------


def test_bad_options_are_refused() -> None:
    tr = MemoryTransport()
    doc: Doc[Any] = Doc()
    for node_id in ("", "a#b", "x" * 256):
        with pytest.raises(ConfigurationError):
            TransportChannel(tr, "room", node_id=node_id)
        with pytest.raises(ConfigurationError):
            RoomBridge(doc, tr, "room", node_id=node_id)
    with pytest.raises(ConfigurationError):
        TransportChannel(tr, "room", resync_interval=0)
    with pytest.raises(ConfigurationError):
        TransportChannel(tr, "room", buffer=0)
    for bad in (
        {"sync_timeout": -1},
        {"resync_interval": 0},
        {"save_interval": float("nan")},
        {"max_update_size": 0},
        {"max_buffered": True},
        {"persistence": object()},
        {"on_error": 3},
    ):
        with pytest.raises(ConfigurationError):
            RoomBridge(doc, tr, "room", **bad)
    with pytest.raises(ConfigurationError):
        RoomBridge("not a doc", tr, "room")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        RoomBridge(doc, object(), "room")  # type: ignore[arg-type]


async def test_a_bridge_is_entered_once() -> None:
    async with pods(1) as [(tr, doc)]:
        bridge = RoomBridge(doc, tr, "room", sync_timeout=0.1)
        async with bridge:
            pass
        with pytest.raises(ClosedError):
            await bridge.__aenter__()


# -- Redis ------------------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("redis") is None, reason="the Redis test needs redis-py"
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py is asyncio-only
async def test_live_docs_sync_through_redis(redis_server: Any) -> None:
    from podshare.transport import RedisTransport

    a: Doc[Any] = Doc()
    b: Doc[Any] = Doc()
    a.get("t", type=Text).insert(0, "before joining;")
    async with (
        RedisTransport(url=redis_server.url) as ta,
        RedisTransport(url=redis_server.url) as tb,
        open_provider(a, ta, "redis-room"),
        open_provider(b, tb, "redis-room") as pb,
    ):
        with anyio.fail_after(TIMEOUT):
            await pb.synced.wait()
        assert text(b) == "before joining;"
        b.get("t", type=Text).insert(0, "b says hi;")
        await until(a, lambda: text(a) == "b says hi;before joining;")
