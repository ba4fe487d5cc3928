"""NatsTransport against a real nats-server: conformance, errors, reconnects, JetStream."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from nats.js.api import StorageType, StreamConfig

from podshare.exceptions import MessageTooLarge, TransportError
from podshare.testing import check_transport
from podshare.transport import NatsRemote, NatsTransport
from podshare.transport.auth import OVERHEAD
from podshare.transport.base import EchoSkipping
from podshare.transport.nats import default_stream_config
from tests._nats import NatsServer, nats_binary
from tests._support import check_echo_skipping, eventually, free_port

pytestmark = pytest.mark.integration

SECRET = "nats transport test secret, 32 bytes+"
TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    """nats-py is asyncio-only, so the NATS transport runs under asyncio alone."""
    return "asyncio"


@pytest.mark.anyio
async def test_conformance(nats_server: NatsServer) -> None:
    await check_transport(lambda: NatsTransport(nats_server.url))


@pytest.mark.anyio
async def test_conformance_with_secret(nats_server: NatsServer) -> None:
    await check_transport(lambda: NatsTransport(nats_server.url, secret=SECRET))


@pytest.mark.anyio
async def test_conformance_with_jetstream(nats_server: NatsServer) -> None:
    # The store family's topics go through a stream; the checks' topics are plain.
    await check_transport(
        lambda: NatsTransport(nats_server.url, jetstream=True), topic_prefix="ps/conformance"
    )


async def _outage(server: NatsServer, pub: NatsTransport, sub: NatsTransport) -> None:
    """Kill the server, restart it once both noticed; return once ``pub`` is back."""
    server.kill()
    await eventually(
        lambda: not pub.stats().connected and not sub.stats().connected, timeout=TIMEOUT
    )
    server.start()
    await eventually(lambda: pub.stats().connected, timeout=TIMEOUT)
    with anyio.fail_after(TIMEOUT):
        await pub.wait_ready()


async def _receive(messages: AsyncIterator[bytes], count: int) -> list[bytes]:
    with anyio.fail_after(TIMEOUT):
        return [await anext(messages) for _ in range(count)]


@pytest.mark.anyio
async def test_unreachable_server_names_the_server_and_the_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    errors: list[BaseException] = []
    with (
        caplog.at_level(logging.ERROR, logger="podshare.transport.nats"),
        pytest.raises(TransportError, match=rf"127\.0\.0\.1:{port}.*refused"),
    ):
        async with NatsTransport(f"nats://127.0.0.1:{port}", timeout=0.5, on_error=errors.append):
            pass
    # The first connect failing is that one error, not also a "gave up reconnecting".
    assert not [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert not [e for e in errors if "gave up" in str(e)]


@pytest.mark.anyio
async def test_an_unknown_host_is_named_with_the_lookup_failure() -> None:
    with pytest.raises(
        TransportError, match=r"no-such-host\.invalid:4222 within [0-9.]+ s: (?!Unknown error)"
    ):
        async with NatsTransport("nats://no-such-host.invalid:4222", timeout=2):
            pass


@pytest.mark.anyio
async def test_credentials_are_passed_and_checked(tmp_path: Path) -> None:
    server = NatsServer(
        nats_binary(), tmp_path, jetstream=False, extra=["--user", "pod", "--pass", "right"]
    )
    server.start()
    try:
        with pytest.raises(TransportError, match=r"[Aa]uthorization"):
            async with NatsTransport(server.url, user="pod", password="wrong", timeout=0.5):
                pass
        async with (
            NatsTransport(server.url, user="pod", password="right") as tr,
            tr.subscribe("t") as messages,
        ):
            await tr.publish("t", b"authorised")
            assert await _receive(messages, 1) == [b"authorised"]
    finally:
        server.kill()


@pytest.mark.anyio
async def test_max_message_size_follows_the_servers_max_payload(tmp_path: Path) -> None:
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 4096\n")
    server = NatsServer(nats_binary(), tmp_path, jetstream=False, extra=["-c", str(config)])
    server.start()
    try:
        async with NatsTransport(server.url, secret=SECRET) as tr:
            # The server's limit, less what the MAC adds to every message.
            assert tr.max_message_size == 4096 - OVERHEAD
            async with tr.subscribe("t") as messages:
                await tr.publish("t", bytes(tr.max_message_size))
                assert await _receive(messages, 1) == [bytes(tr.max_message_size)]
            with pytest.raises(MessageTooLarge):
                await tr.publish("t", bytes(tr.max_message_size + 1))
    finally:
        server.kill()


@pytest.mark.anyio
async def test_jetstream_needs_a_server_with_jetstream(tmp_path: Path) -> None:
    server = NatsServer(nats_binary(), tmp_path, jetstream=False)
    server.start()
    try:
        with pytest.raises(TransportError, match="no JetStream"):
            async with NatsTransport(server.url, jetstream=True, timeout=1.0):
                pass
    finally:
        server.kill()


@pytest.mark.anyio
async def test_a_restart_reports_a_gap_and_the_callbacks(restartable_nats: NatsServer) -> None:
    connects: list[NatsRemote] = []
    disconnects: list[NatsRemote] = []
    errors: list[BaseException] = []
    async with (
        NatsTransport(
            restartable_nats.url,
            reconnect_time_wait=0.05,
            on_connect=lambda remote, _inbound: connects.append(remote),
            on_disconnect=lambda remote, _inbound: disconnects.append(remote),
            on_error=errors.append,
        ) as tr,
        tr.subscribe("t") as messages,
    ):
        gap = anyio.Event()
        tr.add_gap_listener(gap.set)
        restartable_nats.kill()
        await eventually(lambda: not tr.stats().connected, timeout=TIMEOUT)
        with pytest.raises(TransportError, match="not connected"):
            await tr.publish("t", b"lost")
        restartable_nats.start()
        with anyio.fail_after(TIMEOUT):
            await gap.wait()
            await tr.wait_ready()
        await tr.publish("t", b"after")
        assert await _receive(messages, 1) == [b"after"]
        stats = tr.stats()
        assert (stats.reconnects, stats.gaps_reported, stats.connected) == (1, 1, True)
        assert stats.publish_errors >= 1
    address = f"127.0.0.1:{restartable_nats.port}"
    assert [str(remote) for remote in connects] == [address, address]
    assert [str(remote) for remote in disconnects] == [address, address]  # lost, closed
    assert any(
        isinstance(e, TransportError) and f"lost the NATS connection to {address}" in str(e)
        for e in errors
    )


@pytest.mark.anyio
async def test_jetstream_replays_what_a_reconnecting_subscriber_missed(
    restartable_nats: NatsServer,
) -> None:
    """The publisher is back first and publishes; the subscriber, back later, receives
    those messages by replay, in order, and reports no gap."""
    async with (
        NatsTransport(restartable_nats.url, jetstream=True, reconnect_time_wait=0.05) as pub,
        # Reconnects slowly: its first attempt comes 2 s after it connected, long after
        # the publisher is back and has published.
        NatsTransport(restartable_nats.url, jetstream=True, reconnect_time_wait=2.0) as sub,
        sub.subscribe("ps/replay") as messages,
    ):
        gaps = []
        sub.add_gap_listener(lambda: gaps.append("gap"))
        await pub.publish("ps/replay", b"m0")
        assert await _receive(messages, 1) == [b"m0"]
        await _outage(restartable_nats, pub, sub)
        assert not sub.stats().connected
        for i in range(1, 6):
            await pub.publish("ps/replay", b"m%d" % i)  # acknowledged by the stream
        assert await _receive(messages, 5) == [b"m%d" % i for i in range(1, 6)]
        with anyio.fail_after(TIMEOUT):
            await sub.wait_ready()
        stats = sub.stats()
        assert (stats.reconnects, stats.replays, stats.gaps_reported) == (1, 1, 0)
        assert gaps == []
        await pub.publish("ps/replay", b"live")
        assert await _receive(messages, 1) == [b"live"]


@pytest.mark.anyio
async def test_jetstream_reports_a_gap_when_the_stream_no_longer_holds_it(
    restartable_nats: NatsServer,
) -> None:
    limits = StreamConfig(max_msgs=3, storage=StorageType.FILE)
    async with (
        NatsTransport(restartable_nats.url, jetstream=limits, reconnect_time_wait=0.05) as pub,
        NatsTransport(restartable_nats.url, jetstream=limits, reconnect_time_wait=2.0) as sub,
        sub.subscribe("ps/aged") as messages,
    ):
        gap = anyio.Event()
        sub.add_gap_listener(gap.set)
        await pub.publish("ps/aged", b"m0")
        assert await _receive(messages, 1) == [b"m0"]
        await _outage(restartable_nats, pub, sub)
        for i in range(1, 11):
            await pub.publish("ps/aged", b"m%d" % i)  # the stream keeps the last 3
        with anyio.fail_after(TIMEOUT):
            await gap.wait()
        # What the stream still held is replayed; the store's sync covers the rest.
        assert await _receive(messages, 3) == [b"m8", b"m9", b"m10"]
        stats = sub.stats()
        assert (stats.reconnects, stats.replays, stats.gaps_reported) == (1, 0, 1)


@pytest.mark.anyio
async def test_jetstream_subjects_and_streams(nats_server: NatsServer) -> None:
    async with NatsTransport(nats_server.url, jetstream=True, subject_prefix="app.x") as tr:
        stream = tr.stream_for("ps/orders")
        assert stream is not None
        assert tr.stream_for("ps/orders#pod-1") is None
        assert tr.stream_for("pl/live") is None
        async with tr.subscribe("ps/orders") as messages:
            await tr.publish("ps/orders", b"stored")
            assert await _receive(messages, 1) == [b"stored"]
        info = await tr.client.jetstream().stream_info(stream)
        assert info.config.subjects == ["app.x.ps.orders"]
        assert info.config.max_msgs == default_stream_config().max_msgs
        assert info.state.messages == 1


@pytest.mark.anyio
async def test_cancelled_publishes_leave_the_connection_working(nats_server: NatsServer) -> None:
    """A publish cancelled while it waits for the server must not break the client (a
    flush given up on used to leave a cancelled future that stopped nats-py's reader)."""
    async with (
        NatsTransport(nats_server.url) as tr,
        NatsTransport(nats_server.url) as other,
        tr.subscribe("t") as messages,
    ):
        for _ in range(50):
            with anyio.move_on_after(0):
                await tr.publish("t", b"cancelled")
        for _ in range(50):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await tr.publish("t", b"cancelled")
        await other.publish("t", b"still delivered")
        with anyio.fail_after(TIMEOUT):
            async for message in messages:
                if message == b"still delivered":
                    break
        await tr.publish("t", b"and published")
        with anyio.fail_after(TIMEOUT):
            async for message in messages:
                if message == b"and published":
                    break


@pytest.mark.anyio
async def test_closing_ends_open_subscriptions(nats_server: NatsServer) -> None:
    async with NatsTransport(nats_server.url) as tr, tr.subscribe("t") as messages:
        await tr.aclose()
        with anyio.fail_after(TIMEOUT):
            assert [message async for message in messages] == []


@pytest.mark.anyio
@pytest.mark.parametrize("jetstream", [False, True], ids=["core", "jetstream"])
@pytest.mark.parametrize("secret", [None, SECRET], ids=["plain", "secret"])
async def test_subscribe_skipping_leaves_out_only_its_own_messages(
    nats_server: NatsServer, jetstream: bool, secret: str | None
) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    async with (
        NatsTransport(
            nats_server.url, subject_prefix=prefix, secret=secret, jetstream=jetstream
        ) as mine,
        NatsTransport(
            nats_server.url, subject_prefix=prefix, secret=secret, jetstream=jetstream
        ) as theirs,
    ):
        assert isinstance(mine, EchoSkipping)
        # A store's broadcast topic: the one a JetStream stream carries.
        topic = "ps/echo-skip"
        assert (mine.stream_for(topic) is not None) == jetstream
        await check_echo_skipping(mine, theirs, topic)
        # A skipped message still advanced the consumer's sequence: no resume, no gap.
        stats = mine.stats()
        assert (stats.consumers_resumed, stats.gaps_reported, stats.messages_dropped) == (0, 0, 0)
        if secret is not None:
            assert stats.auth is not None
            assert stats.auth.refused == 0


@pytest.mark.anyio
async def test_a_subscriber_that_falls_behind_loses_messages_and_a_gap_is_reported(
    nats_server: NatsServer,
) -> None:
    errors: list[BaseException] = []
    gaps: list[None] = []
    async with (
        NatsTransport(
            nats_server.url,
            subject_prefix=f"test-{secrets.token_hex(4)}",
            subscription_buffer=1,
            on_error=errors.append,
        ) as tr,
        tr.subscribe("t") as slow,
        tr.subscribe("t") as fast,
    ):
        tr.add_gap_listener(lambda: gaps.append(None))
        for i in range(3):
            await tr.publish("t", b"%d" % i)  # back once the server sent it to both
            assert await _receive(fast, 1) == [b"%d" % i]
        assert await _receive(slow, 1) == [b"0"]
        assert tr.stats().messages_dropped == 2
        assert len(gaps) == 1  # once per episode, not once per dropped message
        await eventually(lambda: len(errors) == 1, timeout=TIMEOUT)
        # Caught up: the next message is delivered, and a later drop is a new episode.
        await tr.publish("t", b"3")
        assert await _receive(slow, 1) == [b"3"]
        assert await _receive(fast, 1) == [b"3"]
    assert isinstance(errors[0], TransportError)
    assert "fell 1 messages behind" in str(errors[0])
