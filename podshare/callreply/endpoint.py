"""Endpoint: call whichever pod owns a target; the target never moves, only a route does.

A websocket connection (say) lives on one pod. That pod registers the connection's
target with :meth:`Endpoint.register`; the route ``target -> node`` is written to a
replicated route table (a podshare store of *ephemeral* entries, removed everywhere when
the owner goes down). Any pod then calls :meth:`Endpoint.call`: the route is looked up
locally, a small envelope goes to the owner's inbox topic ``cr/{namespace}#{node}``, the
owner runs the handler and publishes the reply to the caller's inbox.

Delivery is **at most once**: a request or reply lost on the wire is never re-sent, so a
call that raises :class:`~podshare.exceptions.CallTimeout` or
:class:`~podshare.exceptions.OwnerUnavailable` may or may not have run its handler.
Retry with an idempotency key that the handler remembers::

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

The owner gives a handler the caller's remaining timeout and cancels it after that,
since nobody waits for its reply any more.

Errors a call raises, all :class:`~podshare.exceptions.CallError`:

- :class:`~podshare.exceptions.NoRoute`: no owner is known for the target, or the
  recorded owner no longer has it (nothing ran in either case).
- :class:`~podshare.exceptions.OwnerUnavailable`: the owner is known but down — at call
  time, or it went down (missed heartbeats for ``down_after``, or closed) while the call
  waited. This fails fast: in about ``down_after``, not ``call_timeout``.
- :class:`~podshare.exceptions.CallTimeout` (also ``TimeoutError``): no reply in time.
- :class:`~podshare.exceptions.RemoteError`: the remote handler raised; carries the
  exception's type name and message. An unknown method on a registered target is a
  ``RemoteError`` whose ``type_name`` is ``"LookupError"`` (the handler never ran).
- :class:`~podshare.exceptions.EndpointBusy`: the owner already runs ``max_concurrency``
  handlers; the handler did not run.

A self-call (the target is owned by this node) runs the handler in the caller's task,
with no serialisation, and raises the handler's own exception unchanged.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import anyio
from anyio.abc import TaskGroup

from podshare.callreply._envelope import (
    MAX_NAME,
    Reply,
    Request,
    Status,
    decode,
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
)
from podshare.transport.base import Transport, max_message_size

__all__ = ["Endpoint", "EndpointStats", "Handler"]

#: An async handler: receives the call's payload, returns the reply's payload.
Handler = Callable[[bytes], Awaitable[bytes]]

# The route store is named "callreply.{namespace}" and store names stop at 200.
_MAX_NAMESPACE: Final = 190
# How long a closing endpoint spends telling callers their handler was cancelled.
_CLOSING_REPLY_GRACE: Final = 0.5
_UNKNOWN_METHOD_TYPE: Final = "LookupError"


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """A snapshot of one endpoint's counters, from :meth:`Endpoint.stats`.

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
    handler_errors: int = 0
    """Handlers (remote or local) that raised."""
    replies_late: int = 0
    """Replies that arrived after their caller gave up (timed out, cancelled); dropped."""
    decode_errors: int = 0
    """Inbox messages that were not valid envelopes; dropped."""
    calls_pending: int = 0
    """Remote calls waiting for a reply now."""
    handlers_active: int = 0
    """Handlers running now (remote and local)."""


class _Counters:
    """The mutable mirror of :class:`EndpointStats`."""

    __slots__ = (
        "calls_failed",
        "calls_local",
        "calls_remote",
        "decode_errors",
        "handler_errors",
        "replies_late",
        "requests_busy",
        "requests_received",
        "requests_unroutable",
    )

    def __init__(self) -> None:
        self.calls_remote = 0
        self.calls_local = 0
        self.calls_failed = 0
        self.requests_received = 0
        self.requests_busy = 0
        self.requests_unroutable = 0
        self.handler_errors = 0
        self.replies_late = 0
        self.decode_errors = 0


class _Pending:
    """One remote call waiting for its reply (or for its owner to be declared down)."""

    __slots__ = ("done", "error", "owner", "reply")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.done = anyio.Event()
        self.reply: Reply | None = None
        self.error: PodshareError | None = None


def _inbox_topic(namespace: str, node_id: str) -> str:
    return f"cr/{namespace}#{node_id}"


def _type_name(exc: BaseException) -> str:
    tp = type(exc)
    if tp.__module__ == "builtins":
        return tp.__qualname__
    return f"{tp.__module__}.{tp.__qualname__}"


def _check_name(value: object, what: str, *, limit: int = MAX_NAME, node: bool = False) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ConfigurationError(f"{what} must be a non-empty string of at most {limit} chars")
    if node and "#" in value:
        raise ConfigurationError(f"{what} must not contain '#'")
    return value


class Endpoint:
    """Register handlers for targets this pod owns, and call targets wherever they live.

    Args:
        transport: the transport every pod of the fleet shares.
        node_id: this pod's id (unique in the fleet; no ``#``); random when omitted.
        namespace: endpoints only see routes and calls of their own namespace.
        call_timeout: default seconds a :meth:`call` waits for its reply.
        max_concurrency: handlers this endpoint runs at once; beyond it callers get
            :class:`~podshare.exceptions.EndpointBusy` at once.
        heartbeat_interval: seconds between liveness heartbeats of the route table
            (the store's default when omitted).
        down_after: seconds without a heartbeat after which a node counts as down, its
            routes vanish and calls waiting on it fail with
            :class:`~podshare.exceptions.OwnerUnavailable` (the store's default when omitted).
        route_options: further keyword options for the route table's
            :class:`~podshare.Store` (``hydrate_timeout``, ``anti_entropy_interval``...).
        logger: where unexpected conditions are logged.

    The endpoint is an async context manager; its task group owns the inbox loop, the
    membership watch and every running handler, so nothing outlives it. Delivery is at
    most once (see the module documentation for the idempotency-key retry pattern).

    Example::

        async def push(payload: bytes) -> bytes:
            await websocket.send_bytes(payload)
            return b"ok"

        async with Endpoint(transport, node_id="pod-1") as ep:
            await ep.register("user:42", "push", push)
            ...
            reply = await ep.call("user:42", "push", b"hello")  # from any pod
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
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(transport, Transport):
            raise ConfigurationError(
                f"transport must implement publish(), subscribe() and aclose(), not {transport!r}"
            )
        if node_id is None:
            node_id = f"cr-{secrets.token_hex(6)}"
        self._node_id = _check_name(node_id, "node_id", limit=200, node=True)
        self._namespace = _check_name(namespace, "namespace", limit=_MAX_NAMESPACE, node=True)
        if not (isinstance(call_timeout, int | float) and 0 < call_timeout < math.inf):
            raise ConfigurationError("call_timeout must be a positive finite number of seconds")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise ConfigurationError("max_concurrency must be a positive integer")
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be a positive integer")
        self._transport = transport
        self._call_timeout = float(call_timeout)
        self._max_concurrency = max_concurrency
        self._heartbeat_interval = heartbeat_interval
        self._down_after = down_after
        self._route_options = dict(route_options or {})
        self._logger = logger or logging.getLogger("podshare.callreply")
        self._max_size = max_message_size(transport)
        self._inbox = _inbox_topic(self._namespace, self._node_id)
        self._handlers: dict[str, dict[str, Handler]] = {}
        self._pending: dict[int, _Pending] = {}
        # A random start makes a restarted node with the same id ignore replies meant
        # for its previous life instead of mistaking them for its own.
        self._call_ids = itertools.count(secrets.randbits(62))
        self._active = 0
        self._reader_lock = anyio.Lock()
        self._inbox_ended = False
        self._counters = _Counters()
        self._routes: RouteTable | None = None
        self._task_group: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._open = False
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._closing:
            raise ClosedError("an Endpoint can be entered only once")
        stack = AsyncExitStack()
        self._stack = stack
        try:
            routes = await stack.enter_async_context(self._open_routes())
            inbox = await stack.enter_async_context(self._transport.subscribe(self._inbox))
            task_group = await stack.enter_async_context(anyio.create_task_group())
            self._routes = routes
            self._task_group = task_group
            await task_group.start(routes.run, self._on_node_down)
            task_group.start_soon(self._inbox_worker, inbox)
        except BaseException:
            self._closing = True
            await stack.aclose()
            raise
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        return None

    async def aclose(self) -> None:
        """Close: cancel running handlers, fail waiting calls, leave the route table.

        Leaving ``async with`` does this; call it only from the task that entered.
        Callers waiting on this endpoint get :class:`~podshare.exceptions.ClosedError`;
        remote callers whose handler was cancelled get
        :class:`~podshare.exceptions.OwnerUnavailable`. Idempotent.
        """
        if self._closing or self._stack is None:
            self._closing = True
            return
        self._closing = True
        self._open = False
        for pending in self._pending.values():
            self._fail(pending, ClosedError("the endpoint closed while the call waited"))
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        # Leaving the stack exits the task group (handlers cancelled), unsubscribes the
        # inbox, then closes the route table, which announces this node's departure.
        await self._stack.aclose()

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

        Example::

            if ep.owner("user:42") is None:
                ...  # the user is not connected anywhere
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
            target: what callers address (``"user:42"``, a connection id...).
            method: the operation's name on that target.
            handler: ``async def handler(payload: bytes) -> bytes``.
        """
        routes = self._require_routes()
        _check_name(target, "target")
        _check_name(method, "method")
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

        Args:
            target: the target to call.
            method: the method registered for it.
            payload: the bytes given to the handler.
            timeout: seconds to wait for the reply (``call_timeout`` when ``None``).

        Raises:
            NoRoute, OwnerUnavailable, CallTimeout, RemoteError, EndpointBusy: see above.
            MessageTooLarge: the request does not fit the transport's message size.
            ClosedError: the endpoint is closed or closed during the call.

        Example::

            reply = await ep.call("user:42", "push", b"hello", timeout=2.0)
        """
        routes = self._require_routes()
        if timeout is None:
            timeout = self._call_timeout
        elif not timeout > 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise InvalidValue("payload must be bytes")
        deadline = anyio.current_time() + timeout
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
                remaining = timeout if tried is None else deadline - anyio.current_time()
                reply = await self._call_remote(owner, target, method, payload, remaining)
                if reply.status is Status.NO_TARGET and tried is None:
                    tried = owner
                    continue
                return self._outcome(reply, owner, target)
        except Exception:
            self._counters.calls_failed += 1
            raise

    def stats(self) -> EndpointStats:
        """A frozen snapshot of this endpoint's counters."""
        c = self._counters
        return EndpointStats(
            calls_remote=c.calls_remote,
            calls_local=c.calls_local,
            calls_failed=c.calls_failed,
            requests_received=c.requests_received,
            requests_busy=c.requests_busy,
            requests_unroutable=c.requests_unroutable,
            handler_errors=c.handler_errors,
            replies_late=c.replies_late,
            decode_errors=c.decode_errors,
            calls_pending=len(self._pending),
            handlers_active=self._active,
        )

    # -- calling ---------------------------------------------------------------------

    def _require_routes(self) -> RouteTable:
        if not self._open or self._routes is None:
            raise ClosedError("the Endpoint is not open (use `async with Endpoint(...)`)")
        return self._routes

    async def _call_local(self, target: str, method: str, payload: bytes, deadline: float) -> bytes:
        self._counters.calls_local += 1
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
            # only the scope's expiry becomes CallTimeout.
            with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
                try:
                    result: object = await handler(payload)
                except Exception:
                    self._counters.handler_errors += 1
                    raise
        finally:
            self._active -= 1
        if scope.cancelled_caught:
            raise CallTimeout(f"{target!r}.{method} did not return in time")
        if not isinstance(result, bytes | bytearray | memoryview):
            raise InvalidValue(f"handler of {target!r}.{method} returned {type(result).__name__}")
        return bytes(result)

    async def _call_remote(
        self, owner: str, target: str, method: str, payload: bytes, remaining: float
    ) -> Reply:
        """Send one request to ``owner`` and wait up to ``remaining`` seconds for its reply."""
        routes = self._require_routes()
        if not routes.is_alive(owner):
            raise OwnerUnavailable(f"the owner of {target!r}, {owner!r}, is down")
        call_id = next(self._call_ids) & 0xFFFF_FFFF_FFFF_FFFF
        data = encode_request(
            Request(
                call_id,
                self._node_id,
                target,
                method,
                bytes(payload),
                min(max(int(remaining * 1000), 1), 86_400_000),
            )
        )
        if len(data) > self._max_size:
            raise MessageTooLarge(
                f"call request of {len(data)} bytes exceeds the transport's {self._max_size}"
            )
        self._counters.calls_remote += 1
        pending = _Pending(owner)
        self._pending[call_id] = pending
        try:
            with anyio.move_on_after(max(remaining, 0)) as scope:
                await self._transport.publish(_inbox_topic(self._namespace, owner), data)
                await pending.done.wait()
        finally:
            # Cancelled, timed out or answered: nothing of this call stays behind.
            del self._pending[call_id]
        if pending.error is not None:
            raise pending.error
        if pending.reply is None:
            assert scope.cancelled_caught
            raise CallTimeout(f"no reply from {owner!r} for {target!r}.{method} in time")
        return pending.reply

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

        Leader/followers: one worker (the holder of ``_reader_lock``) reads. Replies and
        refusals are handled on the spot. For a request to run, the reader hands the
        lock to the next worker (starting one if none waits) and runs the handler itself,
        so a request is never handed between tasks before its handler starts. At most
        ``max_concurrency + 1`` workers exist: one is started only when a handler starts
        and no worker is waiting to read.
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
                    assert self._task_group is not None
                    self._task_group.start_soon(self._inbox_worker, inbox)
            finally:
                lock.release()
            await self._serve(*work)

    async def _receive(self, data: bytes) -> tuple[Request, Handler] | None:
        """Handle one inbox message; return the request and handler to run, if any."""
        try:
            envelope = decode(data, max_size=self._max_size)
        except ProtocolError as exc:
            self._counters.decode_errors += 1
            self._logger.debug("dropped a bad callreply envelope: %s", exc)
            return None
        if isinstance(envelope, Reply):
            pending = self._pending.get(envelope.call_id)
            if pending is None or pending.done.is_set():
                self._counters.replies_late += 1
            else:
                pending.reply = envelope
                pending.done.set()
            return None
        request = envelope
        self._counters.requests_received += 1
        methods = self._handlers.get(request.target)
        if methods is None:
            self._counters.requests_unroutable += 1
            await self._reply(request, Reply(request.call_id, Status.NO_TARGET))
            return None
        handler = methods.get(request.method)
        if handler is None:
            self._counters.requests_unroutable += 1
            message = f"{request.target!r} has no method {request.method!r}"
            await self._reply(
                request,
                Reply(request.call_id, Status.NO_METHOD, b"", _UNKNOWN_METHOD_TYPE, message),
            )
            return None
        if self._active >= self._max_concurrency:
            self._counters.requests_busy += 1
            await self._reply(request, Reply(request.call_id, Status.BUSY))
            return None
        self._active += 1
        return request, handler

    async def _serve(self, request: Request, handler: Handler) -> None:
        reply: Reply | None = None
        try:
            # The caller stops waiting after its budget; so does the handler.
            with anyio.move_on_after(request.budget_ms / 1000):
                try:
                    result: object = await handler(request.payload)
                except Exception as exc:
                    self._counters.handler_errors += 1
                    reply = Reply(request.call_id, Status.ERROR, b"", _type_name(exc), str(exc))
                else:
                    if isinstance(result, bytes | bytearray | memoryview):
                        reply = Reply(request.call_id, Status.OK, bytes(result))
                    else:
                        self._counters.handler_errors += 1
                        message = f"handler returned {type(result).__name__}, not bytes"
                        reply = Reply(request.call_id, Status.ERROR, b"", "TypeError", message)
        except anyio.get_cancelled_exc_class():
            if self._closing:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSING_REPLY_GRACE):
                    await self._reply(request, Reply(request.call_id, Status.CLOSING))
            raise
        finally:
            self._active -= 1
        if reply is not None:
            await self._reply(request, reply)

    async def _reply(self, request: Request, reply: Reply) -> None:
        data = encode_reply(reply)
        if len(data) > self._max_size:
            message = f"reply of {len(data)} bytes exceeds the transport's {self._max_size}"
            data = encode_reply(Reply(reply.call_id, Status.ERROR, b"", "MessageTooLarge", message))
        try:
            await self._transport.publish(_inbox_topic(self._namespace, request.reply_to), data)
        except PodshareError as exc:
            # The caller times out (or learns its owner is down); at most once.
            self._logger.warning("could not send a callreply reply: %s", exc)
