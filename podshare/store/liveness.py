"""The anyio driver of liveness: one stream per process and transport, shared by its stores.

Every [`Store`][podshare.Store] (and callreply endpoint, whose route table is a store)
that a process opens on one transport with one node id attaches to the same
`LivenessAgent`: one `Membership` core, one
subscription to the liveness topics, one ticker, one beacon however many stores there
are. The agent owns no task group of its own: its tasks run in the task group of one
attached store, its *host*. When the host closes, the next attached store hosts it;
when the last one closes, the agent says goodbye (a `Bye`)
and goes away. So nothing outlives the stores that use it, and structured concurrency
holds.

Liveness options (heartbeat interval, down-after) belong to the agent: the first store
opened on a transport sets them, and a later store asking for others is told so in a
log line (its own options still apply to everything but liveness).
"""

from __future__ import annotations

import logging
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from podshare.exceptions import PodshareError
from podshare.store import wire
from podshare.store.membership import LIVE_TOPIC, LivenessOptions, MemberEvent, Membership, inbox_of
from podshare.transport.base import EchoSkipping, GapReporting, Transport, max_message_size

__all__ = ["LivenessAgent", "LivenessUser", "agent_for"]

_log = logging.getLogger("podshare.liveness")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LivenessUser(Protocol):
    """What the agent needs from a store attached to it."""

    def _member_event(self, event: MemberEvent) -> None: ...

    def _liveness_error(self, error: PodshareError) -> None: ...

    def _host_task(self, fn: Callable[..., Any], name: str) -> bool: ...


# transport -> node id -> agent
_agents: weakref.WeakKeyDictionary[Any, dict[str, LivenessAgent]] = weakref.WeakKeyDictionary()


def agent_for(transport: Transport, node_id: str, options: LivenessOptions) -> LivenessAgent:
    """The agent of ``(transport, node_id)``, made on first use."""
    try:
        by_node = _agents.setdefault(transport, {})
    except TypeError:  # a transport that cannot be weakly referenced: one agent per store
        return LivenessAgent(transport, node_id, options, registered=False)
    agent = by_node.get(node_id)
    if agent is None or agent.closed:
        agent = by_node[node_id] = LivenessAgent(transport, node_id, options)
    elif agent.options != options:
        _log.info(
            "node %r: liveness options %s are set by the first store on this transport "
            "(%s); a later store's differ and are not used for liveness",
            node_id,
            agent.options,
            options,
        )
    return agent


class LivenessAgent:
    """The liveness stream of one node id on one transport (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        node_id: str,
        options: LivenessOptions,
        *,
        registered: bool = True,
    ) -> None:
        self.transport = transport
        self.node_id = node_id
        self.options = options
        self.nonce = secrets.randbits(63)
        self.closed = False
        self._registered = registered
        self._users: list[LivenessUser] = []
        self._host: LivenessUser | None = None
        self._scope: anyio.CancelScope | None = None
        self._wake = anyio.Event()
        self._ready = anyio.Event()
        self._outbox: list[tuple[str | None, bytes]] = []
        self._remove_gap: Callable[[], None] | None = None
        self.membership = Membership(
            node_id,
            self.nonce,
            token=secrets.token_bytes(16),
            options=options,
            now=_now_ms(),
            max_message_size=max_message_size(transport),
        )
        #: Messages published and failed (stats).
        self.messages_sent = 0
        self.publish_errors = 0

    # --- users -----------------------------------------------------------------------

    @property
    def users(self) -> int:
        """How many stores are attached."""
        return len(self._users)

    async def attach(self, user: LivenessUser) -> None:
        """Attach a store; the first one hosts the agent's tasks. Returns once the
        liveness topics are subscribed."""
        self._users.append(user)
        if self._host is None:
            self._start_host()
            if self._remove_gap is None and isinstance(self.transport, GapReporting):
                self._remove_gap = self.transport.add_gap_listener(self._on_gap)
        with anyio.move_on_after(10):
            await self._ready.wait()

    def detach(self, user: LivenessUser) -> bool:
        """Detach a store; returns True when it was the last (the agent then says goodbye:
        the caller publishes `goodbye()`'s message)."""
        if user in self._users:
            self._users.remove(user)
        if self._host is user:
            self._host = None
            if self._scope is not None:
                self._scope.cancel()
                self._scope = None
            if self._users:
                self._ready = anyio.Event()
                self._start_host()
        if self._users:
            return False
        self.closed = True
        if self._remove_gap is not None:
            self._remove_gap()
            self._remove_gap = None
        if self._registered:
            by_node = _agents.get(self.transport)
            if by_node is not None and by_node.get(self.node_id) is self:
                del by_node[self.node_id]
        return True

    def goodbye(self) -> list[tuple[str | None, bytes]]:
        """The goodbye to publish once the last store detached."""
        self.membership.leave(_now_ms())
        return self.membership.data_to_send()

    def _start_host(self) -> None:
        for user in list(self._users):
            if user._host_task(self._run, f"podshare liveness {self.node_id}"):
                self._host = user
                return

    # --- the tasks (run in the host store's task group) --------------------------------

    async def _run(self) -> None:
        scope = anyio.CancelScope()
        self._scope = scope
        with scope:
            transport = self.transport
            broadcast_subscription = (
                transport.subscribe_skipping(
                    LIVE_TOPIC,
                    prefix=wire.echo_prefix(self.node_id, self.nonce),
                    offset=wire.ECHO_OFFSET,
                )
                if isinstance(transport, EchoSkipping)
                else transport.subscribe(LIVE_TOPIC)
            )
            async with (
                broadcast_subscription as broadcast,
                transport.subscribe(inbox_of(self.node_id)) as inbox,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(self._read, broadcast)
                tg.start_soon(self._read, inbox)
                tg.start_soon(self._publisher)
                self._ready.set()
                self._after(_now_ms())
                await self._ticker()

    async def _read(self, messages: Any) -> None:
        membership = self.membership
        async for data in messages:
            now = _now_ms()
            membership.receive(data, now)
            self._after(now)

    async def _ticker(self) -> None:
        membership = self.membership
        while True:
            delay = (membership.next_deadline() - _now_ms()) / 1000
            if delay > 0:
                await anyio.sleep(delay)
            else:
                # Never a loop without a checkpoint: a core whose deadline did not move
                # (it left, say) must not starve the event loop and its cancellation.
                await anyio.lowlevel.checkpoint()
            now = _now_ms()
            membership.tick(now)
            self._after(now)

    async def _publisher(self) -> None:
        transport = self.transport
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            out, self._outbox = self._outbox, []
            for to, data in out:
                topic = LIVE_TOPIC if to is None else inbox_of(to)
                try:
                    await transport.publish(topic, data)
                except PodshareError as exc:
                    self.publish_errors += 1
                    _log.debug("node %r: liveness publish failed: %s", self.node_id, exc)
                except Exception as exc:  # noqa: BLE001  # a user's transport: counted, logged, not fatal
                    self.publish_errors += 1
                    _log.debug("node %r: liveness publish failed: %r", self.node_id, exc)
                else:
                    self.messages_sent += 1

    def _after(self, _now: int) -> None:
        membership = self.membership
        out = membership.data_to_send()
        if out:
            self._outbox.extend(out)
            self._wake.set()
        for event in membership.events_received():
            for user in list(self._users):
                user._member_event(event)
        for error in membership.errors_received():
            for user in list(self._users):
                user._liveness_error(error)

    def _on_gap(self) -> None:
        self.membership.gap(_now_ms())
        self._after(_now_ms())
