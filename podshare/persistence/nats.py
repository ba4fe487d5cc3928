"""NatsKVPersistence: stores' states in a NATS JetStream key-value bucket.

One bucket (``podshare`` by default, history 1) holds every store's records, each under
a key of its own: ``{store}.r.{key}`` for a record and ``{store}.m`` for the meta record,
where ``{store}`` and ``{key}`` are the names in unpadded base64url (KV keys allow only
``[-/_=.A-Za-z0-9]``, and a store key may be any string; the empty string is written
``=``, which base64url without padding never produces). The mapping is reversible, so
``load`` recovers every key exactly.

It is ``shared``: every pod of a fleet connected to the same NATS account sees the same
bucket, and the store lets one elected replica write it at a time. It uses the
connection of a [`NatsTransport`][podshare.transport.nats.NatsTransport]; with
``jetstream`` enabled that transport's
[`default_persistence()`][podshare.transport.nats.NatsTransport.default_persistence]
returns one.

**Atomicity.** NATS KV has no multi-key transaction, so a
[`write`][podshare.persistence.nats.NatsKVPersistence.write] is not all-or-nothing
across keys: records are written first (concurrently), the meta record last, and only
once every record is stored. A write that fails part-way leaves some records newer than
the meta record says, which is harmless: records are CRDT states that the store joins
on load, and the store writes the same changes again after a failure.

Example (a fragment: it needs a NATS server with JetStream):

```python
async with NatsTransport("nats://localhost:4222", jetstream=True) as tr:
    persistence = NatsKVPersistence(tr)
    await persistence.write("orders", {"a": record}, meta=None)
    state = await persistence.load("orders")
```
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

import anyio

try:
    import nats.errors
    import nats.js.errors
    from nats.js import api as js_api
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "podshare.persistence.nats needs nats-py: pip install 'podshare[nats]'"
    ) from exc

from podshare.exceptions import ConfigurationError, TransportError
from podshare.persistence.base import PersistedState

if TYPE_CHECKING:
    from podshare.transport.nats import NatsTransport

__all__ = ["NatsKVPersistence"]

_log = logging.getLogger("podshare.persistence.nats")

_WIRE_ERRORS: Final[tuple[type[BaseException], ...]] = (nats.errors.Error, OSError, TimeoutError)
_BUCKET: Final = re.compile(r"[A-Za-z0-9_-]+")
_EMPTY: Final = "="
# Record writes in flight at once: enough to hide round trips, few enough to be polite.
_CONCURRENCY: Final = 64


def _encode(name: str) -> str:
    if not name:
        return _EMPTY
    return base64.urlsafe_b64encode(name.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()


def _decode(token: str) -> str | None:
    if token == _EMPTY:
        return ""
    if len(token) % 4 == 1 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        return None
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(
            "utf-8", "surrogatepass"
        )
    except (binascii.Error, UnicodeDecodeError):
        return None


class NatsKVPersistence:
    """A `Persistence` (see `podshare.persistence.base`) in a NATS JetStream KV bucket.

    Args:
        transport: the [`NatsTransport`][podshare.transport.nats.NatsTransport] whose
            connection it uses (open whenever ``load`` or ``write`` is called).
        bucket: the bucket's name (letters, digits, ``-`` and ``_``); created on first use
            when missing, with history 1.
        replicas: the bucket's replicas when it is created (1, or 3 in a JetStream
            cluster so that it survives a server).
        storage: ``"file"`` or ``"memory"``, when it is created.
        max_bytes: a size limit for the bucket when it is created; ``None`` for none.
        timeout: seconds allowed for each request (and for each update while loading);
            the transport's ``timeout`` when ``None``.

    Raises:
        ConfigurationError: a bad option.

    A bucket that exists already is used as it is (its replicas, storage and limits are
    left alone).
    """

    #: Several processes share one bucket (one replica writes it at a time).
    shared: bool = True

    def __init__(
        self,
        transport: NatsTransport,
        *,
        bucket: str = "podshare",
        replicas: int = 1,
        storage: str = "file",
        max_bytes: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise ConfigurationError(
                f"bucket must be a non-empty name of letters, digits, '-' and '_', not {bucket!r}"
            )
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ConfigurationError(f"replicas must be an int in 1..5, not {replicas!r}")
        if storage not in ("file", "memory"):
            raise ConfigurationError(f"storage must be 'file' or 'memory', not {storage!r}")
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ConfigurationError(f"max_bytes must be None or a positive int, not {max_bytes!r}")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise ConfigurationError(f"timeout must be a positive number, not {timeout!r}")
        self._transport = transport
        self._bucket_name = bucket
        self._replicas = replicas
        self._storage = js_api.StorageType(storage)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._kv: KeyValue | None = None

    @property
    def bucket(self) -> str:
        """The bucket's name."""
        return self._bucket_name

    @staticmethod
    def key_for(store: str, key: str) -> str:
        """The KV key of ``store``'s record for ``key``.

        Example:
            >>> NatsKVPersistence.key_for("orders", "user:1")
            'b3JkZXJz.r.dXNlcjox'
        """
        return f"{_encode(store)}.r.{_encode(key)}"

    @staticmethod
    def meta_key_for(store: str) -> str:
        """The KV key of ``store``'s meta record.

        Example:
            >>> NatsKVPersistence.meta_key_for("orders")
            'b3JkZXJz.m'
        """
        return f"{_encode(store)}.m"

    def _request_timeout(self) -> float:
        if self._timeout is not None:
            return float(self._timeout)
        return float(getattr(self._transport, "_timeout", 5.0))

    async def _bucket(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        timeout = self._request_timeout()
        js = self._transport.client.jetstream(timeout=timeout)
        try:
            kv = await js.key_value(self._bucket_name)
        except nats.js.errors.BucketNotFoundError:
            kv = await js.create_key_value(
                js_api.KeyValueConfig(
                    bucket=self._bucket_name,
                    description="podshare stores' durable state",
                    history=1,
                    storage=self._storage,
                    replicas=self._replicas,
                    max_bytes=self._max_bytes if self._max_bytes is not None else -1,
                )
            )
            _log.info("created NATS KV bucket %s", self._bucket_name)
        self._kv = kv
        return kv

    def _failed(self, what: str, exc: BaseException) -> TransportError:
        error = TransportError(
            f"{what} in NATS KV bucket {self._bucket_name}: {type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return error

    async def load(self, store: str) -> PersistedState:
        """Everything stored for ``store``: its records and its meta record.

        Raises:
            TransportError: NATS failed or did not answer within ``timeout``.
            ClosedError: the transport is not open.
        """
        prefix = _encode(store)
        records: dict[str, bytes] = {}
        meta: bytes | None = None
        timeout = self._request_timeout()
        try:
            kv = await self._bucket()
            watcher = await kv.watch(f"{prefix}.>", ignore_deletes=True)
            try:
                while True:
                    entry = await watcher.updates(timeout=timeout)  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
                    if entry is None:
                        break  # the end of what the bucket holds now
                    parts = entry.key.split(".")
                    value = entry.value if entry.value is not None else b""
                    if parts == [prefix, "m"]:
                        meta = value
                        continue
                    key = _decode(parts[2]) if len(parts) == 3 and parts[1] == "r" else None
                    if key is None:
                        _log.warning(
                            "skipped a foreign key %r in bucket %s", entry.key, self.bucket
                        )
                        continue
                    records[key] = value
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(watcher)
        except _WIRE_ERRORS as exc:
            raise self._failed(f"loading store {store!r}", exc) from exc
        return PersistedState(records, meta)

    async def write(
        self, store: str, records: Mapping[str, bytes | None], meta: bytes | None
    ) -> None:
        """Store ``records`` (``None``: delete the key) and then, unless ``None``, ``meta``.

        Records are written concurrently; the meta record only once every one of them is
        stored (see the module docs on atomicity). Writing the same changes again is
        harmless.

        Raises:
            TransportError: a write failed (the meta record is then not written).
            ClosedError: the transport is not open.
        """
        try:
            kv = await self._bucket()
        except _WIRE_ERRORS as exc:
            raise self._failed(f"opening for store {store!r}", exc) from exc
        failures: list[BaseException] = []
        limiter = anyio.CapacityLimiter(_CONCURRENCY)

        async def one(key: str, value: bytes | None) -> None:
            async with limiter:
                try:
                    if value is None:
                        await kv.delete(key)
                    else:
                        await kv.put(key, value)
                except _WIRE_ERRORS as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for key, value in records.items():
                tg.start_soon(one, self.key_for(store, key), value)
        if failures:
            raise self._failed(
                f"writing {len(failures)} of {len(records)} records of store {store!r}",
                failures[0],
            )
        if meta is not None:
            try:
                await kv.put(self.meta_key_for(store), meta)
            except _WIRE_ERRORS as exc:
                raise self._failed(f"writing the meta record of store {store!r}", exc) from exc

    async def aclose(self) -> None:
        """Nothing to release: the connection belongs to the transport."""
        self._kv = None


async def _stop(watcher: KeyValue.KeyWatcher) -> None:
    try:
        await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    except _WIRE_ERRORS as exc:
        _log.debug("stopping a KV watcher failed: %r", exc)
