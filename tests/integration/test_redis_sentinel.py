"""RedisTransport through Redis Sentinel: it follows the master across a failover."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import anyio
import pytest
import redis.asyncio as aioredis

from podshare import Store
from podshare.exceptions import TransportError
from podshare.transport import RedisRemote, RedisTransport
from tests._support import (
    MASTER_PASSWORD,
    SENTINEL_PASSWORD,
    SENTINEL_SERVICE,
    SentinelGroup,
)

pytestmark = pytest.mark.integration

TIMEOUT = 60


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so the Redis transport runs under asyncio alone."""
    return "asyncio"


async def _until(store: Store[int], condition: Callable[[], bool]) -> None:
    """Wait, on the store's events, until ``condition()`` holds (the caller bounds it)."""
    while True:
        async with store.watch() as events:  # opened first: no change slips between
            if condition():
                return
            async for _ in events:
                if condition():
                    return
        # The watch was dropped (its buffer overflowed): look again with a new one.


def _transport(group: SentinelGroup, prefix: str, **options: object) -> RedisTransport:
    return RedisTransport(
        sentinels=group.addresses,
        service_name=SENTINEL_SERVICE,
        password=MASTER_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        channel_prefix=prefix,
        reconnect_backoff=(0.05, 0.5),
        timeout=1.0,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_connects_to_the_master_the_sentinels_name(sentinel_group: SentinelGroup) -> None:
    async with (
        _transport(sentinel_group, "s1") as tr,
        tr.subscribe("t") as messages,
    ):
        await tr.wait_ready()
        assert tr.remote is not None
        assert (tr.remote.host, tr.remote.port) == ("127.0.0.1", sentinel_group.master.port)
        assert tr.remote.service_name == SENTINEL_SERVICE
        await tr.publish("t", b"via sentinel")
        with anyio.fail_after(10):
            assert await anext(messages) == b"via sentinel"


@pytest.mark.anyio
async def test_sentinel_and_master_credentials_are_separate(
    sentinel_group: SentinelGroup,
) -> None:
    # The master's password given to the sentinels is refused: no master can be found.
    tr = RedisTransport(
        sentinels=sentinel_group.addresses,
        service_name=SENTINEL_SERVICE,
        password=MASTER_PASSWORD,
        sentinel_password=MASTER_PASSWORD,
        timeout=1.0,
    )
    with pytest.raises(TransportError, match=r"sentinels at 127\.0\.0\.1:"):
        async with tr:
            pass
    # The sentinels' password given to the master is refused by the master.
    tr = RedisTransport(
        sentinels=sentinel_group.addresses,
        service_name=SENTINEL_SERVICE,
        password=SENTINEL_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        timeout=1.0,
    )
    with pytest.raises(TransportError, match=f"127.0.0.1:{sentinel_group.master.port}"):
        async with tr:
            pass


@pytest.mark.anyio
async def test_stores_keep_every_acknowledged_write_across_a_failover(
    sentinel_group: SentinelGroup,
) -> None:
    """SIGKILL the master mid-writes: after promotion writes resume on both pods, and
    every acknowledged write reaches both, repaired by the gap, with no refresh()."""
    prefix = f"failover-{secrets.token_hex(4)}"
    # Anti-entropy far beyond the test's timeout: only the gap after the switch repairs.
    options = {"anti_entropy_interval": 3600.0, "hydrate_timeout": 2.0}
    acked: list[dict[str, int]] = [{}, {}]
    written: list[dict[str, int]] = [{}, {}]  # acknowledged or not
    failed = [0, 0]
    progress = anyio.Event()
    stop = False

    def notify() -> None:
        nonlocal progress
        progress.set()
        progress = anyio.Event()

    async def wait_for(condition: object) -> None:
        assert callable(condition)
        while not condition():
            await progress.wait()

    async with (
        _transport(sentinel_group, prefix) as ta,
        _transport(sentinel_group, prefix) as tb,
        Store[int]("orders", ta, node_id="a", **options) as a,  # type: ignore[arg-type]
        Store[int]("orders", tb, node_id="b", **options) as b,  # type: ignore[arg-type]
    ):
        stores = [a, b]

        async def write(index: int) -> None:
            i = 0
            while not stop:
                key = f"{'ab'[index]}-{i}"
                i += 1
                written[index][key] = i
                try:
                    await stores[index].set(key, i)
                except TransportError:
                    failed[index] += 1  # the write stands locally; not acknowledged
                    await anyio.sleep(0.02)  # pacing while reconnecting, not a sync
                else:
                    acked[index][key] = i
                    await anyio.sleep(0.002)  # pacing: a steady stream of writes
                notify()

        def acked_count() -> list[int]:
            return [len(acked[0]), len(acked[1])]

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, 0)
                tg.start_soon(write, 1)
                await wait_for(lambda: min(acked_count()) >= 30)
                old_master = sentinel_group.master.port
                sentinel_group.master.kill()  # SIGKILL, mid-writes
                before = acked_count()
                # Writes resume once the replica is promoted and both pods follow it.
                await wait_for(
                    lambda: all(n >= m + 30 for n, m in zip(acked_count(), before, strict=True))
                )
                stop = True
            assert sentinel_group.master_address() == ("127.0.0.1", sentinel_group.replica.port)
            for tr in (ta, tb):
                assert tr.remote is not None
                assert tr.remote.port == sentinel_group.replica.port != old_master

            expected = {**acked[0], **acked[1]}
            # Writes whose PUBLISH failed stood locally: only the refresh the gap started
            # can carry them, so they are expected everywhere too.
            assert all(failed)
            expected_all = {**written[0], **written[1]}

            def converged() -> bool:
                return all(
                    all(store.get(key) == value for key, value in expected.items())
                    for store in stores
                )

            for store in stores:

                def holds_every_write(store: Store[int] = store) -> bool:
                    return store.snapshot() == expected_all

                await _until(store, converged)
                await _until(store, holds_every_write)
        for tr in (ta, tb):
            stats = tr.stats()
            assert stats.connected
            assert stats.reconnects >= 1
            assert stats.gaps_reported >= 1


@pytest.mark.anyio
async def test_publishing_client_follows_the_master(sentinel_group: SentinelGroup) -> None:
    """After a failover the transport's PUBLISH reaches a plain client on the new master."""
    async with _transport(sentinel_group, "s2") as tr:
        await tr.publish("t", b"before")
        gap = anyio.Event()
        tr.add_gap_listener(gap.set)
        sentinel_group.master.kill()
        with anyio.fail_after(TIMEOUT):
            await gap.wait()
        new_master = aioredis.Redis(port=sentinel_group.replica.port, password=MASTER_PASSWORD)
        async with new_master.pubsub() as pubsub:
            await pubsub.subscribe(tr.channel_for("t"))
            await tr.publish("t", b"after")
            with anyio.fail_after(10):
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        assert message["data"] == b"after"
                        break
        await new_master.aclose()


@pytest.mark.anyio
async def test_a_planned_failover_moves_the_transport_to_the_new_master(
    sentinel_group: SentinelGroup,
) -> None:
    """SENTINEL FAILOVER demotes a master that stays alive: the transport leaves it (its
    sentinel check) and follows the new master, reporting a gap."""
    connects: list[RedisRemote] = []
    async with (
        _transport(
            sentinel_group,
            "s3",
            health_check_interval=0.2,
            on_connect=lambda remote, _inbound: connects.append(remote),
        ) as tr,
        tr.subscribe("t") as messages,
    ):
        gap = anyio.Event()
        tr.add_gap_listener(gap.set)
        sentinel = aioredis.Redis(port=sentinel_group.sentinels[0].port, password=SENTINEL_PASSWORD)
        assert await sentinel.sentinel_failover(SENTINEL_SERVICE)
        await sentinel.aclose()
        with anyio.fail_after(TIMEOUT):
            await gap.wait()
            await tr.wait_ready()
        assert tr.remote is not None
        assert tr.remote.port == sentinel_group.replica.port
        assert [remote.port for remote in connects] == [
            sentinel_group.master.port,
            sentinel_group.replica.port,
        ]
        await tr.publish("t", b"on the new master")
        with anyio.fail_after(10):
            assert await anext(messages) == b"on the new master"
