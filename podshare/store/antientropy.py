"""The driver side of sync for a `Store`: waiting for exchanges, `refresh()`'s tries,
the periodic anti-entropy round and the repair after a transport gap.

The replica core runs the exchanges (`podshare.store.sync`) and says when one it asked
for ended (`Replica.syncs_finished()`); this module waits for those notices. A repair
is an exchange with one peer, then with another if it fails (up to `_REPAIR_PEERS`),
retried with capped, jittered backoff until one completes or a new gap arrives. One
peer, not every live peer: the exchange is bidirectional and the next periodic round
spreads the rest, so a gap costs O(1) exchanges per replica, not O(fleet).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import anyio

from podshare.store.replica import Replica
from podshare.store.sync import SyncFinished

__all__ = ["AntiEntropy"]

# A gap's repair retries with backoff from this delay up to this cap (seconds).
_RETRY_MIN = 0.1
_RETRY_MAX = 5.0
# Exchanges a gap's repair (or a refresh) tries before waiting for the next round.
_REPAIR_PEERS = 3


class _SyncWaiter:
    """Someone waiting for an exchange with one peer to end, and how it ended."""

    __slots__ = ("event", "ok")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.ok = False


class AntiEntropy:
    """Exchanges asked for by one open store, and the tasks that ask for them.

    Args:
        replica: the store's replica.
        name: the store's name (for log lines).
        interval: seconds between two periodic exchanges (jittered by 10%).
        hello_window_ms: with nobody to ask, the wait before giving up an attempt.
        after: drains the replica's outputs (the store's ``_after``).
        log: the store's logger.
    """

    __slots__ = (
        "_after",
        "_gap_event",
        "_hello_window",
        "_interval",
        "_log",
        "_name",
        "_replica",
        "_waiters",
    )

    def __init__(
        self,
        replica: Replica[Any],
        *,
        name: str,
        interval: float,
        hello_window_ms: int,
        after: Callable[[], None],
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._replica = replica
        self._name = name
        self._interval = interval
        self._hello_window = hello_window_ms / 1000
        self._after = after
        self._log = log
        self._gap_event = anyio.Event()
        self._waiters: dict[str, list[_SyncWaiter]] = {}

    async def refresh(self, give_up_after: float) -> None:
        """Until one exchange completed (up to `_REPAIR_PEERS` tries), at most
        ``give_up_after`` seconds."""
        with anyio.move_on_after(give_up_after):
            for _ in range(_REPAIR_PEERS):
                if await self.sync_once():
                    return
        self._log.debug("store %r: refresh did not complete in time", self._name)

    async def sync_once(self, peer: str | None = None) -> bool:
        """One exchange (with ``peer`` or the best one); True when it completed."""
        replica = self._replica
        asked = replica.request_sync(_now_ms(), peer=peer)
        self._after()
        if asked is None:
            running = [x.peer for x in replica.sync]
            if not running:
                # Nobody to ask yet: give peers a hello window to show up, then report it.
                await anyio.sleep(self._hello_window)
                return False
            asked = running[0]
        waiter = _SyncWaiter()
        self._waiters.setdefault(asked, []).append(waiter)
        await waiter.event.wait()
        return waiter.ok

    def finished(self, notices: list[SyncFinished]) -> None:
        """Wake whoever waits for these exchanges (from the replica's outputs)."""
        for notice in notices:
            for waiter in self._waiters.pop(notice.peer, ()):
                waiter.ok = notice.ok
                waiter.event.set()

    def gap(self) -> None:
        """The transport reported a gap: repair soon."""
        # Always the current event: a gap during a repair schedules another repair.
        self._gap_event.set()

    def close(self) -> None:
        """The store closed: wake every waiter (their exchange did not complete)."""
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()
        self._waiters.clear()

    async def run(self) -> None:
        """One exchange every ``interval``; after each transport gap, a repair."""
        interval = self._interval
        backoff = _RETRY_MIN
        repairing = False
        replica = self._replica
        while True:
            # Jitter keeps a fleet started together from refreshing in lockstep.
            wait = min(backoff, interval) if repairing else interval * random.uniform(0.9, 1.1)
            with anyio.move_on_after(wait):
                await self._gap_event.wait()
            if self._gap_event.is_set():
                self._gap_event = anyio.Event()
                self._log.info("store %r: transport reported a gap; repairing", self._name)
                repairing, backoff = True, _RETRY_MIN
            if not repairing:
                await self.sync_once()
                continue
            done = False
            for _ in range(_REPAIR_PEERS):
                if await self.sync_once():
                    done = True
                    break
            if done or not replica.members() - {replica.node_id}:
                repairing = False
            else:
                backoff = min(2 * backoff, _RETRY_MAX) * random.uniform(0.5, 1.0)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
