"""MemoryTransport: delivery, lifecycle, networks and partitions, buffers, fault plans,
gap listeners that fail, readiness and subscriber counting."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.exceptions import ClosedError, ConfigurationError, MessageTooLarge, TransportError
from podshare.transport import (
    ClusterReadiness,
    EchoSkipping,
    FaultPlan,
    GapReporting,
    MemoryNetwork,
    MemoryTransport,
    MemoryTransportStats,
    SubscriberCounting,
    Transport,
)
from tests._support import check_echo_skipping

pytestmark = pytest.mark.anyio

WAIT = 5  # seconds: a bound on waits, never an expectation


async def receive(messages: AsyncIterator[bytes]) -> bytes:
    with anyio.fail_after(WAIT):
        return await anext(messages)


async def receive_n(messages: AsyncIterator[bytes], n: int) -> list[bytes]:
    with anyio.fail_after(WAIT):
        return [await anext(messages) for _ in range(n)]


class GapCounter:
    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()


async def test_protocols_are_implemented() -> None:
    async with MemoryTransport() as tr:
        assert isinstance(tr, Transport)
        assert isinstance(tr, GapReporting)
        assert isinstance(tr, ClusterReadiness)
        assert isinstance(tr, SubscriberCounting)
        assert tr.max_message_size == 1024 * 1024


async def test_stores_sharing_one_transport_each_get_every_message() -> None:
    async with (
        MemoryTransport() as tr,
        tr.subscribe("ps/x") as first,
        tr.subscribe("ps/x") as second,
        tr.subscribe("ps/y") as other,
    ):
        await tr.publish("ps/x", b"one")
        await tr.publish("ps/y", b"why")
        assert await receive(first) == b"one"
        assert await receive(second) == b"one"
        assert await receive(other) == b"why"
        stats = tr.stats()
        assert stats.published == 2
        assert stats.delivered == 3


async def test_private_networks_are_separate() -> None:
    async with MemoryTransport() as a, MemoryTransport() as b, b.subscribe("t") as on_b:
        assert a.network is not b.network
        await a.publish("t", b"not for b")
        await b.publish("t", b"for b")
        assert await receive(on_b) == b"for b"


async def test_publisher_buffer_is_copied() -> None:
    async with MemoryTransport() as tr, tr.subscribe("t") as messages:
        buffer = bytearray(b"abc")
        await tr.publish("t", buffer)  # type: ignore[arg-type]
        buffer[0] = ord("X")
        got = await receive(messages)
        assert got == b"abc"
        assert type(got) is bytes


async def test_bad_arguments_to_publish_and_subscribe() -> None:
    async with MemoryTransport() as tr:
        with pytest.raises(TypeError):
            await tr.publish("t", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await tr.publish("", b"x")
        with pytest.raises(TypeError):
            tr.subscribe("")


async def test_message_too_large() -> None:
    async with MemoryTransport(max_message_size=10) as tr, tr.subscribe("t") as messages:
        await tr.publish("t", bytes(10))
        with pytest.raises(MessageTooLarge, match="max_message_size=10"):
            await tr.publish("t", bytes(11))
        assert await receive(messages) == bytes(10)


async def test_lifecycle_errors() -> None:
    tr = MemoryTransport(name="life")
    with pytest.raises(ClosedError, match="not open"):
        await tr.publish("t", b"early")
    async with tr:
        async with tr.subscribe("t") as messages:
            await tr.aclose()
            with anyio.fail_after(WAIT):
                # The iterator of a subscription ends when its transport closes.
                assert [m async for m in messages] == []
        with pytest.raises(ClosedError, match="closed"):
            await tr.publish("t", b"late")
        with pytest.raises(ClosedError):
            async with tr.subscribe("t"):
                pass  # pragma: no cover
        await tr.aclose()  # idempotent
        assert tr.closed
    with pytest.raises(ClosedError):
        await tr.__aenter__()


async def test_names_are_unique_per_network_and_freed_on_close() -> None:
    net = MemoryNetwork()
    async with MemoryTransport(network=net, name="pod"):
        with pytest.raises(ConfigurationError, match="name"):
            async with MemoryTransport(network=net, name="pod"):
                pass  # pragma: no cover
        assert net.names == {"pod"}
    assert net.names == frozenset()
    async with MemoryTransport(network=net, name="pod") as again:
        assert again.name == "pod"


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"max_message_size": 0}, "max_message_size"),
        ({"max_message_size": 1.5}, "max_message_size"),
        ({"buffer_size": -1}, "buffer_size"),
        ({"buffer_size": True}, "buffer_size"),
        ({"name": ""}, "name"),
        ({"network": object()}, "network"),
        ({"faults": {"drop": 0.1}}, "faults"),
        ({"close_timeout": -1}, "close_timeout"),
        ({"close_timeout": float("nan")}, "close_timeout"),
    ],
)
def test_bad_options_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigurationError, match=option):
        MemoryTransport(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop": -0.1}, "drop"),
        ({"drop": 1.01}, "drop"),
        ({"duplicate": float("nan")}, "duplicate"),
        ({"reorder": "0.5"}, "reorder"),
        ({"reorder": True}, "reorder"),
        ({"delay": (0.2, 0.1)}, "delay"),
        ({"delay": (-1.0, 0.0)}, "delay"),
        ({"delay": (0.0, float("inf"))}, "delay"),
        ({"delay": (0.0,)}, "delay"),
        ({"delay": 0.5}, "delay"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_fault_plan_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"FaultPlan\.{field}"):
        FaultPlan(**kwargs)


def test_fault_plan_normalises_delay() -> None:
    assert FaultPlan(delay=(1, 2)).delay == (1.0, 2.0)
    assert type(FaultPlan(delay=(1, 2)).delay[0]) is float
    assert FaultPlan(delay=[0, 1]).delay == (0.0, 1.0)  # type: ignore[arg-type]
    assert not FaultPlan().active
    quiet = FaultPlan(seed=1)
    assert MemoryTransport(faults=quiet).faults is quiet
    assert FaultPlan(duplicate=0.1).active


async def test_partition_and_heal() -> None:
    net = MemoryNetwork()
    gaps = {name: GapCounter() for name in "abc"}
    async with (
        MemoryTransport(network=net, name="a") as a,
        MemoryTransport(network=net, name="b") as b,
        MemoryTransport(network=net, name="c") as c,
        a.subscribe("t") as on_a,
        b.subscribe("t") as on_b,
        c.subscribe("t") as on_c,
    ):
        for name, tr in zip("abc", (a, b, c), strict=True):
            tr.add_gap_listener(gaps[name])
        net.partition(["a", "b"], "c")
        await a.publish("t", b"ab only")
        await c.publish("t", b"c alone")
        assert await receive(on_a) == b"ab only"
        assert await receive(on_b) == b"ab only"
        assert await receive(on_c) == b"c alone"  # a's message did not reach c
        assert a.stats().dropped == 1
        net.heal()
        assert all(g.count == 1 for g in gaps.values())
        await a.publish("t", b"everyone")
        for messages in (on_a, on_b, on_c):
            assert await receive(messages) == b"everyone"
        net.heal()  # nothing to heal: no new gap
        assert all(g.count == 1 for g in gaps.values())


async def test_unnamed_transport_is_isolated_by_a_partition() -> None:
    net = MemoryNetwork()
    net.partition(["a"], ["b"])
    assert not net.can_reach("x", "a")
    assert net.can_reach("x", "x")
    with pytest.raises(ConfigurationError, match="two groups"):
        net.partition(["a", "b"], ["b"])


async def test_disconnect_and_reconnect() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as a,
        MemoryTransport(network=net, name="b") as b,
        b.subscribe("t") as on_b,
        a.subscribe("t") as on_a,
    ):
        gap_b = GapCounter()
        remove = b.add_gap_listener(gap_b)
        net.disconnect("b")
        with pytest.raises(TransportError, match="disconnected"):
            await b.publish("t", b"refused")
        await a.publish("t", b"missed by b")
        assert await receive(on_a) == b"missed by b"
        net.reconnect("b")
        assert gap_b.count == 1
        await a.publish("t", b"back")
        assert await receive(on_b) == b"back"
        remove()
        b.simulate_gap()
        assert gap_b.count == 1
        assert b.stats().gaps_reported == 2


async def test_full_buffer_drops_messages_not_the_publisher_then_reports_a_gap() -> None:
    async with MemoryTransport(buffer_size=2) as tr, tr.subscribe("t") as messages:
        gap = GapCounter()
        tr.add_gap_listener(gap)
        for i in range(5):
            await tr.publish("t", b"%d" % i)  # never blocks, whatever the consumer does
        assert tr.stats().overflowed == 3
        assert gap.count == 0  # not yet: delivery is not re-established
        assert await receive(messages) == b"0"
        assert gap.count == 1  # the consumer drains again: stores refresh now
        assert await receive(messages) == b"1"
        await tr.publish("t", b"later")
        assert await receive(messages) == b"later"  # the subscription stayed open
        assert gap.count == 1


async def collect_run(plan: FaultPlan, count: int) -> tuple[list[bytes], Any]:
    """Publish ``count`` messages under ``plan``; return what arrived before a marker."""
    async with MemoryTransport(faults=plan) as tr, tr.subscribe("t") as messages:
        for i in range(count):
            await tr.publish("t", b"%d" % i)
        tr.faults = None  # the marker itself travels cleanly
        await tr.publish("t", b"end")
        got: list[bytes] = []
        with anyio.fail_after(WAIT):
            while (message := await anext(messages)) != b"end":
                got.append(message)
        return got, tr.stats()


async def test_drop_everything() -> None:
    got, stats = await collect_run(FaultPlan(drop=1.0), 20)
    assert got == []
    assert stats.dropped == 20


async def test_duplicate_everything() -> None:
    got, stats = await collect_run(FaultPlan(duplicate=1.0), 5)
    assert got == [b"%d" % (i // 2) for i in range(10)]
    assert stats.duplicated == 5


async def test_seeded_runs_are_reproducible() -> None:
    plan = FaultPlan(drop=0.5, duplicate=0.2, seed=7)
    first, _ = await collect_run(plan, 100)
    second, _ = await collect_run(plan, 100)
    assert first == second
    assert 0 < len(set(first)) < 100  # some dropped, some delivered


async def test_reorder_holds_messages_back_without_losing_them() -> None:
    plan = FaultPlan(reorder=0.3, seed=3)
    sent = [b"%d" % i for i in range(100)]
    async with MemoryTransport(faults=plan) as tr, tr.subscribe("t") as messages:
        for message in sent:
            await tr.publish("t", message)
        got = await receive_n(messages, len(sent))  # held ones are released eventually
    assert sorted(got) == sorted(sent)
    assert got != sent
    # Every held message arrives after a message published later.
    assert any(int(got[i]) > int(got[i + 1]) for i in range(len(got) - 1))


async def test_delay_runs_in_background_and_delivers_everything() -> None:
    plan = FaultPlan(delay=(0.0, 0.01), seed=1)
    sent = [b"%d" % i for i in range(30)]
    async with MemoryTransport(faults=plan) as tr, tr.subscribe("t") as messages:
        for message in sent:
            await tr.publish("t", message)
        assert tr.stats().delayed == len(sent)
        got = await receive_n(messages, len(sent))
    assert sorted(got) == sorted(sent)


async def test_pending_delayed_deliveries_do_not_outlive_the_transport() -> None:
    with anyio.fail_after(WAIT):  # a delay of an hour must not hold the exit
        async with MemoryTransport(faults=FaultPlan(delay=(3600.0, 3600.0))) as tr:
            async with tr.subscribe("t"):
                await tr.publish("t", b"never")
            assert tr.stats().delayed == 1


async def test_faults_apply_only_to_the_publishers_messages() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, faults=FaultPlan(drop=1.0)) as lossy,
        MemoryTransport(network=net) as clean,
        clean.subscribe("t") as messages,
    ):
        await lossy.publish("t", b"lost")
        await clean.publish("t", b"kept")
        assert await receive(messages) == b"kept"


@settings(max_examples=20)
@given(
    duplicate=st.floats(0.0, 1.0),
    reorder=st.floats(0.0, 1.0),
    max_delay=st.sampled_from([0.0, 0.002]),
    seed=st.integers(0, 2**32),
    count=st.integers(0, 30),
    backend=st.sampled_from(["asyncio", "trio"]),
)
def test_without_drop_every_message_arrives_once_or_twice(
    duplicate: float, reorder: float, max_delay: float, seed: int, count: int, backend: str
) -> None:
    # A sync Hypothesis test that runs its own event loop: the async fixture machinery
    # does not mix with @given, so the backend is drawn instead of parametrised.
    plan = FaultPlan(duplicate=duplicate, reorder=reorder, delay=(0.0, max_delay), seed=seed)

    async def run() -> None:
        sent = [b"%d" % i for i in range(count)]
        async with MemoryTransport(faults=plan) as tr, tr.subscribe("t") as messages:
            for message in sent:
                await tr.publish("t", message)
            expected = count + tr.stats().duplicated
            got = await receive_n(messages, expected)
        assert sorted(set(got)) == sorted(sent)
        assert all(1 <= got.count(m) <= 2 for m in sent)

    anyio.run(run, backend=backend)


@pytest.mark.anyio
async def test_exit_inside_a_cancelled_scope_leaves_the_task_group_consistent() -> None:
    # Regression: aclose()'s checkpoint raised in a cancelled scope before the transport's
    # task group was exited ("Attempted to exit a cancel scope..." / "Nursery stack
    # corrupted").
    with anyio.CancelScope() as scope:
        async with MemoryTransport() as tr, tr.subscribe("t"):
            scope.cancel()
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert tr.closed
    # The event loop is still usable afterwards.
    async with MemoryTransport() as tr2, tr2.subscribe("t") as messages:
        await tr2.publish("t", b"x")
        with anyio.fail_after(5):
            assert await anext(aiter(messages)) == b"x"


# --- stats ---------------------------------------------------------------------------


async def test_stats_is_a_frozen_snapshot_of_one_record() -> None:
    async with MemoryTransport() as tr, tr.subscribe("t") as messages:
        await tr.publish("t", b"x")
        before = tr.stats()
        await tr.publish("t", b"y")
        assert await receive_n(messages, 2) == [b"x", b"y"]
        assert isinstance(before, MemoryTransportStats)
        assert (before.published, tr.stats().published) == (1, 2)
        with pytest.raises(dataclasses.FrozenInstanceError):
            before.published = 5
        assert before == MemoryTransportStats(published=1, delivered=1)


async def test_gaps_is_a_deprecated_alias_of_gaps_reported() -> None:
    async with MemoryTransport() as tr:
        tr.simulate_gap()
        stats = tr.stats()
        assert stats.gaps_reported == 1
        with pytest.warns(DeprecationWarning, match="gaps_reported"):
            assert stats.gaps == 1


# --- gap listeners that fail ---------------------------------------------------------


def failing_listener() -> None:
    raise RuntimeError("listener bug")


async def test_a_failing_gap_listener_never_reaches_the_subscriber(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The subscriber's read is what notices the overflow gap: the listener's error must
    # not come out of it (it used to, and crashed the store consuming it).
    async with MemoryTransport(buffer_size=1) as tr, tr.subscribe("t") as messages:
        tr.add_gap_listener(failing_listener)
        healthy = GapCounter()
        tr.add_gap_listener(healthy)
        for message in (b"kept", b"overflowed"):
            await tr.publish("t", message)
        with caplog.at_level(logging.ERROR, logger="podshare.transport.memory"):
            assert await receive(messages) == b"kept"  # no RuntimeError here
        assert healthy.count == 1  # the other listeners still ran
        await tr.publish("t", b"after")
        assert await receive(messages) == b"after"  # the subscription keeps working
        stats = tr.stats()
        assert (stats.overflowed, stats.gaps_reported, stats.gap_listener_failures) == (1, 1, 1)
    failures = [r for r in caplog.records if r.message == "a gap listener failed"]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is RuntimeError


async def test_a_failing_gap_listener_never_reaches_heal_reconnect_or_the_publisher() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as a,
        MemoryTransport(network=net, name="b") as b,
        b.subscribe("t") as on_b,
    ):
        a.add_gap_listener(failing_listener)
        gap_b = GapCounter()
        b.add_gap_listener(gap_b)
        net.partition(["a"], ["b"])
        net.heal()  # must not raise, and b is told too
        net.disconnect("a")
        net.reconnect("a")
        a.simulate_gap()
        assert gap_b.count == 2
        await a.publish("t", b"still publishing")
        assert await receive(on_b) == b"still publishing"
        assert a.stats().gap_listener_failures == 3
        assert b.stats().gap_listener_failures == 0


async def test_a_store_keeps_serving_next_to_a_failing_gap_listener() -> None:
    # The whole path a store relies on: its transport's gaps make it refresh; a user's
    # broken listener on the same transport changes nothing for it.
    from podshare import Store

    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a", buffer_size=2) as ta,
        MemoryTransport(network=net, name="b", buffer_size=2) as tb,
        Store[str]("app", ta, node_id="a", hydrate_timeout=0.2) as a,
        Store[str]("app", tb, node_id="b", hydrate_timeout=0.2) as b,
        b.watch(key="k") as events,
    ):
        tb.add_gap_listener(failing_listener)
        net.partition(["a"], ["b"])
        await a.set("k", "written while apart")
        net.heal()  # b refreshes and learns the write; the failing listener is logged
        with anyio.fail_after(WAIT):
            event = await anext(events)
        assert event.value == "written while apart"
        assert tb.stats().gap_listener_failures >= 1
        await b.set("k2", "b still writes")
        assert b.get("k2") == "b still writes"


# --- readiness and subscriber counting -----------------------------------------------


async def test_wait_ready_returns_at_once_while_open() -> None:
    tr = MemoryTransport()
    with pytest.raises(ClosedError, match="not open"):
        await tr.wait_ready()
    async with tr:
        with anyio.fail_after(WAIT):
            await tr.wait_ready()
    with pytest.raises(ClosedError, match="closed"):
        await tr.wait_ready()


async def test_remote_subscribers_counts_other_reachable_transports_once_each() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as a,
        MemoryTransport(network=net, name="b") as b,
        MemoryTransport(network=net, name="c") as c,
    ):
        assert await a.remote_subscribers("t") == 0
        async with a.subscribe("t"), a.subscribe("t"):
            assert await a.remote_subscribers("t") == 0  # its own never count
            assert await b.remote_subscribers("t") == 1
            async with b.subscribe("t"), b.subscribe("t"), c.subscribe("t"):
                assert await a.remote_subscribers("t") == 2  # b once, c once
                assert await a.remote_subscribers("other") == 0
                net.partition(["a", "b"], ["c"])
                assert await a.remote_subscribers("t") == 1  # c is away
                assert await c.remote_subscribers("t") == 0
                net.heal()
                net.disconnect("b")
                assert await a.remote_subscribers("t") == 1  # b is off the network
                assert await b.remote_subscribers("t") is None  # b cannot tell
                net.reconnect("b")
                assert await a.remote_subscribers("t") == 2
            assert await a.remote_subscribers("t") == 0  # b and c unsubscribed
        async with b.subscribe("t"):
            await b.aclose()
            assert await a.remote_subscribers("t") == 0  # a closed transport counts not
    with pytest.raises(ClosedError):
        await a.remote_subscribers("t")
    with pytest.raises(TypeError):
        async with MemoryTransport() as tr:
            await tr.remote_subscribers("")


async def test_close_timeout_is_accepted_and_closing_stays_immediate() -> None:
    plan = FaultPlan(delay=(60.0, 60.0))
    with anyio.fail_after(WAIT):
        async with MemoryTransport(close_timeout=0, faults=plan) as tr, tr.subscribe("t"):
            await tr.publish("t", b"pending for a minute")
    assert tr.closed
    assert tr.state == "closed"


async def test_subscribe_skipping_leaves_out_only_its_own_messages() -> None:
    net = MemoryNetwork()
    async with MemoryTransport(network=net) as mine, MemoryTransport(network=net) as theirs:
        assert isinstance(mine, EchoSkipping)
        await check_echo_skipping(mine, theirs)


async def test_subscribe_skipping_checks_its_arguments() -> None:
    async with MemoryTransport() as tr:
        for prefix, offset in ((b"", 0), ("me", 0), (b"me", -1), (b"me", True)):
            with pytest.raises(ConfigurationError):
                async with tr.subscribe_skipping("t", prefix=prefix, offset=offset):  # type: ignore[arg-type]
                    pass
