"""callreply end to end over the TCP mesh: the transport contract of the memory tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import pytest

from podshare.transport.base import Transport
from tests.integration._callreply_contract import CallReplyContract

try:
    from podshare.transport.tcp import TcpTransport
except ImportError as exc:  # the transport module is missing
    pytest.skip(f"TcpTransport is not available: {exc}", allow_module_level=True)

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


class TestTcp(CallReplyContract):
    """Every pod on its own TcpTransport on loopback; each new pod dials all earlier ones."""

    @pytest.fixture(autouse=True)
    def _mesh(self) -> None:
        self.addresses: list[str] = []

    def open_transport(self, name: str) -> AbstractAsyncContextManager[Transport]:
        @asynccontextmanager
        async def transport() -> AsyncIterator[Transport]:
            peers = list(self.addresses)
            async with TcpTransport(peers=peers, node_id=name) as tr:
                with anyio.fail_after(10):
                    await tr.wait_connected(len(peers))
                self.addresses.append(tr.address)
                try:
                    yield tr
                finally:
                    self.addresses.remove(tr.address)

        return transport()
