"""RedisTransport: podshare's messages over Redis pub/sub (redis-py's asyncio client).

One Redis connection per transport carries every subscription of the process (one reader
task dispatches to a bounded memory stream per subscription); publishing uses the normal
client. When the connection is lost the transport reconnects with capped, jittered
backoff, subscribes again to every channel and then reports a *gap* (see
:class:`~podshare.transport.base.GapReporting`), so every store refreshes itself and
converges without the application calling ``refresh()``.

redis-py is asyncio-only, so this transport needs asyncio: under trio the constructor (or,
when it is built outside any event loop, ``async with``) raises
:class:`~podshare.exceptions.ConfigurationError`. Install it with the ``redis`` extra
(``pip install podshare[redis]``).

Example (needs a Redis server, so it is not run as a doctest)::

    import anyio
    from podshare import Store
    from podshare.transport import RedisTransport

    async def main() -> None:
        async with RedisTransport("redis://localhost:6379/0") as tr:
            async with Store[int]("counts", tr) as store:
                await store.set("a", 1)

    anyio.run(main, backend="asyncio")
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import (
        AbstractConnection,
        ConnectionPool,
        SSLConnection,
        parse_url,
    )
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.transport.redis needs redis-py: pip install 'podshare[redis]'"
    ) from exc

from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    MessageRefused,
    MessageTooLarge,
    TransportError,
)
from podshare.transport.auth import OVERHEAD, Authenticator, AuthStats, Opener, RefusalLog, Secret
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE, GapListeners

__all__ = ["RedisStatistics", "RedisTransport"]

_log = logging.getLogger("podshare.transport.redis")

# Everything redis-py and the socket layer raise when the wire fails; mapped at the
# boundary to TransportError so users never catch redis.ConnectionError from podshare.
_WIRE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

# Redis refuses bulk strings above 512 MiB (proto-max-bulk-len's ceiling).
_REDIS_MAX_BULK = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RedisStatistics:
    """A snapshot of a :class:`RedisTransport`'s state (from ``statistics()``).

    Attributes:
        connected: the pub/sub connection is up (``publish`` is attempted).
        reconnects: connections re-established after a loss since the transport opened.
        gaps_reported: times the gap listeners were told messages may have been lost.
        channels: Redis channels currently subscribed by this process.
        messages_received: messages read from the pub/sub connection.
        messages_dropped: messages dropped because a subscription's buffer was full.
        auth: with ``secret=...``, the authentication counters (messages sealed, opened,
            and refused by reason; see [`AuthStats`][podshare.transport.auth.AuthStats]);
            ``None`` without a secret.
    """

    connected: bool
    reconnects: int
    gaps_reported: int
    channels: int
    messages_received: int
    messages_dropped: int
    auth: AuthStats | None = None


class _ContextSSLConnection(SSLConnection):
    """An SSLConnection that uses a caller-provided ``ssl.SSLContext`` as it is."""

    def __init__(self, *, podshare_ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # RedisSSLContext.get() returns .context when it is set, so ours is used verbatim.
        self.ssl_context.context = podshare_ssl_context


class _Channel:
    """The local subscriptions of one Redis channel."""

    __slots__ = ("live", "opener", "ready", "subs")

    def __init__(self, opener: Opener | None) -> None:
        self.opener = opener  # checks each message before dispatch, with secret=...
        self.subs: dict[MemoryObjectSendStream[bytes], bool] = {}  # stream -> dropping
        self.ready = anyio.Event()
        # False until Redis confirmed our SUBSCRIBE: a message read before then was
        # published before the subscription was entered (say, while an UNSUBSCRIBE of
        # the same channel was still in flight) and must not reach it.
        self.live = False

    def open(self) -> None:
        self.live = True
        self.ready.set()


class _ConnectionLost(Exception):
    """Internal: the pub/sub connection stopped answering."""


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


class RedisTransport:
    """A :class:`~podshare.transport.base.Transport` over Redis pub/sub.

    Args:
        url: where Redis is: ``redis://[user:password@]host:port/db``, ``rediss://`` for
            TLS, or ``unix:///path``. Ignored when ``client`` is given.
        client: an existing ``redis.asyncio.Redis`` to publish with (and to copy the
            connection settings of the pub/sub connection from). The transport does not
            close it.
        channel_prefix: prepended to every topic (``"{prefix}:{topic}"``), so several
            applications can share one Redis; ``""`` for none.
        ssl_context: TLS settings used verbatim; needs a ``rediss://`` URL.
        username: ACL user name; overrides the one in the URL.
        password: password; overrides the one in the URL.
        max_message_size: the largest message ``publish`` accepts; larger ones raise
            :class:`~podshare.exceptions.MessageTooLarge` before reaching Redis. Stores
            split their batches below it.
        reconnect_backoff: ``(first, cap)`` seconds between reconnection attempts; the delay
            doubles per failed attempt up to ``cap``, with jitter.
        timeout: seconds allowed for connecting and for one command (publish, subscribe).
        health_check_interval: seconds of silence on the pub/sub connection after which it
            is PINGed; no answer within the same time means it is dead and is replaced.
        subscription_buffer: messages buffered per subscription; when a subscriber falls
            this far behind, further messages are dropped for it and a gap is reported.
        secret: a shared secret (``bytes`` or ``str``, at least 16 bytes; or a list, the first
            sealing and every one opening, to rotate it). Every message then carries a MAC under a
            key derived per channel, with replay protection (see
            [`podshare.transport.auth`][podshare.transport.auth]); messages that fail are dropped
            before any subscriber sees them and counted in ``statistics().auth``. Every pod must use
            the same secret.
        encrypt: with ``secret``, also encrypt every payload (AES-256-GCM; needs the
            ``encryption`` extra).

    Raises:
        ConfigurationError: a bad option, or constructed under trio.

    Under asyncio ``async with RedisTransport(...)`` connects (raising
    :class:`~podshare.exceptions.TransportError` when Redis cannot be reached) and starts
    the reader task; leaving it closes everything. Subscriptions survive reconnects;
    while disconnected ``publish`` raises :class:`~podshare.exceptions.TransportError`.
    Messages are delivered as received, without size checks (a store's decoder applies its
    own caps).

    Example (needs a Redis server)::

        async with RedisTransport("redis://localhost:6379/0") as tr:
            async with tr.subscribe("greetings") as messages:
                await tr.publish("greetings", b"hello")
                async for message in messages:
                    print(message)
                    break
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        client: aioredis.Redis | None = None,
        channel_prefix: str = "podshare",
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
        timeout: float = 5.0,
        health_check_interval: float = 15.0,
        subscription_buffer: int = 1024,
        secret: Secret | Sequence[Secret] | None = None,
        encrypt: bool = False,
    ) -> None:
        _require_asyncio(_current_async_library())
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

        self.max_message_size = max_message_size
        self._prefix = f"{channel_prefix}:" if channel_prefix else ""
        self._backoff = (float(first), float(cap))
        self._timeout = float(timeout)
        self._health_interval = float(health_check_interval)
        self._buffer = subscription_buffer

        if client is not None:
            if ssl_context is not None or username is not None or password is not None:
                raise ConfigurationError(
                    "ssl_context, username and password configure the transport's own "
                    "client; with client=..., configure that client instead"
                )
            self._client = client
            self._owns_client = False
            pool = client.connection_pool
            connection_class: type[AbstractConnection] = pool.connection_class
            connection_kwargs = dict(pool.connection_kwargs)
        else:
            try:
                options: dict[str, Any] = dict(parse_url(url))
            except ValueError as exc:
                raise ConfigurationError(f"url: {exc}") from exc
            if username is not None:
                options["username"] = username
            if password is not None:
                options["password"] = password
            if ssl_context is not None:
                if options.get("connection_class") is not SSLConnection:
                    raise ConfigurationError("ssl_context needs a rediss:// url")
                options["connection_class"] = _ContextSSLConnection
                options["podshare_ssl_context"] = ssl_context
            options.setdefault("socket_connect_timeout", self._timeout)
            options.setdefault("socket_timeout", self._timeout)
            # One quick retry covers a pooled connection left stale by a server restart;
            # anything longer would only delay the TransportError the store reports.
            options["retry"] = Retry(NoBackoff(), 1)
            self._client = aioredis.Redis.from_pool(ConnectionPool(**options))
            self._owns_client = True
            connection_class = options.pop("connection_class", aioredis.Connection)
            connection_kwargs = options

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

        self._gaps = GapListeners()
        self._channels: dict[bytes, _Channel] = {}
        self._inflight: dict[bytes, int] = {}  # SUBSCRIBEs sent, not yet confirmed
        self._resubscribing: set[bytes] = set()
        self._outbox: MemoryObjectSendStream[tuple[bytes, ...]] | None = None
        self._task_group: TaskGroup | None = None
        self._reader_scope: anyio.CancelScope | None = None  # made in __aenter__, in the loop
        self._opened = False
        self._closed = False
        self._connected = False
        self._pong: anyio.Event | None = None
        self._last_read = 0.0
        self._reconnects = 0
        self._gaps_reported = 0
        self._received = 0
        self._dropped = 0

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # The constructor may have run outside any event loop; here it is reliable.
        _require_asyncio(_current_async_library())
        if self._closed:
            raise ClosedError("this RedisTransport was closed; create a new one")
        if self._opened:
            raise ClosedError("a RedisTransport can be entered only once")
        conn = await self._connect()
        self._reader_scope = anyio.CancelScope()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._opened = True
        await task_group.start(self._run, conn)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group = self._task_group
        await self.aclose()
        if task_group is not None:
            self._task_group = None
            # The body's own exception is not handed to the task group, which would wrap
            # it in an ExceptionGroup; it propagates as it is once the reader has stopped.
            await task_group.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Stop the reader, end every subscription's iterator and close the connections.

        Idempotent. Later ``publish`` and ``subscribe`` calls raise
        :class:`~podshare.exceptions.ClosedError`.
        """
        if self._closed:
            return
        self._closed = True
        self._connected = False
        # Not the task group's own scope: that one also encloses the body of the user's
        # `async with`, which aclose() must not cancel.
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        for channel in self._channels.values():
            for stream in channel.subs:
                stream.close()
            channel.open()
        self._channels.clear()
        if self._owns_client:
            with anyio.CancelScope(shield=True):
                try:
                    await self._client.aclose()
                except _WIRE_ERRORS as exc:  # closing a dead connection may fail; moot
                    _log.debug("closing the Redis client failed: %r", exc)

    # -- the Transport protocol ------------------------------------------------------

    def channel_for(self, topic: str) -> str:
        """The Redis channel that carries ``topic`` (the prefix applied).

        Example:
            >>> RedisTransport(channel_prefix="app").channel_for("ps/config")
            'app:ps/config'
        """
        return self._prefix + topic

    async def publish(self, topic: str, message: bytes) -> None:
        """PUBLISH ``message`` on ``topic``'s channel.

        Raises:
            MessageTooLarge: ``message`` is above ``max_message_size`` (nothing is sent).
            TransportError: not connected to Redis (reconnecting), or the PUBLISH failed.
            ClosedError: the transport is closed or was never entered.
        """
        self._check_open()
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size "
                f"({self.max_message_size})"
            )
        if not self._connected:
            raise TransportError("not connected to Redis (reconnecting)")
        channel = self.channel_for(topic)
        if self._auth is not None:
            message = self._auth.seal(channel, message, now=time.time())
        try:
            with anyio.fail_after(self._timeout):
                await self._client.publish(channel, message)
        except _WIRE_ERRORS as exc:
            raise TransportError(f"Redis PUBLISH failed: {exc!r}") from exc

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``: ``async with tr.subscribe(t) as messages: ...``.

        Entering waits until Redis confirmed the subscription (when connected), so every
        message published afterwards is delivered. Entering while disconnected returns at
        once; the channel is subscribed on reconnection, which reports a gap.

        Raises:
            TransportError: Redis did not confirm the subscription within ``timeout``.
            ClosedError: the transport is closed or was never entered.
        """
        return self._subscription(topic)

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each reconnect (once resubscribed); returns a remover."""
        return self._gaps.add(listener)

    def statistics(self) -> RedisStatistics:
        """A snapshot of the connection state and counters."""
        return RedisStatistics(
            connected=self._connected,
            reconnects=self._reconnects,
            gaps_reported=self._gaps_reported,
            channels=len(self._channels),
            messages_received=self._received,
            messages_dropped=self._dropped,
            auth=self._auth.stats() if self._auth is not None else None,
        )

    # -- subscriptions -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the RedisTransport is closed")
        if not self._opened:
            raise ClosedError("the RedisTransport is not open: use `async with RedisTransport()`")

    @asynccontextmanager
    async def _subscription(self, topic: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        name = self.channel_for(topic).encode()
        send, receive = anyio.create_memory_object_stream[bytes](self._buffer)
        channel = self._channels.get(name)
        if channel is None:
            opener = self._auth.opener(name.decode()) if self._auth is not None else None
            channel = self._channels[name] = _Channel(opener)
            if not self._send_command(b"SUBSCRIBE", name):
                channel.open()  # subscribed (and a gap reported) on reconnection
        channel.subs[send] = False
        try:
            try:
                with anyio.fail_after(self._timeout):
                    await channel.ready.wait()
            except TimeoutError as exc:
                raise TransportError(f"Redis did not confirm SUBSCRIBE {topic!r}") from exc
            self._check_open()
            yield _Messages(receive)
        finally:
            channel.subs.pop(send, None)
            send.close()
            receive.close()
            if not channel.subs and self._channels.get(name) is channel:
                del self._channels[name]
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

    # -- the connection ------------------------------------------------------------

    async def _connect(self) -> AbstractConnection:
        conn = self._connection_class(**self._connection_kwargs)
        try:
            with anyio.fail_after(self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await _disconnect(conn)
            if isinstance(exc, _WIRE_ERRORS):
                raise TransportError(f"cannot connect to Redis: {exc!r}") from exc
            raise
        return conn

    async def _run(
        self, conn: AbstractConnection, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The reader task: serve one connection, then reconnect, until closed."""
        assert self._reader_scope is not None
        with self._reader_scope:
            await self._reconnect_forever(conn, task_status)

    async def _reconnect_forever(
        self, conn: AbstractConnection, task_status: TaskStatus[None]
    ) -> None:
        first = True
        while True:
            try:
                started = task_status.started if first else _nothing
                await self._serve(conn, report_gap=not first, started=started)
            finally:
                self._connected = False
                self._outbox = None
                self._inflight.clear()
                self._resubscribing.clear()
                for channel in self._channels.values():
                    channel.open()  # nobody waits for a confirmation that cannot come
                with anyio.CancelScope(shield=True):
                    await _disconnect(conn)
            first = False
            conn = await self._reconnect()
            self._reconnects += 1

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
                attempt = min(attempt + 1, 32)

    async def _serve(
        self, conn: AbstractConnection, *, report_gap: bool, started: Callable[[], None]
    ) -> None:
        """Serve ``conn`` until it fails; returns (having logged why) when it does."""
        outbox, commands = anyio.create_memory_object_stream[tuple[bytes, ...]](math.inf)
        self._last_read = time.monotonic()
        self._pong = None
        names = list(self._channels)
        self._resubscribing = set(names)
        self._outbox = outbox
        if names:
            self._send_command(b"SUBSCRIBE", *names)
        self._connected = True
        started()
        lost: list[BaseException] = []
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
        _log.warning(
            "lost the Redis pub/sub connection: %r; reconnecting", lost[0] if lost else None
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
            if time.monotonic() - self._last_read < interval:
                continue
            self._pong = pong = anyio.Event()
            self._send_command(b"PING")
            with anyio.move_on_after(interval):
                await pong.wait()
            if not pong.is_set():
                raise _ConnectionLost(f"no answer to PING within {interval} s")

    async def _read(self, conn: AbstractConnection, *, report_gap: bool) -> None:
        channels = self._channels
        while True:
            reply = await conn.read_response()
            self._last_read = time.monotonic()
            if self._pong is not None:
                self._pong.set()
                self._pong = None
            if not isinstance(reply, list) or len(reply) < 2:
                continue  # b"PONG" when no channel is subscribed
            kind = reply[0]
            if kind == b"message" and len(reply) == 3:
                self._received += 1
                channel = channels.get(reply[1])
                if channel is not None and channel.live:
                    message = reply[2]
                    if channel.opener is not None:
                        try:
                            message = channel.opener.open(message, now=time.time())
                        except MessageRefused as exc:
                            self._refusals.record(exc, reply[1].decode(errors="replace"))
                            continue
                    self._dispatch(channel, message)
            elif kind == b"subscribe":
                self._confirm(reply[1], report_gap=report_gap)

    def _dispatch(self, channel: _Channel, message: bytes) -> None:
        gap = False
        for stream, dropping in channel.subs.items():
            try:
                stream.send_nowait(message)
            except anyio.WouldBlock:
                self._dropped += 1
                if not dropping:
                    channel.subs[stream] = gap = True
                continue
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                continue
            if dropping:
                channel.subs[stream] = False
        if gap:
            # The subscriber fell behind: its store must refresh to repair the loss.
            self._report_gap()

    def _confirm(self, name: bytes, *, report_gap: bool) -> None:
        remaining = self._inflight.get(name, 0) - 1
        if remaining > 0:
            self._inflight[name] = remaining
        else:
            self._inflight.pop(name, None)
            channel = self._channels.get(name)
            if channel is not None:
                channel.open()
        if name in self._resubscribing:
            self._resubscribing.discard(name)
            if not self._resubscribing and report_gap:
                self._report_gap()

    def _report_gap(self) -> None:
        self._gaps_reported += 1
        try:
            self._gaps.notify()
        except Exception:  # a listener's bug must not stop delivery to everyone else
            _log.exception("a gap listener failed")


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


def _nothing() -> None:
    pass


async def _disconnect(conn: AbstractConnection) -> None:
    try:
        await conn.disconnect(nowait=True)
    except _WIRE_ERRORS as exc:
        _log.debug("disconnecting from Redis failed: %r", exc)
