"""PNCounter: a counter that can go up and down, merged per node."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from podshare.crdt import _wire

__all__ = ["PNCounter"]


def _join(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for node, n in b.items():
        if n > out.get(node, 0):
            out[node] = n
    return out


def _above(new: Mapping[str, int], old: Mapping[str, int]) -> dict[str, int]:
    return {node: n for node, n in new.items() if n > old.get(node, 0)}


class PNCounter:
    """An immutable counter: each node's increments and decrements are totals of its own.

    ``merge`` takes, per node, the larger increment total and the larger decrement total,
    so re-delivering a state never counts twice. ``value`` is all increments minus all
    decrements.

    Example:
        >>> a = PNCounter().increment("pod-a", 5)
        >>> b = PNCounter().increment("pod-b").decrement("pod-b", 3)
        >>> a.merge(b).value
        3
        >>> a.merge(b).merge(b).value       # duplicates do not double-count
        3
        >>> a.merge(b).to_wire()
        {'n': {'pod-b': 3}, 'p': {'pod-a': 5, 'pod-b': 1}}
    """

    __slots__ = ("__weakref__", "_base", "_delta", "_n", "_p")

    _p: dict[str, int]
    _n: dict[str, int]
    _base: weakref.ref[PNCounter] | None
    _delta: PNCounter | None

    def __init__(self) -> None:
        self._p = {}
        self._n = {}
        self._base = None
        self._delta = None

    @classmethod
    def _make(cls, p: dict[str, int], n: dict[str, int]) -> PNCounter:
        new = object.__new__(cls)
        new._p = p
        new._n = n
        new._base = None
        new._delta = None
        return new

    @property
    def value(self) -> int:
        """The count: all increments minus all decrements."""
        return sum(self._p.values()) - sum(self._n.values())

    @property
    def increments(self) -> Mapping[str, int]:
        """Each node's increment total (a read-only view)."""
        return MappingProxyType(self._p)

    @property
    def decrements(self) -> Mapping[str, int]:
        """Each node's decrement total (a read-only view)."""
        return MappingProxyType(self._n)

    def increment(self, node: str, n: int = 1) -> PNCounter:
        """Return this counter increased by ``n`` on behalf of ``node``.

        Raises:
            InvalidValue: ``node`` is not a non-empty str, or ``n`` is not a positive int.

        Example:
            >>> PNCounter().increment("a", 2).increment("a").value
            3
        """
        _wire.check_node(node)
        _wire.check_amount(n)
        total = _wire.check_total(self._p.get(node, 0) + n)
        new = self._make({**self._p, node: total}, self._n)
        new._base = weakref.ref(self)
        new._delta = self._make({node: total}, {})
        return new

    def decrement(self, node: str, n: int = 1) -> PNCounter:
        """Return this counter decreased by ``n`` on behalf of ``node``.

        Raises:
            InvalidValue: ``node`` is not a non-empty str, or ``n`` is not a positive int.

        Example:
            >>> PNCounter().decrement("a", 2).value
            -2
        """
        _wire.check_node(node)
        _wire.check_amount(n)
        total = _wire.check_total(self._n.get(node, 0) + n)
        new = self._make(self._p, {**self._n, node: total})
        new._base = weakref.ref(self)
        new._delta = self._make({}, {node: total})
        return new

    def merge(self, other: PNCounter) -> PNCounter:
        """Return the join: per node, the larger increment and decrement totals."""
        return self._make(_join(self._p, other._p), _join(self._n, other._n))

    def delta_from(self, old: PNCounter) -> PNCounter:
        """Return the per-node totals that grew since ``old``: ``old.merge(d) == self``.

        O(1) when this counter is one ``increment``/``decrement`` of ``old``.

        Example:
            >>> c = PNCounter().increment("a", 4).increment("b")
            >>> c.increment("b").delta_from(c).to_wire()
            {'n': {}, 'p': {'b': 2}}
        """
        if self._base is not None and self._base() is old and self._delta is not None:
            return self._delta
        return self._make(_above(self._p, old._p), _above(self._n, old._n))

    def to_wire(self) -> dict[str, Any]:
        """Return ``{"n": {node: total}, "p": {node: total}}`` with keys sorted (canonical)."""
        return {"n": dict(sorted(self._n.items())), "p": dict(sorted(self._p.items()))}

    @classmethod
    def from_wire(cls, data: object) -> PNCounter:
        """Decode [`to_wire()`][podshare.crdt.PNCounter.to_wire]'s form; unknown keys are ignored.

        Raises:
            DecodeError: malformed input.
        """
        fields = _wire.dict_from_wire(data, "PNCounter")
        totals = []
        for key in ("p", "n"):
            raw = _wire.dict_from_wire(fields.get(key, {}), f"PNCounter {key!r}")
            totals.append(
                {_wire.node_from_wire(k): _wire.count_from_wire(v) for k, v in raw.items()}
            )
        return cls._make(totals[0], totals[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PNCounter):
            return NotImplemented
        return self._p == other._p and self._n == other._n

    def __hash__(self) -> int:
        return hash((frozenset(self._p.items()), frozenset(self._n.items())))

    def __repr__(self) -> str:
        p, n = dict(sorted(self._p.items())), dict(sorted(self._n.items()))
        return f"PNCounter(value={self.value}, p={p}, n={n})"
