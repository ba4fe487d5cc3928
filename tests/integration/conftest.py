"""Integration fixtures: real servers started on free loopback ports, stopped at teardown."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests._nats import NatsCluster, NatsServer, nats_binary
from tests._support import RedisServer, SentinelGroup, free_port

# -- Redis -------------------------------------------------------------------------------
# Tests never use a system Redis (one may listen on 6379): each fixture starts its own
# redis-server, without persistence, on a free loopback port.


# A test that starts a server must say so: `-m "not integration"` then runs no server.
_SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "restartable_redis",
        "tls_redis",
        "nats_server",
        "restartable_nats",
        "nats_cluster",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuse to run a test that uses a server fixture without the ``integration`` mark."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SERVER_FIXTURES and item.get_closest_marker("integration") is None:
            raise pytest.UsageError(f"{item.nodeid} starts a server: mark it integration")


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (install the redis-server package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must run the Redis integration tests")
        pytest.skip(reason)
    return binary


def _start_on_free_port(binary: str, workdir: Path) -> RedisServer:
    last: Exception | None = None
    for _ in range(3):  # another process may grab the free port between probe and bind
        server = RedisServer(binary, free_port(), workdir)
        try:
            server.start()
        except RuntimeError as exc:
            last = exc
            continue
        return server
    raise RuntimeError(f"could not start redis-server: {last}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server shared by the tests that never restart it."""
    server = _start_on_free_port(_redis_binary(), tmp_path_factory.mktemp("redis-shared"))
    yield server
    server.kill()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart (same port)."""
    server = _start_on_free_port(_redis_binary(), tmp_path)
    yield server
    server.kill()


@pytest.fixture(scope="session")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, str, trustme.CA]]:
    """A redis-server that also serves TLS: ``(server, rediss_url, trustme_ca)``."""
    binary = _redis_binary()
    workdir = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    tls_port = free_port()
    server = RedisServer(binary, free_port(), workdir)
    server.start(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(workdir / "cert.pem"),
        "--tls-key-file",
        str(workdir / "key.pem"),
        "--tls-ca-cert-file",
        str(workdir / "ca.pem"),
        "--tls-auth-clients",
        "no",
    )
    yield server, f"rediss://127.0.0.1:{tls_port}/0", ca
    server.kill()


# -- Redis Sentinel ------------------------------------------------------------------------
# A master, one replica and three sentinels, all on free loopback ports, all with
# passwords (the servers' and the sentinels' differ, so a test shows they are kept apart).


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels of the test's own, killed at teardown."""
    group = SentinelGroup(_redis_binary(), tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


# -- NATS ----------------------------------------------------------------------------------
# Each fixture starts its own nats-server (with JetStream, its store in a temporary
# directory) on a free loopback port; the machine's own server is never touched.


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream shared by the tests that never restart it."""
    server = NatsServer(nats_binary(), tmp_path_factory.mktemp("nats-shared"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def restartable_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (JetStream on disk), which it may kill and restart."""
    server = NatsServer(nats_binary(), tmp_path / "nats")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three routed nats-servers of the test's own, killed at teardown."""
    cluster = NatsCluster(nats_binary(), tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
