"""Reading Yjs v1 binary encodings: state vectors, delete sets, and a scan of item contents.

pycrdt exposes updates only as opaque bytes. [`YDoc`][podshare.crdt.YDoc] and the
pycrdt bridge ([`podshare.yjs`][podshare.yjs]) need facts Yrs does not give them:

- whether some bytes are one complete v1 update at all (`check_update()`): Yrs reads
  a Yjs *v2* update, or an update followed by garbage, as a valid (often empty) update
  and says nothing; `is_v2_update()` names the v2 case;
- which deletes in an update could not be applied yet, and the encoded delete set of a
  pending-only update in a canonical order;
- one encoding of a state whatever Yrs's hash maps did (`canonical_order()`): plain
  JSON objects (``yarray.push([{...}])`` in JavaScript, a ``dict`` in pycrdt) are encoded
  in the random key order of Yrs's hash maps, so two encodings of one document differ,
  and replica digests, which hash the encoding, would never agree.

The format is lib0's (https://github.com/yjs/yjs/blob/main/src/utils/encoding.js):
variable-length unsigned ints, length-prefixed strings and buffers, and the ``Any``
encoding with one tag byte per value. Every reader checks bounds and raises
`ValueError` on malformed input; callers map it to a podshare exception.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DeleteSet",
    "Struct",
    "canonical_order",
    "check_state_vector",
    "check_update",
    "delete_set_update",
    "encode_state_vector",
    "encode_structs",
    "is_v2_update",
    "parse_delete_set",
    "parse_state_vector",
    "parse_update",
    "split_delete_set",
]

#: client id -> sorted, non-overlapping ``(clock, length)`` ranges of deleted items.
DeleteSet = dict[int, list[tuple[int, int]]]

# lib0 ``Any`` tags.
_UNDEFINED, _NULL, _VARINT, _F32, _F64, _BIGINT = 127, 126, 125, 124, 123, 122
_FALSE, _TRUE, _STRING, _OBJECT, _ARRAY, _BUFFER = 121, 120, 119, 118, 117, 116
# Item content refs (the low 5 bits of a struct's info byte).
_GC, _DELETED, _JSON, _BINARY, _STR, _EMBED, _FORMAT, _TYPE, _ANY, _DOC, _SKIP = range(11)
_XML_ELEMENT, _XML_HOOK = 3, 5
_MAX_DEPTH = 256


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("unexpected end of update")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self) -> int:
        result = shift = 0
        while True:
            b = self.u8()
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 70:  # lib0 writes at most 53 bits; refuse runaway continuations
                raise ValueError("variable-length int too long")

    def skip_varint(self) -> None:
        for _ in range(11):
            if self.u8() < 0x80:
                return
        raise ValueError("variable-length int too long")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ValueError("unexpected end of update")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def string(self) -> str:
        return self.take(self.uint()).decode("utf-8")

    def done(self) -> bool:
        return self.pos >= len(self.data)


def parse_state_vector(sv: bytes) -> dict[int, int]:
    """Decode an encoded state vector into ``{client: clock}``."""
    r = _Reader(sv)
    out: dict[int, int] = {}
    for _ in range(r.uint()):
        client = r.uint()
        out[client] = r.uint()
    return out


def check_state_vector(sv: bytes) -> dict[int, int]:
    """Decode an encoded state vector, refusing trailing bytes (``ValueError``)."""
    r = _Reader(sv)
    out: dict[int, int] = {}
    for _ in range(r.uint()):
        client = r.uint()
        out[client] = r.uint()
    if not r.done():
        raise ValueError("bytes after the end of a state vector")
    return out


def parse_delete_set(data: bytes, pos: int = 0) -> DeleteSet:
    """Decode a delete set starting at ``pos`` (ranges sorted and merged)."""
    return _read_delete_set(_Reader(data, pos))


def _read_delete_set(r: _Reader) -> DeleteSet:
    ds: DeleteSet = {}
    for _ in range(r.uint()):
        client = r.uint()
        ranges = ds.setdefault(client, [])
        for _ in range(r.uint()):
            clock = r.uint()
            length = r.uint()
            if length:
                ranges.append((clock, length))
    return {client: _normalise(ranges) for client, ranges in ds.items() if ranges}


def _normalise(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for clock, length in sorted(ranges):
        if out and clock <= out[-1][0] + out[-1][1]:
            start, prev = out[-1]
            out[-1] = (start, max(prev, clock + length - start))
        else:
            out.append((clock, length))
    return out


def _uint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_state_vector(sv: dict[int, int]) -> bytes:
    """Encode a state vector ``{client: clock}`` (clients in descending order)."""
    entries = [(client, clock) for client, clock in sv.items() if clock]
    parts = [_uint(len(entries))]
    parts.extend(_uint(client) + _uint(clock) for client, clock in sorted(entries, reverse=True))
    return b"".join(parts)


def delete_set_update(ds: DeleteSet) -> bytes:
    """Encode an update with no structs and delete set ``ds``, in one canonical order."""
    parts = [b"\x00", _uint(len(ds))]
    for client in sorted(ds, reverse=True):
        ranges = _normalise(ds[client])
        parts.append(_uint(client) + _uint(len(ranges)))
        parts.extend(_uint(clock) + _uint(length) for clock, length in ranges)
    return b"".join(parts)


def _skip_any(r: _Reader, depth: int) -> None:
    """Read past one lib0 ``Any`` value (checking its layout)."""
    if depth > _MAX_DEPTH:
        raise ValueError("values nest too deep")
    tag = r.u8()
    if tag in (_UNDEFINED, _NULL, _FALSE, _TRUE):
        return
    if tag == _VARINT:
        r.skip_varint()
    elif tag == _F32:
        r.take(4)
    elif tag in (_F64, _BIGINT):
        r.take(8)
    elif tag == _STRING:
        r.string()
    elif tag == _BUFFER:
        r.take(r.uint())
    elif tag == _OBJECT:
        for _ in range(r.uint()):
            r.string()
            _skip_any(r, depth + 1)
    elif tag == _ARRAY:
        for _ in range(r.uint()):
            _skip_any(r, depth + 1)
    else:
        raise ValueError(f"unknown value tag {tag}")


def _json_has_unordered_map(text: str) -> bool:
    if text == "undefined":
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return _plain_has_unordered_map(value, 0)


def _plain_has_unordered_map(value: Any, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return len(value) > 1 or any(_plain_has_unordered_map(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_plain_has_unordered_map(v, depth + 1) for v in value)
    return False


@dataclass(frozen=True, slots=True, order=True)
class Struct:
    """One encoded struct of an update: where it sits, what it needs, and its bytes.

    ``deps`` are the ids (client, clock) that must be integrated before this struct can
    be: its origin, right origin and parent item. ``raw`` is the struct's encoding (info
    byte to end of content), which is self-contained in the v1 format, so structs can be
    regrouped into new updates without decoding their content.
    """

    client: int
    clock: int
    length: int
    raw: bytes
    deps: tuple[tuple[int, int], ...]

    @property
    def end(self) -> int:
        """The clock after this struct."""
        return self.clock + self.length


def parse_update(update: bytes) -> tuple[list[Struct], DeleteSet]:
    """Split a v1 update into its structs (skips dropped) and its delete set."""
    r = _Reader(update)
    structs: list[Struct] = []
    for _ in range(r.uint()):
        count = r.uint()
        client = r.uint()
        clock = r.uint()
        for _ in range(count):
            start = r.pos
            info = r.u8()
            ref = info & 0x1F
            if ref == _SKIP:
                clock += r.uint()
                continue
            deps: list[tuple[int, int]] = []
            if ref == _GC:
                length = r.uint()
            else:
                if info & 0x80:
                    deps.append((r.uint(), r.uint()))
                if info & 0x40:
                    deps.append((r.uint(), r.uint()))
                if info & 0xC0 == 0:
                    if r.uint() == 1:
                        r.string()
                    else:
                        deps.append((r.uint(), r.uint()))
                    if info & 0x20:
                        r.string()
                length = _content_length(r, ref)
            if length <= 0:
                raise ValueError("a struct of length 0")
            structs.append(Struct(client, clock, length, update[start : r.pos], tuple(deps)))
            clock += length
    return structs, parse_delete_set(update, r.pos)


def _content_length(r: _Reader, ref: int) -> int:
    """Read an item's content; return its length in clock units (Yjs's, UTF-16 for text)."""
    if ref == _DELETED:
        return r.uint()
    if ref == _JSON:
        n = r.uint()
        for _ in range(n):
            r.string()
        return n
    if ref == _BINARY:
        r.take(r.uint())
    elif ref == _STR:
        return len(r.string().encode("utf-16-le")) // 2
    elif ref == _EMBED:
        r.string()
    elif ref == _FORMAT:
        r.string()
        r.string()
    elif ref == _TYPE:
        if r.uint() in (_XML_ELEMENT, _XML_HOOK):
            r.string()
    elif ref == _ANY:
        n = r.uint()
        for _ in range(n):
            _skip_any(r, 0)
        return n
    elif ref == _DOC:
        r.string()
        _skip_any(r, 0)
    else:
        raise ValueError(f"unknown item content {ref}")
    return 1


def encode_structs(structs: Iterable[Struct], ds: DeleteSet | None = None) -> list[bytes]:
    """Encode structs (and a delete set) as few v1 updates, in one canonical order.

    Identical structs are kept once; gaps in a client's clocks become skips. Structs that
    overlap others of their client (the same items split differently) go to a further
    update, since one update holds one run of clocks per client. The delete set travels
    with the first update.
    """
    layers: list[dict[int, list[Struct]]] = []
    for struct in sorted(set(structs)):
        for layer in layers:
            run = layer.setdefault(struct.client, [])
            if not run or run[-1].end <= struct.clock:
                run.append(struct)
                break
        else:
            layers.append({struct.client: [struct]})
    out: list[bytes] = []
    for layer in layers or [{}]:
        runs = {client: run for client, run in layer.items() if run}
        parts = [_uint(len(runs))]
        for client in sorted(runs, reverse=True):
            run = runs[client]
            body: list[bytes] = []
            count = 0
            clock = run[0].clock
            for struct in run:
                if struct.clock > clock:
                    body.append(bytes([_SKIP]) + _uint(struct.clock - clock))
                    count += 1
                body.append(struct.raw)
                count += 1
                clock = struct.end
            parts.append(_uint(count) + _uint(client) + _uint(run[0].clock))
            parts.extend(body)
        parts.append(b"\x00" if out or not ds else delete_set_update(ds)[1:])
        out.append(b"".join(parts))
    return out


def split_delete_set(ds: DeleteSet, sv: dict[int, int]) -> tuple[DeleteSet, DeleteSet]:
    """Split ``ds`` into the deletes of items below state ``sv`` and the rest."""
    now: DeleteSet = {}
    later: DeleteSet = {}
    for client, ranges in ds.items():
        known = sv.get(client, 0)
        for clock, length in ranges:
            end = clock + length
            if clock < known:
                now.setdefault(client, []).append((clock, min(end, known) - clock))
            if end > known:
                start = max(clock, known)
                later.setdefault(client, []).append((start, end - start))
    return now, later


# -- validation -----------------------------------------------------------------------
#
# Yrs decodes leniently: a Yjs v2 update read as v1 is "no structs, an empty delete set"
# followed by bytes it ignores, so it loads as an empty document with no error. The
# check below walks the whole v1 layout and requires it to end exactly at the last byte.


def check_update(update: bytes) -> None:
    """Raise ``ValueError`` unless ``update`` is exactly one well-formed Yjs v1 update.

    The layout is checked (every struct, content and the delete set, with nothing left
    over), not the meaning: Yrs may still refuse an update that passes (callers map
    that too). A v2 update gets a message that says so.

    Example:
        >>> check_update(b"\\x00\\x00")  # the empty update
        >>> check_update(bytes.fromhex("00000000000001000000000000"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: a Yjs v2 update (Y.encodeStateAsUpdateV2); only v1 updates ...
    """
    try:
        try:
            end = _scan_structs(update, stop_at_objects=False)[0]
        except IndexError:
            raise ValueError("unexpected end of update") from None
        r = _Reader(update, end)
        _read_delete_set(r)
        if not r.done():
            raise ValueError("bytes after the end of the update")
    except ValueError as exc:
        if is_v2_update(update):
            raise ValueError(
                "a Yjs v2 update (Y.encodeStateAsUpdateV2); only v1 updates are supported "
                "(Y.encodeStateAsUpdate)"
            ) from None
        raise ValueError(f"not a Yjs v1 update: {exc}") from None


def is_v2_update(update: bytes) -> bool:
    """True if ``update`` has the layout of a Yjs v2 update (``encodeStateAsUpdateV2``).

    A v2 update starts with a zero feature flag and nine length-prefixed column buffers
    (key clocks, clients, left and right clocks, infos, strings, parent infos, type refs,
    lengths); the rest holds the remaining values and the delete set.
    """
    r = _Reader(update)
    try:
        if r.uint() != 0:
            return False
        for _ in range(9):
            r.take(r.uint())
    except ValueError:
        return False
    return not r.done()  # at least the rest: its struct count and delete set


def _scan_structs(data: bytes, *, stop_at_objects: bool) -> tuple[int, bool]:
    """Walk the structs of a v1 update: ``(offset of its delete set, objects seen)``.

    "Objects" are plain JSON objects or arrays in ``Any`` items and any JSON, embed,
    format or subdocument content (what `canonical_order()` may have to rewrite);
    with ``stop_at_objects`` the walk returns ``(-1, True)`` at the first. The walk is
    inlined, several times faster than the general reader, because it runs on every
    small update received and every whole document encoded. Raises ``IndexError`` or
    ``ValueError`` on malformed input.
    """
    pos = 0
    found = False

    def uint() -> int:
        nonlocal pos
        b = data[pos]
        pos += 1
        if b < 0x80:
            return b
        result, shift = b & 0x7F, 7
        while True:
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result
            shift += 7
            if shift > 70:
                raise ValueError("variable-length int too long")

    def skip(n: int) -> None:
        nonlocal pos
        pos += n
        if pos > len(data):
            raise IndexError("unexpected end of update")

    for _ in range(uint()):
        count = uint()
        uint()  # client
        uint()  # clock
        for _ in range(count):
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            if ref in (_GC, _SKIP):
                if not uint():
                    raise ValueError("a struct of length 0")
                continue
            if info & 0x80:  # origin
                uint()
                uint()
            if info & 0x40:  # right origin
                uint()
                uint()
            if not info & 0xC0:  # no origins: the parent is written out
                if uint() == 1:
                    skip(uint())  # a root type's name
                else:
                    uint()
                    uint()
                if info & 0x20:
                    skip(uint())  # parent sub (a map key)
            if ref in (_STR, _BINARY):
                skip(uint())
            elif ref == _DELETED:
                if not uint():
                    raise ValueError("a struct of length 0")
            elif ref == _TYPE:
                if uint() in (_XML_ELEMENT, _XML_HOOK):
                    skip(uint())
            elif ref == _ANY:
                n = uint()
                if not n:
                    raise ValueError("a struct of length 0")
                for _ in range(n):
                    tag = data[pos]
                    pos += 1
                    if tag in (_STRING, _BUFFER):
                        skip(uint())
                    elif tag == _VARINT:
                        uint()
                    elif tag in (_F64, _BIGINT):
                        skip(8)
                    elif tag == _F32:
                        skip(4)
                    elif tag in (_UNDEFINED, _NULL, _FALSE, _TRUE):
                        pass
                    elif tag in (_OBJECT, _ARRAY):
                        if stop_at_objects:
                            return -1, True
                        found = True
                        r = _Reader(data, pos - 1)
                        _skip_any(r, 0)
                        pos = r.pos
                    else:
                        raise ValueError(f"unknown value tag {tag}")
            elif ref in (_JSON, _EMBED, _FORMAT, _DOC):
                if stop_at_objects:
                    return -1, True
                found = True
                r = _Reader(data, pos)
                if _content_length(r, ref) <= 0:
                    raise ValueError("a struct of length 0")
                pos = r.pos
            else:
                raise ValueError(f"unknown item content {ref}")
    return pos, found


# -- one encoding per state -----------------------------------------------------------


def canonical_order(update: bytes) -> bytes:
    """``update`` with every plain JSON object's keys in sorted order; same meaning.

    Yrs encodes plain objects (``Any`` maps, and the JSON of embeds, formats and old
    JSON items) in its hash maps' random order, so one state has many encodings. The
    key order of a plain object carries no meaning in Yjs, so sorting it gives the one
    encoding every replica reaches. Returns ``update`` itself when nothing moved.

    Raises:
        ValueError: ``update`` is not a well-formed v1 update.

    Example:
        >>> import pycrdt
        >>> doc = pycrdt.Doc()
        >>> doc.get("a", type=pycrdt.Array).append({"b": 1, "a": 2, "c": 3})
        >>> out = canonical_order(doc.get_update())
        >>> out.index(b"\\x01a") < out.index(b"\\x01b") < out.index(b"\\x01c")
        True
    """
    if not _holds_objects(update):
        return update
    r = _Reader(update)
    out: list[bytes] = []
    copied = 0  # update[:copied] is already in out
    for _ in range(r.uint()):
        count = r.uint()
        r.uint()
        r.uint()
        for _ in range(count):
            info = r.u8()
            ref = info & 0x1F
            if ref in (_GC, _SKIP):
                r.uint()
                continue
            if info & 0x80:
                r.uint()
                r.uint()
            if info & 0x40:
                r.uint()
                r.uint()
            if info & 0xC0 == 0:
                if r.uint() == 1:
                    r.take(r.uint())
                else:
                    r.uint()
                    r.uint()
                if info & 0x20:
                    r.take(r.uint())
            if ref == _ANY:
                for _ in range(r.uint()):
                    start = r.pos
                    canon = _canonical_any(r, 0)
                    if canon != update[start : r.pos]:
                        out.append(update[copied:start])
                        out.append(canon)
                        copied = r.pos
            elif ref not in (_JSON, _EMBED, _FORMAT):
                _content_length(r, ref)
            else:
                if ref == _FORMAT:
                    r.take(r.uint())  # the attribute's name
                strings = r.uint() if ref == _JSON else 1
                for _ in range(strings):
                    start = r.pos
                    text = r.string()
                    canon_text = _canonical_json(text)
                    if canon_text is not None:
                        raw = canon_text.encode()
                        out.append(update[copied:start])
                        out.append(_uint(len(raw)) + raw)
                        copied = r.pos
    _read_delete_set(r)
    if not r.done():
        raise ValueError("bytes after the end of the update")
    if not out:
        return update
    out.append(update[copied:])
    return b"".join(out)


def _holds_objects(data: bytes) -> bool:
    """Quickly: may ``data`` hold a plain object (so `canonical_order()` must walk)?

    Malformed input answers True, leaving the verdict to the full walk.
    """
    try:
        return _scan_structs(data, stop_at_objects=True)[1]
    except (IndexError, ValueError):
        return True


def _canonical_any(r: _Reader, depth: int) -> bytes:
    """Read one ``Any`` value; return its encoding with object keys sorted."""
    if depth > _MAX_DEPTH:
        raise ValueError("values nest too deep")
    start = r.pos
    tag = r.u8()
    if tag == _OBJECT:
        n = r.uint()
        entries: list[tuple[str, bytes]] = []
        for _ in range(n):
            key_start = r.pos
            key = r.string()
            key_raw = r.data[key_start : r.pos]
            entries.append((key, key_raw + _canonical_any(r, depth + 1)))
        entries.sort(key=lambda entry: entry[0])
        return bytes([_OBJECT]) + _uint(n) + b"".join(raw for _, raw in entries)
    if tag == _ARRAY:
        n = r.uint()
        items = [_canonical_any(r, depth + 1) for _ in range(n)]
        return bytes([_ARRAY]) + _uint(n) + b"".join(items)
    r.pos = start
    _skip_any(r, depth)  # skips a scalar
    return r.data[start : r.pos]


def _canonical_json(text: str) -> str | None:
    """The JSON ``text`` with object keys sorted, or None when it has no such object."""
    if not _json_has_unordered_map(text):
        return None
    try:
        return json.dumps(
            json.loads(text),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except ValueError:
        return None
