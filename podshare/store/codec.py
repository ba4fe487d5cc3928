"""Value codecs: how one store's values become bytes on the wire and back.

Two layers (see ``docs/internals.md`` §2):

- a [`Codec`][podshare.Codec] is a *format*: ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``
  for plain data. podshare ships [`JsonCodec`][podshare.JsonCodec] (the default) and
  [`MsgpackCodec`][podshare.MsgpackCodec]; any object with those two methods works (protobuf, CBOR,
  ...).
- a `ValueCodec` is a format plus typed conversion for one store's value type,
  built by [`value_codec()`][podshare.store.codec.value_codec]. It validates on the way out (a value
  that would not round-trip raises [`InvalidValue`][podshare.InvalidValue]) and on the way in
  (anything malformed raises [`DecodeError`][podshare.DecodeError], never another
  exception type, because those bytes come from the network).

Value types with ``to_wire``/``from_wire`` (podshare's CRDTs, or the user's own) always
travel as msgpack of their wire form, whatever the codec. pydantic models (``BaseModel``
subclasses and pydantic dataclasses, also nested in containers or other classes) go
through pydantic's own validation and serialisation (``TypeAdapter``: ``dump_json`` and
``validate_json``), so their validators, aliases and serialisers apply on every pod.
pydantic is never imported by podshare: a type can only be a pydantic model once the
application imported pydantic. Every other type goes through msgspec's typed
conversion: dataclasses, ``TypedDict``, attrs classes, msgspec ``Struct``\\ s, enums,
datetimes, UUIDs, ``Decimal``, nested containers, ``Optional`` and unions, and builtins.

Strict decoding (``strict=True``, or a ``JsonCodec(strict=True)`` /
``MsgpackCodec(strict=True)`` format) rejects received values with fields the type does
not declare, at any depth, like the Go library's ``StrictJSONCodec``: for dataclasses,
``TypedDict``, attrs classes and ``Struct``\\ s (checked against msgspec's view of the
type) and pydantic models (``extra="forbid"`` at validation). Without it unknown fields
are ignored, which lets a newer pod add a field without breaking older ones.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Config:
    ...     rate_limit: int
    >>> vc = value_codec(Config, "json")
    >>> vc.encode(Config(rate_limit=10))
    b'{"rate_limit":10}'
    >>> vc.decode(b'{"rate_limit":10}')
    Config(rate_limit=10)
    >>> vc.encode(5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    podshare.exceptions.InvalidValue: value 5 of type int cannot be stored as Config: ...
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import msgspec

from podshare.exceptions import ConfigurationError, DecodeError, InvalidValue

__all__ = [
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "ValueCodec",
    "resolve_codec",
    "value_codec",
]

T = TypeVar("T")

# Messages quote at most this much of an offending value.
_REPR_LIMIT = 80


@runtime_checkable
class Codec(Protocol):
    """A serialisation format for plain data (dicts, lists, strings, numbers, ...).

    ``encode`` raises [`InvalidValue`][podshare.InvalidValue] (or any ``TypeError``/
    ``ValueError``, which podshare maps to it) for data it cannot represent; ``decode``
    raises [`DecodeError`][podshare.DecodeError] (or anything else, which podshare
    maps to it) for malformed bytes.

    Example: a codec for CBOR would be

    ```python
    class CborCodec:
        def encode(self, obj: Any) -> bytes:
            return cbor2.dumps(obj)

        def decode(self, data: bytes) -> Any:
            return cbor2.loads(data)

    Store("app", transport, codec=CborCodec())
    ```
    """

    def encode(self, obj: Any) -> bytes:
        """Serialise plain data to bytes."""
        ...

    def decode(self, data: bytes) -> Any:
        """Parse bytes back into plain data."""
        ...


class JsonCodec:
    """JSON via msgspec: compact, strict UTF-8, the default format.

    Args:
        strict: in a typed store, reject received values that carry fields the value
            type does not declare (see [`value_codec`][podshare.store.codec.value_codec]).
            Plain data has no declared fields, so this changes nothing for
            [`decode()`][podshare.JsonCodec.decode] itself.

    Example:
        >>> JsonCodec().decode(JsonCodec().encode({"a": [1, 2.5, None]}))
        {'a': [1, 2.5, None]}
        >>> JsonCodec(strict=True)
        JsonCodec(strict=True)
    """

    __slots__ = ("_decoder", "_encoder", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = _check_strict(strict)
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj``; raises [`InvalidValue`][podshare.InvalidValue]."""
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(obj)} as JSON: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """Parse ``data``; raises [`DecodeError`][podshare.DecodeError]."""
        try:
            return self._decoder.decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed JSON value: {exc}") from exc

    def __repr__(self) -> str:
        return "JsonCodec(strict=True)" if self.strict else "JsonCodec()"


class MsgpackCodec:
    """MessagePack via msgspec: binary, smaller and faster than JSON; bytes travel as-is.

    msgspec checks every declared length against the bytes actually present before it
    allocates, so a hostile header cannot make it reserve memory.

    Args:
        strict: in a typed store, reject received values that carry fields the value
            type does not declare (as for [`JsonCodec`][podshare.store.codec.JsonCodec]).

    Example:
        >>> MsgpackCodec().decode(MsgpackCodec().encode({"a": b"\\x00\\xff"}))
        {'a': b'\\x00\\xff'}
    """

    __slots__ = ("_decoder", "_encoder", "strict")

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = _check_strict(strict)
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj``; raises [`InvalidValue`][podshare.InvalidValue]."""
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(obj)} as msgpack: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """Parse ``data``; raises [`DecodeError`][podshare.DecodeError]."""
        try:
            return self._decoder.decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed msgpack value: {exc}") from exc

    def __repr__(self) -> str:
        return "MsgpackCodec(strict=True)" if self.strict else "MsgpackCodec()"


def resolve_codec(codec: Codec | str | None) -> Codec:
    """Turn the ``codec`` option into a [`Codec`][podshare.Codec].

    ``None`` and ``"json"`` give [`JsonCodec`][podshare.JsonCodec], ``"msgpack"`` gives
    [`MsgpackCodec`][podshare.MsgpackCodec], and an object with ``encode`` and ``decode`` methods is
    used as it is. Anything else raises [`ConfigurationError`][podshare.ConfigurationError]
    naming ``codec``.

    Example:
        >>> resolve_codec("msgpack")
        MsgpackCodec()
    """
    if codec is None or codec == "json":
        return JsonCodec()
    if codec == "msgpack":
        return MsgpackCodec()
    if isinstance(codec, str):
        raise ConfigurationError(f"codec must be 'json', 'msgpack' or a Codec, not {codec!r}")
    if callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None)):
        return codec
    raise ConfigurationError(
        f"codec must be 'json', 'msgpack' or an object with encode() and decode() methods, "
        f"not {_short(codec)}"
    )


class ValueCodec(Generic[T]):
    """A format plus typed conversion for one store's values (built by
    [`value_codec()`][podshare.store.codec.value_codec]).

    Attributes:
        type: the value type (``None`` for plain JSON-like data).
        codec: the underlying [`Codec`][podshare.Codec] (``None`` for ``to_wire`` types, which
            always travel as msgpack).
        empty: a callable giving the type's empty value (its bottom), or ``None`` when the
            type has none.
    """

    __slots__ = ("codec", "empty", "type")

    type: Any
    codec: Codec | None
    empty: Callable[[], T] | None

    def encode(self, value: T) -> bytes:
        """Serialise ``value``; raises [`InvalidValue`][podshare.InvalidValue] when it
        does not match the type or cannot be encoded."""
        raise NotImplementedError

    def decode(self, data: bytes) -> T:
        """Parse ``data`` into a value of the type; raises
        [`DecodeError`][podshare.DecodeError] for anything malformed."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={_type_name(self.type)}, codec={self.codec!r})"


def value_codec(
    tp: Any | None, codec: Codec | str | None = None, *, strict: bool = False
) -> ValueCodec[Any]:
    """Build the `ValueCodec` for values of type ``tp`` in format ``codec``.

    This is the single entry point for value conversion: [`Store`][podshare.Store] calls
    it with its ``type`` and ``codec`` options (and forwards a ``strict=`` option to it).

    - ``tp`` with ``to_wire``/``from_wire`` (``GSet``, ``ORSet``, ``PNCounter``, ``YDoc``,
      a user's type): msgpack of ``to_wire()``, decoded with ``tp.from_wire``; ``empty``
      is ``tp`` itself. ``codec`` is not used for these.
    - ``tp`` ``None`` or ``Any``: plain JSON-like data (dict, list, str, int, float, bool,
      None; bytes too with msgpack).
    - a pydantic model, or a type that contains one (``list[Flag]``, ``Flag | None``, a
      dataclass with a model field): pydantic's ``TypeAdapter``. With JSON the bytes are
      exactly ``dump_json(by_alias=True, round_trip=True)``; with another format they are
      that format's encoding of the same JSON-compatible data, validated as JSON on the
      way in. Validation errors of received bytes are
      [`DecodeError`][podshare.DecodeError]; a value that fails to serialise, or
      whose serialisation would not validate back into an equal value, is
      [`InvalidValue`][podshare.InvalidValue].
    - any other ``tp``: typed conversion by msgspec.

    Args:
        tp: the value type (``None`` for plain data).
        codec: ``"json"`` (default), ``"msgpack"`` or a [`Codec`][podshare.Codec].
        strict: reject received values with fields ``tp`` does not declare, at any depth
            (dataclasses, ``TypedDict``, attrs classes, ``Struct``\\ s, pydantic
            models). A codec object with a true ``strict`` attribute
            (``JsonCodec(strict=True)``) turns it on as well. It needs a value type
            without a wire form.

    Raises [`ConfigurationError`][podshare.ConfigurationError] naming ``codec``, ``type``
    or ``strict`` when one is unusable.

    Example:
        >>> vc = value_codec(dict[str, int], "msgpack")
        >>> vc.decode(vc.encode({"a": 1}))
        {'a': 1}
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Flag:
        ...     on: bool
        >>> value_codec(Flag, "json").decode(b'{"on": true, "colour": "red"}')
        Flag(on=True)
        >>> value_codec(Flag, "json", strict=True).decode(b'{"on": true, "colour": "red"}')
        Traceback (most recent call last):
        ...
        podshare.exceptions.DecodeError: malformed Flag value: unknown field 'colour' at $
    """
    strict = _check_strict(strict) or bool(getattr(codec, "strict", False))
    if tp is typing.Any:
        tp = None
    if tp is not None and _has_wire_form(tp):
        if strict:
            raise ConfigurationError(
                f"strict=True does not apply to {_type_name(tp)}: types with "
                "to_wire()/from_wire() decode with their own from_wire()"
            )
        return _WireFormCodec(tp)
    if tp is None and strict:
        raise ConfigurationError(
            "strict=True needs a value type: plain data has no declared fields to check"
        )
    resolved = resolve_codec(codec)
    if tp is not None and _uses_pydantic(tp):
        return _PydanticCodec(tp, resolved, strict=strict)
    if tp is not None:
        _check_supported(tp)
    check = _unknown_field_check(tp) if strict else None
    if type(resolved) is JsonCodec:
        return _MsgspecCodec(
            tp, resolved, msgspec.json.Encoder(), _json_decoder(tp), check, msgspec.json.decode
        )
    if type(resolved) is MsgpackCodec:
        return _MsgspecCodec(
            tp,
            resolved,
            msgspec.msgpack.Encoder(),
            _msgpack_decoder(tp),
            check,
            msgspec.msgpack.decode,
        )
    return _ConvertingCodec(tp, resolved, check)


# --- implementations ----------------------------------------------------------------


class _WireFormCodec(ValueCodec[Any]):
    """``to_wire``/``from_wire`` types: msgpack of the canonical wire form."""

    __slots__ = ("_cls", "_decoder", "_encoder", "_from_wire")

    def __init__(self, tp: Any) -> None:
        self.type = tp
        self.codec = None
        # ``GSet[str]`` is a generic alias: instances are of the origin class.
        self._cls: type[Any] = typing.get_origin(tp) or tp
        self.empty = self._cls
        self._from_wire: Callable[[Any], Any] = self._cls.from_wire
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, self._cls):
            raise InvalidValue(
                f"value {_short(value)} of type {type(value).__name__} cannot be stored "
                f"as {_type_name(self.type)}"
            )
        try:
            return self._encoder.encode(value.to_wire())
        except InvalidValue:
            raise
        except Exception as exc:  # a user's to_wire may fail in any way
            raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        try:
            wire = self._decoder.decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed {_type_name(self.type)} value: {exc}") from exc
        try:
            return self._from_wire(wire)
        except DecodeError:
            raise
        except Exception as exc:  # a user's from_wire may not follow the contract
            raise DecodeError(f"invalid {_type_name(self.type)} value: {exc}") from exc


class _MsgspecCodec(ValueCodec[Any]):
    """JSON or msgpack, encoded and decoded by msgspec directly (the fast path)."""

    __slots__ = ("_check", "_decode", "_encode", "_raw_decode")

    def __init__(
        self,
        tp: Any,
        codec: Codec,
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
        decoder: msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any],
        check: Callable[[Any], None] | None = None,
        raw_decode: Callable[[bytes], Any] | None = None,
    ) -> None:
        self.type = tp
        self.codec = codec
        self.empty = None
        self._encode = encoder.encode
        self._decode = decoder.decode
        # Strict decoding: the untyped form of the bytes, checked for undeclared fields.
        self._check = check
        self._raw_decode = raw_decode

    def encode(self, value: Any) -> bytes:
        try:
            data = self._encode(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc
        # Decoding what we just encoded is the one check that catches every mismatch,
        # nested fields included, with msgspec's own rules: exactly what receivers run.
        try:
            back = self._decode(data)
        except Exception as exc:  # ValidationError, RecursionError, ...
            raise InvalidValue(_mismatch(value, self.type, str(exc))) from exc
        _check_round_trip(value, back, self.type)
        return data

    def decode(self, data: bytes) -> Any:
        try:
            value = self._decode(data)
            if self._check is not None and self._raw_decode is not None:
                self._check(self._raw_decode(data))
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed {_type_name(self.type)} value: {exc}") from exc
        return value


class _ConvertingCodec(ValueCodec[Any]):
    """A user's format: values become builtins (msgspec), then the format's bytes."""

    __slots__ = ("_check", "_codec")

    def __init__(self, tp: Any, codec: Codec, check: Callable[[Any], None] | None = None) -> None:
        self.type = tp
        self.codec = codec
        self.empty = None
        self._codec = codec
        self._check = check

    def _convert(self, obj: Any) -> Any:
        if self.type is None:
            return obj
        return msgspec.convert(obj, self.type)

    def encode(self, value: Any) -> bytes:
        try:
            plain = msgspec.to_builtins(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc
        data = _encode_plain(self._codec, plain, value)
        try:
            back = self._convert(self._codec.decode(data))
        except Exception as exc:  # ValidationError, the codec's own errors, ...
            raise InvalidValue(_mismatch(value, self.type, str(exc))) from exc
        _check_round_trip(value, back, self.type)
        return data

    def decode(self, data: bytes) -> Any:
        try:
            plain = self._codec.decode(data)
            value = self._convert(plain)
            if self._check is not None:
                self._check(plain)
        except Exception as exc:  # the codec's errors, msgspec's, RecursionError, ...
            raise DecodeError(f"malformed {_type_name(self.type)} value: {exc}") from exc
        return value


class _PydanticCodec(ValueCodec[Any]):
    """Types involving pydantic models: pydantic's own serialisation and validation.

    JSON is pydantic's native format (``dump_json``/``validate_json``, both in Rust).
    Another format carries the same JSON-compatible data (``dump_python(mode="json")``)
    and is validated *as JSON* on the way in, so every format accepts exactly what the
    JSON codec accepts (strict models, aliases and custom serialisers included).
    """

    __slots__ = (
        "_adapter",
        "_codec",
        "_extra",
        "_json",
        "_model",
        "_to_json",
    )

    def __init__(self, tp: Any, codec: Codec, *, strict: bool) -> None:
        import pydantic  # present: tp is a pydantic type, so the application imported it

        self.type = tp
        self.codec = codec
        self.empty = None
        try:
            self._adapter: Any = pydantic.TypeAdapter(tp)
            # Unresolved forward references fail here, not on the first write.
            self._adapter.rebuild(raise_errors=True)
        except Exception as exc:  # PydanticSchemaGenerationError, PydanticUserError, ...
            raise ConfigurationError(
                f"type {_type_name(tp)} is not a supported value type: {exc}"
            ) from exc
        # A top-level model is checked by isinstance first: the clearest message.
        self._model: type[Any] | None = (
            tp if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel) else None
        )
        self._extra = "forbid" if strict else None
        self._json = type(codec) is JsonCodec
        self._codec = codec
        self._to_json = msgspec.json.Encoder().encode

    def _validate(self, data: bytes) -> Any:
        if not self._json:
            data = self._to_json(self._codec.decode(data))
        return self._adapter.validate_json(data, extra=self._extra)

    def encode(self, value: Any) -> bytes:
        if self._model is not None and not isinstance(value, self._model):
            raise InvalidValue(_mismatch(value, self.type, "it is not an instance"))
        try:
            if self._json:
                data: bytes = self._adapter.dump_json(
                    value, by_alias=True, round_trip=True, warnings="error"
                )
            else:
                plain = self._adapter.dump_python(
                    value, mode="json", by_alias=True, round_trip=True, warnings="error"
                )
        except Exception as exc:  # PydanticSerializationError, unexpected-value warnings
            raise InvalidValue(_mismatch(value, self.type, _reason(exc))) from exc
        if not self._json:
            data = _encode_plain(self._codec, plain, value)
        try:
            back = self._validate(data)
        except Exception as exc:  # ValidationError, the codec's own errors, ...
            raise InvalidValue(_mismatch(value, self.type, _reason(exc))) from exc
        _check_round_trip(value, back, self.type)
        return data

    def decode(self, data: bytes) -> Any:
        try:
            return self._validate(data)
        except Exception as exc:  # ValidationError, the codec's errors, RecursionError
            raise DecodeError(f"malformed {_type_name(self.type)} value: {_reason(exc)}") from exc


# --- helpers ------------------------------------------------------------------------


def _has_wire_form(tp: Any) -> bool:
    cls = typing.get_origin(tp) or tp
    return (
        isinstance(cls, type)
        and callable(getattr(cls, "to_wire", None))
        and (callable(getattr(cls, "from_wire", None)))
    )


def _reason(exc: Exception) -> str:
    """One line from an exception: pydantic's ValidationError lists its errors compactly."""
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError):
        found = exc.errors(include_url=False, include_input=False)
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '$'}: {e['msg']}" for e in found[:3]]
        more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
        return "; ".join(parts) + more
    return " ".join(str(exc).split())


def _check_strict(strict: object) -> bool:
    if not isinstance(strict, bool):
        raise ConfigurationError(f"strict must be a bool, not {strict!r}")
    return strict


def _encode_plain(codec: Codec, plain: Any, value: Any) -> bytes:
    """``codec.encode(plain)``, with any failure (or a non-bytes result) as InvalidValue."""
    try:
        data = codec.encode(plain)
    except InvalidValue:
        raise
    except Exception as exc:  # a user's codec may fail in any way
        raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc
    if not isinstance(data, bytes):
        raise InvalidValue(f"codec {codec!r} returned {type(data).__name__}, not bytes")
    return data


def _walk_info(info: msgspec.inspect.Type) -> Iterator[msgspec.inspect.Type]:
    """Every node of msgspec's description of a type, each once (types may recurse)."""
    seen: set[int] = set()
    stack = [info]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(_children(node))


def _children(node: msgspec.inspect.Type) -> list[msgspec.inspect.Type]:
    fields = getattr(node, "fields", None)
    if fields is not None:
        return [field.type for field in fields]
    children = [getattr(node, name, None) for name in ("item_type", "key_type", "value_type")]
    found = [child for child in children if child is not None]
    found.extend(getattr(node, "item_types", ()) or ())
    found.extend(getattr(node, "types", ()) or ())
    if isinstance(node, msgspec.inspect.Metadata):
        found.append(node.type)
    return found


def _uses_pydantic(tp: Any) -> bool:
    """Whether ``tp`` is, or contains, a pydantic model or pydantic dataclass."""
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:  # nothing can be a pydantic model before pydantic is imported
        return False
    import pydantic.dataclasses

    try:
        info = msgspec.inspect.type_info(tp)
    except Exception:  # noqa: BLE001  # not a type msgspec understands: _check_supported reports it
        return False

    def is_pydantic(cls: object) -> bool:
        return isinstance(cls, type) and (
            issubclass(cls, pydantic.BaseModel) or pydantic.dataclasses.is_pydantic_dataclass(cls)
        )

    return any(is_pydantic(getattr(node, "cls", None)) for node in _walk_info(info))


# msgspec's descriptions of types whose instances are JSON objects with declared fields.
# (attrs classes are described as DataclassType.)
_FIELDED = (
    msgspec.inspect.DataclassType,
    msgspec.inspect.TypedDictType,
    msgspec.inspect.StructType,
)
_MAPPINGS = (msgspec.inspect.DictType, msgspec.inspect.FrozenDictType)
_SEQUENCES = (
    msgspec.inspect.ListType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
    msgspec.inspect.VarTupleType,
)
_ARRAYS = (*_SEQUENCES, msgspec.inspect.TupleType, msgspec.inspect.NamedTupleType)


def _unknown_field_check(tp: Any) -> Callable[[Any], None] | None:
    """A function raising ValueError when untyped decoded data has undeclared fields.

    It walks the data alongside msgspec's description of ``tp`` (run after the typed
    decode succeeded, so the data's shape already matches the type). ``None`` when
    ``tp`` declares no fields anywhere, so there is nothing to check.
    """
    info = msgspec.inspect.type_info(tp)
    if not any(isinstance(node, _FIELDED) for node in _walk_info(info)):
        return None

    def check(obj: Any) -> None:
        _check_fields(info, obj, "$")

    return check


def _check_fields(info: msgspec.inspect.Type, obj: Any, path: str) -> None:
    if isinstance(info, msgspec.inspect.Metadata):
        _check_fields(info.type, obj, path)
    elif isinstance(info, _FIELDED):
        fields = info.fields
        if isinstance(obj, list):  # an array_like Struct: fields by position
            for position, item in zip(fields, obj, strict=False):
                _check_fields(position.type, item, f"{path}[{position.encode_name}]")
            return
        if not isinstance(obj, dict):
            return
        declared = {field.encode_name: field for field in fields}
        tag_field = getattr(info, "tag_field", None)
        for key, item in obj.items():
            known = declared.get(key)
            if known is not None:
                _check_fields(known.type, item, f"{path}.{key}")
            elif key != tag_field:
                raise ValueError(f"unknown field {key!r} at {path}")
    elif isinstance(info, _SEQUENCES):
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                _check_fields(info.item_type, item, f"{path}[{i}]")
    elif isinstance(info, msgspec.inspect.TupleType | msgspec.inspect.NamedTupleType):
        if isinstance(obj, list):
            types = (
                info.item_types
                if isinstance(info, msgspec.inspect.TupleType)
                else [field.type for field in info.fields]
            )
            for i, (item_type, item) in enumerate(zip(types, obj, strict=False)):
                _check_fields(item_type, item, f"{path}[{i}]")
    elif isinstance(info, _MAPPINGS):
        if isinstance(obj, dict):
            for key, item in obj.items():
                _check_fields(info.value_type, item, f"{path}[{key!r}]")
    elif isinstance(info, msgspec.inspect.UnionType):
        branch = _union_branch(info, obj)
        if branch is not None:
            _check_fields(branch, obj, path)


def _union_branch(info: msgspec.inspect.UnionType, obj: Any) -> msgspec.inspect.Type | None:
    """The member of a union that decoded ``obj`` (msgspec allows one per JSON shape,
    or several tagged Structs, told apart by their tag)."""
    candidates = [_unwrap(t) for t in info.types]
    if isinstance(obj, dict):
        objects = [
            t
            for t in candidates
            if isinstance(t, _FIELDED + _MAPPINGS) and not getattr(t, "array_like", False)
        ]
        if len(objects) > 1:
            objects = [
                t
                for t in objects
                if isinstance(t, msgspec.inspect.StructType)
                and t.tag_field is not None
                and obj.get(t.tag_field) == t.tag
            ]
        return objects[0] if objects else None
    if isinstance(obj, list):
        arrays = [
            t for t in candidates if isinstance(t, _ARRAYS) or getattr(t, "array_like", False)
        ]
        return arrays[0] if arrays else None
    return None


def _unwrap(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return info


def _check_supported(tp: Any) -> None:
    """Refuse a type msgspec cannot convert, at construction rather than on first write."""
    try:
        info = msgspec.inspect.type_info(tp)
    except Exception as exc:  # TypeError for things that are not types at all
        raise ConfigurationError(f"type {tp!r} is not a supported value type: {exc}") from exc
    if isinstance(info, msgspec.inspect.CustomType):
        raise ConfigurationError(
            f"type {_type_name(tp)} is not a supported value type: use a dataclass, "
            "TypedDict, attrs class, msgspec Struct, enum, builtin, or a class with "
            "to_wire()/from_wire()"
        )


def _json_decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder() if tp is None else msgspec.json.Decoder(type=tp)


def _msgpack_decoder(tp: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder() if tp is None else msgspec.msgpack.Decoder(type=tp)


def _check_round_trip(value: Any, back: Any, tp: Any) -> None:
    """Raise InvalidValue unless ``back`` (decoded from ``value``'s bytes) equals ``value``.

    Equality is the contract: a value that decodes differently on other pods (a str into
    a datetime store, a tuple into an untyped store, NaN) would make replicas disagree.
    Classes that compare by identity (``eq=False``) can only be checked by type.
    """
    try:
        if back == value:
            return
    except Exception as exc:  # a user's __eq__ may raise
        raise InvalidValue(_mismatch(value, tp, f"comparing failed: {exc}")) from exc
    cls = type(value)
    identity_eq: Any = object.__eq__
    if type(back) is cls and cls.__eq__ is identity_eq:
        return
    raise InvalidValue(_mismatch(value, tp, f"it would be received as {_short(back)}"))


def _mismatch(value: Any, tp: Any, why: str) -> str:
    target = "plain JSON-like data" if tp is None else _type_name(tp)
    return (
        f"value {_short(value)} of type {type(value).__name__} cannot be stored as {target}: {why}"
    )


def _type_name(tp: Any) -> str:
    if tp is None:
        return "Any"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def _short(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # noqa: BLE001  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} object>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text
