"""NatsTransport against a real nats-server: conformance, errors, reconnects, JetStream."""

from __future__ import annotations

import pytest

from podshare.testing import check_transport
from podshare.transport import NatsTransport
from tests._nats import NatsServer

pytestmark = pytest.mark.integration

SECRET = "nats transport test secret, 32 bytes+"


@pytest.fixture
def anyio_backend() -> str:
    """nats-py is asyncio-only, so the NATS transport runs under asyncio alone."""
    return "asyncio"


@pytest.mark.anyio
async def test_conformance(nats_server: NatsServer) -> None:
    await check_transport(lambda: NatsTransport(nats_server.url))


@pytest.mark.anyio
async def test_conformance_with_secret(nats_server: NatsServer) -> None:
    await check_transport(lambda: NatsTransport(nats_server.url, secret=SECRET))


@pytest.mark.anyio
async def test_conformance_with_jetstream(nats_server: NatsServer) -> None:
    # The store family's topics go through a stream; the checks' topics are plain.
    await check_transport(
        lambda: NatsTransport(nats_server.url, jetstream=True), topic_prefix="ps/conformance"
    )
