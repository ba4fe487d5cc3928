"""The TCP mesh's sans-I/O wire protocol: frames, handshake, authentication."""

from __future__ import annotations

import pytest

from podshare.exceptions import AuthenticationError, DecodeError, FrameTooLarge, ProtocolError
from podshare.transport._framing import (
    HANDSHAKE_MAX_FRAME_SIZE,
    MAC_SIZE,
    MAX_ANNOUNCED_TOPIC_BYTES,
    MAX_ANNOUNCED_TOPICS,
    MAX_TOPIC_BYTES,
    PREAMBLE,
    AllTopics,
    Barrier,
    BarrierAck,
    FrameDecoder,
    Message,
    Opened,
    PeerProtocol,
    Peers,
    Ping,
    State,
    TopicAdded,
    TopicRemoved,
    TopicsComplete,
    check_topic,
    encode_frame,
    encode_message_body,
)


def make_pair(
    secret_a: bytes | None = None,
    secret_b: bytes | None = None,
    *,
    a_announces: bool = True,
    b_announces: bool = True,
) -> tuple[PeerProtocol, PeerProtocol]:
    a = PeerProtocol("node-a", nonce=b"A" * 16, secret=secret_a, announces_topics=a_announces)
    b = PeerProtocol("node-b", nonce=b"B" * 16, secret=secret_b, announces_topics=b_announces)
    return a, b


def handshake(a: PeerProtocol, b: PeerProtocol) -> tuple[list[object], list[object]]:
    """Shuttle handshake bytes until neither side has more to say."""
    events_a: list[object] = []
    events_b: list[object] = []
    for _ in range(4):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        events_b += b.receive_data(out_a)
        events_a += a.receive_data(out_b)
    return events_a, events_b


# -- frames ----------------------------------------------------------------------------


def test_decoder_splits_frames_fed_byte_by_byte() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    stream = encode_frame(b"one") + encode_frame(b"\x00two") + encode_frame(b"3")
    frames = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    assert frames == [b"one", b"\x00two", b"3"]
    assert decoder.buffered == 0


def test_decoder_rejects_oversized_header_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_size=1024)
    decoder.feed(b"\xff\xff\xff\xff")  # claims 4 GiB; only the header is here
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()
    assert decoder.buffered == 4  # nothing was allocated for the body


def test_decoder_accepts_exactly_max_frame_size() -> None:
    decoder = FrameDecoder(max_frame_size=8)
    decoder.feed(encode_frame(b"x" * 8))
    assert decoder.next_frame() == b"x" * 8
    decoder.feed(encode_frame(b"x" * 9))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_decoder_rejects_empty_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(DecodeError):
        decoder.next_frame()


def test_truncated_frame_waits_for_more() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"abcdef")[:-2])
    assert decoder.next_frame() is None
    decoder.feed(b"ef")
    assert decoder.next_frame() == b"abcdef"


def test_message_body_rejects_bad_topics() -> None:
    with pytest.raises(DecodeError):
        encode_message_body("", b"x")
    with pytest.raises(DecodeError):
        encode_message_body("t" * (MAX_TOPIC_BYTES + 1), b"x")
    with pytest.raises(DecodeError, match="UTF-8"):
        check_topic("\ud800")  # a lone surrogate cannot be encoded
    assert encode_message_body("t" * MAX_TOPIC_BYTES, b"")


# -- handshake -------------------------------------------------------------------------


def test_handshake_without_secret_opens_both_sides() -> None:
    a, b = make_pair()
    events_a, events_b = handshake(a, b)
    assert events_a == [Opened("node-b")]
    assert events_b == [Opened("node-a")]
    assert a.state is State.OPEN
    assert b.state is State.OPEN
    frame = a.encode(encode_message_body("ps/x", b"payload"))
    assert b.receive_data(frame) == [Message("ps/x", b"payload")]
    assert a.receive_data(b.encode(PeerProtocol.ping_body())) == [Ping()]


def test_barrier_frames_round_trip() -> None:
    a, b = make_pair(b"k", b"k")
    handshake(a, b)
    data = a.encode(PeerProtocol.barrier_body(2**64 - 1)) + a.encode(
        PeerProtocol.barrier_ack_body(0)
    )
    assert b.receive_data(data) == [Barrier(2**64 - 1), BarrierAck(0)]


def test_peers_frames_round_trip_and_carry_listen_ports() -> None:
    a = PeerProtocol("node-a", nonce=b"A" * 16, secret=b"k", listen_port=7000)
    b = PeerProtocol("node-b", nonce=b"B" * 16, secret=b"k")
    handshake(a, b)
    assert (b.peer_listen_port, a.peer_listen_port) == (7000, 0)
    addresses = ["10.0.0.5:7000", "[fd00::1]:7000"]
    assert b.receive_data(a.encode(PeerProtocol.peers_body(addresses))) == [Peers(tuple(addresses))]
    assert PeerProtocol.peers_body(["x" * 256]) == b"\x07\x00\x00"  # unencodable: left out


def test_handshake_with_secret_authenticates_and_macs_every_frame() -> None:
    a, b = make_pair(b"s3cret", b"s3cret")
    events_a, events_b = handshake(a, b)
    assert events_a == [Opened("node-b")]
    assert events_b == [Opened("node-a")]
    body = encode_message_body("t", b"hello")
    frame = a.encode(body)
    assert len(frame) == 4 + len(body) + MAC_SIZE
    assert b.receive_data(frame) == [Message("t", b"hello")]
    assert b"s3cret" not in a.data_to_send() + frame


def test_secret_never_on_the_wire() -> None:
    a, b = make_pair(b"the-shared-secret", b"the-shared-secret")
    wire = bytearray()
    for _ in range(3):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        wire += out_a + out_b
        b.receive_data(out_a)
        a.receive_data(out_b)
    assert b"the-shared-secret" not in wire


def test_wrong_secret_fails_authentication_on_both_sides() -> None:
    a, b = make_pair(b"right", b"wrong")
    out_a, out_b = a.data_to_send(), b.data_to_send()
    assert a.receive_data(out_b) == []
    assert b.receive_data(out_a) == []
    proof_a, proof_b = a.data_to_send(), b.data_to_send()
    with pytest.raises(AuthenticationError):
        b.receive_data(proof_a)
    with pytest.raises(AuthenticationError):
        a.receive_data(proof_b)
    assert a.state is State.FAILED
    with pytest.raises(ProtocolError):
        a.receive_data(b"")


@pytest.mark.parametrize(("secret_a", "secret_b"), [(b"s", None), (None, b"s")])
def test_secret_on_one_side_only_is_rejected(
    secret_a: bytes | None, secret_b: bytes | None
) -> None:
    a, b = make_pair(secret_a, secret_b)
    with pytest.raises(AuthenticationError):
        b.receive_data(a.data_to_send())
    with pytest.raises(AuthenticationError):
        a.receive_data(b.data_to_send())


def test_message_before_proof_never_surfaces() -> None:
    a, b = make_pair(b"s", b"s")
    b.receive_data(a.data_to_send())  # a's HELLO; b now waits for a's proof
    forged = encode_frame(encode_message_body("t", b"sneaky") + bytes(MAC_SIZE))
    with pytest.raises(AuthenticationError):
        b.receive_data(forged)


def test_tampered_replayed_or_reordered_frames_fail_the_mac() -> None:
    a, b = make_pair(b"s", b"s")
    handshake(a, b)
    first = a.encode(encode_message_body("t", b"1"))
    second = a.encode(encode_message_body("t", b"2"))
    tampered = bytearray(first)
    tampered[-MAC_SIZE - 1] ^= 1
    with pytest.raises(AuthenticationError):
        b.receive_data(bytes(tampered))

    a, b = make_pair(b"s", b"s")
    handshake(a, b)
    first = a.encode(encode_message_body("t", b"1"))
    second = a.encode(encode_message_body("t", b"2"))
    assert b.receive_data(first) == [Message("t", b"1")]
    with pytest.raises(AuthenticationError):
        b.receive_data(first)  # replay

    a, b = make_pair(b"s", b"s")
    handshake(a, b)
    first = a.encode(encode_message_body("t", b"1"))
    second = a.encode(encode_message_body("t", b"2"))
    with pytest.raises(AuthenticationError):
        b.receive_data(second)  # reordered


def test_frame_replayed_into_another_connection_fails() -> None:
    a, b = make_pair(b"s", b"s")
    handshake(a, b)
    frame = a.encode(encode_message_body("t", b"x"))
    a2 = PeerProtocol("node-a", nonce=b"C" * 16, secret=b"s")
    b2 = PeerProtocol("node-b", nonce=b"D" * 16, secret=b"s")
    handshake(a2, b2)
    with pytest.raises(AuthenticationError):
        b2.receive_data(frame)


def test_reflected_nonce_is_refused() -> None:
    b = PeerProtocol("node-b", nonce=b"B" * 16, secret=b"s")
    # An attacker echoes b's own nonce back to reuse b's proof as its own.
    mallory = PeerProtocol("mallory", nonce=b"B" * 16, secret=b"guess")
    with pytest.raises(AuthenticationError):
        b.receive_data(mallory.data_to_send())


def test_connecting_to_itself_is_detected() -> None:
    a = PeerProtocol("same", nonce=b"A" * 16)
    other = PeerProtocol("same", nonce=b"B" * 16)
    with pytest.raises(ProtocolError):
        a.receive_data(other.data_to_send())
    assert a.self_connection


def test_unauthenticated_peers_get_a_small_frame_cap() -> None:
    a = PeerProtocol("a", nonce=b"A" * 16, max_frame_size=1 << 20)
    with pytest.raises(FrameTooLarge):
        a.receive_data(PREAMBLE + (HANDSHAKE_MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    a, b = make_pair()
    handshake(a, b)
    big = encode_message_body("t", bytes(100_000))
    assert b.receive_data(a.encode(big)) == [Message("t", bytes(100_000))]


def test_bad_magic_fails_on_the_first_byte() -> None:
    a = PeerProtocol("a", nonce=b"A" * 16)
    with pytest.raises(DecodeError, match="magic"):
        a.receive_data(b"G")


def test_other_protocol_version_is_named() -> None:
    a = PeerProtocol("a", nonce=b"A" * 16)
    with pytest.raises(DecodeError, match="version 9"):
        a.receive_data(PREAMBLE[:-1] + b"\x09")


def test_frames_before_the_handshake_ends_cannot_be_sent() -> None:
    a, _ = make_pair()
    with pytest.raises(ProtocolError):
        a.encode(encode_message_body("t", b"x"))


@pytest.mark.parametrize(
    "body",
    [
        b"\x01",  # HELLO with nothing
        b"\x01\x00" + b"n" * 16 + b"\x05ab",  # id length lies
        b"\x01\x00" + b"n" * 16 + b"\x02\xff\xfe",  # id not UTF-8
        b"\x03\x00\x01t",  # a MESSAGE where HELLO is due
    ],
)
def test_malformed_hello_is_a_decode_error(body: bytes) -> None:
    a = PeerProtocol("a", nonce=b"A" * 16)
    with pytest.raises(DecodeError):
        a.receive_data(PREAMBLE + encode_frame(body))


@pytest.mark.parametrize(
    "body",
    [
        b"\x03",  # MESSAGE without a topic length
        b"\x03\x00\x05ab",  # topic length beyond the body
        b"\x03\x00\x00",  # empty topic
        b"\x03\x00\x02\xff\xfe",  # topic not UTF-8
        b"\x04x",  # PING with data
        b"\x09",  # unknown kind
        b"\x05\x00\x01",  # BARRIER with a short id
        b"\x07\x00",  # PEERS without a count
        b"\x07\x00\x01\x05ab",  # an address shorter than its length
        b"\x07\x00\x01\x00",  # an empty address
        b"\x07\x00\x00x",  # trailing bytes
        b"\x07\xff\xff",  # too many addresses
        b"\x07\x00\x01\x02\xff\xfe",  # not UTF-8
        b"\x06" + bytes(9),  # BARRIER_ACK with a long id
    ],
)
def test_malformed_open_frames_are_decode_errors(body: bytes) -> None:
    a, b = make_pair()
    handshake(a, b)
    with pytest.raises(DecodeError):
        b.receive_data(encode_frame(body))


def test_constructor_validates_its_inputs() -> None:
    with pytest.raises(ValueError):
        PeerProtocol("", nonce=b"A" * 16)
    with pytest.raises(ValueError):
        PeerProtocol("a", nonce=b"short")
    with pytest.raises(ValueError):
        PeerProtocol("a", nonce=b"A" * 16, secret=b"")
    with pytest.raises(ValueError):
        FrameDecoder(0)


# -- subscription announcements (TOPIC frames) -----------------------------------------


def announce(a: PeerProtocol, *bodies: bytes) -> bytes:
    return b"".join(a.encode(body) for body in bodies)


@pytest.mark.parametrize("secret", [None, b"k"], ids=["plain", "secret"])
def test_topic_frames_round_trip_and_keep_the_announced_set(secret: bytes | None) -> None:
    a, b = make_pair(secret, secret)
    handshake(a, b)
    assert b.peer_announces_topics
    # Until the initial announcement is complete, everything is sent to the peer.
    assert b.peer_subscribes("anything")
    events = b.receive_data(
        announce(
            a,
            PeerProtocol.topic_added_body("ps/app"),
            PeerProtocol.topic_added_body("ps/app#node-a"),
            PeerProtocol.topics_complete_body(),
        )
    )
    assert events == [TopicAdded("ps/app"), TopicAdded("ps/app#node-a"), TopicsComplete()]
    assert b.peer_topics == {"ps/app", "ps/app#node-a"}
    assert b.peer_subscribes("ps/app")
    assert not b.peer_subscribes("ps/other")
    assert b.receive_data(a.encode(PeerProtocol.topic_removed_body("ps/app"))) == [
        TopicRemoved("ps/app")
    ]
    assert not b.peer_subscribes("ps/app")
    # Removing what was never announced is harmless; ALL counts the peer everywhere.
    assert b.receive_data(a.encode(PeerProtocol.topic_removed_body("never"))) == [
        TopicRemoved("never")
    ]
    assert b.receive_data(a.encode(PeerProtocol.all_topics_body())) == [AllTopics()]
    assert b.peer_all_topics
    assert b.peer_topics == set()
    assert b.peer_subscribes("ps/other")


def test_a_peer_that_does_not_announce_gets_everything_and_may_not_send_topics() -> None:
    a, b = make_pair(a_announces=False)
    handshake(a, b)
    assert not b.peer_announces_topics
    assert a.peer_announces_topics
    assert b.peer_subscribes("t")
    with pytest.raises(DecodeError, match="did not announce"):
        b.receive_data(a.encode(PeerProtocol.topic_added_body("t")))


def test_announced_topics_are_capped_by_count() -> None:
    a, b = make_pair()
    handshake(a, b)
    for i in range(MAX_ANNOUNCED_TOPICS):
        b.receive_data(a.encode(PeerProtocol.topic_added_body(f"t{i}")))
    # Announcing one already known again takes no room.
    assert b.receive_data(a.encode(PeerProtocol.topic_added_body("t0"))) == [TopicAdded("t0")]
    with pytest.raises(ProtocolError, match=f"more than {MAX_ANNOUNCED_TOPICS} topics"):
        b.receive_data(a.encode(PeerProtocol.topic_added_body("one-too-many")))
    assert b.state is State.FAILED
    assert len(b.peer_topics) == MAX_ANNOUNCED_TOPICS


def test_announced_topics_are_capped_by_bytes_and_removal_frees_room() -> None:
    a, b = make_pair()
    handshake(a, b)
    fitting = MAX_ANNOUNCED_TOPIC_BYTES // MAX_TOPIC_BYTES
    names = [f"{i:04d}".ljust(MAX_TOPIC_BYTES, "x") for i in range(fitting + 1)]
    for name in names[:fitting]:
        b.receive_data(a.encode(PeerProtocol.topic_added_body(name)))
    b.receive_data(a.encode(PeerProtocol.topic_removed_body(names[0])))
    b.receive_data(a.encode(PeerProtocol.topic_added_body(names[fitting])))  # fits again
    with pytest.raises(ProtocolError, match=f"more than {MAX_ANNOUNCED_TOPIC_BYTES} bytes"):
        b.receive_data(a.encode(PeerProtocol.topic_added_body(names[0])))


@pytest.mark.parametrize(
    "body",
    [
        b"\x08",  # no operation
        b"\x08\x09t",  # unknown operation
        b"\x08\x01",  # ADD without a topic
        b"\x08\x02",  # REMOVE without a topic
        b"\x08\x03x",  # ALL carries nothing
        b"\x08\x04x",  # COMPLETE carries nothing
        b"\x08\x01\xff\xfe",  # not UTF-8
        b"\x08\x01" + b"t" * (MAX_TOPIC_BYTES + 1),  # too long
    ],
)
def test_malformed_topic_frames_are_decode_errors(body: bytes) -> None:
    a, b = make_pair()
    handshake(a, b)
    with pytest.raises(DecodeError):
        b.receive_data(a.encode(body))


def test_topic_bodies_refuse_bad_topics() -> None:
    with pytest.raises(DecodeError):
        PeerProtocol.topic_added_body("")
    with pytest.raises(DecodeError):
        PeerProtocol.topic_removed_body("t" * (MAX_TOPIC_BYTES + 1))


def test_a_refused_self_hello_still_records_the_peer_nonce() -> None:
    a = PeerProtocol("same", nonce=b"A" * 16)
    other = PeerProtocol("same", nonce=b"B" * 16)
    assert a.peer_nonce == b""
    with pytest.raises(ProtocolError):
        a.receive_data(other.data_to_send())
    assert a.self_connection
    assert a.peer_nonce == b"B" * 16  # lets the transport tell its own loop from a duplicate
