"""RedisTransport(secret=...) and Authenticated over Redis against an intruder with PUBLISH.

The intruder is a plain redis-py client (and, for genuine-looking traffic, a podshare
store without the secret) on the same Redis and channels. With the secret nothing it
publishes (garbage, forged heartbeats claiming a million keys, a forged sync request,
forged writes, a replay of a captured legitimate message) changes a store's contents, its
members or its memory; without the secret the same forgeries demonstrably get in.
"""

from __future__ import annotations

import os
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

from podshare import ConfigurationError, PodshareError, Store
from podshare.store import wire
from podshare.testing import check_transport
from podshare.transport import Authenticated, AuthStats, RedisTransport
from podshare.transport.auth import HEADER_SIZE, TAG_SIZE
from tests._support import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SECRET = "a fleet secret that is long enough"
TIMEOUT = 20
NAME = "victim-store"


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so Redis-backed transports run under asyncio alone."""
    return "asyncio"


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (stores and transports offer no single event)."""
    with anyio.fail_after(TIMEOUT):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def _prefix() -> str:
    return f"auth-{secrets.token_hex(4)}"


# --- conformance -----------------------------------------------------------------------------


async def test_redis_with_secret_passes_check_transport(redis_server: RedisServer) -> None:
    prefix = _prefix()
    await check_transport(
        lambda: RedisTransport(redis_server.url, channel_prefix=prefix, secret=SECRET)
    )


async def test_redis_with_encryption_passes_check_transport(redis_server: RedisServer) -> None:
    pytest.importorskip("cryptography", reason="AES-GCM needs the encryption extra")
    prefix = _prefix()
    await check_transport(
        lambda: RedisTransport(redis_server.url, channel_prefix=prefix, secret=SECRET, encrypt=True)
    )


async def test_wrapper_over_redis_passes_check_transport(redis_server: RedisServer) -> None:
    prefix = _prefix()
    await check_transport(
        lambda: Authenticated(
            RedisTransport(redis_server.url, channel_prefix=prefix), secret=SECRET
        )
    )


async def test_bad_secret_options(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        RedisTransport(redis_server.url, secret="short")
    with pytest.raises(ConfigurationError, match="needs a secret"):
        RedisTransport(redis_server.url, encrypt=True)
    with pytest.raises(ConfigurationError, match="max_message_size"):
        RedisTransport(redis_server.url, secret=SECRET, max_message_size=512 * 1024 * 1024)
    RedisTransport(redis_server.url, max_message_size=512 * 1024 * 1024)  # fine without


async def test_statistics_count_what_was_refused(redis_server: RedisServer) -> None:
    prefix = _prefix()
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, secret=SECRET) as tr,
        aioredis.Redis.from_url(redis_server.url) as raw,
        tr.subscribe("t") as messages,
    ):
        assert RedisTransport(redis_server.url).stats().auth is None
        await raw.publish(tr.channel_for("t"), b"garbage")
        await raw.publish(tr.channel_for("t"), bytes(100))
        await tr.publish("t", b"genuine")
        with anyio.fail_after(TIMEOUT):
            assert await anext(messages) == b"genuine"
        stats = tr.stats()
    assert stats.messages_received == 3
    assert stats.auth == AuthStats(sealed=1, opened=1, refused=2, truncated=1, unknown_version=1)


async def test_a_message_sealed_for_one_channel_fails_on_another(
    redis_server: RedisServer,
) -> None:
    """Keys are per channel: a captured message re-published elsewhere does not verify."""
    prefix = _prefix()
    async with (
        RedisTransport(redis_server.url, channel_prefix=prefix, secret=SECRET) as tr,
        aioredis.Redis.from_url(redis_server.url) as raw,
        raw.pubsub() as tap,
        tr.subscribe("b") as on_b,
    ):
        await tap.subscribe(tr.channel_for("a"))
        await tr.publish("a", b"for a")
        captured = await _next_message(tap)
        await raw.publish(tr.channel_for("b"), captured)
        await tr.publish("b", b"for b")
        with anyio.fail_after(TIMEOUT):
            assert await anext(on_b) == b"for b"
        assert tr.stats().auth.bad_tag == 1  # type: ignore[union-attr]


# --- the intruder ---------------------------------------------------------------------------

GHOSTS_WITH_SECRET = 1000  # the attack: 1,000 heartbeats claiming a million keys
# Without a secret the same heartbeats are processed (issue 13 measured about 1 GB for
# 1,000 of them), so the control run sends few: enough to show that they get in.
GHOSTS_WITHOUT_SECRET = 5
CLAIMED_KEYS = 1_000_000


async def _next_message(pubsub: Any) -> bytes:
    with anyio.fail_after(TIMEOUT):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data


def _payload(message: bytes, sealed: bool) -> bytes:
    return message[HEADER_SIZE:-TAG_SIZE] if sealed else message


def _forgeries(ghosts: int) -> list[tuple[str, bytes]]:
    """(topic, message) pairs a raw client publishes: garbage, ghost replicas claiming a
    million keys (store hellos and liveness beacons), a sync request, and a forged
    write, addressed to the victim's broadcast topics and inbox."""
    now_ms = int(time.time() * 1000)
    broadcast, inbox = f"ps/{NAME}", f"ps/{NAME}#victim"
    forged: list[tuple[str, bytes]] = [
        (broadcast, b""),
        (broadcast, b"\x00garbage"),
        (inbox, os.urandom(200)),
        (broadcast, bytes(HEADER_SIZE + TAG_SIZE)),
    ]
    for i in range(ghosts):
        ghost = f"ghost-{i}"
        forged.append(
            (broadcast, wire.encode(wire.Hello(ghost, i, now_ms, True, False, CLAIMED_KEYS)))
        )
        forged.append(
            (
                "pl/live",
                wire.encode(wire.Alive(ghost, i, 0, now_ms, bytes(16), now_ms, True, 1000)),
            )
        )
    # The intruder makes itself known, then asks the victim for everything it holds.
    forged.append((broadcast, wire.encode(wire.Hello("intruder", 1, now_ms, True, False, 1))))
    forged.append((inbox, wire.encode(wire.SyncRequest("intruder", 1, 7, 0, None, b""))))
    return forged


@dataclass
class Outcome:
    """What the intruder achieved against the victim."""

    snapshot: dict[str, Any]
    members: frozenset[str]
    members_after_replay: frozenset[str]
    sync_answers: int
    memory_growth: int
    auth: AuthStats | None
    forgeries: int


@asynccontextmanager
async def _transport(url: str, prefix: str, secret: str | None) -> AsyncIterator[RedisTransport]:
    async with RedisTransport(
        url, channel_prefix=prefix, secret=secret, reconnect_backoff=(0.01, 0.2)
    ) as tr:
        yield tr


async def _attack(url: str, *, secret: str | None, ghosts: int) -> Outcome:
    prefix = _prefix()
    sealed = secret is not None
    options: dict[str, Any] = {"hydrate_timeout": 1.0, "heartbeat_interval": 0.2}
    async with AsyncExitStack() as stack:
        raw = await stack.enter_async_context(aioredis.Redis.from_url(url))
        tap = await stack.enter_async_context(raw.pubsub())
        answers = await stack.enter_async_context(raw.pubsub())
        victim_tr = await stack.enter_async_context(_transport(url, prefix, secret))
        peer_tr = await stack.enter_async_context(_transport(url, prefix, secret))
        await tap.subscribe(victim_tr.channel_for("pl/live"))
        await answers.subscribe(victim_tr.channel_for(f"ps/{NAME}#intruder"))
        victim = await stack.enter_async_context(
            Store[Any](NAME, victim_tr, node_id="victim", **options)
        )
        peer_stack = AsyncExitStack()  # closed early, when the peer leaves
        stack.push_async_exit(peer_stack)
        peer = await peer_stack.enter_async_context(
            Store[Any](NAME, peer_tr, node_id="peer", **options)
        )
        await victim.set("k", "legit")
        await eventually(lambda: peer.get("k") == "legit")
        await eventually(lambda: victim.members() == {"victim", "peer"})

        # Capture one of the peer's liveness beacons as it crosses Redis.
        while True:
            captured = await _next_message(tap)
            try:
                message = wire.decode(_payload(captured, sealed), max_size=1 << 20)
            except PodshareError:  # not a whole message on its own: keep looking
                continue
            if isinstance(message, wire.Alive) and message.sender == "peer":
                break
        await tap.unsubscribe()  # the test's own client must not buffer the flood

        forged = _forgeries(ghosts)  # the attacker's memory, not the victim's
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for topic, data in forged:
                await raw.publish(victim_tr.channel_for(topic), data)
            # An intruder running podshare itself, without the secret, writes a key.
            async with (
                _transport(url, prefix, None) as intruder_tr,
                Store[Any](NAME, intruder_tr, node_id="writer", hydrate_timeout=0) as intruder,
            ):
                await intruder.set("k", "pwned")
                await intruder.set("pwned", True)
            # A fence: a legitimate write published after every forgery; once it arrived,
            # the victim's transport has read (and judged) everything sent before it.
            await peer.set("fence", 1)
            await eventually(lambda: victim.get("fence") == 1)
            if not sealed:
                await eventually(lambda: victim.get("pwned") is True)
                await eventually(lambda: f"ghost-{ghosts - 1}" in victim.members())
                await eventually(lambda: "intruder" in victim.members())
            members = victim.members()
            growth = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        # The peer leaves (its goodbye: the victim marks it down at once); then the
        # intruder replays the beacon it captured while the peer was alive.
        await peer_stack.aclose()
        await eventually(lambda: "peer" not in victim.members())
        replays = 5
        for _ in range(replays):
            await raw.publish(victim_tr.channel_for("pl/live"), captured)
        if sealed:
            auth = victim_tr.stats
            await eventually(lambda: auth().auth.replayed >= replays)  # type: ignore[union-attr]
        # A fence on the liveness topic: once the victim's own beacon came back, the
        # replays before it were read and judged.
        await victim.set("fence", 2)
        await eventually(lambda: victim.get("fence") == 2)
        return Outcome(
            snapshot=victim.snapshot(),
            members=members,
            members_after_replay=victim.members(),
            sync_answers=await _drain(answers),
            memory_growth=growth,
            auth=victim_tr.stats().auth,
            forgeries=len(forged),
        )


async def _drain(pubsub: Any) -> int:
    """Messages waiting on ``pubsub``: read until nothing arrives for half a second."""
    count = 0
    while True:
        message = await pubsub.get_message(timeout=0.5)
        if message is None:
            return count
        if message["type"] == "message":
            count += 1


async def test_with_a_secret_forgeries_and_replays_change_nothing(
    redis_server: RedisServer,
) -> None:
    outcome = await _attack(redis_server.url, secret=SECRET, ghosts=GHOSTS_WITH_SECRET)
    assert outcome.snapshot == {"k": "legit", "fence": 2}
    assert outcome.members == {"victim", "peer"}
    assert outcome.members_after_replay == {"victim"}
    assert outcome.sync_answers == 0
    auth = outcome.auth
    assert auth is not None
    # Every raw forgery, and whatever the secretless store sent, was refused...
    assert auth.refused >= outcome.forgeries + 5
    assert auth.replayed == 5
    # Plain podshare messages: most are shorter than a header and tag, the rest have no
    # version byte of ours; none got as far as a MAC computation.
    assert auth.truncated + auth.unknown_version >= GHOSTS_WITH_SECRET
    assert auth.bad_tag == auth.unknown_key == 0
    # ...and cost no memory to speak of: about 130 KB was measured whether 0, 1,000 or
    # 5,000 ghosts were sent (the secretless store's own traffic and objects).
    assert outcome.memory_growth < 1_000_000, outcome.memory_growth


async def test_without_a_secret_the_same_forgeries_get_in(redis_server: RedisServer) -> None:
    """The control: proves the forgeries above are real attacks, so that test can fail."""
    outcome = await _attack(redis_server.url, secret=None, ghosts=GHOSTS_WITHOUT_SECRET)
    assert outcome.snapshot.get("pwned") is True
    assert outcome.snapshot.get("k") == "pwned"
    assert {f"ghost-{i}" for i in range(GHOSTS_WITHOUT_SECRET)} <= outcome.members
    assert "intruder" in outcome.members
    # A replayed beacon of a node that said goodbye changes nothing even without a
    # secret: the goodbye (its token proven) ends that life for good.
    assert "peer" not in outcome.members_after_replay
    assert outcome.sync_answers >= 1  # the victim answered the forged sync request
    assert outcome.auth is None
