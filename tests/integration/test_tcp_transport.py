"""TcpTransport on real loopback sockets: mesh, tie-break, auth, TLS, hostile peers, stalls."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
import trustme

from podshare.exceptions import ClosedError, ConfigurationError, MessageTooLarge, TransportError
from podshare.testing import check_transport
from podshare.transport import DNSDiscoverer, GapReporting, TcpTransport, Transport
from podshare.transport._framing import (
    FRAME_OVERHEAD,
    PREAMBLE,
    Barrier,
    BarrierAck,
    Message,
    Opened,
    PeerProtocol,
    Ping,
    State,
    encode_message_body,
)
from tests._support import eventually

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

    @classmethod
    async def connect(cls, address: str, node_id: str, secret: bytes | None = None) -> RawPeer:
        """Connect and complete the handshake."""
        nonce = node_id.encode().ljust(16, b"-")[:16]
        peer = cls(await raw_client(address), PeerProtocol(node_id, nonce=nonce, secret=secret))
        await peer.stream.send(peer.proto.data_to_send())
        with anyio.fail_after(TIMEOUT):
            while peer.proto.state is not State.OPEN:
                peer._backlog += peer.proto.receive_data(await peer.stream.receive())
                if out := peer.proto.data_to_send():
                    await peer.stream.send(out)
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
        raw = await RawPeer.connect(node.address, "raw")
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
        stalled = await RawPeer.connect(writer.address, "stalled")
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
