"""Transport conformance: check that a transport keeps the contract podshare relies on.

Anyone carrying podshare over their own wire implements three methods
([`Transport`][podshare.transport.Transport]) and proves them with
[`check_transport()`][podshare.testing.check_transport], or with the pytest mixin
[`TransportConformance`][podshare.testing.TransportConformance], which runs each property as its own
test. podshare's memory, Redis and TCP transports pass the same checks.

Optional capabilities are checked when the transport offers them:
[`ClusterReadiness`][podshare.transport.ClusterReadiness] (``wait_ready()`` returns),
[`SubscriberCounting`][podshare.transport.SubscriberCounting] (``remote_subscribers(topic)`` is
``None`` or agrees with the subscriptions the check makes) and a ``stats()`` method
returning a podshare-style record (a dataclass snapshot of non-negative counters).

Example, with the memory transport (two transports on one network stand for two
processes):

```python
import pytest
from podshare.testing import TransportConformance, check_transport
from podshare.transport import MemoryNetwork, MemoryTransport

@pytest.mark.anyio
async def test_my_transport() -> None:
    network = MemoryNetwork()
    await check_transport(lambda: MemoryTransport(network=network))

@pytest.mark.anyio
class TestMyTransport(TransportConformance):
    def transport_factory(self):
        return MyTransport(url="...")   # a new, unopened instance per call
```
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio

from podshare.exceptions import ClosedError, MessageTooLarge, PodshareError
from podshare.transport.base import (
    ClusterReadiness,
    GapReporting,
    SubscriberCounting,
    Transport,
)

__all__ = ["TransportConformance", "TransportFactory", "check_transport"]

#: Makes one new transport, ready to enter with ``async with``; each call stands for a
#: separate process connected to the same medium (broker, mesh, network).
TransportFactory = Callable[[], AbstractAsyncContextManager[Transport]]

# Largest payload for the "exactly max_message_size is accepted" check; larger declared
# limits (Redis allows 512 MiB) are checked with this size instead.
_LARGEST_CHECKED = 4 * 1024 * 1024
_ORDER_COUNT = 200
# Subscriber counts may travel between processes (TCP peers announce them): re-read
# them at this interval until they agree or the receive timeout passes.
_COUNT_POLL_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class _Context:
    a: Transport
    b: Transport
    topic_base: str
    timeout: float

    def topic(self, name: str) -> str:
        return f"{self.topic_base}/{name}"


def _fail(prop: str, detail: str) -> AssertionError:
    return AssertionError(f"transport conformance: {prop}: {detail}")


async def _receive(messages: AsyncIterator[bytes], prop: str, seconds: float) -> bytes:
    with anyio.move_on_after(seconds):
        try:
            return await anext(messages)
        except StopAsyncIteration:
            raise _fail(prop, "the subscription ended while a message was expected") from None
    raise _fail(prop, f"no message arrived within {seconds} s")


def _describe(message: bytes) -> str:
    if len(message) <= 40:
        return repr(message)
    return f"<{len(message)} bytes starting {message[:16]!r}>"


def _declared_max(transport: Transport) -> int | None:
    size = getattr(transport, "max_message_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


# --- the properties ------------------------------------------------------------------


async def _check_protocol(ctx: _Context) -> None:
    prop = "protocol"
    for transport in (ctx.a, ctx.b):
        if not isinstance(transport, Transport):
            raise _fail(prop, f"{transport!r} lacks publish, subscribe or aclose")
    if isinstance(ctx.a, GapReporting):
        remove = ctx.a.add_gap_listener(lambda: None)
        if not callable(remove):
            raise _fail(prop, "add_gap_listener must return a function that unregisters")
        remove()


async def _check_delivery_other_instance(ctx: _Context) -> None:
    prop = "delivery to another instance"
    topic = ctx.topic("other#node-b")
    async with ctx.b.subscribe(topic) as messages:
        await ctx.a.publish(topic, b"to-b")
        got = await _receive(messages, prop, ctx.timeout)
        if got != b"to-b":
            raise _fail(prop, f"expected b'to-b', received {_describe(got)}")


async def _check_delivery_same_instance(ctx: _Context) -> None:
    prop = "delivery to the publisher's own subscription"
    topic = ctx.topic("self")
    async with ctx.a.subscribe(topic) as messages:
        await ctx.a.publish(topic, b"to-self")
        got = await _receive(messages, prop, ctx.timeout)
        if got != b"to-self":
            raise _fail(prop, f"expected b'to-self', received {_describe(got)}")


async def _check_fan_out(ctx: _Context) -> None:
    prop = "delivery to every subscription of a topic"
    topic = ctx.topic("fan-out")
    async with (
        ctx.a.subscribe(topic) as on_a,
        ctx.b.subscribe(topic) as on_b1,
        ctx.b.subscribe(topic) as on_b2,
    ):
        await ctx.a.publish(topic, b"all")
        for where, messages in (("publisher", on_a), ("first", on_b1), ("second", on_b2)):
            got = await _receive(messages, f"{prop} ({where} subscription)", ctx.timeout)
            if got != b"all":
                raise _fail(prop, f"{where} subscription received {_describe(got)}")


async def _check_topic_isolation(ctx: _Context) -> None:
    prop = "a subscription sees only its topic"
    mine, other = ctx.topic("isolation-mine"), ctx.topic("isolation-other")
    async with ctx.b.subscribe(mine) as messages, ctx.b.subscribe(other) as others:
        await ctx.a.publish(other, b"foreign")
        await ctx.a.publish(mine, b"own")
        await ctx.a.publish(mine, b"end")
        received = [await _receive(messages, prop, ctx.timeout)]
        while received[-1] != b"end":
            received.append(await _receive(messages, prop, ctx.timeout))
        if received != [b"own", b"end"]:
            raise _fail(prop, f"expected [b'own', b'end'], received {received!r}")
        got = await _receive(others, prop, ctx.timeout)
        if got != b"foreign":
            raise _fail(prop, f"the other topic received {_describe(got)}")


async def _check_unsubscribe(ctx: _Context) -> None:
    prop = "unsubscribe stops delivery and leaves other subscriptions alone"
    topic = ctx.topic("unsubscribe")
    async with ctx.b.subscribe(topic) as staying:
        async with ctx.b.subscribe(topic) as leaving:
            await ctx.a.publish(topic, b"both")
            for messages in (staying, leaving):
                got = await _receive(messages, prop, ctx.timeout)
                if got != b"both":
                    raise _fail(prop, f"expected b'both', received {_describe(got)}")
        await ctx.a.publish(topic, b"after")
        got = await _receive(staying, prop, ctx.timeout)
        if got != b"after":
            raise _fail(prop, f"the remaining subscription received {_describe(got)}")
    # Subscribing again works. A message published while unsubscribed may still be in
    # flight (the contract only promises what is published after entering), but at most
    # once and before the new one.
    await ctx.a.publish(topic, b"stale")
    async with ctx.b.subscribe(topic) as fresh:
        await ctx.a.publish(topic, b"fresh")
        got = await _receive(fresh, prop, ctx.timeout)
        if got == b"stale":
            got = await _receive(fresh, prop, ctx.timeout)
        if got != b"fresh":
            raise _fail(prop, f"a new subscription received {_describe(got)}, not b'fresh'")


async def _check_payloads(ctx: _Context) -> None:
    prop = "message bytes arrive intact"
    topic = ctx.topic("payloads")
    limit = _declared_max(ctx.a)
    payloads = [b"", bytes(range(256)), b"\x00", b"\xff" * 3]
    big = secrets.token_bytes(100 * 1024)
    if limit is None or limit >= len(big):
        payloads.append(big)
    if limit is not None and limit <= _LARGEST_CHECKED:
        payloads.append(secrets.token_bytes(limit))
    async with ctx.b.subscribe(topic) as messages:
        for payload in payloads:
            try:
                await ctx.a.publish(topic, payload)
            except MessageTooLarge:
                raise _fail(
                    prop,
                    f"a message of {len(payload)} bytes was refused, but max_message_size "
                    f"is {limit}",
                ) from None
            got = await _receive(messages, prop, ctx.timeout)
            if got != payload:
                raise _fail(prop, f"sent {_describe(payload)}, received {_describe(got)}")
            if type(got) is not bytes:
                raise _fail(prop, f"messages must be bytes, received {type(got).__name__}")


async def _check_too_large(ctx: _Context) -> None:
    prop = "MessageTooLarge above max_message_size"
    limit = _declared_max(ctx.a)
    if limit is None or limit > _LARGEST_CHECKED:
        return  # nothing declared, or too large to allocate casually
    try:
        await ctx.a.publish(ctx.topic("too-large"), bytes(limit + 1))
    except MessageTooLarge:
        return
    except PodshareError as exc:
        raise _fail(prop, f"raised {type(exc).__name__}, not MessageTooLarge") from exc
    raise _fail(prop, f"a message of {limit + 1} bytes was accepted (max_message_size={limit})")


async def _check_order(ctx: _Context) -> None:
    prop = "per-topic order from one publisher"
    topic = ctx.topic("order")
    expected = [b"%d" % i for i in range(_ORDER_COUNT)]
    results: dict[str, list[bytes]] = {}

    async def collect(name: str, messages: AsyncIterator[bytes]) -> None:
        got = results.setdefault(name, [])
        for _ in expected:
            got.append(await _receive(messages, f"{prop} ({name})", ctx.timeout))

    async with (
        ctx.b.subscribe(topic) as remote,
        ctx.a.subscribe(topic) as local,
        anyio.create_task_group() as tg,
    ):
        # Consumers run while publishing, so a small buffer cannot overflow.
        tg.start_soon(collect, "other instance", remote)
        tg.start_soon(collect, "same instance", local)
        for message in expected:
            await ctx.a.publish(topic, message)
    for name, got in results.items():
        if got != expected:
            first = next(i for i, (x, y) in enumerate(zip(got, expected, strict=True)) if x != y)
            raise _fail(
                prop, f"{name}: message {first} was {got[first]!r}, expected {expected[first]!r}"
            )


async def _check_no_subscribers(ctx: _Context) -> None:
    prop = "publish to a topic nobody subscribes"
    try:
        await ctx.a.publish(ctx.topic("nobody"), b"void")
    except Exception as exc:
        raise _fail(prop, f"raised {type(exc).__name__}: {exc}") from exc


async def _check_readiness(ctx: _Context) -> None:
    prop = "wait_ready returns while open"
    for where, transport in (("first", ctx.a), ("second", ctx.b)):
        if not isinstance(transport, ClusterReadiness):
            continue
        with anyio.move_on_after(ctx.timeout) as scope:
            await transport.wait_ready()
        if scope.cancelled_caught:
            raise _fail(prop, f"the {where} instance's wait_ready() did not return in time")


async def _count_becomes(
    ctx: _Context, transport: Transport, topic: str, expected: int, situation: str
) -> None:
    """Poll ``remote_subscribers(topic)`` until it is ``None`` or ``expected``."""
    prop = "remote_subscribers agrees with the subscriptions"
    assert isinstance(transport, SubscriberCounting)
    got: object = None
    with anyio.move_on_after(ctx.timeout):
        while True:
            got = await transport.remote_subscribers(topic)
            if got is None:
                return  # the transport cannot tell right now: nothing to compare
            if type(got) is not int or got < 0:
                raise _fail(prop, f"{situation}: returned {got!r}, not None or an int >= 0")
            if got == expected:
                return
            await anyio.sleep(_COUNT_POLL_SECONDS)
    raise _fail(prop, f"{situation}: expected {expected}, still {got!r} after {ctx.timeout} s")


async def _check_subscriber_counting(ctx: _Context) -> None:
    a, b = ctx.a, ctx.b
    counts_a, counts_b = isinstance(a, SubscriberCounting), isinstance(b, SubscriberCounting)
    if not (counts_a or counts_b):
        return
    topic = ctx.topic("subscribers")

    async def expect(on_a: int, on_b: int, situation: str) -> None:
        if counts_b:
            await _count_becomes(ctx, b, topic, on_b, f"{situation}, seen from the second")
        if counts_a:
            await _count_becomes(ctx, a, topic, on_a, f"{situation}, seen from the first")

    await expect(0, 0, "nobody subscribed")
    async with a.subscribe(topic):
        await expect(0, 1, "the first instance subscribed")
        # Two subscriptions of one instance are one other process.
        async with b.subscribe(topic), b.subscribe(topic):
            await expect(1, 1, "both subscribed, the second instance twice")
        # Only the first instance's own subscription is left: it must not count it.
        await expect(0, 1, "the second instance left")
    await expect(0, 0, "everyone left")


def _stats_of(transport: Transport) -> tuple[str, Any] | None:
    for name in ("stats", "statistics"):
        method = getattr(transport, name, None)
        if callable(method):
            return name, method()
    return None


async def _check_stats(ctx: _Context) -> None:
    prop = "stats() is a snapshot of counters"
    found = _stats_of(ctx.a)
    if found is None:
        return
    name, before = found
    if not dataclasses.is_dataclass(before) or isinstance(before, type):
        return  # not a podshare-style record: the transport's own business
    if name != "stats":
        raise _fail(prop, "the statistics method is named statistics(); name it stats()")
    fields = {f.name for f in dataclasses.fields(before)}
    if "gaps" in fields and "gaps_reported" not in fields:
        raise _fail(prop, "the gap counter is named gaps; name it gaps_reported")
    values = dataclasses.asdict(before)
    for field, value in values.items():
        if type(value) is int and value < 0:
            raise _fail(prop, f"counter {field} is {value}, below zero")
    topic = ctx.topic("stats")
    async with ctx.b.subscribe(topic) as messages:
        await ctx.a.publish(topic, b"counted")
        await _receive(messages, prop, ctx.timeout)
    if dataclasses.asdict(before) != values:
        raise _fail(prop, "a stats() result changed later: return a snapshot, not the record")


async def _check_close(ctx: _Context) -> None:
    prop = "aclose"
    await ctx.a.aclose()
    try:
        await ctx.a.aclose()
    except Exception as exc:
        raise _fail(prop, f"a second aclose raised {type(exc).__name__}: {exc}") from exc
    try:
        await ctx.a.publish(ctx.topic("closed"), b"late")
    except ClosedError:
        pass
    except Exception as exc:
        raise _fail(
            prop, f"publish after aclose raised {type(exc).__name__}, not ClosedError"
        ) from exc
    else:
        raise _fail(prop, "publish after aclose did not raise ClosedError")
    try:
        async with ctx.a.subscribe(ctx.topic("closed")):
            pass
    except ClosedError:
        pass
    except Exception as exc:
        raise _fail(
            prop, f"subscribe after aclose raised {type(exc).__name__}, not ClosedError"
        ) from exc
    else:
        raise _fail(prop, "subscribe after aclose did not raise ClosedError")


_CHECKS: tuple[tuple[str, Callable[[_Context], Awaitable[None]]], ...] = (
    ("protocol", _check_protocol),
    ("delivery_other_instance", _check_delivery_other_instance),
    ("delivery_same_instance", _check_delivery_same_instance),
    ("fan_out", _check_fan_out),
    ("topic_isolation", _check_topic_isolation),
    ("unsubscribe", _check_unsubscribe),
    ("payloads", _check_payloads),
    ("too_large", _check_too_large),
    ("order", _check_order),
    ("no_subscribers", _check_no_subscribers),
    ("readiness", _check_readiness),
    ("subscriber_counting", _check_subscriber_counting),
    ("stats", _check_stats),
    ("close", _check_close),  # last: it closes the first instance
)


async def _run(
    factory: TransportFactory,
    checks: tuple[tuple[str, Callable[[_Context], Awaitable[None]]], ...],
    topic_prefix: str,
    receive_timeout: float,
) -> None:
    run = secrets.token_hex(4)  # separate runs sharing a broker do not see each other
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(factory())
        b = await stack.enter_async_context(factory())
        for name, check in checks:
            await check(_Context(a, b, f"{topic_prefix}/{run}/{name}", receive_timeout))
    # Leaving the context after aclose (the "close" check) must not raise either.


async def check_transport(
    factory: TransportFactory,
    *,
    topic_prefix: str = "conformance",
    receive_timeout: float = 10.0,
) -> None:
    """Check that the transports ``factory`` makes keep podshare's transport contract.

    ``factory()`` must return a new, unopened transport (an async context manager that
    yields it); it is called twice, and the two instances stand for two processes on the
    same medium (the same broker, mesh or [`MemoryNetwork`][podshare.transport.MemoryNetwork]).
    Each instance is entered with ``async with`` and left at the end.

    Properties checked, in order, on topics under ``{topic_prefix}/{random}/``:

    1. the transport implements ``publish``/``subscribe``/``aclose`` (and, if it offers
       ``add_gap_listener``, returns a remover);
    2. a message published on one instance reaches a subscription on the other;
    3. ... and a subscription on the publishing instance itself;
    4. every subscription of the topic gets it (two on one instance included);
    5. a subscription sees only its own topic;
    6. leaving a subscription stops its delivery without disturbing another
       subscription of the same topic, and subscribing the topic again works;
    7. bytes arrive intact and as ``bytes``: empty, all 256 byte values, 100 KiB, and
       exactly ``max_message_size`` when declared (up to 4 MiB);
    8. a message of ``max_message_size + 1`` bytes raises
       [`MessageTooLarge`][podshare.MessageTooLarge] (when declared, up to 4 MiB);
    9. 200 messages from one publisher on one topic arrive in order, on both instances;
    10. publishing to a topic without subscribers succeeds;
    11. with [`ClusterReadiness`][podshare.transport.ClusterReadiness]: ``wait_ready()`` returns on
        both instances while they are open;
    12. with [`SubscriberCounting`][podshare.transport.SubscriberCounting]:
        ``remote_subscribers(topic)`` is ``None`` or an ``int >= 0`` that comes to agree with the
        subscriptions the check makes: 0 for a new topic; 1 while the other instance subscribes (two
        subscriptions of one instance are one process); an instance's own
        subscriptions never count; 0 again once everyone left. Counts are re-read
        until they agree, within ``receive_timeout``, since they may travel between
        processes;
    13. a ``stats()`` method returning a dataclass record (podshare's convention) gives a
        snapshot that later traffic does not change, of non-negative counters, with the
        shared names (``gaps_reported``, not ``gaps``; ``stats()``, not ``statistics()``);
    14. ``aclose`` is idempotent, and ``publish`` and entering ``subscribe`` afterwards
        raise [`ClosedError`][podshare.ClosedError].

    Every wait for a message is bounded by ``receive_timeout`` seconds. Call it from an
    async test (any anyio backend your transport supports).

    Raises:
        AssertionError: ``"transport conformance: <property>: <what went wrong>"`` for
            the first property that fails.

    Example:

    ```python
    @pytest.mark.anyio
    async def test_conformance(redis_url: str) -> None:
        await check_transport(lambda: RedisTransport(redis_url))
    ```
    """
    await _run(factory, _CHECKS, topic_prefix, receive_timeout)


class TransportConformance:
    """The conformance properties as a pytest mixin: one test per property.

    Subclass it, mark the class for anyio, and define
    [`transport_factory()`][podshare.testing.TransportConformance.transport_factory] (a new,
    unopened transport per call; two calls stand for two processes):

    ```python
    @pytest.mark.anyio
    class TestMyTransport(TransportConformance):
        def transport_factory(self) -> MyTransport:
            return MyTransport(url="...")
    ```

    The tests run under every backend your ``anyio_backend`` fixture selects. Set
    ``conformance_timeout`` to change the bound on each wait (seconds).
    """

    conformance_timeout: float = 10.0
    conformance_topic_prefix: str = "conformance"

    def transport_factory(self) -> AbstractAsyncContextManager[Transport]:
        """Return a new, unopened transport; override in the subclass."""
        raise NotImplementedError("define transport_factory() in the TransportConformance subclass")

    async def _conformance(self, name: str) -> None:
        checks = tuple(c for c in _CHECKS if c[0] == name)
        await _run(
            self.transport_factory, checks, self.conformance_topic_prefix, self.conformance_timeout
        )

    async def test_conformance_protocol(self) -> None:
        """The transport implements the protocol."""
        await self._conformance("protocol")

    async def test_conformance_delivery_other_instance(self) -> None:
        """A message reaches a subscription on another instance."""
        await self._conformance("delivery_other_instance")

    async def test_conformance_delivery_same_instance(self) -> None:
        """A message reaches the publisher's own subscription."""
        await self._conformance("delivery_same_instance")

    async def test_conformance_fan_out(self) -> None:
        """Every subscription of the topic gets the message."""
        await self._conformance("fan_out")

    async def test_conformance_topic_isolation(self) -> None:
        """A subscription sees only its topic."""
        await self._conformance("topic_isolation")

    async def test_conformance_unsubscribe(self) -> None:
        """Leaving a subscription stops its delivery only."""
        await self._conformance("unsubscribe")

    async def test_conformance_payloads(self) -> None:
        """Bytes arrive intact."""
        await self._conformance("payloads")

    async def test_conformance_too_large(self) -> None:
        """Messages above max_message_size raise MessageTooLarge."""
        await self._conformance("too_large")

    async def test_conformance_order(self) -> None:
        """Per-topic order from one publisher is preserved."""
        await self._conformance("order")

    async def test_conformance_no_subscribers(self) -> None:
        """Publishing to a topic without subscribers succeeds."""
        await self._conformance("no_subscribers")

    async def test_conformance_readiness(self) -> None:
        """wait_ready() returns while open (when the transport offers it)."""
        await self._conformance("readiness")

    async def test_conformance_subscriber_counting(self) -> None:
        """remote_subscribers() agrees with the subscriptions (when offered)."""
        await self._conformance("subscriber_counting")

    async def test_conformance_stats(self) -> None:
        """stats() returns a snapshot of non-negative counters (when offered)."""
        await self._conformance("stats")

    async def test_conformance_close(self) -> None:
        """aclose is idempotent; publish and subscribe afterwards raise ClosedError."""
        await self._conformance("close")
