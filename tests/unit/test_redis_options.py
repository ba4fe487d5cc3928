"""RedisTransport's options and its asyncio-only check: no server is needed for these."""

from __future__ import annotations

import ssl

import pytest
import redis.asyncio as aioredis
import trio

from podshare.exceptions import ConfigurationError
from podshare.transport import RedisTransport


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
            RedisTransport(**kwargs)
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
    tr = RedisTransport("redis://127.0.0.1:1/0")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            async with tr:
                pass

    trio.run(main)


@pytest.mark.parametrize(
    "url", ["redis+cluster://127.0.0.1:7000", "rediss+cluster://h:7000", "redis-cluster://h:1"]
)
def test_cluster_urls_are_refused_with_the_reason(url: str) -> None:
    # Sharded pub/sub is not supported (docs/transports/redis.md, "Redis Cluster"): the
    # error says so and points to one server or Sentinel instead of failing later.
    with pytest.raises(ConfigurationError, match=r"Redis Cluster.*Sentinel"):
        RedisTransport(url)


def test_a_cluster_client_is_refused_with_the_reason() -> None:
    from redis.asyncio.cluster import RedisCluster

    # Constructing the client does not connect; the transport refuses it at once.
    cluster = RedisCluster(host="127.0.0.1", port=7000)
    with pytest.raises(ConfigurationError, match="sharded pub/sub"):
        RedisTransport(client=cluster)  # type: ignore[arg-type]
