"""RedisPersistence against a real redis-server: the kit, the layout, the transport's
settings (TLS, ACL, database), failures."""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from podshare.exceptions import InvalidValue, PersistenceError
from podshare.persistence import Persistence, RedisPersistence
from podshare.testing import check_persistence
from podshare.transport import RedisTransport
from tests._support import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so RedisPersistence runs under asyncio alone.

    tests/unit/test_persistence_redis_options.py proves the clear error under trio.
    """
    return "asyncio"


def _prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


def _out_of_memory(server: RedisServer) -> Any:
    """break_writes for the kit: Redis refuses every write with OOM (maxmemory 1 byte)."""

    @asynccontextmanager
    async def broken(_p: Persistence) -> AsyncIterator[None]:
        admin = aioredis.Redis.from_url(server.url)
        try:
            await admin.config_set("maxmemory", "1")
            try:
                yield
            finally:
                await admin.config_set("maxmemory", "0")
        finally:
            await admin.aclose()

    return broken


@pytest.mark.anyio
async def test_passes_check_persistence(restartable_redis: RedisServer) -> None:
    prefix = _prefix()
    await check_persistence(
        lambda: RedisPersistence(restartable_redis.url, channel_prefix=prefix),
        break_writes=_out_of_memory(restartable_redis),
    )


@pytest.mark.anyio
async def test_passes_check_persistence_through_a_transport(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with RedisTransport(redis_server.url, channel_prefix=prefix) as tr:
        await check_persistence(tr.default_persistence, many_keys=2000)


@pytest.mark.anyio
async def test_out_of_memory_is_a_persistence_error_and_changes_nothing(
    restartable_redis: RedisServer,
) -> None:
    async with RedisPersistence(restartable_redis.url, channel_prefix=_prefix()) as place:
        await place.write("s", {"a": b"1"}, b"m1")
        async with _out_of_memory(restartable_redis)(place):
            with pytest.raises(PersistenceError, match=r"maxmemory|OOM"):
                await place.write("s", {"a": b"2", "b": b"3"}, b"m2")
        state = await place.load("s")
        assert (dict(state.records), state.meta) == ({"a": b"1"}, b"m1")
        assert place.stats().write_errors == 1


@pytest.mark.anyio
async def test_layout_under_the_store_channel_prefix(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        async with RedisTransport(redis_server.url, channel_prefix=prefix) as tr:
            place = tr.default_persistence()
            assert place.shared is True
            assert place.state_key("config") == tr.channel_for("ps/config") + ":state"
            assert place.meta_key("config") == tr.channel_for("ps/config") + ":meta"
            await place.write("config", {"flag": b"r1", "gone": None}, b"meta")
            assert await raw.hgetall(f"{prefix}:ps/config:state") == {b"flag": b"r1"}
            assert await raw.get(f"{prefix}:ps/config:meta") == b"meta"
            await place.write("config", {"flag": None}, None)
            assert not await raw.exists(f"{prefix}:ps/config:state")
            await place.aclose()  # the transport's client stays open
            await tr.publish("still-open", b"x")
    finally:
        await raw.aclose()


@pytest.mark.anyio
async def test_a_nonzero_database_is_used_and_folded_into_the_prefix(
    redis_server: RedisServer,
) -> None:
    prefix = _prefix()
    url = f"redis://127.0.0.1:{redis_server.port}/3"
    raw = aioredis.Redis.from_url(url)
    try:
        async with RedisTransport(url, channel_prefix=prefix) as tr:
            await tr.default_persistence().write("s", {"k": b"v"}, None)
        assert await raw.hgetall(f"{prefix}:3:ps/s:state") == {b"k": b"v"}
        async with RedisPersistence(redis_server.url, db=3, channel_prefix=prefix) as own:
            assert dict((await own.load("s")).records) == {"k": b"v"}
    finally:
        await raw.delete(f"{prefix}:3:ps/s:state")
        await raw.aclose()


@pytest.mark.anyio
async def test_for_transport_uses_the_transport_acl_user(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    user = f"user-{secrets.token_hex(4)}"
    # The user may touch only this application's keys and channels.
    await raw.acl_setuser(
        user,
        enabled=True,
        passwords=["+s3cret"],
        keys=[f"{prefix}:*"],
        channels=[f"{prefix}:*"],
        commands=["+@all"],
    )
    try:
        async with RedisTransport(
            redis_server.url, username=user, password="s3cret", channel_prefix=prefix
        ) as tr:
            place = RedisPersistence.for_transport(tr)
            await place.write("s", {"k": b"v"}, b"m")
            assert dict((await place.load("s")).records) == {"k": b"v"}
        # The same user outside its key pattern: refused, as a PersistenceError.
        async with RedisPersistence(
            redis_server.url, username=user, password="s3cret", channel_prefix="other"
        ) as outside:
            with pytest.raises(PersistenceError, match=r"NOPERM|permission"):
                await outside.write("s", {"k": b"v"}, None)
    finally:
        await raw.acl_deluser(user)
        await raw.aclose()


@pytest.mark.anyio
async def test_for_transport_uses_the_transport_tls(
    tls_redis: tuple[RedisServer, str, Any],
) -> None:
    _, url, ca = tls_redis
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with RedisTransport(url, ssl_context=context, channel_prefix=_prefix()) as tr:
        place = tr.default_persistence()
        await place.write("s", {"k": b"over tls"}, None)
        assert dict((await place.load("s")).records) == {"k": b"over tls"}
    async with RedisPersistence(url, ssl_context=context, channel_prefix=_prefix()) as own:
        await own.write("s", {"k": b"v"}, None)
    # Without the CA the certificate is refused: a PersistenceError, not an ssl error.
    async with RedisPersistence(url, ssl_context=ssl.create_default_context()) as untrusted:
        with pytest.raises(PersistenceError):
            await untrusted.load("s")


@pytest.mark.anyio
async def test_redis_down_then_back(restartable_redis: RedisServer) -> None:
    async with RedisPersistence(
        restartable_redis.url, channel_prefix=_prefix(), timeout=2
    ) as place:
        await place.write("s", {"k": b"1"}, None)
        restartable_redis.kill()
        with pytest.raises(PersistenceError, match=f"127.0.0.1:{restartable_redis.port}"):
            await place.write("s", {"k": b"2"}, None)
        with pytest.raises(PersistenceError):
            await place.load("s")
        restartable_redis.start()  # without persistence of its own: the data is gone
        await place.write("s", {"k": b"3"}, None)
        assert dict((await place.load("s")).records) == {"k": b"3"}
        stats = place.stats()
        assert (stats.write_errors, stats.load_errors, stats.writes) == (1, 1, 2)


@pytest.mark.anyio
async def test_a_frozen_redis_times_out(restartable_redis: RedisServer) -> None:
    import signal

    async with RedisPersistence(
        restartable_redis.url, channel_prefix=_prefix(), timeout=0.3
    ) as place:
        await place.load("s")  # connected
        restartable_redis.process.send_signal(signal.SIGSTOP)
        try:
            with anyio.fail_after(5), pytest.raises(PersistenceError):
                await place.write("s", {"k": b"1"}, None)
        finally:
            restartable_redis.process.send_signal(signal.SIGCONT)


@pytest.mark.anyio
async def test_a_field_that_is_not_utf8_is_skipped_and_counted(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        async with RedisPersistence(redis_server.url, channel_prefix=prefix) as place:
            await place.write("s", {"good": b"v"}, None)
            await raw.hset(place.state_key("s"), b"\xff\xfe", b"x")
            assert dict((await place.load("s")).records) == {"good": b"v"}
            assert place.stats().decode_errors == 1
    finally:
        await raw.aclose()


@pytest.mark.anyio
async def test_a_key_of_another_type_is_a_persistence_error(redis_server: RedisServer) -> None:
    prefix = _prefix()
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        await raw.set(f"{prefix}:ps/s:state", b"someone else's string")
        async with RedisPersistence(redis_server.url, channel_prefix=prefix) as place:
            with pytest.raises(PersistenceError, match="WRONGTYPE"):
                await place.load("s")
            with pytest.raises(PersistenceError, match="holds a string, not podshare's hash"):
                await place.write("s", {"k": b"v"}, b"m")
            # All or nothing: the meta SET of the refused transaction did not happen.
            assert await raw.get(f"{prefix}:ps/s:meta") is None
            assert await raw.get(f"{prefix}:ps/s:state") == b"someone else's string"
            assert place.stats().write_errors == 1
        # A foreign meta key (a hash) is not overwritten by SET either.
        await raw.delete(f"{prefix}:ps/s:state")
        await raw.hset(f"{prefix}:ps/t:meta", "theirs", "1")
        async with RedisPersistence(redis_server.url, channel_prefix=prefix) as place:
            with pytest.raises(PersistenceError, match="holds a hash, not podshare's string"):
                await place.write("t", {"k": b"v"}, b"m")
        assert await raw.hgetall(f"{prefix}:ps/t:meta") == {b"theirs": b"1"}
    finally:
        await raw.aclose()


@pytest.mark.anyio
async def test_small_pages_load_everything(redis_server: RedisServer) -> None:
    prefix = _prefix()
    records: dict[str, bytes | None] = {f"k{i}": f"{i}".encode() for i in range(2500)}
    async with RedisPersistence(redis_server.url, channel_prefix=prefix, page_size=7) as place:
        await place.write("s", records, None)
        assert dict((await place.load("s")).records) == records


@pytest.mark.anyio
async def test_a_given_client_is_not_closed(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        async with RedisPersistence(client=client, channel_prefix=_prefix()) as place:
            await place.write("s", {"k": b"v"}, None)
        assert await client.ping()
        with pytest.raises(InvalidValue):
            await place.write("s", {"k": "text"}, None)  # type: ignore[dict-item]
    finally:
        await client.aclose()
