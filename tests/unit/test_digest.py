"""Digests: state hashes that see every part of an entry, and a tree equal to its recomputation."""

from __future__ import annotations

import zlib
from collections import defaultdict
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podshare.store.digest import (
    LEVELS,
    DigestTree,
    bucket_of,
    children,
    lww_hash,
    merged_hash,
    position,
)

T = 1_700_000_000_000


# --- state hashes ----------------------------------------------------------------------------


def test_lww_hash_sees_every_part_of_an_entry() -> None:
    base = ("k", T, 3, "pod-a", 0, b"v")
    h = lww_hash(*base)
    assert lww_hash(*base) == h  # equal states hash equal
    variants = [
        ("l", T, 3, "pod-a", 0, b"v"),
        ("k", T + 1, 3, "pod-a", 0, b"v"),
        ("k", T, 4, "pod-a", 0, b"v"),
        ("k", T, 3, "pod-b", 0, b"v"),
        ("k", T, 3, "pod-a", 2, b"v"),  # flags (an ephemeral twin)
        ("k", T, 3, "pod-a", 0, b"w"),  # the value: two processes sharing a node id
        ("k", T, 3, "pod-a", 0, b""),
        ("k", T, 3, "pod-a", 1, None),  # the delete of the same stamp
    ]
    hashes = [lww_hash(*v) for v in variants]
    assert h not in hashes
    assert len(set(hashes)) == len(hashes)
    assert lww_hash("k", T, 3, "pod-a", 0, b"") != lww_hash("k", T, 3, "pod-a", 0, None)


def test_merged_hash_sees_key_epoch_tombstone_and_state() -> None:
    epoch = (T, 0, "pod-a")
    h = merged_hash("k", epoch, False, b"\x91\x01")
    assert merged_hash("k", epoch, False, b"\x91\x01") == h
    variants = [
        merged_hash("l", epoch, False, b"\x91\x01"),
        merged_hash("k", (T + 1, 0, "pod-a"), False, b"\x91\x01"),
        merged_hash("k", (T, 1, "pod-a"), False, b"\x91\x01"),
        merged_hash("k", (T, 0, "pod-b"), False, b"\x91\x01"),
        merged_hash("k", epoch, True, b""),
        merged_hash("k", epoch, False, b"\x91\x02"),
        merged_hash("k", epoch, False, b""),
    ]
    assert h not in variants
    assert len(set(variants)) == len(variants)
    # A merger entry's stamp takes no part: equal states hash equal whatever brought them.


@given(
    st.text(min_size=1, max_size=20),
    st.integers(0, 2**53 - 1),
    st.integers(0, 2**32 - 1),
    st.text(min_size=1, max_size=20),
    st.integers(0, 15),
    st.none() | st.binary(max_size=20),
)
def test_state_hashes_are_63_bit(
    key: str, time: int, counter: int, origin: str, flags: int, value: bytes | None
) -> None:
    assert 0 <= lww_hash(key, time, counter, origin, flags, value) < 2**63
    assert 0 <= merged_hash(key, (time, counter, origin), flags & 1 == 1, value or b"") < 2**63


# --- positions ------------------------------------------------------------------------------


@given(st.text(max_size=30))
def test_buckets_are_the_top_bits_of_the_position(key: str) -> None:
    pos = position(key)
    assert pos == zlib.crc32(key.encode())
    assert [bucket_of(key, level) for level in (1, 2, 3)] == [pos >> 28, pos >> 24, pos >> 20]
    assert bucket_of(key, 2) in children(1, [bucket_of(key, 1)])
    assert bucket_of(key, 3) in children(2, [bucket_of(key, 2)])


def test_children_are_in_order() -> None:
    assert children(1, [0, 15]) == [*range(16), *range(240, 256)]
    assert children(2, [0xAB]) == [0xAB0 + i for i in range(16)]
    assert LEVELS == 3


# --- the tree against a model ----------------------------------------------------------------


def _colliding_keys() -> list[str]:
    """Keys several of which share each level-3 bucket (and so every bucket above)."""
    by_leaf: dict[int, list[str]] = defaultdict(list)
    for i in range(20_000):
        key = f"key-{i}"
        by_leaf[bucket_of(key, 3)].append(key)
    crowded = [keys[:3] for keys in by_leaf.values() if len(keys) >= 3][:8]
    return [k for keys in crowded for k in keys] + [f"solo-{i}" for i in range(12)]


KEYS = _colliding_keys()


class Model:
    """The tree's meaning: every bucket's hash is the XOR of its keys' hashes."""

    def __init__(self) -> None:
        self.hashes: dict[str, int] = {}

    def bucket_hashes(self, level: int) -> list[int]:
        out = [0] * 16**level
        for key, h in self.hashes.items():
            out[bucket_of(key, level)] ^= h
        return out

    def bucket_keys(self, level: int, bucket: int) -> set[str]:
        return {k for k in self.hashes if bucket_of(k, level) == bucket}


def _hashes_of(tree: DigestTree, level: int) -> list[int]:
    data = tree.hashes(level, None)
    return [int.from_bytes(data[i : i + 8], "little") for i in range(0, len(data), 8)]


def check(tree: DigestTree, model: Model) -> None:
    """Every level of ``tree`` equals a recomputation from scratch."""
    for level in (1, 2, 3):
        expected = model.bucket_hashes(level)
        assert _hashes_of(tree, level) == expected
        counts = [0] * 16**level
        for key in model.hashes:
            counts[bucket_of(key, level)] += 1
        assert tree.counts(level, range(16**level)) == counts
    for level in (1, 2, 3):
        for key in model.hashes:
            b = bucket_of(key, level)
            assert set(tree.keys_in(level, [b])) == model.bucket_keys(level, b)
    assert sorted(tree.keys_in(1, range(16))) == sorted(model.hashes)


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "remove", "query"]),
        st.sampled_from(KEYS),
        st.integers(0, 2**63 - 1),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(ops)
def test_tree_equals_its_recomputation(script: list[tuple[str, str, int]]) -> None:
    tree, model = DigestTree(), Model()
    for op, key, h in script:
        if op == "put":
            old = model.hashes.get(key)
            if old is None:
                tree.add(key, h)
            else:
                tree.change(key, old, h)
            model.hashes[key] = h
        elif op == "remove":
            old = model.hashes.pop(key, None)
            if old is not None:
                tree.remove(key, old)
        else:
            # Folded levels are cached between queries: the next change must drop them.
            tree.hashes(1, None)
            tree.hashes(2, [0, 1])
        level = 1 + h % 3
        assert _hashes_of(tree, level) == model.bucket_hashes(level)
    check(tree, model)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS), st.integers(0, 2**63 - 1)),
    st.dictionaries(st.sampled_from(KEYS), st.integers(0, 2**63 - 1)),
)
def test_differing_names_exactly_the_differing_buckets(
    mine: dict[str, int], theirs: dict[str, int]
) -> None:
    a, b = DigestTree(), DigestTree()
    for key, h in mine.items():
        a.add(key, h)
    for key, h in theirs.items():
        b.add(key, h)
    ma, mb = Model(), Model()
    ma.hashes, mb.hashes = dict(mine), dict(theirs)
    for level in (1, 2, 3):
        ours, other = ma.bucket_hashes(level), mb.bucket_hashes(level)
        expected = [i for i in range(16**level) if ours[i] != other[i]]
        assert a.differing(level, None, b.hashes(level, None)) == expected
        # A subset of buckets, in the requester's order: the answer keeps that order.
        subset = sorted({bucket_of(k, level) for k in [*mine, *theirs]}, reverse=True)
        assert a.differing(level, subset, b.hashes(level, subset)) == [
            i for i in subset if ours[i] != other[i]
        ]
    if mine == theirs:
        assert a.differing(1, None, b.hashes(1, None)) == []


def test_equal_states_in_any_order_have_equal_digests() -> None:
    entries = {key: lww_hash(key, T, i, "pod-a", 0, b"v") for i, key in enumerate(KEYS)}
    a, b = DigestTree(), DigestTree()
    for key in KEYS:
        a.add(key, entries[key])
    for key in reversed(KEYS):
        b.add(key, 12345)
        b.change(key, 12345, entries[key])
    for level in (1, 2, 3):
        assert a.hashes(level, None) == b.hashes(level, None)
    assert a.differing(1, None, b.hashes(1, None)) == []


def test_folding_caches_are_invalidated_by_every_change() -> None:
    tree = DigestTree()
    key = KEYS[0]
    assert tree.hashes(1, None) == bytes(8 * 16)
    tree.add(key, 5)
    b1 = bucket_of(key, 1)
    assert tree.hashes(1, [b1]) == (5).to_bytes(8, "little")
    assert tree.counts(2, [bucket_of(key, 2)]) == [1]
    tree.change(key, 5, 9)
    assert tree.hashes(1, [b1]) == (9).to_bytes(8, "little")
    assert tree.hashes(2, [bucket_of(key, 2)]) == (9).to_bytes(8, "little")
    tree.remove(key, 9)
    assert tree.hashes(1, [b1]) == bytes(8)
    assert tree.counts(1, [b1]) == [0]
    assert tree.keys_in(1, [b1]) == []


def test_keys_in_and_keys_in_many() -> None:
    tree = DigestTree()
    for i, key in enumerate(KEYS):
        tree.add(key, i + 1)
    crowded = KEYS[0]
    leaf = bucket_of(crowded, 3)
    same_leaf = {k for k in KEYS if bucket_of(k, 3) == leaf}
    assert len(same_leaf) >= 3
    assert set(tree.keys_in(3, [leaf])) == same_leaf
    empty = next(b for b in range(4096) if all(bucket_of(k, 3) != b for k in KEYS))
    assert tree.keys_in(3, [empty]) == []
    other = KEYS[-1]
    mixed = [(3, leaf), (1, bucket_of(other, 1))]
    got = tree.keys_in_many(mixed)
    assert set(got) == same_leaf | {k for k in KEYS if bucket_of(k, 1) == bucket_of(other, 1)}
    assert tree.keys_in_many([]) == []
    # A level-1 bucket's keys are its level-3 buckets' keys.
    b1 = bucket_of(crowded, 1)
    assert sorted(tree.keys_in(1, [b1])) == sorted(
        k for leaf3 in range(b1 * 256, b1 * 256 + 256) for k in tree.keys_in(3, [leaf3])
    )


@pytest.mark.parametrize("level", [1, 2, 3])
def test_hashes_are_the_xor_of_the_keys_below(level: int) -> None:
    tree = DigestTree()
    for i, key in enumerate(KEYS):
        tree.add(key, (i + 1) * 0x1234567)
    for key in KEYS:
        b = bucket_of(key, level)
        below = [(i + 1) * 0x1234567 for i, k in enumerate(KEYS) if bucket_of(k, level) == b]
        assert tree.hashes(level, [b]) == reduce(int.__xor__, below).to_bytes(8, "little")
