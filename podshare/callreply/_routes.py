"""The route table an Endpoint consults: which node owns each target, and who is alive.

`RouteTable` is the small contract the endpoint needs; `StoreRoutes`
implements it on a podshare ``Store`` of ephemeral entries ``target -> owner node id``,
so a route disappears from every replica when its owner goes down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from anyio.abc import TaskStatus

from podshare.exceptions import PodshareError

__all__ = ["RouteTable"]


class RouteTable(Protocol):
    """What an endpoint needs from its route table (all reads are local and synchronous)."""

    def owner(self, target: str) -> str | None:
        """The node that owns ``target`` as this replica sees it, or ``None``."""
        ...

    def is_alive(self, node_id: str) -> bool:
        """Whether ``node_id`` is currently a live member."""
        ...

    def members(self) -> frozenset[str]:
        """The live nodes, this one included."""
        ...

    def snapshot(self) -> dict[str, str]:
        """Every route as this replica sees it: ``{target: owner}``."""
        ...

    async def claim(self, target: str) -> None:
        """Make this node the owner of ``target`` (the newest claim wins)."""
        ...

    async def release(self, target: str) -> None:
        """Remove the route to ``target`` only while this node still owns it."""
        ...

    async def run(
        self,
        on_down: Callable[[str], None],
        on_reclaim_failed: Callable[[str, PodshareError], None],
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Follow membership until cancelled, calling ``on_down(node_id)`` for each node
        that goes down and ``on_reclaim_failed(target, error)`` for each route it could
        not claim again in the background; ``task_status.started()`` once it is
        following."""
        ...
