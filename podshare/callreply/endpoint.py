"""Endpoint: call whichever pod owns a target; the target never moves, only a route does.

A websocket connection (say) lives on one pod. That pod registers the connection's
target with [`Endpoint.register()`][podshare.callreply.Endpoint.register]; the route
``target -> node`` is written to a replicated route table (a podshare store of *ephemeral* entries,
removed everywhere when the owner goes down). Any pod then calls
[`Endpoint.call()`][podshare.callreply.Endpoint.call]: the route is looked up locally, a small
envelope goes to the owner's inbox topic ``cr/{namespace}#{node}``, the owner runs the handler and
publishes the reply to the caller's inbox.

Delivery is **at most once**: a request or reply lost on the wire is never re-sent, so a
call that raises [`CallTimeout`][podshare.CallTimeout] or
[`OwnerUnavailable`][podshare.OwnerUnavailable] may or may not have run its handler.
Retry with an idempotency key that the handler remembers:

```python
# caller: one key per logical operation, the same for every attempt
key = uuid.uuid4().hex.encode()
for attempt in range(3):
    try:
        return await ep.call("user:42", "push", key + b":" + body)
    except (CallTimeout, OwnerUnavailable, EndpointBusy):
        await anyio.sleep(0.1 * 2**attempt)

# owner: answer a repeated key from memory instead of acting twice
done: dict[bytes, bytes] = {}              # bound it (an LRU) in real code

async def push(payload: bytes) -> bytes:
    key, _, body = payload.partition(b":")
    if key not in done:
        await websocket.send_bytes(body)
        done[key] = b"sent"
    return done[key]
```

**Deadlines travel with the call.** The caller's budget is the nearer of its timeout
(``timeout=``, else ``call_timeout``) and the deadline of the code around the call
(``anyio.fail_after``, ``move_on_after``, a cancel scope with a deadline); the owner runs
the handler with that budget and cancels it when the budget is spent, since nobody waits
for its reply any more.

**Cancellation travels too.** A caller that gives up (cancelled, or its own timeout
passed) sends the owner a cancel envelope naming the call id and its own node id; the
owner cancels that handler and frees its concurrency slot at once. Only a cancel whose
call id *and* sender match a running call has any effect. A reply that crosses the
cancel on the wire is dropped by the caller and counted (``stats().replies_late``).

Errors a call raises, all [`CallError`][podshare.CallError]:

- [`NoRoute`][podshare.NoRoute]: no owner is known for the target, or the
  recorded owner no longer has it (nothing ran in either case).
- [`OwnerUnavailable`][podshare.OwnerUnavailable]: the owner is known but down — at call
  time, or it went down (missed heartbeats for ``down_after``, or closed) while the call
  waited. This fails fast: in about ``down_after``, not ``call_timeout``.
- [`CallTimeout`][podshare.CallTimeout] (also ``TimeoutError``): no reply in time.
- [`RemoteError`][podshare.RemoteError]: the remote handler raised; carries the
  exception's type name and message. An unknown method on a registered target is a
  ``RemoteError`` whose ``type_name`` is ``"LookupError"`` (the handler never ran).
- [`EndpointBusy`][podshare.EndpointBusy]: the owner already runs ``max_concurrency``
  handlers; the handler did not run.

A self-call (the target is owned by this node) runs the handler in the caller's task,
with no serialisation, and raises the handler's own exception unchanged.

Errors nobody's call receives go to ``on_error`` (see [`Endpoint`][podshare.callreply.Endpoint]).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import secrets
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc

from podshare._counters import StatsRecord
from podshare._identity import reserve
from podshare._limits import (
    MAX_NAMESPACE_LENGTH,
    MAX_NODE_ID_LENGTH,
    check_key,
    check_name,
    is_panic,
    type_name,
)
from podshare._service import DEFAULT_CLOSE_TIMEOUT, Service
from podshare.callreply._envelope import (
    MAX_NAME,
    Cancel,
    Reply,
    Request,
    Status,
    decode,
    encode_cancel,
    encode_reply,
    encode_request,
)
from podshare.callreply._routes import RouteTable
from podshare.exceptions import (
    CallTimeout,
    ClosedError,
    ConfigurationError,
    EndpointBusy,
    InvalidValue,
    MessageTooLarge,
    NoRoute,
    OwnerUnavailable,
    PodshareError,
    ProtocolError,
    RemoteError,
    TransportError,
)
from podshare.transport.base import Transport, max_message_size

__all__ = ["Endpoint", "EndpointStats", "ErrorHandler", "Handler"]

#: An async handler: receives the call's payload, returns the reply's payload.
Handler = Callable[[bytes], Awaitable[bytes]]
#: Receives each background error of an endpoint; may be sync or async.
ErrorHandler = Callable[[Exception], object]

# How long a closing endpoint spends telling callers their handler was cancelled.
_CLOSING_REPLY_GRACE: Final = 0.5
# How long a caller that gave up spends telling the owner (shielded from its own
# cancellation, so it must stay short).
_CANCEL_GRACE: Final = 0.5
# The envelope caps a budget at a day; a longer timeout is sent as a day.
_MAX_BUDGET_MS: Final = 86_400_000
_UNKNOWN_METHOD_TYPE: Final = "LookupError"

# Set in the tasks an endpoint runs (inbox workers, handlers): which endpoint they serve.
_serving_endpoint: ContextVar[Endpoint | None] = ContextVar("_serving_endpoint", default=None)


@dataclass(slots=True)
class EndpointStats(StatsRecord):
    """One endpoint's counters; [`Endpoint.stats()`][podshare.callreply.Endpoint.stats] returns a
    frozen snapshot.

    Counters only grow, except the gauges ``calls_pending`` and ``handlers_active``.
    """

    calls_remote: int = 0
    """Calls sent to another node."""
    calls_local: int = 0
    """Self-calls run in process."""
    calls_failed: int = 0
    """Calls (remote or local) that raised."""
    requests_received: int = 0
    """Requests that reached this node's inbox."""
    requests_busy: int = 0
    """Requests refused because ``max_concurrency`` handlers were already running."""
    requests_unroutable: int = 0
    """Requests for a target or method this node does not have."""
    requests_duplicate: int = 0
    """Requests delivered again while their first copy still ran; dropped (at most once)."""
    handler_errors: int = 0
    """Handlers (remote or local) that raised."""
    replies_late: int = 0
    """Replies that arrived after their caller gave up (timed out, cancelled); dropped."""
    replies_failed: int = 0
    """Replies this node could not publish (reported to ``on_error``)."""
    decode_errors: int = 0
    """Inbox messages that were not valid envelopes; dropped (reported to ``on_error``)."""
    cancels_sent: int = 0
    """Cancel envelopes sent to an owner because a caller here gave up."""
    cancels_failed: int = 0
    """Cancel envelopes that could not be sent (reported to ``on_error``)."""
    cancels_applied: int = 0
    """Cancel envelopes that cancelled a running handler here."""
    cancels_unmatched: int = 0
    """Cancel envelopes naming no running call of their sender (late, or forged); ignored."""
    calls_abandoned: int = 0
    """Handlers here stopped because their caller gave up (a cancel, or its budget ran
    out); no reply is sent for them."""
    reclaims_failed: int = 0
    """Route re-claims (after another node's delete erased a route) that failed
    (reported to ``on_error``)."""
    calls_pending: int = 0
    """Remote calls waiting for a reply now."""
    handlers_active: int = 0
    """Handlers holding a concurrency slot now (remote and local)."""


class _Pending:
    """One remote call waiting for its reply (or for its owner to be declared down)."""

    __slots__ = ("done", "error", "owner", "reply")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.done = anyio.Event()
        self.reply: Reply | None = None
        self.error: PodshareError | None = None


class _Running:
    """One handler running for a remote caller: its scope and its concurrency slot."""

    __slots__ = ("abandoned", "holds_slot", "scope")

    def __init__(self, deadline: float) -> None:
        self.scope = anyio.CancelScope(deadline=deadline)
        self.abandoned = False  # the caller's cancel arrived
        self.holds_slot = True


def _inbox_topic(namespace: str, node_id: str) -> str:
    return f"cr/{namespace}#{node_id}"


def _check_call_names(target: object, method: object) -> None:
    # A target is a key of the route store; a method is a name the code chooses.
    check_key(target)
    check_name(method, "method", MAX_NAME)


class Endpoint(Service):
    """Register handlers for targets this pod owns, and call targets wherever they live.

    Args:
        transport: the transport every pod of the fleet shares.
        node_id: this pod's id (unique in the fleet; no ``#``). Default: the process's id
            (``PODSHARE_NODE_ID``, else host name and pid), as for stores.
        namespace: endpoints only see routes and calls of their own namespace.
        call_timeout: default seconds a [`call()`][podshare.callreply.Endpoint.call] waits for its
            reply.
        max_concurrency: handlers this endpoint runs at once; beyond it callers get
            [`EndpointBusy`][podshare.EndpointBusy] at once.
        heartbeat_interval: seconds between liveness heartbeats of the route table
            (the store's default when omitted).
        down_after: seconds without a heartbeat after which a node counts as down, its
            routes vanish and calls waiting on it fail with
            [`OwnerUnavailable`][podshare.OwnerUnavailable] (the store's default when omitted).
        route_options: further keyword options for the route table's
            [`Store`][podshare.Store] (``hydrate_timeout``, ``anti_entropy_interval``...).
        on_error: called with each error that no call receives: an undecodable inbox
            message ([`ProtocolError`][podshare.ProtocolError]), a reply or cancel that
            could not be published and a route re-claim that failed (the transport's
            [`PodshareError`][podshare.PodshareError]), and an exception a handler
            raised after its caller had left (the handler's own exception). Sync or
            async; one that raises is logged and the endpoint carries on. Without it,
            these are logged (decode errors at DEBUG, since peers control their rate;
            the others at WARNING); with it, at DEBUG.
        logger: where unexpected conditions are logged (default
            ``logging.getLogger("podshare.callreply")``).
        close_timeout: the most seconds closing may take (cancelling handlers, telling
            their callers, leaving the route table); a nearer deadline of the code that
            closes wins.

    The endpoint is an async context manager; it owns the inbox loop, the membership
    watch and every running handler, so nothing outlives it. Delivery is at most once
    (see the module documentation for the idempotency-key retry pattern).

    Example:

    ```python
    async def push(payload: bytes) -> bytes:
        await websocket.send_bytes(payload)
        return b"ok"

    async with Endpoint(transport, node_id="pod-1", on_error=print) as ep:
        await ep.register("user:42", "push", push)
        ...
        reply = await ep.call("user:42", "push", b"hello")  # from any pod
    ```
    """

    def __init__(
        self,
        transport: Transport,
        node_id: str | None = None,
        *,
        namespace: str = "default",
        call_timeout: float = 5.0,
        max_concurrency: int = 64,
        heartbeat_interval: float | None = None,
        down_after: float | None = None,
        route_options: Mapping[str, Any] | None = None,
        on_error: ErrorHandler | None = None,
        logger: logging.Logger | None = None,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        super().__init__(close_timeout=close_timeout)
        if not isinstance(transport, Transport):
            raise ConfigurationError(
                f"transport must implement publish(), subscribe() and aclose(), not {transport!r}"
            )
        if node_id is not None:
            check_name(node_id, "node_id", MAX_NODE_ID_LENGTH)
        self._namespace = check_name(namespace, "namespace", MAX_NAMESPACE_LENGTH)
        # One identity per process: the process's node id (a derived one for a second
        # endpoint of the same namespace in this process), shared with the route store.
        from podshare.callreply._store_routes import route_store_name

        self._reservation = reserve(route_store_name(self._namespace), node_id)
        weakref.finalize(self, self._reservation.release)
        self._node_id = self._reservation.node_id
        if (
            isinstance(call_timeout, bool)
            or not isinstance(call_timeout, int | float)
            or not 0 < call_timeout < math.inf
        ):
            raise ConfigurationError("call_timeout must be a positive finite number of seconds")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ConfigurationError("max_concurrency must be a positive integer")
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be a positive integer")
        if on_error is not None and not callable(on_error):
            raise ConfigurationError(f"on_error must be callable, not {on_error!r}")
        self._transport = transport
        self._call_timeout = float(call_timeout)
        self._max_concurrency = max_concurrency
        self._heartbeat_interval = heartbeat_interval
        self._down_after = down_after
        self._route_options = dict(route_options or {})
        self._on_error = on_error
        self._logger = logger or logging.getLogger("podshare.callreply")
        self._max_size = max_message_size(transport)
        self._inbox = _inbox_topic(self._namespace, self._node_id)
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._pending: dict[int, _Pending] = {}
        # Handlers running for remote callers, by (call id, caller): what a cancel names.
        self._running: dict[tuple[int, str], _Running] = {}
        # A random start makes a restarted node with the same id ignore replies meant
        # for its previous life instead of mistaking them for its own.
        self._call_ids = itertools.count(secrets.randbits(62))
        self._active = 0
        self._reader_lock = anyio.Lock()
        self._inbox_ended = False
        self._stats = EndpointStats()
        self._routes: RouteTable | None = None
        self._serving: anyio.abc.TaskGroup | None = None
        # Made on opening: events need a running event loop.
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    # -- lifecycle (podshare._service.Service) -----------------------------------------

    def _describe(self) -> str:
        return f"Endpoint {self._node_id!r}"

    async def _open(self) -> None:
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        await self.start(self._run, self._stop, self._stopped)

    async def _run(
        self,
        stop: anyio.Event,
        stopped: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        """Own the route table, the inbox and the serving tasks, from open to close.

        One task holds them all, so closing works from any task, a handler included.
        Once told to stop, it cancels the handlers (they tell their callers),
        unsubscribes the inbox, then closes the route table, which announces this
        node's departure: shielded, within ``close_timeout``.
        """
        _serving_endpoint.set(self)  # inherited by every serving task
        try:
            with anyio.CancelScope() as cleanup:
                async with (
                    self._open_routes() as routes,
                    self._transport.subscribe(self._inbox) as inbox,
                    anyio.create_task_group() as serving,
                ):
                    self._routes = routes
                    self._serving = serving
                    await serving.start(routes.run, self._on_node_down, self._on_reclaim_failed)
                    serving.start_soon(self._inbox_worker, inbox)
                    task_status.started()
                    await stop.wait()
                    # From here on the exit must finish even if the service's tasks are
                    # cancelled (a close from inside a handler does not wait for it).
                    cleanup.shield = True
                    cleanup.deadline = anyio.current_time() + self._close_timeout
                    serving.cancel_scope.cancel()
        finally:
            self._serving = None
            stopped.set()

    def _closed(self) -> None:
        self._reservation.release()

    async def _close(self) -> None:
        for pending in self._pending.values():
            self._fail(pending, ClosedError("the endpoint closed while the call waited"))
        if self._stop is None or self._stopped is None:
            return
        self._stop.set()
        if _serving_endpoint.get() is not self:
            # Wait for the handlers to stop and the route table to close. A handler (or
            # any task of this endpoint) closing it cannot wait for itself: the cleanup
            # runs shielded in _run and the service waits for it on exit.
            await self._stopped.wait()

    async def aclose(self) -> None:
        """Close: cancel running handlers, fail waiting calls, leave the route table.

        Leaving ``async with`` does this; it may also be called from any task, a
        handler included. Callers waiting on this endpoint get
        [`ClosedError`][podshare.ClosedError]; remote callers whose handler was
        cancelled get [`OwnerUnavailable`][podshare.OwnerUnavailable]. Idempotent.
        """
        await super().aclose()

    def _open_routes(self) -> AbstractAsyncContextManager[RouteTable]:
        """Open the route table; tests override this to use a fake one."""
        # Imported here so that importing callreply never drags the store in first (and
        # never forms an import cycle with podshare/__init__.py).
        from podshare.callreply._store_routes import open_store_routes

        return open_store_routes(
            self._transport,
            self._node_id,
            self._namespace,
            heartbeat_interval=self._heartbeat_interval,
            down_after=self._down_after,
            **self._route_options,
        )

    # -- public API ------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This pod's node id."""
        return self._node_id

    @property
    def namespace(self) -> str:
        """The namespace whose routes and calls this endpoint sees."""
        return self._namespace

    def owner(self, target: str) -> str | None:
        """The node id that owns ``target``, from the local replica (sync, no I/O).

        Example:

        ```python
        if ep.owner("user:42") is None:
            ...  # the user is not connected anywhere
        ```
        """
        return self._require_routes().owner(target)

    def members(self) -> frozenset[str]:
        """The live nodes of this namespace (this one included), as this pod sees them."""
        return self._require_routes().members()

    def routes(self) -> dict[str, str]:
        """A copy of the whole route table, ``{target: owner node}``, from the local
        replica. With targets such as ``"user:42"`` this is a presence list.
        """
        return self._require_routes().snapshot()

    def targets(self) -> frozenset[str]:
        """The targets registered on this endpoint (whether or not it still owns them)."""
        return frozenset(self._handlers)

    async def register(self, target: str, method: str, handler: Handler) -> None:
        """Serve ``method`` of ``target`` on this node and route the target here.

        Several methods may be registered for one target (one call each); registering a
        method again replaces its handler. Every call claims the route in the replicated
        route table and the newest claim wins, so when a connection moves to another pod
        the target simply registers there.

        Args:
            target: what callers address (``"user:42"``, a connection id...): a key of
                the route table, 1 to 1024 characters.
            method: the operation's name on that target (1 to 1024 characters, no
                ``#``).
            handler: ``async def handler(payload: bytes) -> bytes``.

        Raises:
            InvalidValue: ``target`` is not a valid key.
            ConfigurationError: ``method`` is not a valid name, or ``handler`` is not
                callable.
        """
        routes = self._require_routes()
        _check_call_names(target, method)
        if not callable(handler):
            raise ConfigurationError("handler must be an async callable (payload) -> bytes")
        methods = self._handlers.setdefault(target, {})
        replaced = methods.get(method)
        methods[method] = handler
        try:
            # Always claim, even when this replica already shows the route here: another
            # pod's newer claim may be in flight, and after `register` this node must be
            # the newest claimer.
            await routes.claim(target)
        except BaseException:
            # Undo only what this call added, so a failed register leaves no half state.
            if replaced is None:
                methods.pop(method, None)
                if not methods:
                    self._handlers.pop(target, None)
            else:
                methods[method] = replaced
            raise

    async def unregister(self, target: str) -> None:
        """Stop serving ``target`` here and drop its route if this node still owns it.

        A newer claim by another pod (the connection moved) is never erased: the route is
        removed only while it still points at this node. Unknown targets are ignored.
        """
        routes = self._require_routes()
        self._handlers.pop(target, None)
        await routes.release(target)

    async def call(
        self,
        target: str,
        method: str,
        payload: bytes,
        # The issue fixes this signature; a per-call timeout is what callers expect here.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        """Call ``method`` on ``target``'s owner and return the handler's reply.

        At most once: see the module documentation for what each error means and for a
        retry pattern with idempotency keys.

        The handler's budget is the nearer of ``timeout`` and the deadline of the code
        around the call: inside ``with anyio.fail_after(0.3)`` the remote handler gets
        about 0.3 s, whatever ``call_timeout`` says. When that enclosing deadline comes
        first, the enclosing scope's own cancellation ends the call (``fail_after``
        raises its ``TimeoutError``); when ``timeout`` comes first, the call raises
        [`CallTimeout`][podshare.CallTimeout]. Either way, or when the caller is
        cancelled, the owner is told and cancels the handler.

        Args:
            target: the target to call.
            method: the method registered for it.
            payload: the bytes given to the handler.
            timeout: seconds to wait for the reply (``call_timeout`` when ``None``).

        Raises:
            NoRoute, OwnerUnavailable, CallTimeout, RemoteError, EndpointBusy: see above.
            MessageTooLarge: the request does not fit the transport's message size.
            ClosedError: the endpoint is closed or closed during the call.
            InvalidValue: a bad target or payload.
            ConfigurationError: a bad method name or timeout.

        Example:

        ```python
        with anyio.fail_after(2.0):                 # the handler gets 2 s too
            reply = await ep.call("user:42", "push", b"hello")
        ```
        """
        routes = self._require_routes()
        _check_call_names(target, method)
        if timeout is None:
            timeout = self._call_timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise InvalidValue("payload must be bytes")
        now = anyio.current_time()
        deadline = now + timeout
        # What the handler may use: our timeout or the enclosing deadline, the nearer.
        budget_end = min(deadline, anyio.current_effective_deadline())
        try:
            # One retry at most: a stale route answered NO_TARGET (nothing ran there) and
            # the route table meanwhile learnt of a different owner.
            tried: str | None = None
            while True:
                owner = routes.owner(target)
                if owner is None or owner == tried:
                    if tried is not None:
                        raise NoRoute(f"{target!r} is no longer registered on {tried!r}")
                    raise NoRoute(f"no owner is known for {target!r}")
                if owner == self._node_id:
                    return await self._call_local(target, method, bytes(payload), deadline)
                reply = await self._call_remote(
                    owner, target, method, payload, deadline, budget_end
                )
                if reply.status is Status.NO_TARGET and tried is None:
                    tried = owner
                    continue
                return self._outcome(reply, owner, target)
        except Exception:
            self._stats.calls_failed += 1
            raise

    def stats(self) -> EndpointStats:
        """A frozen snapshot of this endpoint's counters."""
        self._stats.calls_pending = len(self._pending)
        self._stats.handlers_active = self._active
        return self._stats.snapshot()

    # -- calling ---------------------------------------------------------------------

    def _require_routes(self) -> RouteTable:
        self._check_open()
        assert self._routes is not None  # set before the endpoint counts as open
        return self._routes

    async def _call_local(self, target: str, method: str, payload: bytes, deadline: float) -> bytes:
        self._stats.calls_local += 1
        methods = self._handlers.get(target)
        if methods is None:
            raise NoRoute(f"{target!r} is routed to this node but not registered here")
        handler = methods.get(method)
        if handler is None:
            raise RemoteError(_UNKNOWN_METHOD_TYPE, f"{target!r} has no method {method!r}")
        if self._active >= self._max_concurrency:
            raise EndpointBusy(f"{self._node_id!r} already runs {self._max_concurrency} handlers")
        self._active += 1
        try:
            # The handler's own exceptions pass through unchanged (even a TimeoutError);
            # only the scope's expiry becomes CallTimeout. The enclosing deadline applies
            # by itself: the handler runs in the caller's task.
            with anyio.CancelScope(deadline=deadline) as scope:
                try:
                    result: object = await handler(payload)
                except Exception:
                    self._stats.handler_errors += 1
                    raise
        finally:
            self._active -= 1
        if scope.cancelled_caught:
            raise CallTimeout(f"{target!r}.{method} did not return in time")
        if not isinstance(result, bytes | bytearray | memoryview):
            raise InvalidValue(f"handler of {target!r}.{method} returned {type(result).__name__}")
        return bytes(result)

    async def _call_remote(
        self,
        owner: str,
        target: str,
        method: str,
        payload: bytes,
        deadline: float,
        budget_end: float,
    ) -> Reply:
        """Send one request to ``owner``; wait until ``deadline`` for its reply."""
        routes = self._require_routes()
        if not routes.is_alive(owner):
            raise OwnerUnavailable(f"the owner of {target!r}, {owner!r}, is down")
        call_id = next(self._call_ids) & 0xFFFF_FFFF_FFFF_FFFF
        budget_ms = (budget_end - anyio.current_time()) * 1000
        data = encode_request(
            Request(
                call_id,
                self._node_id,
                target,
                method,
                bytes(payload),
                int(min(max(budget_ms, 1), _MAX_BUDGET_MS)),
            )
        )
        if len(data) > self._max_size:
            raise MessageTooLarge(
                f"call request of {len(data)} bytes exceeds the transport's {self._max_size}"
            )
        self._stats.calls_remote += 1
        pending = _Pending(owner)
        self._pending[call_id] = pending
        sent = False
        try:
            with anyio.CancelScope(deadline=deadline) as scope:
                await self._transport.publish(_inbox_topic(self._namespace, owner), data)
                sent = True
                await pending.done.wait()
        except anyio.get_cancelled_exc_class():
            # The caller was cancelled (or its enclosing deadline passed): free the
            # owner's slot now rather than when the budget runs out.
            if sent and pending.reply is None:
                await self._send_cancel(owner, call_id)
            raise
        finally:
            # Cancelled, timed out or answered: nothing of this call stays behind.
            del self._pending[call_id]
        if pending.error is not None:
            if isinstance(pending.error, ClosedError) and sent:
                await self._send_cancel(owner, call_id)  # this endpoint is closing
            raise pending.error
        if pending.reply is None:
            assert scope.cancelled_caught
            await self._send_cancel(owner, call_id)
            raise CallTimeout(f"no reply from {owner!r} for {target!r}.{method} in time")
        return pending.reply

    async def _send_cancel(self, owner: str, call_id: int) -> None:
        """Tell ``owner`` that the caller of ``call_id`` gave up; bounded and shielded."""
        data = encode_cancel(Cancel(call_id, self._node_id))
        error: Exception | None = None
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _CANCEL_GRACE
            try:
                await self._transport.publish(_inbox_topic(self._namespace, owner), data)
            except PodshareError as exc:
                error = exc
        if error is None and scope.cancelled_caught:
            error = TransportError(f"publishing a cancel to {owner!r} took over {_CANCEL_GRACE} s")
        if error is not None:
            self._stats.cancels_failed += 1
            self._report(error, f"could not tell {owner!r} that a call was cancelled")
        else:
            self._stats.cancels_sent += 1

    def _outcome(self, reply: Reply, owner: str, target: str) -> bytes:
        status = reply.status
        if status is Status.OK:
            return reply.payload
        if status is Status.ERROR or status is Status.NO_METHOD:
            raise RemoteError(reply.error_type, reply.error_message)
        if status is Status.BUSY:
            raise EndpointBusy(f"{owner!r} is at its concurrency limit")
        if status is Status.CLOSING:
            raise OwnerUnavailable(f"{owner!r} closed while handling the call to {target!r}")
        raise NoRoute(f"{target!r} is no longer registered on {owner!r}")

    def _fail(self, pending: _Pending, error: PodshareError) -> None:
        if not pending.done.is_set():
            pending.error = error
            pending.done.set()

    def _on_node_down(self, node_id: str) -> None:
        for pending in self._pending.values():
            if pending.owner == node_id:
                self._fail(pending, OwnerUnavailable(f"{node_id!r} went down during the call"))

    # -- serving ---------------------------------------------------------------------

    async def _inbox_worker(self, inbox: AsyncIterator[bytes]) -> None:
        """Read the inbox while holding the reader lock; serve requests after passing it on.

        Leader/followers: one worker (the holder of ``_reader_lock``) reads. Replies,
        cancels and refusals are handled on the spot. For a request to run, the reader
        hands the lock to the next worker (starting one if none waits) and runs the
        handler itself, so a request is never handed between tasks before its handler
        starts. At most ``max_concurrency + 1`` workers exist: one is started only when
        a handler starts and no worker is waiting to read.
        """
        lock = self._reader_lock
        while True:
            await lock.acquire()
            try:
                work = None
                while work is None and not self._inbox_ended:
                    try:
                        data = await anext(inbox)
                    except StopAsyncIteration:
                        self._inbox_ended = True
                        break
                    work = await self._receive(data)
                if work is None:
                    return
                if lock.statistics().tasks_waiting == 0:
                    assert self._serving is not None
                    self._serving.start_soon(self._inbox_worker, inbox)
            finally:
                lock.release()
            await self._serve(*work)

    async def _receive(self, data: bytes) -> tuple[Request, Handler, _Running] | None:
        """Handle one inbox message; return the request to run, its handler and slot."""
        try:
            envelope = decode(data, max_size=self._max_size)
        except ProtocolError as exc:
            self._stats.decode_errors += 1
            self._report(exc, "dropped a bad callreply envelope", level=logging.DEBUG)
            return None
        if isinstance(envelope, Reply):
            pending = self._pending.get(envelope.call_id)
            if pending is None or pending.done.is_set():
                self._stats.replies_late += 1
            else:
                pending.reply = envelope
                pending.done.set()
            return None
        if isinstance(envelope, Cancel):
            self._cancel(envelope)
            return None
        request = envelope
        self._stats.requests_received += 1
        key = (request.call_id, request.reply_to)
        if key in self._running:
            self._stats.requests_duplicate += 1
            return None
        methods = self._handlers.get(request.target)
        if methods is None:
            self._stats.requests_unroutable += 1
            await self._reply(request, Reply(request.call_id, Status.NO_TARGET))
            return None
        handler = methods.get(request.method)
        if handler is None:
            self._stats.requests_unroutable += 1
            message = f"{request.target!r} has no method {request.method!r}"
            await self._reply(
                request,
                Reply(request.call_id, Status.NO_METHOD, b"", _UNKNOWN_METHOD_TYPE, message),
            )
            return None
        if self._active >= self._max_concurrency:
            self._stats.requests_busy += 1
            await self._reply(request, Reply(request.call_id, Status.BUSY))
            return None
        self._active += 1
        # Registered before the handler starts, so a cancel right behind the request
        # finds it; the budget counts from now, when the owner learnt of the call.
        running = _Running(anyio.current_time() + request.budget_ms / 1000)
        self._running[key] = running
        return request, handler, running

    def _cancel(self, cancel: Cancel) -> None:
        # Both the call id and the caller must match: a sender cannot stop calls that
        # other nodes made (it would have to name them, and their reply_to, exactly).
        running = self._running.get((cancel.call_id, cancel.reply_to))
        if running is None or running.abandoned:
            self._stats.cancels_unmatched += 1
            return
        self._stats.cancels_applied += 1
        running.abandoned = True
        running.scope.cancel()
        # The slot is free now, not when the handler has finished unwinding.
        self._release(running)

    def _release(self, running: _Running) -> None:
        if running.holds_slot:
            running.holds_slot = False
            self._active -= 1

    async def _serve(self, request: Request, handler: Handler, running: _Running) -> None:
        reply: Reply | None = None
        late_error: Exception | None = None
        try:
            with running.scope:
                try:
                    result: object = await handler(request.payload)
                except Exception as exc:  # noqa: BLE001  # counted and reported below
                    self._stats.handler_errors += 1
                    if self._abandoned(running):
                        late_error = exc  # nobody waits for this call any more
                    else:
                        reply = Reply(request.call_id, Status.ERROR, b"", type_name(exc), str(exc))
                except BaseException as exc:
                    if not is_panic(exc):
                        raise
                    # A Rust panic (pycrdt) in a handler is that call's failure, not the
                    # endpoint's: the caller gets a RemoteError.
                    self._stats.handler_errors += 1
                    reply = Reply(request.call_id, Status.ERROR, b"", type_name(exc), str(exc))
                else:
                    if isinstance(result, bytes | bytearray | memoryview):
                        reply = Reply(request.call_id, Status.OK, bytes(result))
                    else:
                        self._stats.handler_errors += 1
                        message = f"handler returned {type(result).__name__}, not bytes"
                        reply = Reply(request.call_id, Status.ERROR, b"", "TypeError", message)
        except anyio.get_cancelled_exc_class():
            # Not the call's own scope (that one stops here): the endpoint is closing.
            if self.state in ("closing", "closed"):
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSING_REPLY_GRACE):
                    await self._reply(request, Reply(request.call_id, Status.CLOSING))
            raise
        finally:
            self._release(running)
            key = (request.call_id, request.reply_to)
            if self._running.get(key) is running:
                del self._running[key]
        if self._abandoned(running) or running.scope.cancelled_caught:
            self._stats.calls_abandoned += 1
            if late_error is not None:
                self._report(
                    late_error,
                    f"handler of {request.target!r}.{request.method} raised after its caller left",
                )
            return  # the caller has given up: no reply
        if reply is not None:
            await self._reply(request, reply)

    @staticmethod
    def _abandoned(running: _Running) -> bool:
        return running.abandoned or anyio.current_time() >= running.scope.deadline

    async def _reply(self, request: Request, reply: Reply) -> None:
        data = encode_reply(reply)
        if len(data) > self._max_size:
            message = f"reply of {len(data)} bytes exceeds the transport's {self._max_size}"
            data = encode_reply(Reply(reply.call_id, Status.ERROR, b"", "MessageTooLarge", message))
        try:
            await self._transport.publish(_inbox_topic(self._namespace, request.reply_to), data)
        except PodshareError as exc:
            # The caller times out (or learns its owner is down); at most once.
            self._stats.replies_failed += 1
            self._report(exc, f"could not send a reply to {request.reply_to!r}")

    def _on_reclaim_failed(self, target: str, error: PodshareError) -> None:
        self._stats.reclaims_failed += 1
        self._report(error, f"could not re-claim the route to {target!r}")

    # -- reporting -------------------------------------------------------------------

    def _report(self, error: Exception, what: str, *, level: int = logging.WARNING) -> None:
        """Hand a background error to ``on_error`` (or log it); never raises."""
        if self._on_error is None:
            self._logger.log(
                level, "endpoint %r: %s: %s: %s", self._node_id, what, type_name(error), error
            )
            return
        self._logger.debug("endpoint %r: %s: %s: %s", self._node_id, what, type_name(error), error)
        try:
            result = self._on_error(error)
        except Exception:
            self._logger.exception("endpoint %r: on_error raised", self._node_id)
            return
        if inspect.isawaitable(result):
            if self.state in ("opening", "open"):
                self.start_soon(self._await_on_error, result)
            else:
                # Closing: nothing may outlive the endpoint, so it is not awaited.
                if inspect.iscoroutine(result):
                    result.close()
                self._logger.debug(
                    "endpoint %r: on_error not awaited: the endpoint is closing",
                    self._node_id,
                )

    async def _await_on_error(self, result: Awaitable[object]) -> None:
        try:
            await result
        except Exception:
            self._logger.exception("endpoint %r: on_error raised", self._node_id)
