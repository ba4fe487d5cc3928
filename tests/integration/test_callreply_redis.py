"""callreply end to end over Redis pub/sub: the transport contract of tests/_callreply.py."""

from __future__ import annotations

import secrets
from contextlib import AbstractAsyncContextManager

import pytest

from podshare.transport.base import Transport
from podshare.transport.redis import RedisTransport
from tests._callreply import CallReplyContract
from tests._support import RedisServer

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
    def _server(self, redis_server: RedisServer) -> None:
        self.url = redis_server.url
        self.prefix = f"cr-test-{secrets.token_hex(4)}"

    def open_transport(self, name: str) -> AbstractAsyncContextManager[Transport]:
        del name  # one Redis connection per pod; the endpoint carries the node id
        return RedisTransport(self.url, channel_prefix=self.prefix)
