"""ORSet: an add-wins observed-remove set built on dots and a compact causal context.

Each add tags its element with a fresh *dot* ``(node, counter)``. The set's *causal
context* records every dot it has seen, compactly: a version vector ``{node: n}``
(dots 1..n of each node) plus a *dot cloud* of the dots seen out of order. A remove
drops the element's dots from the entries while they stay in the context, so a merge
knows the element was removed rather than never added; nothing else is kept, so there
is no per-element tombstone. An add concurrent with a remove carries a dot the remove
never saw, so the add wins.

This is the optimized add-wins set of Almeida, Shoker and Baquero, *Delta State
Replicated Data Types* (2018), with deltas: every mutator also yields a small state of
the same type that carries just the change.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from podshare.crdt import _wire

__all__ = ["ORSet"]

T = TypeVar("T")
Dot = tuple[str, int]

_NO_DOTS: frozenset[Dot] = frozenset()
# A diff that would list more dots than this sends the whole state instead.
_MAX_DIFF_DOTS = 65_536


def _covers(vv: Mapping[str, int], cloud: frozenset[Dot], dot: Dot) -> bool:
    return dot[1] <= vv.get(dot[0], 0) or dot in cloud


def _compact(vv: Mapping[str, int], dots: Iterable[Dot]) -> tuple[dict[str, int], frozenset[Dot]]:
    """Fold ``dots`` into a copy of ``vv``; return it and the dots that stay in the cloud.

    The result is canonical (a cloud dot never extends its node's vector contiguously),
    so equal dot sets always have equal ``(vv, cloud)`` and equal wire forms.
    """
    out = dict(vv)
    rest: list[Dot] = []
    # Sorted, so each node's dots arrive in counter order and contiguous runs fold in one pass.
    for dot in sorted(dots):
        node, counter = dot
        seen = out.get(node, 0)
        if counter == seen + 1:
            out[node] = counter
        elif counter > seen:
            rest.append(dot)
    # Later dots of a node have higher counters, so they never fill a gap kept in ``rest``.
    return out, frozenset(rest) if rest else _NO_DOTS


def _context_size(s: ORSet[Any]) -> int:
    return sum(s._vv.values()) + len(s._cloud)


def _context_dots(s: ORSet[Any]) -> Iterator[Dot]:
    for node, top in s._vv.items():
        for counter in range(1, top + 1):
            yield (node, counter)
    yield from s._cloud


class ORSet(Generic[T]):
    """An immutable add-wins observed-remove set; mutators return a new set.

    ``add(x, node)`` needs the id of the node making the change, to mint a unique dot;
    a node must derive each change from its latest state (as ``Store.update`` does).
    ``remove(x)`` removes only the adds this replica has seen: an add made concurrently
    elsewhere survives the merge. Elements are ``None``, ``int``, ``str``, ``bytes`` or
    tuples of those.

    Equality compares the whole state (elements, their dots and the causal context):
    two sets with the same elements but different histories are different states, and
    merging brings them together. Compare ``set(a) == set(b)`` for the elements alone.

    Example:
        >>> a = ORSet().add("x", "pod-a")
        >>> b = a                                  # pod-b has seen pod-a's add of "x"
        >>> a2 = a.add("x", "pod-a")               # pod-a adds "x" again...
        >>> b2 = b.remove("x")                     # ...while pod-b removes it
        >>> "x" in a2.merge(b2), "x" in b2.merge(a2)     # add wins
        (True, True)
        >>> "x" in b2.merge(a)                     # a remove after the add it saw wins
        False
        >>> len(a2.add("y", "pod-b").add("y", "pod-b").delta_from(a2).to_wire()["e"])
        1
    """

    __slots__ = (
        "__weakref__",
        "_base",
        "_cloud",
        "_delta",
        "_entries",
        "_hash",
        "_index",
        "_vv",
    )

    _entries: dict[T, frozenset[Dot]]
    _vv: dict[str, int]
    _cloud: frozenset[Dot]
    _base: weakref.ref[ORSet[T]] | None
    _delta: ORSet[T] | None
    _hash: int | None
    # dot -> element, built on first need; lets a small delta merge into a big set
    # without a Python-level pass over every element.
    _index: dict[Dot, T] | None

    def __init__(self) -> None:
        self._entries = {}
        self._vv = {}
        self._cloud = _NO_DOTS
        self._base = None
        self._delta = None
        self._hash = None
        self._index = None

    @classmethod
    def _make(
        cls, entries: dict[Any, frozenset[Dot]], vv: dict[str, int], cloud: frozenset[Dot]
    ) -> ORSet[Any]:
        new: ORSet[Any] = object.__new__(cls)
        new._entries = entries
        new._vv = vv
        new._cloud = cloud
        new._base = None
        new._delta = None
        new._hash = None
        new._index = None
        return new

    def _derived_from(self, old: ORSet[T]) -> bool:
        return self._base is not None and self._base() is old

    def _dot_index(self) -> dict[Dot, T]:
        if self._index is None:
            self._index = {d: x for x, ds in self._entries.items() for d in ds}
        return self._index

    def _patched_index(self, x: T, old_dots: Iterable[Dot], new_dot: Dot | None) -> None:
        """Give ``self`` (a fresh state) its parent's index with ``x``'s dots replaced."""
        base = self._base() if self._base is not None else None
        if base is None or base._index is None:
            return
        index = dict(base._index)
        for d in old_dots:
            index.pop(d, None)
        if new_dot is not None:
            index[new_dot] = x
        self._index = index

    def _with_delta(self, new: ORSet[T], delta: ORSet[T]) -> ORSet[T]:
        new._base = weakref.ref(self)
        new._delta = delta
        return new

    def add(self, x: T, node: str) -> ORSet[T]:
        """Return this set with ``x`` added under a fresh dot of ``node``.

        Re-adding a present element also mints a fresh dot (it replaces the old ones),
        which is what lets it win against a concurrent remove.

        Raises:
            InvalidValue: ``x`` is not a supported element, or ``node`` is not a
                non-empty str of at most 256 characters.
        """
        _wire.check_element(x)
        _wire.check_node(node)
        seen = self._vv.get(node, 0)
        for dot_node, counter in self._cloud:
            if dot_node == node and counter > seen:
                seen = counter
        dot = (node, _wire.check_total(seen + 1))
        entries = dict(self._entries)
        entries[x] = frozenset((dot,))
        if not self._cloud and dot[1] == self._vv.get(node, 0) + 1:
            vv, cloud = {**self._vv, node: dot[1]}, _NO_DOTS
        else:
            vv, cloud = _compact(self._vv, self._cloud | {dot})
        # The delta's context also holds the dots it replaces, so merging it removes them.
        d_vv, d_cloud = _compact({}, self._entries.get(x, _NO_DOTS) | {dot})
        delta = self._make({x: entries[x]}, d_vv, d_cloud)
        new = self._with_delta(self._make(entries, vv, cloud), delta)
        new._patched_index(x, self._entries.get(x, _NO_DOTS), dot)
        return new

    def remove(self, x: T) -> ORSet[T]:
        """Return this set without ``x`` (this set itself if ``x`` is absent).

        Only the adds of ``x`` seen here are removed; a concurrent add elsewhere wins.
        """
        dots = self._entries.get(x)
        if dots is None:
            return self
        entries = dict(self._entries)
        del entries[x]
        d_vv, d_cloud = _compact({}, dots)
        delta = self._make({}, d_vv, d_cloud)
        new = self._with_delta(self._make(entries, self._vv, self._cloud), delta)
        new._patched_index(x, dots, None)
        return new

    def clear(self) -> ORSet[T]:
        """Return this set with every element seen here removed (concurrent adds survive).

        Example:
            >>> s = ORSet().add(1, "a").add(2, "a").clear()
            >>> len(s), s.add(3, "a").to_wire()["v"]
            (0, {'a': 3})
        """
        if not self._entries:
            return self
        d_vv, d_cloud = _compact({}, (d for ds in self._entries.values() for d in ds))
        delta = self._make({}, d_vv, d_cloud)
        return self._with_delta(self._make({}, self._vv, self._cloud), delta)

    def merge(self, other: ORSet[T]) -> ORSet[T]:
        """Return the join: an element's dot survives unless the other side removed it.

        A dot survives when both sides have it, or when the other side has never seen it.
        """
        if other is self or self._derived_from(other):
            return self
        if other._derived_from(self):
            # One mutator away: the mutated state already includes this one.
            return other
        vv = dict(self._vv)
        for node, n in other._vv.items():
            if n > vv.get(node, 0):
                vv[node] = n
        if self._cloud or other._cloud:
            vv, cloud = _compact(vv, self._cloud | other._cloud)
        else:
            cloud = _NO_DOTS
        index: dict[Dot, T] | None = None
        if _context_size(other) * 4 < len(self._entries):
            entries, index = self._merge_small(other)
        elif _context_size(self) * 4 < len(other._entries):
            entries, index = other._merge_small(self)
        else:
            entries = self._merge_entries(other)
        new = self._make(entries, vv, cloud)
        new._index = index
        return new

    def _merge_entries(self, other: ORSet[T]) -> dict[T, frozenset[Dot]]:
        """The join's entries, by a pass over both sides."""
        a_vv, a_cloud, b_vv, b_cloud = self._vv, self._cloud, other._vv, other._cloud
        a_entries, b_entries = self._entries, other._entries
        entries: dict[T, frozenset[Dot]] = {}
        for x, ad in a_entries.items():
            bd = b_entries.get(x)
            if bd is None:
                keep = frozenset(d for d in ad if not _covers(b_vv, b_cloud, d))
                if len(keep) == len(ad):
                    keep = ad
            elif bd == ad:
                keep = ad
            else:
                keep = (
                    (ad & bd)
                    | frozenset(d for d in ad - bd if not _covers(b_vv, b_cloud, d))
                    | frozenset(d for d in bd - ad if not _covers(a_vv, a_cloud, d))
                )
            if keep:
                entries[x] = keep
        for x, bd in b_entries.items():
            if x not in a_entries:
                keep = frozenset(d for d in bd if not _covers(a_vv, a_cloud, d))
                if keep:
                    entries[x] = bd if len(keep) == len(bd) else keep
        return entries

    def _merge_small(self, small: ORSet[T]) -> tuple[dict[T, frozenset[Dot]], dict[Dot, T]]:
        """The join's entries (and dot index) when ``small`` has seen few dots.

        Only the dots in ``small``'s context can remove anything from this side, so they
        are looked up in the dot index instead of checking every element.
        """
        entries = dict(self._entries)
        index = dict(self._dot_index())
        s_entries = small._entries
        for dot in _context_dots(small):
            x = index.get(dot)
            if x is None:
                continue
            sd = s_entries.get(x)
            if sd is not None and dot in sd:
                continue
            del index[dot]
            rest = entries[x] - {dot}
            if rest:
                entries[x] = rest
            else:
                del entries[x]
        vv, cloud = self._vv, self._cloud
        for x, sd in s_entries.items():
            fresh = frozenset(d for d in sd if not _covers(vv, cloud, d))
            if fresh:
                entries[x] = entries.get(x, _NO_DOTS) | fresh
                for d in fresh:
                    index[d] = x
        return entries, index

    def delta_from(self, old: ORSet[T]) -> ORSet[T]:
        """Return a small state ``d`` with ``old.merge(d) == old.merge(self)``.

        That is ``self`` itself when ``old`` is an earlier state of this set. O(1) when
        this set is one ``add``/``remove``/``clear`` of ``old``; otherwise a diff that
        costs a pass over both sets and carries only what ``old`` has not seen.

        Example:
            >>> big = ORSet()
            >>> for i in range(100):
            ...     big = big.add(i, "pod-a")
            >>> d = big.add(500, "pod-b").delta_from(big)
            >>> d.to_wire()
            {'c': [], 'e': [[500, [['pod-b', 1]]]], 'v': {'pod-b': 1}}
        """
        if old is self:
            return self._make({}, {}, _NO_DOTS)
        if self._delta is not None and self._derived_from(old):
            return self._delta
        o_vv, o_cloud, s_vv, s_cloud = old._vv, old._cloud, self._vv, self._cloud
        entries: dict[T, frozenset[Dot]] = {}
        for x, sd in self._entries.items():
            fresh = frozenset(d for d in sd if not _covers(o_vv, o_cloud, d))
            if fresh:
                entries[x] = fresh
        # The context: every dot self has seen and old has not...
        ctx_vv: dict[str, int] = {}
        dots: set[Dot] = set()
        old_cloud_nodes = {node for node, _ in o_cloud}
        spans = [
            top - o_vv.get(node, 0)
            for node, top in s_vv.items()
            if o_vv.get(node, 0) or node in old_cloud_nodes
        ]
        if sum(spans, 0) > _MAX_DIFF_DOTS:
            # Listing that many dots one by one costs more than sending the whole state
            # (and a hostile version vector could make it unbounded): send the state.
            return self
        for node, top in s_vv.items():
            start = o_vv.get(node, 0)
            if start == 0 and node not in old_cloud_nodes:
                ctx_vv[node] = top
            else:
                dots.update(
                    (node, c) for c in range(start + 1, top + 1) if (node, c) not in o_cloud
                )
        dots.update(d for d in s_cloud if not _covers(o_vv, o_cloud, d))
        # ...and old's live dots that self has removed.
        s_entries = self._entries
        for x, od in old._entries.items():
            sd = s_entries.get(x, _NO_DOTS)
            if sd != od:
                dots.update(d for d in od - sd if _covers(s_vv, s_cloud, d))
        ctx_vv, cloud = _compact(ctx_vv, dots)
        return self._make(entries, ctx_vv, cloud)

    def to_wire(self) -> dict[str, Any]:
        """Return the canonical wire form.

        ``{"c": [[node, counter], ...], "e": [[element, [[node, counter], ...]], ...],
        "v": {node: counter}}``: the dot cloud, the elements with their dots, and the
        version vector, each sorted (elements by a total order on their values).
        """
        return {
            "c": [list(d) for d in sorted(self._cloud)],
            "e": [
                [x, [list(d) for d in sorted(self._entries[x])]]
                for x in sorted(self._entries, key=_wire.sort_key)
            ],
            "v": dict(sorted(self._vv.items())),
        }

    @classmethod
    def from_wire(cls, data: object) -> ORSet[Any]:
        """Decode [`to_wire()`][podshare.crdt.ORSet.to_wire]'s form; unknown keys are ignored.

        Raises:
            DecodeError: malformed input, including an element listed twice, a dot on two
                elements, or an element's dot missing from the causal context.
        """
        fields = _wire.dict_from_wire(data, "ORSet")
        raw_vv = _wire.dict_from_wire(fields.get("v", {}), "ORSet version vector")
        vv = {_wire.node_from_wire(k): _wire.count_from_wire(v) for k, v in raw_vv.items()}
        raw_cloud = _wire.list_from_wire(fields.get("c", []), "ORSet dot cloud")
        vv, cloud = _compact(vv, [_wire.dot_from_wire(d) for d in raw_cloud])
        entries: dict[Any, frozenset[Dot]] = {}
        seen: set[Dot] = set()
        for item in _wire.list_from_wire(fields.get("e", []), "ORSet entries"):
            pair = _wire.list_from_wire(item, "ORSet entry")
            if len(pair) != 2:
                _wire.fail("ORSet entry must be [element, dots]")
            x = _wire.element_from_wire(pair[0])
            if x in entries:
                _wire.fail(f"ORSet element {x!r} listed twice")
            dots = [_wire.dot_from_wire(d) for d in _wire.list_from_wire(pair[1], "ORSet dots")]
            if not dots:
                _wire.fail(f"ORSet element {x!r} has no dots")
            for d in dots:
                if d in seen:
                    _wire.fail(f"ORSet dot {d!r} is listed twice")
                if not _covers(vv, cloud, d):
                    _wire.fail(f"ORSet dot {d!r} is missing from the causal context")
                seen.add(d)
            entries[x] = frozenset(dots)
        return cls._make(entries, vv, cloud)

    def __contains__(self, x: object) -> bool:
        return x in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return (
            self._vv == other._vv
            and self._cloud == other._cloud
            and self._entries == other._entries
        )

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(
                (frozenset(self._entries.items()), frozenset(self._vv.items()), self._cloud)
            )
        return self._hash

    def __repr__(self) -> str:
        if not self._entries:
            return "ORSet()"
        return f"ORSet({sorted(self._entries, key=_wire.sort_key)!r})"
