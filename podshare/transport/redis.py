"""RedisTransport: podshare's messages over Redis pub/sub (redis-py's asyncio client).

One Redis connection per transport carries every subscription of the process (one reader
task dispatches to a bounded memory stream per subscription); publishing uses the normal
client. When the connection is lost the transport reconnects with capped, jittered
backoff, subscribes again to every channel and then reports a *gap* (see
[`GapReporting`][podshare.transport.base.GapReporting]), so every store refreshes itself
and converges without the application calling ``refresh()``. With Redis Sentinel
(``sentinels=[...]``, ``service_name=...``) the reconnection asks the sentinels for the
current master, so publishing and the pub/sub connection follow a failover.

redis-py is asyncio-only, so this transport needs asyncio: under trio the constructor (or,
when it is built outside any event loop, ``async with``) raises
[`ConfigurationError`][podshare.exceptions.ConfigurationError]. Install it with the
``redis`` extra (``pip install podshare[redis]``, which brings hiredis, redis-py's fast
reply parser).

Example (a fragment: it needs a Redis server, so it is not run as a doctest):

```python
import anyio
from podshare import Store
from podshare.transport import RedisTransport

async def main() -> None:
    async with RedisTransport("redis://localhost:6379/0") as tr:
        async with Store[int]("counts", tr) as store:
            await store.set("a", 1)

anyio.run(main, backend="asyncio")
```
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import ssl
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import (
        AbstractConnection,
        Connection,
        ConnectionPool,
        SSLConnection,
        UnixDomainSocketConnection,
        parse_url,
    )
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.transport.redis needs redis-py: pip install 'podshare[redis]'"
    ) from exc

from podshare._counters import StatsRecord
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.exceptions import (
    ConfigurationError,
    MessageRefused,
    MessageTooLarge,
    TransportError,
)
from podshare.transport.auth import OVERHEAD, Authenticator, AuthStats, Opener, RefusalLog, Secret
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE, GapListeners, check_skip

if TYPE_CHECKING:
    from podshare.persistence.redis import RedisPersistence

__all__ = ["RedisRemote", "RedisStats", "RedisTransport"]

_log = logging.getLogger("podshare.transport.redis")

# Everything redis-py and the socket layer raise when the wire fails; mapped at the
# boundary to TransportError so users never catch redis.ConnectionError from podshare.
_WIRE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# Redis refuses bulk strings above 512 MiB (proto-max-bulk-len's ceiling).
_REDIS_MAX_BULK = 512 * 1024 * 1024

# Callback invocations waiting for the callback task; beyond this they are dropped
# (counted and logged) so a stuck callback can never grow memory without bound.
_CALLBACK_QUEUE = 256

_CLUSTER_REFUSED = (
    "RedisTransport does not support Redis Cluster yet: sharded pub/sub needs one "
    "connection per shard, following slot migrations and failovers with a gap reported "
    "for each, which this transport does not do (see docs/transports/redis.md, "
    "'Redis Cluster'). Point it at one Redis server, or use Sentinel "
    "(sentinels=[...], service_name=...) for failover"
)


@dataclass(slots=True)
class RedisStats(StatsRecord):
    """Counters of one [`RedisTransport`][podshare.transport.redis.RedisTransport]
    (a frozen snapshot from ``stats()``).

    Attributes:
        connected: the pub/sub connection is up (``publish`` is attempted).
        channels: Redis channels currently subscribed by this process.
        reconnects: connections re-established after a loss since the transport opened.
        gaps_reported: times the gap listeners were told messages may have been lost.
        messages_sent: messages published (``PUBLISH`` returned).
        bytes_sent: payload bytes of those messages.
        publish_errors: ``publish`` calls that raised
            [`TransportError`][podshare.exceptions.TransportError] (not connected, or the
            ``PUBLISH`` failed).
        messages_received: messages read from the pub/sub connection.
        bytes_received: payload bytes of those messages.
        messages_dropped: messages dropped because a subscription's buffer was full.
        callback_errors: ``on_connect``/``on_disconnect``/``on_error`` calls and gap
            listener calls that raised (each logged).
        callbacks_dropped: callback invocations dropped because the callbacks were too
            slow to keep up (each logged).
        auth: with ``secret=...``, the authentication counters (messages sealed, opened,
            and refused by reason; see [`AuthStats`][podshare.transport.auth.AuthStats]);
            ``None`` without a secret.
    """

    connected: bool = False
    channels: int = 0
    reconnects: int = 0
    gaps_reported: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    publish_errors: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    messages_dropped: int = 0
    callback_errors: int = 0
    callbacks_dropped: int = 0
    auth: AuthStats | None = None


def __getattr__(name: str) -> object:
    if name == "RedisStatistics":
        warnings.warn(
            "RedisStatistics is deprecated; use RedisStats", DeprecationWarning, stacklevel=2
        )
        return RedisStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class RedisRemote:
    """The Redis server a transport's pub/sub connection is connected to.

    Handed to ``on_connect(remote, inbound)`` and ``on_disconnect(remote, inbound)``.

    Attributes:
        address: ``"host:port"`` (``"[host]:port"`` for an IPv6 address), or the socket
            path of a ``unix://`` URL.
        host: the host name or IP address (the socket path for a Unix socket).
        port: the TCP port; ``None`` for a Unix socket.
        service_name: the Sentinel service this server is the master of, or ``None``.

    Example:
        >>> str(RedisRemote("10.0.0.7:6379", "10.0.0.7", 6379))
        '10.0.0.7:6379'
    """

    address: str
    host: str
    port: int | None
    service_name: str | None = None

    def __str__(self) -> str:
        return self.address


class _ContextSSLConnection(SSLConnection):
    """An SSLConnection that uses a caller-provided ``ssl.SSLContext`` as it is."""

    def __init__(self, *, podshare_ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # RedisSSLContext.get() returns .context when it is set, so ours is used verbatim.
        self.ssl_context.context = podshare_ssl_context


class _ContextSSLSentinelConnection(SentinelManagedConnection, _ContextSSLConnection):
    """A Sentinel-managed connection (it asks for the master) with our SSLContext."""


class _Channel:
    """The local subscriptions of one Redis channel."""

    __slots__ = ("live", "opener", "ready", "skips", "subs")

    def __init__(self, opener: Opener | None) -> None:
        self.opener = opener  # checks each message before dispatch, with secret=...
        self.subs: dict[MemoryObjectSendStream[bytes], bool] = {}  # stream -> dropping
        # stream -> (offset, prefix) of the messages it leaves out (subscribe_skipping)
        self.skips: dict[MemoryObjectSendStream[bytes], tuple[int, bytes]] = {}
        self.ready = anyio.Event()
        # False until Redis confirmed our SUBSCRIBE: a message read before then was
        # published before the subscription was entered (say, while an UNSUBSCRIBE of
        # the same channel was still in flight) and must not reach it.
        self.live = False

    def open(self) -> None:
        self.live = True
        self.ready.set()


class _Ping:
    """One PING sent on the pub/sub connection, answered in order."""

    __slots__ = ("answered", "ok")

    def __init__(self) -> None:
        self.answered = anyio.Event()
        self.ok = False


class _ConnectionLost(Exception):
    """Internal: the pub/sub connection stopped answering (or its master moved)."""


_LOST_ERRORS: tuple[type[BaseException], ...] = (*_WIRE_ERRORS, _ConnectionLost)


def _current_async_library() -> str | None:
    """Name of the running async library, or None outside any event loop."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - trio (which needs sniffio) is absent then
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return "asyncio"
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


def _require_asyncio(library: str | None) -> None:
    if library is not None and library != "asyncio":
        raise ConfigurationError(
            f"RedisTransport needs asyncio (redis-py is asyncio-only), but it runs under "
            f"{library}; run it with anyio.run(..., backend='asyncio'), or use "
            f"MemoryTransport or TcpTransport under {library}"
        )


def _cause(exc: BaseException, timeout: float | None = None) -> str:
    """What went wrong, for an error message: the OS error if there is one, else the
    exception's type and text."""
    seen: BaseException | None = exc
    for _ in range(8):  # the chain redis-py builds is short; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno:
            # A failed name lookup (socket.gaierror) has a negative errno, which
            # os.strerror() only calls "Unknown error": its own text says what failed.
            text = os.strerror(seen.errno) if seen.errno > 0 else seen.strerror
            return f"{text or os.strerror(seen.errno)} (errno {seen.errno})"
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout} s" if timeout is not None else "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _address(kwargs: Mapping[str, Any]) -> str:
    """``host:port`` (or the socket path) that a connection built from ``kwargs`` dials."""
    if kwargs.get("path"):
        return str(kwargs["path"])
    return _host_port(str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379)))


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _prefix(channel_prefix: str, db: int) -> str:
    parts = [part for part in (channel_prefix, str(db) if db else "") if part]
    return "".join(f"{part}:" for part in parts)


class RedisTransport(Service):
    """A [`Transport`][podshare.transport.base.Transport] over Redis pub/sub.

    Args:
        url: where Redis is: ``redis://[user:password@]host:port/db``, ``rediss://`` for
            TLS, or ``unix:///path``; ``redis://localhost:6379/0`` when neither
            ``client`` nor ``sentinels`` is given.
        client: an existing ``redis.asyncio.Redis`` to publish with (and to copy the
            connection settings of the pub/sub connection from). The transport does not
            close it. A ``RedisCluster`` client is refused (see the docs).
        sentinels: ``[(host, port), ...]`` of Redis Sentinels: the transport asks them
            for the master of ``service_name`` on every (re)connection, so it follows a
            failover. Not with ``url`` or ``client``.
        service_name: the Sentinel service (``"mymaster"``); required with ``sentinels``.
        sentinel_username: ACL user name for the sentinels themselves (separate from
            ``username``, which is the master's).
        sentinel_password: password for the sentinels themselves.
        sentinel_options: more keyword arguments of ``redis.asyncio.Redis`` for the
            sentinel connections (for example ``{"ssl": True, "ssl_ca_certs": path}``).
        db: the database number; overrides the URL's. It does not separate pub/sub
            (Redis ignores databases there), so a nonzero ``db`` is folded into the
            channel prefix: ``"{channel_prefix}:{db}:{topic}"``.
        channel_prefix: prepended to every topic (``"{prefix}:{topic}"``), so several
            applications can share one Redis; ``""`` for none.
        ssl_context: TLS settings used verbatim for Redis (the master, with Sentinel);
            needs a ``rediss://`` URL unless ``sentinels`` is given.
        username: ACL user name; overrides the one in the URL.
        password: password; overrides the one in the URL.
        max_message_size: the largest message ``publish`` accepts; larger ones raise
            [`MessageTooLarge`][podshare.exceptions.MessageTooLarge] before reaching
            Redis. Stores split their batches below it.
        reconnect_backoff: ``(first, cap)`` seconds between reconnection attempts; the delay
            doubles per failed attempt up to ``cap``, with jitter.
        timeout: seconds allowed for connecting and for one command (publish, subscribe).
        health_check_interval: seconds of silence on the pub/sub connection after which it
            is PINGed; no answer within the same time means it is dead and is replaced.
            With Sentinel the master's address is also checked this often.
        subscription_buffer: messages buffered per subscription; when a subscriber falls
            this far behind, further messages are dropped for it (counted in
            ``stats().messages_dropped``, logged, reported to ``on_error``) and a gap is
            reported, so its store refreshes.
        close_timeout: the most seconds closing may take (also bounded by the closing
            code's own deadline).
        on_connect: ``on_connect(remote, inbound)`` after each pub/sub connection is
            established (``remote`` a [`RedisRemote`][podshare.transport.redis.RedisRemote],
            ``inbound`` always ``False``). Sync or async.
        on_disconnect: ``on_disconnect(remote, inbound)`` when that connection ends
            (lost, or closed by ``aclose``). Sync or async.
        on_error: ``on_error(exc)`` with a [`TransportError`][podshare.exceptions.TransportError]
            for every background failure: a lost connection, a failed reconnection
            attempt, a subscriber that fell behind. Sync or async.
        secret: a shared secret (``bytes`` or ``str``, at least 16 bytes; or a list, the
            first sealing and every one opening, to rotate it). Every message then carries
            a MAC under a key derived per channel, with replay protection (see
            [`podshare.transport.auth`][podshare.transport.auth]); messages that fail are
            dropped before any subscriber sees them and counted in ``stats().auth``.
            Every pod must use the same secret.
        encrypt: with ``secret``, also encrypt every payload (AES-256-GCM; needs the
            ``encryption`` extra).

    Raises:
        ConfigurationError: a bad option, or constructed under trio.

    Under asyncio ``async with RedisTransport(...)`` connects (raising
    [`TransportError`][podshare.exceptions.TransportError], naming the server and the
    cause, when Redis cannot be reached) and starts the reader task; leaving it closes
    everything. Subscriptions survive reconnects; while disconnected ``publish`` raises
    ``TransportError``. Messages are delivered as received, without size checks (a
    store's decoder applies its own caps). Callbacks run one at a time on a task of
    their own, in order, so they never delay the reader; one that raises is logged and
    counted in ``stats().callback_errors``, and the transport carries on.

    Example (a fragment: it needs a Redis server):

    ```python
    async with RedisTransport("redis://localhost:6379/0") as tr:
        async with tr.subscribe("greetings") as messages:
            await tr.publish("greetings", b"hello")
            async for message in messages:
                print(message)
                break
    ```
    """

    _service_name = "RedisTransport"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        sentinels: Sequence[tuple[str, int]] | None = None,
        service_name: str | None = None,
        sentinel_username: str | None = None,
        sentinel_password: str | None = None,
        sentinel_options: Mapping[str, Any] | None = None,
        db: int | None = None,
        channel_prefix: str = "podshare",
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        timeout: float = 5.0,
        health_check_interval: float = 15.0,
        subscription_buffer: int = 1024,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        on_connect: Callable[[RedisRemote, bool], object] | None = None,
        on_disconnect: Callable[[RedisRemote, bool], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
        secret: Secret | Sequence[Secret] | None = None,
        encrypt: bool = False,
    ) -> None:
        _require_asyncio(_current_async_library())
        super().__init__(close_timeout=close_timeout)
        if secret is None and encrypt:
            raise ConfigurationError("encrypt=True needs a secret")
        self._auth = Authenticator(secret, encrypt=encrypt) if secret is not None else None
        self._refusals = RefusalLog(_log)
        largest = _REDIS_MAX_BULK - (OVERHEAD if secret is not None else 0)
        if not isinstance(max_message_size, int) or not 0 < max_message_size <= largest:
            raise ConfigurationError(
                f"max_message_size must be an int in 1..{largest}, got {max_message_size!r}"
            )
        first, cap = reconnect_backoff
        if not (0 < first <= cap and math.isfinite(cap)):
            raise ConfigurationError(
                f"reconnect_backoff must be (first, cap) with 0 < first <= cap, "
                f"got {reconnect_backoff!r}"
            )
        for name, value in (("timeout", timeout), ("health_check_interval", health_check_interval)):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
        if subscription_buffer < 1:
            raise ConfigurationError(
                f"subscription_buffer must be at least 1, got {subscription_buffer!r}"
            )
        if not isinstance(channel_prefix, str):
            raise ConfigurationError("channel_prefix must be a str")
        if db is not None and (isinstance(db, bool) or not isinstance(db, int) or db < 0):
            raise ConfigurationError(f"db must be an int >= 0, got {db!r}")
        for name, callback in (
            ("on_connect", on_connect),
            ("on_disconnect", on_disconnect),
            ("on_error", on_error),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(f"{name} must be callable, not {callback!r}")
        if isinstance(client, RedisCluster):
            raise ConfigurationError(_CLUSTER_REFUSED)
        if url is not None and url.partition("://")[0].lower() in (
            "redis+cluster",
            "rediss+cluster",
            "redis-cluster",
        ):
            raise ConfigurationError(_CLUSTER_REFUSED)

        self.max_message_size = max_message_size
        self._backoff = (float(first), float(cap))
        self._timeout = float(timeout)
        self._health_interval = float(health_check_interval)
        self._buffer = subscription_buffer
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._sentinel: Sentinel | None = None
        self._sentinel_service: str | None = None
        self._owns_client = True

        common: dict[str, Any] = {
            "socket_connect_timeout": self._timeout,
            "socket_timeout": self._timeout,
            # One quick retry covers a pooled connection left stale by a server restart;
            # anything longer would only delay the TransportError the store reports.
            "retry": Retry(NoBackoff(), 1),
        }
        connection_class: type[AbstractConnection]
        if sentinels is not None:
            self._client, connection_class, connection_kwargs, db = self._sentinel_setup(
                url=url,
                client=client,
                sentinels=sentinels,
                service_name=service_name,
                sentinel_username=sentinel_username,
                sentinel_password=sentinel_password,
                sentinel_options=sentinel_options,
                db=db,
                ssl_context=ssl_context,
                username=username,
                password=password,
                common=common,
            )
        elif service_name is not None or sentinel_options is not None:
            raise ConfigurationError("service_name and sentinel_options need sentinels=[...]")
        elif client is not None:
            if url is not None:
                raise ConfigurationError("give url or client, not both")
            if ssl_context is not None or username is not None or password is not None:
                raise ConfigurationError(
                    "ssl_context, username and password configure the transport's own "
                    "client; with client=..., configure that client instead"
                )
            if db is not None:
                raise ConfigurationError("db configures the transport's own client")
            self._client = client
            self._owns_client = False
            pool = client.connection_pool
            connection_class = pool.connection_class
            connection_kwargs = dict(pool.connection_kwargs)
            db = int(connection_kwargs.get("db") or 0)
        else:
            if url is not None and url.partition("://")[0].lower() in (
                "redis+sentinel",
                "rediss+sentinel",
            ):
                raise ConfigurationError(
                    "redis-py does not parse redis+sentinel:// URLs: give "
                    "sentinels=[(host, port), ...] and service_name=... instead"
                )
            try:
                options: dict[str, Any] = dict(parse_url(url or "redis://localhost:6379/0"))
            except ValueError as exc:
                raise ConfigurationError(f"url: {exc}") from exc
            if username is not None:
                options["username"] = username
            if password is not None:
                options["password"] = password
            if db is not None:
                options["db"] = db
            db = int(options.get("db") or 0)
            if ssl_context is not None:
                if options.get("connection_class") is not SSLConnection:
                    raise ConfigurationError("ssl_context needs a rediss:// url")
                options["connection_class"] = _ContextSSLConnection
                options["podshare_ssl_context"] = ssl_context
            for key, value in common.items():
                options.setdefault(key, value)
            options["retry"] = common["retry"]
            self._client = aioredis.Redis.from_pool(ConnectionPool(**options))
            connection_class = options.pop("connection_class", Connection)
            connection_kwargs = options

        self._channel_prefix = channel_prefix
        self._prefix = _prefix(channel_prefix, db)
        # The pub/sub connection: raw RESP2 (push messages arrive as plain replies), bytes,
        # no read timeout (it idles between messages; our PING covers liveness) and no
        # retries of its own, so every loss reaches our reconnect loop and is reported.
        connection_kwargs.update(
            retry=Retry(NoBackoff(), 0),
            protocol=2,
            decode_responses=False,
            socket_timeout=None,
            health_check_interval=0,
        )
        connection_kwargs.setdefault("socket_connect_timeout", self._timeout)
        # Maintenance notifications (redis-py 7+) need RESP3, which the pub/sub connection
        # does not speak; they only move a connection early, and our reconnect covers that.
        for key in (
            "retry_on_error",
            "maint_notifications_config",
            "maint_notifications_pool_handler",
        ):
            connection_kwargs.pop(key, None)
        self._connection_class = connection_class
        self._connection_kwargs = connection_kwargs

        self._stats = RedisStats()
        self._gaps = GapListeners(_log)
        self._channels: dict[bytes, _Channel] = {}
        self._inflight: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet confirmed
        self._resubscribing: set[bytes] = set()
        self._outbox: MemoryObjectSendStream[tuple[bytes, ...]] | None = None
        self._pings: deque[_Ping] = deque()
        self._reader_scope: anyio.CancelScope | None = None  # made in _open, in the loop
        self._reader_done: anyio.Event | None = None
        self._connected = False
        self._remote: RedisRemote | None = None
        self._state_changed: anyio.Event | None = None
        self._last_read = 0.0
        self._callbacks_send: (
            MemoryObjectSendStream[tuple[Callable[..., object], tuple[Any, ...]]] | None
        ) = None
        self._callbacks_done: anyio.Event | None = None

    def _sentinel_setup(
        self,
        *,
        url: str | None,
        client: aioredis.Redis | None,
        sentinels: Sequence[tuple[str, int]],
        service_name: str | None,
        sentinel_username: str | None,
        sentinel_password: str | None,
        sentinel_options: Mapping[str, Any] | None,
        db: int | None,
        ssl_context: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
        common: dict[str, Any],
    ) -> tuple[aioredis.Redis, type[AbstractConnection], dict[str, Any], int]:
        """The publishing client and pub/sub connection settings for Sentinel mode."""
        if url is not None or client is not None:
            raise ConfigurationError("sentinels=[...] replaces url and client: give one")
        if not isinstance(service_name, str) or not service_name:
            raise ConfigurationError("sentinels=[...] needs service_name='...' (the master's)")
        addresses: list[tuple[str, int]] = []
        for entry in sentinels:
            try:
                host, port = entry
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"sentinels must be (host, port) pairs, got {entry!r}"
                ) from None
            if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigurationError(f"sentinels must be (host, port) pairs, got {entry!r}")
            addresses.append((host, port))
        if not addresses:
            raise ConfigurationError("sentinels must name at least one (host, port)")
        sentinel_kwargs: dict[str, Any] = {
            "socket_connect_timeout": self._timeout,
            "socket_timeout": self._timeout,
        }
        if sentinel_username is not None:
            sentinel_kwargs["username"] = sentinel_username
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        sentinel_kwargs.update(sentinel_options or {})
        master: dict[str, Any] = {"db": db or 0}
        if username is not None:
            master["username"] = username
        if password is not None:
            master["password"] = password
        self._sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        self._sentinel_service = service_name
        publish_kwargs = dict(master, **common)
        connection_class: type[AbstractConnection] = Connection
        connection_kwargs = dict(master)
        if ssl_context is not None:
            publish_kwargs["connection_class"] = _ContextSSLSentinelConnection
            publish_kwargs["podshare_ssl_context"] = ssl_context
            connection_class = _ContextSSLConnection
            connection_kwargs["podshare_ssl_context"] = ssl_context
        client = self._sentinel.master_for(service_name, **publish_kwargs)
        return client, connection_class, connection_kwargs, db or 0

    # -- lifecycle -----------------------------------------------------------------

    async def _open(self) -> None:
        # The constructor may have run outside any event loop; here it is reliable.
        _require_asyncio(_current_async_library())
        self._state_changed = anyio.Event()
        self._reader_scope = anyio.CancelScope()
        self._reader_done = anyio.Event()
        self._callbacks_done = anyio.Event()
        send, receive = anyio.create_memory_object_stream[
            tuple[Callable[..., object], tuple[Any, ...]]
        ](_CALLBACK_QUEUE)
        self._callbacks_send = send
        try:
            conn = await self._connect()
        except BaseException:
            send.close()
            receive.close()
            with anyio.CancelScope(shield=True):
                await self._close_clients()
            raise
        self.start_soon(self._run_callbacks, receive)
        await self.start(self._run, conn)

    async def _close(self) -> None:
        # Stop the reader first: on its way out it closes the pub/sub connection and
        # queues on_disconnect, which the callback task then still delivers.
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        if self._reader_done is not None:
            await self._reader_done.wait()
        await self._close_clients()
        if self._callbacks_send is not None:
            self._callbacks_send.close()
        if self._callbacks_done is not None:
            await self._callbacks_done.wait()

    def _closed(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self._set_connected(False)
        if self._callbacks_send is not None:
            self._callbacks_send.close()
        for channel in self._channels.values():
            for stream in channel.subs:
                stream.close()
            channel.open()
        self._channels.clear()
        self._stats.channels = 0
        self._changed()

    async def _close_clients(self) -> None:
        if not self._owns_client:
            return
        closers: list[Callable[[], Any]] = [self._client.aclose]
        if self._sentinel is not None:
            # Each sentinel client on its own: Sentinel.aclose() is recent in redis-py.
            closers.extend(sentinel.aclose for sentinel in self._sentinel.sentinels)
        for close in closers:
            try:
                await close()
            except _WIRE_ERRORS as exc:  # closing a dead connection may fail; moot
                _log.debug("closing a Redis client failed: %r", exc)

    # -- the Transport protocol ------------------------------------------------------

    def channel_for(self, topic: str) -> str:
        """The Redis channel that carries ``topic`` (the prefix, and a nonzero db, applied).

        Example:
            >>> RedisTransport(channel_prefix="app").channel_for("ps/config")
            'app:ps/config'
            >>> RedisTransport("redis://localhost:6379/3").channel_for("ps/config")
            'podshare:3:ps/config'
        """
        return self._prefix + topic

    async def publish(self, topic: str, message: bytes) -> None:
        """PUBLISH ``message`` on ``topic``'s channel.

        Raises:
            MessageTooLarge: ``message`` is above ``max_message_size`` (nothing is sent).
            TransportError: not connected to Redis (reconnecting), or the PUBLISH failed;
                the message names the server and the cause.
            ClosedError: the transport is closed or was never entered.
        """
        self._check_open()
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size "
                f"({self.max_message_size})"
            )
        if not self._connected:
            self._stats.publish_errors += 1
            raise TransportError(f"not connected to Redis at {self._where()} (reconnecting)")
        channel = self.channel_for(topic)
        if self._auth is not None:
            message = self._auth.seal(channel, message, now=time.time())
        try:
            with anyio.fail_after(self._timeout):
                await self._client.publish(channel, message)
        except _WIRE_ERRORS as exc:
            self._stats.publish_errors += 1
            raise TransportError(
                f"PUBLISH to Redis at {self._where()} failed: {_cause(exc, self._timeout)}"
            ) from exc
        self._stats.messages_sent += 1
        self._stats.bytes_sent += len(message)

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``: ``async with tr.subscribe(t) as messages: ...``.

        Entering waits until Redis confirmed the subscription (when connected), so every
        message published afterwards is delivered. Entering while disconnected returns at
        once; the channel is subscribed on reconnection, which reports a gap.

        Raises:
            TransportError: Redis did not confirm the subscription within ``timeout``.
            ClosedError: the transport is closed or was never entered.
        """
        return self._subscription(topic, None)

    def subscribe_skipping(
        self, topic: str, *, prefix: bytes, offset: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """As [`subscribe`][podshare.transport.RedisTransport.subscribe], leaving out the
        messages whose bytes at ``offset`` start with ``prefix`` (see
        [`EchoSkipping`][podshare.transport.EchoSkipping]): Redis still sends this
        connection its own publications, but they are dropped here, before they wake
        the subscriber (with ``secret=``, after the message was authenticated)."""
        return self._subscription(topic, check_skip(prefix, offset))

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each reconnect (once resubscribed) and when a
        subscriber fell behind; returns a remover."""
        return self._gaps.add(listener)

    async def wait_ready(self) -> None:
        """Return once connected and every subscription entered so far is confirmed.

        "Confirmed" means Redis answered its ``SUBSCRIBE`` on the current connection,
        so messages published from now on reach it. While Redis is unreachable this
        waits (for the reconnection); the caller bounds the wait, for example with
        ``anyio.fail_after``.

        Raises:
            ClosedError: the transport is closed (or closes while waiting).
        """
        self._check_open()
        while not (self._connected and not self._inflight):
            assert self._state_changed is not None
            await self._state_changed.wait()
            self._check_open()

    async def remote_subscribers(self, topic: str) -> int | None:
        """How many other connections subscribe to ``topic``'s channel now.

        ``PUBSUB NUMSUB`` of the channel, through the publishing client, minus this
        transport's own subscription (every local subscription of a channel shares one
        Redis subscription, so that is 1 while subscribed). Before asking, a PING on the
        pub/sub connection makes sure Redis has processed every earlier ``SUBSCRIBE``
        and ``UNSUBSCRIBE`` of this transport. A snapshot: a subscription of the same
        topic entered or left meanwhile may be counted or not.

        Returns:
            The count, or ``None`` when not connected or Redis did not answer (the
            transport cannot tell).

        Raises:
            ClosedError: the transport is closed or was never entered.
        """
        self._check_open()
        if not self._connected:
            return None
        name = self.channel_for(topic).encode()
        if not await self._barrier(self._timeout):
            return None
        own = 1 if name in self._channels and name not in self._inflight else 0
        try:
            with anyio.fail_after(self._timeout):
                counts = await self._client.pubsub_numsub(name)
        except _WIRE_ERRORS as exc:
            _log.info("PUBSUB NUMSUB on %s failed: %s", self._where(), _cause(exc, self._timeout))
            return None
        total = sum(int(n) for channel, n in counts if channel in (name, name.decode()))
        return max(0, total - own)

    def default_persistence(self) -> RedisPersistence:
        """A [`RedisPersistence`][podshare.persistence.RedisPersistence] on this transport.

        It uses the transport's own client, so the same server, TLS settings, ACL user,
        database and Sentinel failover, and keeps each store's state under the store's
        channel prefix (``channel_for("ps/{name}") + ":state"``). It works while the
        transport is open; closing it leaves the transport alone. A store on this
        transport uses it when given ``persistence=None``.

        Raises:
            ConfigurationError: the transport was given a ``client`` with
                ``decode_responses=True`` (records are bytes): pass a persistence
                explicitly, or ``persistence=False``.

        Example:
            >>> tr = RedisTransport("redis://localhost:6379/3", channel_prefix="app")
            >>> tr.default_persistence().state_key("config")
            'app:3:ps/config:state'
        """
        from podshare.persistence.redis import RedisPersistence

        return RedisPersistence(
            client=self._client, channel_prefix=self._channel_prefix, timeout=self._timeout
        )

    def stats(self) -> RedisStats:
        """A frozen snapshot of the connection state and counters."""
        if self._auth is not None:
            self._stats.auth = self._auth.stats()
        return self._stats.snapshot()

    def statistics(self) -> RedisStats:
        """Deprecated alias of [`stats()`][podshare.transport.redis.RedisTransport.stats]."""
        warnings.warn(
            "RedisTransport.statistics() is deprecated; use stats()",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.stats()

    @property
    def remote(self) -> RedisRemote | None:
        """The server the pub/sub connection is connected to, or ``None`` while not."""
        return self._remote if self._connected else None

    # -- subscriptions -----------------------------------------------------------------

    @asynccontextmanager
    async def _subscription(
        self, topic: str, skip: tuple[int, bytes] | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        name = self.channel_for(topic).encode()
        send, receive = anyio.create_memory_object_stream[bytes](self._buffer)
        channel = self._channels.get(name)
        if channel is None:
            opener = self._auth.opener(name.decode()) if self._auth is not None else None
            channel = self._channels[name] = _Channel(opener)
            self._stats.channels = len(self._channels)
            if not self._send_command(b"SUBSCRIBE", name):
                channel.open()  # subscribed (and a gap reported) on reconnection
        channel.subs[send] = False
        if skip is not None:
            channel.skips[send] = skip
        try:
            try:
                with anyio.fail_after(self._timeout):
                    await channel.ready.wait()
            except TimeoutError as exc:
                raise TransportError(
                    f"Redis at {self._where()} did not confirm SUBSCRIBE {topic!r} "
                    f"within {self._timeout} s"
                ) from exc
            self._check_open()
            yield _Messages(receive)
        finally:
            channel.subs.pop(send, None)
            channel.skips.pop(send, None)
            send.close()
            receive.close()
            if not channel.subs and self._channels.get(name) is channel:
                del self._channels[name]
                self._stats.channels = len(self._channels)
                self._send_command(b"UNSUBSCRIBE", name)

    def _send_command(self, *command: bytes) -> bool:
        """Queue a command for the pub/sub connection; False when there is none."""
        if self._outbox is None:
            return False
        if command[0] == b"SUBSCRIBE":
            for name in command[1:]:
                self._inflight[name] = self._inflight.get(name, 0) + 1
        self._outbox.send_nowait(command)
        return True

    async def _barrier(self, within: float) -> bool:
        """PING the pub/sub connection and wait for the answer.

        Commands on that connection are answered in order, so once the PONG is read,
        every earlier command's reply has been read too. False if the connection went
        away or stayed silent for ``within`` seconds.
        """
        ping = _Ping()
        if not self._send_command(b"PING"):
            return False
        self._pings.append(ping)
        with anyio.move_on_after(within):
            await ping.answered.wait()
        return ping.ok

    # -- the connection ------------------------------------------------------------

    def _where(self) -> str:
        """The server, for messages: the connected one, or where the next connect goes."""
        if self._remote is not None:
            return self._remote.address
        if self._sentinel is not None:
            return f"the master of {self._sentinel_service!r}"
        return _address(self._connection_kwargs)

    async def _connect(self) -> AbstractConnection:
        kwargs = self._connection_kwargs
        where = _address(kwargs)
        if self._sentinel is not None:
            service = self._sentinel_service
            assert service is not None
            try:
                with anyio.fail_after(self._timeout):
                    host, port = await self._sentinel.discover_master(service)
            except _WIRE_ERRORS as exc:
                asked = ", ".join(
                    _address(s.connection_pool.connection_kwargs) for s in self._sentinel.sentinels
                )
                raise TransportError(
                    f"cannot find the master of {service!r} through the sentinels at "
                    f"{asked}: {_cause(exc, self._timeout)}"
                ) from exc
            kwargs = dict(kwargs, host=host, port=port)
            where = f"{host}:{port} (master of {service!r})"
        conn = self._connection_class(**kwargs)
        try:
            with anyio.fail_after(self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                if self._sentinel is not None:
                    await self._check_master(conn, where)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _disconnect(conn)
            if isinstance(exc, _WIRE_ERRORS):
                raise TransportError(
                    f"cannot connect to Redis at {where}: {_cause(exc, self._timeout)}"
                ) from exc
            raise
        return conn

    async def _check_master(self, conn: AbstractConnection, where: str) -> None:
        # A sentinel may still name a master that was just demoted: ask the server itself.
        await conn.send_command("ROLE")
        reply = await conn.read_response()
        role = reply[0] if isinstance(reply, list) and reply else reply
        if role != b"master":
            raise TransportError(f"Redis at {where} answers ROLE with {role!r}, not master")

    def _remote_of(self, conn: AbstractConnection) -> RedisRemote:
        if isinstance(conn, UnixDomainSocketConnection):
            return RedisRemote(conn.path, conn.path, None, self._sentinel_service)
        host = str(getattr(conn, "host", "localhost"))
        port = int(getattr(conn, "port", 6379))
        return RedisRemote(_host_port(host, port), host, port, self._sentinel_service)

    async def _run(
        self, conn: AbstractConnection, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The reader task: serve one connection, then reconnect, until closed."""
        assert self._reader_scope is not None
        try:
            with self._reader_scope:
                await self._reconnect_forever(conn, task_status)
        finally:
            assert self._reader_done is not None
            self._reader_done.set()

    async def _reconnect_forever(
        self, conn: AbstractConnection, task_status: TaskStatus[None]
    ) -> None:
        first = True
        while True:
            try:
                started = task_status.started if first else _nothing
                await self._serve(conn, report_gap=not first, started=started)
            finally:
                self._set_connected(False)
                self._outbox = None
                self._inflight.clear()
                self._resubscribing.clear()
                while self._pings:
                    self._pings.popleft().answered.set()  # unanswered: ok stays False
                for channel in self._channels.values():
                    channel.open()  # nobody waits for a confirmation that cannot come
                with anyio.CancelScope(shield=True):
                    await _disconnect(conn)
            first = False
            previous = self._remote
            conn = await self._reconnect()
            self._stats.reconnects += 1
            if previous is not None and self._remote_of(conn) != previous:
                # A failover moved the server: drop the publishing client's pooled
                # connections too, so PUBLISH follows (redis-py reconnects on next use).
                await self._reset_publisher()

    async def _reset_publisher(self) -> None:
        try:
            await self._client.connection_pool.disconnect()
        except _WIRE_ERRORS as exc:
            _log.debug("resetting the publishing connections failed: %r", exc)

    async def _reconnect(self) -> AbstractConnection:
        first, cap = self._backoff
        attempt = 0
        while True:
            delay = min(cap, first * 2**attempt)
            # Equal jitter: never zero, and a fleet restarted together spreads out.
            await anyio.sleep(delay / 2 + random.uniform(0, delay / 2))
            try:
                return await self._connect()
            except TransportError as exc:
                _log.info("reconnecting to Redis failed (attempt %d): %s", attempt + 1, exc)
                self._emit(self._on_error, exc)
                attempt = min(attempt + 1, 32)

    async def _serve(
        self, conn: AbstractConnection, *, report_gap: bool, started: Callable[[], None]
    ) -> None:
        """Serve ``conn`` until it fails; returns (having logged why) when it does."""
        remote = self._remote_of(conn)
        outbox, commands = anyio.create_memory_object_stream[tuple[bytes, ...]](math.inf)
        self._last_read = time.monotonic()
        names = list(self._channels)
        self._resubscribing = set(names)
        self._outbox = outbox
        self._remote = remote
        if names:
            self._send_command(b"SUBSCRIBE", *names)
        self._set_connected(True)
        started()
        self._emit(self._on_connect, remote, False)
        lost: list[BaseException] = []
        try:
            with outbox, commands:
                async with anyio.create_task_group() as task_group:

                    async def guard(fn: Callable[[], Any]) -> None:
                        try:
                            await fn()
                        except _LOST_ERRORS as exc:
                            lost.append(exc)
                            task_group.cancel_scope.cancel()

                    task_group.start_soon(guard, lambda: self._write(conn, commands))
                    task_group.start_soon(guard, lambda: self._ping(conn))
                    if report_gap and not names:
                        self._report_gap()
                    await guard(lambda: self._read(conn, report_gap=report_gap))
        finally:
            self._set_connected(False)
            self._emit(self._on_disconnect, remote, False)
        cause = _cause(lost[0], self._health_interval) if lost else "unknown"
        _log.warning("lost the Redis pub/sub connection to %s: %s; reconnecting", remote, cause)
        self._emit(
            self._on_error,
            TransportError(f"lost the Redis pub/sub connection to {remote}: {cause}"),
        )

    async def _write(
        self, conn: AbstractConnection, commands: MemoryObjectReceiveStream[tuple[bytes, ...]]
    ) -> None:
        async for command in commands:
            await conn.send_packed_command(conn.pack_command(*command), check_health=False)

    async def _ping(self, conn: AbstractConnection) -> None:
        interval = self._health_interval
        while True:
            await anyio.sleep(interval)
            if time.monotonic() - self._last_read >= interval and not await self._barrier(interval):
                raise _ConnectionLost(f"no answer to PING within {interval} s")
            if self._sentinel is not None:
                await self._check_master_address(conn)

    async def _check_master_address(self, conn: AbstractConnection) -> None:
        """Leave a server that the sentinels no longer name as the master."""
        assert self._sentinel is not None
        assert self._sentinel_service is not None
        try:
            with anyio.fail_after(self._timeout):
                host, port = await self._sentinel.discover_master(self._sentinel_service)
        except _WIRE_ERRORS as exc:
            _log.debug("asking the sentinels for the master failed: %r", exc)
            return
        if (str(host), int(port)) != (getattr(conn, "host", None), getattr(conn, "port", None)):
            raise _ConnectionLost(
                f"the sentinels now name {host}:{port} as the master of {self._sentinel_service!r}"
            )

    async def _read(self, conn: AbstractConnection, *, report_gap: bool) -> None:
        while True:
            try:
                reply = await conn.read_response()
            except ResponseError as exc:
                # An error reply (an ACL refusing a channel, say) is not a dead connection.
                _log.warning("Redis at %s refused a pub/sub command: %s", conn, exc)
                self._emit(self._on_error, TransportError(f"Redis refused a command: {exc}"))
                continue
            self._last_read = time.monotonic()
            if isinstance(reply, list) and len(reply) >= 2:
                kind = reply[0]
                if kind == b"message" and len(reply) == 3:
                    self._receive(reply[1], reply[2])
                elif kind == b"subscribe":
                    self._confirm(reply[1], report_gap=report_gap)
                elif kind == b"pong":
                    self._pong()
            elif isinstance(reply, bytes):
                self._pong()  # PING's answer while nothing is subscribed

    def _receive(self, name: bytes, message: bytes) -> None:
        """One message read from Redis on channel ``name``."""
        self._stats.messages_received += 1
        self._stats.bytes_received += len(message)
        channel = self._channels.get(name)
        if channel is not None and channel.live:
            if channel.opener is not None:
                try:
                    message = channel.opener.open(message, now=time.time())
                except MessageRefused as exc:
                    self._refusals.record(exc, name.decode(errors="replace"))
                    return
            self._dispatch(channel, name, message)

    def _dispatch(self, channel: _Channel, name: bytes, message: bytes) -> None:
        gap = False
        skips = channel.skips
        for stream, dropping in channel.subs.items():
            skip = skips.get(stream) if skips else None
            if skip is not None and message.startswith(skip[1], skip[0]):
                continue  # the subscriber's own message (subscribe_skipping)
            try:
                stream.send_nowait(message)
            except anyio.WouldBlock:
                self._stats.messages_dropped += 1
                if not dropping:
                    channel.subs[stream] = gap = True
                continue
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                continue
            if dropping:
                channel.subs[stream] = False
        if gap:
            # The subscriber fell behind: its store must refresh to repair the loss.
            text = (
                f"a subscription of {name.decode(errors='replace')!r} fell "
                f"{self._buffer} messages behind; its messages are dropped until it "
                f"catches up (a gap is reported)"
            )
            _log.warning("%s", text)
            self._emit(self._on_error, TransportError(text))
            self._report_gap()

    def _pong(self) -> None:
        if self._pings:
            ping = self._pings.popleft()
            ping.ok = True
            ping.answered.set()

    def _confirm(self, name: bytes, *, report_gap: bool) -> None:
        remaining = self._inflight.get(name, 0) - 1
        if remaining > 0:
            self._inflight[name] = remaining
        else:
            self._inflight.pop(name, None)
            channel = self._channels.get(name)
            if channel is not None:
                channel.open()
            if not self._inflight:
                self._changed()
        if name in self._resubscribing:
            self._resubscribing.discard(name)
            if not self._resubscribing and report_gap:
                self._report_gap()

    def _report_gap(self) -> None:
        self._stats.gaps_reported += 1
        failures = self._gaps.failures
        self._gaps.notify()  # a listener that raises is logged and counted, never raised
        self._stats.callback_errors += self._gaps.failures - failures

    def _set_connected(self, connected: bool) -> None:
        if self._connected != connected:
            self._connected = connected
            self._stats.connected = connected
            self._changed()

    def _changed(self) -> None:
        """Wake every ``wait_ready`` caller to look at the state again."""
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = anyio.Event()

    # -- callbacks -----------------------------------------------------------------

    def _emit(self, callback: Callable[..., object] | None, *args: Any) -> None:
        """Queue ``callback(*args)`` for the callback task (never blocks the caller)."""
        if callback is None or self._callbacks_send is None:
            return
        try:
            self._callbacks_send.send_nowait((callback, args))
        except anyio.WouldBlock:
            self._stats.callbacks_dropped += 1
            _log.warning("callbacks are too slow: dropped %s%r", _name(callback), args)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # closed: nothing more is delivered after the last on_disconnect

    async def _run_callbacks(
        self, calls: MemoryObjectReceiveStream[tuple[Callable[..., object], tuple[Any, ...]]]
    ) -> None:
        try:
            async with calls:
                async for callback, args in calls:
                    try:
                        result = callback(*args)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # noqa: BLE001  # the user's bug: logged and counted, never fatal
                        self._stats.callback_errors += 1
                        _log.exception("RedisTransport callback %s failed", _name(callback))
        finally:
            assert self._callbacks_done is not None
            self._callbacks_done.set()


class _Messages:
    """The async iterator a subscription yields: the messages of one topic, in order."""

    __slots__ = ("_receive",)

    def __init__(self, receive: MemoryObjectReceiveStream[bytes]) -> None:
        self._receive = receive

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None


def _name(callback: Callable[..., object]) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


def _nothing() -> None:
    pass


async def _disconnect(conn: AbstractConnection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except _WIRE_ERRORS as exc:
        _log.debug("disconnecting from Redis failed: %r", exc)
