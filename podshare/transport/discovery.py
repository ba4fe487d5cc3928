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
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn, Protocol

import anyio

from podshare._counters import StatsRecord
from podshare._service import Service
from podshare.exceptions import ClosedError, ConfigurationError, PodshareError, TransportError
from podshare.transport._callbacks import call_user
from podshare.transport.tcp import ErrorCallback, format_address, parse_address

__all__ = ["DNSDiscoverer", "DNSStats", "PeerSet", "Resolver"]

_log = logging.getLogger("podshare.transport.discovery")

#: ``async (host, port) -> addresses``: the IP addresses ``host`` currently resolves to.
Resolver = Callable[[str, int], Awaitable[Iterable[str]]]


class PeerSet(Protocol):
    """What the discoverer needs from a transport
    ([`TcpTransport`][podshare.transport.TcpTransport] has it)."""

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

    def add_peer(self, address: str) -> bool | None:
        """Start dialing ``address`` (the result, if any, is not used)."""
        ...

    def remove_peer(self, address: str) -> bool | None:
        """Stop dialing ``address`` (the result, if any, is not used)."""
        ...


@dataclass(slots=True)
class DNSStats(StatsRecord):
    """Counters of one [`DNSDiscoverer`][podshare.transport.DNSDiscoverer], from `stats()`.

    ``resolutions`` counts lookups made, ``resolution_failures`` those that failed
    (the resolver raised anything: each is logged, reported to ``on_error`` and changes
    nothing), ``addresses_refused`` entries of an answer that are not usable addresses,
    ``peers_added`` / ``peers_removed`` the changes made to the transport, and
    ``callback_errors`` the ``on_error`` calls that raised (each logged).
    """

    resolutions: int = 0
    resolution_failures: int = 0
    addresses_refused: int = 0
    peers_added: int = 0
    peers_removed: int = 0
    callback_errors: int = 0


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
        on_error: ``(exc: PodshareError)``, sync or async, called with a
            [`TransportError`][podshare.exceptions.TransportError] (its ``__cause__`` is
            the resolver's exception) each time a resolution fails. It runs in the
            discoverer's task; one that raises is logged and counted.

    Only peers the discoverer itself added are ever removed, so peers configured by hand
    stay. A failed resolution (DNS down, name not found, or a custom resolver raising
    anything at all) changes nothing: the transport keeps dialing the peers it has,
    rather than dropping the whole mesh on a DNS hiccup.

    Use [`run`][podshare.transport.DNSDiscoverer.run] in a task group, or
    ``async with discoverer.attach(transport):``, whose first resolution completes, and
    whose peers are added, before the block starts, so a store opened in the block waits
    for them (see [`TcpTransport.wait_ready`][podshare.transport.TcpTransport.wait_ready]).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval: float = 10.0,
        resolver: Resolver | None = None,
        on_error: ErrorCallback | None = None,
    ) -> None:
        if not host:
            raise ConfigurationError("host must be a DNS name")
        if not 0 < port < 65536:
            raise ConfigurationError(f"port must be 1..65535, got {port}")
        if interval <= 0:
            raise ConfigurationError("interval must be positive")
        if on_error is not None and not callable(on_error):
            raise ConfigurationError(f"on_error must be callable or None, not {on_error!r}")
        self.host = host
        self.port = port
        self.interval = interval
        self._resolver: Resolver = resolver if resolver is not None else resolve_with_getaddrinfo
        self._on_error = on_error
        self._managed: set[str] = set()
        self._stats = DNSStats()

    @property
    def managed(self) -> frozenset[str]:
        """The peer addresses this discoverer added and still keeps."""
        return frozenset(self._managed)

    def stats(self) -> DNSStats:
        """A frozen snapshot of this discoverer's counters."""
        return self._stats.snapshot()

    async def reconcile(self, transport: PeerSet) -> tuple[set[str], set[str]]:
        """Resolve once and update ``transport``'s peers; return ``(added, removed)``.

        Never raises for a failed resolution (see the class docs); cancellation passes.
        """
        self._stats.resolutions += 1
        try:
            answer = await self._resolver(self.host, self.port)
            found = self._addresses(answer)
        except Exception as exc:  # noqa: BLE001  # any resolver failure: counted, logged, reported below
            await self._failed(exc)
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
        self._stats.peers_added += len(added)
        self._stats.peers_removed += len(removed)
        self._managed = (self._managed & found) | added
        if added or removed:
            _log.info("peers from %s: added %s, removed %s", self.host, added, removed)
        return added, removed

    def _addresses(self, answer: Iterable[object]) -> set[str]:
        found: set[str] = set()
        for ip in answer:
            address = format_address(str(ip), self.port)
            try:
                parse_address(address)
            except ConfigurationError:
                self._stats.addresses_refused += 1
                _log.info("resolving %s gave an unusable address %r; skipped", self.host, ip)
                continue
            found.add(address)
        return found

    async def _failed(self, exc: Exception) -> None:
        self._stats.resolution_failures += 1
        text = str(exc)
        cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        message = f"resolving {format_address(self.host, self.port)} failed: {cause}"
        _log.warning("%s; keeping the current peers", message)
        if self._on_error is not None:
            error: PodshareError = TransportError(message)
            error.__cause__ = exc
            if not await call_user(self._on_error, error, log=_log):
                self._stats.callback_errors += 1

    async def run(self, transport: PeerSet) -> NoReturn:
        """Reconcile now and then every ``interval`` seconds, until cancelled.

        It survives anything the resolver raises (see
        [`reconcile`][podshare.transport.DNSDiscoverer.reconcile]).
        """
        while True:
            await self.reconcile(transport)
            await anyio.sleep(self.interval)

    def attach(self, transport: PeerSet) -> AbstractAsyncContextManager[DNSDiscoverer]:
        """Run the discoverer for the duration of an ``async with`` block.

        The first resolution completes, and its peers are added to ``transport``,
        before the block starts; later ones run every ``interval`` seconds in a
        background task that ends with the block.
        """
        return self._attached(transport)

    @asynccontextmanager
    async def _attached(self, transport: PeerSet) -> AsyncIterator[DNSDiscoverer]:
        async with _Attachment(self, transport):
            yield self


class _Attachment(Service):
    """The background task of [`DNSDiscoverer.attach`][podshare.transport.DNSDiscoverer.attach]."""

    _service_name = "DNSDiscoverer"

    def __init__(self, discoverer: DNSDiscoverer, transport: PeerSet) -> None:
        super().__init__()
        self._discoverer = discoverer
        self._transport = transport

    async def _open(self) -> None:
        await self._discoverer.reconcile(self._transport)
        self.start_soon(self._loop)

    async def _loop(self) -> None:
        discoverer = self._discoverer
        while True:
            await anyio.sleep(discoverer.interval)
            await discoverer.reconcile(self._transport)
