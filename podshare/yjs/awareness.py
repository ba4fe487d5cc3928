"""Awareness (cursors, selections, who is here) shared by the pods of a room.

Yjs editors publish their users' presence with the y-protocols *awareness* protocol:
each client has a state (JSON) and a clock it bumps on every change and every 15 s, and
peers drop a client they have not heard from for 30 s. A server pod only sees its own
clients; `AwarenessBridge` carries the rest.

Each pod keeps its local clients' states in a shared podshare
[`Store`][podshare.Store] as *ephemeral* entries (``a:{topic}#{client}@{node}`` →
``[clock, state]``), so:

- a state set on one pod reaches the others' ``pycrdt.Awareness`` (and, through
  ``forward``, their clients) within the store's latency;
- a client that leaves is removed everywhere (its pod deletes the entry);
- when a pod dies, the store removes its entries on every replica once the pod is down
  (the store's ``down_after``), and every other pod tells its clients those users left.
  No liveness protocol of its own: the store's is used.

Other pods' states are applied to the local ``Awareness`` with this bridge as the
origin, so they are not written back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import pycrdt

from podshare.exceptions import ClosedError, DecodeError, PodshareError
from podshare.store.events import Event, EventKind
from podshare.yjs._protocol import (
    MAX_STATE_SIZE,
    AwarenessEntry,
    awareness_message,
    encode_awareness,
)

if TYPE_CHECKING:
    from podshare.store.store import Store

__all__ = ["AwarenessBridge", "awareness_key_prefix"]

_WRITE_TIMEOUT = 5.0


def awareness_key_prefix(topic: str) -> str:
    """The store key prefix of a room's awareness entries (``a:{topic}#``)."""
    return f"a:{topic}#"


def _state_json(state: Any) -> str:
    # ASCII-only JSON: pycrdt measures awareness strings in characters, lib0 in bytes;
    # for ASCII they agree.
    return json.dumps(state, separators=(",", ":"))


class AwarenessBridge:
    """Share ``awareness``'s client states with the same room on the other pods.

    Args:
        awareness: the room's ``pycrdt.Awareness`` (pycrdt-websocket's ``YRoom.awareness``).
        store: an open ``Store`` shared by the pods (the presence store).
        topic: the room's topic ([`room_topic`][podshare.yjs.room_topic]).
        forward: called with a y-protocols awareness message for this pod's clients
            whenever another pod's client changed or left.
        on_error: called with each [`PodshareError`][podshare.exceptions.PodshareError] met in the
            background (a failed write is reported once per outage).
        logger: a stdlib logger (default ``podshare.yjs``).

    The server's own awareness state (``awareness.client_id``) is not shared.
    """

    def __init__(
        self,
        awareness: pycrdt.Awareness,
        store: Store[Any],
        topic: str,
        *,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
        on_error: Callable[[PodshareError], object] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._awareness = awareness
        self._store = store
        self._prefix = awareness_key_prefix(topic)
        self._forward = forward
        self._on_error = on_error
        self._log = logger if logger is not None else logging.getLogger("podshare.yjs")
        self._dirty: dict[int, tuple[int, str] | None] = {}
        self._wake = anyio.Event()
        self._mine: set[int] = set()
        self._remote: dict[int, set[str]] = {}
        self._subscription: str | None = None
        self._stack: AsyncExitStack | None = None
        self._failing = False
        #: Local client states written to the store.
        self.states_shared = 0
        #: Other pods' client states applied (and forwarded).
        self.states_received = 0
        #: Other pods' clients removed (they left, or their pod went down).
        self.clients_removed = 0
        #: Store writes that failed.
        self.write_failures = 0

    async def __aenter__(self) -> Self:
        stack = AsyncExitStack()
        try:
            self._subscription = self._awareness.observe(self._on_change)
            stack.callback(self._unobserve)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._writer)
            await tg.start(self._watcher)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                for client in sorted(self._mine):
                    self._dirty[client] = None
                await self._write_dirty()
        finally:
            await stack.aclose()

    def _unobserve(self) -> None:
        if self._subscription is not None:
            self._awareness.unobserve(self._subscription)
            self._subscription = None

    def _key(self, client: int) -> str:
        return f"{self._prefix}{client}@{self._store.node_id}"

    # -- this pod's clients -> the store ---------------------------------------------

    def _on_change(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        changes, origin = change
        if topic != "update" or origin is self:
            return
        try:
            own = self._awareness.client_id
            for client in (*changes.get("added", ()), *changes.get("updated", ())):
                state = self._awareness.states.get(client)
                if client == own or state is None:
                    continue
                clock = int(self._awareness.meta[client]["clock"])
                self._dirty[client] = (clock, _state_json(state))
            for client in changes.get("removed", ()):
                if client in self._mine or client in self._dirty:
                    self._dirty[client] = None
            if self._dirty:
                self._wake.set()
        except Exception:  # noqa: BLE001  # an awareness observer must not raise into pycrdt's loop
            self._log.exception("awareness: recording a change failed")

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._write_dirty()

    async def _write_dirty(self) -> None:
        dirty, self._dirty = self._dirty, {}
        for client, entry in dirty.items():
            key = self._key(client)
            try:
                # Shielded, and short: a room closing right after its last client left
                # must still tell the other pods that the client is gone.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_WRITE_TIMEOUT):
                    if entry is None:
                        if client in self._mine:
                            await self._store.delete(key)
                            self._mine.discard(client)
                        continue
                    clock, state = entry
                    if len(state) > MAX_STATE_SIZE:
                        error = DecodeError(f"awareness state of client {client} is too large")
                        self._report(error)
                        continue
                    self._mine.add(client)
                    await self._store.set(key, [clock, state], ephemeral=True)
                    self.states_shared += 1
            except ClosedError:
                return
            except Exception as exc:  # noqa: BLE001  # the local write stands; the store repairs peers
                self.write_failures += 1
                if not self._failing:
                    self._failing = True
                    self._report(exc)
                continue
            self._failing = False

    # -- the store -> this pod's awareness and clients -------------------------------

    async def _watcher(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        started = False
        while True:
            try:
                async with self._store.watch(prefix=self._prefix, buffer=1024) as events:
                    await self._reconcile()
                    if not started:
                        started = True
                        task_status.started()
                    async for event in events:
                        await self._on_event(event)
            except ClosedError:
                self._log.debug("awareness: the presence store is closed")
                if not started:
                    task_status.started()
                await anyio.sleep_forever()
            except Exception:  # noqa: BLE001  # logged; watched again below, never raised to the room
                self._log.exception("awareness: watching the presence store failed")
            # The watcher was dropped (a full buffer) or failed: watch again and
            # reconcile from the store's current entries.
            await anyio.sleep(0.05)

    def _parse_key(self, key: str) -> tuple[int, str] | None:
        rest = key[len(self._prefix) :]
        client, sep, node = rest.partition("@")
        if not sep or not client.isdigit():
            return None
        return int(client), node

    async def _reconcile(self) -> None:
        present: dict[int, set[str]] = {}
        entries: list[tuple[str, Any]] = []
        for key, value in self._store.items():
            if not key.startswith(self._prefix):
                continue
            parsed = self._parse_key(key)
            if parsed is None or parsed[1] == self._store.node_id:
                continue
            present.setdefault(parsed[0], set()).add(key)
            entries.append((key, value))
        for client in set(self._remote) - set(present):
            self._remote[client] = set()
            await self._removed(client)
        for key, value in entries:
            await self._apply_remote(key, value)

    async def _on_event(self, event: Event[Any]) -> None:
        parsed = self._parse_key(event.key)
        if parsed is None or parsed[1] == self._store.node_id:
            return
        client, _ = parsed
        if event.kind is EventKind.SET:
            await self._apply_remote(event.key, event.value)
        elif event.kind is EventKind.DELETE:
            keys = self._remote.get(client)
            if keys is None:
                return
            keys.discard(event.key)
            if not keys:
                await self._removed(client)

    async def _apply_remote(self, key: str, value: Any) -> None:
        parsed = self._parse_key(key)
        if parsed is None:
            return
        client, _ = parsed
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], int)
            or not isinstance(value[1], str)
            or not 0 <= value[0] < 2**53
            or len(value[1]) > MAX_STATE_SIZE
        ):
            self._report(DecodeError(f"a malformed awareness entry under {key!r}"))
            return
        try:
            json.loads(value[1])
        except ValueError:
            self._report(DecodeError(f"an awareness state that is not JSON under {key!r}"))
            return
        self._remote.setdefault(client, set()).add(key)
        update = encode_awareness([AwarenessEntry(client, value[0], value[1])])
        self._awareness.apply_awareness_update(update, self)
        self.states_received += 1
        await self._send(update)

    async def _removed(self, client: int) -> None:
        self._remote.pop(client, None)
        meta = self._awareness.meta.get(client)
        if client not in self._awareness.states or meta is None:
            return
        self._awareness.remove_awareness_states([client], self)
        self.clients_removed += 1
        # Same clock, state null: what y-websocket's own server sends for a client gone.
        await self._send(encode_awareness([AwarenessEntry(client, int(meta["clock"]), "null")]))

    async def _send(self, update: bytes) -> None:
        if self._forward is None:
            return
        try:
            await self._forward(awareness_message(update))
        except Exception:  # noqa: BLE001  # the forwarder's own failure: logged, never raised
            self._log.exception("awareness: forwarding to this pod's clients failed")

    def _report(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, PodshareError) else PodshareError(repr(exc))
        self._log.warning("awareness: %s", error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:  # noqa: BLE001  # the user's callback: logged, never raised into the bridge
                self._log.exception("awareness: on_error raised")
