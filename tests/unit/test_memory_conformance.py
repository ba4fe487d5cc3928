"""The memory transport passes the transport conformance kit, and the kit catches faults."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import pytest

from podshare.exceptions import ClosedError
from podshare.testing import TransportConformance, check_transport
from podshare.transport import (
    ClusterReadiness,
    MemoryNetwork,
    MemoryTransport,
    SubscriberCounting,
    Transport,
)

pytestmark = pytest.mark.anyio


async def test_memory_transport_passes_check_transport() -> None:
    network = MemoryNetwork()
    await check_transport(lambda: MemoryTransport(network=network))


async def test_memory_transport_with_small_limits_passes() -> None:
    network = MemoryNetwork()
    # A small limit exercises the "exactly max_message_size" and "one byte more" checks
    # without the 100 KiB payload; a small buffer, that order needs no large buffer.
    await check_transport(
        lambda: MemoryTransport(network=network, max_message_size=4096, buffer_size=8)
    )


class TestMemoryConformance(TransportConformance):
    """The mixin form, as a user would write it for their own transport."""

    def setup_method(self) -> None:
        self.network = MemoryNetwork()

    def transport_factory(self) -> MemoryTransport:
        return MemoryTransport(network=self.network)


class _Broken:
    """Wraps a MemoryTransport and breaks one rule of the contract."""

    def __init__(self, inner: MemoryTransport, flaw: str) -> None:
        self.inner = inner
        self.flaw = flaw
        self.max_message_size = inner.max_message_size

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def publish(self, topic: str, message: bytes) -> None:
        if self.flaw == "corrupt" and len(message) >= 256:
            message = message[:-1] + bytes([message[-1] ^ 1])
        if self.flaw == "no_size_check":
            self.inner.max_message_size = 1 << 30
        if self.flaw == "closed_silent" and self.inner.closed:
            return None
        return await self.inner.publish(topic, message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if self.flaw == "subscribe_after_close" and self.inner.closed:
            return self._nothing()
        if self.flaw == "no_self_delivery" and self.inner.name == "a":
            # The publisher ("a") never hears its own messages.
            return self.inner.subscribe(topic + "-elsewhere")
        if self.flaw == "all_topics":
            return self._all_topics(topic)
        if self.flaw == "reverse":
            return self._reversed(topic)
        return self.inner.subscribe(topic)

    @asynccontextmanager
    async def _nothing(self) -> AsyncIterator[AsyncIterator[bytes]]:
        yield _Empty()

    @asynccontextmanager
    async def _all_topics(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        # Also subscribes the sibling topic of the isolation check and leaks its messages.
        async with (
            self.inner.subscribe(topic) as mine,
            self.inner.subscribe(topic.replace("mine", "other")) as other,
        ):
            yield _Chain(other, mine) if "isolation-mine" in topic else mine

    @asynccontextmanager
    async def _reversed(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.inner.subscribe(topic) as messages:
            yield _PairsSwapped(messages) if "order" in topic else messages

    async def aclose(self) -> None:
        if self.flaw == "aclose_twice_raises" and self.inner.closed:
            raise ClosedError("already closed")
        await self.inner.aclose()

    # The optional capabilities, passed through unless a flaw breaks them.

    async def wait_ready(self) -> None:
        if self.flaw == "never_ready":
            await anyio.sleep_forever()
        await self.inner.wait_ready()

    async def remote_subscribers(self, topic: str) -> int | None:
        count = await self.inner.remote_subscribers(topic)
        if self.flaw == "negative_count":
            return -1
        if self.flaw == "counts_own" and count is not None:
            own = any(sub.topic == topic for sub in self.inner._subscriptions.values())
            return count + own
        return count

    @property
    def stats(self) -> Callable[[], Any]:
        if self.flaw == "statistics_name":
            raise AttributeError("stats")  # only the old name below
        if self.flaw == "live_stats":
            return lambda: self.inner._stats  # the record itself, not a snapshot
        if self.flaw == "gaps_field":
            return lambda: _OldStats(gaps=0)
        return self.inner.stats

    def statistics(self) -> Any:
        return self.inner.stats()


@dataclass(frozen=True)
class _OldStats:
    gaps: int


class _Empty:
    """A subscription that never yields: what a transport ignoring aclose might give."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class _Chain:
    """One message from ``first``, then everything from ``rest``."""

    def __init__(self, first: AsyncIterator[bytes], rest: AsyncIterator[bytes]) -> None:
        self.first: AsyncIterator[bytes] | None = first
        self.rest = rest

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self.first is not None:
            first, self.first = self.first, None
            return await anext(first)
        return await anext(self.rest)


class _PairsSwapped:
    """Yields messages 1, 0, 3, 2, ...: breaks per-topic order."""

    def __init__(self, messages: AsyncIterator[bytes]) -> None:
        self.messages = messages
        self.pending: bytes | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            return pending
        self.pending = await anext(self.messages)
        return await anext(self.messages)


def _factory(flaw: str) -> Callable[[], AbstractAsyncContextManager[Transport]]:
    network = MemoryNetwork()
    names = iter(["a", "b"])

    def make() -> _Broken:
        return _Broken(MemoryTransport(network=network, name=next(names)), flaw)

    return make


@pytest.mark.parametrize(
    ("flaw", "property_name"),
    [
        ("no_self_delivery", "publisher's own subscription"),
        ("corrupt", "bytes arrive intact"),
        ("no_size_check", "MessageTooLarge"),
        ("closed_silent", "aclose"),
        ("aclose_twice_raises", "aclose"),
        ("subscribe_after_close", "subscribe after aclose"),
        ("all_topics", "only its topic"),
        ("reverse", "order"),
        ("never_ready", "wait_ready returns"),
        ("negative_count", "not None or an int >= 0"),
        ("counts_own", "seen from the first: expected 0, still 1"),
        ("live_stats", "return a snapshot"),
        ("gaps_field", "name it gaps_reported"),
        ("statistics_name", "name it stats()"),
    ],
)
async def test_check_transport_detects_a_broken_rule(flaw: str, property_name: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(property_name)):
        await check_transport(_factory(flaw), receive_timeout=0.5)


async def test_the_wrapper_offers_the_optional_capabilities_when_unbroken() -> None:
    # So the flaws above are the only difference from a transport that passes.
    make = _factory("none")
    async with make() as a, make():
        assert isinstance(a, ClusterReadiness)
        assert isinstance(a, SubscriberCounting)
    await check_transport(_factory("none"), receive_timeout=5)


async def test_a_transport_without_the_optional_capabilities_passes() -> None:
    class Plain:
        """Only the three methods of the protocol (and the context manager)."""

        def __init__(self, inner: MemoryTransport) -> None:
            self.inner = inner
            self.max_message_size = inner.max_message_size

        async def __aenter__(self) -> Self:
            await self.inner.__aenter__()
            return self

        async def __aexit__(self, *exc: object) -> None:
            await self.inner.__aexit__(None, None, None)

        async def publish(self, topic: str, message: bytes) -> None:
            await self.inner.publish(topic, message)

        def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
            return self.inner.subscribe(topic)

        async def aclose(self) -> None:
            await self.inner.aclose()

    network = MemoryNetwork()
    plain = Plain(MemoryTransport(network=network))
    assert not isinstance(plain, ClusterReadiness | SubscriberCounting)
    await check_transport(lambda: Plain(MemoryTransport(network=network)))
