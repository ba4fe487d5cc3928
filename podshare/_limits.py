"""Limits and identifier checks, in one place: every length cap and name rule podshare uses.

A name that appears inside a topic (a store name, a node id, a callreply namespace) must
be a non-empty ``str`` without ``#`` (the topic separator) and within its length cap; a
key is a non-empty ``str`` of at most `MAX_KEY_LENGTH` characters. The wire
decoders enforce the same caps on what peers send.

Example:
    >>> check_name("app-config", "name", MAX_NAME_LENGTH)
    'app-config'
    >>> check_name("a#b", "node_id", MAX_NODE_ID_LENGTH)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    podshare.exceptions.ConfigurationError: node_id must be a non-empty str of at most 256 ...
"""

from __future__ import annotations

import typing
from typing import Any, Final

from podshare.exceptions import ConfigurationError, InvalidValue

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_NAMESPACE_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_NODE_ID_LENGTH",
    "check_key",
    "check_name",
    "is_panic",
    "type_name",
]

#: Longest key, in characters (store keys; the wire refuses longer ones from peers).
MAX_KEY_LENGTH: Final = 1024
#: Longest store name, in characters.
MAX_NAME_LENGTH: Final = 200
#: Longest node id, in characters (a stamp's origin is capped at this on the wire).
MAX_NODE_ID_LENGTH: Final = 256
#: Longest callreply namespace: its route store is named ``callreply.{namespace}``, which
#: must itself be a valid store name.
MAX_NAMESPACE_LENGTH: Final = MAX_NAME_LENGTH - len("callreply.")


def check_name(value: object, what: str, limit: int) -> str:
    """Return ``value`` if it is a valid name for a topic, else raise ConfigurationError.

    Valid: a non-empty ``str`` of at most ``limit`` characters without ``#``.
    """
    if not isinstance(value, str) or not value or len(value) > limit or "#" in value:
        raise ConfigurationError(
            f"{what} must be a non-empty str of at most {limit} characters without '#', "
            f"not {value!r}"
        )
    return value


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid store key, else raise InvalidValue."""
    if not isinstance(key, str):
        raise InvalidValue(f"keys must be str, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidValue(f"keys must be 1 to {MAX_KEY_LENGTH} characters, got {len(key)}")
    return key


def type_name(tp: Any) -> str:
    """A readable name for a type, a generic alias or an exception's type.

    Example:
        >>> type_name(int), type_name(dict[str, int]), type_name(None), type_name(KeyError())
        ('int', 'dict[str, int]', 'Any', 'KeyError')
    """
    if tp is None:
        return "Any"
    if isinstance(tp, BaseException):
        cls = type(tp)
        if cls.__module__ == "builtins":
            return cls.__qualname__
        return f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic surfaced by pyo3 (pycrdt).

    pyo3's ``PanicException`` derives from ``BaseException`` and lives in a module it
    creates lazily, so it is recognised by name; ``KeyboardInterrupt``, ``SystemExit``
    and cancellation are never mistaken for it.
    """
    return not isinstance(exc, Exception) and type(exc).__name__ == "PanicException"
