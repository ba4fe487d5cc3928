"""The endpoint's route table on a podshare Store of ephemeral ``target -> node`` entries.

Each route is an ephemeral entry written by its owner, so when the owner goes down
(missed heartbeats, or a clean leave) every replica removes it. The newest claim wins
(last-writer-wins). Releasing deletes the entry only while it still names this node.

A delete by another node can still race with this node's newer claim (that node had not
yet seen it, and its delete carries a later stamp). The route table heals this: a node
that still holds a target and sees its route deleted by someone else claims it again. A
re-claim that fails is handed to the endpoint, which counts and reports it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
from anyio.abc import TaskStatus

from podshare.exceptions import PodshareError
from podshare.store.events import EventKind
from podshare.store.store import Store
from podshare.transport.base import Transport

__all__ = ["StoreRoutes", "open_store_routes", "route_store_name"]

# Membership events must not be lost to a slow reader: a dropped watcher is re-opened
# and reconciled, but a generous buffer makes that rare.
_WATCH_BUFFER: Final = 4096


def route_store_name(namespace: str) -> str:
    """The name of the store holding ``namespace``'s routes."""
    return f"callreply.{namespace}"


class StoreRoutes:
    """A `RouteTable` backed by ``store``."""

    def __init__(self, store: Store[str]) -> None:
        self.store = store
        self._node_id = store.node_id
        # Targets this node registered and still believes it owns: the ones it re-claims
        # when another node's delete erases them.
        self._claimed: set[str] = set()
        self._known_alive: set[str] = set()
        self._reclaim_wanted: set[str] = set()
        self._wake_reclaimer = anyio.Event()

    def owner(self, target: str) -> str | None:
        return self.store.get(target)

    def is_alive(self, node_id: str) -> bool:
        # The set kept from NODE_UP/NODE_DOWN events answers the common case without
        # building members(); a node it does not list yet (its first event is still on
        # the way to our watcher) is looked up in the replica itself. A node the events
        # still list but the replica just declared down is caught by the NODE_DOWN on its
        # way, which fails the call at once.
        return node_id in self._known_alive or node_id in self.store.members()

    def members(self) -> frozenset[str]:
        return self.store.members()

    def snapshot(self) -> dict[str, str]:
        return self.store.snapshot()

    async def claim(self, target: str) -> None:
        self._claimed.add(target)
        await self.store.set(target, self._node_id, ephemeral=True)

    async def release(self, target: str) -> None:
        self._claimed.discard(target)
        self._reclaim_wanted.discard(target)
        if self.store.get(target) == self._node_id:
            await self.store.delete(target)

    async def run(
        self,
        on_down: Callable[[str], None],
        on_reclaim_failed: Callable[[str, PodshareError], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reclaimer, on_reclaim_failed)
            started = False
            while True:
                async with self.store.watch(members=True, buffer=_WATCH_BUFFER) as events:
                    # Whatever happened while no watcher was open is read from the state.
                    self._reconcile(on_down)
                    if not started:
                        task_status.started()
                        started = True
                    async for event in events:
                        self._on_event(event.kind, event.key, event.value, event.origin, on_down)
                # The iterator ended: the watcher was dropped (or the store is closing,
                # in which case the endpoint cancels this task next).
                await anyio.lowlevel.checkpoint()

    def _on_event(
        self,
        kind: EventKind,
        key: str,
        value: Any,
        origin: str,
        on_down: Callable[[str], None],
    ) -> None:
        if kind is EventKind.NODE_DOWN:
            self._known_alive.discard(key)
            on_down(key)
        elif kind is EventKind.NODE_UP:
            self._known_alive.add(key)
        elif key in self._claimed:
            if (
                kind is EventKind.SET
                and value != self._node_id
                and self.store.get(key) != self._node_id
            ):
                # A newer claim elsewhere: the target moved; do not fight over it. An older
                # claim's event still buffered after our own claim landed says nothing:
                # the store (the newest stamp) still names us.
                self._claimed.discard(key)
            elif kind is EventKind.DELETE and origin != self._node_id:
                self._want_reclaim(key)

    def _reconcile(self, on_down: Callable[[str], None]) -> None:
        members = self.store.members()
        for node in self._known_alive - members:
            on_down(node)
        self._known_alive = set(members)
        for target in list(self._claimed):
            current = self.store.get(target)
            if current is None:
                self._want_reclaim(target)
            elif current != self._node_id:
                self._claimed.discard(target)

    def _want_reclaim(self, target: str) -> None:
        self._reclaim_wanted.add(target)
        self._wake_reclaimer.set()

    async def _reclaimer(self, on_reclaim_failed: Callable[[str, PodshareError], None]) -> None:
        while True:
            await self._wake_reclaimer.wait()
            self._wake_reclaimer = anyio.Event()
            while self._reclaim_wanted:
                target = self._reclaim_wanted.pop()
                if target in self._claimed and self.store.get(target) is None:
                    try:
                        await self.store.set(target, self._node_id, ephemeral=True)
                    except PodshareError as exc:
                        # Reported, not retried here: a failed publish leaves the local
                        # write standing and anti-entropy carries it to peers; a refused
                        # write (the store closing) needs nothing more.
                        on_reclaim_failed(target, exc)


@asynccontextmanager
async def open_store_routes(
    transport: Transport,
    node_id: str,
    namespace: str,
    *,
    heartbeat_interval: float | None,
    down_after: float | None,
    **store_options: Any,
) -> AsyncIterator[StoreRoutes]:
    """Open the route store of ``namespace`` on ``transport`` as ``node_id``."""
    if heartbeat_interval is not None:
        store_options["heartbeat_interval"] = heartbeat_interval
    if down_after is not None:
        store_options["down_after"] = down_after
    async with Store[str](
        route_store_name(namespace), transport, node_id=node_id, **store_options
    ) as store:
        yield StoreRoutes(store)
