"""Strict decoding of msgspec-converted types: undeclared fields are refused at any depth."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import attrs
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from podshare import JsonCodec, MsgpackCodec
from podshare.exceptions import ConfigurationError, DecodeError
from podshare.store.codec import value_codec

FORMATS = ["json", "msgpack"]


@dataclasses.dataclass(frozen=True)
class Limit:
    per_second: int


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    limits: list[Limit] = dataclasses.field(default_factory=list)
    by_route: dict[str, Limit] = dataclasses.field(default_factory=dict)
    fallback: Limit | None = None
    pair: tuple[Limit, int] | None = None


class Profile(TypedDict):
    name: str
    limit: Limit


@attrs.frozen
class Session:
    user: str
    limit: Limit


class Renamed(msgspec.Struct, rename="camel"):
    max_value: int


class Cat(msgspec.Struct, tag=True):
    lives: int


class Dog(msgspec.Struct, tag=True):
    good: bool


class Point(msgspec.Struct, array_like=True):
    x: int
    y: int


@dataclasses.dataclass
class Tree:
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


def _plain(fmt: str, obj: Any) -> bytes:
    return value_codec(None, fmt).encode(obj)


# Each case: a type, a value of it in plain form, and the same with one undeclared field
# added somewhere, described by where it is.
CASES: list[tuple[Any, Any, Any, str]] = [
    (Limit, {"per_second": 1}, {"per_second": 1, "burst": 2}, "'burst' at $"),
    (
        Config,
        {"name": "a", "limits": [{"per_second": 1}]},
        {"name": "a", "limits": [{"per_second": 1, "burst": 2}]},
        "'burst' at $.limits[0]",
    ),
    (
        Config,
        {"name": "a", "by_route": {"/x": {"per_second": 1}}},
        {"name": "a", "by_route": {"/x": {"per_second": 1, "burst": 2}}},
        "at $.by_route['/x']",
    ),
    (
        Config,
        {"name": "a", "fallback": {"per_second": 1}},
        {"name": "a", "fallback": {"per_second": 1, "burst": 2}},
        "at $.fallback",
    ),
    (
        Config,
        {"name": "a", "pair": [{"per_second": 1}, 3]},
        {"name": "a", "pair": [{"per_second": 1, "burst": 2}, 3]},
        "at $.pair[0]",
    ),
    (
        Profile,
        {"name": "a", "limit": {"per_second": 1}},
        {"name": "a", "limit": {"per_second": 1}, "age": 3},
        "'age' at $",
    ),
    (
        Session,
        {"user": "u", "limit": {"per_second": 1}},
        {"user": "u", "limit": {"per_second": 1, "burst": 2}},
        "at $.limit",
    ),
    (Renamed, {"maxValue": 1}, {"maxValue": 1, "max_value": 2}, "'max_value' at $"),
    (
        list[Cat | Dog],
        [{"type": "Cat", "lives": 9}, {"type": "Dog", "good": True}],
        [{"type": "Cat", "lives": 9}, {"type": "Dog", "good": True, "lives": 1}],
        "'lives' at $[1]",
    ),
    (
        Tree,
        {"label": "r", "children": [{"label": "c", "children": []}]},
        {"label": "r", "children": [{"label": "c", "children": [], "x": 0}]},
        "at $.children[0]",
    ),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("tp", "good", "bad", "where"), CASES)
def test_strict_refuses_undeclared_fields(
    fmt: str, tp: Any, good: Any, bad: Any, where: str
) -> None:
    lax = value_codec(tp, fmt)
    strict = value_codec(tp, fmt, strict=True)
    expected = lax.decode(_plain(fmt, good))
    assert strict.decode(_plain(fmt, good)) == expected
    # Without strict, the extra field is ignored (forward compatibility)...
    assert lax.decode(_plain(fmt, bad)) == expected
    # ...with strict it is an error naming the field and where it is.
    with pytest.raises(DecodeError, match="unknown field") as info:
        strict.decode(_plain(fmt, bad))
    assert where in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_still_round_trips_its_own_values(fmt: str) -> None:
    value = Config(
        name="a",
        limits=[Limit(1)],
        by_route={"/": Limit(2)},
        fallback=Limit(3),
        pair=(Limit(4), 5),
    )
    vc = value_codec(Config, fmt, strict=True)
    assert vc.decode(vc.encode(value)) == value
    point = value_codec(Point, fmt, strict=True)
    assert point.decode(point.encode(Point(1, 2))) == Point(1, 2)


def test_strict_codec_objects() -> None:
    assert JsonCodec(strict=True).strict
    assert not JsonCodec().strict
    assert repr(MsgpackCodec(strict=True)) == "MsgpackCodec(strict=True)"
    for codec in (JsonCodec(strict=True), MsgpackCodec(strict=True)):
        data = codec.encode({"per_second": 1, "burst": 2})
        with pytest.raises(DecodeError, match="'burst'"):
            value_codec(Limit, codec).decode(data)


def test_strict_with_a_user_codec() -> None:
    class Plain:
        strict = True

        def encode(self, obj: Any) -> bytes:
            return JsonCodec().encode(obj)

        def decode(self, data: bytes) -> Any:
            return JsonCodec().decode(data)

    vc = value_codec(Limit, Plain())
    assert vc.decode(b'{"per_second": 1}') == Limit(1)
    with pytest.raises(DecodeError, match="'burst'"):
        vc.decode(b'{"per_second": 1, "burst": 2}')


def test_types_without_fields_accept_strict() -> None:
    vc = value_codec(dict[str, int], "json", strict=True)
    assert vc.decode(b'{"a": 1}') == {"a": 1}


def test_strict_needs_a_type_with_fields_to_mean_anything() -> None:
    from podshare.crdt import GSet

    with pytest.raises(ConfigurationError, match="strict=True needs a value type"):
        value_codec(None, "json", strict=True)
    with pytest.raises(ConfigurationError, match="strict=True does not apply"):
        value_codec(GSet[str], "json", strict=True)
    with pytest.raises(ConfigurationError, match="strict must be a bool"):
        value_codec(Limit, "json", strict="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="strict must be a bool"):
        JsonCodec(strict=1)  # type: ignore[arg-type]


@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k != "per_second"),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        min_size=1,
        max_size=3,
    ),
    value=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    fmt=st.sampled_from(FORMATS),
)
def test_strict_property(extra: dict[str, int], value: int, fmt: str) -> None:
    strict = value_codec(Limit, fmt, strict=True)
    assert strict.decode(_plain(fmt, {"per_second": value})) == Limit(value)
    with pytest.raises(DecodeError, match="unknown field"):
        strict.decode(_plain(fmt, {"per_second": value, **extra}))
