"""RedisTransport against a real redis-server: delivery, limits, failures, reconnection."""

from __future__ import annotations

import logging
import secrets
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    MessageTooLarge,
    TransportError,
)
from podshare.testing import check_transport
from podshare.transport import RedisTransport
from podshare.transport.base import GapReporting, Transport
from tests.integration.conftest import RedisServer

pytestmark = pytest.mark.integration

TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so the Redis transport runs under asyncio alone.

    ``test_trio_*`` below re-parametrise this fixture to prove the clear error under trio.
    """
    return "asyncio"


def _prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


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
    with pytest.raises(TransportError, match="cannot connect"):
        async with RedisTransport("redis://127.0.0.1:1/0", timeout=2):
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


def test_bad_options_raise_configuration_error() -> None:
    for kwargs in (
        {"max_message_size": 0},
        {"reconnect_backoff": (0.0, 1.0)},
        {"reconnect_backoff": (2.0, 1.0)},
        {"timeout": -1},
        {"subscription_buffer": 0},
        {"url": "http://localhost"},
    ):
        with pytest.raises(ConfigurationError):
            RedisTransport(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rediss"):
        RedisTransport("redis://localhost", ssl_context=ssl.create_default_context())
    with pytest.raises(ConfigurationError, match="client"):
        RedisTransport(client=aioredis.Redis(), password="x")


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_constructor_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs asyncio"):
        RedisTransport("redis://127.0.0.1:1/0")


def test_trio_enter_raises_configuration_error() -> None:
    # Built outside any event loop, the check happens on `async with`.
    import trio

    tr = RedisTransport("redis://127.0.0.1:1/0")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            async with tr:
                pass

    trio.run(main)


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
    process = restartable_redis._process
    assert process is not None
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
