"""Message sizing beside the wire: how entries are split into messages below the size limit.

Every message leaves `ENVELOPE_SLACK` bytes of room for its envelope (tag, sender,
nonce, the other fields) around its entries, and `split()` cuts a list of entries
into groups whose sizes (upper bounds from `entry_size()`) stay
within a budget. An entry larger than the budget cannot exist: local writes refuse it
(``InvalidValue``), so a group always fits.

Example:
    >>> split(["aa", "bb", "cc"], len, 4)
    [['aa', 'bb'], ['cc']]
    >>> split([], len, 4)
    []
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, TypeVar

__all__ = ["ENVELOPE_SLACK", "split"]

#: Room kept in every message for the envelope around its entries.
ENVELOPE_SLACK: Final = 512

E = TypeVar("E")


def split(items: Sequence[E], size_of: Callable[[E], int], budget: int) -> list[list[E]]:
    """Split ``items`` into groups of at most ``budget`` bytes (sizes are upper bounds).

    A group holds at least one item, whatever its size.
    """
    groups: list[list[E]] = []
    batch: list[E] = []
    size = 0
    for item in items:
        n = size_of(item)
        if batch and size + n > budget:
            groups.append(batch)
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        groups.append(batch)
    return groups
