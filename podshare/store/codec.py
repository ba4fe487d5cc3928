"""Value codecs: how one store's values become bytes on the wire and back.

Two layers (see ``docs/internals.md`` §2):

- a :class:`Codec` is a *format*: ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``
  for plain data. podshare ships :class:`JsonCodec` (the default) and
  :class:`MsgpackCodec`; any object with those two methods works (protobuf, CBOR, ...).
- a :class:`ValueCodec` is a format plus typed conversion for one store's value type,
  built by :func:`value_codec`. It validates on the way out (a value that would not
  round-trip raises :class:`~podshare.exceptions.InvalidValue`) and on the way in
  (anything malformed raises :class:`~podshare.exceptions.DecodeError`, never another
  exception type, because those bytes come from the network).

Value types with ``to_wire``/``from_wire`` (podshare's CRDTs, or the user's own) always
travel as msgpack of their wire form, whatever the codec. Every other type goes through
msgspec's typed conversion: dataclasses, ``TypedDict``, attrs classes, msgspec
``Struct``\\ s, enums, datetimes, UUIDs, ``Decimal``, nested containers, ``Optional`` and
unions, and builtins.

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

import typing
from collections.abc import Callable
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

    ``encode`` raises :class:`~podshare.exceptions.InvalidValue` (or any ``TypeError``/
    ``ValueError``, which podshare maps to it) for data it cannot represent; ``decode``
    raises :class:`~podshare.exceptions.DecodeError` (or anything else, which podshare
    maps to it) for malformed bytes.

    Example: a codec for CBOR would be ::

        class CborCodec:
            def encode(self, obj: Any) -> bytes:
                return cbor2.dumps(obj)

            def decode(self, data: bytes) -> Any:
                return cbor2.loads(data)

        Store("app", transport, codec=CborCodec())
    """

    def encode(self, obj: Any) -> bytes:
        """Serialise plain data to bytes."""
        ...

    def decode(self, data: bytes) -> Any:
        """Parse bytes back into plain data."""
        ...


class JsonCodec:
    """JSON via msgspec: compact, strict UTF-8, the default format.

    Example:
        >>> JsonCodec().decode(JsonCodec().encode({"a": [1, 2.5, None]}))
        {'a': [1, 2.5, None]}
    """

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj``; raises :class:`~podshare.exceptions.InvalidValue`."""
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(obj)} as JSON: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """Parse ``data``; raises :class:`~podshare.exceptions.DecodeError`."""
        try:
            return self._decoder.decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed JSON value: {exc}") from exc

    def __repr__(self) -> str:
        return "JsonCodec()"


class MsgpackCodec:
    """MessagePack via msgspec: binary, smaller and faster than JSON; bytes travel as-is.

    msgspec checks every declared length against the bytes actually present before it
    allocates, so a hostile header cannot make it reserve memory.

    Example:
        >>> MsgpackCodec().decode(MsgpackCodec().encode({"a": b"\\x00\\xff"}))
        {'a': b'\\x00\\xff'}
    """

    __slots__ = ("_decoder", "_encoder")

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()

    def encode(self, obj: Any) -> bytes:
        """Serialise ``obj``; raises :class:`~podshare.exceptions.InvalidValue`."""
        try:
            return self._encoder.encode(obj)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(obj)} as msgpack: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """Parse ``data``; raises :class:`~podshare.exceptions.DecodeError`."""
        try:
            return self._decoder.decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed msgpack value: {exc}") from exc

    def __repr__(self) -> str:
        return "MsgpackCodec()"


def resolve_codec(codec: Codec | str | None) -> Codec:
    """Turn the ``codec`` option into a :class:`Codec`.

    ``None`` and ``"json"`` give :class:`JsonCodec`, ``"msgpack"`` gives
    :class:`MsgpackCodec`, and an object with ``encode`` and ``decode`` methods is used
    as it is. Anything else raises :class:`~podshare.exceptions.ConfigurationError`
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
    """A format plus typed conversion for one store's values (built by :func:`value_codec`).

    Attributes:
        type: the value type (``None`` for plain JSON-like data).
        codec: the underlying :class:`Codec` (``None`` for ``to_wire`` types, which always
            travel as msgpack).
        empty: a callable giving the type's empty value (its bottom), or ``None`` when the
            type has none.
    """

    __slots__ = ("codec", "empty", "type")

    type: Any
    codec: Codec | None
    empty: Callable[[], T] | None

    def encode(self, value: T) -> bytes:
        """Serialise ``value``; raises :class:`~podshare.exceptions.InvalidValue` when it
        does not match the type or cannot be encoded."""
        raise NotImplementedError

    def decode(self, data: bytes) -> T:
        """Parse ``data`` into a value of the type; raises
        :class:`~podshare.exceptions.DecodeError` for anything malformed."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={_type_name(self.type)}, codec={self.codec!r})"


def value_codec(tp: Any | None, codec: Codec | str | None = None) -> ValueCodec[Any]:
    """Build the :class:`ValueCodec` for values of type ``tp`` in format ``codec``.

    - ``tp`` with ``to_wire``/``from_wire`` (``GSet``, ``ORSet``, ``PNCounter``, ``YDoc``,
      a user's type): msgpack of ``to_wire()``, decoded with ``tp.from_wire``; ``empty``
      is ``tp`` itself. ``codec`` is not used for these.
    - ``tp`` ``None`` or ``Any``: plain JSON-like data (dict, list, str, int, float, bool,
      None; bytes too with msgpack).
    - any other ``tp``: typed conversion by msgspec.

    Raises :class:`~podshare.exceptions.ConfigurationError` naming ``codec`` or ``type``
    when either is unusable.

    Example:
        >>> vc = value_codec(dict[str, int], "msgpack")
        >>> vc.decode(vc.encode({"a": 1}))
        {'a': 1}
    """
    if tp is typing.Any:
        tp = None
    if tp is not None and _has_wire_form(tp):
        return _WireFormCodec(tp)
    resolved = resolve_codec(codec)
    if tp is not None:
        _check_supported(tp)
    if type(resolved) is JsonCodec:
        return _MsgspecCodec(tp, resolved, msgspec.json.Encoder(), _json_decoder(tp))
    if type(resolved) is MsgpackCodec:
        return _MsgspecCodec(tp, resolved, msgspec.msgpack.Encoder(), _msgpack_decoder(tp))
    return _ConvertingCodec(tp, resolved)


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

    __slots__ = ("_decode", "_encode")

    def __init__(
        self,
        tp: Any,
        codec: Codec,
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
        decoder: msgspec.json.Decoder[Any] | msgspec.msgpack.Decoder[Any],
    ) -> None:
        self.type = tp
        self.codec = codec
        self.empty = None
        self._encode = encoder.encode
        self._decode = decoder.decode

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
            return self._decode(data)
        except Exception as exc:  # msgspec errors, RecursionError on deep nesting, ...
            raise DecodeError(f"malformed {_type_name(self.type)} value: {exc}") from exc


class _ConvertingCodec(ValueCodec[Any]):
    """A user's format: values become builtins (msgspec), then the format's bytes."""

    __slots__ = ("_codec",)

    def __init__(self, tp: Any, codec: Codec) -> None:
        self.type = tp
        self.codec = codec
        self.empty = None
        self._codec = codec

    def _convert(self, obj: Any) -> Any:
        if self.type is None:
            return obj
        return msgspec.convert(obj, self.type)

    def encode(self, value: Any) -> bytes:
        try:
            plain = msgspec.to_builtins(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc
        try:
            data = self._codec.encode(plain)
        except InvalidValue:
            raise
        except Exception as exc:  # a user's codec may fail in any way
            raise InvalidValue(f"cannot encode {_short(value)}: {exc}") from exc
        if not isinstance(data, bytes):
            raise InvalidValue(f"codec {self._codec!r} returned {type(data).__name__}, not bytes")
        try:
            back = self._convert(self._codec.decode(data))
        except Exception as exc:  # ValidationError, the codec's own errors, ...
            raise InvalidValue(_mismatch(value, self.type, str(exc))) from exc
        _check_round_trip(value, back, self.type)
        return data

    def decode(self, data: bytes) -> Any:
        try:
            return self._convert(self._codec.decode(data))
        except Exception as exc:  # the codec's errors, msgspec's, RecursionError, ...
            raise DecodeError(f"malformed {_type_name(self.type)} value: {exc}") from exc


# --- helpers ------------------------------------------------------------------------


def _has_wire_form(tp: Any) -> bool:
    cls = typing.get_origin(tp) or tp
    return (
        isinstance(cls, type)
        and callable(getattr(cls, "to_wire", None))
        and (callable(getattr(cls, "from_wire", None)))
    )


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
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(obj).__name__} object>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text
