"""Hypothesis against the TCP mesh's sans-I/O parser: any bytes give events or a ProtocolError."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from podshare.exceptions import DecodeError, FrameTooLarge, ProtocolError
from podshare.transport._framing import (
    PREAMBLE,
    Barrier,
    BarrierAck,
    FrameDecoder,
    Message,
    Opened,
    PeerProtocol,
    Peers,
    Ping,
    ProtocolEvent,
    encode_frame,
    encode_message_body,
)

MAX_FRAME = 4096
OWN_NONCE = b"\x01" * 16

chunks = st.lists(st.binary(max_size=64), max_size=20)
topics = st.text(min_size=1, max_size=20)
messages = st.lists(st.tuples(topics, st.binary(max_size=300)), max_size=10)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# -- an independent model of the wire format, written from _framing's docstring ----------
#   stream   := b"PSTP" 0x01 frame*         frame := length:u32 body  (1 <= length <= cap)
#   HELLO    := 1 flags:u8 nonce:16 id_len:u8 id port:u16      (the cap is 512 until open)
#   MESSAGE  := 3 topic_len:u16 topic payload   PING := 4   BARRIER(_ACK) := 5|6 id:u64
#   PEERS    := 7 count:u16 (len:u8 address)*


def _split_model(stream: bytes, cap: int) -> tuple[list[bytes], type[ProtocolError] | None, int]:
    """Frames in ``stream``, the error its first bad header raises, and bytes left over."""
    frames: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        if length > cap:
            return frames, FrameTooLarge, 0
        if length == 0:
            return frames, DecodeError, 0
        if len(stream) - pos - 4 < length:
            break
        frames.append(stream[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, None, len(stream) - pos


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _hello_model(body: bytes) -> str | None:
    """The peer id a HELLO to node "me" (no secret) opens with, or None if it fails."""
    if len(body) < 19 or body[0] != 1:
        return None
    id_len = body[18]
    peer = _text(body[19 : 19 + id_len])
    if id_len == 0 or len(body) != 21 + id_len or peer is None or peer == "me":
        return None
    if body[1] & 1 or body[2:18] == OWN_NONCE:  # the peer wants a secret; an echoed nonce
        return None
    return peer


def _peers_model(body: bytes) -> Peers | None:
    if len(body) < 3 or int.from_bytes(body[1:3], "big") > 1024:
        return None
    addresses, pos = [], 3
    for _ in range(int.from_bytes(body[1:3], "big")):
        size = body[pos] if pos < len(body) else 0
        address = _text(body[pos + 1 : pos + 1 + size])
        if size == 0 or len(body) < pos + 1 + size or address is None:
            return None
        addresses.append(address)
        pos += 1 + size
    return Peers(tuple(addresses)) if pos == len(body) else None


def _body_model(body: bytes) -> ProtocolEvent | None:
    """The event an open, unauthenticated connection makes of ``body``, or None."""
    kind = body[0]
    if kind == 3 and len(body) >= 3:
        size = int.from_bytes(body[1:3], "big")
        topic = _text(body[3 : 3 + size])
        if 1 <= size <= 1024 and len(body) >= 3 + size and topic is not None:
            return Message(topic, body[3 + size :])
    if kind == 4 and len(body) == 1:
        return Ping()
    if kind in (5, 6) and len(body) == 9:
        barrier_id = int.from_bytes(body[1:], "big")
        return Barrier(barrier_id) if kind == 5 else BarrierAck(barrier_id)
    if kind == 7:
        return _peers_model(body)
    return None


def _protocol_model(stream: bytes, *, opened: bool) -> tuple[list[ProtocolEvent], bool]:
    """The events node "me" (no secret) makes of ``stream``, and whether it fails.

    ``opened``: the handshake is already done (no preamble, no HELLO expected).
    """
    pos = 0
    if not opened:
        if not b"PSTP".startswith(stream[:4]):
            return [], True
        if len(stream) < 5:
            return [], False
        if stream[4] != 1:
            return [], True
        pos = 5
    events: list[ProtocolEvent] = []
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos : pos + 4], "big")
        if not 1 <= length <= (MAX_FRAME if opened else 512):
            return events, True
        if len(stream) - pos - 4 < length:
            break
        body = stream[pos + 4 : pos + 4 + length]
        pos += 4 + length
        event: ProtocolEvent | None
        if opened:
            event = _body_model(body)
        else:
            peer = _hello_model(body)
            event = None if peer is None else Opened(peer)
            opened = True
        if event is None:
            return events, True
        events.append(event)
    return events, False


def _feed(proto: PeerProtocol, pieces: list[bytes]) -> tuple[list[ProtocolEvent], bool]:
    """What ``proto`` makes of ``pieces`` fed one by one: events, and whether it failed."""
    events: list[ProtocolEvent] = []
    try:
        for piece in pieces:
            events += proto.receive_data(piece)
    except ProtocolError:
        return events, True
    return events, False


def _hello(node_id: str, *, flags: int = 0, nonce: bytes = b"\x02" * 16) -> bytes:
    raw = node_id.encode()
    return bytes([1, flags]) + nonce + bytes([len(raw)]) + raw + (7000).to_bytes(2, "big")


# Frames an open connection accepts, for the examples that take the accepting branch.
VALID_FRAMES = [
    encode_frame(encode_message_body("t", b"payload")),
    encode_frame(PeerProtocol.ping_body()),
    encode_frame(PeerProtocol.barrier_body(7)),
    encode_frame(PeerProtocol.barrier_ack_body(2**64 - 1)),
    encode_frame(PeerProtocol.peers_body(["10.0.0.1:7000", "é:1"])),
]


def _opened_pair(secret: bytes | None) -> tuple[PeerProtocol, PeerProtocol]:
    a = PeerProtocol("a", nonce=b"\x01" * 16, secret=secret, max_frame_size=MAX_FRAME)
    b = PeerProtocol("b", nonce=b"\x02" * 16, secret=secret, max_frame_size=MAX_FRAME)
    for _ in range(3):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        b.receive_data(out_a)
        a.receive_data(out_b)
    return a, b


@given(chunks)
@example([encode_frame(b"one") + b"\x00\x00", b"\x00\x04\x00two", encode_frame(b"3")[:2]])
@example([encode_frame(b"x" * MAX_FRAME)[:100], encode_frame(b"x" * MAX_FRAME)[100:]])
def test_decoder_on_arbitrary_bytes_gives_the_frames_or_a_protocol_error(
    pieces: list[bytes],
) -> None:
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    frames: list[bytes] = []
    error: type[ProtocolError] | None = None
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    except ProtocolError as exc:
        error = type(exc)
    expected, expected_error, left_over = _split_model(b"".join(pieces), MAX_FRAME)
    assert frames == expected
    assert error is expected_error
    if error is None:
        assert decoder.buffered == left_over


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=10), st.lists(st.integers(0, 10**6)))
def test_decoder_round_trips_frames_however_the_stream_is_cut(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(body) for body in bodies)
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    got = []
    for piece in _split(stream, cuts):
        decoder.feed(piece)
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == bodies


@given(st.booleans(), chunks)
@example(True, [encode_frame(_hello("peer")), *VALID_FRAMES])
@example(True, [encode_frame(_hello("peer"))[:9], encode_frame(_hello("peer"))[9:], b"\x00"])
@example(True, [encode_frame(_hello("me"))])  # itself
@example(True, [encode_frame(_hello("peer", flags=1))])  # wants a secret
@example(True, [encode_frame(_hello("peer", nonce=OWN_NONCE))])  # echoes the nonce
@example(False, [b"PS", b"TP\x02"])  # a future version
def test_protocol_fed_garbage_gives_the_events_or_a_protocol_error(
    with_preamble: bool, pieces: list[bytes]
) -> None:
    proto = PeerProtocol("me", nonce=OWN_NONCE, max_frame_size=MAX_FRAME)
    if with_preamble:
        pieces = [PREAMBLE, *pieces]
    events, failed = _feed(proto, pieces)
    expected, expected_failed = _protocol_model(b"".join(pieces), opened=False)
    assert failed == expected_failed
    if failed:
        # The events of the call that raised are lost with it: a prefix remains.
        assert events == expected[: len(events)]
    else:
        assert events == expected


@given(st.booleans(), chunks)
@example(False, VALID_FRAMES)
@example(False, [b"".join(VALID_FRAMES)[:-1]])
@example(True, [encode_frame(b"\x04" + bytes(32))])  # a MAC nobody computed
def test_open_connection_fed_garbage_gives_the_events_or_a_protocol_error(
    secret: bool, pieces: list[bytes]
) -> None:
    _, b = _opened_pair(b"k" if secret else None)
    events, failed = _feed(b, pieces)
    stream = b"".join(pieces)
    if secret:
        # Without the key no frame can carry a valid MAC: any whole frame fails.
        frames, error, _ = _split_model(stream, MAX_FRAME)
        assert events == []
        assert failed == (bool(frames) or error is not None)
        return
    expected, expected_failed = _protocol_model(stream, opened=True)
    assert failed == expected_failed
    assert events == (expected[: len(events)] if failed else expected)


@settings(max_examples=50)
@given(st.booleans(), messages, st.lists(st.integers(0, 10**6), max_size=8))
def test_messages_survive_any_chunking(
    secret: bool, sent: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    a, b = _opened_pair(b"k" if secret else None)
    stream = b"".join(a.encode(encode_message_body(t, p)) for t, p in sent)
    got = []
    for piece in _split(stream, cuts):
        got += b.receive_data(piece)
    assert got == [Message(t, p) for t, p in sent]


@settings(max_examples=50)
@given(messages.filter(bool), st.data())
def test_any_flipped_bit_in_an_authenticated_stream_is_caught(
    sent: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    a, b = _opened_pair(b"k")
    stream = bytearray(b"".join(a.encode(encode_message_body(t, p)) for t, p in sent))
    index = data.draw(st.integers(0, len(stream) - 1))
    stream[index] ^= 1 << data.draw(st.integers(0, 7))
    received: list[object] = []
    try:
        received = list(b.receive_data(bytes(stream)))
    except ProtocolError:
        return
    # A flipped length bit can leave the stream waiting for more bytes: then nothing
    # forged may have been delivered, only a prefix of what was sent.
    assert received == [Message(t, p) for t, p in sent][: len(received)]
    assert len(received) < len(sent)


@given(st.lists(st.text(min_size=1, max_size=80), max_size=20))
def test_peers_frames_round_trip(addresses: list[str]) -> None:
    a, b = _opened_pair(None)
    assert b.receive_data(a.encode(PeerProtocol.peers_body(addresses))) == [
        Peers(tuple(x for x in addresses if len(x.encode()) <= 255))
    ]
