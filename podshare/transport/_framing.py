"""The TCP mesh's wire protocol, sans-I/O: frames, the handshake and frame authentication.

Nothing here touches a socket, a clock or a random source: bytes and calls go in, events
and bytes come out. `TcpTransport` only moves bytes between
a stream and a `PeerProtocol`, so Hypothesis can drive the parser directly.

Wire format (all integers big-endian):

```text
stream   := preamble frame*
preamble := b"PSTP" version:u8                     version 1
frame    := length:u32 body[length]                1 <= length <= max_frame_size
body     := kind:u8 fields [mac:32]
HELLO       (kind 1) := flags:u8 nonce:16 id_len:u8 node_id listen_port:u16
                        (flags bit 0: a secret is in use; bit 1: the sender
                        announces its subscriptions; port 0: not listening)
AUTH        (kind 2) := proof:32
MESSAGE     (kind 3) := topic_len:u16 topic payload
PING        (kind 4) := (nothing)
BARRIER     (kind 5) := id:u64   "answer after everything you sent so far"
BARRIER_ACK (kind 6) := id:u64   the answer, ordered after those messages
PEERS       (kind 7) := count:u16 (len:u8 address)*   "host:port" of other peers
TOPIC       (kind 8) := op:u8 topic                  the sender's subscriptions:
                        op 1 ADD topic, op 2 REMOVE topic, op 3 ALL (count the
                        sender for every topic; empty topic), op 4 COMPLETE (the
                        initial announcement is over; empty topic)
```

A new subscription sends a BARRIER to every connected peer and ignores each peer's
messages until that peer's BARRIER_ACK arrives: exactly the messages a peer published
after the subscription existed reach it, never older ones still in flight. PEERS tells a
newly connected peer where the sender's other peers listen, so the mesh completes itself.

TOPIC frames are sent only to peers whose HELLO set flag bit 1 (so a peer of an older
release, which would refuse kind 8, still interoperates). Right after the handshake each
side announces every topic it subscribes to (ADDs, or one ALL when it holds more than
`MAX_ANNOUNCED_TOPICS` topics or `MAX_ANNOUNCED_TOPIC_BYTES` bytes of them),
then COMPLETE; later subscriptions and unsubscriptions follow as ADD and REMOVE, each
ahead of the subscription's BARRIER. The receiver keeps the announced set per connection,
bounded by those two caps: a peer announcing more fails with a
`ProtocolError`.

Both sides send the preamble and a HELLO at once. Without a secret the connection is open
as soon as the peer's HELLO is valid. With a secret each side then sends an AUTH proof,
``HMAC(secret, "proof" | peer_nonce | own_nonce | own_id | peer_id | own_port)``, which proves
knowledge of the secret without sending it, and is bound to both fresh nonces (no replay)
and to the direction (no reflection). Every later frame then ends with
``HMAC(direction_key, seq:u64 | body)``, where the direction key is derived from the
secret and both nonces and ``seq`` counts the sender's frames from zero, so a frame cannot
be forged, replayed, reordered or moved to another connection.
"""

from __future__ import annotations

import enum
import hmac
from dataclasses import dataclass

from podshare.exceptions import (
    AuthenticationError,
    DecodeError,
    FrameTooLarge,
    ProtocolError,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HANDSHAKE_MAX_FRAME_SIZE",
    "MAC_SIZE",
    "MAGIC",
    "MAX_ANNOUNCED_TOPICS",
    "MAX_ANNOUNCED_TOPIC_BYTES",
    "MAX_PEER_ADDRESSES",
    "MAX_TOPIC_BYTES",
    "NONCE_SIZE",
    "PREAMBLE",
    "VERSION",
    "AllTopics",
    "Barrier",
    "BarrierAck",
    "FrameDecoder",
    "Message",
    "Opened",
    "PeerProtocol",
    "Peers",
    "Ping",
    "ProtocolEvent",
    "State",
    "TopicAdded",
    "TopicRemoved",
    "TopicsComplete",
    "check_topic",
    "encode_frame",
    "encode_message_body",
]

MAGIC = b"PSTP"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
NONCE_SIZE = 16
MAC_SIZE = 32
#: Topics are short names (``ps/{name}#{node}``); the cap keeps a frame's header small.
MAX_TOPIC_BYTES = 1024
#: Room for the frame header, the topic and a MAC on top of a message's payload.
FRAME_OVERHEAD = 4 + 1 + 2 + MAX_TOPIC_BYTES + MAC_SIZE
#: The default cap: a 1 MiB message plus its overhead.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024 + FRAME_OVERHEAD

_HEADER = 4
_KIND_HELLO = 1
_KIND_AUTH = 2
_KIND_MESSAGE = 3
_KIND_PING = 4
_KIND_BARRIER = 5
_KIND_BARRIER_ACK = 6
_KIND_PEERS = 7
_KIND_TOPIC = 8
_TOPIC_ADD = 1
_TOPIC_REMOVE = 2
_TOPIC_ALL = 3
_TOPIC_COMPLETE = 4
#: At most this many addresses in one PEERS frame (each at most 255 bytes).
MAX_PEER_ADDRESSES = 1024
_FLAG_SECRET = 0x01
_FLAG_TOPICS = 0x02
#: At most this many topics announced by one peer (a podshare node holding more
#: announces ALL instead); one more is a protocol error.
MAX_ANNOUNCED_TOPICS = 1024
#: At most this many bytes of topic names announced by one peer, in all.
MAX_ANNOUNCED_TOPIC_BYTES = 128 * 1024
_MAX_NODE_ID_BYTES = 255
#: The cap before the handshake completes: HELLO and AUTH are small, so a peer that has
#: not proved anything cannot make this node buffer more than this per frame.
HANDSHAKE_MAX_FRAME_SIZE = 512
_PROOF_LABEL = b"podshare/tcp/1 proof"
_KEY_LABEL = b"podshare/tcp/1 key"


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length.

    Example:
        >>> encode_frame(b"\\x04")
        b'\\x00\\x00\\x00\\x01\\x04'
    """
    return len(body).to_bytes(_HEADER, "big") + body


def check_topic(topic: str) -> bytes:
    """``topic`` encoded, if it is 1..`MAX_TOPIC_BYTES` bytes of UTF-8.

    Raises:
        DecodeError: the topic is empty, too long or not encodable.
    """
    try:
        raw = topic.encode()
    except UnicodeEncodeError as exc:
        raise DecodeError(f"a topic must be UTF-8 encodable: {exc}") from exc
    if not raw or len(raw) > MAX_TOPIC_BYTES:
        raise DecodeError(f"a topic must be 1..{MAX_TOPIC_BYTES} bytes of UTF-8, got {len(raw)}")
    return raw


def encode_message_body(topic: str, payload: bytes) -> bytes:
    """The body of a MESSAGE frame (without its MAC), shared by every connection.

    Raises:
        DecodeError: the topic is empty or longer than `MAX_TOPIC_BYTES` encoded.
    """
    raw = check_topic(topic)
    return bytes([_KIND_MESSAGE]) + len(raw).to_bytes(2, "big") + raw + payload


class FrameDecoder:
    """Splits a byte stream into frame bodies, checking each length before buffering it.

    A frame whose header declares more than ``max_frame_size`` bytes fails as soon as its
    four header bytes arrived, so a peer cannot make the receiver allocate or wait for a
    body above the cap.

    Example:
        >>> decoder = FrameDecoder(max_frame_size=16)
        >>> decoder.feed(encode_frame(b"ab") + b"\\x00\\x00")
        >>> decoder.next_frame(), decoder.next_frame()
        (b'ab', None)
        >>> decoder.feed(b"\\x00\\x01c")
        >>> decoder.next_frame()
        b'c'
    """

    __slots__ = ("_buffer", "_max", "_pos")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if max_frame_size < 1:
            raise ValueError("max_frame_size must be at least 1")
        self._max = max_frame_size
        self._buffer = bytearray()
        self._pos = 0

    @property
    def max_frame_size(self) -> int:
        """The cap checked against each frame header (may be raised or lowered)."""
        return self._max

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_frame_size must be at least 1")
        self._max = value

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer) - self._pos

    def peek(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes, without consuming them."""
        return bytes(self._buffer[self._pos : self._pos + size])

    def skip(self, size: int) -> None:
        """Consume ``size`` buffered bytes (at most what is buffered)."""
        self._pos = min(self._pos + size, len(self._buffer))

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos:
            # Compact once per feed rather than once per frame: O(n), not O(n * frames).
            del self._buffer[: self._pos]
            self._pos = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or ``None`` until more bytes arrive.

        Raises:
            FrameTooLarge: the next header declares a body above the cap.
            DecodeError: the next header declares an empty body.
        """
        buffer, pos = self._buffer, self._pos
        if len(buffer) - pos < _HEADER:
            return None
        length = int.from_bytes(buffer[pos : pos + _HEADER], "big")
        if length > self._max:
            raise FrameTooLarge(f"frame of {length} bytes exceeds max_frame_size={self._max}")
        if length == 0:
            raise DecodeError("empty frame")
        end = pos + _HEADER + length
        if len(buffer) < end:
            return None
        self._pos = end
        return bytes(buffer[pos + _HEADER : end])


class State(enum.Enum):
    """Where a `PeerProtocol` is in its life."""

    HELLO = "hello"  # waiting for the peer's preamble and HELLO
    AUTH = "auth"  # HELLO done, waiting for the peer's proof
    OPEN = "open"  # messages flow
    FAILED = "failed"  # a ProtocolError was raised; the connection must be closed


@dataclass(frozen=True, slots=True)
class Opened:
    """The handshake completed; ``peer_node_id`` is the peer's (verified) node id."""

    peer_node_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """A message the peer published on ``topic``."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A keepalive from the peer; it only proves the peer is alive."""


@dataclass(frozen=True, slots=True)
class Barrier:
    """The peer asks for a `BarrierAck` with ``barrier_id``."""

    barrier_id: int


@dataclass(frozen=True, slots=True)
class BarrierAck:
    """The peer answered the barrier ``barrier_id``: what it sent before it has arrived."""

    barrier_id: int


@dataclass(frozen=True, slots=True)
class Peers:
    """The peer's other peers, as ``"host:port"`` addresses they listen on."""

    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopicAdded:
    """The peer subscribes to ``topic`` (announced on connect, or a new subscription)."""

    topic: str


@dataclass(frozen=True, slots=True)
class TopicRemoved:
    """The peer no longer subscribes to ``topic``."""

    topic: str


@dataclass(frozen=True, slots=True)
class AllTopics:
    """The peer holds too many subscriptions to announce: count it for every topic."""


@dataclass(frozen=True, slots=True)
class TopicsComplete:
    """The peer's initial announcement is over: its announced set is now authoritative."""


ProtocolEvent = (
    Opened
    | Message
    | Ping
    | Barrier
    | BarrierAck
    | Peers
    | TopicAdded
    | TopicRemoved
    | AllTopics
    | TopicsComplete
)


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class PeerProtocol:
    """One side of one connection: the handshake, then authenticated frames.

    ``nonce`` must be fresh random bytes for every connection (the caller owns the random
    source, so this class stays deterministic under test). Bytes the protocol wants sent on
    its own (preamble, HELLO, AUTH) are collected by `data_to_send`; frames the
    caller sends are returned by `encode`.

    Example:
        >>> a = PeerProtocol("a", nonce=bytes(16), secret=b"s")
        >>> b = PeerProtocol("b", nonce=bytes(range(16)), secret=b"s")
        >>> hello_a, hello_b = a.data_to_send(), b.data_to_send()
        >>> a.receive_data(hello_b), b.receive_data(hello_a)  # each answers with a proof
        ([], [])
        >>> a.receive_data(b.data_to_send()), b.receive_data(a.data_to_send())
        ([Opened(peer_node_id='b')], [Opened(peer_node_id='a')])
        >>> b.receive_data(a.encode(encode_message_body("t", b"hi")))
        [Message(topic='t', payload=b'hi')]
    """

    __slots__ = (
        "_decoder",
        "_max_frame_size",
        "_nonce",
        "_out",
        "_peer_nonce",
        "_peer_topic_bytes",
        "_preamble_seen",
        "_recv_key",
        "_recv_seq",
        "_secret",
        "_send_key",
        "_send_seq",
        "announces_topics",
        "listen_port",
        "node_id",
        "peer_all_topics",
        "peer_announces_topics",
        "peer_listen_port",
        "peer_node_id",
        "peer_topics",
        "peer_topics_complete",
        "self_connection",
        "state",
    )

    def __init__(
        self,
        node_id: str,
        *,
        nonce: bytes,
        secret: bytes | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        listen_port: int = 0,
        announces_topics: bool = True,
    ) -> None:
        raw_id = node_id.encode()
        if not 0 <= listen_port <= 65535:
            raise ValueError("listen_port must be 0..65535")
        if not 1 <= len(raw_id) <= _MAX_NODE_ID_BYTES:
            raise ValueError(f"node_id must be 1..{_MAX_NODE_ID_BYTES} bytes of UTF-8")
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        if secret is not None and not secret:
            raise ValueError("secret must not be empty")
        self.node_id = node_id
        self.peer_node_id: str | None = None
        #: True once the peer turned out to be this very node (same node id).
        self.self_connection = False
        self.state = State.HELLO
        self._nonce = nonce
        self._secret = secret
        self._max_frame_size = max_frame_size
        self._decoder = FrameDecoder(min(max_frame_size, HANDSHAKE_MAX_FRAME_SIZE))
        self._preamble_seen = False
        self._peer_nonce = b""
        self._send_key = b""
        self._recv_key = b""
        self._send_seq = 0
        self._recv_seq = 0
        flags = (_FLAG_SECRET if secret is not None else 0) | (
            _FLAG_TOPICS if announces_topics else 0
        )
        self.listen_port = listen_port
        #: Whether this side told the peer it announces its subscriptions (TOPIC frames).
        self.announces_topics = announces_topics
        #: The port the peer listens on (0: it does not), from its HELLO.
        self.peer_listen_port = 0
        #: Whether the peer's HELLO said it announces its subscriptions.
        self.peer_announces_topics = False
        #: The topics the peer announced (bounded by the MAX_ANNOUNCED_* caps).
        self.peer_topics: set[str] = set()
        #: The peer announced ALL: it counts as a subscriber of every topic.
        self.peer_all_topics = False
        #: The peer's initial announcement is over (COMPLETE received).
        self.peer_topics_complete = False
        self._peer_topic_bytes = 0
        hello = (
            bytes([_KIND_HELLO, flags])
            + nonce
            + bytes([len(raw_id)])
            + raw_id
            + listen_port.to_bytes(2, "big")
        )
        self._out = bytearray(PREAMBLE + encode_frame(hello))

    @property
    def authenticated(self) -> bool:
        """Whether frames carry MACs (a secret is in use)."""
        return self._secret is not None

    @property
    def peer_nonce(self) -> bytes:
        """The nonce of the peer's HELLO (empty before it arrived).

        Also set when the HELLO was refused for carrying this node's own id, so the
        caller can tell its own looped-back connection from another node using its id.
        """
        return self._peer_nonce

    def peer_subscribes(self, topic: str) -> bool:
        """Whether a message on ``topic`` should be sent to this peer.

        True until the peer's initial announcement is complete (and always for a peer
        that does not announce), then only for announced topics or after ALL.
        """
        if not self.peer_topics_complete or self.peer_all_topics:
            return True
        return topic in self.peer_topics

    @property
    def pending(self) -> int:
        """Received bytes not yet forming a whole frame (non-zero at EOF: truncated)."""
        return self._decoder.buffered

    def data_to_send(self) -> bytes:
        """Handshake bytes waiting to be written (empty when there are none)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def encode(self, body: bytes) -> bytes:
        """Frame ``body`` (from `encode_message_body` or `ping_body`) for sending.

        Raises:
            ProtocolError: the handshake has not completed.
        """
        if self.state is not State.OPEN:
            raise ProtocolError(f"cannot send frames in state {self.state.value}")
        if self._secret is None:
            return len(body).to_bytes(_HEADER, "big") + body
        mac = hmac.digest(self._send_key, self._send_seq.to_bytes(8, "big") + body, "sha256")
        self._send_seq += 1
        return (len(body) + MAC_SIZE).to_bytes(_HEADER, "big") + body + mac

    @staticmethod
    def ping_body() -> bytes:
        """The body of a keepalive frame."""
        return bytes([_KIND_PING])

    @staticmethod
    def barrier_body(barrier_id: int) -> bytes:
        """The body of a BARRIER frame."""
        return bytes([_KIND_BARRIER]) + barrier_id.to_bytes(8, "big")

    @staticmethod
    def barrier_ack_body(barrier_id: int) -> bytes:
        """The body of a BARRIER_ACK frame."""
        return bytes([_KIND_BARRIER_ACK]) + barrier_id.to_bytes(8, "big")

    @staticmethod
    def peers_body(addresses: list[str]) -> bytes:
        """The body of a PEERS frame (addresses too long to encode are left out)."""
        parts = [a.encode() for a in addresses[:MAX_PEER_ADDRESSES]]
        parts = [p for p in parts if 0 < len(p) <= 255]
        return (
            bytes([_KIND_PEERS])
            + len(parts).to_bytes(2, "big")
            + b"".join(bytes([len(p)]) + p for p in parts)
        )

    @staticmethod
    def topic_added_body(topic: str) -> bytes:
        """The body of a TOPIC ADD frame.

        Raises:
            DecodeError: the topic is empty or longer than `MAX_TOPIC_BYTES` encoded.
        """
        return bytes([_KIND_TOPIC, _TOPIC_ADD]) + check_topic(topic)

    @staticmethod
    def topic_removed_body(topic: str) -> bytes:
        """The body of a TOPIC REMOVE frame (see `topic_added_body`)."""
        return bytes([_KIND_TOPIC, _TOPIC_REMOVE]) + check_topic(topic)

    @staticmethod
    def all_topics_body() -> bytes:
        """The body of a TOPIC ALL frame."""
        return bytes([_KIND_TOPIC, _TOPIC_ALL])

    @staticmethod
    def topics_complete_body() -> bytes:
        """The body of a TOPIC COMPLETE frame."""
        return bytes([_KIND_TOPIC, _TOPIC_COMPLETE])

    def receive_data(self, data: bytes) -> list[ProtocolEvent]:
        """Feed received bytes; return the events they complete, in order.

        Raises:
            ProtocolError: any subclass (DecodeError, FrameTooLarge, AuthenticationError)
                for bytes a podshare peer would not send; the connection must be closed,
                and later calls raise again. Events completed earlier in the same call
                are discarded with it.
        """
        if self.state is State.FAILED:
            raise ProtocolError("the connection already failed")
        try:
            return self._receive(data)
        except ProtocolError:
            self.state = State.FAILED
            raise

    def _receive(self, data: bytes) -> list[ProtocolEvent]:
        decoder = self._decoder
        decoder.feed(data)
        if not self._preamble_seen and not self._read_preamble():
            return []
        events: list[ProtocolEvent] = []
        while (body := decoder.next_frame()) is not None:
            if self.state is State.OPEN:
                events.append(self._open_frame(body))
            elif self.state is State.HELLO:
                self._hello(body)
                if self._secret is None:
                    events.append(self._open())
            else:
                self._auth(body)
                events.append(self._open())
        return events

    def _read_preamble(self) -> bool:
        decoder = self._decoder
        head = decoder.peek(len(PREAMBLE))
        if not MAGIC.startswith(head[: len(MAGIC)]):
            raise DecodeError("not a podshare TCP peer (bad magic)")
        if len(head) < len(PREAMBLE):
            return False
        if head[-1] != VERSION:
            raise DecodeError(
                f"peer speaks podshare TCP protocol version {head[-1]}; this node speaks {VERSION}"
            )
        decoder.skip(len(PREAMBLE))
        self._preamble_seen = True
        return True

    def _hello(self, body: bytes) -> None:
        if body[0] != _KIND_HELLO:
            raise DecodeError(f"expected HELLO, got frame kind {body[0]}")
        if len(body) < 3 + NONCE_SIZE:
            raise DecodeError("truncated HELLO")
        flags = body[1]
        nonce = body[2 : 2 + NONCE_SIZE]
        id_len = body[2 + NONCE_SIZE]
        raw_id = body[3 + NONCE_SIZE : 3 + NONCE_SIZE + id_len]
        if id_len == 0 or len(raw_id) != id_len or len(body) != 3 + NONCE_SIZE + id_len + 2:
            raise DecodeError("HELLO has a bad node id length")
        port = int.from_bytes(body[-2:], "big")
        try:
            peer_id = raw_id.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError("HELLO node id is not UTF-8") from exc
        self._peer_nonce = nonce
        if peer_id == self.node_id:
            self.self_connection = True
            raise ProtocolError(f"connected to itself (node id {peer_id!r})")
        peer_uses_secret = bool(flags & _FLAG_SECRET)
        if peer_uses_secret != (self._secret is not None):
            raise AuthenticationError(
                "peer requires a shared secret" if peer_uses_secret else "peer sent no secret"
            )
        if nonce == self._nonce:
            # An echoed nonce is how a reflection attack would start.
            raise AuthenticationError("peer echoed this node's nonce")
        self.peer_node_id = peer_id
        self.peer_listen_port = port
        self.peer_announces_topics = bool(flags & _FLAG_TOPICS)
        if self._secret is not None:
            proof = self._proof(nonce, self._nonce, self.node_id, peer_id, self.listen_port)
            self._out += encode_frame(bytes([_KIND_AUTH]) + proof)
            self.state = State.AUTH

    def _proof(
        self, challenge: bytes, nonce: bytes, prover: str, verifier: str, prover_port: int
    ) -> bytes:
        assert self._secret is not None
        message = (
            _PROOF_LABEL
            + challenge
            + nonce
            + _length_prefixed(prover.encode())
            + _length_prefixed(verifier.encode())
            + prover_port.to_bytes(2, "big")
        )
        return hmac.digest(self._secret, message, "sha256")

    def _key(self, sender_nonce: bytes, receiver_nonce: bytes, sender: str, receiver: str) -> bytes:
        assert self._secret is not None
        message = (
            _KEY_LABEL
            + sender_nonce
            + receiver_nonce
            + _length_prefixed(sender.encode())
            + _length_prefixed(receiver.encode())
        )
        return hmac.digest(self._secret, message, "sha256")

    def _auth(self, body: bytes) -> None:
        if body[0] != _KIND_AUTH or len(body) != 1 + MAC_SIZE:
            raise AuthenticationError("expected an AUTH proof")
        peer = self.peer_node_id
        assert peer is not None
        expected = self._proof(
            self._nonce, self._peer_nonce, peer, self.node_id, self.peer_listen_port
        )
        if not hmac.compare_digest(body[1:], expected):
            raise AuthenticationError(f"peer {peer!r} failed the handshake (wrong secret)")
        self._send_key = self._key(self._nonce, self._peer_nonce, self.node_id, peer)
        self._recv_key = self._key(self._peer_nonce, self._nonce, peer, self.node_id)

    def _open(self) -> Opened:
        self.state = State.OPEN
        self._decoder.max_frame_size = self._max_frame_size
        assert self.peer_node_id is not None
        return Opened(self.peer_node_id)

    def _open_frame(self, body: bytes) -> ProtocolEvent:
        if self._secret is not None:
            if len(body) <= MAC_SIZE:
                raise AuthenticationError("frame too short to carry a MAC")
            content, mac = body[:-MAC_SIZE], body[-MAC_SIZE:]
            expected = hmac.digest(
                self._recv_key, self._recv_seq.to_bytes(8, "big") + content, "sha256"
            )
            if not hmac.compare_digest(mac, expected):
                raise AuthenticationError("frame MAC mismatch (forged, replayed or reordered)")
            self._recv_seq += 1
            body = content
        kind = body[0]
        if kind == _KIND_MESSAGE:
            if len(body) < 3:
                raise DecodeError("truncated MESSAGE header")
            topic_len = int.from_bytes(body[1:3], "big")
            if topic_len == 0 or topic_len > MAX_TOPIC_BYTES or len(body) < 3 + topic_len:
                raise DecodeError("MESSAGE has a bad topic length")
            try:
                topic = body[3 : 3 + topic_len].decode()
            except UnicodeDecodeError as exc:
                raise DecodeError("MESSAGE topic is not UTF-8") from exc
            return Message(topic, body[3 + topic_len :])
        if kind == _KIND_PING:
            if len(body) != 1:
                raise DecodeError("PING carries no data")
            return Ping()
        if kind in (_KIND_BARRIER, _KIND_BARRIER_ACK):
            if len(body) != 9:
                raise DecodeError("a barrier carries exactly an 8-byte id")
            barrier_id = int.from_bytes(body[1:], "big")
            return Barrier(barrier_id) if kind == _KIND_BARRIER else BarrierAck(barrier_id)
        if kind == _KIND_PEERS:
            return self._peers(body)
        if kind == _KIND_TOPIC:
            return self._topic(body)
        raise DecodeError(f"unknown frame kind {kind}")

    def _topic(self, body: bytes) -> ProtocolEvent:
        if not self.peer_announces_topics:
            raise DecodeError("TOPIC frame from a peer that did not announce subscriptions")
        if len(body) < 2:
            raise DecodeError("truncated TOPIC")
        op, raw = body[1], body[2:]
        if op in (_TOPIC_ALL, _TOPIC_COMPLETE):
            if raw:
                raise DecodeError("TOPIC ALL and COMPLETE carry no topic")
            if op == _TOPIC_COMPLETE:
                self.peer_topics_complete = True
                return TopicsComplete()
            self.peer_all_topics = True
            self.peer_topics.clear()  # no longer needed: the peer counts for every topic
            self._peer_topic_bytes = 0
            return AllTopics()
        if op not in (_TOPIC_ADD, _TOPIC_REMOVE):
            raise DecodeError(f"unknown TOPIC operation {op}")
        if not raw or len(raw) > MAX_TOPIC_BYTES:
            raise DecodeError(f"a topic must be 1..{MAX_TOPIC_BYTES} bytes, got {len(raw)}")
        try:
            topic = raw.decode()
        except UnicodeDecodeError as exc:
            raise DecodeError("TOPIC is not UTF-8") from exc
        topics = self.peer_topics
        if op == _TOPIC_REMOVE:
            if topic in topics:
                topics.discard(topic)
                self._peer_topic_bytes -= len(raw)
            return TopicRemoved(topic)
        if topic not in topics and not self.peer_all_topics:
            if len(topics) >= MAX_ANNOUNCED_TOPICS:
                raise ProtocolError(
                    f"peer announced more than {MAX_ANNOUNCED_TOPICS} topics "
                    "(a podshare peer announces ALL instead)"
                )
            if self._peer_topic_bytes + len(raw) > MAX_ANNOUNCED_TOPIC_BYTES:
                raise ProtocolError(
                    f"peer announced more than {MAX_ANNOUNCED_TOPIC_BYTES} bytes of topics "
                    "(a podshare peer announces ALL instead)"
                )
            topics.add(topic)
            self._peer_topic_bytes += len(raw)
        return TopicAdded(topic)

    @staticmethod
    def _peers(body: bytes) -> Peers:
        if len(body) < 3:
            raise DecodeError("truncated PEERS")
        count = int.from_bytes(body[1:3], "big")
        if count > MAX_PEER_ADDRESSES:
            raise DecodeError(f"PEERS lists {count} addresses (at most {MAX_PEER_ADDRESSES})")
        addresses = []
        pos = 3
        for _ in range(count):
            if pos >= len(body):
                raise DecodeError("truncated PEERS")
            size = body[pos]
            raw = body[pos + 1 : pos + 1 + size]
            if size == 0 or len(raw) != size:
                raise DecodeError("PEERS has a bad address length")
            try:
                addresses.append(raw.decode())
            except UnicodeDecodeError as exc:
                raise DecodeError("PEERS address is not UTF-8") from exc
            pos += 1 + size
        if pos != len(body):
            raise DecodeError("PEERS has trailing bytes")
        return Peers(tuple(addresses))
