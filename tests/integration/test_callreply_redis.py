"""callreply end to end over Redis pub/sub: the transport contract of the memory tests."""

from __future__ import annotations

import secrets
from contextlib import AbstractAsyncContextManager

import pytest

from podshare.transport.base import Transport
from tests.integration._callreply_contract import CallReplyContract

try:
    from podshare.transport.redis import RedisTransport
except ImportError as exc:  # the transport module or redis-py is missing
    pytest.skip(f"RedisTransport is not available: {exc}", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


@pytest.fixture
def anyio_backend() -> str:
    """redis-py is asyncio-only, so RedisTransport refuses to run under trio."""
    return "asyncio"


class TestRedis(CallReplyContract):
    """Every pod on its own RedisTransport to one redis-server; each test its own prefix."""

    # RedisTransport publishes through redis-py's pool of at most 100 connections and
    # raises TransportError beyond it, so a burst of 200 concurrent calls from one pod
    # fails on the transport before it reaches the owner.
    cancel_burst = 80

    @pytest.fixture(autouse=True)
    def _server(self, redis_server: object) -> None:
        self.url: str = redis_server.url  # type: ignore[attr-defined]
        self.prefix = f"cr-test-{secrets.token_hex(4)}"

    def open_transport(self, name: str) -> AbstractAsyncContextManager[Transport]:
        return RedisTransport(self.url, channel_prefix=self.prefix)
