"""pydantic value types: round-trips through pydantic's own validation and serialisation."""

from __future__ import annotations

import datetime
import enum
import subprocess
import sys
import uuid
from typing import Annotated, Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("pydantic", reason="the pydantic extra is not installed")
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from podshare import JsonCodec, Store
from podshare.exceptions import ConfigurationError, DecodeError, InvalidValue
from podshare.store.codec import value_codec
from podshare.transport import MemoryNetwork, MemoryTransport

FORMATS = ["json", "msgpack"]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Owner(BaseModel):
    name: str
    id: uuid.UUID


class Flag(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    enabled: bool = False
    color: Color = Color.RED
    owner: Owner | None = None
    since: datetime.datetime | None = None
    percent: float = Field(default=100.0, ge=0, le=100)
    rollout_group: str = Field(default="all", alias="rolloutGroup")
    tags: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class Audit(BaseModel):
    """A model whose validator refuses what another pod's older version might send."""

    at: datetime.datetime
    by: str = Field(min_length=1)


PLUS_2 = datetime.timezone(datetime.timedelta(hours=2))
FULL = Flag(
    name="checkout",
    enabled=True,
    color=Color.BLUE,
    owner=Owner(name="ops", id=uuid.UUID(int=7)),
    since=datetime.datetime(2024, 5, 1, 12, 30, tzinfo=PLUS_2),
    percent=12.5,
    rolloutGroup="beta",
    tags=["a", "b"],
)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "value",
    [FULL, Flag(name="plain"), Flag(name="x", owner=None, since=None)],
    ids=["full", "defaults", "optional-none"],
)
def test_models_round_trip(fmt: str, value: Flag) -> None:
    vc = value_codec(Flag, fmt)
    back = vc.decode(vc.encode(value))
    assert back == value
    assert type(back) is Flag
    # Offsets survive (pydantic's ISO form), not only the instant.
    assert back.since is None or back.since.utcoffset() == value.since.utcoffset()  # type: ignore[union-attr]


def test_json_bytes_are_pydantic_own_serialisation() -> None:
    """The wire form is exactly ``model_dump_json(by_alias=True)``: other pydantic code
    (or another language reading the topic) sees the model's public JSON."""
    data = value_codec(Flag, "json").encode(FULL)
    assert data == FULL.model_dump_json(by_alias=True).encode()
    assert b'"rolloutGroup":"beta"' in data
    assert Flag.model_validate_json(data) == FULL


def test_validators_run_on_decode() -> None:
    vc = value_codec(Flag, "json")
    assert vc.decode(b'{"name": "LOUD"}').name == "loud"


@pytest.mark.parametrize("fmt", FORMATS)
def test_containers_of_models(fmt: str) -> None:
    for tp, value in [
        (list[Flag], [FULL, Flag(name="b")]),
        (dict[str, Flag], {"a": FULL}),
        (Flag | None, None),
        (Flag | None, FULL),
    ]:
        vc = value_codec(tp, fmt)
        assert vc.decode(vc.encode(value)) == value


def test_pydantic_dataclass_goes_through_pydantic() -> None:
    @pydantic_dataclass
    class Limit:
        per_second: Annotated[int, Field(gt=0)]

    vc = value_codec(Limit, "json")
    assert vc.decode(vc.encode(Limit(per_second=5))) == Limit(per_second=5)
    with pytest.raises(DecodeError, match="per_second"):
        vc.decode(b'{"per_second": 0}')  # the Field constraint is pydantic's, not msgspec's


@pytest.mark.parametrize("fmt", FORMATS)
def test_received_values_failing_validation_are_decode_errors(fmt: str) -> None:
    vc = value_codec(Audit, fmt)
    plain = value_codec(None, fmt)
    for bad in [
        {"at": "not a date", "by": "x"},
        {"at": "2024-01-01T00:00:00Z", "by": ""},
        {"by": "x"},
        [1, 2],
        "text",
    ]:
        with pytest.raises(DecodeError, match="Audit"):
            vc.decode(plain.encode(bad))
    with pytest.raises(DecodeError):
        vc.decode(b"\xff\x00garbage")


@pytest.mark.parametrize("fmt", FORMATS)
def test_local_writes_that_do_not_fit_are_invalid_value(fmt: str) -> None:
    vc = value_codec(Flag, fmt)
    with pytest.raises(InvalidValue, match="not an instance"):
        vc.encode({"name": "x"})
    with pytest.raises(InvalidValue):
        vc.encode(5)
    # Not round-trippable: inf serialises as null, which does not validate back.
    nan = Flag.model_construct(name="x", percent=float("inf"))
    with pytest.raises(InvalidValue):
        vc.encode(nan)
    with pytest.raises(InvalidValue):
        value_codec(list[Flag], fmt).encode([{"name": "not a model"}])


def test_errors_are_one_line_and_name_the_field() -> None:
    with pytest.raises(DecodeError) as info:
        value_codec(Audit, "json").decode(b'{"at": "2024-01-01T00:00:00Z", "by": ""}')
    message = str(info.value)
    assert "\n" not in message
    assert "by:" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_strict_rejects_unknown_fields_at_any_depth(fmt: str) -> None:
    plain = value_codec(None, fmt)
    lax = value_codec(Flag, fmt)
    strict = value_codec(Flag, fmt, strict=True)
    top = plain.encode({"name": "a", "colour": "red"})
    owner = {"name": "o", "id": str(uuid.UUID(int=1)), "x": 1}
    nested = plain.encode({"name": "a", "owner": owner})
    for data in (top, nested):
        assert lax.decode(data).name == "a"
        with pytest.raises(DecodeError, match="Extra inputs are not permitted"):
            strict.decode(data)
    assert strict.decode(strict.encode(FULL)) == FULL


def test_strict_overrides_a_model_that_allows_extras() -> None:
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        a: int

    with pytest.raises(DecodeError):
        value_codec(Open, "json", strict=True).decode(b'{"a": 1, "b": 2}')
    # A strict store cannot hold a value that carries extras: receivers would refuse it.
    with pytest.raises(InvalidValue):
        value_codec(Open, "json", strict=True).encode(Open(a=1, b=2))  # type: ignore[call-arg]
    assert value_codec(Open, "json").encode(Open(a=1, b=2)) == b'{"a":1,"b":2}'  # type: ignore[call-arg]


def test_strict_codec_object_turns_strict_on() -> None:
    with pytest.raises(DecodeError):
        value_codec(Flag, JsonCodec(strict=True)).decode(b'{"name": "a", "x": 1}')


def test_a_user_codec_carries_the_json_compatible_form() -> None:
    class Reversed:
        """A toy format: JSON bytes, reversed."""

        def encode(self, obj: Any) -> bytes:
            return JsonCodec().encode(obj)[::-1]

        def decode(self, data: bytes) -> Any:
            return JsonCodec().decode(data[::-1])

    vc = value_codec(Flag, Reversed())
    assert vc.decode(vc.encode(FULL)) == FULL


def test_an_incomplete_model_is_a_configuration_error() -> None:
    class Holder(BaseModel):
        w: Missing  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigurationError, match="not a supported value type"):
        value_codec(list[Holder], "json")


@given(
    name=st.text(min_size=1, max_size=20).filter(lambda s: s == s.lower()),
    enabled=st.booleans(),
    percent=st.floats(min_value=0, max_value=100, allow_nan=False),
    tags=st.lists(st.text(max_size=5), max_size=4),
    fmt=st.sampled_from(FORMATS),
)
def test_round_trip_property(
    name: str, enabled: bool, percent: float, tags: list[str], fmt: str
) -> None:
    value = Flag(name=name, enabled=enabled, percent=percent, tags=tags)
    vc = value_codec(Flag, fmt, strict=True)
    assert vc.decode(vc.encode(value)) == value


def test_podshare_never_imports_pydantic() -> None:
    """Without a pydantic model in play, importing and using podshare leaves it unloaded."""
    code = (
        "import sys, dataclasses, anyio, podshare, podshare.sync, podshare.callreply\n"
        "from podshare.store.codec import value_codec\n"
        "@dataclasses.dataclass\n"
        "class C:\n"
        "    a: int\n"
        "vc = value_codec(C, 'json', strict=True)\n"
        "assert vc.decode(vc.encode(C(1))) == C(1)\n"
        "assert 'pydantic' not in sys.modules, 'pydantic was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- through a Store ----------------------------------------------------------------------


def typed_by_argument(name: str, transport: MemoryTransport, **options: Any) -> Store[Flag]:
    """A store typed with ``type=Flag`` (rather than ``Store[Flag]``)."""
    return Store(name, transport, type=Flag, **options)


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", FORMATS)
async def test_typed_stores_replicate_models(fmt: str) -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as ta,
        MemoryTransport(network=net, name="b") as tb,
        Store[Flag]("flags", ta, node_id="a", codec=fmt) as a,
        typed_by_argument("flags", tb, node_id="b", codec=fmt) as b,
        b.watch(key="checkout") as events,
    ):
        await a.set("checkout", FULL)
        with anyio.fail_after(5):
            event = await events.__anext__()
        assert event.value == FULL
        assert b["checkout"] == FULL
        with pytest.raises(InvalidValue):
            await a.set("bad", {"name": "not a model"})  # type: ignore[arg-type]
        assert "bad" not in a


@pytest.mark.anyio
async def test_a_value_the_model_rejects_is_counted_and_skipped() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as ta,
        MemoryTransport(network=net, name="b") as tb,
        Store[Any]("audit", ta, node_id="a") as writer,  # untyped: writes anything JSON-like
        Store[Audit]("audit", tb, node_id="b") as reader,
        reader.watch() as events,
    ):
        await writer.set("bad", {"at": "yesterday", "by": "x"})
        await writer.set("good", {"at": "2024-01-01T00:00:00Z", "by": "x"})
        with anyio.fail_after(5):
            event = await events.__anext__()
        assert event.key == "good"
        assert reader["good"].by == "x"
        assert "bad" not in reader
        assert reader.stats().decode_errors == 1


@pytest.mark.anyio
async def test_strict_codec_through_a_store() -> None:
    """``Store(..., codec=JsonCodec(strict=True))``: unknown fields are skipped as errors."""
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as ta,
        MemoryTransport(network=net, name="b") as tb,
        MemoryTransport(network=net, name="c") as tc,
        Store[Any]("flags", ta, node_id="a") as writer,
        Store[Flag]("flags", tb, node_id="b", codec=JsonCodec(strict=True)) as strict,
        Store[Flag]("flags", tc, node_id="c") as lax,
        strict.watch() as strict_events,
        lax.watch() as lax_events,
    ):
        await writer.set("newer", {"name": "n", "added_later": 1})
        await writer.set("plain", {"name": "p"})
        with anyio.fail_after(5):
            assert (await strict_events.__anext__()).key == "plain"
            assert {(await lax_events.__anext__()).key for _ in range(2)} == {"newer", "plain"}
        assert "newer" not in strict
        assert strict.stats().decode_errors == 1
        assert lax["newer"] == Flag(name="n")
