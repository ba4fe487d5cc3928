"""Shared validation for CRDT elements, node ids and counts, in and out of wire form.

Set elements are restricted to values whose Python equality matches their msgpack
encoding: ``None``, ``int``, ``str``, ``bytes`` and tuples of those. ``bool`` and
``float`` are refused because ``True == 1`` and ``0.0 == -0.0`` while their encodings
differ (two equal sets would then have different wire forms and digests), and NaN is
not equal to itself.
"""

from __future__ import annotations

from typing import Any, NoReturn

from podshare.exceptions import DecodeError, InvalidValue

MAX_NODE_LENGTH = 256
# The largest per-node count, locally and on the wire: 63 bits, like every other
# integer podshare's wire carries. A peer's count above it is malformed input. (A forged
# count at the limit itself is valid and exhausts that node name's counter: only an
# authenticated transport keeps forged deltas out.)
MAX_COUNT = 2**63 - 1
MAX_DEPTH = 16
_MIN_INT = -(2**63)
_MAX_INT = 2**64 - 1


def _element_problem(x: object, depth: int) -> str | None:
    """Return why ``x`` is not a valid element, or None if it is."""
    tp = type(x)
    if x is None or tp is str or tp is bytes:
        return None
    if tp is int:
        return None if _MIN_INT <= x <= _MAX_INT else f"int {x} is outside msgpack's range"  # type: ignore[operator]
    if tp is tuple:
        if depth >= MAX_DEPTH:
            return f"tuples nest deeper than {MAX_DEPTH}"
        for item in x:  # type: ignore[attr-defined]
            problem = _element_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"{tp.__name__} is not a supported element type (None, int, str, bytes, tuple)"


def check_element(x: object) -> None:
    """Raise InvalidValue unless ``x`` may be a set element."""
    problem = _element_problem(x, 0)
    if problem is not None:
        raise InvalidValue(f"bad set element {x!r}: {problem}")


def element_to_wire(x: Any) -> Any:
    """Elements are msgpack-able as they are (tuples pack as arrays)."""
    return x


def element_from_wire(x: object, depth: int = 0) -> Any:
    """Decode an element: arrays become tuples; anything unsupported raises DecodeError."""
    tp = type(x)
    if x is None or tp is str or tp is bytes:
        return x
    if tp is int:
        if _MIN_INT <= x <= _MAX_INT:  # type: ignore[operator]
            return x
        fail(f"element int {x} out of range")
    if tp is list or tp is tuple:
        if depth >= MAX_DEPTH:
            fail(f"element tuples nest deeper than {MAX_DEPTH}")
        return tuple(element_from_wire(item, depth + 1) for item in x)  # type: ignore[attr-defined]
    raise DecodeError(f"unsupported element type {tp.__name__}")


def sort_key(x: Any) -> tuple[Any, ...]:
    """A total order on valid elements: None < ints < strs < bytes < tuples, each natural.

    Tuples compare element by element with this same key, so mixed-type elements never
    reach Python's ``<`` between unrelated types.
    """
    tp = type(x)
    if tp is str:
        return (2, x)
    if tp is int:
        return (1, x)
    if tp is bytes:
        return (3, x)
    if tp is tuple:
        return (4, tuple(sort_key(item) for item in x))
    return (0,)


def check_node(node: object) -> str:
    """Return ``node`` if it is a valid node id, else raise InvalidValue."""
    if type(node) is not str or not 0 < len(node) <= MAX_NODE_LENGTH:
        raise InvalidValue(
            f"node must be a non-empty str of at most {MAX_NODE_LENGTH} chars, got {node!r}"
        )
    return node


def check_amount(n: object) -> int:
    """Return ``n`` if it is a positive int, else raise InvalidValue."""
    if type(n) is not int or not 0 < n <= MAX_COUNT:
        raise InvalidValue(f"n must be a positive int, got {n!r}")
    return n


def check_total(total: int) -> int:
    """Return ``total`` unless it passes the largest count the wire carries."""
    if total > MAX_COUNT:
        raise InvalidValue(f"a node's total would exceed {MAX_COUNT}")
    return total


def fail(message: str) -> NoReturn:
    """Raise DecodeError(message)."""
    raise DecodeError(message)


def node_from_wire(x: object) -> str:
    """Decode a node id."""
    if type(x) is not str or not 0 < len(x) <= MAX_NODE_LENGTH:
        fail(f"node id must be a non-empty str of at most {MAX_NODE_LENGTH} chars")
    return x


def count_from_wire(x: object, *, positive: bool = True) -> int:
    """Decode a count: an int in [1, MAX_COUNT] (or [0, ...] when not ``positive``)."""
    if type(x) is not int or not (1 if positive else 0) <= x <= MAX_COUNT:
        fail("count must be a positive int below 2**63")
    return x


def dict_from_wire(x: object, what: str) -> dict[Any, Any]:
    """Return ``x`` if it is a dict, else raise DecodeError naming ``what``."""
    if type(x) is not dict:
        fail(f"{what} must be a map")
    return x


def list_from_wire(x: object, what: str) -> list[Any] | tuple[Any, ...]:
    """Return ``x`` if it is a list (or tuple), else raise DecodeError naming ``what``."""
    if type(x) is not list and type(x) is not tuple:
        fail(f"{what} must be an array")
    return x


def dot_from_wire(x: object) -> tuple[str, int]:
    """Decode a dot ``[node, counter]``."""
    pair = list_from_wire(x, "dot")
    if len(pair) != 2:
        fail("dot must be [node, counter]")
    return node_from_wire(pair[0]), count_from_wire(pair[1])
