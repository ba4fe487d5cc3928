"""Hypothesis against the TCP mesh's sans-I/O parser: exact outcomes for any bytes.

Every fuzz test here asserts what happens when decoding succeeds too: the frames equal a
reference splitter's, the events equal those of the same bytes decoded in one piece (so
chunking never changes the outcome), announced topics equal a model set.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.exceptions import DecodeError, FrameTooLarge, ProtocolError
from podshare.transport._framing import (
    MAX_TOPIC_BYTES,
    PREAMBLE,
    AllTopics,
    FrameDecoder,
    Message,
    Opened,
    PeerProtocol,
    Peers,
    ProtocolEvent,
    State,
    TopicAdded,
    TopicRemoved,
    TopicsComplete,
    encode_frame,
    encode_message_body,
)

MAX_FRAME = 4096

chunks = st.lists(st.binary(max_size=64), max_size=20)
topics = st.text(min_size=1, max_size=20)
messages = st.lists(st.tuples(topics, st.binary(max_size=300)), max_size=10)
#: Pieces of a stream: raw garbage, or whole frames with random bodies.
frame_or_garbage = st.one_of(
    st.binary(max_size=64), st.binary(min_size=1, max_size=80).map(encode_frame)
)


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


def _reference_frames(data: bytes, cap: int) -> tuple[list[bytes], type[Exception] | None]:
    """A deliberately naive splitter: the frames ``data`` holds, and the error it ends in."""
    frames: list[bytes] = []
    pos = 0
    while len(data) - pos >= 4:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if length > cap:
            return frames, FrameTooLarge
        if length == 0:
            return frames, DecodeError
        if len(data) - pos - 4 < length:
            break
        frames.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, None


def _feed(
    proto: PeerProtocol, pieces: list[bytes]
) -> tuple[list[ProtocolEvent], type[Exception] | None, str]:
    """Feed ``pieces``; return the events, the error type (if any) and its message."""
    events: list[ProtocolEvent] = []
    try:
        for piece in pieces:
            events += proto.receive_data(piece)
    except ProtocolError as exc:
        return events, type(exc), str(exc)
    return events, None, ""


def _same_outcome(
    got: tuple[list[ProtocolEvent], type[Exception] | None, str],
    whole: tuple[list[ProtocolEvent], type[Exception] | None, str],
) -> None:
    """Cutting the bytes differently ends the same way. A call that fails discards the
    events completed earlier in that call, so on failure the one-piece run may have
    fewer events: a prefix of the others."""
    events, error, message = got
    whole_events, whole_error, whole_message = whole
    assert (error, message) == (whole_error, whole_message)
    if error is None:
        assert events == whole_events
    else:
        assert events[: len(whole_events)] == whole_events


@given(st.lists(frame_or_garbage, max_size=12), st.lists(st.integers(0, 10**6), max_size=8))
def test_decoder_matches_a_reference_splitter_on_any_bytes(
    parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    expected, error = _reference_frames(data, MAX_FRAME)
    decoder = FrameDecoder(max_frame_size=MAX_FRAME)
    got: list[bytes] = []
    raised: type[Exception] | None = None
    try:
        for piece in _split(data, cuts):
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
    except ProtocolError as exc:
        raised = type(exc)
    assert got == expected
    assert raised is error
    if error is None:
        assert decoder.buffered == len(data) - sum(4 + len(f) for f in got)


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


_HELLO = PeerProtocol("peer", nonce=b"\x07" * 16).data_to_send()  # preamble + a valid HELLO


@given(
    st.sampled_from([b"", PREAMBLE, _HELLO]),
    st.lists(frame_or_garbage, max_size=10),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_a_new_connection_decodes_any_bytes_the_same_however_they_are_cut(
    prefix: bytes, parts: list[bytes], cuts: list[int]
) -> None:
    data = prefix + b"".join(parts)

    def fresh() -> PeerProtocol:
        return PeerProtocol("me", nonce=b"\x01" * 16, max_frame_size=MAX_FRAME)

    whole = fresh()
    expected = _feed(whole, [data])
    pieces = fresh()
    _same_outcome(_feed(pieces, _split(data, cuts)), expected)
    assert pieces.state is whole.state
    events, error, _ = _feed(fresh(), [bytes([b]) for b in data])  # byte by byte: all events
    assert (error is not None) == (whole.state is State.FAILED)
    if prefix == _HELLO:
        assert events[0] == Opened("peer")
    # Nothing surfaces before a HELLO opened the connection, and it opens only once.
    assert not events or isinstance(events[0], Opened)
    assert sum(isinstance(e, Opened) for e in events) <= 1


@given(
    st.booleans(),
    st.lists(frame_or_garbage, max_size=10),
    st.lists(st.integers(0, 10**6), max_size=8),
)
def test_an_open_connection_decodes_any_bytes_the_same_however_they_are_cut(
    secret: bool, parts: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(parts)
    _, whole = _opened_pair(b"k" if secret else None)
    expected = _feed(whole, [data])
    _, pieces = _opened_pair(b"k" if secret else None)
    _same_outcome(_feed(pieces, _split(data, cuts)), expected)
    _, bytewise = _opened_pair(b"k" if secret else None)
    events, error, _ = _feed(bytewise, [bytes([b]) for b in data])
    if secret:
        # Without the key nothing random can pass the MAC: no event ever surfaces.
        assert events == []
        assert error is not None or not data or pieces.pending == len(data)
    for event in events:
        if isinstance(event, Message):
            assert event.topic.encode() in data
            assert event.payload in data


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


_topic_names = st.sampled_from(["ps/a", "ps/a#n1", "ps/b", "é", "t" * MAX_TOPIC_BYTES])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _topic_names),
        st.tuples(st.just("remove"), _topic_names),
        st.tuples(st.just("all"), st.just("")),
        st.tuples(st.just("complete"), st.just("")),
    ),
    max_size=30,
)


@given(st.booleans(), _ops, st.lists(st.integers(0, 10**6), max_size=8))
def test_announced_topics_follow_a_model_set(
    secret: bool, ops: list[tuple[str, str]], cuts: list[int]
) -> None:
    a, b = _opened_pair(b"k" if secret else None)
    bodies: dict[str, Callable[[str], bytes]] = {
        "add": PeerProtocol.topic_added_body,
        "remove": PeerProtocol.topic_removed_body,
        "all": lambda _: PeerProtocol.all_topics_body(),
        "complete": lambda _: PeerProtocol.topics_complete_body(),
    }
    stream = b"".join(a.encode(bodies[op](topic)) for op, topic in ops)
    got: list[ProtocolEvent] = []
    for piece in _split(stream, cuts):
        got += b.receive_data(piece)
    expected_events: list[ProtocolEvent] = []
    model: set[str] = set()
    everything = complete = False
    for op, topic in ops:
        if op == "add":
            expected_events.append(TopicAdded(topic))
            if not everything:
                model.add(topic)
        elif op == "remove":
            expected_events.append(TopicRemoved(topic))
            model.discard(topic)
        elif op == "all":
            expected_events.append(AllTopics())
            everything, model = True, set()
        else:
            expected_events.append(TopicsComplete())
            complete = True
    assert got == expected_events
    assert b.peer_topics == model
    assert (b.peer_all_topics, b.peer_topics_complete) == (everything, complete)
    for topic in ["ps/a", "ps/b", "never"]:
        assert b.peer_subscribes(topic) == (not complete or everything or topic in model)
