"""Integration fixtures: real servers started on free loopback ports, stopped at teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

# -- Redis -------------------------------------------------------------------------------
# Tests never use a system Redis (one may listen on 6379): each fixture starts its own
# redis-server, without persistence, on a free loopback port.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (install the redis-server package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must run the Redis integration tests")
        pytest.skip(reason)
    return binary


def _ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            if password is None:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    return False
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


class RedisServer:
    """A redis-server child process on a fixed loopback port, which tests can kill and restart.

    ``url`` stays valid across restarts, so clients reconnect to the same address, as they
    would after a real Redis restart or failover.
    """

    def __init__(
        self, binary: str, port: int, workdir: Path, *, password: str | None = None
    ) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.password = password  # the readiness probe authenticates with it
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *extra: str, config: Path | None = None) -> None:
        """Start the server and return once it answers PING (or fail after 10 s).

        ``config`` is a configuration file given before the options (a sentinel needs
        one it can rewrite).
        """
        assert not self.running, "already running"
        self._process = subprocess.Popen(
            [
                self.binary,
                *([str(config)] if config is not None else []),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        # Readiness of a child process: poll its port until it answers, bounded in time.
        while not _ping(self.port, self.password):
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would, and reap it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        """Kill the server and start a fresh, empty one on the same port."""
        self.kill()
        self.start()


def _start_on_free_port(binary: str, workdir: Path) -> RedisServer:
    last: Exception | None = None
    for _ in range(3):  # another process may grab the free port between probe and bind
        server = RedisServer(binary, _free_port(), workdir)
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
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, str, Any]]:
    """A redis-server that also serves TLS: ``(server, rediss_url, trustme_ca)``."""
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")
    binary = _redis_binary()
    workdir = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
    ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
    tls_port = _free_port()
    server = RedisServer(binary, _free_port(), workdir)
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

SENTINEL_SERVICE = "mymaster"
MASTER_PASSWORD = "master-secret"
SENTINEL_PASSWORD = "sentinel-secret"


class SentinelGroup:
    """A Sentinel-managed master/replica pair: ``master``, ``replica``, ``sentinels``."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.master = RedisServer(
            binary, _free_port(), workdir / "master", password=MASTER_PASSWORD
        )
        self.replica = RedisServer(
            binary, _free_port(), workdir / "replica", password=MASTER_PASSWORD
        )
        self.sentinels = [
            RedisServer(binary, _free_port(), workdir / f"sentinel-{i}", password=SENTINEL_PASSWORD)
            for i in range(3)
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``[(host, port), ...]`` of the sentinels."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica, *self.sentinels]

    def start(self) -> None:
        auth = ("--requirepass", MASTER_PASSWORD, "--masterauth", MASTER_PASSWORD)
        for server in self.servers:
            server.workdir.mkdir(parents=True, exist_ok=True)
        self.master.start(*auth)
        self.replica.start(*auth, "--replicaof", "127.0.0.1", str(self.master.port))
        for sentinel in self.sentinels:
            config = sentinel.workdir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 500\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 4000\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                f"sentinel auth-pass {SENTINEL_SERVICE} {MASTER_PASSWORD}\n"
                f"sentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"requirepass {SENTINEL_PASSWORD}\n"
            )
            sentinel.start("--sentinel", config=config)
        self._wait_until_monitored()

    def _wait_until_monitored(self, timeout: float = 30.0) -> None:
        """Poll until every sentinel knows the replica and the two other sentinels.

        Sentinels find each other through hello messages every 2 s; a failover before
        that cannot reach its quorum. Readiness of child processes: polled, bounded.
        """
        import redis

        deadline = time.monotonic() + timeout
        clients = [
            redis.Redis(port=s.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            for s in self.sentinels
        ]
        try:
            while True:
                try:
                    if all(
                        len(cast(list[Any], c.sentinel_slaves(SENTINEL_SERVICE))) == 1
                        and len(cast(list[Any], c.sentinel_sentinels(SENTINEL_SERVICE))) == 2
                        for c in clients
                    ):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinels did not discover each other in time")
                time.sleep(0.1)
        finally:
            for c in clients:
                c.close()

    def master_address(self) -> tuple[str, int]:
        """The master's address as the first answering sentinel reports it."""
        import redis

        for s in self.sentinels:
            if not s.running:
                continue
            client = redis.Redis(port=s.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            try:
                host, port = cast(
                    tuple[Any, Any], client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
                )
                return str(host, "ascii") if isinstance(host, bytes) else host, int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        """Kill every process of the group (by its pid) and reap it."""
        for server in self.servers:
            server.kill()


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, a replica and three sentinels of the test's own, killed at teardown."""
    group = SentinelGroup(_redis_binary(), tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()
