"""The driver side of joining for a `Store`: the wait for sync at open, and the
cluster evidence (transport readiness, other subscribers) gathered until synced.

The replica core decides (`podshare.store.hydration`): a synced peer hands its state
over, or the evidence says there is none, or the tie-break starts the cluster's state.
This module feeds it what the transport knows, again with backoff while the replica is
not synced (a slow transport or a growing cluster is weighed again), and asks for the
tie-break once ``2 * max(hydrate_timeout, 1 s)`` passed without a synced answer.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Final

import anyio

from podshare.exceptions import NotSynced, PodshareError
from podshare.store.events import Stats
from podshare.store.replica import Replica
from podshare.transport.base import ClusterReadiness, SubscriberCounting, Transport

__all__ = ["Joining", "local_replicas"]

# Evidence is gathered again with backoff up to this cap (seconds).
_RETRY_MAX: Final = 5.0

# transport -> store name -> replicas of it open in this process on that transport. A
# transport counts other *processes*; replicas sharing it in this one count too.
_local: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def local_replicas(transport: object, name: str, delta: int) -> int:
    """Add ``delta`` to the open replicas of ``name`` on ``transport``; return the count."""
    try:
        by_name = _local.setdefault(transport, {})
    except TypeError:  # not weakly referenceable: unknown
        return 1
    count = by_name.get(name, 0) + delta
    if count > 0:
        by_name[name] = count
    else:
        by_name.pop(name, None)
    return count


class Joining:
    """Brings one opening store's replica to synced.

    Args:
        transport: the store's transport.
        replica: the store's replica.
        name: the store's name.
        topic: the store's broadcast topic (its subscribers are counted).
        hydrate_timeout: the longest `join()` waits (seconds).
        require_sync: `join()` raises `NotSynced` when that passes unsynced.
        tie_after: seconds after which the tie-break is asked for.
        hello_window_ms: the first pause between two rounds of evidence.
        synced: set once the replica is synced (by the store's ``_after``).
        after: drains the replica's outputs (the store's ``_after``).
        start_soon: starts a background task in the store's task group.
        stats: the store's own statistics record (``hydration_seconds``).
        log: the store's logger.
    """

    __slots__ = (
        "_after",
        "_delay",
        "_log",
        "_name",
        "_replica",
        "_require_sync",
        "_start_soon",
        "_stats",
        "_synced",
        "_tie_after",
        "_timeout",
        "_topic",
        "_transport",
    )

    def __init__(
        self,
        transport: Transport,
        replica: Replica[Any],
        *,
        name: str,
        topic: str,
        hydrate_timeout: float,
        require_sync: bool,
        tie_after: float,
        hello_window_ms: int,
        synced: anyio.Event,
        after: Callable[[], None],
        start_soon: Callable[..., Any],
        stats: Stats,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._transport = transport
        self._replica = replica
        self._name = name
        self._topic = topic
        self._timeout = hydrate_timeout
        self._require_sync = require_sync
        self._tie_after = tie_after
        self._delay = hello_window_ms / 1000
        self._synced = synced
        self._after = after
        self._start_soon = start_soon
        self._stats = stats
        self._log = log

    async def join(self) -> None:
        """Weigh the evidence, say hello, and wait (at most ``hydrate_timeout``) for the
        replica to be synced; then go on gathering evidence in the background.

        Raises:
            NotSynced: ``require_sync`` and the replica is not synced in time.
        """
        replica = self._replica
        started = time.perf_counter()
        deadline = anyio.current_time() + self._timeout
        with anyio.move_on_after(self._timeout):
            await self._wait_transport_ready()
        ready = anyio.current_time() < deadline
        others = await self._remote_subscribers(deadline)
        now = _now_ms()
        replica.cluster_evidence(now, ready=ready, others=others)
        replica.hydrate(now)
        self._after()
        if not replica.synced:
            self._start_soon(self._gather_evidence, name=f"podshare {self._name} evidence")
            with anyio.move_on_at(deadline):
                await self._synced.wait()
        elapsed = time.perf_counter() - started
        if replica.synced:
            self._stats.hydration_seconds = elapsed
            self._log.debug(
                "store %r synced in %.3fs (%d keys)", self._name, elapsed, len(replica.values)
            )
            return
        if self._require_sync:
            raise NotSynced(
                f"store {self._name!r} found peers but none handed its state over within "
                f"hydrate_timeout ({self._timeout} s)"
            )
        self._log.warning(
            "store %r is not synced after hydrate_timeout (%s s): serving what it has "
            "(%d keys) and still trying; `synced` stays False until it is",
            self._name,
            self._timeout,
            len(replica.values),
        )

    async def _wait_transport_ready(self) -> None:
        transport = self._transport
        if isinstance(transport, ClusterReadiness):
            await transport.wait_ready()

    async def _remote_subscribers(self, deadline: float) -> int | None:
        transport = self._transport
        if not isinstance(transport, SubscriberCounting):
            return None
        local = local_replicas(transport, self._name, 0) - 1
        with anyio.move_on_at(max(deadline, anyio.current_time() + 0.5)):
            try:
                remote = await transport.remote_subscribers(self._topic)
            except PodshareError as exc:
                self._log.debug("store %r: counting subscribers failed: %s", self._name, exc)
                return None
            return None if remote is None else remote + max(0, local)
        return None

    async def _gather_evidence(self) -> None:
        """Until synced: keep the replica's view of the cluster current (readiness,
        other subscribers), so a slow transport or a growing cluster is weighed again."""
        replica = self._replica
        delay = self._delay
        ready = False
        tie_at = anyio.current_time() + self._tie_after
        while not replica.synced:
            if anyio.current_time() >= tie_at and replica.break_the_tie(_now_ms()):
                self._log.warning(
                    "store %r: no synced replica answered for %.1f s; this one has the "
                    "lowest node id of those it knows and starts the cluster's state",
                    self._name,
                    2 * self._timeout,
                )
                self._after()
                break
            if not ready:
                with anyio.move_on_after(delay):
                    await self._wait_transport_ready()
                    ready = True
            others = await self._remote_subscribers(anyio.current_time() + delay)
            replica.cluster_evidence(_now_ms(), ready=ready, others=others)
            self._after()
            with anyio.move_on_after(delay):
                await self._synced.wait()
            delay = min(2 * delay, _RETRY_MAX)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
