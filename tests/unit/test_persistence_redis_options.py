"""RedisPersistence's options, key names and asyncio-only check: no server is needed."""

from __future__ import annotations

import ssl
import subprocess
import sys
import textwrap

import pytest
import redis.asyncio as aioredis

from podshare.exceptions import ConfigurationError, InvalidValue
from podshare.persistence import Persistence, RedisPersistence
from podshare.transport import RedisTransport


def test_is_a_shared_persistence() -> None:
    place = RedisPersistence()
    assert isinstance(place, Persistence)
    assert place.shared is True


def test_key_names() -> None:
    assert RedisPersistence().state_key("config") == "podshare:ps/config:state"
    assert RedisPersistence(channel_prefix="").meta_key("config") == "ps/config:meta"
    assert RedisPersistence("redis://h:1/2", channel_prefix="a").state_key("s") == "a:2:ps/s:state"
    client = aioredis.Redis(db=5)
    assert RedisPersistence(client=client, channel_prefix="a").state_key("s") == "a:5:ps/s:state"
    with pytest.raises(InvalidValue):
        RedisPersistence().state_key("a#b")


@pytest.mark.parametrize("url", ["redis://h:1/0", "redis://h:1/4", "rediss://h:1/0"])
@pytest.mark.parametrize("prefix", ["podshare", "", "app"])
def test_the_transport_default_uses_its_channel_prefix(url: str, prefix: str) -> None:
    tr = RedisTransport(url, channel_prefix=prefix)
    for place in (tr.default_persistence(), RedisPersistence.for_transport(tr)):
        assert place.state_key("cfg") == tr.channel_for("ps/cfg") + ":state"
        assert place.meta_key("cfg") == tr.channel_for("ps/cfg") + ":meta"


def test_the_transport_default_shares_its_client() -> None:
    client = aioredis.Redis(db=2)
    tr = RedisTransport(client=client, channel_prefix="x")
    assert tr.default_persistence().state_key("s") == tr.channel_for("ps/s") + ":state"
    decoding = RedisTransport(client=aioredis.Redis(decode_responses=True))
    with pytest.raises(ConfigurationError, match="decode_responses"):
        decoding.default_persistence()


def test_bad_options_raise_configuration_error() -> None:
    for kwargs in (
        {"timeout": 0},
        {"timeout": float("inf")},
        {"timeout": True},
        {"page_size": 0},
        {"db": -1},
        {"channel_prefix": 3},
        {"url": "http://localhost"},
    ):
        with pytest.raises(ConfigurationError):
            RedisPersistence(**kwargs)
    with pytest.raises(ConfigurationError, match="rediss"):
        RedisPersistence("redis://localhost", ssl_context=ssl.create_default_context())
    with pytest.raises(ConfigurationError, match="url or client"):
        RedisPersistence("redis://localhost", client=aioredis.Redis())
    with pytest.raises(ConfigurationError, match="client"):
        RedisPersistence(client=aioredis.Redis(), password="x")
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisPersistence(client=aioredis.Redis(decode_responses=True))


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="needs asyncio"):
        RedisPersistence("redis://127.0.0.1:1/0")


def test_trio_use_raises_configuration_error() -> None:
    import trio

    place = RedisPersistence("redis://127.0.0.1:1/0")  # built outside any event loop

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            await place.load("s")
        with pytest.raises(ConfigurationError, match="needs asyncio"):
            await place.write("s", {}, None)

    trio.run(main)


def test_without_redis_py_the_package_imports_and_the_backend_says_how_to_install() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        import podshare.persistence as p
        assert p.MemoryPersistence and p.SQLitePersistence
        try:
            p.RedisPersistence
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'podshare[redis]'" in out.stdout
