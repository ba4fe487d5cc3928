"""Integration fixtures: real servers started on free loopback ports, stopped at teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server child process on a fixed loopback port, which tests can kill and restart.

    ``url`` stays valid across restarts, so clients reconnect to the same address, as they
    would after a real Redis restart or failover.
    """

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *extra: str) -> None:
        """Start the server and return once it answers PING (or fail after 10 s)."""
        assert not self.running, "already running"
        self._process = subprocess.Popen(
            [
                self.binary,
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
        while not _ping(self.port):
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
