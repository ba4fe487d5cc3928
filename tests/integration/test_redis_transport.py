"""RedisTransport against a real redis-server: delivery, limits, failures, reconnection."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    MessageTooLarge,
    TransportError,
)
from podshare.testing import check_transport
from podshare.transport import RedisRemote, RedisStats, RedisTransport
from podshare.transport.base import (
    ClusterReadiness,
    EchoSkipping,
    GapReporting,
    SubscriberCounting,
    Transport,
)
from tests._support import RedisServer, check_echo_skipping

pytestmark = pytest.mark.integration

TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so the Redis transport runs under asyncio alone.

    tests/unit/test_redis_options.py proves the clear error under trio.
    """
    return "asyncio"


def _prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


async def _eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state of the transport's own tasks), bounded by TIMEOUT."""
    with anyio.fail_after(TIMEOUT):
        # Polls counters the transport's own tasks update; there is no event to wait on.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def _next(messages: AsyncIterator[bytes]) -> bytes:
    with anyio.fail_after(TIMEOUT):
        return await anext(messages)


@pytest.mark.anyio
async def test_is_a_transport_with_gaps(redis_server: RedisServer) -> None:
    async with RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr:
        assert isinstance(tr, Transport)
        assert isinstance(tr, GapReporting)


@pytest.mark.anyio
async def test_conformance(redis_server: RedisServer) -> None:
    prefix = _prefix()
    await check_transport(lambda: RedisTransport(redis_server.url, channel_prefix=prefix))


@pytest.mark.anyio
async def test_conformance_with_small_max_message_size(redis_server: RedisServer) -> None:
    prefix = _prefix()
    await check_transport(
        lambda: RedisTransport(redis_server.url, channel_prefix=prefix, max_message_size=4096)
    )


@pytest.mark.anyio
async def test_publish_reaches_other_transport_and_self(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix) as a,
        RedisTransport(redis_server.url, channel_prefix=prefix) as b,
        a.subscribe("ps/t") as on_a,
        b.subscribe("ps/t") as on_b,
    ):
        await a.publish("ps/t", b"hello")
        assert await _next(on_b) == b"hello"
        assert await _next(on_a) == b"hello"


@pytest.mark.anyio
async def test_bytes_arrive_intact(redis_server: RedisServer) -> None:
    payloads = [b"", bytes(range(256)), b"\r\n*3\r\n$7\r\nmessage", secrets.token_bytes(200_000)]
    async with (
        RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr,
        tr.subscribe("bytes") as messages,
    ):
        for payload in payloads:
            await tr.publish("bytes", payload)
        received = [await _next(messages) for _ in payloads]
    assert received == payloads


@pytest.mark.anyio
async def test_channel_prefix_is_the_redis_channel(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix) as tr,
        tr.subscribe("ps/name#node") as messages,
    ):
        assert tr.channel_for("ps/name#node") == f"{prefix}:ps/name#node"
        assert await raw.publish(f"{prefix}:ps/name#node", b"raw") == 1
        assert await _next(messages) == b"raw"
    await raw.aclose()


@pytest.mark.anyio
async def test_message_too_large_never_reaches_redis(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, max_message_size=1024) as tr,
        raw.pubsub() as pubsub,
    ):
        await pubsub.subscribe(tr.channel_for("big"))
        with pytest.raises(MessageTooLarge):
            await tr.publish("big", bytes(1025))
        await tr.publish("big", b"x" * 1024)
        seen = []
        with anyio.fail_after(TIMEOUT):
            async for message in pubsub.listen():
                if message["type"] == "message":
                    seen.append(message["data"])
                    break
        # The first message Redis delivered is the one within the limit.
        assert seen == [b"x" * 1024]
        assert tr.stats().connected
    await raw.aclose()


@pytest.mark.anyio
async def test_unsubscribe_stops_delivery_at_redis(redis_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    async with RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr:
        channel = tr.channel_for("gone")
        async with tr.subscribe("gone") as messages:
            assert dict(await raw.pubsub_numsub(channel))[channel.encode()] == 1
            await tr.publish("gone", b"1")
            assert await _next(messages) == b"1"
        assert tr.stats().channels == 0
        # Commands on the pub/sub connection are ordered: once this later SUBSCRIBE is
        # confirmed, Redis has processed the UNSUBSCRIBE before it.
        async with tr.subscribe("other"):
            assert dict(await raw.pubsub_numsub(channel))[channel.encode()] == 0
            assert await raw.publish(channel, b"2") == 0
    await raw.aclose()


@pytest.mark.anyio
async def test_one_connection_carries_every_subscription(redis_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    name = f"podshare-{secrets.token_hex(4)}"
    async with (
        RedisTransport(f"{redis_server.url}?client_name={name}", channel_prefix=_prefix()) as tr,
        tr.subscribe("a"),
        tr.subscribe("b"),
        tr.subscribe("c"),
        tr.subscribe("a"),
    ):
        clients = [c for c in await raw.client_list() if c.get("name") == name]
        pubsub = [c for c in clients if int(c["sub"]) > 0]
        assert len(pubsub) == 1
        assert int(pubsub[0]["sub"]) == 3
    await raw.aclose()


@pytest.mark.anyio
async def test_slow_subscriber_drops_and_reports_a_gap(redis_server: RedisServer) -> None:
    gaps = 0
    async with RedisTransport(
        redis_server.url, channel_prefix=_prefix(), subscription_buffer=2
    ) as tr:

        def on_gap() -> None:
            nonlocal gaps
            gaps += 1

        tr.add_gap_listener(on_gap)
        async with tr.subscribe("t") as slow, tr.subscribe("t") as fast:
            for i in range(5):
                await tr.publish("t", b"%d" % i)
                # Once the fast subscription has it, the reader dispatched it to both.
                assert await _next(fast) == b"%d" % i
            assert [await _next(slow), await _next(slow)] == [b"0", b"1"]
        stats = tr.stats()
    assert stats.messages_dropped == 3
    assert gaps == 1


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.anyio
async def test_existing_client_is_used_and_left_open(
    redis_server: RedisServer, protocol: int
) -> None:
    # A RESP3 client works too: the pub/sub connection always speaks RESP2.
    client = aioredis.Redis.from_url(redis_server.url, protocol=protocol)
    async with (
        RedisTransport(client=client, channel_prefix=_prefix()) as tr,
        tr.subscribe("t") as messages,
    ):
        await tr.publish("t", b"via client")
        assert await _next(messages) == b"via client"
    assert await client.ping()
    await client.aclose()


@pytest.mark.anyio
async def test_acl_user_from_arguments_and_url(redis_server: RedisServer) -> None:
    raw = aioredis.Redis.from_url(redis_server.url)
    user = f"user-{secrets.token_hex(4)}"
    await raw.acl_setuser(
        user, enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"], commands=["+@all"]
    )
    try:
        host = f"127.0.0.1:{redis_server.port}"
        for tr in (
            RedisTransport(redis_server.url, username=user, password="s3cret"),
            RedisTransport(f"redis://{user}:s3cret@{host}/0"),
        ):
            async with tr, tr.subscribe("acl") as messages:
                await tr.publish("acl", b"ok")
                assert await _next(messages) == b"ok"
        with pytest.raises(TransportError):
            async with RedisTransport(redis_server.url, username=user, password="wrong"):
                pass
    finally:
        await raw.acl_deluser(user)
        await raw.aclose()


@pytest.mark.anyio
async def test_unreachable_redis_fails_on_enter() -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    with pytest.raises(
        TransportError, match=r"cannot connect to Redis at 127\.0\.0\.1:1: Connection refused"
    ):
        async with RedisTransport("redis://127.0.0.1:1/0", timeout=2):
            pass


@pytest.mark.anyio
async def test_an_unknown_host_is_named_with_the_lookup_failure() -> None:
    # A failed name lookup has a negative errno: its own text, not "Unknown error".
    with pytest.raises(
        TransportError, match=r"cannot connect to Redis at no-such-host\.invalid:6379: (?!Unknown)"
    ):
        async with RedisTransport("redis://no-such-host.invalid:6379/0", timeout=2):
            pass


@pytest.mark.anyio
async def test_closed_and_unopened_transport_raise_closed_error(
    redis_server: RedisServer,
) -> None:
    tr = RedisTransport(redis_server.url, channel_prefix=_prefix())
    with pytest.raises(ClosedError):
        await tr.publish("t", b"early")
    async with tr:
        pass
    with pytest.raises(ClosedError):
        await tr.publish("t", b"late")
    with pytest.raises(ClosedError):
        async with tr.subscribe("t"):
            pass
    await tr.aclose()  # idempotent


@pytest.mark.anyio
async def test_aclose_ends_subscription_iterators(redis_server: RedisServer) -> None:
    async with (
        RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr,
        tr.subscribe("t") as messages,
    ):
        await tr.aclose()
        with anyio.fail_after(TIMEOUT):
            assert [m async for m in messages] == []


@pytest.mark.anyio
async def test_publish_while_server_down_raises_transport_error(
    restartable_redis: RedisServer,
) -> None:
    async with RedisTransport(restartable_redis.url, channel_prefix=_prefix()) as tr:
        await tr.publish("t", b"up")
        restartable_redis.kill()
        with pytest.raises(TransportError) as info:
            await tr.publish("t", b"down")
        # Never a raw redis-py exception, not even as the visible type.
        assert type(info.value) is TransportError
        with pytest.raises(TransportError):
            await tr.publish("t", b"still down")


@pytest.mark.anyio
async def test_reconnects_resubscribes_and_reports_a_gap(
    restartable_redis: RedisServer,
) -> None:
    prefix = _prefix()
    async with (
        RedisTransport(
            restartable_redis.url, channel_prefix=prefix, reconnect_backoff=(0.01, 0.2)
        ) as tr,
        RedisTransport(restartable_redis.url, channel_prefix=prefix) as other,
        tr.subscribe("t") as messages,
        tr.subscribe("u") as more,
    ):
        for round_ in range(2):
            gap, other_gap = anyio.Event(), anyio.Event()
            removers = [tr.add_gap_listener(gap.set), other.add_gap_listener(other_gap.set)]
            restartable_redis.restart()
            with anyio.fail_after(TIMEOUT):
                await gap.wait()
                await other_gap.wait()
            for remove in removers:
                remove()
            stats = tr.stats()
            assert stats.connected
            assert stats.reconnects == round_ + 1
            assert stats.channels == 2
            # The same subscriptions receive again, from another (reconnected) transport.
            await other.publish("t", b"after %d" % round_)
            assert await _next(messages) == b"after %d" % round_
            await tr.publish("u", b"self %d" % round_)
            assert await _next(more) == b"self %d" % round_


@pytest.mark.anyio
async def test_subscribe_during_an_outage_is_subscribed_on_reconnect(
    restartable_redis: RedisServer,
) -> None:
    async with RedisTransport(
        restartable_redis.url, channel_prefix=_prefix(), reconnect_backoff=(0.01, 0.2)
    ) as tr:
        gap = anyio.Event()
        tr.add_gap_listener(gap.set)
        restartable_redis.kill()
        with pytest.raises(TransportError):
            await tr.publish("t", b"down")  # the PUBLISH fails; the reader notices too
        async with tr.subscribe("late") as messages:
            restartable_redis.start()
            with anyio.fail_after(TIMEOUT):
                await gap.wait()
            await tr.publish("late", b"arrived")
            assert await _next(messages) == b"arrived"


@pytest.mark.anyio
async def test_tls_with_ssl_context(tls_redis: tuple[RedisServer, str, Any]) -> None:
    _, url, ca = tls_redis
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with (
        RedisTransport(url, ssl_context=context, channel_prefix=_prefix()) as tr,
        tr.subscribe("tls") as messages,
    ):
        await tr.publish("tls", b"secret")
        assert await _next(messages) == b"secret"
    # Without the CA, the server's certificate is refused: a clear TransportError.
    with pytest.raises(TransportError):
        async with RedisTransport(url, ssl_context=ssl.create_default_context()):
            pass


class _OnLog(logging.Handler):
    """Sets an event when the transport logs a message containing ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.mark.anyio
async def test_unresponsive_server_is_detected_by_ping(restartable_redis: RedisServer) -> None:
    process = restartable_redis.process
    async with RedisTransport(
        restartable_redis.url,
        channel_prefix=_prefix(),
        health_check_interval=0.1,
        timeout=0.5,
        reconnect_backoff=(0.01, 0.1),
    ) as tr:
        gap = anyio.Event()
        tr.add_gap_listener(gap.set)
        async with tr.subscribe("t") as messages:
            # A frozen server keeps its sockets open: only the PING notices.
            lost = _OnLog("no answer to PING")
            logger = logging.getLogger("podshare.transport.redis")
            logger.addHandler(lost)
            process.send_signal(signal.SIGSTOP)
            try:
                with anyio.fail_after(TIMEOUT):
                    await lost.seen.wait()
            finally:
                process.send_signal(signal.SIGCONT)
                logger.removeHandler(lost)
            with anyio.fail_after(TIMEOUT):
                await gap.wait()
            await tr.publish("t", b"thawed")
            assert await _next(messages) == b"thawed"


# -- stats, deprecated names ---------------------------------------------------------------


@pytest.mark.anyio
async def test_stats_count_traffic_and_statistics_is_a_deprecated_alias(
    redis_server: RedisServer,
) -> None:
    async with (
        RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr,
        tr.subscribe("t") as messages,
    ):
        await tr.publish("t", b"12345")
        assert await _next(messages) == b"12345"
        stats = tr.stats()
        assert isinstance(stats, RedisStats)
        assert (stats.messages_sent, stats.bytes_sent) == (1, 5)
        assert (stats.messages_received, stats.bytes_received) == (1, 5)
        assert (stats.connected, stats.channels, stats.reconnects) == (True, 1, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.messages_sent = 0
        with pytest.warns(DeprecationWarning, match=r"stats\(\)"):
            assert tr.statistics() == tr.stats()
    assert tr.stats().connected is False
    assert tr.stats().channels == 0


def test_redis_statistics_is_a_deprecated_alias_of_redis_stats() -> None:
    import podshare.transport
    import podshare.transport.redis

    with pytest.warns(DeprecationWarning, match="RedisStats"):
        assert podshare.transport.redis.RedisStatistics is RedisStats
    with pytest.warns(DeprecationWarning, match="RedisStats"):
        assert podshare.transport.RedisStatistics is RedisStats


def test_close_timeout_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="close_timeout"):
        RedisTransport(close_timeout=-1)


@pytest.mark.anyio
async def test_close_respects_the_closers_deadline(redis_server: RedisServer) -> None:
    release = anyio.Event()

    async def stuck(_remote: RedisRemote, _inbound: bool) -> None:
        await release.wait()  # a callback that never finishes

    tr = RedisTransport(
        redis_server.url, channel_prefix=_prefix(), on_disconnect=stuck, close_timeout=30
    )
    async with tr:
        start = anyio.current_time()
        with anyio.move_on_after(0.3):
            await tr.aclose()
        # Bounded by the caller's 0.3 s, not by close_timeout's 30 s.
        assert anyio.current_time() - start < 5
    assert tr.state == "closed"


def test_hiredis_parses_replies() -> None:
    # The redis extra brings hiredis; redis-py then parses every reply with it.
    import redis.utils
    from redis.asyncio.connection import DefaultParser

    if not redis.utils.HIREDIS_AVAILABLE:
        reason = "hiredis is not installed (pip install 'podshare[redis]' brings it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert "Hiredis" in DefaultParser.__name__


# -- readiness and subscriber counting -----------------------------------------------------


@pytest.mark.anyio
async def test_wait_ready_returns_once_subscriptions_are_confirmed(
    restartable_redis: RedisServer,
) -> None:
    async with RedisTransport(
        restartable_redis.url, channel_prefix=_prefix(), reconnect_backoff=(0.01, 0.1)
    ) as tr:
        with anyio.fail_after(TIMEOUT):
            await tr.wait_ready()  # connected, nothing subscribed
        async with tr.subscribe("a"), tr.subscribe("b"):
            with anyio.fail_after(TIMEOUT):
                await tr.wait_ready()
            restartable_redis.kill()
            with pytest.raises(TransportError):
                await tr.publish("a", b"down")  # the reader notices the loss too
            ready = anyio.Event()

            async def waiter() -> None:
                await tr.wait_ready()
                ready.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                with anyio.fail_after(TIMEOUT):
                    while tr.stats().connected:  # the loss is noticed at once
                        await anyio.lowlevel.checkpoint()
                assert not ready.is_set()
                restartable_redis.start()
                with anyio.fail_after(TIMEOUT):
                    await ready.wait()
            # Ready means resubscribed: a message published now is delivered.
            raw = aioredis.Redis.from_url(restartable_redis.url)
            assert await raw.publish(tr.channel_for("a"), b"x") == 1
            assert await raw.publish(tr.channel_for("b"), b"y") == 1
            await raw.aclose()
    with pytest.raises(ClosedError):
        await tr.wait_ready()


@pytest.mark.anyio
async def test_wait_ready_raises_when_the_transport_closes(
    restartable_redis: RedisServer,
) -> None:
    async with RedisTransport(restartable_redis.url, channel_prefix=_prefix()) as tr:
        restartable_redis.kill()
        with pytest.raises(TransportError):
            await tr.publish("a", b"down")
        with anyio.fail_after(TIMEOUT):
            while tr.stats().connected:
                await anyio.lowlevel.checkpoint()
        async with anyio.create_task_group() as tg:
            failure: list[BaseException] = []

            async def waiter() -> None:
                try:
                    await tr.wait_ready()
                except ClosedError as exc:
                    failure.append(exc)

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await tr.aclose()
        assert len(failure) == 1


@pytest.mark.anyio
async def test_remote_subscribers_counts_other_connections(
    restartable_redis: RedisServer,
) -> None:
    prefix = _prefix()
    url = restartable_redis.url
    raw = aioredis.Redis.from_url(url)
    async with (
        RedisTransport(url, channel_prefix=prefix, reconnect_backoff=(0.01, 0.1)) as tr,
        RedisTransport(url, channel_prefix=prefix) as other,
    ):
        assert await tr.remote_subscribers("t") == 0
        async with tr.subscribe("t"), tr.subscribe("t"):
            # Two local subscriptions share one Redis subscription: own is 1.
            assert await tr.remote_subscribers("t") == 0
            async with other.subscribe("t"):
                assert await tr.remote_subscribers("t") == 1
                assert await other.remote_subscribers("t") == 1
                async with raw.pubsub() as pubsub:
                    await pubsub.subscribe(tr.channel_for("t"))
                    assert await tr.remote_subscribers("t") == 2
            # Leaving the subscription of the other transport is seen at once (its
            # UNSUBSCRIBE is ordered before the PING its count sends first).
            assert await other.remote_subscribers("t") == 1
            assert await tr.remote_subscribers("t") == 0
        assert await other.remote_subscribers("t") == 0
        restartable_redis.kill()
        with pytest.raises(TransportError):
            await tr.publish("t", b"down")
        with anyio.fail_after(TIMEOUT):
            while tr.stats().connected:
                await anyio.lowlevel.checkpoint()
        assert await tr.remote_subscribers("t") is None
    await raw.aclose()


@pytest.mark.anyio
async def test_readiness_and_counting_capabilities_are_discoverable(
    redis_server: RedisServer,
) -> None:
    async with RedisTransport(redis_server.url, channel_prefix=_prefix()) as tr:
        assert isinstance(tr, ClusterReadiness)
        assert isinstance(tr, SubscriberCounting)


# -- callbacks -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_callbacks_see_connects_disconnects_and_errors(
    restartable_redis: RedisServer,
) -> None:
    seen: list[tuple[str, object, object]] = []
    changed = anyio.Event()

    def record(*entry: object) -> None:
        nonlocal changed
        seen.append(entry)  # type: ignore[arg-type]
        changed.set()
        changed = anyio.Event()

    async def on_connect(remote: RedisRemote, inbound: bool) -> None:
        await anyio.lowlevel.checkpoint()  # an async callback is awaited
        record("connect", remote, inbound)

    def on_disconnect(remote: RedisRemote, inbound: bool) -> None:
        record("disconnect", remote, inbound)

    def on_error(exc: BaseException) -> None:
        record("error", exc, None)

    async def until(count: int) -> None:
        with anyio.fail_after(TIMEOUT):
            while len(seen) < count:
                await changed.wait()

    address = f"127.0.0.1:{restartable_redis.port}"
    async with RedisTransport(
        restartable_redis.url,
        channel_prefix=_prefix(),
        reconnect_backoff=(0.01, 0.1),
        on_connect=on_connect,
        on_disconnect=on_disconnect,
        on_error=on_error,
    ) as tr:
        await until(1)
        kind, remote, inbound = seen[0]
        assert kind == "connect"
        assert isinstance(remote, RedisRemote)
        assert (str(remote), remote.host, remote.port, inbound) == (
            address,
            "127.0.0.1",
            restartable_redis.port,
            False,
        )
        restartable_redis.restart()
        await until(4)
        assert [entry[0] for entry in seen[:4]] == ["connect", "disconnect", "error", "connect"]
        assert seen[1][1:] == (remote, False)
        error = seen[2][1]
        assert isinstance(error, TransportError)
        assert address in str(error)
        assert seen[3][1:] == (remote, False)
    # Closing ends the connection: on_disconnect is delivered before the block ends.
    assert seen[-1] == ("disconnect", remote, False)
    assert tr.stats().callback_errors == 0


@pytest.mark.anyio
async def test_a_raising_callback_is_logged_and_counted(
    restartable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    connected = anyio.Event()

    def on_connect(_remote: RedisRemote, _inbound: bool) -> None:
        connected.set()
        raise RuntimeError("bug in on_connect")

    async def on_disconnect(_remote: RedisRemote, _inbound: bool) -> None:
        raise RuntimeError("bug in on_disconnect")

    def broken_gap_listener() -> None:
        raise RuntimeError("bug in a gap listener")

    async with (
        RedisTransport(
            restartable_redis.url,
            channel_prefix=_prefix(),
            reconnect_backoff=(0.01, 0.1),
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            on_error=lambda _exc: 1 / 0,
        ) as tr,
        tr.subscribe("t") as messages,
    ):
        gap = anyio.Event()
        tr.add_gap_listener(broken_gap_listener)
        tr.add_gap_listener(gap.set)
        with anyio.fail_after(TIMEOUT):
            await connected.wait()
        restartable_redis.restart()
        with anyio.fail_after(TIMEOUT):
            await gap.wait()
            await tr.wait_ready()
        await tr.publish("t", b"still alive")
        assert await _next(messages) == b"still alive"
        # on_connect twice, on_disconnect, on_error, the gap listener: five failures.
        await _eventually(lambda: tr.stats().callback_errors >= 5)
    assert "bug in on_connect" in caplog.text
    assert "bug in on_disconnect" in caplog.text
    assert "bug in a gap listener" in caplog.text


def test_callbacks_must_be_callable() -> None:
    for name in ("on_connect", "on_disconnect", "on_error"):
        with pytest.raises(ConfigurationError, match=name):
            RedisTransport(**{name: "print"})  # type: ignore[arg-type]


# -- error messages, databases ---------------------------------------------------------------


@pytest.mark.anyio
async def test_connect_error_names_host_port_and_cause() -> None:
    with pytest.raises(TransportError) as info:
        async with RedisTransport("redis://127.0.0.1:1/0", timeout=2):
            pass
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "refused" in message.lower()
    assert "network:ConnectionError" not in message
    # An IPv6 address is bracketed, so the port stays readable (whatever the cause).
    with pytest.raises(TransportError, match=r"at \[::1\]:1: "):
        async with RedisTransport("redis://[::1]:1/0", timeout=2):
            pass


@pytest.mark.anyio
async def test_publish_error_names_the_server(restartable_redis: RedisServer) -> None:
    async with RedisTransport(restartable_redis.url, channel_prefix=_prefix()) as tr:
        restartable_redis.kill()
        with pytest.raises(TransportError, match=f"127.0.0.1:{restartable_redis.port}"):
            await tr.publish("t", b"down")


@pytest.mark.anyio
async def test_db_number_separates_channels(redis_server: RedisServer) -> None:
    prefix = _prefix()
    base = f"redis://127.0.0.1:{redis_server.port}"
    async with (
        RedisTransport(f"{base}/0", channel_prefix=prefix) as db0,
        RedisTransport(f"{base}/3", channel_prefix=prefix) as db3,
        RedisTransport(f"{base}/3", channel_prefix=prefix) as db3_too,
        RedisTransport(f"{base}/0", channel_prefix=prefix, db=3) as db3_by_option,
        db0.subscribe("t") as on_db0,
        db3.subscribe("t") as on_db3,
    ):
        assert db0.channel_for("t") == f"{prefix}:t"
        assert db3.channel_for("t") == f"{prefix}:3:t"
        assert db3_by_option.channel_for("t") == f"{prefix}:3:t"
        await db3_too.publish("t", b"three")
        await db0.publish("t", b"zero")
        assert await _next(on_db3) == b"three"
        assert await _next(on_db0) == b"zero"  # "three" never reached db 0's subscriber
        await db3_by_option.publish("t", b"three again")
        assert await _next(on_db3) == b"three again"
    assert RedisTransport("redis://h/5", channel_prefix="").channel_for("t") == "5:t"
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, db=4)
    assert RedisTransport(client=client).channel_for("t") == "podshare:4:t"
    await client.aclose()


def test_cluster_and_sentinel_urls_and_clients_get_clear_errors() -> None:
    from redis.asyncio.cluster import RedisCluster

    for url in ("redis+cluster://127.0.0.1:7000", "rediss+cluster://127.0.0.1:7000"):
        with pytest.raises(ConfigurationError, match="Redis Cluster"):
            RedisTransport(url)
    cluster = RedisCluster(host="127.0.0.1", port=7000)
    with pytest.raises(ConfigurationError, match="Redis Cluster"):
        RedisTransport(client=cluster)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="sentinels="):
        RedisTransport("redis+sentinel://127.0.0.1:26379/mymaster")
    for kwargs in (
        {"sentinels": [("127.0.0.1", 26379)]},  # no service_name
        {"sentinels": [], "service_name": "m"},
        {"sentinels": [("127.0.0.1", "26379")], "service_name": "m"},
        {"sentinels": [("127.0.0.1", 26379)], "service_name": "m", "url": "redis://x"},
        {"service_name": "m"},
        {"db": -1},
    ):
        with pytest.raises(ConfigurationError):
            RedisTransport(**kwargs)


# -- falling behind ------------------------------------------------------------------------

BURST = 40
BURST_SIZE = 2 * 1024 * 1024


async def _burst(url: str, tr: RedisTransport, messages: AsyncIterator[bytes]) -> int:
    """Publish 40 x 2 MiB from a plain redis-py client as fast as it can; return how many
    the subscription received before the burst ended or a gap was reported."""
    gap = anyio.Event()
    remove = tr.add_gap_listener(gap.set)
    raw = aioredis.Redis.from_url(url)
    payload = secrets.token_bytes(BURST_SIZE)
    received = 0
    done = anyio.Event()

    async def count() -> None:
        nonlocal received
        async for message in messages:
            assert message == payload
            received += 1
            if received == BURST:
                done.set()
                return

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            for _ in range(BURST):
                await raw.publish(tr.channel_for("big"), payload)
            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as either:

                    async def first(event: anyio.Event) -> None:
                        await event.wait()
                        either.cancel_scope.cancel()

                    either.start_soon(first, done)
                    either.start_soon(first, gap)
            tg.cancel_scope.cancel()
    finally:
        remove()
        await raw.aclose()
    return received


@pytest.mark.anyio
async def test_burst_of_large_messages_with_default_output_buffer_limit(
    redis_server: RedisServer,
) -> None:
    """Redis's default pub/sub limit (32 MB hard) may disconnect the subscriber during a
    80 MiB burst: the transport reconnects, reports a gap and keeps working."""
    async with (
        RedisTransport(
            redis_server.url,
            channel_prefix=_prefix(),
            max_message_size=4 * BURST_SIZE,
            reconnect_backoff=(0.01, 0.1),
        ) as tr,
        tr.subscribe("big") as messages,
        tr.subscribe("after") as after,
    ):
        received = await _burst(redis_server.url, tr, messages)
        stats = tr.stats()
        if received < BURST:
            # Redis dropped the subscriber (client-output-buffer-limit): it came back.
            assert stats.reconnects >= 1
            assert stats.gaps_reported >= 1
        with anyio.fail_after(TIMEOUT):
            await tr.wait_ready()
        await tr.publish("after", b"alive")
        assert await _next(after) == b"alive"


@pytest.mark.anyio
async def test_burst_of_large_messages_is_read_in_full_without_the_limit(
    restartable_redis: RedisServer,
) -> None:
    raw = aioredis.Redis.from_url(restartable_redis.url)
    await raw.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    await raw.aclose()
    async with (
        RedisTransport(
            restartable_redis.url, channel_prefix=_prefix(), max_message_size=4 * BURST_SIZE
        ) as tr,
        tr.subscribe("big") as messages,
    ):
        assert await _burst(restartable_redis.url, tr, messages) == BURST
        stats = tr.stats()
        assert (stats.reconnects, stats.gaps_reported, stats.messages_dropped) == (0, 0, 0)
        assert stats.bytes_received == BURST * BURST_SIZE


@pytest.mark.anyio
async def test_subscriber_falling_behind_is_reported_to_on_error(
    redis_server: RedisServer,
) -> None:
    errors: list[BaseException] = []
    reported = anyio.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        reported.set()

    async with (
        RedisTransport(
            redis_server.url, channel_prefix=_prefix(), subscription_buffer=1, on_error=on_error
        ) as tr,
        tr.subscribe("t") as slow,
        tr.subscribe("t") as fast,
    ):
        for i in range(3):
            await tr.publish("t", b"%d" % i)
            assert await _next(fast) == b"%d" % i
        with anyio.fail_after(TIMEOUT):
            await reported.wait()
        assert await _next(slow) == b"0"
        assert tr.stats().messages_dropped == 2
    assert len(errors) == 1  # once per episode, not once per dropped message
    assert isinstance(errors[0], TransportError)
    assert "fell 1 messages behind" in str(errors[0])


@pytest.mark.anyio
@pytest.mark.parametrize("secret", [None, "a secret of sixteen bytes or more"])
async def test_subscribe_skipping_leaves_out_only_its_own_messages(
    redis_server: RedisServer, secret: str | None
) -> None:
    prefix = _prefix()
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, secret=secret) as mine,
        RedisTransport(redis_server.url, channel_prefix=prefix, secret=secret) as theirs,
    ):
        assert isinstance(mine, EchoSkipping)
        await check_echo_skipping(mine, theirs)
