"""How two states of a value join: the [`Merger`][podshare.crdt.Merger] protocol and the
[`LWW`][podshare.crdt.LWW] register.

A store either merges a key's values with a merger (a join-semilattice: commutative,
associative, idempotent), or, for plain types, keeps the write with the highest
[`Stamp`][podshare.crdt.Stamp] (last writer wins).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from podshare.crdt.clock import Stamp
from podshare.exceptions import DecodeError

__all__ = ["LWW", "FunctionMerger", "Merger", "SelfMerger", "as_merger", "merger_for"]

T = TypeVar("T")


@runtime_checkable
class Merger(Protocol[T]):
    """Joins two states of a value of type ``T``; implement it for a custom CRDT.

    ``merge`` must be commutative, associative and idempotent (prove it with
    [`podshare.testing.check_merger()`][podshare.testing.check_merger]). A merger may also define
    ``empty(self) -> T``, the bottom state, which ``Store.update`` passes for a missing key.
    Implement the method on any class (structural typing) or subclass ``Merger[T]`` explicitly.

    ``isinstance(x, Merger)`` only checks that ``x`` has a ``merge`` attribute, which a
    value type's *class* also has; use [`as_merger()`][podshare.crdt.as_merger] to turn either into
    a merger.

    Example:
        >>> class MaxMerger(Merger[int]):
        ...     def merge(self, a: int, b: int) -> int:
        ...         return max(a, b)
        ...     def empty(self) -> int:
        ...         return 0
        >>> MaxMerger().merge(3, 5)
        5
    """

    def merge(self, a: T, b: T, /) -> T:
        """Return the join of ``a`` and ``b``."""
        ...


class SelfMerger(Generic[T]):
    """The merger of a value type that merges itself: ``merge(a, b)`` is ``a.merge(b)``.

    [`merger_for()`][podshare.crdt.merger_for] returns one for any class with a
    ``merge(self, other)`` method.

    Example:
        >>> from podshare.crdt import GSet
        >>> m = SelfMerger(GSet)
        >>> sorted(m.merge(GSet(["a"]), GSet(["b"])))
        ['a', 'b']
        >>> m.empty()
        GSet()
    """

    __slots__ = ("type",)

    def __init__(self, tp: type[T]) -> None:
        #: The value type whose ``merge`` method this adapter calls.
        self.type = tp

    def merge(self, a: T, b: T, /) -> T:
        """Return ``a.merge(b)``."""
        result: T = a.merge(b)  # type: ignore[attr-defined]
        return result

    def empty(self) -> T:
        """Return ``tp()``, the type's empty value (``TypeError`` if it has no such call)."""
        return self.type()

    def __repr__(self) -> str:
        return f"SelfMerger({self.type.__qualname__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SelfMerger) and other.type is self.type

    def __hash__(self) -> int:
        return hash((SelfMerger, self.type))


class FunctionMerger(Generic[T]):
    """A merger made of a plain function ``(a, b) -> T`` (the Go library's ``WithMerger``).

    The function must be a join (commutative, associative, idempotent): prove it with
    [`podshare.testing.check_merger()`][podshare.testing.check_merger] like any merger. ``empty`` is
    optional.

    Example:
        >>> m = FunctionMerger(max, empty=lambda: 0)
        >>> m.merge(3, 5), m.empty()
        (5, 0)
    """

    __slots__ = ("_empty", "fn")

    def __init__(self, fn: Callable[[T, T], T], *, empty: Callable[[], T] | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a merge function must be callable, not {fn!r}")
        #: The join function.
        self.fn = fn
        self._empty = empty

    def merge(self, a: T, b: T, /) -> T:
        """Return ``fn(a, b)``."""
        return self.fn(a, b)

    def empty(self) -> T:
        """The bottom value, if one was given (``TypeError`` otherwise)."""
        if self._empty is None:
            raise TypeError("this merge function has no empty value")
        return self._empty()

    def __repr__(self) -> str:
        return f"FunctionMerger({getattr(self.fn, '__qualname__', self.fn)!r})"


def merger_for(tp: Any) -> SelfMerger[Any] | None:
    """Return the merger of value type ``tp``, or None when ``tp`` does not merge itself.

    ``tp`` may be a parametrised generic such as ``GSet[str]``. A class with a
    ``merge(self, other)`` method is its own merger; anything else (``int``, a
    dataclass, ``None``) gets None, meaning last-writer-wins.

    Example:
        >>> from podshare.crdt import GSet
        >>> merger_for(GSet[str])
        SelfMerger(GSet)
        >>> merger_for(int) is None
        True
    """
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and callable(getattr(origin, "merge", None)):
        return SelfMerger(origin)
    return None


def as_merger(obj: Any) -> Merger[Any]:
    """Return a merger for ``obj``: a [`Merger`][podshare.crdt.Merger] instance, or a type that
    merges itself.

    Raises:
        TypeError: ``obj`` is neither.

    Example:
        >>> from podshare.crdt import PNCounter
        >>> as_merger(PNCounter)
        SelfMerger(PNCounter)
    """
    if isinstance(obj, type) or typing.get_origin(obj) is not None:
        found = merger_for(obj)
        if found is None:
            raise TypeError(f"{obj!r} has no merge(self, other) method, so it is not a merger")
        return found
    if callable(getattr(obj, "merge", None)):
        merger: Merger[Any] = obj
        return merger
    if callable(obj):
        return FunctionMerger(obj)
    raise TypeError(
        f"{obj!r} is neither a Merger, a type with a merge(self, other) method, nor a "
        "function (a, b) -> value"
    )


@dataclass(frozen=True, slots=True)
class LWW(Generic[T]):
    """A last-writer-wins register: a value and the stamp of the write that set it.

    ``merge`` keeps the register with the higher stamp. Stamps are unique per write, so
    two registers with equal stamps hold the same write; if they do not, ``merge`` keeps
    ``self`` (no order between arbitrary values exists to break the tie).

    Example:
        >>> from podshare.crdt import Stamp
        >>> old = LWW("blue", Stamp(1, 0, "a"))
        >>> new = LWW("green", Stamp(2, 0, "b"))
        >>> old.merge(new).value, new.merge(old).value
        ('green', 'green')
    """

    value: T
    stamp: Stamp

    def merge(self, other: LWW[T]) -> LWW[T]:
        """Return whichever register has the higher stamp."""
        return other if other.stamp > self.stamp else self

    def to_wire(self, encode: Callable[[T], object] | None = None) -> list[object]:
        """Return ``[encoded value, [time, counter, origin]]``.

        Args:
            encode: turns the value into msgpack-able builtins; the caller supplies it
                because only the caller knows the value's type. None: the value is
                already msgpack-able and is used as is.

        Example:
            >>> from podshare.crdt import Stamp
            >>> LWW(42, Stamp(9, 0, "a")).to_wire()
            [42, [9, 0, 'a']]
            >>> LWW({"x"}, Stamp(9, 0, "a")).to_wire(sorted)
            [['x'], [9, 0, 'a']]
        """
        return [self.value if encode is None else encode(self.value), self.stamp.to_wire()]

    @classmethod
    def from_wire(cls, data: object, decode: Callable[[object], Any] | None = None) -> LWW[Any]:
        """Decode ``[encoded value, stamp]``.

        Args:
            decode: turns the encoded value back into a value; it should raise
                [`DecodeError`][podshare.DecodeError] for bad input (any other
                exception it raises is wrapped in one). None: the value is used as is.

        Raises:
            DecodeError: malformed input.

        Example:
            >>> LWW.from_wire([42, [9, 0, "a"]])
            LWW(value=42, stamp=Stamp(time=9, counter=0, origin='a'))
        """
        if not isinstance(data, list | tuple) or len(data) != 2:
            raise DecodeError("LWW must be a list [value, stamp]")
        raw, stamp = data
        if decode is None:
            return cls(raw, Stamp.from_wire(stamp))
        try:
            value = decode(raw)
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"LWW value could not be decoded: {exc!r}") from exc
        return cls(value, Stamp.from_wire(stamp))
