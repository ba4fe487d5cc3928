"""YDoc: a Yjs document (pycrdt) as an immutable store value whose edits ship as small updates.

A [`YDoc`][podshare.crdt.YDoc] holds the state of a Yjs document. Merging is Yjs's own (apply both
states to one document), so concurrent edits from any number of pods converge to the
same text, arrays and maps. Editing returns a new value and remembers the Yjs update it
made, so a store ships that update (tens of bytes) instead of the document.

Reading: [`YDoc.text()`][podshare.crdt.YDoc.text], [`YDoc.array()`][podshare.crdt.YDoc.array] and
[`YDoc.map()`][podshare.crdt.YDoc.map] return plain Python snapshots (``str``, ``list``, ``dict``)
that cannot be confused with live shared types; [`YDoc.to_doc()`][podshare.crdt.YDoc.to_doc] returns
a fresh ``pycrdt.Doc`` copy the caller owns. Neither ever changes the value.

pycrdt traps, and what this module does about them:

- Yjs numbers are JavaScript doubles: pycrdt returns ``1`` as ``1.0`` and silently rounds
  integers beyond 2**53. Writers refuse integers outside ``±2**53``
  (`MAX_SAFE_INTEGER`); readers turn integral floats back into ``int`` (pass
  ``ints=False`` to get Yjs's own floats).
- pycrdt panics (a ``BaseException``, not an ``Exception``) on integers beyond 64 bits and
  on non-``str`` map keys. The helpers ([`YDoc.append()`][podshare.crdt.YDoc.append],
  [`YDoc.set()`][podshare.crdt.YDoc.set], ...) validate values first and raise
  [`InvalidValue`][podshare.InvalidValue]; inside [`YDoc.edit()`][podshare.crdt.YDoc.edit] a panic
  is mapped to ``InvalidValue``; malformed bytes from the network raise
  [`DecodeError`][podshare.DecodeError].
- Yrs encodes plain JSON objects (a ``dict`` inserted by pycrdt, ``yarray.push([{...}])``
  in JavaScript) in random key order, which would give one document several encodings
  and make replica digests disagree forever. The canonical wire form sorts their keys
  (`podshare.crdt._yupdate.canonical_order`), so equal documents always encode
  alike. The helpers still store dicts as shared ``pycrdt.Map`` types, which merge per
  key where a plain object is replaced whole.
- Yrs reads a Yjs v2 update, or bytes that merely start like an update, as a valid and
  often empty one. `YDoc.from_update` and `YDoc.from_wire` check the v1
  layout first and raise [`DecodeError`][podshare.exceptions.DecodeError] (naming v2 updates);
  they never return an empty document for bytes that are not one.
- pycrdt's ``Text`` offsets count UTF-8 bytes; an offset inside a multi-byte character
  silently corrupts the document. [`YDoc.insert_text()`][podshare.crdt.YDoc.insert_text] and
  [`YDoc.delete_text()`][podshare.crdt.YDoc.delete_text] take character offsets and convert them.
- pycrdt observers run on whichever thread commits a transaction; nothing here relies on
  them for store events (the store makes its own events).

Compaction: a value's wire form is always the state re-encoded by a garbage-collecting
``Doc`` (deleted content becomes compact ranges), never an accumulation of updates, so it
grows with the live content plus a compact delete set, not with the number of edits. The
working ``Doc`` a value keeps for fast edits is rebuilt from its own encoding every 64
edits or merges, which squashes the blocks many small transactions leave behind.

Equality compares state vectors and delete sets, which identify a Yjs state whatever its
encoding; the canonical bytes are made only when the wire form is asked for.

Example:
    >>> from podshare.crdt import YDoc
    >>> chat = YDoc().append("messages", {"role": "user", "text": "hi"})
    >>> chat.array("messages")
    [{'role': 'user', 'text': 'hi'}]
    >>> later = chat.append("messages", {"role": "bot", "text": "hello"})
    >>> len(later.delta_from(chat).to_wire()[1]) < 100  # only the new message travels
    True
    >>> chat.merge(later) == later
    True
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

try:
    import pycrdt
except ModuleNotFoundError as exc:
    if exc.name != "pycrdt":
        raise
    raise ImportError("podshare.crdt.YDoc needs pycrdt: pip install 'podshare[yjs]'") from exc
from pycrdt import get_state as _get_state
from pycrdt import get_update as _get_update
from pycrdt import merge_updates as _merge_updates

from podshare.crdt import _yupdate
from podshare.exceptions import DecodeError, InvalidValue

__all__ = ["MAX_SAFE_INTEGER", "MAX_UPDATE_SIZE", "YDoc"]

#: The largest integer magnitude a Yjs number holds exactly (JavaScript's safe range).
MAX_SAFE_INTEGER = 2**53
#: The largest encoded document `YDoc.from_wire()` accepts.
MAX_UPDATE_SIZE = 64 * 1024 * 1024

_EMPTY = b"\x00\x00"
_MAX_DEPTH = 32
# A state plus pending layers; a layer is added only for items split two ways.
_MAX_PARTS = 64
# Edits and merges after which a value's working Doc is rebuilt (see YDoc._squash).
_SQUASH_EVERY = 64
# Updates up to this size get the full layout check before Yrs reads them; larger ones
# get it when Yrs found no content in them (the silent failure the check exists for),
# which keeps the check off the path of large, well-formed documents.
_CHECK_ALWAYS_BELOW = 64 * 1024


def _is_panic(exc: BaseException) -> bool:
    # pyo3 raises PanicException, a BaseException subclass that its own module creates
    # lazily, so it is recognised by name; KeyboardInterrupt, SystemExit and
    # cancellation exceptions are never mistaken for it.
    return not isinstance(exc, Exception) and type(exc).__name__ == "PanicException"


def _new_doc(client_id: int | None = None) -> pycrdt.Doc[Any]:
    # skip_gc=False: deleted content is garbage-collected on every commit, which keeps
    # the re-encoded state compact (see "Compaction" above).
    return pycrdt.Doc(client_id=client_id, skip_gc=False)


def _apply(doc: pycrdt.Doc[Any], update: bytes) -> None:
    """Apply ``update``; anything pycrdt raises (panics included) becomes DecodeError."""
    try:
        doc.apply_update(update)
    except Exception as exc:
        raise DecodeError(f"not a valid Yjs update: {exc}") from exc
    except BaseException as exc:
        if not _is_panic(exc):
            raise
        raise DecodeError(f"not a valid Yjs update: {exc}") from exc


def _check_layout(update: bytes) -> None:
    """DecodeError unless ``update`` is one well-formed v1 update (v2 updates named)."""
    try:
        _yupdate.check_update(update)
    except ValueError as exc:
        raise DecodeError(str(exc)) from exc


def _canonical(update: bytes) -> bytes:
    """Yrs's encoding of a state with plain objects' keys sorted (see canonical_order)."""
    try:
        return _yupdate.canonical_order(update)
    except ValueError as exc:  # Yrs's own output: a scanner bug, not bad input
        raise DecodeError(f"cannot scan a Yjs update: {exc}") from exc


def _has_leftover(blob: bytes, sv_bytes: bytes, sv: dict[int, int]) -> bool:
    """True if a document at state ``sv`` could not integrate all of ``blob``."""
    rest = _get_update(blob, sv_bytes)
    if rest[:1] != b"\x00":
        return True  # structs beyond the state: their dependencies are missing
    ds = _yupdate.parse_delete_set(rest, 1)
    return any(
        clock + length > sv.get(client, 0)
        for client, ranges in ds.items()
        for clock, length in ranges
    )


def _canonical_of(source: bytes) -> tuple[bytes, pycrdt.Doc[Any]]:
    """The one encoding of the state ``source`` encodes, and a fresh Doc holding it.

    Yrs squashes adjacent items when it decodes an update, but not always when they were
    made by local transactions or integrated piecemeal, so two Docs with one state may
    encode it differently. A Doc that decoded the state in one go encodes it in the form
    every replica reaches, whatever its history (replica digests hash it).
    """
    fresh = _new_doc()
    if source != _EMPTY:
        _apply(fresh, source)
    return _canonical(fresh.get_update()), fresh


def _parse(blob: bytes) -> tuple[list[_yupdate.Struct], _yupdate.DeleteSet]:
    try:
        return _yupdate.parse_update(blob)
    except (ValueError, IndexError) as exc:
        raise DecodeError(f"not a valid Yjs update: {exc}") from exc


def _parse_all(blobs: Iterable[bytes]) -> tuple[list[_yupdate.Struct], _yupdate.DeleteSet]:
    """The structs of every update in ``blobs``, and their delete sets merged."""
    structs: list[_yupdate.Struct] = []
    ds: _yupdate.DeleteSet = {}
    for blob in blobs:
        blob_structs, blob_ds = _parse(blob)
        structs.extend(blob_structs)
        for client, ranges in blob_ds.items():
            ds.setdefault(client, []).extend(ranges)
    return structs, ds


def _settle(
    doc: pycrdt.Doc[Any], structs: list[_yupdate.Struct], ds: _yupdate.DeleteSet
) -> tuple[bytes, ...]:
    """Apply to ``doc`` every struct and delete whose dependencies it has; encode the rest.

    Yrs keeps an update whose dependencies are missing inside the ``Doc`` but encodes
    such a document inconsistently (sometimes dropping the waiting part, sometimes
    half-applying it), so podshare never lets Yrs hold one: what cannot be integrated yet
    waits here, beside the document, in one canonical encoding.
    """
    waiting = sorted(set(structs))
    while waiting:
        sv = _yupdate.parse_state_vector(doc.get_state())
        have = dict(sv)
        ready: list[_yupdate.Struct] = []
        progress = True
        while progress:
            progress = False
            later: list[_yupdate.Struct] = []
            for struct in waiting:
                known = have.get(struct.client, 0)
                if struct.end <= known:
                    progress = True  # already integrated: drop it
                elif struct.clock <= known and all(
                    clock < have.get(client, 0) for client, clock in struct.deps
                ):
                    ready.append(struct)
                    have[struct.client] = struct.end
                    progress = True
                else:
                    later.append(struct)
            waiting = later
        if not ready:
            break
        for layer in _yupdate.encode_structs(ready):
            _apply(doc, layer)
        after = _yupdate.parse_state_vector(doc.get_state())
        if any(after.get(st.client, 0) < st.end for st in ready):
            # Yrs disagrees with the parse (a malformed struct): keep them waiting
            # rather than loop; they stay visible in the wire form.
            waiting = sorted(
                set(waiting) | {st for st in ready if after.get(st.client, 0) < st.end}
            )
            break
    sv = _yupdate.parse_state_vector(doc.get_state())
    now, later_ds = _yupdate.split_delete_set(ds, sv)
    if now:
        _apply(doc, _yupdate.delete_set_update(now))
    if not waiting and not later_ds:
        return ()
    return tuple(_yupdate.encode_structs(waiting, later_ds))


def _prepare(value: Any, depth: int = 0) -> Any:
    """Validate a plain value and turn dicts and lists into shared pycrdt types."""
    if depth > _MAX_DEPTH:
        raise InvalidValue(f"values nest deeper than {_MAX_DEPTH}")
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return value
        raise InvalidValue(
            f"int {value} is outside ±2**53: Yjs numbers are doubles and would round it"
        )
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise InvalidValue(f"{value!r} cannot be stored in a Yjs document (JSON-like only)")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Mapping):
        entries: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"map keys must be str, got {key!r}")
            entries[key] = _prepare(item, depth + 1)
        return pycrdt.Map(entries)
    if isinstance(value, list | tuple):
        return pycrdt.Array([_prepare(item, depth + 1) for item in value])
    raise InvalidValue(
        f"{type(value).__name__} cannot be stored in a Yjs document "
        "(None, bool, int, float, str, bytes, and lists and dicts of those)"
    )


def _plain(value: Any, ints: bool) -> Any:
    """A snapshot of pycrdt's ``to_py()`` output with Yjs's number quirk undone."""
    if isinstance(value, float):
        if ints and value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return int(value)
        return value
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, list):
        return [_plain(item, ints) for item in value]
    if isinstance(value, dict):
        # Yrs iterates maps in hash order; sorted keys make snapshots print the same.
        return {key: _plain(value[key], ints) for key in sorted(value)}
    return value


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidValue(f"a root type's name must be a non-empty str, got {name!r}")
    return name


class YDoc:
    """An immutable Yjs document state; ``merge`` is Yjs's own.

    ``YDoc()`` is the empty document. Edits return a new value: [`edit()`][podshare.crdt.YDoc.edit]
    runs any pycrdt code on a private working copy, and [`append()`][podshare.crdt.YDoc.append],
    [`extend()`][podshare.crdt.YDoc.extend], [`insert_text()`][podshare.crdt.YDoc.insert_text],
    [`set()`][podshare.crdt.YDoc.set] and [`delete()`][podshare.crdt.YDoc.delete] cover the common
    cases with validation. The value made by an edit remembers the Yjs update it added, so
    ``new.delta_from(old)`` costs nothing and ships only that update.

    Use it in a store; only the edit travels:

    ```python
    chats = Store[YDoc]("chats", transport)
    await chats.update("chat:42", lambda d: d.append("messages", {"text": "hi"}))
    chats["chat:42"].array("messages")
    ```

    Equal documents have equal [`to_wire()`][podshare.crdt.YDoc.to_wire] forms (replica digests hash
    them). That holds for documents with plain JSON objects too (other Yjs clients'
    ``yarray.push([{...}])``): their keys are sorted in the wire form.

    Example:
        >>> doc = YDoc().insert_text("title", 0, "Hello")
        >>> doc = doc.insert_text("title", 5, ", world")
        >>> doc.text("title")
        'Hello, world'
        >>> YDoc.from_wire(doc.to_wire()) == doc
        True
    """

    __slots__ = (
        "__weakref__",
        "_canon",
        "_delta",
        "_hot",
        "_key",
        "_lease",
        "_parents",
        "_pending",
        "_raw",
        "_raw_fresh",
        "_since_squash",
    )

    # The state is kept in up to three forms, made lazily: a working Doc, an encoding of
    # it, and the canonical encoding. Merging a delta then costs one encoding of the
    # state (when the Doc moves on to the result), not three; the canonical form is made
    # only when asked for (the wire, a digest).
    #
    # The canonical encoding (see _canonical), or None until asked for.
    _canon: bytes | None
    # Some encoding of the integrated state, or None while only the Doc holds it.
    _raw: bytes | None
    # True when _raw was encoded by a Doc that decoded the state in one go: canonical
    # but for plain objects' key order, so _canonical_bytes only sorts those.
    _raw_fresh: bool
    # Parts whose dependencies have not arrived yet (see _settle), canonically encoded.
    _pending: tuple[bytes, ...]
    # A working Doc holding exactly the integrated state, which the next edit or merge
    # may take (list.pop is atomic, so two callers never share one); a value whose Doc
    # was taken rebuilds one from its bytes.
    _hot: list[pycrdt.Doc[Any]]
    # A Yjs client id this value may keep editing with. Reusing one id keeps documents
    # small, but two edits of one state with the same id would clash; the lease moves
    # to exactly one successor, so that never happens in this process.
    _lease: list[int]
    # What equality compares: the state vector and the delete set, which identify a
    # Yjs state whatever its encoding (each id names one item, everywhere).
    _key: (
        tuple[tuple[tuple[int, int], ...], tuple[tuple[int, tuple[tuple[int, int], ...]], ...]]
        | None
    )
    _parents: tuple[weakref.ref[YDoc], ...]
    _delta: YDoc | None
    # Changes made to the working Doc since it was last rebuilt (see _squash).
    _since_squash: int

    def __init__(self) -> None:
        self._canon = _EMPTY
        self._raw = None
        self._raw_fresh = False
        self._pending = ()
        self._hot = []
        self._lease = []
        self._key = ((), ())
        self._parents = ()
        self._delta = None
        self._since_squash = 0

    @classmethod
    def _make(
        cls,
        doc: pycrdt.Doc[Any],
        pending: tuple[bytes, ...] = (),
        parents: tuple[YDoc, ...] = (),
        canon: bytes | None = None,
    ) -> YDoc:
        new = cls()
        new._canon = canon
        new._key = None
        new._pending = pending
        new._hot.append(doc)
        new._lease.append(doc.client_id)
        new._parents = tuple(weakref.ref(p) for p in parents)
        if parents:
            new._since_squash = max(p._since_squash for p in parents) + 1
            if new._since_squash >= _SQUASH_EVERY:
                new._squash()
        return new

    def _squash(self) -> None:
        """Rebuild the working Doc from its own encoding (compaction, on a change count).

        A Doc that lived through many transactions keeps its items in many small blocks
        and deleted content in fragments; one decoded from the state squashes them, so
        it is smaller and faster to index. The rebuilt Doc keeps the leased client id,
        and its encoding is the canonical form, which is kept.
        """
        try:
            doc = self._hot.pop()
        except IndexError:
            return
        fresh = _new_doc(doc.client_id)
        _apply(fresh, doc.get_update())
        self._canon = _canonical(fresh.get_update())
        self._raw = None
        self._hot.append(fresh)
        self._since_squash = 0

    @classmethod
    def _from_blobs(cls, blobs: Iterable[bytes], *, trusted: bool = False) -> YDoc:
        """Build a value from updates of any provenance (DecodeError if malformed).

        ``trusted``: the updates come from Yrs in this process (no layout check).
        """
        parts = [b for b in blobs if b and b != _EMPTY]
        if not parts:
            return cls()
        if not trusted:
            for part in parts:
                if len(part) <= _CHECK_ALWAYS_BELOW:
                    _check_layout(part)
        doc = _new_doc()
        for part in parts:
            _apply(doc, part)
        sv_bytes = doc.get_state()
        sv = _yupdate.parse_state_vector(sv_bytes)
        if not trusted and not sv:
            # Nothing integrated: either deletes only, or bytes Yrs misread as empty.
            for part in parts:
                if len(part) > _CHECK_ALWAYS_BELOW:
                    _check_layout(part)
        if not any(_has_leftover(part, sv_bytes, sv) for part in parts):
            new = cls._make(doc)
            if len(parts) == 1:
                # A Doc that decoded the state in one go encodes it canonically, but for
                # plain objects' key order, which _canonical_bytes sorts when asked.
                new._raw = doc.get_update()
                new._raw_fresh = True
            return new
        # Something waits for dependencies: redo it cleanly, struct by struct.
        doc = _new_doc()
        pending = _settle(doc, *_parse_all(parts))
        return cls._make(doc, pending)

    @classmethod
    def _finish(
        cls,
        doc: pycrdt.Doc[Any],
        pending: Iterable[bytes],
        parents: tuple[YDoc, ...] = (),
    ) -> YDoc:
        """Wrap ``doc`` (clean), first integrating what of ``pending`` it now can."""
        blobs = [p for p in pending if p]
        result: tuple[bytes, ...] = ()
        if blobs:
            result = _settle(doc, *_parse_all(blobs))
        return cls._make(doc, result, parents)

    def _bytes(self) -> bytes:
        """An encoding of the integrated state (canonical if already made)."""
        if self._canon is not None:
            return self._canon
        if self._raw is None:
            self._raw = self._hot[0].get_update()
        return self._raw

    def _canonical_bytes(self) -> bytes:
        if self._canon is None and self._raw_fresh and self._raw is not None:
            self._canon = _canonical(self._raw)
            self._raw = None
        if self._canon is None:
            source = self._bytes()
            self._canon, fresh = _canonical_of(source)
            self._raw = None
            if not self._hot:
                self._give_back(fresh)
        return self._canon

    def _equality_key(
        self,
    ) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, tuple[tuple[int, int], ...]], ...]]:
        key = self._key
        if key is None:
            if self._hot:
                doc = self._hot[0]
                sv_bytes = doc.get_state()
                ds_update = doc.get_update(sv_bytes)
            else:
                source = self._bytes()
                sv_bytes = _get_state(source)
                ds_update = _get_update(source, sv_bytes)
            sv = _yupdate.parse_state_vector(sv_bytes)
            ds = _yupdate.parse_delete_set(ds_update, 1)
            key = (
                tuple(sorted((c, k) for c, k in sv.items() if k)),
                tuple(sorted((c, tuple(r)) for c, r in ds.items())),
            )
            self._key = key
        return key

    def _take_doc(self) -> pycrdt.Doc[Any]:
        """A working Doc with this value's content, now owned by the caller."""
        if self._hot and self._canon is None and self._raw is None:
            # The Doc is about to change: keep this value's state in bytes first.
            self._raw = self._hot[0].get_update()
        if self._hot and self._key is None:
            self._equality_key()
        try:
            doc = self._hot.pop()
        except IndexError:
            pass
        else:
            try:
                self._lease.pop()
            except IndexError:
                pass
            return doc
        try:
            client_id: int | None = self._lease.pop()
        except IndexError:
            client_id = None
        doc = _new_doc(client_id)
        source = self._bytes()
        if source != _EMPTY:
            _apply(doc, source)
        # The pending parts stay out of the Doc: they are carried by the value and
        # offered to the Doc again by _finish after every change.
        return doc

    def _give_back(self, doc: pycrdt.Doc[Any]) -> None:
        if not self._hot:
            self._hot.append(doc)
            self._lease.append(doc.client_id)

    def _read_doc(self) -> pycrdt.Doc[Any]:
        """A Doc to read from (never edited through; may be the cached working copy)."""
        hot = self._hot
        if hot:
            try:
                return hot[0]
            except IndexError:  # taken by another thread meanwhile
                pass
        doc = self._take_doc()
        self._give_back(doc)
        return doc

    # -- the value-type protocol -------------------------------------------------------

    def merge(self, other: YDoc) -> YDoc:
        """Return the join of both documents (Yjs applies one state to the other).

        Commutative, associative and idempotent; returns ``self`` or ``other`` when one
        already contains the other.

        Example:
            >>> a = YDoc().append("log", "from a")
            >>> b = YDoc().append("log", "from b")
            >>> sorted(a.merge(b).array("log")) == sorted(b.merge(a).array("log"))
            True
        """
        if not isinstance(other, YDoc):
            raise TypeError(f"cannot merge YDoc with {type(other).__name__}")
        if other is self or other.is_empty:
            return self
        if self.is_empty:
            return other
        if other._descends_from(self):
            return other
        if self._descends_from(other):
            return self
        if self._pending == other._pending and self._equality_key() == other._equality_key():
            return self
        # Apply the smaller state into the larger one's working Doc.
        base, small = self, other
        if not base._hot and (other._hot or len(other._bytes()) > len(self._bytes())):
            base, small = other, self
        doc = base._take_doc()
        small_state = small._bytes()
        if small_state != _EMPTY:
            _apply(doc, small_state)
        result = self._finish(doc, (*base._pending, *small._pending), parents=(base, small))
        if result._pending == base._pending and result._equality_key() == base._equality_key():
            base._give_back(result._hot.pop())
            return base
        return result

    def _descends_from(self, other: YDoc) -> bool:
        return any(ref() is other for ref in self._parents)

    def delta_from(self, old: YDoc) -> YDoc:
        """Return a small value ``d`` with ``old.merge(d) == self`` (the Yjs diff).

        Free when this value was made from ``old`` by one edit; otherwise the update
        since ``old``'s state vector.

        Example:
            >>> chat = YDoc().extend("messages", [f"message {i}" for i in range(1000)])
            >>> newer = chat.append("messages", "one more")
            >>> d = newer.delta_from(chat)
            >>> len(d.to_wire()[1]) < 60, chat.merge(d) == newer
            (True, True)
        """
        if old is self or old == self:
            return YDoc()
        if self._delta is not None and self._descends_from(old):
            return self._delta
        old_sv = _yupdate.encode_state_vector(dict(old._equality_key()[0]))
        if self._hot:
            diff = self._hot[0].get_update(old_sv)
        else:
            mine = self._bytes()
            diff = _get_update(mine, old_sv) if mine != _EMPTY else b""
        return self._from_blobs((diff, *self._pending), trusted=True)

    def to_wire(self) -> bytes | list[bytes]:
        """The canonical wire form: the Yjs update of the whole state (``bytes``).

        When the value holds updates whose dependencies have not arrived yet (a delta
        received before the edits it builds on), the form is ``[state, *pending]``:
        those parts, in one canonical encoding, wait beside the state until they apply.
        """
        if self._pending:
            return [self._canonical_bytes(), *self._pending]
        return self._canonical_bytes()

    @classmethod
    def from_wire(cls, data: object) -> YDoc:
        """Decode [`to_wire()`][podshare.crdt.YDoc.to_wire]'s form (a Yjs v1 update, or a list of
        them).

        Raises:
            DecodeError: not bytes, too large, or not a valid Yjs v1 update (a Yjs v2
                update, from ``Y.encodeStateAsUpdateV2``, is refused and named).
        """
        shape = f"a YDoc's wire form must be bytes or a list of 1 to {_MAX_PARTS} bytes"
        if isinstance(data, bytes | bytearray):
            blobs: list[bytes] = [bytes(data)]
        elif isinstance(data, list | tuple) and 0 < len(data) <= _MAX_PARTS:
            blobs = []
            for part in data:
                if not isinstance(part, bytes | bytearray):
                    raise DecodeError(shape)
                blobs.append(bytes(part))
        else:
            raise DecodeError(shape)
        if sum(len(b) for b in blobs) > MAX_UPDATE_SIZE:
            raise DecodeError(f"a YDoc over {MAX_UPDATE_SIZE} bytes")
        if any(not b for b in blobs):
            raise DecodeError("an empty Yjs update")
        return cls._from_blobs(blobs)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_update(cls, update: bytes) -> YDoc:
        """Wrap a Yjs v1 update (``pycrdt.Doc.get_update()``, ``Y.encodeStateAsUpdate``).

        Raises:
            DecodeError: ``update`` is not a valid Yjs v1 update. Yjs v2 updates
                (``Y.encodeStateAsUpdateV2``) are refused with a message that says so;
                convert them with ``Y.convertUpdateFormatV2ToV1`` first.

        Example:
            >>> YDoc.from_update(bytes.fromhex("00000000000001000000000000"))
            ... # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            podshare.exceptions.DecodeError: a Yjs v2 update (Y.encodeStateAsUpdateV2); ...
        """
        return cls.from_wire(update)

    @classmethod
    def from_doc(cls, doc: pycrdt.Doc[Any]) -> YDoc:
        """Snapshot a live ``pycrdt.Doc`` (the doc is not kept or changed)."""
        return cls._from_blobs((doc.get_update(),), trusted=True)

    # -- reading -------------------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """True for the empty document."""
        return not self._pending and self._equality_key() == ((), ())

    def to_update(self) -> bytes:
        """The whole state as one Yjs v1 update (pending parts merged in)."""
        if self._pending:
            return _merge_updates(self._canonical_bytes(), *self._pending)
        return self._canonical_bytes()

    @property
    def state_vector(self) -> bytes:
        """The encoded Yjs state vector (what a peer sends in sync step 1)."""
        return _yupdate.encode_state_vector(dict(self._equality_key()[0]))

    def to_doc(self) -> pycrdt.Doc[Any]:
        """Return a new ``pycrdt.Doc`` with this content; editing it never changes the value.

        Example:
            >>> from pycrdt import Text
            >>> doc = YDoc().insert_text("t", 0, "hi").to_doc()
            >>> str(doc.get("t", type=pycrdt.Text))
            'hi'
        """
        doc = _new_doc()
        source = self._bytes()
        if source != _EMPTY:
            _apply(doc, source)
        for part in self._pending:
            _apply(doc, part)
        return doc

    def text(self, name: str) -> str:
        """The content of root text ``name`` ("" if absent)."""
        return str(self._read_doc().get(_check_name(name), type=pycrdt.Text))

    def array(self, name: str, *, ints: bool = True) -> list[Any]:
        """A plain copy of root array ``name`` ([] if absent); shared maps become dicts.

        Args:
            ints: return integral numbers as ``int`` (Yjs stores every number as a
                double, so pycrdt alone gives ``1.0`` for ``1``).
        """
        value = self._read_doc().get(_check_name(name), type=pycrdt.Array).to_py()
        return _plain(value, ints) if value is not None else []

    def map(self, name: str, *, ints: bool = True) -> dict[str, Any]:
        """A plain copy of root map ``name`` ({} if absent); see
        [`array()`][podshare.crdt.YDoc.array] for ``ints``."""
        value = self._read_doc().get(_check_name(name), type=pycrdt.Map).to_py()
        return _plain(value, ints) if value is not None else {}

    # -- editing ---------------------------------------------------------------------------

    def edit(self, fn: Callable[[pycrdt.Doc[Any]], object]) -> YDoc:
        """Return a new value: ``fn`` edits a private working copy in one transaction.

        ``fn`` receives a ``pycrdt.Doc``; it must not keep it. Exceptions from ``fn``
        propagate and leave this value unchanged.

        Raises:
            InvalidValue: pycrdt panicked on a value (an integer beyond 64 bits, a
                non-``str`` map key).

        Example:
            >>> from pycrdt import Array
            >>> doc = YDoc().edit(lambda d: d.get("xs", type=Array).extend([1, 2]))
            >>> doc.array("xs")
            [1, 2]
        """
        doc = self._take_doc()
        updates: list[bytes] = []

        def capture(event: pycrdt.TransactionEvent) -> None:
            updates.append(event.update)

        subscription = doc.observe(capture)
        try:
            try:
                with doc.transaction():
                    fn(doc)
            except Exception:
                raise
            except BaseException as exc:
                if not _is_panic(exc):
                    raise
                raise InvalidValue(f"pycrdt refused a value: {exc}") from exc
        finally:
            doc.unobserve(subscription)
        delta = updates[0] if len(updates) == 1 else _merge_updates(*updates) if updates else _EMPTY
        if delta == _EMPTY:
            self._give_back(doc)
            return self
        new = self._finish(doc, self._pending, parents=(self,))
        new._delta = self._from_blobs((delta,), trusted=True)
        return new

    def append(self, name: str, *values: Any) -> YDoc:
        """Return a new value with ``values`` appended to root array ``name``.

        Values are validated first ([`InvalidValue`][podshare.InvalidValue]); dicts
        and lists become shared maps and arrays, which read back as dicts and lists.
        """
        return self.extend(name, values)

    def extend(self, name: str, values: Iterable[Any]) -> YDoc:
        """Return a new value with every item of ``values`` appended to array ``name``."""
        _check_name(name)
        items = [_prepare(v) for v in values]
        if not items:
            return self
        return self.edit(lambda d: d.get(name, type=pycrdt.Array).extend(items))

    def insert_text(self, name: str, index: int, text: str) -> YDoc:
        """Return a new value with ``text`` inserted at ``index`` of root text ``name``.

        ``index`` counts characters (code points), as Python strings do. pycrdt's own
        ``Text`` offsets count UTF-8 bytes, and an offset inside a multi-byte character
        corrupts the document; the helpers convert, so that cannot happen.
        """
        _check_name(name)
        if not isinstance(text, str):
            raise InvalidValue(f"text must be a str, got {type(text).__name__}")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidValue(f"index must be an int >= 0, got {index!r}")
        if not text:
            return self

        def insert(d: pycrdt.Doc[Any]) -> None:
            t = d.get(name, type=pycrdt.Text)
            current = str(t)
            if index > len(current):
                raise InvalidValue(f"index {index} is past the end of text {name!r}")
            t.insert(len(current[:index].encode()), text)

        return self.edit(insert)

    def delete_text(self, name: str, index: int, length: int) -> YDoc:
        """Return a new value without ``length`` characters of text ``name`` from ``index``.

        Counts characters, like [`insert_text()`][podshare.crdt.YDoc.insert_text]; a range past the
        end is clipped.
        """
        _check_name(name)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (index, length)):
            raise InvalidValue("index and length must be ints >= 0")
        if index < 0 or length < 0:
            raise InvalidValue("index and length must be ints >= 0")

        def delete(d: pycrdt.Doc[Any]) -> None:
            t = d.get(name, type=pycrdt.Text)
            current = str(t)
            start = len(current[:index].encode())
            end = len(current[: index + length].encode())
            if start < end:
                del t[start:end]

        return self.edit(delete)

    def set(self, name: str, key: str, value: Any) -> YDoc:
        """Return a new value with ``key`` set to ``value`` in root map ``name``."""
        _check_name(name)
        if not isinstance(key, str):
            raise InvalidValue(f"map keys must be str, got {key!r}")
        item = _prepare(value)

        def assign(d: pycrdt.Doc[Any]) -> None:
            d.get(name, type=pycrdt.Map)[key] = item

        return self.edit(assign)

    def delete(self, name: str, key: str) -> YDoc:
        """Return a new value without ``key`` in root map ``name`` (unchanged if absent)."""
        _check_name(name)

        def remove(d: pycrdt.Doc[Any]) -> None:
            m = d.get(name, type=pycrdt.Map)
            if key in m:
                del m[key]

        return self.edit(remove)

    # -- dunder ----------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, YDoc):
            return NotImplemented
        return self._pending == other._pending and self._equality_key() == other._equality_key()

    def __hash__(self) -> int:
        return hash((self._equality_key(), self._pending))

    def __copy__(self) -> YDoc:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> YDoc:
        return self

    def __reduce__(self) -> NoReturn:
        # Never pickled: values cross processes through to_wire()/from_wire().
        raise TypeError("YDoc is not picklable; use to_wire() and YDoc.from_wire()")

    def __repr__(self) -> str:
        waiting = sum(len(p) for p in self._pending)
        pending = f", pending={waiting} bytes" if waiting else ""
        return f"YDoc({len(self._bytes())} bytes{pending})"
