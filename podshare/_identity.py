"""One node identity per process, shared by every Store and Endpoint.

A process is one node: by default every store and endpoint in it uses
`default_node_id()` — ``PODSHARE_NODE_ID`` when set (read each time a store is
built, so tests and launchers may set it late), else the host (or pod) name and the
process id. Liveness, presence and routes then appear under one name per pod.

A second replica of the *same store name* opened in the same process without an
explicit ``node_id`` (two ``Store("app", tr)`` on one in-memory transport, the usual
in-process test) gets a derived id, ``{base}~2``, ``{base}~3``..., so it is a distinct
replica. `reserve()` hands those out and takes them back when the replica closes.

Example:
    >>> import os
    >>> os.environ["PODSHARE_NODE_ID"] = "pod-7"
    >>> first = reserve("demo", None)
    >>> second = reserve("demo", None)
    >>> first.node_id, second.node_id
    ('pod-7', 'pod-7~2')
    >>> first.release(); second.release()
    >>> del os.environ["PODSHARE_NODE_ID"]
"""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import Final

from podshare._limits import MAX_NODE_ID_LENGTH, check_name

__all__ = ["ENV_NODE_ID", "Reservation", "default_node_id", "reserve"]

#: The environment variable naming this process's node id.
ENV_NODE_ID: Final = "PODSHARE_NODE_ID"

_lock = threading.Lock()
# store name -> node ids held by open replicas of it in this process
_held: dict[str, dict[str, int]] = {}


def default_node_id() -> str:
    """This process's node id: ``$PODSHARE_NODE_ID``, else ``{hostname}-{pid}``.

    Raises:
        ConfigurationError: ``PODSHARE_NODE_ID`` is set to an invalid id.
    """
    env = os.environ.get(ENV_NODE_ID)
    if env:
        return check_name(env, ENV_NODE_ID, MAX_NODE_ID_LENGTH)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "node"
    return f"{host}-{os.getpid()}"


class Reservation:
    """A node id held for one open replica of one store; `release()` gives it back."""

    __slots__ = ("_released", "name", "node_id")

    def __init__(self, name: str, node_id: str) -> None:
        self.name = name
        self.node_id = node_id
        self._released = False

    def release(self) -> None:
        """Give the id back (idempotent)."""
        if self._released:
            return
        self._released = True
        with _lock:
            held = _held.get(self.name)
            if held is None:
                return
            count = held.get(self.node_id, 0) - 1
            if count > 0:
                held[self.node_id] = count
            else:
                held.pop(self.node_id, None)
            if not held:
                del _held[self.name]


def reserve(name: str, node_id: str | None) -> Reservation:
    """Hold a node id for a replica of store ``name`` (see the module docstring).

    An explicit ``node_id`` is used as it is (two replicas given the same id are the
    user's choice; liveness reports it as a duplicate if both run).
    """
    with _lock:
        held = _held.setdefault(name, {})
        if node_id is None:
            base = default_node_id()
            node_id = base
            n = 1
            while node_id in held:
                n += 1
                node_id = f"{base}~{n}"
        held[node_id] = held.get(node_id, 0) + 1
        return Reservation(name, node_id)
