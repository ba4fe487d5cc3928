"""DNSDiscoverer reconciles a transport's peers with a (fake) resolver's changing answers."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import anyio
import anyio.lowlevel
import pytest

from podshare.exceptions import ClosedError, ConfigurationError, PodshareError, TransportError
from podshare.transport import DNSDiscoverer, DNSStats

pytestmark = pytest.mark.anyio


class FakePeers:
    """Records what the discoverer does to a transport's peer set."""

    def __init__(self, address: str | None = "10.0.0.1:7000", peers: Iterable[str] = ()) -> None:
        self._address = address
        self._peers = list(peers)
        self.self_addresses: frozenset[str] = frozenset()

    @property
    def peers(self) -> tuple[str, ...]:
        return tuple(self._peers)

    @property
    def address(self) -> str:
        if self._address is None:
            raise ClosedError("not listening")
        return self._address

    def add_peer(self, address: str) -> bool:
        assert address not in self._peers
        self._peers.append(address)
        return True

    def remove_peer(self, address: str) -> bool:
        self._peers.remove(address)
        return True


class FakeDNS:
    """A resolver whose answer the test changes; counts and signals lookups."""

    def __init__(self, *answer: str) -> None:
        self.answer: list[str] | BaseException = list(answer)
        self.lookups = 0
        self.looked_up = anyio.Event()

    async def __call__(self, host: str, port: int) -> list[str]:
        assert (host, port) == ("podshare.ns.svc", 7000)
        self.lookups += 1
        self.looked_up.set()
        self.looked_up = anyio.Event()
        if isinstance(self.answer, BaseException):
            raise self.answer
        return list(self.answer)


async def test_reconcile_adds_removes_and_skips_itself() -> None:
    dns = FakeDNS("10.0.0.1", "10.0.0.2", "10.0.0.3")
    peers = FakePeers(address="10.0.0.1:7000")
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns)

    added, removed = await discoverer.reconcile(peers)
    assert added == {"10.0.0.2:7000", "10.0.0.3:7000"}
    assert removed == set()
    assert set(peers.peers) == {"10.0.0.2:7000", "10.0.0.3:7000"}

    dns.answer = ["10.0.0.1", "10.0.0.3", "10.0.0.4"]  # .2 went away, .4 arrived
    added, removed = await discoverer.reconcile(peers)
    assert (added, removed) == ({"10.0.0.4:7000"}, {"10.0.0.2:7000"})
    assert set(peers.peers) == {"10.0.0.3:7000", "10.0.0.4:7000"}
    assert discoverer.managed == {"10.0.0.3:7000", "10.0.0.4:7000"}

    assert await discoverer.reconcile(peers) == (set(), set())  # stable answer: no churn


async def test_hand_configured_peers_are_never_removed() -> None:
    dns = FakeDNS("10.0.0.2")
    peers = FakePeers(peers=["10.9.9.9:7000", "10.0.0.2:7000"])
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns)
    assert await discoverer.reconcile(peers) == (set(), set())
    dns.answer = []
    await discoverer.reconcile(peers)
    assert set(peers.peers) == {"10.9.9.9:7000", "10.0.0.2:7000"}


async def test_failed_resolution_keeps_the_current_peers() -> None:
    dns = FakeDNS("10.0.0.2", "10.0.0.3")
    peers = FakePeers()
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns)
    await discoverer.reconcile(peers)
    dns.answer = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert await discoverer.reconcile(peers) == (set(), set())
    assert discoverer.stats() == DNSStats(resolutions=2, resolution_failures=1, peers_added=2)
    assert set(peers.peers) == {"10.0.0.2:7000", "10.0.0.3:7000"}


async def test_addresses_found_to_be_itself_and_ipv6_and_no_listener() -> None:
    dns = FakeDNS("10.0.0.5", "fd00::7")
    peers = FakePeers(address=None)
    peers.self_addresses = frozenset({"10.0.0.5:7000"})  # e.g. the pod IP of 0.0.0.0
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns)
    await discoverer.reconcile(peers)
    assert peers.peers == ("[fd00::7]:7000",)


async def test_attach_keeps_reconciling_until_the_block_ends() -> None:
    dns = FakeDNS("10.0.0.2")
    peers = FakePeers()
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, interval=0.01, resolver=dns)
    with anyio.fail_after(5):
        async with discoverer.attach(peers):
            assert peers.peers == ("10.0.0.2:7000",)  # resolved before the block starts
            dns.answer = ["10.0.0.3"]
            while peers.peers != ("10.0.0.3:7000",):
                await dns.looked_up.wait()
    assert discoverer.managed == {"10.0.0.3:7000"}


async def test_run_is_cancellable_in_a_task_group() -> None:
    dns = FakeDNS("10.0.0.2")
    peers = FakePeers()
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, interval=0.01, resolver=dns)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(discoverer.run, peers)
            while dns.lookups < 3:
                await dns.looked_up.wait()
            tg.cancel_scope.cancel()
    assert peers.peers == ("10.0.0.2:7000",)


class ResolverBug(Exception):
    """Not an OSError nor a ValueError: what a custom resolver's own bug raises."""


@pytest.mark.parametrize("sync_callback", [True, False], ids=["sync", "async"])
async def test_run_survives_any_resolver_exception_and_reports_it(sync_callback: bool) -> None:
    dns = FakeDNS("10.0.0.2")
    peers = FakePeers()
    reported: list[PodshareError] = []
    reported_event = anyio.Event()

    def record(exc: PodshareError) -> None:
        reported.append(exc)
        reported_event.set()

    async def record_async(exc: PodshareError) -> None:
        await anyio.lowlevel.checkpoint()
        record(exc)

    discoverer = DNSDiscoverer(
        "podshare.ns.svc",
        7000,
        interval=0.01,
        resolver=dns,
        on_error=record if sync_callback else record_async,
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(discoverer.run, peers)
            while dns.lookups < 1:
                await dns.looked_up.wait()
            dns.answer = ResolverBug("the resolver's own bug")
            await reported_event.wait()
            dns.answer = ["10.0.0.3"]  # run() is still going: the next answer is applied
            while peers.peers != ("10.0.0.3:7000",):
                await dns.looked_up.wait()
            tg.cancel_scope.cancel()
    assert isinstance(reported[0], TransportError)
    assert isinstance(reported[0].__cause__, ResolverBug)
    assert "podshare.ns.svc:7000" in str(reported[0])
    assert "ResolverBug: the resolver's own bug" in str(reported[0])
    stats = discoverer.stats()
    assert stats.resolution_failures >= 1
    assert stats.callback_errors == 0
    assert (stats.peers_added, stats.peers_removed) == (2, 1)


async def test_a_failing_on_error_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    dns = FakeDNS()
    dns.answer = KeyError("boom")

    def broken(_exc: PodshareError) -> None:
        raise RuntimeError("the callback's own bug")

    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns, on_error=broken)
    assert await discoverer.reconcile(FakePeers()) == (set(), set())
    assert discoverer.stats().callback_errors == 1
    assert any(
        r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records
    )


async def test_unusable_entries_of_an_answer_are_skipped_and_counted() -> None:
    dns = FakeDNS("", "10.0.0.2")
    peers = FakePeers()
    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=dns)
    assert await discoverer.reconcile(peers) == ({"10.0.0.2:7000"}, set())
    assert discoverer.stats().addresses_refused == 1


async def test_cancelling_a_resolution_is_not_a_failure() -> None:
    started = anyio.Event()

    async def hanging(_host: str, _port: int) -> list[str]:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("sleep_forever() returned")

    discoverer = DNSDiscoverer("podshare.ns.svc", 7000, resolver=hanging)
    async with anyio.create_task_group() as tg:
        tg.start_soon(discoverer.reconcile, FakePeers())
        await started.wait()
        tg.cancel_scope.cancel()
    assert discoverer.stats() == DNSStats(resolutions=1)


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError):
        DNSDiscoverer("", 7000)
    with pytest.raises(ConfigurationError):
        DNSDiscoverer("svc", 0)
    with pytest.raises(ConfigurationError):
        DNSDiscoverer("svc", 7000, interval=0)
    with pytest.raises(ConfigurationError):
        DNSDiscoverer("svc", 7000, on_error="print")  # type: ignore[arg-type]
