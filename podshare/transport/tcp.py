"""TcpTransport: a brokerless mesh of direct TCP connections between pods.

Every node listens on one address and dials the peers it is told about; messages go
straight to every connected peer that subscribes to their topic, and to the node's own
subscribers. The wire protocol (framing, handshake, authentication, subscription
announcements) lives in `podshare.transport._framing`; this module only moves bytes
between sockets and that sans-I/O core.

Example:
    >>> import anyio
    >>> from podshare.transport import TcpTransport
    >>> async def main() -> bytes:
    ...     async with TcpTransport() as a, TcpTransport(peers=[a.address]) as b:
    ...         await b.wait_ready()                  # connected to every known peer
    ...         async with a.subscribe("t") as messages:
    ...             await b.publish("t", b"hello")
    ...             return await messages.receive()
    >>> anyio.run(main)
    b'hello'
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from itertools import chain

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from podshare._counters import StatsRecord
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.exceptions import (
    AuthenticationError,
    ClosedError,
    ConfigurationError,
    DecodeError,
    FrameTooLarge,
    MessageTooLarge,
    PodshareError,
    ProtocolError,
    TransportError,
)
from podshare.transport._callbacks import CallbackRunner
from podshare.transport._framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_OVERHEAD,
    MAC_SIZE,
    MAX_ANNOUNCED_TOPIC_BYTES,
    MAX_ANNOUNCED_TOPICS,
    NONCE_SIZE,
    Barrier,
    BarrierAck,
    Message,
    Opened,
    PeerProtocol,
    Peers,
    Ping,
    ProtocolEvent,
    State,
    check_topic,
    encode_frame,
    encode_message_body,
)
from podshare.transport._inbox import Inbox
from podshare.transport._tcp_gate import HandshakeGate, RateLimitedLog, Ticket
from podshare.transport._tcp_queue import SendQueue
from podshare.transport.base import GapListeners, check_skip

__all__ = [
    "ErrorCallback",
    "PeerCallback",
    "PeerConnection",
    "TcpStats",
    "TcpTransport",
    "format_address",
    "parse_address",
]

_log = logging.getLogger("podshare.transport.tcp")

_READ_SIZE = 65536
#: The length prefix of every frame.
_FRAME_HEADER = 4
#: Topics whose MESSAGE header is kept encoded (the cache is emptied when full).
_MESSAGE_HEADERS_CACHED = 256
#: Errors a connection may end with; anything else is a bug and propagates.
_CONNECTION_ERRORS = (
    OSError,  # includes ssl.SSLError and ConnectionError
    TimeoutError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.IncompleteRead,
    PodshareError,
)

#: Failed dials after which an address learned from a peer is forgotten.
_GOSSIP_ATTEMPTS = 3
#: At most this many learned addresses are dialed at a time (a peer cannot make this node
#: dial the whole internet).
_MAX_GOSSIPED = 1024
#: The peer went away (closed, reset, broken pipe).
_LOST_CONNECTION = (OSError, anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead)
#: Seconds between two log lines about failures of the same kind (the rest are counted).
FAILURE_LOG_INTERVAL = 10.0
#: Handshake nonces of this node remembered, to recognise its own looped-back connections.
_NONCES_REMEMBERED = 1024

#: ``on_connect`` / ``on_disconnect``: ``(remote, inbound)``, sync or async.
PeerCallback = Callable[["PeerConnection", bool], Awaitable[None] | None]
#: ``on_error``: the problem as a [`PodshareError`][podshare.exceptions.PodshareError].
ErrorCallback = Callable[[PodshareError], Awaitable[None] | None]


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into host and port.

    Example:
        >>> parse_address("10.0.0.7:7000"), parse_address("[::1]:0")
        (('10.0.0.7', 7000), ('::1', 0))

    Raises:
        ConfigurationError: the address has no valid port.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigurationError(f"address must be 'host:port', got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The inverse of [`parse_address`][podshare.transport.tcp.parse_address]; IPv6 gets brackets.

    Example:
        >>> format_address("::1", 7000)
        '[::1]:7000'
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _format_sockaddr(sockaddr: object) -> str:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return format_address(str(sockaddr[0]), int(sockaddr[1]))
    return str(sockaddr)


def _listen_address(address: str, proto: PeerProtocol) -> str | None:
    """Where a peer accepts connections: the host we reach it at, and the port it told."""
    if not proto.peer_listen_port:
        return None
    try:
        host = parse_address(address)[0]
    except ConfigurationError:
        return None
    return format_address(host, proto.peer_listen_port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cause(exc: BaseException) -> str:
    """An exception as ``"Type: message"`` (the type alone when it has no message)."""
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


async def _asyncio_checkpoint() -> None:
    await asyncio.sleep(0)  # what anyio's checkpoint does on asyncio


def _backend_fast_paths() -> tuple[Callable[[], float], Callable[[], Awaitable[None]]]:
    """The running backend's clock and checkpoint, as `anyio.current_time` and
    `anyio.lowlevel.checkpoint` (same clock, same behaviour) without their lookup of
    the backend on every call: the message path uses them once or twice per write."""
    loop = anyio.lowlevel.current_token().native_token
    if isinstance(loop, asyncio.AbstractEventLoop):
        return loop.time, _asyncio_checkpoint
    return anyio.current_time, anyio.lowlevel.checkpoint


def _peer_error(cls: type[PodshareError], address: str, exc: BaseException) -> PodshareError:
    """A podshare exception naming the peer, chained to what went wrong."""
    error = cls(f"peer {address}: {exc}" if str(exc) else f"peer {address}: {_cause(exc)}")
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class PeerConnection:
    """A live, handshaken connection to one peer.

    Attributes:
        node_id: the peer's transport node id (verified by the handshake).
        address: the peer's socket address, ``"host:port"``.
        outbound: ``True`` when this node dialed it.
        listen_address: where the peer accepts connections (``None``: it does not), as
            this node would dial it; shared with other peers so the mesh completes itself.
    """

    node_id: str
    address: str
    outbound: bool
    listen_address: str | None = None


@dataclass(slots=True)
class TcpStats(StatsRecord):
    """Counters of one [`TcpTransport`][podshare.transport.TcpTransport], from its `stats()`.

    Connections: ``connections_opened`` / ``connections_closed`` (handshaken connections;
    their difference is the number live), ``connections_pending`` (a gauge: inbound
    connections still in their handshake), ``connection_attempts_failed`` (dials that
    could not connect), ``reconnects`` (a configured or learned peer connected again
    after an earlier connection to it ended) and ``duplicates_closed`` (the losing side
    of two nodes dialing each other).

    Rejected connections, by cause: ``auth_failures`` (wrong or missing secret, bad frame
    MAC), ``frames_too_large`` (a header over ``max_frame_size``), ``protocol_errors``
    (garbage, truncated or unknown frames, wrong version, too many announced topics),
    ``handshake_timeouts``, ``tls_failures``, ``self_hellos`` (a HELLO carrying this
    node's own node id from another process: a duplicate id or a replay; dialing one's
    own address is not counted) and ``handshakes_dropped`` (pending handshakes closed to
    make room under ``max_pending_handshakes`` / ``max_pending_per_source``).

    Dropped peers: ``peers_stalled`` (see the stall rule in the class docs) and
    ``peers_silent`` (nothing heard for three keepalive intervals).

    Traffic: ``messages_sent`` counts messages queued to peers (one per peer),
    ``messages_filtered`` messages not sent to a peer because it announced no
    subscription to their topic, ``messages_received`` those received from peers,
    ``messages_dropped`` messages a subscriber too slow for its ``subscription_buffer``
    missed; ``bytes_sent`` / ``bytes_received`` count socket bytes. ``queued_bytes`` is
    a gauge of the bytes waiting in every peer's send queue, ``queued_bytes_peak`` the
    most one peer's queue ever held, ``queue_over_limit_seconds`` the total time queues
    spent above ``send_queue``.

    Callbacks: ``callback_errors`` (an ``on_connect`` / ``on_disconnect`` / ``on_error``
    call raised; each is logged) and ``callbacks_dropped`` (calls not made because too
    many were waiting). ``gaps_reported`` counts gap notifications.
    """

    connections_opened: int = 0
    connections_closed: int = 0
    connections_pending: int = 0
    connection_attempts_failed: int = 0
    reconnects: int = 0
    duplicates_closed: int = 0
    auth_failures: int = 0
    frames_too_large: int = 0
    protocol_errors: int = 0
    handshake_timeouts: int = 0
    tls_failures: int = 0
    self_hellos: int = 0
    handshakes_dropped: int = 0
    peers_stalled: int = 0
    peers_silent: int = 0
    messages_sent: int = 0
    messages_filtered: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    queued_bytes: int = 0
    queued_bytes_peak: int = 0
    queue_over_limit_seconds: float = 0.0
    callback_errors: int = 0
    callbacks_dropped: int = 0
    gaps_reported: int = 0


class _Connection:
    """The transport's side of one registered connection: its protocol, queue and life."""

    __slots__ = (
        "announced_all",
        "closed",
        "flushed",
        "info",
        "last_received",
        "last_sent",
        "proto",
        "queue",
        "ready_barrier",
        "scope",
        "settled",
        "stalled",
    )

    def __init__(self, info: PeerConnection, proto: PeerProtocol, queue: SendQueue) -> None:
        self.info = info
        self.proto = proto
        self.queue = queue
        self.scope = anyio.CancelScope()
        self.closed = anyio.Event()
        #: Set by the writer whenever it finds the queue empty (closing waits on it).
        self.flushed = anyio.Event()
        self.stalled = False
        #: The peer answered the barrier sent right after the handshake, so everything it
        #: sent on connecting (its PEERS and its subscriptions) has arrived.
        self.settled = False
        self.ready_barrier = -1
        #: This node announced ALL to the peer (it holds too many topics to list).
        self.announced_all = False
        now = anyio.current_time()
        self.last_received = now
        self.last_sent = now


class _Subscription:
    """One subscription: its inbox, and the peers whose older messages it must skip."""

    __slots__ = ("barrier_id", "done", "inbox", "pending", "skip")

    def __init__(
        self,
        inbox: Inbox,
        barrier_id: int,
        skip: tuple[int, bytes] | None = None,
    ) -> None:
        self.inbox = inbox
        self.barrier_id = barrier_id
        #: (offset, prefix) of this process's own messages the subscriber leaves out.
        self.skip = skip
        #: Connections whose BARRIER_ACK has not arrived: their messages predate us.
        self.pending: set[_Connection] = set()
        self.done = anyio.Event()

    def acknowledged(self, conn: _Connection) -> None:
        self.pending.discard(conn)
        if not self.pending:
            self.done.set()


@dataclass(slots=True)
class _Dialer:
    """A peer address to keep connected, and what dialing it taught us."""

    scope: anyio.CancelScope | None = None
    node_id: str | None = None
    #: Learned from another peer rather than configured: given up after a few failures.
    gossiped: bool = False
    #: Attempts that failed in a row (connect, handshake, or closed before settling).
    failures: int = 0
    #: A connection through this dialer was registered before (the next is a reconnect).
    connected_before: bool = False
    #: The dial loop is serving a registered connection right now.
    serving: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one connection ended, for the dialer's next decision."""

    peer_node_id: str | None
    registered: bool
    #: The peer was this very node (its HELLO carried one of this node's own nonces).
    looped: bool
    settled: bool


class TcpTransport(Service):
    """A brokerless TCP mesh: every node talks to its peers directly.

    Args:
        listen: the ``"host:port"`` to listen on (port 0 picks a free one; see
            [`address`][podshare.transport.TcpTransport.address]), or ``None`` to only
            dial out.
        peers: addresses to dial and keep connected (see
            [`add_peer`][podshare.transport.TcpTransport.add_peer]).
        node_id: this transport's id on the mesh (random by default). Must differ
            between nodes; it breaks ties when two nodes dial each other.
        secret: a shared secret (``bytes`` or ``str``). Peers prove they know it with a
            challenge-response handshake and every later frame carries a MAC; peers
            without it are disconnected and counted in `stats()`.
        ssl_context: TLS for accepted connections (a server context; require client
            certificates in it for mutual TLS). Also used to dial unless
            ``client_ssl_context`` is given.
        client_ssl_context: TLS for dialed connections (a client context).
        tls_hostname: the name to verify peers' certificates against, instead of the
            dialed host (useful when peers are dialed by IP, as in Kubernetes).
        max_frame_size: the largest frame accepted; checked from a frame's header before
            its body is read. Messages up to ``max_frame_size - 1063`` bytes can be sent.
        send_queue: the soft limit, in bytes, of one peer's send queue (see the stall
            rule below); writers never wait.
        stall_timeout: seconds a peer's queue may stay above ``send_queue``, or a write
            to it may make no progress, before the peer counts as stalled.
        subscription_buffer: messages buffered per subscription; a subscriber that falls
            further behind misses messages and a gap is reported.
        reconnect_backoff: ``(first, cap)`` seconds between dial attempts; the delay
            doubles per failure up to ``cap``, with jitter.
        handshake_timeout: seconds a new connection has to complete TLS and the handshake.
        max_pending_handshakes: inbound connections allowed in their handshake at once;
            past it the oldest pending one is closed (``stats().handshakes_dropped``).
        max_pending_per_source: the same cap per source address.
        keepalive: seconds of silence after which a ping is sent; a peer silent for three
            times as long is disconnected. ``None`` disables both.
        peer_exchange: tell each new peer where this node's other peers listen, and dial
            the peers it reports (see
            [`discovered`][podshare.transport.TcpTransport.discovered]), so the mesh
            completes itself.
        on_connect: ``(remote: PeerConnection, inbound: bool)``, called after a peer's
            connection is established (sync or async).
        on_disconnect: the same, after it ended (also for every live connection when
            the transport closes, within ``close_timeout``).
        on_error: ``(exc: PodshareError)``, called for every problem the transport
            handles by itself: a failed dial
            ([`TransportError`][podshare.exceptions.TransportError] naming host, port and
            cause), a rejected peer
            ([`ProtocolError`][podshare.exceptions.ProtocolError] or its subclasses), a
            stalled or silent peer dropped (`TransportError`).
        close_timeout: the most seconds closing may spend flushing queued messages to
            peers and running the last callbacks.
        logger: where connection events go (``podshare.transport.tcp`` by default).

    Use it as an async context manager: entering listens and starts dialing, leaving
    (or `aclose()`, idempotent) closes. It reports gaps
    ([`add_gap_listener`][podshare.transport.TcpTransport.add_gap_listener]) each time a
    peer connects, so stores refresh by themselves.

    **Readiness.** [`wait_ready`][podshare.transport.TcpTransport.wait_ready] returns once
    every configured peer and every peer discovered so far is connected (and has told
    its subscriptions and peers) or has failed at least one attempt.

    **Subscriptions travel.** Each node announces the topics it subscribes to;
    [`remote_subscribers`][podshare.transport.TcpTransport.remote_subscribers] counts the
    peers subscribed to a topic, and a message is sent only to the peers subscribed to
    its topic (so a sync answer addressed to one node crosses one connection).

    **The stall rule.** A peer's send queue may grow past ``send_queue`` in a burst. The
    peer is dropped as stalled when its queue stays above ``send_queue`` for
    ``stall_timeout`` seconds in a row, when a write to it makes no progress for
    ``stall_timeout`` seconds, or at once when its queue would exceed eight times
    ``send_queue`` (the memory bound). It resynchronises after reconnecting.

    **Floods.** At most ``max_pending_handshakes`` inbound connections (and
    ``max_pending_per_source`` from one address) may be unauthenticated at once; a new
    one closes the oldest. Failed handshakes are logged at INFO, at most one line per
    kind every ten seconds with a count of the suppressed ones, and counted.

    Messages go to the peers connected to the publisher and are not relayed, so every
    node must be connected to every other. Peer exchange (on by default) does that from
    any connected start: a node that dials one member learns of, and dials, the others.
    [`DNSDiscoverer`][podshare.transport.DNSDiscoverer] keeps ``peers`` in step with a
    Kubernetes headless Service.
    """

    _service_name = "TcpTransport"

    def __init__(
        self,
        listen: str | None = "127.0.0.1:0",
        peers: Iterable[str] = (),
        *,
        node_id: str | None = None,
        secret: bytes | str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        send_queue: int = 16 * 1024 * 1024,
        stall_timeout: float = 10.0,
        subscription_buffer: int = 4096,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        handshake_timeout: float = 5.0,
        max_pending_handshakes: int = 256,
        max_pending_per_source: int = 16,
        keepalive: float | None = 5.0,
        peer_exchange: bool = True,
        on_connect: PeerCallback | None = None,
        on_disconnect: PeerCallback | None = None,
        on_error: ErrorCallback | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(close_timeout=close_timeout)
        if listen is not None:
            parse_address(listen)
        self._listen = listen
        self._node_id = node_id if node_id is not None else secrets.token_hex(8)
        if not 1 <= len(self._node_id.encode()) <= 255:
            raise ConfigurationError("node_id must be 1..255 bytes of UTF-8")
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and not secret:
            raise ConfigurationError("secret must not be empty (use None for no secret)")
        self._secret = secret
        self._server_ssl = ssl_context
        self._client_ssl = client_ssl_context if client_ssl_context is not None else ssl_context
        self._tls_hostname = tls_hostname
        if max_frame_size <= FRAME_OVERHEAD:
            raise ConfigurationError(f"max_frame_size must exceed {FRAME_OVERHEAD}")
        self._max_frame_size = max_frame_size
        self.max_message_size = max_frame_size - FRAME_OVERHEAD
        """The largest message [`publish`][podshare.transport.TcpTransport.publish] accepts
        (read by stores to split batches)."""
        if send_queue < self.max_message_size:
            raise ConfigurationError("send_queue must be at least the largest message")
        self._send_queue = send_queue
        self._stall_timeout = _positive("stall_timeout", stall_timeout)
        if subscription_buffer < 1:
            raise ConfigurationError("subscription_buffer must be at least 1")
        self._subscription_buffer = subscription_buffer
        first, cap = reconnect_backoff
        if not 0 < first <= cap:
            raise ConfigurationError("reconnect_backoff must be (first, cap) with 0 < first <= cap")
        self._backoff = (first, cap)
        self._handshake_timeout = _positive("handshake_timeout", handshake_timeout)
        for name, value in (
            ("max_pending_handshakes", max_pending_handshakes),
            ("max_pending_per_source", max_pending_per_source),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        if keepalive is not None:
            _positive("keepalive", keepalive)
        self._keepalive = keepalive
        self._peer_exchange = peer_exchange
        for name, callback in (
            ("on_connect", on_connect),
            ("on_disconnect", on_disconnect),
            ("on_error", on_error),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(f"{name} must be callable or None, not {callback!r}")
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._listen_port = 0
        self._log = logger if logger is not None else _log

        self._stats = TcpStats()
        self._failure_log = RateLimitedLog(self._log, FAILURE_LOG_INTERVAL)
        self._gate = HandshakeGate(max_pending_handshakes, max_pending_per_source)
        self._callbacks = CallbackRunner(self._log, self._stats)
        self._dialers: dict[str, _Dialer] = {}
        self._gossip: dict[str, _Dialer] = {}
        for peer in peers:
            parse_address(peer)
            self._dialers.setdefault(peer, _Dialer())
        self._conns: dict[str, _Connection] = {}
        self._subs: dict[str, set[_Subscription]] = {}
        self._topic_bytes = 0
        self._barriers: dict[int, _Subscription] = {}
        self._ready_barriers: dict[int, _Connection] = {}
        self._next_barrier = 0
        self._gaps = GapListeners(self._log)
        self._address: str | None = None
        self._self_addresses: set[str] = set()
        self._own_nonces: dict[bytes, None] = {}
        self._accept_scopes: list[anyio.CancelScope] = []
        self._changed = anyio.Event()
        self._clock: Callable[[], float] = anyio.current_time
        self._checkpoint: Callable[[], Awaitable[None]] = anyio.lowlevel.checkpoint
        #: Topic -> the MESSAGE body's header for it (kind, length, topic), checked once.
        self._message_headers: dict[str, bytes] = {}

    # -- properties ---------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This transport's node id on the mesh."""
        return self._node_id

    @property
    def address(self) -> str:
        """The bound ``"host:port"`` (the real port when ``listen`` asked for port 0).

        Raises:
            ClosedError: not listening (not entered yet, or ``listen=None``).
        """
        if self._address is None:
            raise ClosedError("the transport is not listening")
        return self._address

    @property
    def peers(self) -> tuple[str, ...]:
        """The configured peer addresses, in the order they were added."""
        return tuple(self._dialers)

    @property
    def connections(self) -> dict[str, PeerConnection]:
        """The live, handshaken connections, by peer node id (a snapshot)."""
        return {node: conn.info for node, conn in self._conns.items()}

    @property
    def discovered(self) -> tuple[str, ...]:
        """Addresses learned from peers (peer exchange) and being dialed.

        A newcomer that dials one member learns where the others listen and dials them
        too, so every node ends up connected to every other. An address that fails a
        few dials in a row is forgotten.
        """
        return tuple(self._gossip)

    @property
    def self_addresses(self) -> frozenset[str]:
        """Configured addresses that turned out to be this node (never dialed again)."""
        return frozenset(self._self_addresses)

    def stats(self) -> TcpStats:
        """A frozen snapshot of this transport's counters."""
        return self._stats.snapshot()

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` each time a peer (re)connects; returns its remover."""
        return self._gaps.add(listener)

    # -- lifecycle ----------------------------------------------------------------------

    def _running(self) -> bool:
        """Opening or open: background work may start and connections may register."""
        return self.state in ("opening", "open")

    async def _open(self) -> None:
        self._clock, self._checkpoint = _backend_fast_paths()
        if self._listen is not None:
            host, port = parse_address(self._listen)
            try:
                multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
            except OSError as exc:
                raise TransportError(f"cannot listen on {self._listen}: {_cause(exc)}") from exc
            listeners = [
                listener
                for listener in multi.listeners
                if isinstance(listener, anyio.abc.SocketListener)
            ]
            for listener in listeners:
                self.start_soon(self._accept_loop, listener)
            local = listeners[0].extra(anyio.abc.SocketAttribute.local_address)  # noqa: S610
            self._address = _format_sockaddr(local)
            self._listen_port = parse_address(self._address)[1]
            if self._secret is None and self._server_ssl is None and not _is_loopback(host):
                self._log.warning(
                    "podshare TcpTransport listens on %s without a secret or TLS: anyone who "
                    "can reach this port can read and write every store on this node; pass "
                    "secret=... and/or ssl_context=...",
                    self._address,
                )
        if self._on_connect or self._on_disconnect or self._on_error:
            self.start_soon(self._callbacks.run)
        self.start_soon(self._housekeeping)
        for address, dialer in self._dialers.items():
            self._start_dialer(address, dialer)

    async def _close(self) -> None:
        # Graceful, within close_timeout: stop dialing and accepting, let the writers
        # flush what is queued, close every connection, run the last callbacks.
        self._stop_dialing_and_accepting(keep_serving=True)
        self._end_subscriptions()
        await self._flush()
        conns = tuple(self._conns.values())
        for conn in conns:
            conn.scope.cancel()
        for conn in conns:
            await conn.closed.wait()
        await self._callbacks.drain()

    def _closed(self) -> None:
        self._stop_dialing_and_accepting()
        self._end_subscriptions()
        for conn in self._conns.values():
            conn.scope.cancel()
        self._notify_changed()

    def _stop_dialing_and_accepting(self, *, keep_serving: bool = False) -> None:
        """Cancel the dial loops (but, with ``keep_serving``, not the connections they
        serve, which closing flushes first) and the accept loops."""
        for dialer in chain(self._dialers.values(), self._gossip.values()):
            if dialer.scope is not None and not (keep_serving and dialer.serving):
                dialer.scope.cancel()
        for scope in self._accept_scopes:
            scope.cancel()

    def _end_subscriptions(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.inbox.end()
        self._subs.clear()
        self._topic_bytes = 0
        self._barriers.clear()

    async def _flush(self) -> None:
        """Wait until every connection's writer has sent what was queued."""
        for conn in tuple(self._conns.values()):
            while (conn.queue or conn.queue.sending_since is not None) and not conn.closed.is_set():
                conn.flushed = anyio.Event()
                await conn.flushed.wait()

    # -- peers --------------------------------------------------------------------------

    def add_peer(self, address: str) -> bool:
        """Dial ``address`` and keep it connected (reconnecting with backoff).

        Returns:
            ``True`` if ``address`` is new to the configured peers (an address learned
            through peer exchange becomes configured), ``False`` if it already was one.

        Raises:
            ConfigurationError: ``address`` is not ``"host:port"``.
        """
        parse_address(address)
        if address in self._dialers:
            return False
        dialer = self._gossip.pop(address, None)
        if dialer is not None:  # already dialing it: now it is configured, for good
            dialer.gossiped = False
            self._dialers[address] = dialer
            return True
        dialer = self._dialers[address] = _Dialer()
        if self._running():
            self._start_dialer(address, dialer)
        return True

    def remove_peer(self, address: str) -> bool:
        """Stop dialing ``address`` and drop the connection to the node found there.

        The node may still dial this one, and with peer exchange another peer may report
        it again while it is alive; use ``peer_exchange=False`` for full manual control.

        Returns:
            ``True`` if ``address`` was a configured or learned peer, else ``False``.
        """
        dialer = self._dialers.pop(address, None) or self._gossip.pop(address, None)
        if dialer is None:
            return False
        if dialer.scope is not None:
            dialer.scope.cancel()
        if dialer.node_id is not None and (conn := self._conns.get(dialer.node_id)) is not None:
            conn.scope.cancel()
        self._notify_changed()
        return True

    async def wait_connected(self, count: int = 1) -> None:
        """Wait until at least ``count`` peers are connected (use with a timeout).

        Raises:
            ClosedError: the transport closed while waiting.
        """
        while len(self._conns) < count:
            self._check_open()
            await self._changed.wait()
        self._check_open()

    async def wait_ready(self) -> None:
        """Return once connected to the cluster, as far as this node knows it.

        Ready means: every configured peer and every peer discovered so far (through
        peer exchange, or added by a
        [`DNSDiscoverer`][podshare.transport.DNSDiscoverer]) is connected, and has told
        this node its subscriptions and its own peers, or has failed at least one
        attempt since it was added or last connected. It never raises for peers that
        cannot be reached; bound the wait yourself (a store bounds it by
        ``hydrate_timeout``). Peers learned while waiting are waited for too.

        Raises:
            ClosedError: the transport is not open, or closed while waiting.
        """
        while True:
            self._check_open()
            if self._ready():
                return
            await self._changed.wait()

    def _ready(self) -> bool:
        conns = self._conns
        for address, dialer in chain(self._dialers.items(), self._gossip.items()):
            if dialer.failures or address in self._self_addresses:
                continue
            conn = conns.get(dialer.node_id) if dialer.node_id is not None else None
            if conn is None or not conn.settled:
                return False
        return True

    async def remote_subscribers(self, topic: str) -> int | None:
        """How many connected peers (distinct node ids) subscribe to ``topic`` now.

        Counted from what peers announced. A connection still settling is waited for
        (at most ``handshake_timeout``) and counted as a subscriber if it does not
        settle, so the answer errs towards "someone is there". ``None`` when a
        connected peer runs a podshare release that does not announce subscriptions.
        This node's own subscriptions are never counted.

        Raises:
            ClosedError: the transport is not open.
        """
        self._check_open()
        with anyio.move_on_after(self._handshake_timeout):
            while any(not conn.settled for conn in self._conns.values()):
                await self._changed.wait()
                self._check_open()
        count = 0
        unknown = False
        for conn in self._conns.values():
            proto = conn.proto
            if not conn.settled:
                count += 1
            elif not proto.peer_announces_topics:
                unknown = True
            elif proto.peer_all_topics or topic in proto.peer_topics:
                count += 1
        return None if unknown else count

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _start_dialer(self, address: str, dialer: _Dialer) -> None:
        dialer.scope = anyio.CancelScope()
        self.start_soon(self._dial_loop, address, dialer)

    async def _dial_loop(self, address: str, dialer: _Dialer) -> None:
        assert dialer.scope is not None
        with dialer.scope:
            host, port = parse_address(address)
            while self._running():
                known = self._conns.get(dialer.node_id) if dialer.node_id else None
                if known is not None:
                    # The peer is already connected (it dialed us and won the tie-break):
                    # nothing to do until that connection ends.
                    await known.closed.wait()
                    continue
                outcome: _Outcome | None = None
                try:
                    stream = await self._connect(host, port)
                except _CONNECTION_ERRORS as exc:
                    self._dial_failed(host, port, exc)
                else:
                    outcome = await self._run_connection(
                        stream, outbound=True, address=address, dialer=dialer
                    )
                if not self._running():
                    return  # closing: the connection was flushed and closed
                if outcome is not None and outcome.looped:
                    self._self_addresses.add(address)
                    self._notify_changed()
                    self._log.info("peer address %s is this node; not dialing it", address)
                    if dialer.gossiped:
                        self._forget_gossip(address, dialer)
                        return
                    await anyio.sleep_forever()
                if outcome is not None and outcome.registered and outcome.settled:
                    dialer.failures = 0
                elif outcome is not None and (outcome.peer_node_id or "") in self._conns:
                    continue  # lost the tie-break to a live connection: wait on that one
                else:
                    dialer.failures += 1
                    self._notify_changed()
                    if dialer.gossiped and dialer.failures >= _GOSSIP_ATTEMPTS:
                        # Only live peers are gossiped: this one has gone since.
                        self._forget_gossip(address, dialer)
                        return
                await anyio.sleep(self._backoff_delay(dialer.failures))

    def _dial_failed(self, host: str, port: int, exc: BaseException) -> None:
        self._notify_changed()
        self._stats.connection_attempts_failed += 1
        where = format_address(host, port)
        if isinstance(exc, TimeoutError):
            cause = f"no connection within {self._handshake_timeout:g} s"
        elif isinstance(exc, OSError) and exc.__cause__ is not None:
            # anyio's "All connection attempts failed": the real causes are chained.
            inner = exc.__cause__
            leaves = inner.exceptions if isinstance(inner, BaseExceptionGroup) else (inner,)
            cause = "; ".join(_cause(leaf) for leaf in leaves)
        else:
            cause = _cause(exc)
        message = f"cannot connect to {where}: {cause}"
        self._failure_log.log(logging.INFO, f"dial {where}", "%s; retrying", message)
        error = TransportError(message)
        error.__cause__ = exc
        self._report(error)

    def _forget_gossip(self, address: str, dialer: _Dialer) -> None:
        if self._gossip.get(address) is dialer:
            del self._gossip[address]
            self._notify_changed()

    def _learn_peers(self, addresses: tuple[str, ...]) -> None:
        """Dial the addresses a peer reported that this node does not know yet."""
        if not self._peer_exchange or not self._running():
            return
        known = {c.info.listen_address for c in self._conns.values()}
        known.update(self._dialers, self._gossip, self._self_addresses)
        known.add(self._address)
        for address in addresses:
            if address in known or len(self._gossip) >= _MAX_GOSSIPED:
                continue
            try:
                parse_address(address)
            except ConfigurationError:
                continue  # a peer's bad entry must not stop the others
            self._log.info("learned of peer %s; dialing it", address)
            dialer = self._gossip[address] = _Dialer(gossiped=True)
            known.add(address)
            self._start_dialer(address, dialer)

    def _backoff_delay(self, failures: int) -> float:
        first, cap = self._backoff
        delay = min(cap, first * 2.0 ** min(failures, 32))
        # Full-range jitter in [delay/2, delay]: peers restarted together spread out.
        return delay * (0.5 + random.random() / 2)

    async def _connect(self, host: str, port: int) -> anyio.abc.ByteStream:
        with anyio.fail_after(self._handshake_timeout):
            if self._client_ssl is None:
                return await anyio.connect_tcp(host, port)
            return await anyio.connect_tcp(
                host,
                port,
                ssl_context=self._client_ssl,
                tls_hostname=self._tls_hostname or host,
                tls_standard_compatible=False,
            )

    async def _housekeeping(self) -> None:
        # One timer for all connections, rather than a timeout around every read and
        # every write of every connection: the message path stays free of timer churn.
        keepalive = self._keepalive
        stall = self._stall_timeout
        tick = stall / 4 if keepalive is None else min(keepalive / 2, stall / 4)
        ping = PeerProtocol.ping_body()
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for conn in tuple(self._conns.values()):
                if conn.stalled:
                    continue
                if keepalive is not None and now - conn.last_received > 3 * keepalive:
                    self._silent(conn, now - conn.last_received)
                elif (reason := conn.queue.stall_reason(now, stall)) is not None:
                    self._stalled(conn, reason)
                elif (
                    keepalive is not None
                    and now - conn.last_sent >= keepalive
                    and not conn.queue
                    and conn.queue.sending_since is None
                ):
                    self._send(conn, ping)

    def _silent(self, conn: _Connection, silence: float) -> None:
        self._stats.peers_silent += 1
        self._log.warning(
            "peer %s at %s silent for %.1f s; disconnecting it",
            conn.info.node_id,
            conn.info.address,
            silence,
        )
        self._report(
            TransportError(
                f"peer {conn.info.node_id} at {conn.info.address} sent nothing for "
                f"{silence:.1f} s; disconnected"
            )
        )
        conn.scope.cancel()

    def _stalled(self, conn: _Connection, reason: str) -> None:
        if conn.stalled:
            return
        conn.stalled = True
        self._stats.peers_stalled += 1
        self._log.warning(
            "peer %s at %s is not keeping up (%s; %d bytes queued); disconnecting it",
            conn.info.node_id,
            conn.info.address,
            reason,
            conn.queue.size,
        )
        self._report(
            TransportError(
                f"peer {conn.info.node_id} at {conn.info.address} stalled: {reason}; "
                "disconnected (it resynchronises after reconnecting)"
            )
        )
        conn.scope.cancel()

    def _send(self, conn: _Connection, body: bytes, frame: bytes | None = None) -> bool:
        """Queue ``body`` for ``conn``, framed; a queue at its hard limit stalls the peer.

        ``frame``: ``body`` already framed without a MAC (shared by every connection of
        a publish when no secret is in use). Frames are encoded here, in queue order, so
        sequence numbers and MACs follow the order the writer sends them in; nothing is
        encoded for a peer being dropped (its sequence would have a hole).
        """
        if conn.stalled:
            return False
        queue = conn.queue
        if frame is None:
            proto = conn.proto
            mac = MAC_SIZE if proto.authenticated else 0
            if queue.fits(len(body) + _FRAME_HEADER + mac):
                frame = proto.encode(body)
        if frame is not None and queue.put(frame):
            return True
        self._stalled(conn, f"its send queue would exceed {queue.hard_limit} bytes")
        return False

    def _report(self, error: PodshareError) -> None:
        if self._on_error is not None and self.state in ("opening", "open", "closing"):
            self._callbacks.emit(self._on_error, error)

    # -- accepting ----------------------------------------------------------------------

    async def _accept_loop(self, listener: anyio.abc.SocketListener) -> None:
        scope = anyio.CancelScope()
        self._accept_scopes.append(scope)
        with scope:
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        # Out of file descriptors and the like: back off rather than spin.
                        self._failure_log.log(
                            logging.WARNING, "accept", "accept failed: %s", _cause(exc)
                        )
                        self._report(TransportError(f"accept failed: {_cause(exc)}"))
                        await anyio.sleep(0.1)
                        continue
                    self.start_soon(self._handle_inbound, stream)

    async def _handle_inbound(self, stream: anyio.abc.SocketStream) -> None:
        try:
            remote = stream.extra(anyio.abc.SocketAttribute.remote_address)  # noqa: S610
            address = _format_sockaddr(remote)
            source = str(remote[0]) if isinstance(remote, tuple) else str(remote)
        except (OSError, anyio.TypedAttributeLookupError):
            address = source = "?"
        ticket = self._gate.admit(source)
        self._sync_gate_stats()
        await self._run_connection(stream, outbound=False, address=address, ticket=ticket)

    def _sync_gate_stats(self) -> None:
        self._stats.connections_pending = len(self._gate)
        self._stats.handshakes_dropped = self._gate.evictions

    # -- one connection -----------------------------------------------------------------

    async def _run_connection(
        self,
        stream: anyio.abc.ByteStream,
        *,
        outbound: bool,
        address: str,
        dialer: _Dialer | None = None,
        ticket: Ticket | None = None,
    ) -> _Outcome:
        """Handshake, register (with the tie-break), pump messages; never raises I/O errors."""
        nonce = secrets.token_bytes(NONCE_SIZE)
        self._own_nonces[nonce] = None
        if len(self._own_nonces) > _NONCES_REMEMBERED:
            del self._own_nonces[next(iter(self._own_nonces))]
        proto = PeerProtocol(
            self._node_id,
            nonce=nonce,
            secret=self._secret,
            max_frame_size=self._max_frame_size,
            listen_port=self._listen_port,
        )
        try:
            opened = await self._handshake(stream, proto, address, ticket)
            if opened is None:
                looped = proto.self_connection and proto.peer_nonce in self._own_nonces
                return _Outcome(proto.peer_node_id, False, looped, False)
            stream, early = opened
            peer = proto.peer_node_id
            assert peer is not None
            if dialer is not None:
                dialer.node_id = peer
            info = PeerConnection(peer, address, outbound, _listen_address(address, proto))
            conn = _Connection(info, proto, SendQueue(self._send_queue, self._stats))
            registered = self._register(conn)
            if registered:
                if dialer is not None:
                    if dialer.connected_before:
                        self._stats.reconnects += 1
                    dialer.connected_before = True
                self._send_initial(conn)
            # Frames that arrived with the end of the handshake: messages are delivered
            # either way (the peer sent them once); barriers are answered if we stay.
            self._handle_events(conn, early)
            if not registered:
                if self._running():
                    self._stats.duplicates_closed += 1
                return _Outcome(peer, False, False, False)
            if dialer is not None:
                dialer.serving = True
            try:
                failure = await self._serve(conn, stream)
            finally:
                if dialer is not None:
                    dialer.serving = False
            if failure is not None:
                self._connection_failed(failure, address, proto)
            return _Outcome(peer, True, False, conn.settled)
        finally:
            await anyio.aclose_forcefully(stream)

    async def _handshake(
        self,
        stream: anyio.abc.ByteStream,
        proto: PeerProtocol,
        address: str,
        ticket: Ticket | None,
    ) -> tuple[anyio.abc.ByteStream, list[ProtocolEvent]] | None:
        """TLS (accepted connections) and the handshake; ``None`` if it failed (counted)."""
        early: list[ProtocolEvent] = []
        tls = ticket is not None and self._server_ssl is not None
        scope = ticket.scope if ticket is not None else anyio.CancelScope()
        try:
            with scope, anyio.fail_after(self._handshake_timeout):
                if tls:
                    assert self._server_ssl is not None
                    stream = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self._server_ssl,
                        standard_compatible=False,
                    )
                    tls = False
                await stream.send(proto.data_to_send())
                while proto.state is not State.OPEN:
                    data = await stream.receive(_READ_SIZE)
                    self._stats.bytes_received += len(data)
                    early.extend(proto.receive_data(data))
                    if out := proto.data_to_send():
                        await stream.send(out)
        except TimeoutError:
            self._notify_changed()
            self._stats.handshake_timeouts += 1
            self._failure_log.log(logging.INFO, "timeout", "handshake with %s timed out", address)
            self._report(
                TransportError(
                    f"handshake with {address} did not complete within "
                    f"{self._handshake_timeout:g} s"
                )
            )
            return None
        except _CONNECTION_ERRORS as exc:
            if tls:
                self._tls_failed(address, exc)
            else:
                self._connection_failed(exc, address, proto)
            return None
        finally:
            if ticket is not None:
                self._gate.release(ticket)
                self._sync_gate_stats()
        if ticket is not None and ticket.evicted:
            self._notify_changed()
            self._failure_log.log(
                logging.INFO,
                "dropped",
                "closed the pending handshake of %s: too many unauthenticated connections",
                address,
            )
            return None
        return stream, early

    def _tls_failed(self, address: str, exc: BaseException) -> None:
        self._notify_changed()
        self._stats.tls_failures += 1
        self._failure_log.log(logging.INFO, "tls", "TLS with %s failed: %s", address, _cause(exc))
        self._report(_peer_error(AuthenticationError, address, exc))

    def _connection_failed(self, exc: BaseException, address: str, proto: PeerProtocol) -> None:
        """Count, log (rate-limited) and report why a connection was refused or ended."""
        self._notify_changed()
        stats = self._stats
        if proto.self_connection:
            if proto.peer_nonce in self._own_nonces:
                return  # this node's own looped-back connection: the dialer handles it
            stats.self_hellos += 1
            self._failure_log.log(
                logging.WARNING,
                "self hello",
                "refused %s: its HELLO carries this node's own id %r (another process "
                "uses the same node id, or it replays this node's HELLO)",
                address,
                self._node_id,
            )
            self._report(_peer_error(ProtocolError, address, exc))
            return
        error: PodshareError
        if isinstance(exc, AuthenticationError):
            stats.auth_failures += 1
            reason, error = "auth", _peer_error(AuthenticationError, address, exc)
        elif isinstance(exc, FrameTooLarge):
            stats.frames_too_large += 1
            reason, error = "frame too large", _peer_error(FrameTooLarge, address, exc)
        elif isinstance(exc, ProtocolError):
            stats.protocol_errors += 1
            reason, error = "protocol", _peer_error(type(exc), address, exc)
        elif proto.state is State.AUTH and isinstance(exc, _LOST_CONNECTION):
            # The peer hung up instead of proving it knows the secret (typically it just
            # found that ours differs from its own).
            stats.auth_failures += 1
            reason = "auth"
            error = AuthenticationError(f"peer {address} left without authenticating")
        elif proto.pending and isinstance(exc, _LOST_CONNECTION):
            stats.protocol_errors += 1
            reason = "protocol"
            error = DecodeError(f"peer {address} closed the connection inside a frame")
        elif isinstance(exc, ssl.SSLError) or (
            isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError)
        ):
            self._tls_failed(address, exc)
            return
        else:
            self._log.debug("connection to %s ended: %r", address, exc)
            return
        self._failure_log.log(logging.INFO, reason, "rejected peer %s: %s", address, error)
        self._report(error)

    def _register(self, conn: _Connection) -> bool:
        """Install ``conn`` unless a better connection to the same peer exists.

        When both nodes dial each other, both must keep the same connection: the one
        dialed by the node with the smaller node id. Otherwise the older one stays.
        """
        if not self._running():
            return False
        peer = conn.info.node_id
        existing = self._conns.get(peer)
        if existing is not None:
            preferred_dialer = min(self._node_id, peer)

            def dialer(c: _Connection) -> str:
                return self._node_id if c.info.outbound else peer

            if dialer(conn) != preferred_dialer or dialer(existing) == preferred_dialer:
                self._notify_changed()
                return False
            self._stats.duplicates_closed += 1
            existing.scope.cancel()
            self._drop(existing)
        self._conns[peer] = conn
        self._stats.connections_opened += 1
        self._log.info(
            "connected to %s at %s (%s)",
            peer,
            conn.info.address,
            "outbound" if conn.info.outbound else "inbound",
        )
        if self._on_connect is not None:
            self._callbacks.emit(self._on_connect, conn.info, not conn.info.outbound)
        self._notify_changed()
        self._report_gap()
        return True

    def _send_initial(self, conn: _Connection) -> None:
        """What a new peer learns first: other peers, our subscriptions, then a barrier.

        The barrier's answer comes after everything the peer sent on connecting (its own
        PEERS and subscriptions), which is what settles the connection for readiness.
        """
        if self._peer_exchange:
            others = [
                c.info.listen_address
                for c in self._conns.values()
                if c is not conn and c.info.listen_address is not None
            ]
            if others:
                # Each entry takes at most 256 bytes: keep the frame within the frame cap
                # (peers run with the same max_frame_size).
                room = (self._max_frame_size - 3 - MAC_SIZE) // 256
                self._send(conn, PeerProtocol.peers_body(others[:room]))
        if conn.proto.peer_announces_topics:
            if self._too_many_topics():
                conn.announced_all = True
                self._send(conn, PeerProtocol.all_topics_body())
            else:
                for topic in self._subs:
                    self._send(conn, PeerProtocol.topic_added_body(topic))
            self._send(conn, PeerProtocol.topics_complete_body())
        self._next_barrier += 1
        conn.ready_barrier = self._next_barrier
        self._ready_barriers[conn.ready_barrier] = conn
        self._send(conn, PeerProtocol.barrier_body(conn.ready_barrier))

    def _drop(self, conn: _Connection) -> None:
        """Take ``conn`` out of the live set (it is the registered one for its peer)."""
        del self._conns[conn.info.node_id]
        self._stats.connections_closed += 1
        self._log.info("disconnected from %s at %s", conn.info.node_id, conn.info.address)
        if self._on_disconnect is not None and self.state != "closed":
            self._callbacks.emit(self._on_disconnect, conn.info, not conn.info.outbound)
        self._notify_changed()

    def _unregister(self, conn: _Connection) -> None:
        for sub in tuple(self._barriers.values()):
            if conn in sub.pending:
                sub.acknowledged(conn)  # a later connection carries only newer messages
        self._ready_barriers.pop(conn.ready_barrier, None)
        if self._conns.get(conn.info.node_id) is conn:
            self._drop(conn)
        conn.queue.clear()
        conn.flushed.set()
        conn.closed.set()

    def _report_gap(self) -> None:
        self._stats.gaps_reported += 1
        self._gaps.notify()

    async def _serve(self, conn: _Connection, stream: anyio.abc.ByteStream) -> BaseException | None:
        """Pump a registered connection until it ends; return why it failed, if it did."""
        failure: BaseException | None = None
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    # The writer runs shielded and is cancelled only through this scope,
                    # when the reader ends for any reason: every send checks the scopes
                    # around it for a cancellation, and this stops that walk at once.
                    writer_scope = anyio.CancelScope(shield=True)
                    tg.start_soon(self._writer, conn, stream, tg.cancel_scope, writer_scope)
                    try:
                        failure = await self._reader(conn, stream)
                    finally:
                        writer_scope.cancel()
                    tg.cancel_scope.cancel()
        finally:
            self._unregister(conn)
        return failure

    async def _reader(self, conn: _Connection, stream: anyio.abc.ByteStream) -> BaseException:
        """Deliver the peer's messages until the connection fails; return why it did."""
        clock = self._clock
        proto = conn.proto
        try:
            while True:
                data = await stream.receive(_READ_SIZE)
                conn.last_received = clock()
                self._stats.bytes_received += len(data)
                self._handle_events(conn, proto.receive_data(data))
        except _CONNECTION_ERRORS as exc:
            return exc

    def _handle_events(self, conn: _Connection, events: list[ProtocolEvent]) -> None:
        for event in events:
            if isinstance(event, Message):
                self._stats.messages_received += 1
                self._deliver(event.topic, event.payload, conn)
            elif isinstance(event, Barrier):
                # Queued behind every message published so far, so the peer learns which
                # of our messages are older than its new subscription.
                self._send(conn, PeerProtocol.barrier_ack_body(event.barrier_id))
            elif isinstance(event, BarrierAck):
                sub = self._barriers.get(event.barrier_id)
                if sub is not None:
                    sub.acknowledged(conn)
                elif self._ready_barriers.get(event.barrier_id) is conn:
                    del self._ready_barriers[event.barrier_id]
                    conn.settled = True
                    self._notify_changed()
            elif isinstance(event, Peers):
                self._learn_peers(event.addresses)
            elif not isinstance(event, Ping | Opened):
                # A subscription announcement: the protocol object keeps the peer's set
                # (publish and remote_subscribers read it); waiters may want to know.
                self._notify_changed()

    async def _writer(
        self,
        conn: _Connection,
        stream: anyio.abc.ByteStream,
        connection_scope: anyio.CancelScope,
        writer_scope: anyio.CancelScope,
    ) -> None:
        with writer_scope:
            await self._write_loop(conn, stream, connection_scope)

    async def _write_loop(
        self,
        conn: _Connection,
        stream: anyio.abc.ByteStream,
        connection_scope: anyio.CancelScope,
    ) -> None:
        stats = self._stats
        clock = self._clock
        queue = conn.queue
        # The running backend's Event class, made directly: `anyio.Event()` looks the
        # backend up on every call, and the writer makes one per wake-up.
        new_event = type(queue.wakeup)
        try:
            while True:
                if not queue:
                    conn.flushed.set()
                    wakeup = queue.wakeup = new_event()
                    await wakeup.wait()
                    continue
                frames = queue.take()
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                queue.sending_since = started = clock()
                await stream.send(data)
                queue.sending_since = None
                conn.last_sent = started  # keepalive counts from when the write began
                stats.bytes_sent += len(data)
        except _CONNECTION_ERRORS as exc:
            self._log.debug("writing to %s failed: %r", conn.info.node_id, exc)
            connection_scope.cancel()

    # -- messages -----------------------------------------------------------------------

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every peer subscribed to ``topic``, and to local subscribers.

        Never waits for the network: each peer has a send queue drained by its own
        writer (see the stall rule in the class docs).

        Raises:
            ClosedError: the transport is closed or not entered.
            MessageTooLarge: ``message`` is above
                [`max_message_size`][podshare.transport.TcpTransport.max_message_size].
            ConfigurationError: ``topic`` is empty or too long.
        """
        self._check_open()
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size={self.max_message_size}"
            )
        if type(message) is not bytes:
            message = bytes(message)  # subscribers always receive bytes
        header = self._message_headers.get(topic)
        if header is None:
            try:
                header = encode_message_body(topic, b"")
            except DecodeError as exc:
                raise ConfigurationError(str(exc)) from exc
            if len(self._message_headers) >= _MESSAGE_HEADERS_CACHED:
                self._message_headers.clear()
            self._message_headers[topic] = header
        body = header + message
        stats = self._stats
        # Framed once for every peer; only a MAC (with a secret) is made per connection.
        frame = encode_frame(body) if self._secret is None else None
        for conn in tuple(self._conns.values()):
            if not conn.proto.peer_subscribes(topic):
                stats.messages_filtered += 1
            elif self._send(conn, body, frame):
                stats.messages_sent += 1
        self._deliver(topic, message, None)
        await self._checkpoint()

    def _deliver(self, topic: str, payload: bytes, source: _Connection | None) -> None:
        subs = self._subs.get(topic)
        if not subs:
            return
        dropped = False
        for sub in tuple(subs):
            if sub.pending and source in sub.pending:
                continue  # published before this subscription existed
            skip = sub.skip if source is None else None
            if skip is not None and payload.startswith(skip[1], skip[0]):
                continue  # the subscriber's own message (subscribe_skipping)
            try:
                if not sub.inbox.put(payload):
                    dropped = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                subs.discard(sub)
        if dropped:
            self._stats.messages_dropped += 1
            self._report_gap()

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Receive the messages published on ``topic`` anywhere in the mesh.

        Entering subscribes: every message published after it returns is delivered, and
        none published before. Each connected peer is told of the subscription and sent
        a barrier, whose answer (one round trip, waited for at most
        ``handshake_timeout``) marks where the peer's newer messages start. The iterator
        ends when the transport closes; leaving unsubscribes at once.

        Raises:
            ClosedError: on entering, if the transport is closed or not entered.
            ConfigurationError: on entering, if ``topic`` is empty or longer than 1024
                bytes of UTF-8.
        """
        return self._subscription(topic, None)

    def subscribe_skipping(
        self, topic: str, *, prefix: bytes, offset: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """As [`subscribe`][podshare.transport.TcpTransport.subscribe], leaving out the
        messages published through this transport whose bytes at ``offset`` start with
        ``prefix`` (see [`EchoSkipping`][podshare.transport.EchoSkipping])."""
        return self._subscription(topic, check_skip(prefix, offset))

    def _too_many_topics(self) -> bool:
        return len(self._subs) > MAX_ANNOUNCED_TOPICS or (
            self._topic_bytes > MAX_ANNOUNCED_TOPIC_BYTES
        )

    def _announce(self, topic: str, *, added: bool) -> None:
        """Tell every peer that listens that this node (un)subscribes to ``topic``."""
        too_many = added and self._too_many_topics()
        for conn in tuple(self._conns.values()):
            if not conn.proto.peer_announces_topics or conn.announced_all:
                continue
            if too_many:
                conn.announced_all = True
                self._send(conn, PeerProtocol.all_topics_body())
            elif added:
                self._send(conn, PeerProtocol.topic_added_body(topic))
            else:
                self._send(conn, PeerProtocol.topic_removed_body(topic))

    @asynccontextmanager
    async def _subscription(
        self, topic: str, skip: tuple[int, bytes] | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        try:
            raw = check_topic(topic)
        except DecodeError as exc:
            raise ConfigurationError(str(exc)) from exc
        inbox = Inbox(self._subscription_buffer)
        self._next_barrier += 1
        sub = _Subscription(inbox, self._next_barrier, skip)
        subs = self._subs.get(topic)
        if subs is None:
            subs = self._subs[topic] = set()
            self._topic_bytes += len(raw)
            # Ahead of the barrier: once a peer answers it, it knows to send us `topic`.
            self._announce(topic, added=True)
        subs.add(sub)
        barrier = PeerProtocol.barrier_body(sub.barrier_id)
        for conn in tuple(self._conns.values()):
            if self._send(conn, barrier):
                sub.pending.add(conn)
        try:
            if sub.pending:
                self._barriers[sub.barrier_id] = sub
                # A peer that does not answer in time only delays this subscription's
                # view of its messages; the subscription itself is ready now.
                with anyio.move_on_after(self._handshake_timeout):
                    await sub.done.wait()
            with inbox:
                yield inbox
        finally:
            self._barriers.pop(sub.barrier_id, None)
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]
                    self._topic_bytes -= len(raw)
                    if self.is_open:
                        self._announce(topic, added=False)
            inbox.end()

    def __repr__(self) -> str:
        where = self._address or self._listen
        return f"<TcpTransport {self._node_id} at {where}, {len(self._conns)} peers connected>"


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite, not {value!r}")
    return float(value)
