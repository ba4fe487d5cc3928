"""CRDT values: hybrid logical clock stamps, the Merger protocol, LWW, GSet, PNCounter, ORSet.

Pure value types: no I/O, no anyio. Every built-in type is immutable (mutators return a
new value), has an empty value ``cls()``, a ``merge`` that is commutative, associative
and idempotent, a canonical ``to_wire()`` form of msgpack-able builtins, a strict
``from_wire()`` that raises [`DecodeError`][podshare.DecodeError] for malformed
input, and ``delta_from(old)`` for shipping only a change.

Set elements (``GSet``, ``ORSet``) are ``None``, ``int``, ``str``, ``bytes`` or tuples of
those; ``bool`` and ``float`` are refused with [`InvalidValue`][podshare.InvalidValue],
because Python treats ``True == 1`` and ``0.0 == -0.0`` while their encodings differ.

``YDoc`` (extra ``yjs``) holds a Yjs document (pycrdt); it is imported on first use, so
this package works without pycrdt installed.

Example:
    >>> from podshare.crdt import ORSet, PNCounter
    >>> online = ORSet().add("alice", "pod-1").add("bob", "pod-2")
    >>> sorted(online.remove("bob"))
    ['alice']
    >>> PNCounter().increment("pod-1", 3).decrement("pod-2").value
    2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from podshare.crdt.clock import HLC as HLC
from podshare.crdt.clock import Stamp as Stamp
from podshare.crdt.gset import GSet as GSet
from podshare.crdt.merger import LWW as LWW
from podshare.crdt.merger import FunctionMerger as FunctionMerger
from podshare.crdt.merger import Merger as Merger
from podshare.crdt.merger import SelfMerger as SelfMerger
from podshare.crdt.merger import as_merger as as_merger
from podshare.crdt.merger import merger_for as merger_for
from podshare.crdt.orset import ORSet as ORSet
from podshare.crdt.pncounter import PNCounter as PNCounter

if TYPE_CHECKING:
    from podshare.crdt.ydoc import YDoc as YDoc

__all__ = [
    "HLC",
    "LWW",
    "FunctionMerger",
    "GSet",
    "Merger",
    "ORSet",
    "PNCounter",
    "SelfMerger",
    "Stamp",
    "YDoc",
    "as_merger",
    "merger_for",
]


def __getattr__(name: str) -> Any:
    # YDoc needs pycrdt (the ``yjs`` extra): imported on first use, so that
    # ``import podshare.crdt`` works without it.
    if name == "YDoc":
        from podshare.crdt.ydoc import YDoc

        return YDoc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
