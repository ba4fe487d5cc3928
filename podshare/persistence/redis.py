"""RedisPersistence: stores' state kept in Redis, beside the channels of a RedisTransport.

The default for stores on a [`RedisTransport`][podshare.transport.RedisTransport]: the
transport's [`default_persistence()`][podshare.transport.RedisTransport.default_persistence]
(or ``RedisPersistence.for_transport(tr)``) keeps state on the same server, through the
same client, so with the same TLS settings, ACL user, database and Sentinel failover.
Several pods share it (``shared`` is ``True``).

**Layout.** Under the store's channel prefix (the transport's ``channel_for``):
``{prefix}:ps/{name}:state``, a hash (field: the key, value: its record), and
``{prefix}:ps/{name}:meta``, a string (the meta record). With ``channel_prefix="app"``
and a store ``"config"`` that is ``app:ps/config:state`` and ``app:ps/config:meta``
(``app:3:ps/config:...`` in database 3, as the transport folds a nonzero database into
its prefix).

**Writes** are one ``MULTI``/``EXEC`` transaction, pipelined in one round trip
(``HSET``, ``HDEL``, ``SET``), so a write is applied whole or not at all, and writing
the same changes again is harmless. (Redis does not roll back a transaction whose
command fails while it runs; the only such failure here is a key of another type, so
before its first write of each store an instance checks that both keys are podshare's
or absent, and refuses, touching nothing, when they are not.)

**Loads** read the meta record, then the hash with ``HSCAN`` in pages of ``page_size``
fields, so a large store never blocks Redis for long (a 100k-key store loads in well
under a second: ``benchmarks/bench_persistence.py``).

redis-py is asyncio-only, so this backend needs asyncio (under trio it raises
[`ConfigurationError`][podshare.exceptions.ConfigurationError]); install it with the
``redis`` extra (``pip install 'podshare[redis]'``).

Example (a fragment: it needs a Redis server):

```python
from podshare.persistence import RedisPersistence

async with RedisPersistence("redis://localhost:6379/0", channel_prefix="app") as place:
    await place.write("config", {"flag": record_bytes}, None)
    state = await place.load("config")
```
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import anyio
import anyio.lowlevel

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import ConnectionPool, SSLConnection, parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.persistence.redis needs redis-py: pip install 'podshare[redis]'"
    ) from exc

from podshare.exceptions import ConfigurationError, PersistenceError
from podshare.persistence._checks import Changes, check_store, check_write
from podshare.persistence.base import PersistedState
from podshare.persistence.stats import PersistenceStats
from podshare.transport.redis import (
    _WIRE_ERRORS,
    _address,
    _cause,
    _ContextSSLConnection,
    _current_async_library,
    _prefix,
)

if TYPE_CHECKING:
    from podshare.transport.redis import RedisTransport

__all__ = ["RedisPersistence"]

_log = logging.getLogger("podshare.persistence.redis")

#: Fields per HSET / HDEL command inside a write's transaction: big writes stay a
#: sequence of moderate commands (one transaction still), never one giant one.
_CHUNK: Final = 1000

_T = TypeVar("_T")


def _require_asyncio() -> None:
    library = _current_async_library()
    if library is not None and library != "asyncio":
        raise ConfigurationError(
            f"RedisPersistence needs asyncio (redis-py is asyncio-only), but it runs under "
            f"{library}; use SQLitePersistence or MemoryPersistence under {library}"
        )


class RedisPersistence:
    """Stores' states in Redis (see the module docs for the layout).

    Args:
        url: where Redis is (``redis://[user:password@]host:port/db``, ``rediss://`` for
            TLS, ``unix:///path``); ``redis://localhost:6379/0`` when ``client`` is not
            given.
        client: an existing ``redis.asyncio.Redis`` (not with ``decode_responses``) to
            use instead; its database is read from its settings. It is not closed here.
        db: the database number; overrides the URL's.
        channel_prefix: the prefix of the stores' channels (a
            [`RedisTransport`][podshare.transport.RedisTransport]'s ``channel_prefix``):
            keys are ``{channel_prefix}:ps/{name}:state`` and ``...:meta``.
        ssl_context: TLS settings used verbatim; needs a ``rediss://`` URL.
        username: ACL user name; overrides the one in the URL.
        password: password; overrides the one in the URL.
        timeout: seconds allowed for connecting and for each round trip (a write's
            transaction, one page of a load).
        page_size: fields asked for per ``HSCAN`` call while loading.

    ``async with`` (or ``aclose()``) closes the client it made; one given as ``client``
    (or the transport's, with ``for_transport``) is left open. Every failure of Redis or
    of the connection raises [`PersistenceError`][podshare.exceptions.PersistenceError]
    naming the server and the cause.

    Raises:
        ConfigurationError: a bad option, or constructed under trio.
    """

    shared: bool = True

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        db: int | None = None,
        channel_prefix: str = "podshare",
        ssl_context: ssl.SSLContext | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        page_size: int = 10_000,
    ) -> None:
        _require_asyncio()
        if not isinstance(channel_prefix, str):
            raise ConfigurationError("channel_prefix must be a str")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigurationError(f"timeout must be a positive number, got {timeout!r}")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigurationError(f"page_size must be an int >= 1, got {page_size!r}")
        if db is not None and (isinstance(db, bool) or not isinstance(db, int) or db < 0):
            raise ConfigurationError(f"db must be an int >= 0, got {db!r}")
        self._timeout = float(timeout)
        self._page_size = page_size
        self._stats = PersistenceStats()
        if client is not None:
            if url is not None:
                raise ConfigurationError("give url or client, not both")
            if any(v is not None for v in (db, ssl_context, username, password)):
                raise ConfigurationError(
                    "db, ssl_context, username and password configure RedisPersistence's "
                    "own client; with client=..., configure that client instead"
                )
            kwargs = client.connection_pool.connection_kwargs
            if kwargs.get("decode_responses"):
                raise ConfigurationError(
                    "RedisPersistence needs a client without decode_responses=True "
                    "(records are bytes)"
                )
            self._client = client
            self._owns_client = False
            db = int(kwargs.get("db") or 0)
        else:
            self._client = self._make_client(url, db, ssl_context, username, password)
            self._owns_client = True
            db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        self._prefix = _prefix(channel_prefix, db)
        self._checked: set[str] = set()  # stores whose keys were found to be ours

    def _make_client(
        self,
        url: str | None,
        db: int | None,
        ssl_context: ssl.SSLContext | None,
        username: str | None,
        password: str | None,
    ) -> aioredis.Redis:
        try:
            options: dict[str, Any] = dict(parse_url(url or "redis://localhost:6379/0"))
        except ValueError as exc:
            raise ConfigurationError(f"url: {exc}") from exc
        for name, value in (("username", username), ("password", password), ("db", db)):
            if value is not None:
                options[name] = value
        if ssl_context is not None:
            if options.get("connection_class") is not SSLConnection:
                raise ConfigurationError("ssl_context needs a rediss:// url")
            options["connection_class"] = _ContextSSLConnection
            options["podshare_ssl_context"] = ssl_context
        options.setdefault("socket_connect_timeout", self._timeout)
        options.setdefault("socket_timeout", self._timeout)
        # One quick retry covers a pooled connection left stale by a server restart;
        # a write is idempotent, so sending it again is harmless.
        options["retry"] = Retry(NoBackoff(), 1)
        options["decode_responses"] = False
        return aioredis.Redis.from_pool(ConnectionPool(**options))

    @classmethod
    def for_transport(cls, transport: RedisTransport) -> RedisPersistence:
        """A RedisPersistence on ``transport``'s connection settings and prefix.

        The same as ``transport.default_persistence()``: it uses the transport's client
        (so its server, TLS, ACL user, database and Sentinel failover), keeps keys under
        its channel prefix, and works while the transport is open.
        """
        return transport.default_persistence()

    # -- naming ------------------------------------------------------------------------

    def state_key(self, store: str) -> str:
        """The Redis hash that holds ``store``'s records.

        Example:
            >>> RedisPersistence(channel_prefix="app", db=3).state_key("config")
            'app:3:ps/config:state'
        """
        return f"{self._prefix}ps/{check_store(store)}:state"

    def meta_key(self, store: str) -> str:
        """The Redis string that holds ``store``'s meta record.

        Example:
            >>> RedisPersistence().meta_key("config")
            'podshare:ps/config:meta'
        """
        return f"{self._prefix}ps/{check_store(store)}:meta"

    def __repr__(self) -> str:
        return f"RedisPersistence({self._where()}, prefix={self._prefix!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        _require_asyncio()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client this instance made (idempotent); a given one stays open."""
        if not self._owns_client:
            return
        try:
            await self._client.aclose()
        except _WIRE_ERRORS as exc:  # closing a dead connection may fail; moot
            _log.debug("closing the Redis client failed: %r", exc)

    # -- the Persistence protocol ----------------------------------------------------

    async def load(self, store: str) -> PersistedState:
        """Every record and the meta record of ``store``.

        The meta record is read first, then the records page by page: a write applied
        meanwhile (by another pod) may show for some keys and not others, each key whole,
        which the store's CRDT join absorbs.

        Raises:
            PersistenceError: Redis is unreachable, timed out or refused.
            InvalidValue: ``store`` is not a valid store name.
            ConfigurationError: not running under asyncio.
        """
        _require_asyncio()
        state_key, meta_key = self.state_key(store), self.meta_key(store)
        try:
            meta = await self._round_trip(self._client.get(meta_key))
            records: dict[str, bytes] = {}
            skipped = 0
            cursor = 0
            while True:
                cursor, page = await self._round_trip(
                    self._client.hscan(state_key, cursor, count=self._page_size)
                )
                for field, record in page.items():
                    try:
                        records[field.decode()] = record
                    except UnicodeDecodeError:
                        skipped += 1
                if cursor == 0:
                    break
        except _WIRE_ERRORS as exc:
            self._stats.load_errors += 1
            raise self._error(f"loading {store!r}", exc) from exc
        if skipped:
            self._stats.decode_errors += skipped
            _log.warning(
                "%s: skipped %d fields of %s whose names are not UTF-8", self, skipped, state_key
            )
        self._stats.loads += 1
        self._stats.records_loaded += len(records)
        self._stats.bytes_loaded += sum(len(k.encode()) + len(v) for k, v in records.items())
        self._stats.bytes_loaded += len(meta) if meta is not None else 0
        return PersistedState(records, meta)

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        """Apply ``records`` (``None`` deletes) and ``meta`` in one MULTI/EXEC.

        Raises:
            PersistenceError: Redis is unreachable, timed out or refused (out of memory,
                an ACL, a key of another type); nothing was changed, unless the
                connection was lost after Redis received ``EXEC`` (then it may have
                been applied whole: writing it again is harmless).
            InvalidValue: a bad store name, key or record (nothing changed).
            ConfigurationError: not running under asyncio.
        """
        _require_asyncio()
        changes = check_write(store, records, meta)
        if changes.empty:
            await anyio.lowlevel.checkpoint()
            return
        state_key, meta_key = self.state_key(store), self.meta_key(store)
        try:
            if store not in self._checked:
                await self._check_types(state_key, meta_key)
                self._checked.add(store)
            await self._transaction(state_key, meta_key, changes)
        except PersistenceError:
            self._stats.write_errors += 1
            raise
        except _WIRE_ERRORS as exc:
            self._stats.write_errors += 1
            raise self._error(f"writing {store!r}", exc) from exc
        changes.count(self._stats)

    def stats(self) -> PersistenceStats:
        """A frozen snapshot of this instance's counters."""
        return self._stats.snapshot()

    # -- internals ---------------------------------------------------------------------

    async def _check_types(self, state_key: str, meta_key: str) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.type(state_key)
            pipe.type(meta_key)
            state_type, meta_type = await self._round_trip(pipe.execute())
        for key, found, ours in ((state_key, state_type, "hash"), (meta_key, meta_type, "string")):
            kind = found.decode(errors="replace") if isinstance(found, bytes) else str(found)
            if kind not in (ours, "none"):
                raise PersistenceError(
                    f"Redis at {self._where()}: {key} holds a {kind}, not podshare's "
                    f"{ours}; it is left untouched (another application uses this "
                    f"prefix? give the transport its own channel_prefix)"
                )

    async def _transaction(self, state_key: str, meta_key: str, changes: Changes) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for chunk in _chunks(changes.upserts):
                pipe.hset(state_key, mapping=dict(chunk))
            for keys in _chunks(changes.deletes):
                pipe.hdel(state_key, *keys)
            if changes.meta is not None:
                pipe.set(meta_key, changes.meta)
            await self._round_trip(pipe.execute())

    async def _round_trip(self, call: Any) -> Any:
        with anyio.fail_after(self._timeout):
            return await call

    def _where(self) -> str:
        pool = self._client.connection_pool
        service = getattr(pool, "service_name", None)
        if service is not None:
            return f"the master of {service!r}"
        return _address(pool.connection_kwargs)

    def _error(self, what: str, exc: BaseException) -> PersistenceError:
        cause = _cause(exc, self._timeout)
        _log.info("Redis at %s: %s failed: %s", self._where(), what, cause)
        return PersistenceError(f"Redis at {self._where()}: {what} failed: {cause}")


def _chunks(items: Sequence[_T]) -> list[Sequence[_T]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
