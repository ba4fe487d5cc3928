"""Example web apps run as real server processes on inherited loopback sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class ServerProcess:
    """One app process serving a listening socket the test made (no port race)."""

    def __init__(self, script: str, args: Sequence[str], env: dict[str, str]) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        fd = self._sock.fileno()
        # A file, not a pipe: a chatty server must never block on a full pipe.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args, "--fd", str(fd)],
            env={**os.environ, **env},
            pass_fds=(fd,),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=EXAMPLES.parent,
        )
        self._sock.close()  # the child holds its own copy

    def stop(self, timeout: float = 15.0) -> str:
        """SIGTERM, wait (SIGKILL after ``timeout``); return everything it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)
        if self._log.closed:
            return ""
        self._log.seek(0)
        out = self._log.read().decode(errors="replace")
        self._log.close()
        return out

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An HTTP request; JSON in and out. Returns (status, decoded body or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll GET /ready until it answers 200 (the store hydrated), bounded in time."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.stop()}")
            try:
                return self.request("GET", "/ready")[0] == 200
            except OSError:
                return False

        poll(ready, timeout)


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition another process makes true, bounded in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
