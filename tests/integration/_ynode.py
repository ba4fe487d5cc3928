"""Helpers for the Yjs interop tests: server pods, and real Node.js y-websocket clients.

The Node packages (yjs, y-websocket, ws) are pinned by ``tests/integration/ynode`` and
installed by ``scripts/npm-test-deps`` into ``.cache/npm-test-deps`` (or
``$PODSHARE_NPM_CACHE``). Without node the tests skip, except under ``CI=true``, where
they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).resolve().parent / "ynode" / "client.cjs"
TIMEOUT = 30


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if _ci():
        pytest.fail(f"{reason}; CI must run the Yjs interop tests")
    pytest.skip(reason)


def node_modules() -> tuple[str, Path]:
    """``(node binary, folder holding node_modules)``, installing the packages if needed."""
    node = shutil.which("node")
    if node is None or shutil.which("npm") is None:
        _unavailable("node and npm are not on PATH (the Yjs interop tests need them)")
        raise AssertionError("unreachable")
    cache = Path(os.environ.get("PODSHARE_NPM_CACHE", ROOT / ".cache" / "npm-test-deps"))
    if not (cache / "node_modules" / "y-websocket" / "package.json").is_file():
        result = subprocess.run(
            [str(ROOT / "scripts" / "npm-test-deps")],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            _unavailable(f"scripts/npm-test-deps failed: {result.stderr.strip()[-500:]}")
    return node, cache


class NodeClient:
    """One Node.js process running ``client.cjs``: requests by id, events by name."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self._process = process
        self._next = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._changed = anyio.Event()
        self.stderr = b""

    async def _read(self) -> None:
        assert self._process.stdout is not None
        buffer = b""
        async for chunk in self._process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "id" in message:
                    self._replies[message["id"]] = message
                else:
                    self._events.append(message)
            self._changed.set()
            self._changed = anyio.Event()

    async def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        async for chunk in self._process.stderr:
            self.stderr += chunk

    async def _wait(self, found: Callable[[], dict[str, Any] | None], what: str) -> dict[str, Any]:
        with anyio.fail_after(TIMEOUT):
            while True:
                result = found()
                if result is not None:
                    return result
                if self._process.returncode is not None:
                    raise AssertionError(f"node exited while waiting for {what}: {self.stderr!r}")
                await self._changed.wait()

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one command in the client; return its reply."""
        self._next += 1
        ident = self._next
        assert self._process.stdin is not None
        await self._process.stdin.send(
            (json.dumps({"id": ident, "op": op, **args}) + "\n").encode()
        )
        reply = await self._wait(lambda: self._replies.pop(ident, None), op)
        if "error" in reply:
            raise AssertionError(f"node client {op} failed: {reply['error']}")
        return reply

    async def event(self, name: str) -> dict[str, Any]:
        """Wait for the first event called ``name`` (it stays available)."""
        return await self._wait(
            lambda: next((e for e in self._events if e.get("event") == name), None), name
        )


@asynccontextmanager
async def node_client(url: str, room: str) -> AsyncIterator[NodeClient]:
    """A Node.js y-websocket client of ``room`` at ``url``, stopped on exit."""
    node, modules = node_modules()
    process = await anyio.open_process([node, str(CLIENT), str(modules), url, room])
    client = NodeClient(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._read)
            tg.start_soon(client._read_stderr)
            try:
                yield client
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
            await process.aclose()


@dataclass
class Pod:
    """A pycrdt-websocket server bridged by podshare, listening on a loopback port."""

    server: Any
    url: str


@asynccontextmanager
async def pod(
    transport: AbstractAsyncContextManager[Any], name: str, **room_options: Any
) -> AsyncIterator[Pod]:
    """A pod: ``transport``, a YjsWebsocketServer on it and a websocket listener."""
    from podshare.yjs.server import YjsWebsocketServer, serve_websockets

    room_options.setdefault("sync_timeout", 5.0)
    room_options.setdefault("resync_interval", 2.0)
    async with (
        transport as tr,
        YjsWebsocketServer(
            tr,
            node_id=name,
            room_options=room_options,
            presence_options={"hydrate_timeout": 0.5, "heartbeat_interval": 0.2, "down_after": 1.0},
        ) as server,
        serve_websockets(server, "127.0.0.1", 0) as ws,
    ):
        port = ws.sockets[0].getsockname()[1]
        yield Pod(server, f"ws://127.0.0.1:{port}")
