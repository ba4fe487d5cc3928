"""DNSDiscoverer: keeps a TcpTransport's peers in step with a DNS name (a headless Service).

A Kubernetes headless Service resolves to one A/AAAA record per ready pod. The discoverer
resolves it every ``interval`` seconds and reconciles the transport's peer set: new
addresses are added, vanished ones removed, and the node's own address skipped.

Example:
    >>> import anyio
    >>> from podshare.transport import DNSDiscoverer, TcpTransport
    >>> async def fake_dns(host: str, port: int) -> list[str]:
    ...     return ["10.0.0.5", "10.0.0.6"]
    >>> async def main() -> tuple[str, ...]:
    ...     async with TcpTransport(reconnect_backoff=(60, 60)) as transport:
    ...         discoverer = DNSDiscoverer("podshare.default.svc", 7000, resolver=fake_dns)
    ...         await discoverer.reconcile(transport)
    ...         return transport.peers
    >>> anyio.run(main)
    ('10.0.0.5:7000', '10.0.0.6:7000')
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import NoReturn, Protocol

import anyio

from podshare.exceptions import ClosedError, ConfigurationError
from podshare.transport.tcp import format_address

__all__ = ["DNSDiscoverer", "PeerSet", "Resolver"]

_log = logging.getLogger("podshare.transport.discovery")

#: ``async (host, port) -> addresses``: the IP addresses ``host`` currently resolves to.
Resolver = Callable[[str, int], Awaitable[Iterable[str]]]


class PeerSet(Protocol):
    """What the discoverer needs from a transport (:class:`TcpTransport` has it)."""

    @property
    def peers(self) -> tuple[str, ...]:
        """The configured peer addresses."""
        ...

    @property
    def address(self) -> str:
        """This node's own ``"host:port"``."""
        ...

    @property
    def self_addresses(self) -> frozenset[str]:
        """Addresses found to be this node."""
        ...

    def add_peer(self, address: str) -> None:
        """Start dialing ``address``."""
        ...

    def remove_peer(self, address: str) -> None:
        """Stop dialing ``address``."""
        ...


async def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """The default resolver: every stream address of ``host`` (via anyio's getaddrinfo)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for *_, sockaddr in infos]


class DNSDiscoverer:
    """Resolves ``host`` periodically and reconciles a transport's peers with the answer.

    Args:
        host: the DNS name, typically a headless Service
            (``"podshare.my-namespace.svc.cluster.local"``).
        port: the port every pod listens on.
        interval: seconds between resolutions.
        resolver: ``async (host, port) -> iterable of IP addresses``; anyio's getaddrinfo
            by default. Inject a fake one in tests.

    Only peers the discoverer itself added are ever removed, so peers configured by hand
    stay. A failed resolution (DNS down, name not found) changes nothing: the transport
    keeps dialing the peers it has, rather than dropping the whole mesh on a DNS hiccup.

    Use :meth:`run` in a task group, or ``async with discoverer.attach(transport):``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval: float = 10.0,
        resolver: Resolver | None = None,
    ) -> None:
        if not host:
            raise ConfigurationError("host must be a DNS name")
        if not 0 < port < 65536:
            raise ConfigurationError(f"port must be 1..65535, got {port}")
        if interval <= 0:
            raise ConfigurationError("interval must be positive")
        self.host = host
        self.port = port
        self.interval = interval
        self._resolver: Resolver = resolver if resolver is not None else resolve_with_getaddrinfo
        self._managed: set[str] = set()
        #: Resolutions that failed (each is logged and changes nothing).
        self.failures = 0

    @property
    def managed(self) -> frozenset[str]:
        """The peer addresses this discoverer added and still keeps."""
        return frozenset(self._managed)

    async def reconcile(self, transport: PeerSet) -> tuple[set[str], set[str]]:
        """Resolve once and update ``transport``'s peers; return ``(added, removed)``."""
        try:
            answer = await self._resolver(self.host, self.port)
            found = {format_address(ip, self.port) for ip in answer}
        except (OSError, ValueError) as exc:  # socket.gaierror is an OSError
            self.failures += 1
            _log.warning("resolving %s failed, keeping the current peers: %r", self.host, exc)
            return set(), set()
        try:
            own = {transport.address}
        except ClosedError:  # a transport that does not listen has no own address
            own = set()
        found -= own | transport.self_addresses
        configured = set(transport.peers)
        added = found - configured
        removed = (self._managed - found) & configured
        for address in sorted(added):
            transport.add_peer(address)
        for address in sorted(removed):
            transport.remove_peer(address)
        self._managed = (self._managed & found) | added
        if added or removed:
            _log.info("peers from %s: added %s, removed %s", self.host, added, removed)
        return added, removed

    async def run(self, transport: PeerSet) -> NoReturn:
        """Reconcile now and then every ``interval`` seconds, until cancelled."""
        while True:
            await self.reconcile(transport)
            await anyio.sleep(self.interval)

    @asynccontextmanager
    async def attach(self, transport: PeerSet) -> AsyncIterator[DNSDiscoverer]:
        """Run the discoverer for the duration of an ``async with`` block.

        The first resolution completes before the block starts.
        """
        await self.reconcile(transport)
        async with anyio.create_task_group() as tg:

            async def loop() -> None:
                while True:
                    await anyio.sleep(self.interval)
                    await self.reconcile(transport)

            tg.start_soon(loop)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
