"""Value codecs: typed round-trips, strict rejection on encode, DecodeError on garbage."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypedDict

import attrs
import msgpack
import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from podshare.exceptions import ConfigurationError, DecodeError, InvalidValue
from podshare.store.codec import (
    Codec,
    JsonCodec,
    MsgpackCodec,
    ValueCodec,
    resolve_codec,
    value_codec,
)

FORMATS = ["json", "msgpack"]


@dataclasses.dataclass(frozen=True)
class Config:
    rate_limit: int
    feature_flags: dict[str, bool] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Nested:
    name: str
    configs: list[Config]
    parent: Nested | None = None


@attrs.frozen
class Session:
    user: uuid.UUID
    since: datetime.datetime
    tags: frozenset[str] = frozenset()


@attrs.define(eq=False)
class Handle:
    """Compares by identity: the codec can only check its type."""

    fd: int


class Point(msgspec.Struct, frozen=True):
    x: float
    y: float


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Profile(TypedDict):
    name: str
    age: int


class Tags:
    """A minimal user type with a wire form (like podshare's CRDTs)."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[str, ...] = ()) -> None:
        self.items = tuple(sorted(set(items)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tags) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def to_wire(self) -> object:
        return {"t": list(self.items)}

    @classmethod
    def from_wire(cls, data: object) -> Tags:
        if not isinstance(data, dict) or not isinstance(data.get("t"), list):
            raise DecodeError("Tags: expected {'t': [...]}")
        if not all(isinstance(x, str) for x in data["t"]):
            raise DecodeError("Tags: elements must be str")
        return cls(tuple(data["t"]))


class SloppyWire(Tags):
    """A user type whose from_wire breaks the contract (raises KeyError)."""

    @classmethod
    def from_wire(cls, data: object) -> SloppyWire:
        return cls(tuple(data["t"]))  # type: ignore[index]


EXAMPLES: list[tuple[Any, Any]] = [
    (Config, Config(rate_limit=1000, feature_flags={"beta": True, "dark": False})),
    (Nested, Nested("n", [Config(1), Config(2, {"x": True})], Nested("p", []))),
    (
        Session,
        Session(
            uuid.uuid4(), datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC), frozenset("a")
        ),
    ),
    (Point, Point(1.5, -2.0)),
    (Color, Color.BLUE),
    (Level, Level.HIGH),
    (Profile, Profile(name="ada", age=36)),
    (datetime.datetime, datetime.datetime(2024, 1, 2, 3, 4, 5, 678, tzinfo=datetime.UTC)),
    (datetime.date, datetime.date(2024, 2, 29)),
    (uuid.UUID, uuid.UUID("12345678-1234-5678-1234-567812345678")),
    (decimal.Decimal, decimal.Decimal("1.10")),
    (int | None, None),
    (int | None, 7),
    (Literal["a", "b"], "b"),
    (tuple[int, str], (1, "x")),
    (set[int], {1, 2, 3}),
    (dict[str, list[Config]], {"k": [Config(3)]}),
    (bytes, b"\x00\xff"),
    (float, 0.1),
    (str, "héllo ✓"),
    (bool, False),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("tp", "value"), EXAMPLES, ids=lambda x: getattr(x, "__name__", None))
def test_typed_values_round_trip(tp: Any, value: Any, fmt: str) -> None:
    vc = value_codec(tp, fmt)
    data = vc.encode(value)
    assert isinstance(data, bytes)
    decoded = vc.decode(data)
    assert decoded == value
    assert type(decoded) is type(value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_identity_compared_class_is_checked_by_type(fmt: str) -> None:
    vc = value_codec(Handle, fmt)
    decoded = vc.decode(vc.encode(Handle(3)))
    assert isinstance(decoded, Handle)
    assert decoded.fd == 3
    with pytest.raises(InvalidValue):
        vc.encode(Config(1))


JSON_LIKE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=100)
@given(value=JSON_LIKE, fmt=st.sampled_from(FORMATS))
def test_untyped_json_like_data_round_trips(value: Any, fmt: str) -> None:
    vc = value_codec(None, fmt)
    assert vc.decode(vc.encode(value)) == value


@settings(max_examples=100)
@given(
    value=st.dictionaries(
        st.text(), st.lists(st.integers(min_value=-(2**63), max_value=2**64 - 1)), max_size=5
    ),
    fmt=st.sampled_from(FORMATS),
)
def test_typed_containers_round_trip(value: dict[str, list[int]], fmt: str) -> None:
    vc = value_codec(dict[str, list[int]], fmt)
    assert vc.decode(vc.encode(value)) == value


@settings(max_examples=100)
@given(
    value=st.builds(
        Config,
        rate_limit=st.integers(min_value=-(2**63), max_value=2**63 - 1),
        feature_flags=st.dictionaries(st.text(), st.booleans(), max_size=5),
    ),
    fmt=st.sampled_from(FORMATS),
)
def test_dataclass_round_trips(value: Config, fmt: str) -> None:
    vc = value_codec(Config, fmt)
    assert vc.decode(vc.encode(value)) == value


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (int, Config(1)),  # a Config into a Store[int]
        (int, True),  # bool is not an int here: it would be received differently
        (int, 1.5),
        (str, 1),
        (Config, 5),
        (Config, Config("not an int")),  # type: ignore[arg-type]
        (Config, Config(1, {"x": "yes"})),  # type: ignore[dict-item]
        (Nested, Nested("n", [Config("bad")])),  # type: ignore[arg-type]
        (datetime.datetime, "2024-01-01T00:00:00"),  # a str would arrive as a datetime
        (Color, "red"),
        (uuid.UUID, "12345678-1234-5678-1234-567812345678"),
        (None, (1, 2)),  # untyped: a tuple would arrive as a list
        (None, Config(1)),  # untyped: a dataclass would arrive as a dict
        (None, {"s": {1, 2}}),
        (None, object()),
        (float, math.nan),
    ],
)
def test_values_that_would_not_round_trip_are_refused(tp: Any, value: Any, fmt: str) -> None:
    vc = value_codec(tp, fmt)
    with pytest.raises(InvalidValue) as info:
        vc.encode(value)
    assert "cannot" in str(info.value)


def test_format_specific_refusals() -> None:
    with pytest.raises(InvalidValue):
        value_codec(None, "json").encode({1: "int key"})  # would arrive with a str key
    assert value_codec(None, "msgpack").encode({1: "int key"})  # msgpack keeps int keys
    with pytest.raises(InvalidValue):
        value_codec(int, "msgpack").encode(2**64)  # beyond msgpack's integers


def test_invalid_value_message_names_value_and_type() -> None:
    with pytest.raises(InvalidValue, match=r"Config.*cannot be stored as int"):
        value_codec(int).encode(Config(1))


def test_untyped_json_refuses_nan_and_bytes() -> None:
    vc = value_codec(None, "json")
    with pytest.raises(InvalidValue):
        vc.encode(math.nan)
    with pytest.raises(InvalidValue):
        vc.encode(b"raw")  # JSON would deliver base64 text
    assert (
        value_codec(None, "msgpack").decode(value_codec(None, "msgpack").encode(b"raw")) == b"raw"
    )


# Invalid in both formats, for every type below.
GARBAGE = [
    b"",
    b"\xc1",
    b"\xff\xfe",
    b"[" * 10_000,
    b"\x91" * 10_000,
    b"\xdd\xff\xff\xff\xff",  # msgpack array header declaring 4 G items, no items
    b"\xdb\xff\xff\xff\xff",  # msgpack str header declaring 4 GiB
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tp", [None, Config, int, Session, Tags])
@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_raises_decode_error_only(tp: Any, fmt: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        value_codec(tp, fmt).decode(data)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [("json", b'{"rate_limit": "x"}'), ("msgpack", msgspec.msgpack.encode({"rate_limit": "x"}))],
)
def test_well_formed_data_of_the_wrong_shape_is_a_decode_error(fmt: str, data: bytes) -> None:
    with pytest.raises(DecodeError, match="Config"):
        value_codec(Config, fmt).decode(data)


def _read(data: bytes, fmt: str) -> Any:
    """``data`` read by a decoder independent of msgspec: the stdlib's json, or msgpack."""
    if fmt == "json":
        return json.loads(data)
    # An extension type stays (code, data); code -1 is the timestamp, read as a datetime.
    return msgpack.unpackb(
        data, raw=False, strict_map_key=False, timestamp=3, ext_hook=msgspec.msgpack.Ext
    )


def _config_model(obj: Any) -> Config:
    """The Config a decoded mapping describes (unknown fields ignored, like msgspec)."""
    assert isinstance(obj, dict)
    assert type(obj["rate_limit"]) is int
    flags = obj.get("feature_flags", {})
    assert all(type(k) is str and type(v) is bool for k, v in flags.items())
    return Config(obj["rate_limit"], flags)


def _dict_model(obj: Any) -> dict[str, int]:
    assert isinstance(obj, dict)
    assert all(type(k) is str and type(v) is int for k, v in obj.items())
    return obj


# For each type: what its codec must make of bytes it accepts, given them read by _read
# (a wire-form type reads msgpack whatever the format).
MODELS: list[tuple[Any, Callable[[bytes, str], Any]]] = [
    (None, _read),
    (Config, lambda data, fmt: _config_model(_read(data, fmt))),
    (dict[str, int], lambda data, fmt: _dict_model(_read(data, fmt))),
    (Tags, lambda data, _fmt: Tags.from_wire(_read(data, "msgpack"))),
]
# Bytes each codec accepts, so the accepting branch runs for every type.
ACCEPTED = [
    b'{"rate_limit": 5, "feature_flags": {"beta": true}, "x": [1.5, null, "s"]}',
    msgspec.msgpack.encode({"rate_limit": 5, "feature_flags": {"beta": True}}),
    b'{"a": 1, "b": -2}',
    msgspec.msgpack.encode({"a": 1, "b": -2}),
    msgspec.msgpack.encode({"t": ["x", "y"]}),
]


@settings(max_examples=200)
@given(data=st.binary(max_size=64), fmt=st.sampled_from(FORMATS))
@example(data=ACCEPTED[0], fmt="json")
@example(data=ACCEPTED[1], fmt="msgpack")
@example(data=ACCEPTED[2], fmt="json")
@example(data=ACCEPTED[3], fmt="msgpack")
@example(data=ACCEPTED[4], fmt="json")
def test_random_bytes_decode_to_what_they_say_or_raise_decode_error(data: bytes, fmt: str) -> None:
    for tp, model in MODELS:
        vc = value_codec(tp, fmt)
        try:
            value = vc.decode(data)
        except DecodeError:
            continue
        assert value == model(data, fmt)
        assert vc.decode(vc.encode(value)) == value


@pytest.mark.parametrize("fmt", [*FORMATS, None])
def test_wire_form_types_use_to_wire_whatever_the_codec(fmt: str | None) -> None:
    vc = value_codec(Tags, fmt)
    value = Tags(("b", "a"))
    data = vc.encode(value)
    assert msgspec.msgpack.decode(data) == {"t": ["a", "b"]}
    assert vc.decode(data) == value
    assert vc.empty is not None
    assert vc.empty() == Tags()
    assert vc.codec is None


def test_wire_form_type_refuses_other_values() -> None:
    vc = value_codec(Tags, None)
    with pytest.raises(InvalidValue, match="Tags"):
        vc.encode({"t": ["a"]})


@pytest.mark.parametrize("data", [msgspec.msgpack.encode({"t": [1]}), msgspec.msgpack.encode([])])
def test_wire_form_validation_errors_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        value_codec(Tags, None).decode(data)


def test_a_from_wire_that_breaks_the_contract_still_gives_decode_error() -> None:
    vc = value_codec(SloppyWire, None)
    with pytest.raises(DecodeError, match="SloppyWire"):
        vc.decode(msgspec.msgpack.encode([1, 2]))


def test_generic_alias_of_a_wire_type() -> None:
    from podshare.crdt import GSet  # the real CRDT: GSet[str] is a generic alias

    vc = value_codec(GSet[str], "json")
    value = GSet(["x", "y"])
    assert vc.decode(vc.encode(value)) == value
    assert vc.empty is not None
    assert vc.empty() == GSet()
    with pytest.raises(InvalidValue):
        vc.encode(["x"])


def test_plain_types_have_no_empty_value() -> None:
    assert value_codec(Config).empty is None
    assert value_codec(None).empty is None


def test_any_means_untyped() -> None:
    vc = value_codec(Any, "json")
    assert vc.type is None
    assert vc.decode(vc.encode({"a": [1]})) == {"a": [1]}


class UpperJson:
    """A user's codec: JSON with a marker, to prove the bytes are its own."""

    def encode(self, obj: Any) -> bytes:
        return b"U" + msgspec.json.encode(obj)

    def decode(self, data: bytes) -> Any:
        if not data.startswith(b"U"):
            raise ValueError("no marker")
        return msgspec.json.decode(data[1:])


@pytest.mark.parametrize(("tp", "value"), EXAMPLES[:11], ids=lambda x: getattr(x, "__name__", None))
def test_user_codec_with_typed_conversion(tp: Any, value: Any) -> None:
    vc = value_codec(tp, UpperJson())
    data = vc.encode(value)
    assert data.startswith(b"U")
    assert vc.decode(data) == value


def test_user_codec_errors_are_mapped() -> None:
    vc = value_codec(Config, UpperJson())
    with pytest.raises(DecodeError):
        vc.decode(b'{"rate_limit": 1}')  # no marker: the codec's ValueError
    with pytest.raises(DecodeError):
        vc.decode(b'U{"rate_limit": "x"}')  # msgspec's ValidationError
    with pytest.raises(InvalidValue):
        vc.encode(Config("x"))  # type: ignore[arg-type]


def test_user_codec_returning_non_bytes_is_refused() -> None:
    class Bad:
        def encode(self, _obj: Any) -> bytes:
            return "text"  # type: ignore[return-value]

        def decode(self, data: bytes) -> Any:
            return data

    with pytest.raises(InvalidValue, match="not bytes"):
        value_codec(int, Bad()).encode(1)


def test_resolve_codec() -> None:
    assert isinstance(resolve_codec(None), JsonCodec)
    assert isinstance(resolve_codec("json"), JsonCodec)
    assert isinstance(resolve_codec("msgpack"), MsgpackCodec)
    user = UpperJson()
    assert resolve_codec(user) is user
    assert isinstance(user, Codec)


@pytest.mark.parametrize("bad", ["yaml", 3, object(), b"json"])
def test_bad_codec_option_names_codec(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="codec"):
        value_codec(int, bad)


def test_unsupported_type_names_type() -> None:
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match="type"):
        value_codec(Plain, "json")


def test_format_codecs_map_their_errors() -> None:
    for codec in (JsonCodec(), MsgpackCodec()):
        with pytest.raises(InvalidValue):
            codec.encode(object())
        with pytest.raises(DecodeError):
            codec.decode(b"\xc1")  # invalid in both formats


def test_value_codec_repr_and_type() -> None:
    vc: ValueCodec[Any] = value_codec(Config, "msgpack")
    assert vc.type is Config
    assert "Config" in repr(vc)
    assert "MsgpackCodec" in repr(vc)
