"""``python -m podshare`` as a subprocess: the demo, and the CLI against live clusters.

The test process holds a store open (on Redis or on a TCP node) and the CLI joins it as
one more replica, so every command is checked against what the test wrote or reads back.
Each CLI run is bounded by ``CLI_TIMEOUT``; every socket is on the loopback interface.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from podshare import EventKind, Store
from podshare.transport import RedisTransport, TcpTransport
from tests._support import RedisServer, eventually, free_port, read_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CLI_TIMEOUT = 30
# The CLI waits this long for other replicas; ours answer at once, so it only bounds
# the "unknown store" case.
HYDRATE = "3"


def _store_name() -> str:
    # A fresh name per test: the Redis server is shared by the whole session.
    return f"cli-{secrets.token_hex(4)}"


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m podshare ARGS`` without blocking the event loop (our store must
    keep answering the CLI while it runs)."""
    command = [sys.executable, "-m", "podshare", *args]
    with anyio.fail_after(CLI_TIMEOUT):
        result = await anyio.run_process(command, check=False)
    return subprocess.CompletedProcess(
        command, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def _details(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_demo_converges() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podshare", "demo"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, _details(result)
    lines = result.stdout.splitlines()
    for pod in ("pod-a", "pod-b", "pod-c"):
        assert f"{pod}  reads page = 6" in lines, _details(result)
    assert "converged: pod-a={}, pod-b={}, pod-c={}" in lines, _details(result)


def test_usage_error_without_a_cluster() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "podshare", "keys", "some-store"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, _details(result)
    assert "--redis" in result.stderr


# --------------------------------------------------------------------------- Redis


class TestRedis:
    """The CLI against a real redis-server, with a store held open by the test."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        """redis-py is asyncio-only, so the test's Redis-backed store runs on asyncio."""
        return "asyncio"

    @pytest.fixture
    async def cluster(self, redis_server: RedisServer) -> AsyncIterator[tuple[str, Store[Any]]]:
        """``(url, store)``: a store of a fresh name on the Redis the CLI will join."""
        async with (
            RedisTransport(redis_server.url) as transport,
            Store[Any](_store_name(), transport, node_id="test-node", hydrate_timeout=1) as store,
        ):
            yield redis_server.url, store

    async def cli(self, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return await run_cli("--redis", url, "--hydrate-timeout", HYDRATE, *args)

    async def test_get(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        await store.set("greeting", {"text": "hello", "n": 3})
        result = await self.cli(url, "get", store.name, "greeting")
        assert result.returncode == 0, _details(result)
        assert json.loads(result.stdout) == {"text": "hello", "n": 3}

        result = await self.cli(url, "--json", "get", store.name, "greeting")
        assert result.returncode == 0, _details(result)
        assert json.loads(result.stdout) == {"key": "greeting", "value": {"text": "hello", "n": 3}}

    async def test_get_missing_key_exits_1(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        await store.set("present", 1)
        result = await self.cli(url, "get", store.name, "absent")
        assert result.returncode == 1, _details(result)
        assert "absent" in result.stderr

        result = await self.cli(url, "--json", "get", store.name, "absent")
        assert result.returncode == 1, _details(result)
        assert json.loads(result.stdout) == {"key": "absent", "found": False}

    async def test_set_reaches_the_cluster(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        result = await self.cli(url, "set", store.name, "limits", '{"rate": 1000}')
        assert result.returncode == 0, _details(result)
        assert result.stdout.strip() == "OK"
        # The CLI's write was published before it exited; our replica applies it soon.
        await eventually(lambda: store.get("limits") == {"rate": 1000}, stores=[store])

        result = await self.cli(url, "--json", "set", store.name, "motd", "maintenance")
        assert result.returncode == 0, _details(result)
        assert json.loads(result.stdout) == {"key": "motd", "ok": True}
        await eventually(lambda: store.get("motd") == "maintenance", stores=[store])  # a word

    async def test_delete(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        await store.set_many({"doomed": 1, "kept": 2})
        result = await self.cli(url, "--json", "delete", store.name, "doomed")
        assert result.returncode == 0, _details(result)
        assert json.loads(result.stdout) == {"key": "doomed", "deleted": True}
        await eventually(lambda: "doomed" not in store, stores=[store])
        assert store.get("kept") == 2

        result = await self.cli(url, "delete", store.name, "never-there")
        assert result.returncode == 0, _details(result)
        assert "did not exist" in result.stdout

    async def test_keys(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        await store.set_many({"ws:alice": 1, "ws:bob": 2, "other": 3})
        result = await self.cli(url, "keys", store.name)
        assert result.returncode == 0, _details(result)
        assert result.stdout.splitlines() == ["other", "ws:alice", "ws:bob"]

        result = await self.cli(url, "--json", "keys", store.name, "--prefix", "ws:")
        assert result.returncode == 0, _details(result)
        assert json.loads(result.stdout) == ["ws:alice", "ws:bob"]

    async def test_stats(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        await store.set_many({f"k{i}": i for i in range(5)})
        result = await self.cli(url, "--json", "stats", store.name)
        assert result.returncode == 0, _details(result)
        stats = json.loads(result.stdout)
        assert stats["keys"] == 5  # the CLI hydrated our five keys
        assert stats["messages_received"] > 0

        result = await self.cli(url, "stats", store.name)
        assert result.returncode == 0, _details(result)
        rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
        assert rows["keys"] == "5"

    async def test_members(self, cluster: tuple[str, Store[Any]]) -> None:
        url, store = cluster
        result = await self.cli(url, "--json", "members", store.name)
        assert result.returncode == 0, _details(result)
        members = json.loads(result.stdout)
        assert "test-node" in members
        assert len(members) == 2  # our node and the CLI itself

        result = await self.cli(url, "members", store.name)
        assert result.returncode == 0, _details(result)
        lines = result.stdout.splitlines()
        assert "test-node" in lines
        assert sum(line.endswith("(this CLI)") for line in lines) == 1

    @pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
    async def test_watch_streams_events(
        self, cluster: tuple[str, Store[Any]], as_json: bool
    ) -> None:
        url, store = cluster
        args = ["--redis", url, "--hydrate-timeout", HYDRATE]
        if as_json:
            args.append("--json")
        args += ["watch", store.name, "--prefix", "job:", "--count", "3"]
        with anyio.fail_after(CLI_TIMEOUT):
            async with await anyio.open_process([sys.executable, "-m", "podshare", *args]) as cli:
                assert cli.stderr is not None
                await read_until(cli.stderr, "watching", timeout=CLI_TIMEOUT)  # watcher open
                await store.set("job:1", {"state": "queued"})
                await store.set("ignored", "not under the prefix")
                await store.set("job:1", {"state": "done"})
                await store.delete("job:1")
                assert cli.stdout is not None
                output = "".join([chunk async for chunk in TextReceiveStream(cli.stdout)])
                assert await cli.wait() == 0, output
        lines = output.splitlines()
        assert len(lines) == 3, output  # --count 3 stops after three events
        if as_json:
            events = [json.loads(line) for line in lines]
            assert [(e["kind"], e["key"], e["value"]) for e in events] == [
                (EventKind.SET.value, "job:1", {"state": "queued"}),
                (EventKind.SET.value, "job:1", {"state": "done"}),
                (EventKind.DELETE.value, "job:1", None),
            ]
            assert {e["origin"] for e in events} == {"test-node"}
        else:
            words = [" ".join(line.split()) for line in lines]  # column widths aside
            assert words == [
                'set job:1 = {"state": "queued"} (from test-node)',
                'set job:1 = {"state": "done"} (from test-node)',
                "delete job:1 (from test-node)",
            ]

    async def test_unknown_store_exits_3(self, cluster: tuple[str, Store[Any]]) -> None:
        url, _ = cluster
        result = await run_cli("--redis", url, "--hydrate-timeout", "0.5", "keys", _store_name())
        assert result.returncode == 3, _details(result)
        assert "no other replica" in result.stderr
        assert "--allow-empty" in result.stderr

        result = await run_cli(
            "--redis", url, "--hydrate-timeout", "0.5", "--allow-empty", "keys", _store_name()
        )
        assert result.returncode == 0, _details(result)
        assert result.stdout == ""


def test_unreachable_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "podshare", "--redis", url, "keys", "some-store"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, _details(result)
    assert "cannot connect" in result.stderr
    assert "127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- TCP


SECRET = "test-secret-" + secrets.token_hex(8)


@asynccontextmanager
async def tcp_node(name: str) -> AsyncIterator[tuple[str, Store[Any]]]:
    """A TCP node the CLI can dial: ``(address, store)``."""
    async with (
        TcpTransport(listen="127.0.0.1:0", secret=SECRET) as transport,
        Store[Any](name, transport, node_id="tcp-node", hydrate_timeout=1) as store,
    ):
        yield transport.address, store


class TestTcp:
    """The CLI joins a TCP mesh through one node held by the test (asyncio and trio)."""

    async def cli(self, address: str, *args: str) -> subprocess.CompletedProcess[str]:
        return await run_cli(
            "--tcp", address, "--secret", SECRET, "--hydrate-timeout", HYDRATE, *args
        )

    async def test_get_set_keys(self) -> None:
        async with tcp_node(_store_name()) as (address, store):
            await store.set_many({"user:1": {"pod": "a"}, "user:2": {"pod": "b"}, "x": 0})

            result = await self.cli(address, "get", store.name, "user:1")
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == {"pod": "a"}

            result = await self.cli(address, "--json", "keys", store.name, "--prefix", "user:")
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == ["user:1", "user:2"]

            result = await self.cli(address, "set", store.name, "user:3", '{"pod": "c"}')
            assert result.returncode == 0, _details(result)
            await eventually(lambda: store.get("user:3") == {"pod": "c"}, stores=[store])

    async def test_cli_on_trio(self) -> None:
        async with tcp_node(_store_name()) as (address, store):
            await store.set("k", [1, 2, 3])
            result = await self.cli(address, "--backend", "trio", "--json", "get", store.name, "k")
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == {"key": "k", "value": [1, 2, 3]}

    async def test_wrong_secret_is_refused(self) -> None:
        async with tcp_node(_store_name()) as (address, store):
            await store.set("k", 1)
            result = await run_cli(
                "--tcp",
                address,
                "--secret",
                "wrong",
                "--hydrate-timeout",
                "0.5",
                "keys",
                store.name,
            )
            assert result.returncode == 2, _details(result)
            assert "cannot connect" in result.stderr
            assert result.stdout == ""

    async def test_unreachable_peer(self) -> None:
        result = await run_cli(
            "--tcp",
            f"127.0.0.1:{free_port()}",  # nothing listens there
            "--secret",
            SECRET,
            "--hydrate-timeout",
            "0.5",
            "keys",
            "some-store",
        )
        assert result.returncode == 2, _details(result)
        assert "cannot connect to 127.0.0.1" in result.stderr
        assert "Traceback" not in result.stderr
