"""NatsKVPersistence against a real JetStream: what is written is loaded back, exactly.

Once the persistence conformance kit (``podshare.testing.check_persistence``) is merged,
it should run against this backend too; these tests check the backend on its own.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from podshare.exceptions import TransportError
from podshare.persistence import PersistedState, Persistence
from podshare.persistence.nats import NatsKVPersistence
from podshare.transport import NatsTransport
from tests._nats import NatsServer, nats_binary

pytestmark = pytest.mark.integration

# Keys of every shape a store may use: dots, slashes, spaces, unicode, very long.
ODD_KEYS = ["plain", "a.b.c", "user/42", "with space", "ключ", "🙂", "=", "~x", "k" * 1024]


@pytest.fixture
def anyio_backend() -> str:
    """nats-py is asyncio-only, so the NATS persistence runs under asyncio alone."""
    return "asyncio"


def _bucket() -> str:
    return f"test-{secrets.token_hex(4)}"


@pytest.mark.anyio
async def test_records_and_meta_round_trip(nats_server: NatsServer) -> None:
    bucket = _bucket()
    records = {key: f"record of {key}".encode() for key in ODD_KEYS}
    async with NatsTransport(nats_server.url) as tr:
        persistence = NatsKVPersistence(tr, bucket=bucket)
        assert isinstance(persistence, Persistence)
        assert await persistence.load("orders") == PersistedState({}, None)
        await persistence.write("orders", records, meta=b"meta-1")
        await persistence.write("other.store", {"plain": b"elsewhere"}, meta=None)
        state = await persistence.load("orders")
        assert dict(state.records) == records
        assert state.meta == b"meta-1"
        # A delete removes the key; writing the same changes twice is harmless.
        changes: dict[str, bytes | None] = {"a.b.c": None, "plain": b"newer"}
        await persistence.write("orders", changes, meta=b"meta-2")
        await persistence.write("orders", changes, meta=b"meta-2")
        expected = {**records, "plain": b"newer"}
        del expected["a.b.c"]
        state = await persistence.load("orders")
        assert (dict(state.records), state.meta) == (expected, b"meta-2")
        # Stores are kept apart, even when one's name is a prefix of another's.
        assert dict((await persistence.load("other.store")).records) == {"plain": b"elsewhere"}
        assert dict((await persistence.load("other")).records) == {}
    # Another process (a new connection) loads the same state: it is durable and shared.
    async with NatsTransport(nats_server.url) as tr:
        persistence = NatsKVPersistence(tr, bucket=bucket)
        assert persistence.shared
        state = await persistence.load("orders")
        assert (dict(state.records), state.meta) == (expected, b"meta-2")
        await tr.client.jetstream().delete_key_value(bucket)


@pytest.mark.anyio
async def test_many_records_in_one_write(nats_server: NatsServer) -> None:
    records = {f"key-{i}": secrets.token_bytes(64) for i in range(2000)}
    async with NatsTransport(nats_server.url) as tr:
        persistence = NatsKVPersistence(tr, bucket=_bucket())
        await persistence.write("big", records, meta=b"m")
        state = await persistence.load("big")
        assert dict(state.records) == records
        await tr.client.jetstream().delete_key_value(persistence.bucket)


@pytest.mark.anyio
async def test_default_persistence_of_a_jetstream_transport(nats_server: NatsServer) -> None:
    async with NatsTransport(nats_server.url, jetstream=True) as tr:
        persistence = tr.default_persistence()
        assert isinstance(persistence, NatsKVPersistence)
        assert persistence.bucket == "podshare"
        store = f"default-{secrets.token_hex(4)}"
        await persistence.write(store, {"k": b"v"}, meta=b"m")
        assert await persistence.load(store) == PersistedState({"k": b"v"}, b"m")
        await persistence.write(store, {"k": None}, meta=None)
        assert dict((await persistence.load(store)).records) == {}


@pytest.mark.anyio
async def test_without_jetstream_a_clear_transport_error(tmp_path: Path) -> None:
    server = NatsServer(nats_binary(), tmp_path, jetstream=False)
    server.start()
    try:
        async with NatsTransport(server.url, timeout=1.0) as tr:
            persistence = NatsKVPersistence(tr, bucket="nope")
            with pytest.raises(TransportError, match="NATS KV bucket nope"):
                await persistence.load("orders")
            with pytest.raises(TransportError, match="NATS KV bucket nope"):
                await persistence.write("orders", {"k": b"v"}, meta=None)
    finally:
        server.kill()
