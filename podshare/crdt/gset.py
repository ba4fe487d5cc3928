"""GSet: a grow-only set, the simplest CRDT (merge is union)."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from podshare.crdt import _wire

__all__ = ["GSet"]

T = TypeVar("T")


class GSet(Generic[T]):
    """An immutable grow-only set; ``merge`` is union, so it never forgets an element.

    Elements are ``None``, ``int``, ``str``, ``bytes`` or tuples of those (``bool`` and
    ``float`` are refused: see [`podshare.crdt`][podshare.crdt]). ``add`` returns a new set.

    Example:
        >>> tags = GSet(["red"]).add("blue")
        >>> "blue" in tags, len(tags)
        (True, 2)
        >>> tags.merge(GSet(["green"]))
        GSet(['blue', 'green', 'red'])
        >>> tags.to_wire()
        {'e': ['blue', 'red']}
        >>> GSet.from_wire({"e": ["blue", "red"]}) == tags
        True
    """

    __slots__ = ("__weakref__", "_base", "_delta", "_items")

    _items: frozenset[T]
    _base: weakref.ref[GSet[T]] | None
    _delta: GSet[T] | None

    def __init__(self, items: Iterable[T] = ()) -> None:
        values = list(items)
        for x in values:
            _wire.check_element(x)
        self._items = frozenset(values)
        self._base = None
        self._delta = None

    @classmethod
    def _make(cls, items: frozenset[Any]) -> GSet[Any]:
        new: GSet[Any] = object.__new__(cls)
        new._items = items
        new._base = None
        new._delta = None
        return new

    def add(self, x: T) -> GSet[T]:
        """Return this set with ``x`` added (this set itself if ``x`` is already in it).

        Raises:
            InvalidValue: ``x`` is not a supported element.
        """
        _wire.check_element(x)
        if x in self._items:
            return self
        new = self._make(self._items | {x})
        new._base = weakref.ref(self)
        new._delta = self._make(frozenset((x,)))
        return new

    def merge(self, other: GSet[T]) -> GSet[T]:
        """Return the union of both sets."""
        if other._items <= self._items:
            return self
        if self._items <= other._items:
            return other
        return self._make(self._items | other._items)

    def delta_from(self, old: GSet[T]) -> GSet[T]:
        """Return the elements of this set missing from ``old``: ``old.merge(d) == self``.

        O(1) when this set is ``old.add(x)``; a set difference otherwise.

        Example:
            >>> big = GSet(range(1000))
            >>> big.add(-1).delta_from(big)
            GSet([-1])
        """
        if old is self:
            return self._make(frozenset())
        if self._base is not None and self._base() is old and self._delta is not None:
            return self._delta
        return self._make(self._items - old._items)

    def to_wire(self) -> dict[str, Any]:
        """Return ``{"e": [elements sorted by their msgpack encoding]}`` (canonical)."""
        return {"e": sorted(self._items, key=_wire.sort_key)}

    @classmethod
    def from_wire(cls, data: object) -> GSet[Any]:
        """Decode [`to_wire()`][podshare.crdt.GSet.to_wire]'s form; unknown keys are ignored.

        Raises:
            DecodeError: malformed input.
        """
        fields = _wire.dict_from_wire(data, "GSet")
        raw = _wire.list_from_wire(fields.get("e", []), "GSet elements")
        return cls._make(frozenset(_wire.element_from_wire(x) for x in raw))

    def __contains__(self, x: object) -> bool:
        return x in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GSet):
            return NotImplemented
        return self._items == other._items

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        if not self._items:
            return "GSet()"
        return f"GSet({sorted(self._items, key=_wire.sort_key)!r})"
