"""NatsTransport: podshare's messages over NATS (nats-py), optionally through JetStream.

Every topic is one NATS subject (see
[`subject_for`][podshare.transport.nats.NatsTransport.subject_for] for the mapping);
each subscription is one NATS subscription, and a message published on a topic reaches
every subscription of it in every process connected to the same NATS cluster, the
publisher's own included. nats-py reconnects by itself (to the next server of
``servers``, or to one the cluster announced) and subscribes again; the transport then
reports a *gap* (see [`GapReporting`][podshare.transport.base.GapReporting]), so every
store refreshes itself and converges without the application calling ``refresh()``.

**JetStream** (``jetstream=True``, or a ``nats.js.api.StreamConfig`` to set the limits):
each store's broadcast topic (``ps/{name}``) gets a bounded stream of its own, and its
subscriptions become JetStream consumers that track the last stream sequence they
delivered. A publish on it waits for the stream's acknowledgement. After a reconnect each
consumer resumes from its last sequence, so a replica receives what it missed by replay
instead of a digest exchange; no gap is reported when every message is accounted for.
When the stream no longer holds the next message (aged out, or the stream was lost and
created anew), or a publish of this process failed meanwhile, a gap is reported as
usual and the store falls back to a sync. Node inboxes and the liveness topic stay on core
NATS: what they carry is retried by its own protocol.

nats-py is asyncio-only, so this transport needs asyncio: under trio the constructor (or,
when it is built outside any event loop, ``async with``) raises
[`ConfigurationError`][podshare.exceptions.ConfigurationError]. Install it with the
``nats`` extra (``pip install podshare[nats]``).

Example (a fragment: it needs a NATS server, so it is not run as a doctest):

```python
import anyio
from podshare import Store
from podshare.transport import NatsTransport

async def main() -> None:
    async with NatsTransport("nats://localhost:4222") as tr:
        async with Store[int]("counts", tr) as store:
            await store.set("a", 1)

anyio.run(main, backend="asyncio")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import math
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import urlsplit

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import api as js_api
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.transport.nats needs nats-py: pip install 'podshare[nats]'"
    ) from exc

from podshare._counters import StatsRecord
from podshare._identity import default_node_id
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.exceptions import (
    ConfigurationError,
    MessageRefused,
    MessageTooLarge,
    TransportError,
)
from podshare.transport._callbacks import CallbackRunner
from podshare.transport._subjects import check_prefix, subject_to_topic, topic_to_subject
from podshare.transport.auth import (
    OVERHEAD,
    Authenticator,
    AuthStats,
    Opener,
    Refusal,
    RefusalLog,
    Secret,
)
from podshare.transport.base import DEFAULT_MAX_MESSAGE_SIZE, GapListeners, check_skip

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from podshare.persistence.nats import NatsKVPersistence

__all__ = [
    "NatsRemote",
    "NatsStats",
    "NatsTransport",
    "default_stream_config",
    "subject_to_topic",
    "topic_to_subject",
]

_log = logging.getLogger("podshare.transport.nats")

# Everything nats-py and the socket layer raise when the wire fails; mapped at the
# boundary to TransportError so users never catch nats.errors.Error from podshare.
_WIRE_ERRORS: Final[tuple[type[BaseException], ...]] = (nats.errors.Error, OSError, TimeoutError)

# A JetStream consumer sends an idle heartbeat this often (seconds) when it has nothing
# to deliver; this many missed in a row mean it is gone (deleted, or its server lost).
_JS_HEARTBEAT: Final = 5.0
_JS_MISSED_HEARTBEATS: Final = 3
# The server deletes an ephemeral consumer nobody listens to after this long (seconds).
_JS_INACTIVE: Final = 120.0
# Tokens of a JetStream reply subject in the first format ($JS.ACK.<stream>...).
_JS_V1_TOKENS: Final = 9
# JetStream API error codes the transport reacts to.
_ERR_STREAM_NAME_IN_USE: Final = 10058
_ERR_SUBJECTS_OVERLAP: Final = 10065
# Store broadcast topics (``ps/{name}``) are the ones with a JetStream stream.
_STORE_FAMILY: Final = "ps/"
# Liveness's broadcast topic: heartbeats are periodic, so a lost one needs no gap.
_LIVENESS_TOPIC: Final = "pl/live"
# nats-py's reconnect loop treats a negative limit as "forever".
_FOREVER: Final = -1
_STREAM_NAME_OK: Final = re.compile(r"[^A-Za-z0-9_-]")

# A subscription that keeps falling behind is reported (log, on_error) this often at most.
_REPORT_EVERY: Final = 1.0
# What a delivery to a local subscription did.
_DELIVERED: Final = 0
_REFUSED: Final = 1
_REFUSED_TOO_OLD: Final = 2
_OVERFLOW: Final = 3
# Barrier inboxes kept subscribed for later publishes (more are made while this many
# publishes wait at once, and unsubscribed after).
_MAX_BARRIER_INBOXES: Final = 16
# Topics whose subject and stream are remembered (node inboxes come and go).
_MAX_ROUTES: Final = 4096
# Put into a core subscription's queue when the transport closes: its iterator ends.
_END: Final = object()


def default_stream_config() -> js_api.StreamConfig:
    """The stream limits ``jetstream=True`` uses for each store (a new copy per call).

    15 minutes, 64 MiB or 100 000 messages, whichever is reached first, the oldest
    messages discarded first, on disk, one replica. Pass your own
    ``nats.js.api.StreamConfig`` as ``jetstream=`` to change them (``name`` and
    ``subjects`` are set per store by the transport and must be left unset).

    Example:
        >>> config = default_stream_config()
        >>> config.max_age, config.max_bytes, config.max_msgs, config.storage.value
        (900.0, 67108864, 100000, 'file')
    """
    return js_api.StreamConfig(
        max_age=900.0,
        max_bytes=64 * 1024 * 1024,
        max_msgs=100_000,
        discard=js_api.DiscardPolicy.OLD,
        storage=js_api.StorageType.FILE,
        num_replicas=1,
    )


@dataclass(slots=True)
class NatsStats(StatsRecord):
    """Counters of one [`NatsTransport`][podshare.transport.nats.NatsTransport]
    (a frozen snapshot from ``stats()``).

    Attributes:
        connected: connected to a NATS server (``publish`` is attempted).
        subscriptions: local subscriptions open now (each is one NATS subscription).
        jetstream_subscriptions: those of them served by a JetStream consumer.
        reconnects: connections re-established after a loss since the transport opened.
        gaps_reported: times the gap listeners were told messages may have been lost.
        replays: reconnects after which JetStream replayed everything the consumers
            missed, so no gap had to be reported.
        consumers_resumed: JetStream consumers created again from their last sequence
            (after a reconnect, a missed message, a stalled consumer or a full buffer).
        messages_sent: messages published (a JetStream publish: acknowledged).
        bytes_sent: payload bytes of those messages.
        publish_errors: ``publish`` calls that raised
            [`TransportError`][podshare.exceptions.TransportError].
        messages_received: messages received from NATS.
        bytes_received: payload bytes of those messages.
        messages_dropped: messages dropped because a subscription's buffer was full.
        duplicates_dropped: JetStream messages dropped because their subscription had
            delivered that stream sequence already.
        callback_errors: ``on_connect``/``on_disconnect``/``on_error`` calls and gap
            listener calls that raised (each logged).
        callbacks_dropped: callback invocations dropped because the callbacks were too
            slow to keep up.
        auth: with ``secret=...``, the authentication counters (see
            [`AuthStats`][podshare.transport.auth.AuthStats]); ``None`` without a secret.
    """

    connected: bool = False
    subscriptions: int = 0
    jetstream_subscriptions: int = 0
    reconnects: int = 0
    gaps_reported: int = 0
    replays: int = 0
    consumers_resumed: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    publish_errors: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    messages_dropped: int = 0
    duplicates_dropped: int = 0
    callback_errors: int = 0
    callbacks_dropped: int = 0
    auth: AuthStats | None = None


@dataclass(frozen=True, slots=True)
class NatsRemote:
    """The NATS server a transport is connected to.

    Handed to ``on_connect(remote, inbound)`` and ``on_disconnect(remote, inbound)``.

    Attributes:
        address: ``"host:port"`` (``"[host]:port"`` for an IPv6 address).
        host: the host name or IP address.
        port: the TCP port.

    Example:
        >>> str(NatsRemote("10.0.0.7:4222", "10.0.0.7", 4222))
        '10.0.0.7:4222'
    """

    address: str
    host: str
    port: int

    def __str__(self) -> str:
        return self.address


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
            f"NatsTransport needs asyncio (nats-py is asyncio-only), but it runs under "
            f"{library}; run it with anyio.run(..., backend='asyncio'), or use "
            f"MemoryTransport or TcpTransport under {library}"
        )


def _cause(exc: BaseException | None) -> str:
    """What went wrong, for an error message: the OS error if there is one, else the
    exception's type and text."""
    if exc is None:
        return "the connection closed"
    seen: BaseException | None = exc
    for _ in range(8):  # short chains; never loop on a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno:
            # A failed name lookup (socket.gaierror) has a negative errno, which
            # os.strerror() only calls "Unknown error": its own text says what failed.
            text = os.strerror(seen.errno) if seen.errno > 0 else seen.strerror
            return f"{text or os.strerror(seen.errno)} (errno {seen.errno})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_address(server: str) -> str:
    """``host:port`` of a server URL (never its credentials); ValueError if it is none."""
    uri = urlsplit(server if "://" in server else f"nats://{server}")
    if uri.scheme not in ("nats", "tls", "ws", "wss") or not uri.hostname:
        raise ValueError(f"not a NATS URL: {server!r}")
    return _host_port(uri.hostname, uri.port or 4222)


def _server_list(servers: Sequence[str]) -> str:
    """The configured servers, for messages: host:port only, never credentials."""
    return ", ".join(_server_address(server) for server in servers)


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value > 0 and math.isfinite(value))
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def stream_name_for(subject: str) -> str:
    """The JetStream stream name of a store's broadcast subject: readable and unique.

    Example:
        >>> stream_name_for("podshare.ps.orders")
        'podshare_ps_orders-25650b04871a'
    """
    digest = hashlib.sha256(subject.encode()).hexdigest()[:12]
    return f"{_STREAM_NAME_OK.sub('_', subject)[:48]}-{digest}"


class _Local:
    """One local subscription: where its messages go, and its message checks.

    A JetStream subscription's messages go through ``send`` (a memory stream its
    iterator reads); a core one's iterator reads its nats-py subscription's queue
    itself (``sub``), one task hop fewer per message.
    """

    __slots__ = ("closed", "dropping", "opener", "reported_at", "send", "skip", "sub", "topic")

    def __init__(self, topic: str, opener: Opener | None, skip: tuple[int, bytes] | None) -> None:
        self.topic = topic
        self.send: MemoryObjectSendStream[bytes] | None = None
        self.sub: Subscription | None = None
        self.opener = opener  # checks each message before delivery, with secret=...
        # (offset, prefix) of the messages left out (subscribe_skipping), or None.
        self.skip = skip
        self.dropping = False
        self.reported_at = -math.inf
        self.closed = False

    def close(self) -> None:
        """End the subscription's iterator (the transport closed)."""
        self.closed = True
        if self.send is not None:
            self.send.close()
        if self.sub is not None:
            _wake(self.sub)


def _wake(sub: Subscription) -> None:
    """Wake the task reading ``sub``'s queue (if it waits on an empty one) with `_END`."""
    queue: asyncio.Queue[Any] = sub._pending_queue
    with contextlib.suppress(asyncio.QueueFull):  # a full one is read up to here
        queue.put_nowait(_END)


class _Consumer:
    """One incarnation of a JetStream subscription's consumer."""

    __slots__ = ("active", "inbox", "name", "sub")

    def __init__(self, inbox: str) -> None:
        self.inbox = inbox
        self.sub: Subscription | None = None
        self.name: str | None = None
        # Messages of an inactive incarnation are ignored: its successor replays them.
        self.active = True


class _JetSub:
    """A subscription served by JetStream: a consumer, resumed from the last sequence."""

    __slots__ = (
        "closed",
        "consumer",
        "created",
        "last",
        "last_activity",
        "late",
        "local",
        "needs_resume",
        "stream",
        "subject",
    )

    def __init__(self, local: _Local, subject: str, stream: str) -> None:
        self.local = local
        self.subject = subject
        self.stream = stream
        self.consumer: _Consumer | None = None
        self.last: int | None = None  # the stream sequence delivered last (None: none yet)
        self.created: object = None  # the stream's creation time: tells incarnations apart
        self.last_activity = time.monotonic()
        self.needs_resume = False
        # Subscribed while disconnected: what was published until its consumer exists
        # is lost to it, so making the consumer reports a gap.
        self.late = False
        self.closed = False


class NatsTransport(Service):
    """A [`Transport`][podshare.transport.base.Transport] over NATS, optionally JetStream.

    Args:
        servers: one NATS URL or a list of them (``nats://[user:password@]host:port``,
            ``tls://`` for TLS); nats-py tries them in random order and also reconnects to
            servers the cluster announces.
        name: the connection name shown in NATS monitoring; ``"podshare {node id}"`` by
            default.
        user: user name (with ``password``).
        password: password.
        token: an authentication token (instead of ``user``/``password``).
        nkeys_seed: path of an NKey seed file (needs the ``nkeys`` package:
            ``pip install nats-py[nkeys]``).
        user_credentials: path of a ``.creds`` file (JWT and NKey seed; needs ``nkeys``).
        tls: TLS settings (an ``ssl.SSLContext``) for every server.
        tls_hostname: the name to verify the servers' certificates against, when it is
            not the host of the URL.
        subject_prefix: the first token(s) of every subject (``"{prefix}.{...}"``), so
            several applications can share one NATS account; ``""`` for none.
        secret: a shared secret (``bytes`` or ``str``, at least 16 bytes; or a list, the
            first sealing and every one opening, to rotate it). Every message then carries
            a MAC under a key derived per subject, with replay protection (see
            [`podshare.transport.auth`][podshare.transport.auth]); messages that fail are
            dropped before any subscriber sees them and counted in ``stats().auth``.
        encrypt: with ``secret``, also encrypt every payload (AES-256-GCM; needs the
            ``encryption`` extra).
        max_message_size: the largest message ``publish`` accepts; larger ones raise
            [`MessageTooLarge`][podshare.exceptions.MessageTooLarge]. Once connected it is
            lowered, if need be, to what the server accepts (its ``max_payload``, 1 MiB by
            default, less the ``secret`` overhead). Stores split their batches below it.
        reconnect_time_wait: seconds between two connection attempts to the same server.
        max_reconnect_attempts: attempts per server before nats-py gives up; ``None``
            (the default) never gives up. After giving up the transport stays open but
            disconnected: ``publish`` raises ``TransportError``.
        ping_interval: seconds between PINGs to the server; ``max_outstanding_pings``
            unanswered ones mean the connection is dead and is replaced.
        max_outstanding_pings: see ``ping_interval``.
        timeout: seconds allowed for connecting (every server, all attempts), for a
            subscription to be confirmed, and for each JetStream request.
        subscription_buffer: messages buffered per subscription; when a subscriber falls
            this far behind, further messages are dropped for it (counted in
            ``stats().messages_dropped``, reported to ``on_error``) and a gap is reported,
            so its store refreshes; a JetStream subscription replays them instead.
        jetstream: ``False`` (core NATS only), ``True`` (a stream per store with
            [`default_stream_config`][podshare.transport.nats.default_stream_config]'s
            limits), or a ``nats.js.api.StreamConfig`` whose limits (``max_age``,
            ``max_bytes``, ``max_msgs``, ``storage``, ``num_replicas``, ...) every store's
            stream gets. Needs a server with JetStream enabled (``nats-server -js``).
        close_timeout: the most seconds closing may take.
        on_connect: ``on_connect(remote, inbound)`` after the connection is established
            and after each reconnection (``remote`` a
            [`NatsRemote`][podshare.transport.nats.NatsRemote], ``inbound`` always
            ``False``). Sync or async.
        on_disconnect: ``on_disconnect(remote, inbound)`` when the connection ends (lost,
            or closed by ``aclose``). Sync or async.
        on_error: ``on_error(exc)`` with a [`TransportError`][podshare.exceptions.TransportError]
            for every background failure: a lost connection, a failed reconnection
            attempt, a subscriber that fell behind, a JetStream consumer that could not
            be resumed. Sync or async.

    Raises:
        ConfigurationError: a bad option, or constructed under trio.

    Under asyncio ``async with NatsTransport(...)`` connects (raising
    [`TransportError`][podshare.exceptions.TransportError], naming the servers and the
    cause, when none can be reached within ``timeout``); leaving it closes everything.
    Subscriptions survive reconnects; while disconnected ``publish`` raises
    ``TransportError`` (nothing is buffered for later). Callbacks run one at a time on a
    task of their own, in order; one that raises is logged and counted in
    ``stats().callback_errors``.

    Example (a fragment: it needs a NATS server):

    ```python
    async with NatsTransport("nats://localhost:4222") as tr:
        async with tr.subscribe("greetings") as messages:
            await tr.publish("greetings", b"hello")
            async for message in messages:
                print(message)
                break
    ```
    """

    _service_name = "NatsTransport"

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://localhost:4222",
        *,
        name: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        nkeys_seed: str | os.PathLike[str] | None = None,
        user_credentials: str | os.PathLike[str] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        subject_prefix: str = "podshare",
        secret: Secret | Sequence[Secret] | None = None,
        encrypt: bool = False,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        reconnect_time_wait: float = 0.5,
        max_reconnect_attempts: int | None = None,
        ping_interval: float = 15.0,
        max_outstanding_pings: int = 2,
        timeout: float = 5.0,
        subscription_buffer: int = 1024,
        jetstream: bool | js_api.StreamConfig = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        on_connect: Callable[[NatsRemote, bool], object] | None = None,
        on_disconnect: Callable[[NatsRemote, bool], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        _require_asyncio(_current_async_library())
        super().__init__(close_timeout=close_timeout)
        server_list = [servers] if isinstance(servers, str) else list(servers)
        if not server_list or not all(isinstance(s, str) and s for s in server_list):
            raise ConfigurationError(
                f"servers must be a NATS URL or a non-empty list of them, not {servers!r}"
            )
        for server in server_list:
            try:
                _server_address(server)
            except ValueError as exc:
                raise ConfigurationError(f"servers: {exc}") from None
        if secret is None and encrypt:
            raise ConfigurationError("encrypt=True needs a secret")
        self._auth = Authenticator(secret, encrypt=encrypt) if secret is not None else None
        self._refusals = RefusalLog(_log)
        overhead = OVERHEAD if secret is not None else 0
        if (
            isinstance(max_message_size, bool)
            or not isinstance(max_message_size, int)
            or max_message_size < 1
        ):
            raise ConfigurationError(
                f"max_message_size must be a positive int, got {max_message_size!r}"
            )
        if (user is None) != (password is None):
            raise ConfigurationError("user and password go together: give both or neither")
        if token is not None and user is not None:
            raise ConfigurationError("give token or user/password, not both")
        if (nkeys_seed is not None or user_credentials is not None) and not _have_nkeys():
            raise ConfigurationError(
                "nkeys_seed and user_credentials need the nkeys package: "
                "pip install 'nats-py[nkeys]'"
            )
        if nkeys_seed is not None and user_credentials is not None:
            raise ConfigurationError("give nkeys_seed or user_credentials, not both")
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise ConfigurationError(f"tls must be an ssl.SSLContext, not {tls!r}")
        self._prefix = check_prefix(subject_prefix)
        if max_reconnect_attempts is not None and (
            isinstance(max_reconnect_attempts, bool)
            or not isinstance(max_reconnect_attempts, int)
            or max_reconnect_attempts < 1
        ):
            raise ConfigurationError(
                f"max_reconnect_attempts must be None or an int >= 1, "
                f"got {max_reconnect_attempts!r}"
            )
        if (
            isinstance(max_outstanding_pings, bool)
            or not isinstance(max_outstanding_pings, int)
            or max_outstanding_pings < 1
        ):
            raise ConfigurationError(
                f"max_outstanding_pings must be an int >= 1, got {max_outstanding_pings!r}"
            )
        if (
            isinstance(subscription_buffer, bool)
            or not isinstance(subscription_buffer, int)
            or subscription_buffer < 1
        ):
            raise ConfigurationError(
                f"subscription_buffer must be an int >= 1, got {subscription_buffer!r}"
            )
        for what, callback in (
            ("on_connect", on_connect),
            ("on_disconnect", on_disconnect),
            ("on_error", on_error),
        ):
            if callback is not None and not callable(callback):
                raise ConfigurationError(f"{what} must be callable, not {callback!r}")
        self._stream_template: js_api.StreamConfig | None
        if jetstream is True:
            self._stream_template = default_stream_config()
        elif jetstream is False:
            self._stream_template = None
        elif isinstance(jetstream, js_api.StreamConfig):
            if jetstream.name is not None or jetstream.subjects:
                raise ConfigurationError(
                    "jetstream=StreamConfig(...): leave name and subjects unset, the "
                    "transport sets them for each store's stream"
                )
            self._stream_template = jetstream
        else:
            raise ConfigurationError(
                f"jetstream must be True, False or a nats.js.api.StreamConfig, not {jetstream!r}"
            )

        self._servers = server_list
        self._timeout = _positive("timeout", timeout)
        self._buffer = subscription_buffer
        self._overhead = overhead
        self._requested_size = max_message_size
        self.max_message_size = max_message_size - overhead if max_message_size > overhead else 1
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        # Every option nats-py's connect() takes from us, fixed here (validated above).
        self._connect_options: dict[str, Any] = {
            "servers": server_list,
            "name": name if name is not None else f"podshare {default_node_id()}",
            "allow_reconnect": True,
            "connect_timeout": self._timeout,
            "reconnect_time_wait": _positive("reconnect_time_wait", reconnect_time_wait),
            "max_reconnect_attempts": (
                _FOREVER if max_reconnect_attempts is None else max_reconnect_attempts
            ),
            "ping_interval": _positive("ping_interval", ping_interval),
            "max_outstanding_pings": max_outstanding_pings,
            "user": user,
            "password": password,
            "token": token,
            "tls": tls,
            "tls_hostname": tls_hostname,
            "nkeys_seed": os.fspath(nkeys_seed) if nkeys_seed is not None else None,
            "user_credentials": (
                os.fspath(user_credentials) if user_credentials is not None else None
            ),
        }

        self._stats = NatsStats()
        self._gaps = GapListeners(_log)
        self._callbacks = CallbackRunner(_log, self._stats)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connected = False
        self._remote: NatsRemote | None = None
        self._last_error: BaseException | None = None
        self._closing = False
        self._gave_up = False
        self._state_changed: anyio.Event | None = None
        self._wake: anyio.Event | None = None
        self._confirming = 0  # subscriptions waiting for the server's confirmation
        # Barriers (see _server_has_it): the subject, and the waiters by token.
        # Barrier inboxes (see _server_has_it): free ones, and those waited on now.
        self._barrier_count = 0
        self._barrier_pool: list[tuple[str, Subscription]] = []
        self._barrier_busy: set[Subscription] = set()
        self._uncovered = 0  # core subscriptions whose losses JetStream cannot replay
        self._locals: set[_Local] = set()  # every open subscription
        self._core_locals: dict[Subscription, _Local] = {}  # the core ones, by nats-py's
        # topic -> (subject, stream or None): computed once per topic
        self._routes: dict[str, tuple[str, str | None]] = {}
        self._jetsubs: set[_JetSub] = set()
        self._streams: set[str] = set()  # streams known to exist
        # A reconnect round: open from a reconnect until every consumer has resumed.
        self._round = False
        self._round_lost = False
        self._unpublished = False  # a publish failed since the last gap or replay

    # -- lifecycle -----------------------------------------------------------------

    async def _open(self) -> None:
        # The constructor may have run outside any event loop; here it is reliable.
        _require_asyncio(_current_async_library())
        self._state_changed = anyio.Event()
        self._wake = anyio.Event()
        self.start_soon(self._callbacks.run, name="podshare nats callbacks")
        nc = Client()
        try:
            with anyio.fail_after(self._timeout):
                await nc.connect(
                    **self._connect_options,
                    error_cb=self._nats_error,
                    disconnected_cb=self._nats_disconnected,
                    reconnected_cb=self._nats_reconnected,
                    closed_cb=self._nats_closed,
                    discovered_server_cb=self._nats_discovered,
                    lame_duck_mode_cb=self._nats_lame_duck,
                )
        except _WIRE_ERRORS as exc:
            with anyio.CancelScope(shield=True):
                await _close_quietly(nc)
            cause = _cause(self._last_error if self._last_error is not None else exc)
            raise TransportError(
                f"cannot connect to NATS at {_server_list(self._servers)} within "
                f"{self._timeout} s: {cause}"
            ) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await _close_quietly(nc)
            raise
        self._nc = nc
        try:
            inbox = nc.new_inbox()
            self._barrier_pool.append((inbox, await nc.subscribe(inbox)))
        except _WIRE_ERRORS as exc:
            self._closing = True
            with anyio.CancelScope(shield=True):
                await _close_quietly(nc)
            raise TransportError(f"NATS at {_server_list(self._servers)}: {_cause(exc)}") from exc
        self._on_connected()
        if self._stream_template is not None:
            self._js = nc.jetstream(timeout=self._timeout)
            try:
                with anyio.fail_after(self._timeout):
                    await self._js.account_info()
            except _WIRE_ERRORS as exc:
                self._closing = True
                with anyio.CancelScope(shield=True):
                    await _close_quietly(nc)
                raise TransportError(
                    f"jetstream is enabled but NATS at {self._where()} has no JetStream for "
                    f"this account (start nats-server with -js): {_cause(exc)}"
                ) from exc
            self.start_soon(self._supervise_consumers, name="podshare nats jetstream")

    async def _close(self) -> None:
        self._closing = True
        nc = self._nc
        if nc is not None:
            # Flushes what is buffered, then closes; its disconnected callback queues
            # on_disconnect, which the callback task still delivers below.
            await _close_quietly(nc)
        await self._callbacks.drain()

    def _closed(self) -> None:
        self._closing = True
        self._set_connected(False)
        for jsub in self._jetsubs:
            jsub.closed = True
            if jsub.consumer is not None:
                jsub.consumer.active = False
        for local in self._locals:
            local.close()  # every open subscription's iterator ends
        for sub in self._barrier_busy:
            _wake(sub)  # every publish waiting for its barrier fails now
        self._changed()

    # -- the Transport protocol ------------------------------------------------------

    def subject_for(self, topic: str) -> str:
        """The NATS subject that carries ``topic``.

        Each ``/``-separated part of the topic becomes one token, as it is when it is
        plain (letters, digits, ``-`` and ``_``, starting with a letter or digit), else
        ``~`` and its UTF-8 in unpadded base64url; the part after a ``#`` (a node's
        inbox) becomes a last token starting with ``_``. The mapping is reversible
        (``subject_to_topic``), so different topics never share a subject.

        Example:
            >>> tr = NatsTransport(subject_prefix="app")
            >>> tr.subject_for("ps/config"), tr.subject_for("ps/config#pod-1")
            ('app.ps.config', 'app.ps.config._pod-1')
            >>> tr.subject_for("ps/v1.2")
            'app.ps.~djEuMg'
        """
        return topic_to_subject(self._prefix, topic)

    def stream_for(self, topic: str) -> str | None:
        """The JetStream stream that carries ``topic``, or ``None`` (core NATS).

        With ``jetstream`` enabled, a store's broadcast topic (``ps/{name}``) has a stream
        of its own; every other topic (node inboxes, liveness, callreply) is core NATS.

        Example:
            >>> tr = NatsTransport(jetstream=True)
            >>> tr.stream_for("ps/orders"), tr.stream_for("ps/orders#pod-1")
            ('podshare_ps_orders-25650b04871a', None)
        """
        return self._route(topic)[1]

    def _route(self, topic: str) -> tuple[str, str | None]:
        """``topic``'s subject and stream (``None``: core NATS), computed once."""
        route = self._routes.get(topic)
        if route is None:
            subject = topic_to_subject(self._prefix, topic)
            stream = (
                stream_name_for(subject)
                if self._stream_template is not None and _is_store_broadcast(topic)
                else None
            )
            route = (subject, stream)
            if len(self._routes) < _MAX_ROUTES:
                self._routes[topic] = route
        return route

    async def publish(self, topic: str, message: bytes) -> None:
        """Publish ``message`` on ``topic``'s subject.

        On core NATS it returns once the server has the message (a barrier message to
        this transport's own inbox came back after it; delivery to subscribers follows,
        at most once); on a JetStream stream once the stream has stored it.

        Raises:
            MessageTooLarge: ``message`` is above ``max_message_size`` (nothing is sent).
            TransportError: not connected to NATS (reconnecting), or the publish failed;
                the message names the server and the cause.
            ClosedError: the transport is closed or was never entered.
        """
        self._check_open()
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(message)} bytes exceeds max_message_size "
                f"({self.max_message_size})"
            )
        nc = self._nc
        if not self._connected or nc is None:
            self._publish_failed(topic)
            if self._gave_up:
                raise TransportError(
                    f"the NATS connection is closed: gave up reconnecting to "
                    f"{_server_list(self._servers)}"
                )
            raise TransportError(f"not connected to NATS at {self._where()} (reconnecting)")
        subject, stream = self._route(topic)
        if self._auth is not None:
            message = self._auth.seal(subject, message, now=time.time())
        try:
            if stream is None:
                await nc.publish(subject, message)
                # Waiting until the server has it makes a publish mean something (and
                # a failure known); it also paces a store's flush rounds, so concurrent
                # writes coalesce into batches instead of one message each.
                await self._server_has_it()
            else:
                await self._publish_stored(subject, stream, message)
        except _WIRE_ERRORS as exc:
            self._publish_failed(topic)
            what = "publish" if stream is None else f"JetStream publish (stream {stream})"
            raise TransportError(
                f"{what} to NATS at {self._where()} failed: {_cause(exc)}"
            ) from exc
        self._stats.messages_sent += 1
        self._stats.bytes_sent += len(message)

    async def _publish_stored(self, subject: str, stream: str, message: bytes) -> None:
        js = self._js
        assert js is not None
        if stream not in self._streams:
            await self._ensure_stream(stream, subject)
        try:
            await js.publish(subject, message, timeout=self._timeout)
        except nats.js.errors.NoStreamResponseError:
            # The stream is gone (a server that lost its storage): create it, once.
            self._streams.discard(stream)
            await self._ensure_stream(stream, subject)
            await js.publish(subject, message, timeout=self._timeout)

    def _publish_failed(self, topic: str) -> None:
        self._stats.publish_errors += 1
        if not _replay_not_needed(topic):
            # Peers cannot replay a message that never reached them: the next reconnect
            # round reports a gap, so the store's sync carries it. (What inboxes and
            # liveness carry is retried by its own protocol.)
            self._unpublished = True

    def subscribe(self, topic: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Subscribe to ``topic``: ``async with tr.subscribe(t) as messages: ...``.

        Entering waits until the server confirmed the subscription (a barrier message
        came back after it; with JetStream, the consumer created), so every message
        published afterwards is delivered. Entering while disconnected returns at once;
        the subscription is made on reconnection, which reports a gap.

        Raises:
            TransportError: the server did not confirm the subscription within
                ``timeout``, or refused it.
            ClosedError: the transport is closed or was never entered.
        """
        return self._subscription(topic, None)

    def subscribe_skipping(
        self, topic: str, *, prefix: bytes, offset: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """As [`subscribe`][podshare.transport.NatsTransport.subscribe], leaving out the
        messages whose bytes at ``offset`` start with ``prefix`` (see
        [`EchoSkipping`][podshare.transport.EchoSkipping]).

        NATS still sends this connection its own publications; they are dropped here,
        before they wake the subscriber (with ``secret=``, after the message was
        authenticated). On a JetStream stream a skipped message still counts as
        delivered: the consumer resumes after it, and it is never taken for a gap.
        """
        return self._subscription(topic, check_skip(prefix, offset))

    def add_gap_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` after each reconnect (once resubscribed) that JetStream
        could not make whole, and when a subscriber fell behind; returns a remover."""
        return self._gaps.add(listener)

    async def wait_ready(self) -> None:
        """Return once connected and every subscription entered so far is confirmed
        (with JetStream: every consumer created or resumed).

        While NATS is unreachable this waits (for the reconnection); the caller bounds
        the wait, for example with ``anyio.fail_after``.

        Raises:
            ClosedError: the transport is closed (or closes while waiting).
        """
        self._check_open()
        while not self._ready():
            assert self._state_changed is not None
            await self._state_changed.wait()
            self._check_open()

    async def remote_subscribers(self, topic: str) -> int | None:
        """Always ``None``: NATS cannot count another process's subscriptions cheaply.

        A server knows its own clients' interest, but no client API reports it per
        subject (the monitoring endpoints and the system account are for operators, and
        a cluster spreads interest over servers), so the transport cannot tell. Stores
        then rely on their hello window to decide that a cluster is empty.

        Raises:
            ClosedError: the transport is closed or was never entered.
        """
        del topic  # the answer does not depend on it
        self._check_open()
        return None

    def stats(self) -> NatsStats:
        """A frozen snapshot of the connection state and counters."""
        if self._auth is not None:
            self._stats.auth = self._auth.stats()
        return self._stats.snapshot()

    @property
    def remote(self) -> NatsRemote | None:
        """The server the transport is connected to, or ``None`` while not."""
        return self._remote if self._connected else None

    @property
    def jetstream(self) -> bool:
        """Whether store broadcast topics go through JetStream streams."""
        return self._stream_template is not None

    @property
    def client(self) -> Client:
        """The nats-py client (for NATS features podshare does not wrap).

        Raises:
            ClosedError: the transport is not open.
        """
        self._check_open()
        assert self._nc is not None
        return self._nc

    def default_persistence(self) -> NatsKVPersistence | None:
        """The persistence a store uses by default on this transport.

        With ``jetstream`` enabled: a
        [`NatsKVPersistence`][podshare.persistence.nats.NatsKVPersistence] in the
        ``podshare`` key-value bucket, on this transport's connection. Without it,
        ``None`` (core NATS keeps nothing; give a store a persistence explicitly).
        """
        if self._stream_template is None:
            return None
        from podshare.persistence.nats import NatsKVPersistence

        return NatsKVPersistence(self)

    # -- subscriptions -----------------------------------------------------------------

    @asynccontextmanager
    async def _subscription(
        self, topic: str, skip: tuple[int, bytes] | None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self._check_open()
        nc = self._nc
        assert nc is not None
        subject, stream = self._route(topic)
        opener = self._auth.opener(subject) if self._auth is not None else None
        local = _Local(topic, opener, skip)
        self._stats.subscriptions += 1
        self._locals.add(local)
        try:
            if stream is None:
                async with self._core(local, subject) as messages:
                    yield messages
            else:
                send, receive = anyio.create_memory_object_stream[bytes](self._buffer)
                local.send = send
                with send, receive:
                    async with self._jet(local, subject, stream):
                        yield _Messages(receive)
        finally:
            self._locals.discard(local)
            self._stats.subscriptions -= 1

    @asynccontextmanager
    async def _core(self, local: _Local, subject: str) -> AsyncIterator[_CoreMessages]:
        nc = self._nc
        assert nc is not None
        try:
            # No callback: the iterator reads the subscription's queue itself. nats-py
            # drops what does not fit (reported through _nats_error).
            sub = await nc.subscribe(subject, pending_msgs_limit=self._buffer)
        except _WIRE_ERRORS as exc:
            raise TransportError(
                f"NATS at {self._where()} refused SUBSCRIBE {subject!r}: {_cause(exc)}"
            ) from exc
        local.sub = sub
        self._core_locals[sub] = local
        uncovered = not _replay_not_needed(local.topic)
        self._uncovered += uncovered
        try:
            await self._confirm(subject)
            self._check_open()
            yield _CoreMessages(self, local, sub)
        finally:
            self._uncovered -= uncovered
            self._core_locals.pop(sub, None)
            with anyio.CancelScope(shield=True):
                await self._unsubscribe(sub)

    async def _confirm(self, subject: str) -> None:
        """Wait for the server to have processed our SUB (a barrier after it)."""
        nc = self._nc
        assert nc is not None
        if not self._connected:
            return  # subscribed on reconnection (nats-py replays it), a gap reported then
        self._confirming += 1
        try:
            await self._server_has_it()
        except _WIRE_ERRORS as exc:
            if self._connected:
                raise TransportError(
                    f"NATS at {self._where()} did not confirm SUBSCRIBE {subject!r} within "
                    f"{self._timeout} s: {_cause(exc)}"
                ) from exc
            # The connection went away meanwhile: nats-py subscribes again on reconnect.
        finally:
            self._confirming -= 1
            self._changed()

    async def _server_has_it(self) -> None:
        """Return once the server has processed everything this connection sent so far.

        A barrier message to an inbox of the transport's own: the server handles a
        connection's commands in order, so once the barrier comes back every earlier
        PUB was routed and every earlier SUB registered. (Not nats-py's ``flush()``: its
        PING overtakes the commands still queued, and a flush given up on leaves a
        cancelled future that the late PONG trips over, stopping the client's reader.)

        Each waiter takes an inbox of its own from a pool (subscribed once; a new one
        when all are taken) and reads that subscription's queue itself, so the
        barrier wakes it straight from nats-py's reader, with no task in between. A
        barrier that came too late for an earlier waiter is recognised by its token
        and skipped.

        Raises:
            TimeoutError: the barrier did not come back within ``timeout``.
            nats.errors.Error: the connection refused the barrier, or closed.
        """
        nc = self._nc
        assert nc is not None
        pool = self._barrier_pool
        if pool:
            inbox, sub = pool.pop()
        else:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)  # registered before the PUB that follows
        self._barrier_count += 1
        token = b"%d" % self._barrier_count
        queue: asyncio.Queue[Any] = sub._pending_queue
        self._barrier_busy.add(sub)
        try:
            await nc.publish(inbox, token)
            with anyio.fail_after(self._timeout):
                while True:
                    msg = await queue.get()
                    if msg is _END:
                        raise nats.errors.ConnectionClosedError
                    sub._pending_size -= len(msg.data)  # nats-py's count of what is queued
                    if msg.data == token:
                        return
        finally:
            self._barrier_busy.discard(sub)
            if len(pool) < _MAX_BARRIER_INBOXES and not self._closing:
                pool.append((inbox, sub))
            else:
                with anyio.CancelScope(shield=True):
                    await self._unsubscribe(sub)

    async def _unsubscribe(self, sub: Subscription) -> None:
        try:
            with anyio.move_on_after(self._timeout):
                await sub.unsubscribe()
        except _WIRE_ERRORS as exc:
            # A closed connection has no subscriptions left to remove.
            _log.debug("unsubscribing from %s failed: %r", sub.subject, exc)

    def _received(self, msg: Msg) -> None:
        self._stats.messages_received += 1
        self._stats.bytes_received += len(msg.data)

    def _deliver(self, local: _Local, data: bytes) -> int:
        """Check and hand ``data`` to one local subscription; what happened."""
        if local.opener is not None:
            try:
                data = local.opener.open(data, now=time.time())
            except MessageRefused as exc:
                self._refusals.record(exc, local.topic)
                return _REFUSED_TOO_OLD if exc.reason == Refusal.TOO_OLD else _REFUSED
        skip = local.skip
        if skip is not None and data.startswith(skip[1], skip[0]):
            return _DELIVERED  # the subscriber's own message (subscribe_skipping)
        send = local.send
        assert send is not None  # a JetStream subscription's
        try:
            send.send_nowait(data)
        except anyio.WouldBlock:
            self._stats.messages_dropped += 1
            return _OVERFLOW
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return _DELIVERED  # the subscriber left: nothing more to do
        local.dropping = False
        return _DELIVERED

    def _core_dropped(self, sub: Subscription | None) -> None:
        """nats-py dropped a message for a core subscription whose queue was full."""
        self._stats.messages_dropped += 1
        local = self._core_locals.get(sub) if sub is not None else None
        if local is None:
            _log.warning("nats-py dropped a message for a slow subscription")
            self._report_gap()
        elif not local.dropping:
            local.dropping = True  # until its iterator has caught up
            self._fell_behind(local, "its messages are dropped until it catches up")
            self._report_gap()  # its store must refresh to repair the loss

    def _fell_behind(self, local: _Local, what: str) -> None:
        now = time.monotonic()
        if now - local.reported_at < _REPORT_EVERY:
            return  # counted in stats().messages_dropped; reported once a second at most
        local.reported_at = now
        text = f"a subscription of {local.topic!r} fell {self._buffer} messages behind; {what}"
        _log.warning("%s", text)
        self._emit(self._on_error, TransportError(text))

    # -- JetStream subscriptions -----------------------------------------------------

    @asynccontextmanager
    async def _jet(self, local: _Local, subject: str, stream: str) -> AsyncIterator[None]:
        jsub = _JetSub(local, subject, stream)
        self._jetsubs.add(jsub)
        self._stats.jetstream_subscriptions += 1
        try:
            if self._connected:
                await self._first_consumer(jsub)
            else:
                jsub.needs_resume = jsub.late = True  # made on reconnection, with a gap
            self._check_open()
            yield
        finally:
            jsub.closed = True
            self._jetsubs.discard(jsub)
            self._stats.jetstream_subscriptions -= 1
            self._changed()
            with anyio.CancelScope(shield=True):
                await self._stop_consumer(jsub, delete=True)

    async def _first_consumer(self, jsub: _JetSub) -> None:
        """Create the consumer of a new subscription, retrying within ``timeout``."""
        self._confirming += 1
        try:
            with anyio.fail_after(self._timeout):
                delay = 0.05
                while True:
                    try:
                        await self._start_consumer(jsub)
                        return
                    except TransportError as exc:
                        if not self._connected:
                            jsub.needs_resume = jsub.late = True  # made on reconnection
                            return
                        _log.info("creating a JetStream consumer failed (retrying): %s", exc)
                        await anyio.sleep(delay)
                        delay = min(2 * delay, 1.0)
        except TimeoutError as exc:
            raise TransportError(
                f"NATS at {self._where()} did not create a JetStream consumer of stream "
                f"{jsub.stream} within {self._timeout} s"
            ) from exc
        finally:
            self._confirming -= 1
            self._changed()

    async def _ensure_stream(self, stream: str, subject: str) -> js_api.StreamInfo:
        """The stream's info, creating the stream (with the configured limits) if needed."""
        js = self._js
        template = self._stream_template
        assert js is not None
        assert template is not None
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            pass
        else:
            self._streams.add(stream)
            return info
        config = template.evolve(
            name=stream, subjects=[subject], description=f"podshare store topic {subject}"
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _ERR_STREAM_NAME_IN_USE:
                info = await js.stream_info(stream)  # another pod made it, its own way
            elif exc.err_code == _ERR_SUBJECTS_OVERLAP:
                raise TransportError(
                    f"subject {subject} is already captured by another JetStream stream; "
                    f"podshare needs a stream of its own per store (change subject_prefix, "
                    f"or that stream's subjects)"
                ) from exc
            else:
                raise
        self._streams.add(stream)
        _log.info("created JetStream stream %s for %s", stream, subject)
        return info

    async def _start_consumer(self, jsub: _JetSub) -> bool:
        """Create ``jsub``'s consumer, from the sequence after the last it delivered.

        Returns whether messages were lost: the stream no longer holds the next one, or
        it is a new stream, or the subscription was made while disconnected.
        """
        nc, js = self._nc, self._js
        assert nc is not None
        assert js is not None
        try:
            info = await self._ensure_stream(jsub.stream, jsub.subject)
            state = info.state
            if jsub.last is None:
                # A new subscription starts after the newest message; one made while
                # disconnected may have missed some meanwhile.
                lost = jsub.late
                start = state.last_seq + 1
            elif info.created != jsub.created or state.last_seq < jsub.last:
                lost = True  # another incarnation of the stream: its sequences are new
                start = state.last_seq + 1
            else:
                start = jsub.last + 1
                lost = state.first_seq > start  # aged out (or removed) before we got them
                start = max(start, state.first_seq)
            jsub.created = info.created
            jsub.last = start - 1
            jsub.late = False
            consumer = _Consumer(nc.new_inbox())

            async def handler(msg: Msg) -> None:
                await self._receive_jet(jsub, consumer, msg)

            consumer.sub = await nc.subscribe(consumer.inbox, cb=handler)
            jsub.consumer = consumer
            jsub.last_activity = time.monotonic()
            config = js_api.ConsumerConfig(
                description=f"podshare subscription of {jsub.subject}",
                deliver_subject=consumer.inbox,
                deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=js_api.AckPolicy.NONE,
                filter_subject=jsub.subject,
                flow_control=True,
                idle_heartbeat=_JS_HEARTBEAT,
                inactive_threshold=_JS_INACTIVE,
                mem_storage=True,
            )
            try:
                created = await js.add_consumer(jsub.stream, config)
            except BaseException:
                await self._stop_consumer(jsub, delete=False)
                raise
            consumer.name = created.name
        except _WIRE_ERRORS as exc:
            raise TransportError(
                f"JetStream consumer of stream {jsub.stream} on NATS at {self._where()}: "
                f"{_cause(exc)}"
            ) from exc
        return lost

    async def _stop_consumer(self, jsub: _JetSub, *, delete: bool) -> None:
        consumer, jsub.consumer = jsub.consumer, None
        if consumer is None:
            return
        consumer.active = False
        if consumer.sub is not None:
            await self._unsubscribe(consumer.sub)
        js = self._js
        if delete and consumer.name is not None and js is not None and self._connected:
            # The server would delete it after _JS_INACTIVE anyway; sooner is tidier.
            try:
                with anyio.move_on_after(self._timeout):
                    await js.delete_consumer(jsub.stream, consumer.name)
            except _WIRE_ERRORS as exc:
                _log.debug("deleting consumer %s failed: %r", consumer.name, exc)

    async def _receive_jet(self, jsub: _JetSub, consumer: _Consumer, msg: Msg) -> None:
        if consumer is not jsub.consumer or not consumer.active or jsub.closed:
            return  # an earlier incarnation: its successor replays what it had
        jsub.last_activity = time.monotonic()
        headers = msg.headers
        if not msg.data and headers is not None and headers.get("Status") == "100":
            await self._control(jsub, consumer, msg, headers)
            return
        self._received(msg)
        try:
            seq = _stream_sequence(msg.reply)
        except (nats.errors.Error, ValueError, IndexError):
            _log.warning("a message on %s without JetStream metadata: skipped", jsub.subject)
            return
        last = jsub.last if jsub.last is not None else seq - 1
        if seq <= last:
            self._stats.duplicates_dropped += 1
            return
        if seq > last + 1:
            # Skipped over some: a fresh consumer replays them, or finds them gone.
            self._resume_later(jsub, consumer)
            return
        outcome = self._deliver(jsub.local, msg.data)
        if outcome == _OVERFLOW:
            if not jsub.local.dropping:
                jsub.local.dropping = True
                self._fell_behind(jsub.local, "its consumer is resumed when it has room")
            self._resume_later(jsub, consumer)  # the overflowing one is replayed
            return
        jsub.last = seq
        if outcome == _REFUSED_TOO_OLD:
            # A replayed message older than the MAC's time window: lost to this
            # subscriber, so its store must sync.
            self._report_gap()

    async def _control(
        self, jsub: _JetSub, consumer: _Consumer, msg: Msg, headers: dict[str, str]
    ) -> None:
        """An idle heartbeat or a flow-control request from the consumer."""
        nc = self._nc
        assert nc is not None
        for reply in (msg.reply, headers.get("Nats-Consumer-Stalled")):
            if reply:
                try:
                    await nc.publish(reply, b"")  # flow control: we keep up, go on
                except _WIRE_ERRORS as exc:
                    _log.debug("answering flow control failed: %r", exc)
        last_stream = headers.get("Nats-Last-Stream")
        if (
            last_stream is not None
            and last_stream.isdigit()
            and jsub.last is not None
            and int(last_stream) > jsub.last
        ):
            self._resume_later(jsub, consumer)  # it sent one we never got

    def _resume_later(self, jsub: _JetSub, consumer: _Consumer) -> None:
        consumer.active = False
        jsub.needs_resume = True
        self._changed()
        if self._wake is not None:
            self._wake.set()

    async def _supervise_consumers(self) -> None:
        """Resume consumers that need it; end reconnect rounds; notice stalled ones."""
        backoff = 0.05
        while True:
            assert self._wake is not None
            with anyio.move_on_after(_JS_HEARTBEAT):
                await self._wake.wait()
            self._wake = anyio.Event()
            if not self._connected:
                continue
            now = time.monotonic()
            for jsub in list(self._jetsubs):
                consumer = jsub.consumer
                stalled = now - jsub.last_activity > _JS_MISSED_HEARTBEATS * _JS_HEARTBEAT
                if consumer is not None and consumer.active and stalled:
                    _log.info("JetStream consumer of %s went silent: resuming", jsub.subject)
                    consumer.active = False
                    jsub.needs_resume = True
            failed = False
            for jsub in list(self._jetsubs):
                if jsub.closed or not jsub.needs_resume or not self._connected:
                    continue
                try:
                    lost = await self._resume(jsub)
                except TransportError as exc:
                    _log.info("resuming a JetStream consumer failed (retrying): %s", exc)
                    self._emit(self._on_error, exc)
                    failed = True
                    break
                if lost and self._round:
                    self._round_lost = True
                elif lost:
                    self._report_gap()
            self._changed()
            if failed:
                await anyio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)
                self._wake.set()
                continue
            backoff = 0.05
            pending = any(j.needs_resume and not j.closed for j in self._jetsubs)
            if self._round and self._connected and not pending:
                self._finish_round()

    async def _resume(self, jsub: _JetSub) -> bool:
        jsub.needs_resume = False
        try:
            await self._stop_consumer(jsub, delete=True)
            lost = await self._start_consumer(jsub)
        except BaseException:
            jsub.needs_resume = True
            raise
        self._stats.consumers_resumed += 1
        return lost

    def _finish_round(self) -> None:
        """Every consumer resumed after a reconnect: report a gap unless all is replayed."""
        self._round = False
        lost = self._round_lost or self._unpublished or self._uncovered > 0
        self._round_lost = False
        if lost:
            self._report_gap()
        else:
            self._stats.replays += 1
            _log.info("reconnected: JetStream replayed what was missed, no refresh needed")

    # -- the connection ------------------------------------------------------------

    def _ready(self) -> bool:
        return (
            self._connected
            and self._confirming == 0
            and not self._round
            and not any(j.needs_resume and not j.closed for j in self._jetsubs)
        )

    def _where(self) -> str:
        """The server, for messages: the connected one, or the configured ones."""
        if self._remote is not None:
            return self._remote.address
        return _server_list(self._servers)

    def _on_connected(self) -> None:
        nc = self._nc
        assert nc is not None
        url = nc.connected_url
        if url is not None:
            host = url.hostname or "?"
            port = url.port or 4222
            self._remote = NatsRemote(_host_port(host, port), host, port)
        # The server says how large a message it takes; stores split below it.
        allowed = nc.max_payload - self._overhead
        wanted = self._requested_size - self._overhead
        if 0 < allowed < wanted and self._requested_size != DEFAULT_MAX_MESSAGE_SIZE:
            _log.warning(
                "max_message_size %d is above what NATS at %s accepts (max_payload %d): using %d",
                self._requested_size,
                self._where(),
                nc.max_payload,
                allowed,
            )
        self.max_message_size = max(1, min(wanted, allowed) if allowed > 0 else wanted)
        self._last_error = None
        self._set_connected(True)
        assert self._remote is not None
        self._emit(self._on_connect, self._remote, False)

    async def _nats_error(self, exc: Exception) -> None:
        if self.state == "opening":
            # The failure to connect is raised, naming the cause: a refused login says
            # more than the reset that often follows it, so it is kept.
            if self._last_error is None or not _is_auth_error(self._last_error):
                self._last_error = exc
            return
        self._last_error = exc
        if self._closing:
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            self._core_dropped(exc.sub)
            return
        if self._connected and isinstance(exc, nats.errors.UnexpectedEOF | OSError):
            return  # the connection is lost: the disconnected callback reports it
        where = self._where() if self._connected else _server_list(self._servers)
        text = f"NATS at {where}: {_cause(exc)}"
        _log.info("%s", text)
        self._emit(self._on_error, TransportError(text))

    async def _nats_disconnected(self) -> None:
        was = self._connected
        self._set_connected(False)
        for jsub in self._jetsubs:
            if jsub.consumer is not None:
                jsub.consumer.active = False  # resumed from its last sequence later
        if not was:
            return
        remote = self._remote
        assert remote is not None
        self._emit(self._on_disconnect, remote, False)
        if self._closing:
            return
        cause = _cause(self._last_error)
        _log.warning("lost the NATS connection to %s: %s; reconnecting", remote, cause)
        self._emit(self._on_error, TransportError(f"lost the NATS connection to {remote}: {cause}"))

    async def _nats_reconnected(self) -> None:
        if self._closing:
            return
        self._stats.reconnects += 1
        self._on_connected()
        if self._js is None:
            self._report_gap()  # nats-py subscribed everything again and flushed
            return
        # Every consumer resumes from its last sequence; the supervisor then decides
        # whether a gap must be reported after all.
        for jsub in self._jetsubs:
            jsub.needs_resume = True
        self._round = True
        self._changed()
        assert self._wake is not None
        self._wake.set()

    async def _nats_closed(self) -> None:
        if self._closing or self._nc is None:
            # _nc is None: the first connect failed, and _open raises that error itself
            # (naming the servers and the cause); there was nothing to reconnect.
            return
        self._gave_up = True
        self._set_connected(False)
        attempts = self._connect_options["max_reconnect_attempts"]
        tries = f" after {attempts} attempts per server" if attempts != _FOREVER else ""
        text = (
            f"gave up reconnecting to NATS at {_server_list(self._servers)}{tries}: "
            f"{_cause(self._last_error)}"
        )
        _log.error("%s", text)
        self._emit(self._on_error, TransportError(text))

    async def _nats_discovered(self) -> None:
        nc = self._nc
        if nc is not None:
            _log.debug("NATS servers known now: %s", [u.netloc for u in nc.discovered_servers])

    async def _nats_lame_duck(self) -> None:
        _log.info("NATS at %s is entering lame duck mode: moving to another server", self._where())

    def _report_gap(self) -> None:
        self._stats.gaps_reported += 1
        self._unpublished = False
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

    def _emit(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is not None and self.state in ("opening", "open", "closing"):
            self._callbacks.emit(callback, *args)


class _CoreMessages:
    """The async iterator a core subscription yields: it reads nats-py's queue itself.

    Each message is counted, authenticated (with ``secret=``) and checked against the
    skip prefix here, in the subscriber's task: a message the subscriber would not
    see never wakes it, and no task sits between nats-py's reader and the subscriber.
    """

    __slots__ = ("_local", "_queue", "_sub", "_transport")

    def __init__(self, transport: NatsTransport, local: _Local, sub: Subscription) -> None:
        self._transport = transport
        self._local = local
        self._sub = sub
        self._queue: asyncio.Queue[Any] = sub._pending_queue

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        local = self._local
        queue = self._queue
        stats = self._transport._stats
        opener = local.opener
        skip = local.skip
        while True:
            if local.closed:
                raise StopAsyncIteration
            if queue.empty():
                local.dropping = False  # caught up: a new drop is a new episode
                msg = await queue.get()
            else:
                # Ready at once: still let the other tasks run (as a memory stream does).
                await anyio.lowlevel.checkpoint()
                msg = queue.get_nowait()
            if msg is _END or local.closed:
                raise StopAsyncIteration
            data: bytes = msg.data
            size = len(data)
            self._sub._pending_size -= size  # nats-py's byte count of what is queued
            stats.messages_received += 1
            stats.bytes_received += size
            if opener is not None:
                try:
                    data = opener.open(data, now=time.time())
                except MessageRefused as exc:
                    self._transport._refusals.record(exc, local.topic)
                    continue
            if skip is not None and data.startswith(skip[1], skip[0]):
                continue  # the subscriber's own message (subscribe_skipping)
            return data


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


def _stream_sequence(reply: str) -> int:
    """The stream sequence a JetStream message's reply subject carries.

    Read from the subject's tokens alone (as nats-py's ``Msg.metadata`` does, without
    building the rest of the metadata, its timestamp included, for every message).

    Example:
        >>> _stream_sequence("$JS.ACK.orders.c1.1.42.7.1700000000000000000.0")
        42
        >>> _stream_sequence("$JS.ACK._.acc.orders.c1.1.42.7.1700000000000000000.0.x")
        42
    """
    tokens = reply.split(".") if reply else []
    if len(tokens) < _JS_V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream reply subject: {reply!r}")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...; the newer format puts
    # <domain>.<account hash> before <stream>.
    return int(tokens[5] if len(tokens) == _JS_V1_TOKENS else tokens[7])


def _is_store_broadcast(topic: str) -> bool:
    return topic.startswith(_STORE_FAMILY) and "#" not in topic


def _replay_not_needed(topic: str) -> bool:
    """Core topics whose lost messages their own protocol repairs (no gap needed when
    JetStream replayed everything else): node inboxes (requests are retried) and the
    liveness topic (heartbeats are periodic)."""
    return "#" in topic or topic == _LIVENESS_TOPIC


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower()


def _have_nkeys() -> bool:
    return importlib.util.find_spec("nkeys") is not None


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except _WIRE_ERRORS as exc:  # closing a dead connection may fail; moot
        _log.debug("closing the NATS connection failed: %r", exc)
