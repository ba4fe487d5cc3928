"""A ``nats-server`` child process for the NATS tests: started on a loopback port, killed by pid.

The fixtures that start servers live in ``tests/integration/conftest.py``; this module
only knows how to run one (alone, with JetStream, or as a member of a cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests._support import free_port

__all__ = ["NatsCluster", "NatsServer", "nats_binary"]


def nats_binary() -> str:
    """The ``nats-server`` on PATH; a skip (a failure under ``CI=true``) without one."""
    binary = shutil.which("nats-server")
    if binary is None:
        reason = "nats-server is not on PATH (install the nats-server package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must run the NATS integration tests")
        pytest.skip(reason)
    return binary


def _answers_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """One nats-server on a fixed loopback port, which a test can kill and restart.

    Its JetStream store (``-sd``) lives in ``workdir`` and survives restarts, as a real
    server's disk would. ``url`` stays valid across restarts.
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        port: int | None = None,
        jetstream: bool = True,
        name: str = "podshare-test",
        extra: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port if port is not None else free_port()
        self.jetstream = jetstream
        self.name = name
        self.extra = list(extra)
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    def start(self) -> None:
        """Start the server; return once it greets clients (or fail after 10 s)."""
        assert not self.running, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "--server_name",
            self.name,
            *(["-js", "-sd", str(self.workdir / "jetstream")] if self.jetstream else []),
            *self.extra,
        ]
        # A file, not a pipe: a chatty server must never block on a full pipe.
        with (self.workdir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        # Readiness of a child process: poll its port until it greets, bounded in time.
        while not _answers_info(self.port):
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._process.returncode}: {self.log()[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"nats-server did not answer on port {self.port}")
            time.sleep(0.01)

    def log(self) -> str:
        """What the server printed so far."""
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would, and reap it."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        """Kill the server and start it again on the same port, with the same store."""
        self.kill()
        self.start()


class NatsCluster:
    """Three nats-servers routed to each other (core NATS), each with a monitoring port."""

    def __init__(self, binary: str, workdir: Path, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.servers = []
        for i in range(size):
            routes = ",".join(
                f"nats://127.0.0.1:{port}" for j, port in enumerate(cluster_ports) if j != i
            )
            self.servers.append(
                NatsServer(
                    binary,
                    workdir / f"s{i}",
                    jetstream=False,
                    name=f"s{i}",
                    extra=[
                        "--cluster_name",
                        "podshare-test",
                        "--cluster",
                        f"nats://127.0.0.1:{cluster_ports[i]}",
                        "--routes",
                        routes,
                        "-m",
                        str(self.monitor_ports[i]),
                    ],
                )
            )

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self.wait_routed()

    def routes(self, index: int) -> int:
        """How many routes server ``index`` has (its monitoring endpoint says)."""
        url = f"http://127.0.0.1:{self.monitor_ports[index]}/routez"
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(json.load(response)["num_routes"])

    def wait_routed(self, timeout: float = 15.0) -> None:
        """Poll until every running server is routed to every other running one."""
        deadline = time.monotonic() + timeout
        running = [i for i, s in enumerate(self.servers) if s.running]
        # Readiness of child processes: polled through their monitoring port, bounded.
        while True:
            try:
                if all(self.routes(i) >= len(running) - 1 for i in running):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster did not form its routes in time")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.kill()
