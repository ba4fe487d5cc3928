"""Hypothesis against the TCP mesh's sans-I/O parser: any bytes give events or a ProtocolError."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.exceptions import ProtocolError
from podshare.transport._framing import (
    PREAMBLE,
    FrameDecoder,
    Message,
    Opened,
    PeerProtocol,
    Peers,
    encode_frame,
    encode_message_body,
)

MAX_FRAME = 4096

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


def _opened_pair(secret: bytes | None) -> tuple[PeerProtocol, PeerProtocol]:
    a = PeerProtocol("a", nonce=b"\x01" * 16, secret=secret, max_frame_size=MAX_FRAME)
    b = PeerProtocol("b", nonce=b"\x02" * 16, secret=secret, max_frame_size=MAX_FRAME)
    for _ in range(3):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        b.receive_data(out_a)
        a.receive_data(out_b)
    return a, b


@given(chunks)
def test_decoder_on_arbitrary_bytes_only_raises_protocol_errors(pieces: list[bytes]) -> None:
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    try:
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                assert 1 <= len(frame) <= MAX_FRAME
    except ProtocolError:
        pass
    assert decoder.buffered <= sum(map(len, pieces))


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
def test_protocol_fed_garbage_only_raises_protocol_errors(
    with_preamble: bool, pieces: list[bytes]
) -> None:
    proto = PeerProtocol("me", nonce=b"\x01" * 16, max_frame_size=MAX_FRAME)
    if with_preamble:
        pieces = [PREAMBLE, *pieces]
    try:
        for piece in pieces:
            for event in proto.receive_data(piece):
                assert isinstance(event, Opened | Message)
    except ProtocolError:
        pass


@given(st.booleans(), chunks)
def test_open_connection_fed_garbage_only_raises_protocol_errors(
    secret: bool, pieces: list[bytes]
) -> None:
    _, b = _opened_pair(b"k" if secret else None)
    try:
        for piece in pieces:
            b.receive_data(piece)
    except ProtocolError:
        pass


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
