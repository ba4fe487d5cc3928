"""The Authenticated wrapper over MemoryTransport: conformance, forgeries, replays, stores."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import pytest

from podshare import Store
from podshare.exceptions import ClosedError, ConfigurationError, MessageTooLarge
from podshare.store import wire
from podshare.testing import TransportConformance, check_transport
from podshare.transport import (
    Authenticated,
    AuthStats,
    FaultPlan,
    GapReporting,
    MemoryNetwork,
    MemoryTransport,
    Transport,
)
from podshare.transport.auth import OVERHEAD

pytestmark = pytest.mark.anyio

SECRET = b"the fleet's shared secret, 32 b"
WAIT = 5  # seconds: a bound on waits, never an expectation


async def receive(messages: AsyncIterator[bytes]) -> bytes:
    with anyio.fail_after(WAIT):
        return await anext(messages)


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait for replicas to converge on ``condition`` (they offer no single event)."""
    with anyio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.002)


def wrapped(network: MemoryNetwork, **options: Any) -> Authenticated:
    options.setdefault("secret", SECRET)
    return Authenticated(MemoryTransport(network=network), **options)


# --- conformance -------------------------------------------------------------------------


async def test_wrapper_passes_check_transport() -> None:
    network = MemoryNetwork()
    await check_transport(lambda: wrapped(network))


async def test_wrapper_with_encryption_passes_check_transport() -> None:
    pytest.importorskip("cryptography", reason="AES-GCM needs the encryption extra")
    network = MemoryNetwork()
    await check_transport(lambda: wrapped(network, encrypt=True))


async def test_wrapper_with_small_limits_passes_check_transport() -> None:
    network = MemoryNetwork()
    await check_transport(
        lambda: Authenticated(
            MemoryTransport(network=network, max_message_size=4096, buffer_size=8), secret=SECRET
        )
    )


class TestAuthenticatedConformance(TransportConformance):
    """The mixin form, one test per property."""

    def setup_method(self) -> None:
        self.network = MemoryNetwork()

    def transport_factory(self) -> AbstractAsyncContextManager[Transport]:
        return wrapped(self.network)


# --- the wrapper's surface --------------------------------------------------------------


class _Minimal:
    """A transport with only the three methods (no gap reporting, no size)."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner

    async def publish(self, topic: str, message: bytes) -> None:
        await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.inner.subscribe(topic)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_capabilities_are_forwarded_exactly_when_the_inner_has_them() -> None:
    inner = MemoryTransport()
    with_gaps = Authenticated(inner, secret=SECRET)
    without = Authenticated(_Minimal(MemoryTransport()), secret=SECRET)
    assert isinstance(with_gaps, Transport)
    assert isinstance(with_gaps, GapReporting)
    assert isinstance(without, Transport)
    assert not isinstance(without, GapReporting)
    assert with_gaps.max_message_size == inner.max_message_size - OVERHEAD
    assert without.max_message_size == 1024 * 1024 - OVERHEAD  # the default assumed
    assert with_gaps.inner is inner
    async with with_gaps:
        gaps: list[str] = []
        assert isinstance(with_gaps, GapReporting)
        remove = with_gaps.add_gap_listener(lambda: gaps.append("gap"))
        inner.simulate_gap()
        remove()
        inner.simulate_gap()
        assert gaps == ["gap"]


async def test_size_limit_is_the_inner_one_less_the_overhead() -> None:
    network = MemoryNetwork()
    async with (
        Authenticated(MemoryTransport(network=network, max_message_size=1000), secret=SECRET) as a,
        a.subscribe("t") as messages,
    ):
        assert a.max_message_size == 1000 - OVERHEAD
        await a.publish("t", bytes(1000 - OVERHEAD))
        assert len(await receive(messages)) == 1000 - OVERHEAD
        with pytest.raises(MessageTooLarge, match="authentication"):
            await a.publish("t", bytes(1001 - OVERHEAD))
        with pytest.raises(TypeError):
            await a.publish("t", "text")  # type: ignore[arg-type]


async def test_lifecycle_enters_and_closes_the_inner() -> None:
    inner = MemoryTransport()
    async with Authenticated(inner, secret=SECRET) as tr:
        was_closed = inner.closed
        await tr.aclose()
        assert (was_closed, inner.closed) == (False, True)
        await tr.aclose()  # idempotent
        with pytest.raises(ClosedError):
            await tr.publish("t", b"x")
        with pytest.raises(ClosedError):
            async with tr.subscribe("t"):
                pass
    with pytest.raises(ClosedError):
        await tr.__aenter__()


async def test_wrapper_of_an_open_transport_works_without_entering() -> None:
    async with MemoryTransport() as inner:
        tr = Authenticated(inner, secret=SECRET)
        async with tr.subscribe("t") as messages:
            await tr.publish("t", b"hi")
            assert await receive(messages) == b"hi"
    assert inner.closed


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="inner"):
        Authenticated(object(), secret=SECRET)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clock"):
        Authenticated(MemoryTransport(), secret=SECRET, clock=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="16 bytes"):
        Authenticated(MemoryTransport(), secret="short")


# --- what an intruder on the inner transport can do -----------------------------------------


async def test_forgeries_are_dropped_counted_and_logged_rarely(
    caplog: pytest.LogCaptureFixture,
) -> None:
    network = MemoryNetwork()
    forged = [
        b"",
        b"garbage",
        bytes(OVERHEAD),
        wire.encode(wire.Leave("pod-a", 1)),  # a plain podshare message, no MAC
    ]
    async with (
        wrapped(network) as a,
        wrapped(network) as b,
        wrapped(network, secret=b"some other secret!!") as stranger,
        MemoryTransport(network=network) as intruder,
        b.subscribe("t") as messages,
    ):
        with caplog.at_level(logging.DEBUG, logger="podshare.transport.auth"):
            for _ in range(100):
                for message in forged:
                    await intruder.publish("t", message)
                await stranger.publish("t", b"wrong secret")
            await a.publish("t", b"genuine")
            assert await receive(messages) == b"genuine"
        stats = b.stats()
    assert stats.refused == 500
    assert (stats.truncated, stats.unknown_version, stats.unknown_key) == (300, 100, 100)
    assert stats.opened == 1
    lines = [r for r in caplog.records if r.name == "podshare.transport.auth"]
    assert 1 <= len(lines) <= 2  # rate-limited: one line per 10 s
    assert all(r.levelno == logging.INFO for r in lines)


async def test_a_captured_message_replayed_is_dropped() -> None:
    network = MemoryNetwork()
    async with (
        wrapped(network) as a,
        wrapped(network) as b,
        MemoryTransport(network=network) as eavesdropper,
        eavesdropper.subscribe("t") as tap,
        b.subscribe("t") as messages,
        a.subscribe("t") as own,
    ):
        await a.publish("t", b"once")
        captured = await receive(tap)
        assert await receive(messages) == b"once"
        assert await receive(own) == b"once"  # the sender's own echo is delivered
        for _ in range(3):
            await eavesdropper.publish("t", captured)
        await a.publish("t", b"next")
        assert await receive(messages) == b"next"
        assert await receive(own) == b"next"
        # Tampering with the captured copy does not help either.
        tampered = captured[:-1] + bytes([captured[-1] ^ 1])
        await eavesdropper.publish("t", tampered)
        await a.publish("t", b"last")
        assert await receive(messages) == b"last"
    assert b.stats().replayed == 3
    assert b.stats().bad_tag == 1
    assert a.stats().replayed == 3  # the sender's own subscription refused them too


async def test_duplicates_from_the_network_are_delivered_once() -> None:
    network = MemoryNetwork()
    async with (
        Authenticated(
            MemoryTransport(network=network, faults=FaultPlan(duplicate=1.0, seed=1)),
            secret=SECRET,
        ) as a,
        wrapped(network) as b,
        b.subscribe("t") as messages,
    ):
        for i in range(10):
            await a.publish("t", b"%d" % i)
        got = [await receive(messages) for _ in range(10)]
        assert got == [b"%d" % i for i in range(10)]
        # Refusals happen as the subscriber reads: the last copy is read with the next one.
        a.inner.faults = None  # type: ignore[attr-defined]
        await a.publish("t", b"end")
        assert await receive(messages) == b"end"
        assert b.stats().replayed == 10


async def test_a_skewed_clock_is_refused() -> None:
    network = MemoryNetwork()
    async with (
        wrapped(network, clock=lambda: time.time() - 3600) as behind,
        wrapped(network, clock=lambda: time.time() + 3600) as ahead,
        wrapped(network, time_window=5.0) as b,
        b.subscribe("t") as messages,
    ):
        await behind.publish("t", b"an hour ago")
        await ahead.publish("t", b"in an hour")
        await b.publish("t", b"now")
        assert await receive(messages) == b"now"
        assert (b.stats().too_old, b.stats().too_new) == (1, 1)


async def test_key_rotation_without_downtime() -> None:
    old, new = b"the old secret, long enough", b"the new secret, long enough"
    network = MemoryNetwork()
    async with (
        wrapped(network, secret=[old]) as not_rolled,
        wrapped(network, secret=[new, old]) as rolled,
        wrapped(network, secret=[old, new]) as rolling,
        rolling.subscribe("t") as on_rolling,
        rolled.subscribe("t") as on_rolled,
    ):
        await not_rolled.publish("t", b"from old")
        await rolled.publish("t", b"from new")
        assert [await receive(on_rolling) for _ in range(2)] == [b"from old", b"from new"]
        assert [await receive(on_rolled) for _ in range(2)] == [b"from old", b"from new"]


# --- stores over the wrapper -------------------------------------------------------------


STORE: dict[str, Any] = {"hydrate_timeout": 0.5, "heartbeat_interval": 0.05, "down_after": 0.5}


@asynccontextmanager
async def open_store(transport: Transport, node: str) -> AsyncIterator[Store[Any]]:
    async with Store[Any]("auth", transport, node_id=node, **STORE) as store:
        yield store


async def test_stores_converge_and_a_store_without_the_secret_is_ignored() -> None:
    """An intruder running podshare itself, without the secret, on the same network."""
    network = MemoryNetwork()
    async with (
        wrapped(network) as ta,
        wrapped(network) as tb,
        MemoryTransport(network=network) as raw,
        open_store(ta, "pod-a") as a,
        open_store(tb, "pod-b") as b,
    ):
        await a.set("k", 1)
        await eventually(lambda: b.get("k") == 1)
        await eventually(lambda: b.members() == {"pod-a", "pod-b"})
        async with open_store(raw, "ghost") as ghost:
            await ghost.set("k", 666)  # a newer stamp: it would win if it were accepted
            await ghost.set("ghost-key", 1)
            await eventually(lambda: tb.stats().refused >= 3)
            assert ghost.members() == {"ghost"}  # it hears nothing it can decode either
        await a.set("k", 2)
        await eventually(lambda: b.get("k") == 2)
        assert b.members() == {"pod-a", "pod-b"}
        assert b.snapshot() == {"k": 2}
        assert b.stats().decode_errors == 0  # nothing forged reached the store's decoder


async def test_without_the_wrapper_the_same_intruder_gets_in() -> None:
    """The control for the test above: without a secret the intruder's writes win."""
    network = MemoryNetwork()
    async with (
        MemoryTransport(network=network) as tb,
        MemoryTransport(network=network) as raw,
        Store[Any]("auth", tb, node_id="pod-b", **STORE) as b,
        Store[Any]("auth", raw, node_id="ghost", **STORE) as ghost,
    ):
        await ghost.set("k", 666)
        await eventually(lambda: b.get("k") == 666)
        await eventually(lambda: "ghost" in b.members())


async def test_authenticated_stats_type() -> None:
    async with wrapped(MemoryNetwork()) as tr:
        assert tr.stats() == AuthStats()
        await tr.publish("t", b"x")
        assert tr.stats().sealed == 1
