"""TcpTransport on real loopback sockets: mesh, tie-break, auth, TLS, hostile peers, stalls."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.lowlevel
import pytest
import trustme

from podshare.exceptions import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    MessageTooLarge,
    PodshareError,
    TransportError,
)
from podshare.testing import check_transport
from podshare.transport import (
    DNSDiscoverer,
    EchoSkipping,
    GapReporting,
    PeerConnection,
    TcpStats,
    TcpTransport,
    Transport,
)
from podshare.transport._callbacks import CallbackRunner
from podshare.transport._framing import (
    FRAME_OVERHEAD,
    MAC_SIZE,
    MAX_ANNOUNCED_TOPICS,
    PREAMBLE,
    Barrier,
    BarrierAck,
    Message,
    Opened,
    PeerProtocol,
    Ping,
    State,
    TopicAdded,
    TopicsComplete,
    encode_frame,
    encode_message_body,
)
from tests._support import check_echo_skipping, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 10
# TcpTransport announces connection changes to no public listener, so the conditions
# on its connections and counters below are polled by ``eventually`` (every 5 ms).


@asynccontextmanager
async def mesh(count: int, **options: object) -> AsyncIterator[list[TcpTransport]]:
    """``count`` nodes; each dials every node started before it; all connected."""
    async with AsyncExitStack() as stack:
        nodes: list[TcpTransport] = []
        for i in range(count):
            node = TcpTransport(
                peers=[n.address for n in nodes],
                node_id=f"node-{i}",
                **options,  # type: ignore[arg-type]
            )
            nodes.append(await stack.enter_async_context(node))
        await eventually(lambda: all(len(n.connections) == count - 1 for n in nodes))
        yield nodes


async def receive(messages: AsyncIterator[bytes]) -> bytes:
    with anyio.fail_after(TIMEOUT):
        return await anext(messages)


async def raw_client(address: str) -> anyio.abc.SocketStream:
    host, port = address.rsplit(":", 1)
    return await anyio.connect_tcp(host, int(port))


async def closed_by_server(stream: anyio.abc.ByteStream) -> bool:
    """Read until the server closes the connection; True once it did."""
    with anyio.fail_after(TIMEOUT):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True
    return False


class RawPeer:
    """A hand-driven peer on a plain socket: the sans-I/O protocol, no TcpTransport."""

    def __init__(self, stream: anyio.abc.SocketStream, proto: PeerProtocol) -> None:
        self.stream = stream
        self.proto = proto
        self._backlog: list[object] = []
        #: What the node sent on connecting, up to and including its readiness barrier.
        self.initial: list[object] = []

    @classmethod
    async def connect(
        cls,
        address: str,
        node_id: str,
        secret: bytes | None = None,
        *,
        topics: tuple[str, ...] = (),
        announces_topics: bool = True,
        settle: bool = True,
    ) -> RawPeer:
        """Connect, complete the handshake, announce ``topics`` and (``settle``) answer the
        node's readiness barrier."""
        return await cls.over(
            await raw_client(address),
            node_id,
            secret,
            topics=topics,
            announces_topics=announces_topics,
            settle=settle,
        )

    @classmethod
    async def over(
        cls,
        stream: anyio.abc.SocketStream,
        node_id: str,
        secret: bytes | None = None,
        *,
        topics: tuple[str, ...] = (),
        announces_topics: bool = True,
        settle: bool = True,
    ) -> RawPeer:
        """Like [`connect`][], on a stream already open (dialed or accepted)."""
        nonce = node_id.encode().ljust(16, b"-")[:16]
        proto = PeerProtocol(node_id, nonce=nonce, secret=secret, announces_topics=announces_topics)
        peer = cls(stream, proto)
        await peer.stream.send(peer.proto.data_to_send())
        with anyio.fail_after(TIMEOUT):
            while peer.proto.state is not State.OPEN:
                peer._backlog += peer.proto.receive_data(await peer.stream.receive())
                if out := peer.proto.data_to_send():
                    await peer.stream.send(out)
            if announces_topics:
                for topic in topics:
                    await peer.send(PeerProtocol.topic_added_body(topic))
                await peer.send(PeerProtocol.topics_complete_body())
            if settle:
                while True:
                    event = await peer.next_event()
                    peer.initial.append(event)
                    if isinstance(event, Barrier):
                        await peer.send(PeerProtocol.barrier_ack_body(event.barrier_id))
                        break
        return peer

    async def send(self, body: bytes) -> None:
        await self.stream.send(self.proto.encode(body))

    async def next_event(self) -> object:
        """The next event other than a ping (the rest of a chunk is kept for later)."""
        with anyio.fail_after(TIMEOUT):
            while True:
                while self._backlog:
                    event = self._backlog.pop(0)
                    if not isinstance(event, Opened | Ping):
                        return event
                self._backlog += self.proto.receive_data(await self.stream.receive())


# -- the contract ----------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "shared"], ids=["plain", "secret"])
async def test_conformance(secret: str | None) -> None:
    created: list[TcpTransport] = []

    @asynccontextmanager
    async def factory() -> AsyncIterator[Transport]:
        transport = TcpTransport(peers=[t.address for t in created], secret=secret)
        async with transport:
            created.append(transport)
            await eventually(lambda: len(transport.connections) == len(created) - 1)
            yield transport

    await check_transport(factory, receive_timeout=TIMEOUT)


async def test_message_reaches_every_node_and_the_publisher_once() -> None:
    async with mesh(4) as nodes:
        assert isinstance(nodes[0], GapReporting)
        async with AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(n.subscribe("ps/t")) for n in nodes]
            sent = [b"%d" % i for i in range(20)] + [b"end-%d" % i for i in range(4)]
            for i, message in enumerate(sent):
                await nodes[i % 4].publish("ps/t", message)
            for sub in subs:
                got = [await receive(sub)]
                while not all(end in got for end in sent[-4:]):
                    got.append(await receive(sub))
                assert sorted(got) == sorted(sent)


@pytest.mark.parametrize("secret", [None, "shared"], ids=["plain", "secret"])
async def test_bursts_reach_every_subscribed_peer_whole_with_per_connection_frames(
    secret: str | None,
) -> None:
    # A publish frames its message once for every peer (with a secret, each connection
    # still gets its own MAC and sequence number): sequential publishes arrive in order,
    # a burst from many tasks (queued before any writer runs, sent in joined writes)
    # arrives whole, a peer that does not subscribe gets none, and no frame fails its MAC.
    async with mesh(4, secret=secret) as nodes:
        writer, *peers = nodes
        async with AsyncExitStack() as stack:
            subs = [await stack.enter_async_context(p.subscribe("ps/t")) for p in peers[:2]]
            # Entering a subscription waits for each peer's barrier answer, which
            # follows the peer's reading of the subscription's announcement.
            assert await writer.remote_subscribers("ps/t") == 2
            filtered = writer.stats().messages_filtered
            sent = [b"m%d" % i for i in range(100)]
            for message in sent:
                await writer.publish("ps/t", message)
            for sub in subs:
                assert [await receive(sub) for _ in sent] == sent
            burst = [b"b%d" % i for i in range(300)]
            async with anyio.create_task_group() as tg:
                for message in burst:
                    tg.start_soon(writer.publish, "ps/t", message)
            for sub in subs:
                assert sorted([await receive(sub) for _ in burst]) == sorted(burst)
        assert writer.stats().messages_filtered - filtered == len(sent) + len(burst)
        assert sum(n.stats().auth_failures + n.stats().protocol_errors for n in nodes) == 0


async def test_publish_validates_and_refuses_when_closed() -> None:
    async with TcpTransport(max_frame_size=FRAME_OVERHEAD + 100) as node:
        assert node.max_message_size == 100
        with pytest.raises(MessageTooLarge):
            await node.publish("t", bytes(101))
        with pytest.raises(ConfigurationError):
            await node.publish("", b"x")
        async with node.subscribe("t") as messages:
            await node.aclose()
            with pytest.raises(StopAsyncIteration):
                await receive(messages)
        with pytest.raises(ClosedError):
            await node.publish("t", b"x")
        with pytest.raises(ClosedError):
            async with node.subscribe("t"):
                pass
    with pytest.raises(ClosedError):
        await TcpTransport().publish("t", b"x")


async def test_an_error_in_the_block_leaves_unwrapped_and_closes_everything() -> None:
    with pytest.raises(KeyError):  # not an ExceptionGroup
        async with mesh(2) as (a, b):
            raise KeyError("boom")
    with pytest.raises(ClosedError):
        await a.publish("t", b"x")
    assert a.connections == {}
    assert b.connections == {}


async def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        TcpTransport(listen="nope")
    with pytest.raises(ConfigurationError):
        TcpTransport(peers=["host-without-port"])
    with pytest.raises(ConfigurationError):
        TcpTransport(secret="")
    with pytest.raises(ConfigurationError):
        TcpTransport(reconnect_backoff=(1.0, 0.5))
    for bad in (
        {"stall_timeout": 0},
        {"stall_timeout": float("inf")},
        {"handshake_timeout": -1},
        {"keepalive": 0},
        {"max_pending_handshakes": 0},
        {"max_pending_per_source": 1.5},
        {"close_timeout": -1},
        {"on_connect": "not callable"},
        {"on_error": 42},
    ):
        with pytest.raises(ConfigurationError):
            TcpTransport(**bad)
    async with TcpTransport() as node:
        with pytest.raises(ConfigurationError):
            node.add_peer("1.2.3.4")


async def test_listen_failure_is_a_transport_error() -> None:
    async with TcpTransport() as first:
        with pytest.raises(TransportError):
            async with TcpTransport(listen=first.address):
                pass


async def test_unsubscribed_topics_get_nothing_and_close_ends_iterators() -> None:
    async with mesh(2) as (a, b):
        async with b.subscribe("t") as messages:
            await a.publish("t", b"1")
            assert await receive(messages) == b"1"
        assert "t" not in b._subs  # nothing left behind
        await a.publish("t", b"lost")
        async with b.subscribe("t") as messages:
            await a.publish("t", b"2")
            assert await receive(messages) == b"2"


async def test_a_slow_subscriber_loses_messages_and_a_gap_is_reported() -> None:
    async with TcpTransport(subscription_buffer=2) as node, node.subscribe("t") as messages:
        gaps: list[None] = []
        node.add_gap_listener(lambda: gaps.append(None))
        for i in range(5):
            # A bytearray on purpose: subscribers must still receive bytes.
            await node.publish("t", bytearray(b"%d" % i))  # type: ignore[arg-type]
        assert node.stats().messages_dropped == 3
        assert len(gaps) == 3
        got = [await receive(messages), await receive(messages)]
        assert got == [b"0", b"1"]
        assert all(type(m) is bytes for m in got)


# -- one connection per pair -----------------------------------------------------------


async def test_both_sides_dialing_keep_exactly_one_connection() -> None:
    async with (
        TcpTransport(node_id="aaa") as a,
        TcpTransport(node_id="bbb", peers=[a.address]) as b,
    ):
        a.add_peer(b.address)  # now both dial each other
        await eventually(
            lambda: (
                a.stats().duplicates_closed + b.stats().duplicates_closed >= 1
                and len(a.connections) == 1
                and len(b.connections) == 1
            )
        )
        # Both sides keep the connection dialed by the smaller node id ("aaa").
        assert a.connections["bbb"].outbound
        assert not b.connections["aaa"].outbound
        opened = a.stats().connections_opened, b.stats().connections_opened
        async with a.subscribe("t") as on_a, b.subscribe("t") as on_b:
            for i in range(50):
                await a.publish("t", b"a%d" % i)
                await b.publish("t", b"b%d" % i)
            await a.publish("t", b"end-a")
            await b.publish("t", b"end-b")
            for messages in (on_a, on_b):
                got: list[bytes] = []
                while not (b"end-a" in got and b"end-b" in got):
                    got.append(await receive(messages))
                assert len(got) == len(set(got)) == 102  # nothing twice, nothing lost
        assert (a.stats().connections_opened, b.stats().connections_opened) == opened


async def test_everyone_dialing_everyone_settles_on_one_connection_per_pair() -> None:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(TcpTransport(node_id=f"n{i}")) for i in range(5)]
        for node in nodes:  # what DNS discovery does: every node dials every other
            for other in nodes:
                if other is not node:
                    node.add_peer(other.address)

        def settled() -> bool:
            # Four connections each, and each the one the smaller node id dialed.
            return all(
                len(n.connections) == 4
                and all(info.outbound == (n.node_id < peer) for peer, info in n.connections.items())
                for n in nodes
            )

        await eventually(settled)
        async with AsyncExitStack() as subs:
            inboxes = [await subs.enter_async_context(n.subscribe("t")) for n in nodes]
            opened = [n.stats().connections_opened for n in nodes]
            for i, node in enumerate(nodes):
                await node.publish("t", b"%d" % i)
            for inbox in inboxes:
                got = sorted([await receive(inbox) for _ in nodes])
                assert got == [b"%d" % i for i in range(5)]
            assert [n.stats().connections_opened for n in nodes] == opened  # no flapping


async def test_peer_exchange_completes_a_chain_into_a_mesh() -> None:
    async with (
        TcpTransport(node_id="a") as a,
        TcpTransport(node_id="b", peers=[a.address]) as b,
        TcpTransport(node_id="c", peers=[b.address]) as c,  # c only knows b
    ):
        await eventually(lambda: all(len(n.connections) == 2 for n in (a, b, c)))
        assert c.discovered == (a.address,) or a.discovered == (c.address,)
        assert c.peers == (b.address,)  # learned addresses are not configured ones
        async with a.subscribe("t") as messages:
            await c.publish("t", b"direct")
            assert await receive(messages) == b"direct"


async def test_without_peer_exchange_a_chain_stays_a_chain() -> None:
    async with (
        TcpTransport(node_id="a", peer_exchange=False) as a,
        TcpTransport(node_id="b", peers=[a.address], peer_exchange=False) as b,
        TcpTransport(node_id="c", peers=[b.address], peer_exchange=False) as c,
    ):
        await eventually(
            lambda: (len(a.connections), len(b.connections), len(c.connections)) == (1, 2, 1)
        )
        # Both ends of the chain are up; with peer exchange, c would be dialing a by now.
        assert a.discovered == c.discovered == ()
        assert set(a.connections) == {"b"}
        assert set(c.connections) == {"b"}


async def test_learned_addresses_that_stop_answering_are_forgotten() -> None:
    async with TcpTransport(node_id="a", reconnect_backoff=(0.01, 0.02)) as a:
        async with TcpTransport(node_id="gone") as gone:
            gone_address = gone.address
        raw = await RawPeer.connect(a.address, "raw")
        async with raw.stream:
            await raw.send(PeerProtocol.peers_body([gone_address, "not an address"]))
            await eventually(lambda: a.discovered == (gone_address,))
            await eventually(lambda: a.discovered == ())
            assert a.stats().connection_attempts_failed >= 3


async def test_dialing_itself_is_detected_and_not_repeated() -> None:
    async with TcpTransport() as node:
        node.add_peer(node.address)
        await eventually(lambda: node.address in node.self_addresses)
        assert node.connections == {}
        assert node.stats().protocol_errors == 0
        assert node.stats().self_hellos == 0  # its own loop, not another node with its id


# -- reconnects and gaps ---------------------------------------------------------------


async def test_gap_listeners_fire_on_each_connection_until_removed() -> None:
    async with TcpTransport(node_id="a") as a:
        gaps: list[str] = []
        remove = a.add_gap_listener(lambda: gaps.append("gap"))
        async with TcpTransport(node_id="b", peers=[a.address]):
            await eventually(lambda: "b" in a.connections)
            assert gaps == ["gap"]
        remove()
        async with TcpTransport(node_id="c", peers=[a.address]):
            await eventually(lambda: "c" in a.connections)
        assert gaps == ["gap"]
        assert a.stats().gaps_reported == 2


async def test_redial_after_peer_restart_on_same_port() -> None:
    async with TcpTransport(node_id="a", reconnect_backoff=(0.01, 0.1)) as a:
        gaps: list[None] = []
        a.add_gap_listener(lambda: gaps.append(None))
        async with TcpTransport(node_id="b", peers=[a.address]) as b:
            address = b.address
            await eventually(lambda: "b" in a.connections)
        await eventually(lambda: not a.connections)
        a.add_peer(address)  # a now dials b's old address, which is down
        await eventually(lambda: a.stats().connection_attempts_failed >= 1)
        async with TcpTransport(node_id="b", listen=address) as b:
            await eventually(lambda: "b" in a.connections)
            assert len(gaps) >= 2
            async with b.subscribe("t") as messages:
                await a.publish("t", b"x")
                assert await receive(messages) == b"x"


async def test_remove_peer_disconnects_and_add_peer_heals() -> None:
    async with TcpTransport(node_id="b") as b, TcpTransport(node_id="a", peers=[b.address]) as a:
        await eventually(lambda: "b" in a.connections and "a" in b.connections)
        a.remove_peer(b.address)
        assert a.peers == ()
        await eventually(lambda: not a.connections and not b.connections)
        async with a.subscribe("t") as messages:
            await b.publish("t", b"unseen")
            gaps = anyio.Event()
            a.add_gap_listener(gaps.set)
            a.add_peer(b.address)
            with anyio.fail_after(TIMEOUT):
                await gaps.wait()
            await b.publish("t", b"seen")
            assert await receive(messages) == b"seen"


# -- hostile peers ---------------------------------------------------------------------


async def test_wrong_secret_is_rejected_counted_and_never_delivered() -> None:
    async with (
        TcpTransport(node_id="good", secret="s3cret") as good,
        good.subscribe("t") as messages,
        TcpTransport(node_id="ally", secret="s3cret", peers=[good.address]) as ally,
        TcpTransport(
            node_id="evil", secret="guess", peers=[good.address], reconnect_backoff=(5, 5)
        ) as evil,
    ):
        await eventually(lambda: "ally" in good.connections)
        await eventually(lambda: good.stats().auth_failures >= 1)
        await eventually(lambda: evil.stats().auth_failures >= 1)
        assert "evil" not in good.connections
        assert evil.connections == {}
        await evil.publish("t", b"forged")
        await ally.publish("t", b"genuine")
        assert await receive(messages) == b"genuine"


async def test_missing_secret_is_rejected() -> None:
    async with (
        TcpTransport(secret=b"k") as guarded,
        TcpTransport(peers=[guarded.address], reconnect_backoff=(5, 5)) as open_node,
    ):
        await eventually(lambda: guarded.stats().auth_failures >= 1)
        await eventually(lambda: open_node.stats().auth_failures >= 1)
        assert guarded.connections == {}


@pytest.mark.parametrize(
    ("data", "counter"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "protocol_errors"),
        (PREAMBLE + b"\xff\xff\xff\xff", "frames_too_large"),  # claims a 4 GiB frame
        (PREAMBLE + b"\x00\x00\x00\x00", "protocol_errors"),
        (PREAMBLE[:-1] + b"\x07", "protocol_errors"),  # a future protocol version
    ],
)
async def test_garbage_is_rejected_and_counted(data: bytes, counter: str) -> None:
    async with mesh(2) as (node, peer), node.subscribe("t") as messages:
        client = await raw_client(node.address)
        async with client:
            await client.send(data)
            assert await closed_by_server(client)
        await eventually(lambda: getattr(node.stats(), counter) == 1)
        # The node still serves its real peer.
        await peer.publish("t", b"still here")
        assert await receive(messages) == b"still here"


_INTRUDER_HELLO = PeerProtocol("intruder", nonce=b"i" * 16, secret=b"guess").data_to_send()
_FORGED = encode_frame(encode_message_body("t", b"intruder") + bytes(MAC_SIZE))


@pytest.mark.parametrize(
    "data",
    [
        b"\x00" * 64,  # garbage
        PREAMBLE + b"\xff\xff\xff\xff",  # a 4 GiB header
        PREAMBLE + b"\x00\x00\x00\x30\x01partial",  # truncated, then closed
        _INTRUDER_HELLO + _FORGED,  # a message before any proof
        _INTRUDER_HELLO + encode_frame(b"\x02" + bytes(MAC_SIZE)) + _FORGED,  # a wrong proof
    ],
    ids=["garbage", "4GiB-header", "truncated", "message-before-proof", "wrong-proof"],
)
async def test_with_a_secret_no_intruder_frame_reaches_a_subscriber(data: bytes) -> None:
    async with (
        TcpTransport(node_id="node", secret=b"k") as node,
        node.subscribe("t") as messages,
    ):
        client = await raw_client(node.address)
        async with client:
            await client.send(data)
            await client.send_eof()  # the intruder is done: what it sent is all there is
            assert await closed_by_server(client)

        def refused() -> int:
            s = node.stats()
            return s.auth_failures + s.protocol_errors + s.frames_too_large

        await eventually(lambda: refused() == 1)
        assert node.connections == {}
        await node.publish("t", b"local")
        assert await receive(messages) == b"local"  # the first and only message


async def test_truncated_frame_then_close_is_counted() -> None:
    async with TcpTransport() as node:
        client = await raw_client(node.address)
        async with client:
            await client.send(PREAMBLE + b"\x00\x00\x00\x30" + b"\x01partial")
        await eventually(lambda: node.stats().protocol_errors == 1)


async def test_truncated_frame_then_silence_times_out() -> None:
    async with TcpTransport(handshake_timeout=0.2) as node:
        client = await raw_client(node.address)
        async with client:
            await client.send(PREAMBLE + b"\x00\x00\x00\x30" + b"\x01part")
            assert await closed_by_server(client)
        assert node.stats().handshake_timeouts == 1


async def test_frames_with_a_forged_mac_after_a_valid_handshake_are_rejected() -> None:
    async with (
        TcpTransport(node_id="node", secret=b"k") as node,
        node.subscribe("t") as messages,
    ):
        raw = await RawPeer.connect(node.address, "intruder", secret=b"k")
        async with raw.stream:
            frame = bytearray(raw.proto.encode(encode_message_body("t", b"tampered")))
            frame[-1] ^= 0xFF
            await raw.stream.send(bytes(frame))
            assert await closed_by_server(raw.stream)
        assert node.stats().auth_failures == 1
        await node.publish("t", b"local")
        assert await receive(messages) == b"local"  # "tampered" never arrived


async def test_a_new_subscription_skips_older_messages_until_the_barrier_answer() -> None:
    async with TcpTransport(node_id="node") as node:
        raw = await RawPeer.connect(node.address, "raw")
        async with raw.stream:
            await eventually(lambda: "raw" in node.connections)
            async with anyio.create_task_group() as tg:
                subscribed = anyio.Event()
                box: list[AsyncIterator[bytes]] = []

                async def subscribe() -> None:
                    async with node.subscribe("t") as messages:
                        box.append(messages)
                        subscribed.set()
                        await anyio.sleep_forever()

                tg.start_soon(subscribe)
                # The node announces the subscription, then sends its barrier.
                assert await raw.next_event() == TopicAdded("t")
                barrier = await raw.next_event()
                assert isinstance(barrier, Barrier)
                # Sent before the answer: older than the subscription, so never seen.
                await raw.send(encode_message_body("t", b"old"))
                await raw.send(PeerProtocol.barrier_ack_body(barrier.barrier_id))
                with anyio.fail_after(TIMEOUT):
                    await subscribed.wait()
                await raw.send(encode_message_body("t", b"new"))
                assert await receive(box[0]) == b"new"
                tg.cancel_scope.cancel()


async def test_barriers_are_answered_after_earlier_messages() -> None:
    async with TcpTransport(node_id="node") as node:
        raw = await RawPeer.connect(node.address, "raw", topics=("t",))
        async with raw.stream:
            await eventually(lambda: "raw" in node.connections)
            await node.publish("t", b"first")
            await raw.send(PeerProtocol.barrier_body(7))
            assert await raw.next_event() == Message("t", b"first")
            assert await raw.next_event() == BarrierAck(7)


async def test_idle_connections_ping_and_silent_peers_are_dropped() -> None:
    # Generous intervals: a loaded CI machine must not make the lively peer look silent.
    async with TcpTransport(node_id="node", keepalive=0.2) as node:
        lively = await RawPeer.connect(node.address, "lively")
        silent = await RawPeer.connect(node.address, "silent")
        async with lively.stream, silent.stream:
            await eventually(lambda: len(node.connections) == 2)
            # The node pings an idle peer; one that answers stays connected across
            # several silence windows (3 x keepalive = 0.6 s each).
            pings = 0
            with anyio.fail_after(TIMEOUT):
                while pings < 7:
                    for event in lively.proto.receive_data(await lively.stream.receive()):
                        if isinstance(event, Ping):
                            pings += 1
                            await lively.send(PeerProtocol.ping_body())
            assert "lively" in node.connections
            # The one that never says anything is dropped.
            assert await closed_by_server(silent.stream)
            assert "silent" not in node.connections
            assert node.stats().peers_silent == 1


# -- stalled peers ---------------------------------------------------------------------


async def test_a_stalled_peer_is_disconnected_without_blocking_others() -> None:
    size = 64 * 1024
    async with (
        TcpTransport(
            node_id="writer", max_frame_size=size + FRAME_OVERHEAD, send_queue=4 * size
        ) as writer,
        TcpTransport(node_id="healthy", peers=[writer.address]) as healthy,
        healthy.subscribe("t") as messages,
    ):
        # A peer that completes the handshake and then never reads again.
        stalled = await RawPeer.connect(writer.address, "stalled", topics=("t",))
        async with stalled.stream:
            await eventually(lambda: len(writer.connections) == 2)
            payload = bytes(size)
            with anyio.fail_after(TIMEOUT):  # publish never waits for the stalled peer
                for _ in range(2000):
                    await writer.publish("t", payload)
                    assert await receive(messages) == payload
                    if writer.stats().peers_stalled:
                        break
            assert writer.stats().peers_stalled == 1
            await eventually(lambda: "stalled" not in writer.connections)
            assert "healthy" in writer.connections


# -- TLS -------------------------------------------------------------------------------


def tls_contexts(ca: trustme.CA, *, mutual: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    if mutual:
        ca.configure_trust(server)
        server.verify_mode = ssl.CERT_REQUIRED
        cert.configure_cert(client)
    return server, client


@pytest.mark.parametrize("mutual", [False, True])
async def test_tls_mesh(mutual: bool) -> None:
    server, client = tls_contexts(trustme.CA(), mutual=mutual)
    async with (
        mesh(3, ssl_context=server, client_ssl_context=client, secret="k") as nodes,
        nodes[0].subscribe("t") as messages,
    ):
        await nodes[2].publish("t", b"encrypted")
        assert await receive(messages) == b"encrypted"
        assert all(n.stats().tls_failures == 0 for n in nodes)


async def test_tls_refuses_plain_and_untrusted_peers() -> None:
    ca = trustme.CA()
    server, client = tls_contexts(ca, mutual=True)
    _, stranger = tls_contexts(trustme.CA(), mutual=True)  # a certificate from another CA
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE  # the stranger trusts anyone; the node must not
    async with TcpTransport(ssl_context=server, client_ssl_context=client) as node:
        async with TcpTransport(peers=[node.address], reconnect_backoff=(5, 5)):
            await eventually(lambda: node.stats().tls_failures >= 1)
        async with TcpTransport(
            peers=[node.address], client_ssl_context=stranger, reconnect_backoff=(5, 5)
        ):
            await eventually(lambda: node.stats().tls_failures >= 2)
        assert node.connections == {}


# -- discovery -------------------------------------------------------------------------


async def test_dns_discoverer_with_the_default_resolver() -> None:
    async with TcpTransport(reconnect_backoff=(60, 60)) as transport:
        port = int(transport.address.rsplit(":", 1)[1])
        discoverer = DNSDiscoverer("localhost", port)  # resolves through anyio.getaddrinfo
        added, _ = await discoverer.reconcile(transport)
        # localhost resolves to this very node, which is skipped; ::1 may remain.
        assert transport.address not in transport.peers
        assert added <= {f"[::1]:{port}"}


# -- security default ------------------------------------------------------------------


async def test_listening_on_all_interfaces_without_protection_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="podshare.transport.tcp"):
        async with TcpTransport(listen="127.0.0.1:0"):
            pass
        assert not caplog.records
        async with TcpTransport(listen="0.0.0.0:0"):
            pass
        assert any("without a secret or TLS" in r.getMessage() for r in caplog.records)
        caplog.clear()
        async with TcpTransport(listen="0.0.0.0:0", secret="k"):
            pass
        assert not caplog.records


# -- readiness -------------------------------------------------------------------------


def closed_port_address() -> str:
    """A loopback address where nothing listens (connecting is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_transport_entered_right_after_another_is_ready_only_once_connected() -> None:
    async with (
        TcpTransport(node_id="a") as a,
        a.subscribe("ps/app"),
        TcpTransport(node_id="b", peers=[a.address]) as b,
    ):
        with anyio.fail_after(TIMEOUT):
            await b.wait_ready()
        assert "a" in b.connections
        # Ready means a's announcements arrived too: b counts a without waiting.
        assert await b.remote_subscribers("ps/app") == 1
        assert b.stats().connection_attempts_failed == 0


async def test_wait_ready_waits_for_peers_learned_through_peer_exchange() -> None:
    async with (
        TcpTransport(node_id="a") as a,
        TcpTransport(node_id="b", peers=[a.address]) as b,
    ):
        await eventually(lambda: "a" in b.connections and "b" in a.connections)
        async with TcpTransport(node_id="c", peers=[b.address]) as c:  # c only knows b
            with anyio.fail_after(TIMEOUT):
                await c.wait_ready()
            assert set(c.connections) == {"a", "b"}


async def test_an_unreachable_peer_does_not_block_readiness_beyond_one_failed_dial() -> None:
    dead = closed_port_address()
    async with (
        TcpTransport(node_id="a") as a,
        TcpTransport(
            node_id="b", peers=[dead, a.address], reconnect_backoff=(30, 30)
        ) as b,  # one attempt each within the test
    ):
        with anyio.fail_after(TIMEOUT):
            await b.wait_ready()
        assert "a" in b.connections
        assert b.stats().connection_attempts_failed == 1


async def test_a_peer_refusing_the_handshake_counts_as_failed_for_readiness() -> None:
    async with (
        TcpTransport(secret="right") as guarded,
        TcpTransport(secret="wrong", peers=[guarded.address], reconnect_backoff=(30, 30)) as b,
    ):
        with anyio.fail_after(TIMEOUT):
            await b.wait_ready()
        assert b.connections == {}
        assert b.stats().auth_failures == 1


async def test_wait_ready_with_no_peers_returns_at_once_and_needs_an_open_transport() -> None:
    node = TcpTransport()
    with pytest.raises(ClosedError):
        await node.wait_ready()
    async with node:
        with anyio.fail_after(TIMEOUT):
            await node.wait_ready()
    with pytest.raises(ClosedError):
        await node.wait_ready()


async def test_dns_attach_adds_the_discovered_peers_before_the_block_so_readiness_waits() -> None:
    async with TcpTransport(node_id="a") as a, a.subscribe("ps/app"):
        host, port = a.address.rsplit(":", 1)

        async def dns(_name: str, _dns_port: int) -> list[str]:
            return [host]

        async with (
            TcpTransport(node_id="b") as b,
            DNSDiscoverer("svc", int(port), resolver=dns).attach(b),
        ):
            assert b.peers == (a.address,)  # added before the block started
            with anyio.fail_after(TIMEOUT):
                await b.wait_ready()
            assert "a" in b.connections
            assert await b.remote_subscribers("ps/app") == 1


# -- subscriber counting and filtered sends --------------------------------------------


async def test_remote_subscribers_counts_across_subscribe_unsubscribe_and_disconnect() -> None:
    async with mesh(3) as (a, b, c), AsyncExitStack() as stack:
        assert await a.remote_subscribers("t") == 0
        await stack.enter_async_context(a.subscribe("t"))
        assert await a.remote_subscribers("t") == 0  # this node's own never count
        b_subs = AsyncExitStack()
        async with b_subs:
            await b_subs.enter_async_context(b.subscribe("t"))
            # Once b's subscription is entered, a knows: a's barrier answer came after.
            assert await a.remote_subscribers("t") == 1
            await b_subs.enter_async_context(b.subscribe("t"))
            assert await a.remote_subscribers("t") == 1  # distinct nodes, not subscriptions
            async with c.subscribe("t"):
                assert await a.remote_subscribers("t") == 2
                assert await c.remote_subscribers("t") == 2  # a and b
            await eventually(lambda: "t" not in a._conns["node-2"].proto.peer_topics)
            assert await a.remote_subscribers("t") == 1
        await eventually(lambda: "t" not in a._conns["node-1"].proto.peer_topics)
        assert await a.remote_subscribers("t") == 0
        async with c.subscribe("u"):
            assert await a.remote_subscribers("u") == 1
            await c.aclose()
            await eventually(lambda: "node-2" not in a.connections)
            assert await a.remote_subscribers("u") == 0


async def test_remote_subscribers_is_unknown_with_a_peer_that_does_not_announce() -> None:
    async with TcpTransport(node_id="node") as node:
        legacy = await RawPeer.connect(node.address, "legacy", announces_topics=False)
        async with legacy.stream:
            await eventually(lambda: "legacy" in node.connections)
            assert await node.remote_subscribers("t") is None
            assert not any(isinstance(e, TopicAdded | TopicsComplete) for e in legacy.initial)
            # A subscription sends it a barrier and no TOPIC frame it could not parse.
            async with anyio.create_task_group() as tg:
                entered = anyio.Event()

                async def subscribe() -> None:
                    async with node.subscribe("mine"):
                        entered.set()

                tg.start_soon(subscribe)
                barrier = await legacy.next_event()
                assert isinstance(barrier, Barrier)
                await legacy.send(PeerProtocol.barrier_ack_body(barrier.barrier_id))
                with anyio.fail_after(TIMEOUT):
                    await entered.wait()
            # And it gets every message, whatever the topic.
            await node.publish("t", b"to everyone")
            assert await legacy.next_event() == Message("t", b"to everyone")


async def test_a_peer_announcing_too_many_topics_is_refused() -> None:
    async with TcpTransport(node_id="node") as node:
        raw = await RawPeer.connect(node.address, "greedy")
        async with raw.stream:
            for i in range(MAX_ANNOUNCED_TOPICS + 1):
                await raw.send(PeerProtocol.topic_added_body(f"t{i}"))
            assert await closed_by_server(raw.stream)
        await eventually(lambda: node.stats().protocol_errors == 1)
        assert node.connections == {}


async def test_a_node_holding_more_topics_than_the_cap_announces_all() -> None:
    async with mesh(2) as (a, b), AsyncExitStack() as stack:
        for i in range(MAX_ANNOUNCED_TOPICS + 1):
            await stack.enter_async_context(b.subscribe(f"t{i}"))
        assert await a.remote_subscribers("any topic at all") == 1
        assert a.stats().protocol_errors == 0
        async with TcpTransport(node_id="late", peers=[b.address]) as late:
            with anyio.fail_after(TIMEOUT):
                await late.wait_ready()
            assert await late.remote_subscribers("another topic") == 1  # ALL on connect


async def test_messages_go_only_to_peers_subscribed_to_their_topic() -> None:
    async with mesh(3) as (a, b, _):
        async with b.subscribe("ps/app#b") as inbox:
            before = a.stats()
            await a.publish("ps/app#b", b"for b only")
            assert await receive(inbox) == b"for b only"
            after = a.stats()
            assert after.messages_sent - before.messages_sent == 1
            assert after.messages_filtered - before.messages_filtered == 1  # not sent to c
        await a.publish("nobody", b"x")
        assert a.stats().messages_filtered - after.messages_filtered == 2


async def test_a_subscription_made_before_connecting_receives_from_the_first_message() -> None:
    async with (
        TcpTransport(node_id="a") as a,
        TcpTransport(node_id="b") as b,
        b.subscribe("t") as messages,
    ):
        b.add_peer(a.address)
        # a publishes as soon as it sees the connection, before b's announcement may
        # have arrived: it sends everything until the announcement is complete.
        await eventually(lambda: "b" in a.connections)
        await a.publish("t", b"first")
        assert await receive(messages) == b"first"


# -- floods ----------------------------------------------------------------------------


async def idle_clients(
    address: str, count: int, local_host: str | None = None
) -> list[anyio.abc.SocketStream]:
    host, port = address.rsplit(":", 1)
    return [await anyio.connect_tcp(host, int(port), local_host=local_host) for _ in range(count)]


async def test_a_flood_of_idle_connections_cannot_lock_a_legitimate_peer_out() -> None:
    async with TcpTransport(
        node_id="node",
        secret="k",
        handshake_timeout=60,  # the flood is not timed out: only the caps protect
        max_pending_handshakes=8,
        max_pending_per_source=4,
    ) as node:
        flood = await idle_clients(node.address, 40)
        try:
            await eventually(lambda: node.stats().handshakes_dropped == 36)
            assert node.stats().connections_pending == 4
            assert await closed_by_server(flood[0])  # the oldest were closed
            async with TcpTransport(node_id="legit", secret="k", peers=[node.address]) as legit:
                with anyio.fail_after(5):
                    await legit.wait_ready()
                assert "legit" in node.connections
            stats = node.stats()
            # The legitimate handshake took one flood connection's place, then finished.
            assert (stats.handshakes_dropped, stats.connections_pending) == (37, 3)
            assert stats.auth_failures == 0
        finally:
            for client in flood:
                await client.aclose()


async def test_the_per_source_cap_spares_other_sources() -> None:
    async with TcpTransport(
        node_id="node", handshake_timeout=60, max_pending_handshakes=100, max_pending_per_source=4
    ) as node:
        try:
            flood = await idle_clients(node.address, 10, local_host="127.0.0.2")
        except OSError as exc:
            pytest.skip(f"cannot bind 127.0.0.2 on this machine: {exc}")
        try:
            await eventually(lambda: node.stats().handshakes_dropped == 6)
            spared = await idle_clients(node.address, 3, local_host="127.0.0.1")
            await eventually(lambda: node.stats().connections_pending == 7)
            assert node.stats().handshakes_dropped == 6
            for client in spared:
                await client.aclose()
        finally:
            for client in flood:
                await client.aclose()


async def test_failed_handshakes_are_logged_at_info_once_per_interval_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="podshare.transport.tcp"):
        async with TcpTransport(node_id="node") as node:
            for _ in range(5):
                client = await raw_client(node.address)
                async with client:
                    await client.send(b"GET / HTTP/1.1\r\n\r\n")
                    assert await closed_by_server(client)
            await eventually(lambda: node.stats().protocol_errors == 5)
    rejected = [r for r in caplog.records if r.getMessage().startswith("rejected peer")]
    assert len(rejected) == 1  # the other four were suppressed
    assert rejected[0].levelno == logging.INFO
    assert "bad magic" in rejected[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_hello_carrying_this_nodes_own_id_is_refused_and_counted() -> None:
    async with TcpTransport(node_id="node") as node, node.subscribe("t") as messages:
        impostor = await raw_client(node.address)
        async with impostor:
            proto = PeerProtocol("node", nonce=b"i" * 16)
            await impostor.send(proto.data_to_send())
            await impostor.send(encode_frame(encode_message_body("t", b"forged")))
            assert await closed_by_server(impostor)
        await eventually(lambda: node.stats().self_hellos == 1)
        assert node.stats().protocol_errors == 0
        assert node.self_addresses == frozenset()
        await node.publish("t", b"local")
        assert await receive(messages) == b"local"  # "forged" never arrived


async def test_two_processes_sharing_a_node_id_are_not_taken_for_a_self_dial() -> None:
    async with (
        TcpTransport(node_id="same") as first,
        TcpTransport(node_id="same", peers=[first.address], reconnect_backoff=(0.01, 0.02)) as dup,
    ):
        await eventually(lambda: dup.stats().self_hellos >= 2 and first.stats().self_hellos >= 2)
        # A looped-back connection would mark the address as this node's and stop dialing.
        assert dup.self_addresses == frozenset()
        assert first.address in dup.peers


async def test_a_replayed_handshake_is_rejected_and_delivers_nothing() -> None:
    async with TcpTransport(node_id="node", secret=b"k") as node, node.subscribe("t") as messages:
        # Record everything a legitimate peer sends on one connection...
        proto = PeerProtocol("peer", nonce=b"p" * 16, secret=b"k")
        first = await raw_client(node.address)
        sent = proto.data_to_send()
        async with first:
            await first.send(sent)
            with anyio.fail_after(TIMEOUT):
                while proto.state is not State.OPEN:
                    proto.receive_data(await first.receive())
                    if out := proto.data_to_send():
                        sent += out
                        await first.send(out)
            frame = proto.encode(encode_message_body("t", b"captured"))
            sent += frame
            await first.send(frame)
            assert await receive(messages) == b"captured"
        await eventually(lambda: "peer" not in node.connections)
        # ...and replay it on a new one: the node's fresh nonce makes the proof stale.
        replay = await raw_client(node.address)
        async with replay:
            await replay.send(sent)
            assert await closed_by_server(replay)
        await eventually(lambda: node.stats().auth_failures == 1)
        await node.publish("t", b"local")
        assert await receive(messages) == b"local"  # the replayed message never arrived


# -- callbacks -------------------------------------------------------------------------


async def test_connect_and_disconnect_callbacks_sync_and_async() -> None:
    seen: list[tuple[str, str, bool]] = []
    changed = anyio.Event()

    def on_connect(remote: PeerConnection, inbound: bool) -> None:
        seen.append(("connect", remote.node_id, inbound))
        changed.set()

    async def on_disconnect(remote: PeerConnection, inbound: bool) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(("disconnect", remote.node_id, inbound))
        changed.set()

    async def until_seen(count: int) -> None:
        nonlocal changed
        with anyio.fail_after(TIMEOUT):
            while len(seen) < count:
                await changed.wait()
                changed = anyio.Event()

    b_seen: list[tuple[str, bool]] = []
    async with TcpTransport(node_id="a", on_connect=on_connect, on_disconnect=on_disconnect) as a:
        async with TcpTransport(
            node_id="b",
            peers=[a.address],
            on_connect=lambda r, inbound: b_seen.append((r.node_id, inbound)),
            on_disconnect=lambda r, inbound: b_seen.append((f"-{r.node_id}", inbound)),
        ):
            await until_seen(1)
            assert seen == [("connect", "b", True)]
        # b's own disconnect callback ran while b closed (within close_timeout).
        assert b_seen == [("a", False), ("-a", False)]
        await until_seen(2)
        assert seen == [("connect", "b", True), ("disconnect", "b", True)]


async def test_a_failing_callback_is_logged_and_counted_and_the_transport_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(_remote: PeerConnection, _inbound: bool) -> None:
        raise RuntimeError("the callback's own bug")

    async with (
        TcpTransport(node_id="a", on_connect=broken) as a,
        TcpTransport(node_id="b", peers=[a.address]) as b,
        b.subscribe("t") as messages,
    ):
        await eventually(lambda: a.stats().callback_errors == 1)
        await a.publish("t", b"still working")
        assert await receive(messages) == b"still working"
    assert any(
        r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records
    )


async def test_on_error_names_host_port_and_cause_of_a_failed_dial(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = closed_port_address()
    errors: list[PodshareError] = []
    got = anyio.Event()

    def on_error(exc: PodshareError) -> None:
        errors.append(exc)
        got.set()

    with caplog.at_level(logging.INFO, logger="podshare.transport.tcp"):
        async with TcpTransport(peers=[dead], on_error=on_error, reconnect_backoff=(30, 30)):
            with anyio.fail_after(TIMEOUT):
                await got.wait()
    assert isinstance(errors[0], TransportError)
    assert str(errors[0]).startswith(f"cannot connect to {dead}: ConnectionRefusedError")
    assert isinstance(errors[0].__cause__, OSError)
    lines = [r for r in caplog.records if r.getMessage().startswith("cannot connect")]
    assert lines[0].levelno == logging.INFO
    assert dead in lines[0].getMessage()


async def test_on_error_receives_rejected_peers() -> None:
    errors: list[PodshareError] = []
    got = anyio.Event()

    async def on_error(exc: PodshareError) -> None:
        errors.append(exc)
        got.set()

    async with (
        TcpTransport(secret="right", on_error=on_error) as node,
        TcpTransport(secret="wrong", peers=[node.address], reconnect_backoff=(30, 30)),
    ):
        with anyio.fail_after(TIMEOUT):
            await got.wait()
    assert isinstance(errors[0], AuthenticationError)
    assert str(errors[0]).startswith("peer 127.0.0.1:")


async def test_add_peer_and_remove_peer_say_whether_anything_changed() -> None:
    async with TcpTransport(reconnect_backoff=(30, 30)) as node:
        dead = closed_port_address()
        assert node.add_peer(dead) is True
        assert node.add_peer(dead) is False
        assert node.remove_peer(dead) is True
        assert node.remove_peer(dead) is False
        assert node.peers == ()


async def test_the_callback_runner_keeps_order_bounds_its_queue_and_counts() -> None:
    stats = TcpStats()
    runner = CallbackRunner(logging.getLogger("test"), stats, limit=3)
    seen: list[int] = []

    def boom(_: int) -> None:
        raise ValueError("bug")

    runner.emit(seen.append, 1)
    runner.emit(boom, 2)
    runner.emit(seen.append, 3)
    runner.emit(seen.append, 4)  # the queue holds three: dropped
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        with anyio.fail_after(TIMEOUT):
            await runner.drain()
        tg.cancel_scope.cancel()
    assert seen == [1, 3]
    assert (stats.callback_errors, stats.callbacks_dropped) == (1, 1)


# -- the stall rule --------------------------------------------------------------------


async def publish_until(node: TcpTransport, predicate: Callable[[], bool], size: int) -> int:
    """Publish ``size``-byte messages on "t" until ``predicate()``; return how many."""
    count = 0
    with anyio.fail_after(TIMEOUT):
        while not predicate():
            await node.publish("t", bytes(size))
            count += 1
            assert count < 5000, "the predicate never held"
    return count


async def test_a_burst_above_send_queue_that_drains_does_not_drop_the_peer() -> None:
    size = 64 * 1024
    async with TcpTransport(
        node_id="writer", max_frame_size=size + FRAME_OVERHEAD, send_queue=size, stall_timeout=30
    ) as writer:
        reader = await RawPeer.connect(writer.address, "reader", topics=("t",))
        async with reader.stream:
            # The reader does not read for a while: the writer's queue passes send_queue...
            sent = await publish_until(writer, lambda: writer.stats().queued_bytes > 2 * size, size)
            # ...and then it catches up: it is not dropped, and gets every message.
            for _ in range(sent):
                assert await reader.next_event() == Message("t", bytes(size))
            stats = writer.stats()
            assert stats.peers_stalled == 0
            assert "reader" in writer.connections
            assert stats.queued_bytes_peak > 2 * size
            await eventually(lambda: writer.stats().queue_over_limit_seconds > 0)


@pytest.mark.parametrize(
    ("send_queue", "reason"),
    [(64 * 1024, "stayed above"), (16 * 1024 * 1024, "no progress")],
    ids=["over-limit", "no-progress"],
)
async def test_a_peer_over_its_limit_or_without_progress_for_stall_timeout_is_dropped(
    send_queue: int, reason: str
) -> None:
    size = 64 * 1024
    errors: list[PodshareError] = []
    async with TcpTransport(
        node_id="writer",
        max_frame_size=size + FRAME_OVERHEAD,
        send_queue=send_queue,
        stall_timeout=0.3,
        on_error=errors.append,
    ) as writer:
        stuck = await RawPeer.connect(writer.address, "stuck", topics=("t",))
        async with stuck.stream:
            # Enough for the socket buffers to fill and the writer to block.
            await publish_until(writer, lambda: writer.stats().queued_bytes > 2 * size, size)
            await eventually(lambda: writer.stats().peers_stalled == 1)
            await eventually(lambda: "stuck" not in writer.connections)
            assert await closed_by_server(stuck.stream)
    stalls = [e for e in errors if "stalled" in str(e)]
    assert len(stalls) == 1
    assert isinstance(stalls[0], TransportError)
    assert reason in str(stalls[0])


# -- closing ---------------------------------------------------------------------------


async def test_closing_flushes_what_is_queued_to_dialed_peers_and_is_idempotent() -> None:
    size = 64 * 1024
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        listener = multi.listeners[0]
        assert isinstance(listener, anyio.abc.SocketListener)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610
        async with TcpTransport(node_id="a", max_frame_size=size + FRAME_OVERHEAD) as a:
            a.add_peer(f"127.0.0.1:{port}")  # a dials the raw peer
            raw = await RawPeer.over(await listener.accept(), "raw", topics=("t",))
            async with raw.stream:
                # The raw peer does not read yet: messages pile up in a's queue.
                sent = await publish_until(a, lambda: a.stats().queued_bytes > 4 * size, size)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(a.aclose)  # closing waits for the queue to drain...
                    for _ in range(sent):  # ...while the peer reads everything
                        assert await raw.next_event() == Message("t", bytes(size))
                await a.aclose()
                assert a.state == "closed"
                assert a.stats().queued_bytes == 0
                assert await closed_by_server(raw.stream)


async def test_close_timeout_bounds_closing_with_a_peer_that_never_reads() -> None:
    size = 64 * 1024
    with anyio.fail_after(1.5):  # the default close_timeout (2 s) would not fit
        async with TcpTransport(
            node_id="writer", max_frame_size=size + FRAME_OVERHEAD, close_timeout=0.1
        ) as writer:
            stuck = await RawPeer.connect(writer.address, "stuck", topics=("t",))
            async with stuck.stream:
                await publish_until(writer, lambda: writer.stats().queued_bytes > size, size)
                await writer.aclose()
    assert writer.connections == {}


async def test_subscribe_skipping_leaves_out_only_its_own_messages() -> None:
    async with mesh(2) as (mine, theirs):
        assert isinstance(mine, EchoSkipping)
        await check_echo_skipping(mine, theirs)
