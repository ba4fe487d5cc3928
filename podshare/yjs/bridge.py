"""RoomBridge: a live pycrdt Doc kept in sync with every other pod in its room.

The shell around `podshare.yjs._room.RoomCore`: it observes the document,
subscribes to the room's topics, publishes what the core produces, and keeps doing so
through transport faults. What it guarantees:

- **It never dies of a transport fault.** A failed publish (Redis disconnected,
  ``TransportError``; any other exception from a transport) is counted
  (``publish_failures``), reported once per outage (``on_error`` and a warning), and
  followed by a state-vector resync as soon as the transport works again: after a gap
  report (a reconnect) at once, otherwise retried with backoff (0.05 s doubling to
  5 s). A failed subscription is retried the same way. Nothing raises out of the
  bridge's tasks, so nothing reaches pycrdt-websocket's task group; the document keeps
  serving local clients meanwhile.
- **No echoes.** A peer's update is applied without being sent again: one edit costs
  one message (the Yjs update plus an envelope of 3 bytes and the node id).
- **Large updates travel**: fragmented below the transport's ``max_message_size``.
- **Synced means synced**: `RoomBridge.synced` is set once this pod holds the
  room's state (every pod known to be in the room answered its hello), or after
  ``sync_timeout`` seconds (counted as ``synced_by_timeout``). Who is expected: the
  pods in the ``presence`` store's registry when given, else the number of other
  subscribers when the transport can count them (``remote_subscribers``), else one
  answer.
- **Anti-entropy** by state vectors every ``resync_interval`` seconds (and after gaps):
  peers send only what the other lacks.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import anyio.lowlevel
import pycrdt

from podshare.crdt.ydoc import MAX_UPDATE_SIZE
from podshare.exceptions import (
    ClosedError,
    ConfigurationError,
    DecodeError,
    PodshareError,
    TransportError,
)
from podshare.transport.base import GapReporting, Transport, max_message_size
from podshare.yjs._names import room_topic
from podshare.yjs._room import RoomCore
from podshare.yjs.persistence import RoomPersistence

if TYPE_CHECKING:
    from podshare.store.store import Store

__all__ = ["BridgeStats", "RoomBridge", "member_key_prefix"]

_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 5.0
_CLOSE_TIMEOUT = 5.0


def member_key_prefix(topic: str) -> str:
    """The presence-store key prefix of a room's members (``m:{topic}#``, then node id)."""
    return f"m:{topic}#"


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """A snapshot of a `RoomBridge`'s counters (from `RoomBridge.stats`)."""

    messages_sent: int
    """Messages published (fragments each count)."""
    bytes_sent: int
    """Bytes of those messages."""
    messages_received: int
    """Messages received from peers (fragments each count)."""
    bytes_received: int
    """Bytes of those messages."""
    updates_sent: int
    """Local edits sent (merged edits count once)."""
    updates_applied: int
    """Peers' updates applied to the document."""
    sync_requests_sent: int
    """State vectors sent (hellos, resyncs, replies)."""
    sync_answers_sent: int
    """Answers sent (what an asker lacked)."""
    fragments_sent: int
    """Messages sent as fragments."""
    fragments_dropped: int
    """Incomplete fragmented messages given up (budget, timeout, inconsistency)."""
    decode_errors: int
    """Malformed messages dropped."""
    publish_failures: int
    """Publishes that failed (each outage is reported once)."""
    subscribe_failures: int
    """Failed attempts to subscribe to the room's topics."""
    resyncs: int
    """Anti-entropy rounds started (periodic, after gaps and after failures)."""
    gaps: int
    """Gaps the transport reported."""
    callback_errors: int
    """Exceptions raised by the document's other observers while an update applied."""
    saves: int
    """States saved to the persistence."""
    save_failures: int
    """Failed loads and saves."""
    synced_by_timeout: bool
    """True when ``synced`` was set by ``sync_timeout`` rather than by the peers."""


class RoomBridge:
    """Keep ``doc`` in sync with the same room on every other pod, over ``transport``.

    An async context manager: entering subscribes (retried in the background if the
    transport is down), loads the room from ``persistence`` and says hello to the
    room; leaving sends what is left, saves, and unsubscribes. See the module docstring
    for what it guarantees.

    Args:
        doc: the live document (edit it on the event loop's thread).
        transport: any open [`Transport`][podshare.transport.base.Transport].
        room: the room's name, any string (mapped to a topic by
            [`room_topic`][podshare.yjs.room_topic]).
        node_id: this pod's id in the room (at most 255 UTF-8 bytes, no ``#``); default
            the presence store's node id, else a random one. Every bridge of a room
            needs its own.
        presence: an open ``Store`` shared by the pods: the bridge registers itself
            there (an ephemeral entry) so joiners know whom to wait for.
        persistence: where the room is loaded from and saved to
            ([`RoomPersistence`][podshare.yjs.persistence.RoomPersistence]).
        sync_timeout: the longest a joiner waits for its peers before counting as synced.
        resync_interval: seconds between anti-entropy rounds; ``None``: only after gaps
            and failures.
        save_interval: seconds between a change and its save (with ``persistence``).
        max_update_size: the largest update accepted from a peer, in bytes.
        max_buffered: bytes of incomplete fragmented messages held at most (default:
            twice ``max_update_size``).
        on_error: called with each [`PodshareError`][podshare.exceptions.PodshareError] met in
            the background (malformed messages, the first failure of an outage).
        logger: a stdlib logger (default ``podshare.yjs``).

    Example:

    ```python
    doc = pycrdt.Doc()
    async with RedisTransport(url) as tr, RoomBridge(doc, tr, "notes") as bridge:
        await bridge.synced.wait()
        doc.get("text", type=pycrdt.Text).insert(0, "hello")  # every pod sees it
    ```
    """

    def __init__(
        self,
        doc: pycrdt.Doc[Any],
        transport: Transport,
        room: str,
        *,
        node_id: str | None = None,
        presence: Store[Any] | None = None,
        persistence: RoomPersistence | None = None,
        sync_timeout: float = 5.0,
        resync_interval: float | None = 30.0,
        save_interval: float = 2.0,
        max_update_size: int = MAX_UPDATE_SIZE,
        max_buffered: int | None = None,
        on_error: Callable[[PodshareError], object] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(doc, pycrdt.Doc):
            raise ConfigurationError(f"doc must be a pycrdt.Doc, not {doc!r}")
        if not isinstance(transport, Transport):
            raise ConfigurationError(f"transport must be a podshare Transport, not {transport!r}")
        if node_id is None:
            node_id = presence.node_id if presence is not None else uuid.uuid4().hex
        if not isinstance(node_id, str) or "#" in node_id or not 1 <= len(node_id.encode()) <= 255:
            raise ConfigurationError(
                f"node_id must be 1 to 255 UTF-8 bytes without '#', not {node_id!r}"
            )
        _check_seconds("sync_timeout", sync_timeout, allow_zero=True)
        if resync_interval is not None:
            _check_seconds("resync_interval", resync_interval)
        _check_seconds("save_interval", save_interval, allow_zero=True)
        _check_size("max_update_size", max_update_size)
        if max_buffered is None:
            max_buffered = 2 * max_update_size
        _check_size("max_buffered", max_buffered)
        if persistence is not None and not isinstance(persistence, RoomPersistence):
            raise ConfigurationError(
                f"persistence must have async load(room) and save(room, state), not {persistence!r}"
            )
        if on_error is not None and not callable(on_error):
            raise ConfigurationError(f"on_error must be callable, not {on_error!r}")
        #: The room's name.
        self.room = room
        #: The room's broadcast topic.
        self.topic = room_topic(room)
        #: This pod's id in the room.
        self.node_id = node_id
        self._doc = doc
        self._transport = transport
        self._presence = presence
        self._persistence = persistence
        self._sync_timeout = sync_timeout
        self._resync_interval = resync_interval
        self._save_interval = save_interval
        self._max_update_size = max_update_size
        self._max_buffered = max_buffered
        self._on_error = on_error
        self._log = logger if logger is not None else logging.getLogger("podshare.yjs")
        self._core: RoomCore | None = None
        self._state = "new"
        self._stack: AsyncExitStack | None = None
        self._synced = anyio.Event()
        self._core_synced = anyio.Event()
        self._wake = anyio.Event()
        self._changed = anyio.Event()
        self._hello_sent = anyio.Event()
        self._publish_lock: anyio.Lock | None = None
        self._resync_due = False
        self._retry_at = 0.0
        self._failing = False
        self._backoff = _BACKOFF_FIRST
        self._subscription: pycrdt.Subscription | None = None
        self._counts = dict.fromkeys(
            (
                "messages_sent",
                "bytes_sent",
                "publish_failures",
                "subscribe_failures",
                "resyncs",
                "gaps",
                "callback_errors",
                "saves",
                "save_failures",
            ),
            0,
        )
        self._synced_by_timeout = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``"new"``, ``"opening"``, ``"open"``, ``"closing"`` or ``"closed"`` (as a store's)."""
        return self._state

    @property
    def synced(self) -> anyio.Event:
        """Set once this pod holds the room's state, or ``sync_timeout`` passed."""
        return self._synced

    @property
    def sync_timeout(self) -> float:
        """The longest a joiner waits for its peers before counting as synced."""
        return self._sync_timeout

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        """The live document."""
        return self._doc

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise ClosedError("a RoomBridge can be entered only once")
        self._state = "opening"
        self._core = RoomCore(
            self._doc,
            self.node_id,
            self.topic,
            max_message_size=max_message_size(self._transport),
            max_update_size=self._max_update_size,
            max_buffered=self._max_buffered,
        )
        self._publish_lock = anyio.Lock()
        stack = AsyncExitStack()
        try:
            if self._persistence is not None:
                await self._load()
            self._subscription = self._doc.observe(self._on_transaction)
            stack.callback(self._unobserve)
            if isinstance(self._transport, GapReporting):
                stack.callback(self._transport.add_gap_listener(self._on_gap))
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)  # runs first on exit
            tg.start_soon(self._publisher, name=f"podshare yjs {self.topic} publisher")
            tg.start_soon(self._await_synced, name=f"podshare yjs {self.topic} synced")
            if self._resync_interval is not None:
                tg.start_soon(self._ticker, name=f"podshare yjs {self.topic} anti-entropy")
            if self._persistence is not None:
                tg.start_soon(self._saver, name=f"podshare yjs {self.topic} saver")
            await tg.start(self._supervise, name=f"podshare yjs {self.topic} receive")
        except BaseException:
            self._state = "closed"
            self._synced.set()  # nobody may wait forever on a bridge that never opened
            await stack.aclose()
            raise
        self._stack = stack
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Send what is left, save, leave the registry and unsubscribe (idempotent)."""
        if self._state != "open":
            self._state = "closed"
            return
        self._state = "closing"
        stack, self._stack = self._stack, None
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                await self._publish_round()
                if self._persistence is not None and self._require_core().changed:
                    await self._save()
                await self._leave_registry()
        finally:
            self._state = "closed"
            self._synced.set()
            if stack is not None:
                # Not shielded: the task group in it was entered outside any new scope,
                # and its exit only cancels the bridge's own tasks.
                await stack.aclose()

    def _unobserve(self) -> None:
        if self._subscription is not None:
            self._doc.unobserve(self._subscription)
            self._subscription = None

    def _require_core(self) -> RoomCore:
        if self._core is None:
            raise ClosedError("the RoomBridge is not open")
        return self._core

    # -- the document --------------------------------------------------------------------

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        # Runs inside pycrdt's commit: it must never raise (pycrdt would hand the error
        # to whoever committed, a pycrdt-websocket room for instance).
        try:
            core = self._require_core()
            core.on_transaction(event.update)
            self._changed.set()
            if not core.applying:
                self._wake.set()
        except Exception:  # noqa: BLE001  # counted and logged; never raised into pycrdt
            self._counts["callback_errors"] += 1
            self._log.exception("room %r: handling a transaction failed", self.room)

    # -- receiving ---------------------------------------------------------------------

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Subscribe and read, resubscribing with backoff after any failure."""
        core = self._require_core()
        started = False
        hello_said = False
        backoff = _BACKOFF_FIRST
        while True:
            try:
                async with AsyncExitStack() as stack:
                    broadcast = await stack.enter_async_context(
                        self._transport.subscribe(self.topic)
                    )
                    inbox = await stack.enter_async_context(self._transport.subscribe(core.inbox))
                    tg = await stack.enter_async_context(anyio.create_task_group())
                    tg.start_soon(self._read, broadcast, tg.cancel_scope)
                    tg.start_soon(self._read, inbox, tg.cancel_scope)
                    if not hello_said:
                        hello_said = True
                        await self._join_registry()
                        core.hello()
                        self._hello_sent.set()
                    else:
                        self._resync_due = True
                    self._wake.set()
                    if not started:
                        started = True
                        task_status.started()
                    backoff = _BACKOFF_FIRST
            except Exception as exc:  # noqa: BLE001  # counted and reported; retried below
                self._counts["subscribe_failures"] += 1
                self._report(exc, "subscribing to the room failed")
                if isinstance(exc, ClosedError):
                    self._log.warning("room %r: the transport is closed; sync stopped", self.room)
                    if not started:
                        task_status.started()
                    await anyio.sleep_forever()
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_CAP)

    async def _read(self, messages: Any, scope: anyio.CancelScope) -> None:
        core = self._require_core()
        try:
            async for data in messages:
                try:
                    core.receive(data, anyio.current_time())
                except Exception:  # noqa: BLE001  # another observer of the document failed
                    self._counts["callback_errors"] += 1
                    self._log.exception(
                        "room %r: an observer of the document failed on a peer's update",
                        self.room,
                    )
                for error in core.errors_received():
                    self._report(error, None)
                if core.synced:
                    self._core_synced.set()
                self._wake.set()
        finally:
            scope.cancel()  # the other reader too: the supervisor resubscribes both

    async def _await_synced(self) -> None:
        """Set `synced` once the peers answered the hello, or at ``sync_timeout``.

        The timeout counts from entering, so a pod whose transport is down at first
        still serves its clients after ``sync_timeout``.
        """
        core = self._require_core()
        with anyio.move_on_after(self._sync_timeout):
            await self._hello_sent.wait()
            await self._set_expectation(core)
            await self._core_synced.wait()
        if not self._core_synced.is_set():
            self._synced_by_timeout = True
            self._log.info(
                "room %r: not every peer answered within %.1fs; serving what is held",
                self.room,
                self._sync_timeout,
            )
        self._synced.set()

    async def _set_expectation(self, core: RoomCore) -> None:
        count: object = None
        try:
            if self._presence is not None:
                prefix = member_key_prefix(self.topic)
                members = [k[len(prefix) :] for k in self._presence if k.startswith(prefix)]
                core.expect(peers=frozenset(members))
            else:
                counter = getattr(self._transport, "remote_subscribers", None)
                if callable(counter):
                    count = await counter(self.topic)
                core.expect(count=count if isinstance(count, int) and count >= 0 else 1)
        except Exception as exc:  # noqa: BLE001  # an optimisation only: fall back to one answer
            self._report(exc, "finding the room's other pods failed")
            core.expect(count=1)
        if core.synced:
            self._core_synced.set()

    # -- sending -----------------------------------------------------------------------

    def _on_gap(self) -> None:
        self._counts["gaps"] += 1
        self._resync_due = True
        self._retry_at = 0.0
        self._wake.set()

    async def _ticker(self) -> None:
        assert self._resync_interval is not None
        while True:
            await anyio.sleep(self._resync_interval)
            self._resync_due = True
            self._wake.set()

    async def resync(self) -> None:
        """Start an anti-entropy round now (peers send what this pod lacks, and ask)."""
        self._require_core()
        self._resync_due = True
        self._wake.set()
        await anyio.lowlevel.checkpoint()

    async def _publisher(self) -> None:
        while True:
            delay = math.inf
            if self._failing:
                delay = max(0.0, self._retry_at - anyio.current_time())
            with anyio.move_on_after(delay):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self._failing and anyio.current_time() < self._retry_at:
                continue  # edits wait for the retry; the resync will carry them
            await self._publish_round()

    async def _publish_round(self) -> None:
        assert self._publish_lock is not None
        async with self._publish_lock:  # the publisher and aclose() take turns
            await self._publish_locked()

    async def _publish_locked(self) -> None:
        core = self._require_core()
        if self._resync_due:
            self._resync_due = False
            self._counts["resyncs"] += 1
            core.resync()
        out = core.data_to_send()
        for topic, data in out:
            try:
                await self._transport.publish(topic, data)
            except Exception as exc:  # noqa: BLE001  # counted, reported once per outage, then retried
                self._publish_failed(exc)
                return
            self._counts["messages_sent"] += 1
            self._counts["bytes_sent"] += len(data)
        if out and self._failing:
            self._failing = False
            self._log.info("room %r: publishing works again", self.room)

    def _publish_failed(self, exc: Exception) -> None:
        self._counts["publish_failures"] += 1
        now = anyio.current_time()
        if not self._failing:
            self._failing = True
            self._backoff = _BACKOFF_FIRST
            self._report(exc, "publishing failed; the room resyncs once the transport is back")
        else:
            self._backoff = min(self._backoff * 2, _BACKOFF_CAP)
        self._retry_at = now + self._backoff
        # Whatever was not sent is recovered by the resync's state vectors.
        self._resync_due = True

    # -- presence registry -------------------------------------------------------------

    async def _join_registry(self) -> None:
        if self._presence is None:
            return
        try:
            await self._presence.set(
                member_key_prefix(self.topic) + self.node_id, True, ephemeral=True
            )
        except Exception as exc:  # noqa: BLE001  # the local entry stands; the store repairs peers later
            self._report(exc, "registering in the presence store failed")

    async def _leave_registry(self) -> None:
        if self._presence is None:
            return
        try:
            await self._presence.delete(member_key_prefix(self.topic) + self.node_id)
        except Exception as exc:  # noqa: BLE001  # the entry is ephemeral: it vanishes with this pod anyway
            self._report(exc, "leaving the presence store failed")

    # -- persistence ---------------------------------------------------------------------

    async def _load(self) -> None:
        assert self._persistence is not None
        core = self._require_core()
        try:
            with anyio.fail_after(max(self._sync_timeout, 1.0)):
                state = await self._persistence.load(self.room)
            if state is not None:
                core.load(state)
        except Exception as exc:  # noqa: BLE001  # serve the room from its peers instead
            self._counts["save_failures"] += 1
            self._report(exc, "loading the room failed")

    async def _saver(self) -> None:
        while True:
            await self._changed.wait()
            await anyio.sleep(self._save_interval)
            self._changed = anyio.Event()
            await self._save()

    async def _save(self) -> None:
        assert self._persistence is not None
        core = self._require_core()
        core.changed = False
        try:
            await self._persistence.save(self.room, self._doc.get_update())
        except Exception as exc:  # noqa: BLE001  # retried at the next change
            core.changed = True
            self._changed.set()
            self._counts["save_failures"] += 1
            self._report(exc, "saving the room failed")
        else:
            self._counts["saves"] += 1

    # -- reporting ---------------------------------------------------------------------

    def _report(self, exc: BaseException, what: str | None) -> None:
        error: PodshareError
        if isinstance(exc, PodshareError):
            error = exc
        else:
            error = TransportError(f"{what or 'the bridge failed'}: {exc!r}")
            error.__cause__ = exc
        if what is not None:
            self._log.warning("room %r: %s: %s", self.room, what, exc)
        elif isinstance(error, DecodeError):
            self._log.debug("room %r: dropped a malformed message: %s", self.room, error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:  # noqa: BLE001  # the user's callback: logged, never raised into the bridge
                self._log.exception("room %r: on_error raised", self.room)

    def stats(self) -> BridgeStats:
        """A frozen snapshot of the counters."""
        core = self._require_core()
        counters = core.counters()
        c = self._counts
        return BridgeStats(
            messages_sent=c["messages_sent"],
            bytes_sent=c["bytes_sent"],
            messages_received=counters.messages_received,
            bytes_received=counters.bytes_received,
            updates_sent=counters.updates_sent,
            updates_applied=counters.updates_applied,
            sync_requests_sent=counters.sync_requests_sent,
            sync_answers_sent=counters.sync_answers_sent,
            fragments_sent=counters.fragments_sent,
            fragments_dropped=core.fragments_dropped,
            decode_errors=counters.decode_errors,
            publish_failures=c["publish_failures"],
            subscribe_failures=c["subscribe_failures"],
            resyncs=c["resyncs"],
            gaps=c["gaps"],
            callback_errors=c["callback_errors"],
            saves=c["saves"],
            save_failures=c["save_failures"],
            synced_by_timeout=self._synced_by_timeout,
        )

    def __repr__(self) -> str:
        return f"RoomBridge(room={self.room!r}, node_id={self.node_id!r}, state={self._state})"


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, not {value!r}"
        )


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive int of bytes, not {value!r}")
