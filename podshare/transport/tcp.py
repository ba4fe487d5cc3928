"""TcpTransport: a brokerless mesh of direct TCP connections between pods.

Every node listens on one address and dials the peers it is told about; messages go
straight to every connected peer and to the node's own subscribers. The wire protocol
(framing, handshake, authentication) lives in :mod:`podshare.transport._framing`; this
module only moves bytes between sockets and that sans-I/O core.

Example:
    >>> import anyio
    >>> from podshare.transport import TcpTransport
    >>> async def main() -> bytes:
    ...     async with TcpTransport() as a, TcpTransport(peers=[a.address]) as b:
    ...         async with a.subscribe("t") as messages:
    ...             await b.wait_connected(1)
    ...             await b.publish("t", b"hello")
    ...             return await messages.receive()
    >>> anyio.run(main)
    b'hello'
"""

from __future__ import annotations

import ipaddress
import logging
import random
import secrets
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.tls import TLSStream

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
from podshare.transport._framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_OVERHEAD,
    NONCE_SIZE,
    Barrier,
    BarrierAck,
    Message,
    PeerProtocol,
    Peers,
    ProtocolEvent,
    State,
    encode_message_body,
)
from podshare.transport.base import GapListeners

__all__ = ["PeerConnection", "TcpStats", "TcpTransport", "format_address", "parse_address"]

_log = logging.getLogger("podshare.transport.tcp")

_READ_SIZE = 65536
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
    """The inverse of :func:`parse_address` (IPv6 hosts get brackets).

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


@dataclass(frozen=True, slots=True)
class TcpStats:
    """Counters of one :class:`TcpTransport`, as returned by :meth:`TcpTransport.stats`.

    Rejected connections are counted by cause: ``auth_failures`` (wrong or missing secret,
    bad frame MAC), ``frames_too_large`` (a header over ``max_frame_size``),
    ``protocol_errors`` (garbage, truncated or unknown frames, wrong version),
    ``handshake_timeouts`` and ``tls_failures``. Dropped peers are counted by cause too:
    ``peers_stalled`` (send queue full) and ``peers_silent`` (nothing heard for three
    keepalive intervals). ``messages_sent`` counts messages queued to peers (one per
    peer), ``messages_received`` those received from peers.
    """

    connections_opened: int = 0
    connections_closed: int = 0
    connection_attempts_failed: int = 0
    duplicates_closed: int = 0
    auth_failures: int = 0
    frames_too_large: int = 0
    protocol_errors: int = 0
    handshake_timeouts: int = 0
    tls_failures: int = 0
    peers_stalled: int = 0
    peers_silent: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_dropped: int = 0
    gaps_reported: int = 0


def _new_counters() -> dict[str, int]:
    """The mutable mirror of :class:`TcpStats`."""
    return dict.fromkeys((f.name for f in fields(TcpStats)), 0)


class _Connection:
    """The transport's side of one registered connection: its send queue and life."""

    __slots__ = (
        "closed",
        "info",
        "last_received",
        "last_sent",
        "max_queued",
        "queue",
        "queued_bytes",
        "scope",
        "stalled",
        "wakeup",
    )

    def __init__(self, info: PeerConnection, max_queued: int) -> None:
        self.info = info
        self.max_queued = max_queued
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.scope = anyio.CancelScope()
        self.closed = anyio.Event()
        self.wakeup = anyio.Event()
        self.stalled = False
        now = anyio.current_time()
        self.last_received = now
        self.last_sent = now

    def enqueue(self, body: bytes) -> bool:
        """Queue ``body``; ``False`` when the queue is over its byte limit (peer stalled)."""
        if self.queued_bytes + len(body) > self.max_queued:
            return False
        self.queue.append(body)
        self.queued_bytes += len(body)
        self.wakeup.set()
        return True


class _Subscription:
    """One subscription: its stream, and the peers whose older messages it must skip."""

    __slots__ = ("barrier_id", "done", "pending", "send")

    def __init__(self, send: MemoryObjectSendStream[bytes], barrier_id: int) -> None:
        self.send = send
        self.barrier_id = barrier_id
        #: Connections whose BARRIER_ACK has not arrived: their messages predate us.
        self.pending: set[_Connection] = set()
        self.done = anyio.Event()

    def acknowledged(self, conn: _Connection) -> None:
        self.pending.discard(conn)
        if not self.pending:
            self.done.set()


@dataclass
class _Dialer:
    """A peer address to keep connected, and what dialing it taught us."""

    scope: anyio.CancelScope | None = None
    node_id: str | None = None
    #: Learned from another peer rather than configured: given up after a few failures.
    gossiped: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one connection ended, for the dialer's next decision."""

    peer_node_id: str | None
    registered: bool
    self_connection: bool


class TcpTransport:
    """A brokerless TCP mesh: every node talks to its peers directly.

    Args:
        listen: the ``"host:port"`` to listen on (port 0 picks a free one; see
            :attr:`address`), or ``None`` to only dial out.
        peers: addresses to dial and keep connected (see :meth:`add_peer`).
        node_id: this transport's id on the mesh (random by default). Must differ
            between nodes; it breaks ties when two nodes dial each other.
        secret: a shared secret (``bytes`` or ``str``). Peers prove they know it with a
            challenge-response handshake and every later frame carries a MAC; peers
            without it are disconnected and counted in :meth:`stats`.
        ssl_context: TLS for accepted connections (a server context; require client
            certificates in it for mutual TLS). Also used to dial unless
            ``client_ssl_context`` is given.
        client_ssl_context: TLS for dialed connections (a client context).
        tls_hostname: the name to verify peers' certificates against, instead of the
            dialed host (useful when peers are dialed by IP, as in Kubernetes).
        max_frame_size: the largest frame accepted; checked from a frame's header before
            its body is read. Messages up to ``max_frame_size - 1063`` bytes can be sent.
        send_queue: bytes queued for one peer beyond which it counts as stalled and is
            disconnected (it resynchronises after reconnecting); writers never wait.
        subscription_buffer: messages buffered per subscription; a subscriber that falls
            further behind misses messages and a gap is reported.
        reconnect_backoff: ``(first, cap)`` seconds between dial attempts; the delay
            doubles per failure up to ``cap``, with jitter.
        handshake_timeout: seconds a new connection has to complete TLS and the handshake.
        keepalive: seconds of silence after which a ping is sent; a peer silent for three
            times as long is disconnected. ``None`` disables both.
        peer_exchange: tell each new peer where this node's other peers listen, and dial
            the peers it reports (see :attr:`discovered`), so the mesh completes itself.
        logger: where connection events go (``podshare.transport.tcp`` by default).

    Use it as an async context manager; it reports gaps (:meth:`add_gap_listener`) each
    time a peer connects, so stores refresh by themselves.

    Messages go to the peers connected to the publisher and are not relayed, so every
    node must be connected to every other. Peer exchange (on by default) does that from
    any connected start: a node that dials one member learns of, and dials, the others.
    :class:`~podshare.transport.discovery.DNSDiscoverer` keeps ``peers`` in step with a
    Kubernetes headless Service.
    """

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
        subscription_buffer: int = 4096,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        handshake_timeout: float = 5.0,
        keepalive: float | None = 5.0,
        peer_exchange: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
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
        #: The largest message :meth:`publish` accepts (read by stores to split batches).
        self.max_message_size = max_frame_size - FRAME_OVERHEAD
        if send_queue < self.max_message_size:
            raise ConfigurationError("send_queue must be at least the largest message")
        self._send_queue = send_queue
        if subscription_buffer < 1:
            raise ConfigurationError("subscription_buffer must be at least 1")
        self._subscription_buffer = subscription_buffer
        first, cap = reconnect_backoff
        if not 0 < first <= cap:
            raise ConfigurationError("reconnect_backoff must be (first, cap) with 0 < first <= cap")
        self._backoff = (first, cap)
        if handshake_timeout <= 0:
            raise ConfigurationError("handshake_timeout must be positive")
        self._handshake_timeout = handshake_timeout
        if keepalive is not None and keepalive <= 0:
            raise ConfigurationError("keepalive must be positive or None")
        self._keepalive = keepalive
        self._peer_exchange = peer_exchange
        self._listen_port = 0
        self._log = logger if logger is not None else _log

        self._dialers: dict[str, _Dialer] = {}
        self._gossip: dict[str, _Dialer] = {}
        for peer in peers:
            parse_address(peer)
            self._dialers.setdefault(peer, _Dialer())
        self._conns: dict[str, _Connection] = {}
        self._subs: dict[str, set[_Subscription]] = {}
        self._barriers: dict[int, _Subscription] = {}
        self._next_barrier = 0
        self._gaps = GapListeners()
        self._counters = _new_counters()
        self._address: str | None = None
        self._self_addresses: set[str] = set()
        self._outer: anyio.abc.TaskGroup | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._scope = anyio.CancelScope()
        self._opened = False
        self._closed = False
        self._changed = anyio.Event()

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
        """A snapshot of this transport's counters."""
        return TcpStats(**self._counters)

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` each time a peer (re)connects; returns its remover."""
        return self._gaps.add(listener)

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._opened:
            raise ClosedError("a TcpTransport can be entered only once")
        self._opened = True
        listeners: list[anyio.abc.SocketListener] = []
        if self._listen is not None:
            host, port = parse_address(self._listen)
            try:
                multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
            except OSError as exc:
                self._closed = True
                raise TransportError(f"cannot listen on {self._listen}: {exc}") from exc
            listeners = [
                listener
                for listener in multi.listeners
                if isinstance(listener, anyio.abc.SocketListener)
            ]
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
        outer = anyio.create_task_group()
        await outer.__aenter__()
        self._outer = outer
        try:
            await outer.start(self._supervise)
        except BaseException as exc:
            self._closed = True
            outer.cancel_scope.cancel()
            self._outer = None
            for listener in listeners:
                await anyio.aclose_forcefully(listener)
            await outer.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        assert self._tg is not None
        for listener in listeners:
            self._tg.start_soon(self._accept_loop, listener)
        if self._keepalive is not None:
            self._tg.start_soon(self._keepalive_loop, self._keepalive)
        for address, dialer in self._dialers.items():
            self._start_dialer(address, dialer)
        return self

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # Background tasks live in this inner group so that closing cancels only them,
        # never the code running inside the user's `async with` block.
        with self._scope:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._close_nowait()
        outer, self._outer = self._outer, None
        if outer is None:
            return None
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            return await outer.__aexit__(exc_type, exc, tb)
        # The user's own exception is not the task group's business: passing it would
        # wrap it in an ExceptionGroup. Background tasks were cancelled above.
        await outer.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close every connection, listener and subscription; idempotent.

        Subscriptions' iterators end; background tasks are cancelled and finish by the
        time the ``async with`` block exits.
        """
        self._close_nowait()
        await anyio.lowlevel.checkpoint()

    def _close_nowait(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.send.close()
        self._subs.clear()
        self._barriers.clear()
        for conn in self._conns.values():
            conn.scope.cancel()
        self._scope.cancel()
        self._notify_changed()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the transport is closed")
        if self._tg is None:
            raise ClosedError("use the transport as `async with TcpTransport(...)` first")

    # -- peers --------------------------------------------------------------------------

    def add_peer(self, address: str) -> None:
        """Dial ``address`` and keep it connected (reconnecting with backoff); idempotent.

        Raises:
            ConfigurationError: ``address`` is not ``"host:port"``.
        """
        parse_address(address)
        if address in self._dialers:
            return
        dialer = self._gossip.pop(address, None)
        if dialer is not None:  # already dialing it: now it is configured, for good
            dialer.gossiped = False
            self._dialers[address] = dialer
            return
        dialer = self._dialers[address] = _Dialer()
        if self._tg is not None and not self._closed:
            self._start_dialer(address, dialer)

    def remove_peer(self, address: str) -> None:
        """Stop dialing ``address`` and drop the connection to the node found there.

        The node may still dial this one, and with peer exchange another peer may report
        it again while it is alive; use ``peer_exchange=False`` for full manual control.
        """
        dialer = self._dialers.pop(address, None) or self._gossip.pop(address, None)
        if dialer is None:
            return
        if dialer.scope is not None:
            dialer.scope.cancel()
        if dialer.node_id is not None and (conn := self._conns.get(dialer.node_id)) is not None:
            conn.scope.cancel()

    async def wait_connected(self, count: int = 1) -> None:
        """Wait until at least ``count`` peers are connected (use with a timeout).

        Raises:
            ClosedError: the transport closed while waiting.
        """
        while len(self._conns) < count:
            self._check_open()
            await self._changed.wait()
        self._check_open()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _start_dialer(self, address: str, dialer: _Dialer) -> None:
        assert self._tg is not None
        dialer.scope = anyio.CancelScope()
        self._tg.start_soon(self._dial_loop, address, dialer)

    async def _dial_loop(self, address: str, dialer: _Dialer) -> None:
        assert dialer.scope is not None
        with dialer.scope:
            host, port = parse_address(address)
            failures = 0
            while True:
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
                    self._counters["connection_attempts_failed"] += 1
                    self._notify_changed()
                    self._log.debug("dialing %s failed: %r", address, exc)
                else:
                    outcome = await self._run_connection(stream, outbound=True, address=address)
                    if outcome.peer_node_id is not None:
                        dialer.node_id = outcome.peer_node_id
                if outcome is not None and outcome.self_connection:
                    self._self_addresses.add(address)
                    self._notify_changed()
                    self._log.info("peer address %s is this node; not dialing it", address)
                    if dialer.gossiped:
                        self._forget_gossip(address, dialer)
                        return
                    await anyio.sleep_forever()
                if outcome is not None and outcome.registered:
                    failures = 0
                elif outcome is not None and self._conns.get(outcome.peer_node_id or ""):
                    continue  # lost the tie-break to a live connection: wait on that one
                else:
                    failures += 1
                    if dialer.gossiped and failures >= _GOSSIP_ATTEMPTS:
                        # Only live peers are gossiped: this one has gone since.
                        self._forget_gossip(address, dialer)
                        return
                await anyio.sleep(self._backoff_delay(failures))

    def _forget_gossip(self, address: str, dialer: _Dialer) -> None:
        if self._gossip.get(address) is dialer:
            del self._gossip[address]
            self._notify_changed()

    def _learn_peers(self, addresses: tuple[str, ...]) -> None:
        """Dial the addresses a peer reported that this node does not know yet."""
        if not self._peer_exchange or self._tg is None or self._closed:
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

    async def _keepalive_loop(self, interval: float) -> None:
        # One timer for all connections, rather than a timeout around every read and
        # every wait of every connection: the message path stays free of timer churn.
        ping = PeerProtocol.ping_body()
        while True:
            await anyio.sleep(interval / 2)
            now = anyio.current_time()
            for conn in tuple(self._conns.values()):
                if now - conn.last_received > 3 * interval:
                    self._counters["peers_silent"] += 1
                    self._log.warning(
                        "peer %s silent for %.1f s; disconnecting it",
                        conn.info.node_id,
                        now - conn.last_received,
                    )
                    conn.scope.cancel()
                elif now - conn.last_sent >= interval and not conn.queue:
                    conn.enqueue(ping)

    # -- accepting ----------------------------------------------------------------------

    async def _accept_loop(self, listener: anyio.abc.SocketListener) -> None:
        assert self._tg is not None
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # Out of file descriptors and the like: back off rather than spin.
                    self._log.warning("accept failed: %r", exc)
                    await anyio.sleep(0.1)
                    continue
                self._tg.start_soon(self._handle_inbound, stream)

    async def _handle_inbound(self, stream: anyio.abc.SocketStream) -> None:
        try:
            remote = stream.extra(anyio.abc.SocketAttribute.remote_address)  # noqa: S610
            address = _format_sockaddr(remote)
        except (OSError, anyio.TypedAttributeLookupError):
            address = "?"
        wrapped: anyio.abc.ByteStream = stream
        if self._server_ssl is not None:
            try:
                with anyio.fail_after(self._handshake_timeout):
                    wrapped = await TLSStream.wrap(
                        stream,
                        server_side=True,
                        ssl_context=self._server_ssl,
                        standard_compatible=False,
                    )
            except _CONNECTION_ERRORS as exc:
                self._counters["tls_failures"] += 1
                self._notify_changed()
                self._log.info("TLS handshake with %s failed: %r", address, exc)
                await anyio.aclose_forcefully(stream)
                return
        await self._run_connection(wrapped, outbound=False, address=address)

    # -- one connection -----------------------------------------------------------------

    async def _run_connection(
        self, stream: anyio.abc.ByteStream, *, outbound: bool, address: str
    ) -> _Outcome:
        """Handshake, register (with the tie-break), pump messages; never raises I/O errors."""
        proto = PeerProtocol(
            self._node_id,
            nonce=secrets.token_bytes(NONCE_SIZE),
            secret=self._secret,
            max_frame_size=self._max_frame_size,
            listen_port=self._listen_port,
        )
        try:
            early: list[ProtocolEvent] = []
            try:
                with anyio.fail_after(self._handshake_timeout):
                    await stream.send(proto.data_to_send())
                    while proto.state is not State.OPEN:
                        data = await stream.receive(_READ_SIZE)
                        self._counters["bytes_received"] += len(data)
                        early.extend(proto.receive_data(data))
                        if out := proto.data_to_send():
                            await stream.send(out)
            except TimeoutError:
                self._counters["handshake_timeouts"] += 1
                self._notify_changed()
                self._log.info("handshake with %s timed out", address)
                return _Outcome(None, False, False)
            except _CONNECTION_ERRORS as exc:
                self._count_failure(exc, address, proto)
                return _Outcome(proto.peer_node_id, False, proto.self_connection)
            peer = proto.peer_node_id
            assert peer is not None
            info = PeerConnection(peer, address, outbound, _listen_address(address, proto))
            conn = _Connection(info, self._send_queue)
            registered = self._register(conn)
            if registered and self._peer_exchange:
                others = [
                    c.info.listen_address
                    for c in self._conns.values()
                    if c is not conn and c.info.listen_address is not None
                ]
                if others:
                    conn.enqueue(PeerProtocol.peers_body(others))
            # Frames that arrived with the end of the handshake: messages are delivered
            # either way (the peer sent them once); barriers are answered if we stay.
            self._handle_events(conn, proto, early)
            if not registered:
                self._counters["duplicates_closed"] += 1
                return _Outcome(peer, False, False)
            failure: BaseException | None = None
            try:
                with conn.scope:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._writer, conn, proto, stream, tg.cancel_scope)
                        failure = await self._reader(conn, proto, stream)
                        tg.cancel_scope.cancel()
            finally:
                self._unregister(conn)
            if failure is not None:
                self._count_failure(failure, address, proto)
            return _Outcome(peer, True, False)
        finally:
            await anyio.aclose_forcefully(stream)

    def _count_failure(self, exc: BaseException, address: str, proto: PeerProtocol) -> None:
        self._notify_changed()
        if proto.self_connection:
            return
        if isinstance(exc, AuthenticationError):
            self._counters["auth_failures"] += 1
            self._log.warning("rejected peer %s: %s", address, exc)
        elif isinstance(exc, FrameTooLarge):
            self._counters["frames_too_large"] += 1
            self._log.warning("rejected peer %s: %s", address, exc)
        elif isinstance(exc, ProtocolError):
            self._counters["protocol_errors"] += 1
            self._log.warning("rejected peer %s: %s", address, exc)
        elif proto.state is State.AUTH and isinstance(exc, _LOST_CONNECTION):
            # The peer hung up instead of proving it knows the secret (typically it just
            # found that ours differs from its own).
            self._counters["auth_failures"] += 1
            self._log.warning("rejected peer %s: it left without authenticating", address)
        elif proto.pending and isinstance(exc, _LOST_CONNECTION):
            self._counters["protocol_errors"] += 1
            self._log.warning("peer %s closed the connection inside a frame", address)
        elif isinstance(exc, ssl.SSLError) or (
            isinstance(exc, anyio.BrokenResourceError) and isinstance(exc.__cause__, ssl.SSLError)
        ):
            self._counters["tls_failures"] += 1
            self._log.info("TLS with %s failed: %r", address, exc)
        else:
            self._log.debug("connection to %s ended: %r", address, exc)

    def _register(self, conn: _Connection) -> bool:
        """Install ``conn`` unless a better connection to the same peer exists.

        When both nodes dial each other, both must keep the same connection: the one
        dialed by the node with the smaller node id. Otherwise the older one stays.
        """
        if self._closed:
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
            self._counters["duplicates_closed"] += 1
            existing.scope.cancel()
            self._conns.pop(peer)
            existing.closed.set()
        self._conns[peer] = conn
        self._counters["connections_opened"] += 1
        self._log.info(
            "connected to %s at %s (%s)",
            peer,
            conn.info.address,
            "outbound" if conn.info.outbound else "inbound",
        )
        self._notify_changed()
        self._report_gap()
        return True

    def _unregister(self, conn: _Connection) -> None:
        for sub in tuple(self._barriers.values()):
            if conn in sub.pending:
                sub.acknowledged(conn)  # a later connection carries only newer messages
        if self._conns.get(conn.info.node_id) is conn:
            del self._conns[conn.info.node_id]
            self._counters["connections_closed"] += 1
            self._log.info("disconnected from %s", conn.info.node_id)
            self._notify_changed()
        conn.closed.set()

    def _report_gap(self) -> None:
        self._counters["gaps_reported"] += 1
        try:
            self._gaps.notify()
        except ExceptionGroup as group:
            self._log.error("a gap listener failed", exc_info=group)

    async def _reader(
        self, conn: _Connection, proto: PeerProtocol, stream: anyio.abc.ByteStream
    ) -> BaseException:
        """Deliver the peer's messages until the connection fails; return why it did."""
        clock = anyio.current_time
        try:
            while True:
                data = await stream.receive(_READ_SIZE)
                conn.last_received = clock()
                self._counters["bytes_received"] += len(data)
                self._handle_events(conn, proto, proto.receive_data(data))
        except _CONNECTION_ERRORS as exc:
            return exc

    def _handle_events(
        self, conn: _Connection, proto: PeerProtocol, events: list[ProtocolEvent]
    ) -> None:
        for event in events:
            if isinstance(event, Message):
                self._counters["messages_received"] += 1
                self._deliver(event.topic, event.payload, conn)
            elif isinstance(event, Barrier):
                # Queued behind every message published so far, so the peer learns which
                # of our messages are older than its new subscription.
                if not conn.enqueue(proto.barrier_ack_body(event.barrier_id)):
                    self._stalled(conn)
            elif isinstance(event, BarrierAck):
                sub = self._barriers.get(event.barrier_id)
                if sub is not None:
                    sub.acknowledged(conn)
            elif isinstance(event, Peers):
                self._learn_peers(event.addresses)

    async def _writer(
        self,
        conn: _Connection,
        proto: PeerProtocol,
        stream: anyio.abc.ByteStream,
        connection_scope: anyio.CancelScope,
    ) -> None:
        counters = self._counters
        clock = anyio.current_time
        try:
            while True:
                if not conn.queue:
                    conn.wakeup = anyio.Event()
                    await conn.wakeup.wait()
                batch, conn.queue, conn.queued_bytes = conn.queue, deque(), 0
                data = b"".join([proto.encode(body) for body in batch])
                await stream.send(data)
                conn.last_sent = clock()
                counters["bytes_sent"] += len(data)
        except _CONNECTION_ERRORS as exc:
            self._log.debug("writing to %s failed: %r", conn.info.node_id, exc)
            connection_scope.cancel()

    # -- messages -----------------------------------------------------------------------

    async def publish(self, topic: str, message: bytes) -> None:
        """Send ``message`` to every connected peer and to this node's subscribers.

        Never waits for the network: each peer has a bounded send queue, and a peer whose
        queue is full is disconnected (it resynchronises when it reconnects).

        Raises:
            ClosedError: the transport is closed or not entered.
            MessageTooLarge: ``message`` is above :attr:`max_message_size`.
            ConfigurationError: ``topic`` is empty or too long.
        """
        self._check_open()
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size={self.max_message_size}"
            )
        if type(message) is not bytes:
            message = bytes(message)  # subscribers always receive bytes
        try:
            body = encode_message_body(topic, message)
        except DecodeError as exc:
            raise ConfigurationError(str(exc)) from exc
        for conn in tuple(self._conns.values()):
            if conn.enqueue(body):
                self._counters["messages_sent"] += 1
            else:
                self._stalled(conn)
        self._deliver(topic, message, None)
        await anyio.lowlevel.checkpoint()

    def _stalled(self, conn: _Connection) -> None:
        if conn.stalled:
            return
        conn.stalled = True
        self._counters["peers_stalled"] += 1
        self._log.warning(
            "peer %s is not keeping up (%d bytes queued); disconnecting it",
            conn.info.node_id,
            conn.queued_bytes,
        )
        conn.scope.cancel()

    def _deliver(self, topic: str, payload: bytes, source: _Connection | None) -> None:
        subs = self._subs.get(topic)
        if not subs:
            return
        dropped = False
        for sub in tuple(subs):
            if sub.pending and source in sub.pending:
                continue  # published before this subscription existed
            try:
                sub.send.send_nowait(payload)
            except anyio.WouldBlock:
                dropped = True
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                subs.discard(sub)
        if dropped:
            self._counters["messages_dropped"] += 1
            self._report_gap()

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Receive the messages published on ``topic`` anywhere in the mesh.

        Entering subscribes: every message published after it returns is delivered, and
        none published before (each connected peer is asked for a barrier, which takes
        one round trip, at most ``handshake_timeout``). The iterator ends when the
        transport closes; leaving unsubscribes at once.

        Raises:
            ClosedError: on entering, if the transport is closed or not entered.
        """
        return self._subscription(topic)

    @asynccontextmanager
    async def _subscription(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        send: MemoryObjectSendStream[bytes]
        receive: MemoryObjectReceiveStream[bytes]
        send, receive = anyio.create_memory_object_stream[bytes](self._subscription_buffer)
        self._next_barrier += 1
        sub = _Subscription(send, self._next_barrier)
        self._subs.setdefault(topic, set()).add(sub)
        barrier = PeerProtocol.barrier_body(sub.barrier_id)
        for conn in tuple(self._conns.values()):
            if conn.enqueue(barrier):
                sub.pending.add(conn)
            else:
                self._stalled(conn)
        try:
            if sub.pending:
                self._barriers[sub.barrier_id] = sub
                # A peer that does not answer in time only delays this subscription's
                # view of its messages; the subscription itself is ready now.
                with anyio.move_on_after(self._handshake_timeout):
                    await sub.done.wait()
            with receive:
                yield receive
        finally:
            self._barriers.pop(sub.barrier_id, None)
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]
            send.close()

    def __repr__(self) -> str:
        where = self._address or self._listen
        return f"<TcpTransport {self._node_id} at {where}, {len(self._conns)} peers connected>"
