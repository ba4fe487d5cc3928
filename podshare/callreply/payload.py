"""Typed payloads for callreply: a value in, bytes out, and back.

A call's payload and reply are bytes
([`Endpoint.call`][podshare.callreply.Endpoint.call]). These helpers turn typed values
(pydantic models, dataclasses, ``TypedDict``\\ s, msgspec ``Struct``\\ s, builtins)
into those bytes and back with the same value codecs a typed store uses
([`value_codec`][podshare.store.codec.value_codec]), so a handler validates what it
receives exactly as a store validates what it replicates. Garbage or a value that does
not fit the type raises [`DecodeError`][podshare.exceptions.DecodeError]; a value that
cannot be encoded raises [`InvalidValue`][podshare.exceptions.InvalidValue].

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Push:
    ...     text: str
    ...     badge: int = 0
    >>> data = encode_payload(Push("hello", 3))
    >>> data
    b'{"text":"hello","badge":3}'
    >>> decode_payload(data, Push)
    Push(text='hello', badge=3)

A handler then reads ``decode_payload(payload, Push)`` and answers
``encode_payload(reply)``.
"""

from __future__ import annotations

import builtins
import functools
from typing import Any, TypeVar, overload

from podshare.exceptions import ConfigurationError, InvalidValue
from podshare.store.codec import Codec, ValueCodec, value_codec

__all__ = ["decode_payload", "encode_payload"]

T = TypeVar("T")


def encode_payload(
    value: Any, *, type: Any = None, codec: Codec | str | None = None, strict: bool = False
) -> bytes:
    """Encode ``value`` as a call's payload (or a handler's reply).

    Args:
        value: what to send.
        type: the type to encode it as (default: ``type(value)``; give it for
            containers such as ``list[Flag]``).
        codec: ``"json"`` (default), ``"msgpack"`` or a [`Codec`][podshare.Codec].
        strict: as for [`value_codec`][podshare.store.codec.value_codec]; it only
            matters for the round-trip check of the encoded bytes.

    Raises:
        InvalidValue: the value cannot be encoded, or would not decode back equal.
        ConfigurationError: the type or codec is unusable.
    """
    if type is not None:
        return _codec(type, codec, strict).encode(value)
    tp = builtins.type(value)
    try:
        vc = _codec(tp, codec, strict)
    except ConfigurationError as exc:  # the value's own class is what cannot be encoded
        raise InvalidValue(f"cannot encode a {tp.__qualname__} as a payload: {exc}") from exc
    return vc.encode(value)


@overload
def decode_payload(
    data: bytes, type: type[T], *, codec: Codec | str | None = ..., strict: bool = ...
) -> T: ...
@overload
def decode_payload(
    data: bytes, type: Any, *, codec: Codec | str | None = ..., strict: bool = ...
) -> Any: ...
def decode_payload(
    data: bytes, type: Any, *, codec: Codec | str | None = None, strict: bool = False
) -> Any:
    """Decode a payload (or reply) into a value of ``type``.

    Args:
        data: the bytes a handler received, or a call returned.
        type: the expected type (``None`` for plain JSON-like data).
        codec: the format the sender used (``"json"`` by default).
        strict: reject fields ``type`` does not declare.

    Raises:
        DecodeError: the bytes are malformed or do not validate as ``type``.
        ConfigurationError: the type or codec is unusable.
    """
    return _codec(type, codec, strict).decode(bytes(data))


# Building a codec inspects the type (pydantic builds a validator): do it once per type.
@functools.lru_cache(maxsize=256)
def _cached(tp: Any, codec: Any, strict: bool) -> ValueCodec[Any]:
    return value_codec(tp, codec, strict=strict)


def _codec(tp: Any, codec: Any, strict: bool) -> ValueCodec[Any]:
    try:
        hash((tp, codec))
    except TypeError:  # an unhashable type or codec cannot be a cache key: build it anew
        return value_codec(tp, codec, strict=strict)
    return _cached(tp, codec, strict)
