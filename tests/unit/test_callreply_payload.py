"""Typed callreply payloads: encode_payload / decode_payload over the value codecs."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import anyio
import pytest

from podshare.callreply import Endpoint, decode_payload, encode_payload
from podshare.exceptions import DecodeError, InvalidValue
from podshare.transport import MemoryNetwork, MemoryTransport


@dataclasses.dataclass(frozen=True)
class Push:
    text: str
    badge: int = 0


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_round_trip(codec: str) -> None:
    data = encode_payload(Push("hi", 2), codec=codec)
    assert decode_payload(data, Push, codec=codec) == Push("hi", 2)
    pushes = [Push("a"), Push("b", 1)]
    data = encode_payload(pushes, type=list[Push], codec=codec)
    assert decode_payload(data, list[Push], codec=codec) == pushes
    # Without type=, a list is encoded as a plain list, which cannot hold dataclasses.
    with pytest.raises(InvalidValue):
        encode_payload(pushes, codec=codec)
    assert decode_payload(encode_payload({"a": 1}, codec=codec), None, codec=codec) == {"a": 1}


def test_errors() -> None:
    with pytest.raises(DecodeError):
        decode_payload(b"not json", Push)
    with pytest.raises(DecodeError):
        decode_payload(b'{"badge": 1}', Push)  # text is required
    with pytest.raises(DecodeError, match="unknown field"):
        decode_payload(b'{"text": "a", "x": 1}', Push, strict=True)
    assert decode_payload(b'{"text": "a", "x": 1}', Push) == Push("a")
    with pytest.raises(InvalidValue):
        encode_payload(Push("a"), type=int)
    with pytest.raises(InvalidValue):
        encode_payload(object())


def test_unhashable_types_are_not_cached_but_work() -> None:
    tp: Any = Annotated[Push, ["unhashable metadata"]]
    assert decode_payload(encode_payload(Push("a"), type=tp), tp) == Push("a")


def test_pydantic_models() -> None:
    pytest.importorskip("pydantic", reason="the pydantic extra is not installed")
    import pydantic

    class Reply(pydantic.BaseModel):
        ok: bool
        detail: str | None = None

    data = encode_payload(Reply(ok=True))
    assert data == b'{"ok":true,"detail":null}'
    assert decode_payload(data, Reply) == Reply(ok=True)
    with pytest.raises(DecodeError):
        decode_payload(b'{"ok": "maybe"}', Reply)


@pytest.mark.anyio
async def test_through_an_endpoint() -> None:
    net = MemoryNetwork()
    async with (
        MemoryTransport(network=net, name="a") as ta,
        MemoryTransport(network=net, name="b") as tb,
        Endpoint(ta, node_id="a") as a,
        Endpoint(tb, node_id="b") as b,
    ):

        async def push(payload: bytes) -> bytes:
            message = decode_payload(payload, Push)
            return encode_payload(Push(message.text.upper(), message.badge + 1))

        await a.register("user:1", "push", push)
        with anyio.fail_after(5):
            while b.owner("user:1") is None:  # noqa: ASYNC110 (the route table has no event)
                await anyio.sleep(0.01)
        reply = await b.call("user:1", "push", encode_payload(Push("hi", 1)))
        assert decode_payload(reply, Push) == Push("HI", 2)
