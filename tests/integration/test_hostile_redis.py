"""Hostile peers on Redis: a plain redis-py client PUBLISHes forgeries on a store's channels.

Two real stores (``victim`` and ``peer``) share a Redis. The intruder has publish access
and nothing else podshare knows about. Without a secret its forgeries get in, but the
damage is bounded: memory, bytes answered per byte forged, and no live peer is lost.
With ``secret=`` nothing it publishes, replays included, has any effect.
(``tests/integration/test_redis_auth.py`` holds the transport-level counterparts.)
"""

from __future__ import annotations

import secrets
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from podshare import EventKind, Store
from podshare.store import wire
from podshare.store.membership import commitment_of
from podshare.transport import RedisTransport
from tests._support import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "a fleet secret that is long enough"
NAME = "hostile-store"
TIMEOUT = 20
GHOSTS = 1_000
KEYS = 2_000
OPTIONS: dict[str, Any] = {"hydrate_timeout": 1.0, "heartbeat_interval": 0.2, "down_after": 2.0}


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so Redis-backed transports run under asyncio alone."""
    return "asyncio"


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (counters and memberships announce nothing)."""
    with anyio.fail_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


@dataclass
class Fleet:
    """The victim, its peer, the intruder's raw client, and what was published."""

    victim: Store[Any]
    peer: Store[Any]
    victim_tr: RedisTransport
    raw: Any
    published: int = 0

    async def publish(self, topic: str, data: bytes) -> None:
        await self.raw.publish(self.victim_tr.channel_for(topic), data)
        self.published += len(data)

    async def fence(self, n: int) -> None:
        """A legitimate write after the forgeries: once it arrived, they were all judged."""
        await self.peer.set("fence", n)
        await eventually(lambda: self.victim.get("fence") == n)


@asynccontextmanager
async def fleet(url: str, secret: str | None) -> AsyncIterator[Fleet]:
    prefix = f"hostile-{secrets.token_hex(4)}"
    async with AsyncExitStack() as stack:
        raw = await stack.enter_async_context(aioredis.Redis.from_url(url))
        trs = [
            await stack.enter_async_context(
                RedisTransport(url, channel_prefix=prefix, secret=secret)
            )
            for _ in range(2)
        ]
        victim = await stack.enter_async_context(
            Store[Any](NAME, trs[0], node_id="victim", **OPTIONS)
        )
        peer = await stack.enter_async_context(Store[Any](NAME, trs[1], node_id="peer", **OPTIONS))
        await victim.set_many({f"key-{i:05d}": "v" * 40 for i in range(KEYS)})
        await eventually(lambda: len(peer) == KEYS and victim.members() == {"victim", "peer"})
        yield Fleet(victim, peer, trs[0], raw)


def ghost_heartbeats(now_ms: int) -> list[tuple[str, bytes]]:
    """The issue's 1,000 heartbeats: ghost replicas claiming a million keys each."""
    out = []
    for i in range(GHOSTS):
        out.append((f"ps/{NAME}", wire.encode(wire.Hello(f"g{i}", i, now_ms, True, True, 10**6))))
        alive = wire.Alive(f"g{i}", i, 0, now_ms, bytes(16), now_ms, True, 1000)
        out.append(("pl/live", wire.encode(alive)))
    return out


def forged_sync(sender: str) -> list[tuple[str, bytes]]:
    """A full-transfer request from ``sender`` and blind acknowledgements of its parts."""
    inbox = f"ps/{NAME}#victim"
    out = [(inbox, wire.encode(wire.SyncRequest(sender, 1, 7, 0, None, b"")))]
    out += [
        (inbox, wire.encode(wire.SyncAck(sender, 1, 7, wire.STREAM_ANSWER, part, [])))
        for part in range(64)
    ]
    return out


async def received_bytes(pubsub: Any) -> int:
    """Bytes waiting on ``pubsub``: read until nothing arrives for half a second."""
    total = 0
    while (message := await pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            total += len(message["data"])
    return total


async def membership_events(events: Any) -> list[tuple[EventKind, str]]:
    """What a members watcher holds (read until it is quiet for half a second)."""
    seen: list[tuple[EventKind, str]] = []
    while True:
        with anyio.move_on_after(0.5) as scope:
            ev = await anext(events)
        if scope.cancelled_caught:
            return seen
        seen.append((ev.kind, ev.key))


async def test_without_a_secret_forged_heartbeats_cost_bounded_memory(
    redis_server: RedisServer,
) -> None:
    async with (
        fleet(redis_server.url, None) as f,
        f.victim.watch(members=True, buffer=10_000) as events,
    ):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            started = time.perf_counter()
            for topic, data in ghost_heartbeats(int(time.time() * 1000)):
                await f.publish(topic, data)
            await f.fence(1)
            ingest = time.perf_counter() - started
            growth = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        print(f"\n{f.published} forged bytes: +{growth} bytes peak, ingested in {ingest:.2f} s")
        assert growth < 16 * 1024 * 1024, growth
        # The ghosts never answer a probe: down after down_after, and forgotten; the live
        # peer stays up throughout.
        both = {"victim", "peer"}
        await eventually(lambda: f.victim.members() == both and f.peer.members() == both)
        assert len(f.victim) == KEYS + 1
        assert (EventKind.NODE_DOWN, "peer") not in await membership_events(events)


async def test_without_a_secret_a_forged_sync_request_is_not_amplified(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server.url, None) as f:
        answers = f.raw.pubsub()
        await answers.subscribe(f.victim_tr.channel_for(f"ps/{NAME}#nobody"))
        for topic, data in forged_sync("nobody"):
            await f.publish(topic, data)
        await f.fence(1)
        got = await received_bytes(answers)
        await answers.aclose()
        print(f"\n{f.published} forged bytes, {got} answered")
        assert got <= 4 * f.published, (got, f.published)
        assert f.victim.stats().syncs_unserved == 1


async def test_without_a_secret_a_forged_goodbye_changes_nothing(
    redis_server: RedisServer,
) -> None:
    async with (
        fleet(redis_server.url, None) as f,
        f.victim.watch(members=True, buffer=10_000) as events,
    ):
        await f.peer.set("presence:peer", "here", ephemeral=True)
        await eventually(lambda: f.victim.get("presence:peer") == "here")
        # The intruder reads the peer's incarnation off its beacons (nonces are public),
        # announces it with a commitment of its own, then says its goodbye.
        tap = f.raw.pubsub()
        await tap.subscribe(f.victim_tr.channel_for("pl/live"))
        while True:
            message = await tap.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            beacon = wire.decode(message["data"], max_size=1 << 20)
            if isinstance(beacon, wire.Alive) and beacon.sender == "peer":
                break
        await tap.aclose()
        token = bytes(range(16))
        now_ms = int(time.time() * 1000)
        forged = wire.Alive(
            "peer", beacon.nonce, beacon.version, beacon.started_at,
            commitment_of(token), now_ms, False, 200,
        )  # fmt: skip
        await f.publish("pl/live", wire.encode(forged))
        await f.publish("pl/live", wire.encode(wire.Bye("peer", beacon.nonce, token)))
        await f.fence(1)
        await f.fence(2)
        assert f.victim.members() == {"victim", "peer"}
        assert f.victim.get("presence:peer") == "here"
        assert (EventKind.NODE_DOWN, "peer") not in await membership_events(events)


async def test_with_a_secret_forgeries_and_replays_have_no_effect(
    redis_server: RedisServer,
) -> None:
    async with fleet(redis_server.url, SECRET) as f:
        # Capture a legitimate write of the peer as it crosses Redis, to replay it later.
        tap = f.raw.pubsub()
        await tap.subscribe(f.victim_tr.channel_for(f"ps/{NAME}"))
        await f.peer.set("k", "legit")
        await eventually(lambda: f.victim.get("k") == "legit")
        captured = None
        while captured is None:
            message = await tap.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                captured = message["data"]
        await tap.aclose()
        await f.peer.set("k", "newer")
        await eventually(lambda: f.victim.get("k") == "newer")
        before = f.victim.snapshot()
        stats_before = f.victim.stats()
        forged = [*ghost_heartbeats(int(time.time() * 1000)), *forged_sync("nobody")]
        for topic, data in forged:
            await f.publish(topic, data)
        for _ in range(5):
            await f.raw.publish(f.victim_tr.channel_for(f"ps/{NAME}"), captured)
        await f.fence(1)
        await eventually(lambda: getattr(f.victim_tr.stats().auth, "replayed", 0) >= 5)
        after = f.victim.snapshot()
        assert after == {**before, "fence": 1}
        assert f.victim.members() == {"victim", "peer"}
        stats = f.victim.stats()
        assert stats.decode_errors == stats_before.decode_errors
        assert stats.syncs_unserved == stats_before.syncs_unserved
        assert stats.peers_seen == stats_before.peers_seen
