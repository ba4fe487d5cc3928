"""Digests: a tree of XOR hashes over a replica's entries, kept up to date as entries change.

Every entry has a 63-bit *state hash* (`lww_hash()` of its key, stamp, flags and
value bytes, or, for a merger entry, of its key, epoch and encoded state). A key's
position is ``crc32(key)``; the top 4, 8 and 12 bits of it name its bucket at levels 1,
2 and 3 (16, 256 and 4,096 buckets). A bucket's hash is the XOR of its entries' hashes,
so adding, replacing or removing an entry costs one XOR into its level-3 bucket (and the
levels above are folded from level 3 when a digest is asked for), and two replicas
holding the same states have the same digest whatever order the states arrived in.

A digest exchange descends the tree only where hashes differ: level 1, then the children
of differing buckets at level 2, then at level 3, down to buckets small enough to
compare key by key (`DigestTree` keeps the keys of every level-3 bucket). A few
changed keys therefore ship a few keys' summaries, not most of the map, and no exchange
walks every key: the CPU of one round is proportional to the buckets it names.

Example:
    >>> tree = DigestTree()
    >>> h = lww_hash("k", 1000, 0, "a", 0, b"1")
    >>> tree.add("k", h)
    >>> other = DigestTree()
    >>> other.differing(1, None, tree.hashes(1, None))  # doctest: +ELLIPSIS
    [...]
    >>> other.add("k", h)
    >>> other.differing(1, None, tree.hashes(1, None))
    []
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Iterable, Sequence

__all__ = [
    "FINAL_BUCKET_KEYS",
    "LEVELS",
    "DigestTree",
    "bucket_of",
    "children",
    "entry_hash",
    "lww_hash",
    "merged_hash",
    "position",
]

#: Levels of the tree below its root.
LEVELS = 3
#: A differing bucket holding at most this many keys is compared key by key.
FINAL_BUCKET_KEYS = 32
_LEAVES = 16**LEVELS
_SHIFT = 32 - 4 * LEVELS
_M64 = (1 << 64) - 1
_M63 = (1 << 63) - 1

_crc32 = zlib.crc32


def position(key: str) -> int:
    """The key's 32-bit position in the tree (``crc32`` of its UTF-8 bytes)."""
    return _crc32(key.encode())


def bucket_of(key: str, level: int) -> int:
    """The key's bucket at ``level`` (1 to 3)."""
    return _crc32(key.encode()) >> (32 - 4 * level)


def children(_level: int, buckets: Iterable[int]) -> list[int]:
    """The buckets of level ``level + 1`` under ``buckets`` of ``level``, in order."""
    return [b << 4 | i for b in buckets for i in range(16)]


_origin_crc: dict[str, int] = {}


def _crc_of_origin(origin: str) -> int:
    crc = _origin_crc.get(origin)
    if crc is None:
        if len(_origin_crc) > 65536:
            _origin_crc.clear()  # node ids come and go: a bound, not an exact cache
        crc = _origin_crc[origin] = _crc32(origin.encode())
    return crc


def entry_hash(
    kc: int, time: int, counter: int, origin: str, flags: int, value: bytes | None
) -> int:
    """`lww_hash()` from the key's position ``kc`` (``crc32`` of its UTF-8 bytes).

    CRC32 (in C) folds the value and the key together; the stamp, origin and flags are
    mixed in, and one multiplication makes the whole nonlinear, so that XOR-ing many
    entries' hashes into a bucket cannot cancel (two keys swapping values still change
    the bucket's hash).
    """
    a = _crc32(value, kc) if value is not None else kc ^ 0x5BD1E995
    x = (a << 31) ^ (time * 0x9E3779B1) ^ (counter << 17) ^ (_crc_of_origin(origin) << 7) ^ flags
    x = (x * 0x9E3779B97F4A7C15) & _M63
    return x ^ (x >> 29)


def lww_hash(
    key: str, time: int, counter: int, origin: str, flags: int, value: bytes | None
) -> int:
    """The state hash of a last-writer-wins entry: its key, stamp, flags and value bytes.

    The value takes part, so two entries with equal stamps and different values (two
    processes sharing a node id) hash differently and anti-entropy repairs them.
    """
    return entry_hash(_crc32(key.encode()), time, counter, origin, flags, value)


def merged_hash(key: str, epoch: tuple[int, int, str], tombstone: bool, state: bytes) -> int:
    """The state hash of a merger entry: equal states hash equal, whatever stamps brought them."""
    t, c, o = epoch
    return entry_hash(_crc32(key.encode()), t, c, o, 2 if tombstone else 1, state)


class DigestTree:
    """The XOR-hash tree of one replica's entries, updated in place (see the module docs).

    It stores one hash and one count per level-3 bucket and the keys of each non-empty
    level-3 bucket (a list: about 11 bytes per key); levels 1 and 2 are folded on demand.
    """

    __slots__ = ("_counts", "_folded", "_hashes", "_keys")

    def __init__(self) -> None:
        self._hashes = array("Q", bytes(8 * _LEAVES))
        self._counts = array("I", bytes(4 * _LEAVES))
        self._keys: dict[int, list[str]] = {}
        # level -> (hashes, counts) folded from level 3; emptied by every change.
        self._folded: dict[int, tuple[list[int], list[int]]] = {}

    def add(self, key: str, h: int, kc: int | None = None) -> None:
        """A new key with state hash ``h`` (``kc``: its position, if known)."""
        leaf = (kc if kc is not None else _crc32(key.encode())) >> _SHIFT
        self._hashes[leaf] ^= h
        self._counts[leaf] += 1
        if self._folded:
            self._folded.clear()
        index = self._keys
        keys = index.get(leaf)
        if keys is None:
            index[leaf] = [key]
        else:
            keys.append(key)

    def change(self, key: str, old: int, new: int, kc: int | None = None) -> None:
        """An existing key's state hash changed from ``old`` to ``new``."""
        self._hashes[(kc if kc is not None else _crc32(key.encode())) >> _SHIFT] ^= old ^ new
        if self._folded:
            self._folded.clear()

    def remove(self, key: str, h: int) -> None:
        """A key with state hash ``h`` left the map."""
        leaf = _crc32(key.encode()) >> _SHIFT
        self._hashes[leaf] ^= h
        self._counts[leaf] -= 1
        if self._folded:
            self._folded.clear()
        keys = self._keys[leaf]
        keys.remove(key)
        if not keys:
            del self._keys[leaf]

    # --- queries --------------------------------------------------------------------

    def _level(self, level: int) -> tuple[Sequence[int], Sequence[int]]:
        """Hashes and counts of every bucket of ``level`` (level 3 as stored)."""
        if level == LEVELS:
            return self._hashes, self._counts
        cached = self._folded.get(level)
        if cached is not None:
            return cached
        below_h, below_c = self._level(level + 1)
        n = len(below_h) // 16
        folded_h = [0] * n
        folded_c = [0] * n
        for i in range(len(below_h)):
            folded_h[i >> 4] ^= below_h[i]
            folded_c[i >> 4] += below_c[i]
        self._folded[level] = (folded_h, folded_c)
        return folded_h, folded_c

    def hashes(self, level: int, buckets: Sequence[int] | None) -> bytes:
        """The hashes of ``buckets`` of ``level`` (``None``: all), 8 bytes each, in order."""
        hashes, _ = self._level(level)
        wanted: Iterable[int] = range(len(hashes)) if buckets is None else buckets
        return b"".join(hashes[b].to_bytes(8, "little") for b in wanted)

    def differing(self, level: int, buckets: Sequence[int] | None, theirs: bytes) -> list[int]:
        """The buckets (of ``buckets`` at ``level``) whose hash differs from ``theirs``."""
        hashes, _ = self._level(level)
        wanted: Sequence[int] = range(len(hashes)) if buckets is None else buckets
        return [
            b
            for i, b in enumerate(wanted)
            if hashes[b] != int.from_bytes(theirs[8 * i : 8 * i + 8], "little")
        ]

    def counts(self, level: int, buckets: Iterable[int]) -> list[int]:
        """How many keys each of ``buckets`` of ``level`` holds."""
        _, counts = self._level(level)
        return [counts[b] for b in buckets]

    def keys_in_many(self, buckets: Iterable[tuple[int, int]]) -> list[str]:
        """The keys under each ``(level, bucket)`` (buckets may be of mixed levels)."""
        out: list[str] = []
        for level, bucket in buckets:
            out.extend(self.keys_in(level, (bucket,)))
        return out

    def keys_in(self, level: int, buckets: Iterable[int]) -> list[str]:
        """The keys under ``buckets`` of ``level`` (through the level-3 key lists)."""
        keys = self._keys
        span = 16 ** (LEVELS - level)
        out: list[str] = []
        for b in buckets:
            start = b * span
            if span == 1:
                found = keys.get(start)
                if found:
                    out.extend(found)
                continue
            for leaf in range(start, start + span):
                found = keys.get(leaf)
                if found:
                    out.extend(found)
        return out
