"""``python -m podshare`` as a subprocess: every example of docs/cli.md, and the edge cases.

The ``console`` blocks of docs/cli.md are run as written, through bash, against a real
cluster the test holds open (two pods of the store ``app-config`` on Redis, on NATS, or
on a TCP mesh), and each command's exit status and output are compared with the page.
The page's addresses (``redis://localhost:6379/0``, ``10.0.0.5:7000``...) are replaced
by the test servers' before running, and the CLI's node id (``cli-{host}-{pid}``) by the
page's ``cli-laptop-4242`` in the output. In expected output, a line ``...`` stands for
any number of lines and a line ending in ``...`` for any line that starts with the rest.
Each CLI run is bounded by ``CLI_TIMEOUT``; every socket is on the loopback interface.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from podshare import EventKind, Store
from podshare.transport import NatsTransport, RedisTransport, TcpTransport
from tests._nats import NatsServer
from tests._support import RedisServer, eventually, free_port, read_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
CLI_PAGE = ROOT / "docs" / "cli.md"
CLI_TIMEOUT = 30
# The CLI waits this long for other replicas; ours answer at once, so it only bounds
# the "unknown store" case.
HYDRATE = "3"
SECRET = "test-secret-" + secrets.token_hex(8)


def _store_name() -> str:
    # A fresh name per test: the Redis server is shared by the whole session.
    return f"cli-{secrets.token_hex(4)}"


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m podshare ARGS`` without blocking the event loop (our store must
    keep answering the CLI while it runs)."""
    command = [sys.executable, "-m", "podshare", *args]
    with anyio.fail_after(CLI_TIMEOUT):
        result = await anyio.run_process(command, check=False, env=env)
    return subprocess.CompletedProcess(
        command, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def _details(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# --------------------------------------------------------------------------- the page


@dataclass
class Step:
    """One ``$ command`` of a console block, with the status and output the page shows."""

    line: int
    command: str
    status: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    """One console block of the page: its steps, run in order in one cluster."""

    line: int
    steps: list[Step]

    @property
    def cluster(self) -> str:
        """Which cluster the block's commands join (``"none"``: the demo, --version)."""
        text = "\n".join(step.command for step in self.steps)
        kinds = [kind for kind, marker in _CLUSTER_MARKERS.items() if marker in text]
        assert len(kinds) <= 1, f"docs/cli.md:{self.line} mixes clusters {kinds}"
        return kinds[0] if kinds else "none"


_CLUSTER_MARKERS = {
    "redis": "redis://localhost:6379/0",
    "nats": "nats://localhost:4222",
    "tcp": "10.0.0.5:7000",
}
_CONSOLE = re.compile(r"^```console[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_EXIT = re.compile(r"\s+#\s*exit\s+(?P<status>\d+)\s*$")
DOC_NODE_ID = "cli-laptop-4242"


def page_blocks() -> list[Block]:
    """The console blocks of docs/cli.md."""
    text = CLI_PAGE.read_text(encoding="utf-8")
    blocks = []
    for match in _CONSOLE.finditer(text):
        first = text.count("\n", 0, match.start("body")) + 1
        steps: list[Step] = []
        for offset, line in enumerate(match["body"].splitlines()):
            if line.startswith("$ "):
                command = line[2:]
                status = 0
                if found := _EXIT.search(command):
                    status = int(found["status"])
                    command = command[: found.start()]
                steps.append(Step(first + offset, command, status))
            else:
                assert steps, f"docs/cli.md:{first + offset}: output before any command"
                steps[-1].expected.append(line)
        blocks.append(Block(first, steps))
    return blocks


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` reads as ``expected`` (whitespace runs aside; ``...`` lines)."""
    want = [_squeeze(line) for line in expected]
    got = [_squeeze(line) for line in actual]

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        if j == len(got):
            return False
        same = got[j].startswith(want[i][:-3]) if want[i].endswith("...") else want[i] == got[j]
        return same and match(i + 1, j + 1)

    return match(0, 0)


# The page's `podshare` and `python` are this interpreter running the package under test.
_PRELUDE = (
    'podshare() { "$PODSHARE_PYTHON" -m podshare "$@"; }\npython() { "$PODSHARE_PYTHON" "$@"; }\n'
)


@dataclass
class DocCluster:
    """What the page's commands run against: replacements for its addresses, and what the
    pods do while a ``watch`` runs."""

    replace: dict[str, str]
    during_watch: Callable[[], Awaitable[None]] | None = None


async def run_step(step: Step, exports: list[str], cluster: DocCluster) -> tuple[int, list[str]]:
    """Run one step through bash (stdout and stderr merged, as a terminal shows them)."""
    script = "\n".join([*exports, step.command])
    for doc, real in cluster.replace.items():
        script = script.replace(doc, real)
    env = dict(os.environ, PODSHARE_PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env.pop("PODSHARE_SECRET", None)
    env.pop("PODSHARE_NODE_ID", None)
    output = ""
    with anyio.fail_after(CLI_TIMEOUT):
        async with await anyio.open_process(
            ["bash", "-c", _PRELUDE + "{\n" + script + "\n} 2>&1"], env=env
        ) as process:
            assert process.stdout is not None
            if " watch " in step.command:
                assert cluster.during_watch is not None, f"docs/cli.md:{step.line}"
                output = await read_until(process.stdout, "watching", timeout=CLI_TIMEOUT)
                await cluster.during_watch()
            output += "".join([chunk async for chunk in TextReceiveStream(process.stdout)])
            status = await process.wait()
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "node"
    output = re.sub(re.escape(f"cli-{host}-") + r"\d+", DOC_NODE_ID, output)
    for doc, real in cluster.replace.items():
        output = output.replace(real, doc)
    return status, output.splitlines()


async def run_block(block: Block, cluster: DocCluster) -> None:
    """Run a block's steps in order; fail on the first whose status or output differs."""
    exports: list[str] = []
    for step in block.steps:
        if step.command.startswith("export "):
            exports.append(step.command)
            assert not step.expected, f"docs/cli.md:{step.line}: an export prints nothing"
            continue
        status, actual = await run_step(step, exports, cluster)
        shown = "\n".join(actual)
        assert status == step.status, (
            f"docs/cli.md:{step.line}: `{step.command}` exited {status}, the page says "
            f"{step.status}; it printed:\n{shown}"
        )
        assert output_matches(step.expected, actual), (
            f"docs/cli.md:{step.line}: `{step.command}` printed:\n{shown}\n"
            "the page shows:\n" + "\n".join(step.expected)
        )


BLOCKS = page_blocks()
CLUSTERS = ("none", "redis", "nats", "tcp")


def test_every_console_block_runs_against_a_known_cluster() -> None:
    assert BLOCKS, "docs/cli.md has no console block"
    assert {block.cluster for block in BLOCKS} == set(CLUSTERS)
    for block in BLOCKS:
        assert block.steps, f"docs/cli.md:{block.line}: an empty console block"


def test_the_output_matcher() -> None:
    assert output_matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert output_matches(["a", "...", "d"], ["a", "d"])
    assert output_matches(["x  1", "err: ..."], ["x 1", "err: it broke"])
    assert not output_matches(["a", "d"], ["a", "b", "d"])
    assert not output_matches(["a"], ["a", "b"])
    assert not output_matches(["err: ..."], ["other"])


def _blocks_of(cluster: str) -> list[Block]:
    return [block for block in BLOCKS if block.cluster == cluster]


async def _pods(stack: AsyncExitStack, transports: list[Any]) -> list[Store[Any]]:
    """``pod-a`` and ``pod-b`` of ``app-config`` (``global`` set), on the given transports."""
    pods = [
        await stack.enter_async_context(Store[Any]("app-config", tr, node_id=name))
        for tr, name in zip(transports, ("pod-a", "pod-b"), strict=True)
    ]
    await pods[0].set("global", {"rate_limit": 1000})
    await eventually(lambda: all("global" in pod for pod in pods), stores=pods)
    return pods


def _watch_writes(pod: Store[Any]) -> Callable[[], Awaitable[None]]:
    async def writes() -> None:
        await pod.set("flag:dark-mode", True)
        await pod.delete("flag:dark-mode")

    return writes


@pytest.fixture
def anyio_backend() -> str:
    """redis-py and nats-py are asyncio-only, so the test's pods run on asyncio (the CLI
    on trio is tested over TCP below)."""
    return "asyncio"


async def test_page_examples_without_a_cluster() -> None:
    for block in _blocks_of("none"):
        await run_block(block, DocCluster(replace={}))


async def test_page_examples_through_redis(restartable_redis: RedisServer) -> None:
    # A server of this test's own: the pods persist app-config in it (Redis default).
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(RedisTransport(restartable_redis.url)) for _ in range(2)
        ]
        pods = await _pods(stack, transports)
        cluster = DocCluster(
            replace={"redis://localhost:6379/0": restartable_redis.url},
            during_watch=_watch_writes(pods[0]),
        )
        for block in _blocks_of("redis"):
            await run_block(block, cluster)
        # What the page's commands wrote reached the pods.
        await eventually(
            lambda: (
                pods[1].snapshot()
                == {
                    "global": {"rate_limit": 1000},
                    "motd": "back at five",
                    "banner": "Back at five!",
                }
            ),
            stores=pods,
        )


async def test_page_examples_through_nats(nats_server: NatsServer) -> None:
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(NatsTransport(nats_server.url)) for _ in range(2)
        ]
        pods = await _pods(stack, transports)
        cluster = DocCluster(replace={"nats://localhost:4222": nats_server.url})
        for block in _blocks_of("nats"):
            await run_block(block, cluster)
        await eventually(lambda: pods[1].get("maintenance") is False, stores=pods)


async def test_page_examples_through_a_tcp_mesh(tmp_path: Path) -> None:
    secret_file = tmp_path / "podshare-secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")  # as `echo` would write it
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(TcpTransport(listen="127.0.0.1:0", secret=SECRET))
        b = await stack.enter_async_context(
            TcpTransport(listen="127.0.0.1:0", peers=[a.address], secret=SECRET)
        )
        with anyio.fail_after(10):
            await b.wait_connected(1)
        await _pods(stack, [a, b])
        cluster = DocCluster(
            replace={
                "10.0.0.5:7000": a.address,
                "10.0.0.6:7000": b.address,
                "/run/secrets/podshare": str(secret_file),
            }
        )
        for block in _blocks_of("tcp"):
            await run_block(block, cluster)


# --------------------------------------------------------------------------- edge cases


@asynccontextmanager
async def redis_store(url: str) -> AsyncIterator[Store[Any]]:
    """A store of a fresh name on the Redis the CLI will join, held by the test."""
    async with (
        RedisTransport(url) as transport,
        Store[Any](_store_name(), transport, node_id="test-node", hydrate_timeout=1) as store,
    ):
        yield store


def _redis_args(server: RedisServer, *args: str) -> tuple[str, ...]:
    return ("--redis", server.url, "--hydrate-timeout", HYDRATE, *args)


async def test_invalid_json_stores_nothing(redis_server: RedisServer) -> None:
    async with redis_store(redis_server.url) as store:
        await store.set("kept", 1)
        for bad in ('{"a":', "dark", "{'single': 1}", ""):
            result = await run_cli(*_redis_args(redis_server, "set", store.name, "k", bad))
            assert result.returncode == 2, _details(result)
            assert "not valid JSON" in result.stderr
            assert "--raw" in result.stderr
            assert result.stdout == ""
        # A write the CLI did make, after them, arrives; the refused ones never did.
        result = await run_cli(*_redis_args(redis_server, "set", store.name, "k", "--raw", "{"))
        assert result.returncode == 0, _details(result)
        await eventually(lambda: store.get("k") == "{", stores=[store])
        assert store.stats().writes_applied == 1


async def test_json_flag_anywhere_and_missing_key_records(redis_server: RedisServer) -> None:
    async with redis_store(redis_server.url) as store:
        await store.set("present", [1, 2])
        for args in (
            ("--json", *_redis_args(redis_server, "get", store.name, "present")),
            ("get", store.name, "present", *_redis_args(redis_server, "--json")),
            ("get", "--json", store.name, "present", *_redis_args(redis_server)),
        ):
            result = await run_cli(*args)
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == {"key": "present", "found": True, "value": [1, 2]}
        for command, record in (
            ("get", {"key": "absent", "found": False}),
            ("delete", {"key": "absent", "found": False, "deleted": False}),
        ):
            text = await run_cli(*_redis_args(redis_server, command, store.name, "absent"))
            as_json = await run_cli(
                *_redis_args(redis_server, command, store.name, "absent", "--json")
            )
            assert text.returncode == as_json.returncode == 1, _details(text) + _details(as_json)
            line = f"podshare: no key 'absent' in store {store.name!r}\n"
            assert text.stderr == as_json.stderr == line
            assert text.stdout == ""
            assert json.loads(as_json.stdout) == record
        assert store.stats().tombstones == 0  # deleting a missing key wrote nothing


async def test_stats_name_the_cli_replica(redis_server: RedisServer) -> None:
    async with redis_store(redis_server.url) as store:
        await store.set_many({f"k{i}": i for i in range(5)})
        result = await run_cli(
            *_redis_args(redis_server, "stats", store.name, "--json", "--node-id", "inspector")
        )
        assert result.returncode == 0, _details(result)
        record = json.loads(result.stdout)
        assert record["node_id"] == "inspector"
        assert record["store"] == store.name
        assert record["stats"]["keys"] == 5  # the CLI hydrated our five keys
        assert record["stats"]["messages_received"] > 0


async def test_the_cli_never_takes_the_pods_node_id(redis_server: RedisServer) -> None:
    async with redis_store(redis_server.url) as store:
        env = dict(os.environ, PODSHARE_NODE_ID="test-node")  # as inside the pod itself
        result = await run_cli(*_redis_args(redis_server, "--json", "members", store.name), env=env)
        assert result.returncode == 0, _details(result)
        members = json.loads(result.stdout)
        assert "test-node" in members
        assert len(members) == 2
        assert next(m for m in members if m != "test-node").startswith("cli-")


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
async def test_watch_streams_events(redis_server: RedisServer, as_json: bool) -> None:
    async with redis_store(redis_server.url) as store:
        args = ["--redis", redis_server.url, "--hydrate-timeout", HYDRATE]
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


async def test_unknown_store_exits_3(redis_server: RedisServer) -> None:
    url = redis_server.url
    result = await run_cli("--redis", url, "--hydrate-timeout", "0.5", "keys", _store_name())
    assert result.returncode == 3, _details(result)
    assert "no other replica" in result.stderr
    assert "--allow-empty" in result.stderr

    result = await run_cli(
        "keys", _store_name(), "--redis", url, "--hydrate-timeout", "0.5", "--allow-empty"
    )
    assert result.returncode == 0, _details(result)
    assert result.stdout == ""


def _subprocess_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podshare", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_usage_error_without_a_cluster() -> None:
    result = _subprocess_cli("keys", "some-store")
    assert result.returncode == 2, _details(result)
    assert "--redis" in result.stderr


def test_unreachable_redis_names_host_port_and_cause() -> None:
    port = free_port()  # nothing listens there
    result = _subprocess_cli("--redis", f"redis://127.0.0.1:{port}/0", "keys", "some-store")
    assert result.returncode == 2, _details(result)
    assert f"cannot connect to Redis at 127.0.0.1:{port}: Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- TCP


@asynccontextmanager
async def tcp_node(name: str) -> AsyncIterator[tuple[str, Store[Any]]]:
    """A TCP node the CLI can dial: ``(address, store)``."""
    async with (
        TcpTransport(listen="127.0.0.1:0", secret=SECRET) as transport,
        Store[Any](name, transport, node_id="tcp-node", hydrate_timeout=1) as store,
    ):
        yield transport.address, store


@pytest.fixture
def secret_env() -> dict[str, str]:
    """The environment of a CLI that takes the mesh's secret from ``$PODSHARE_SECRET``."""
    return dict(os.environ, PODSHARE_SECRET=SECRET)


class TestTcp:
    """The CLI joins a TCP mesh through one node held by the test (asyncio and trio)."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """The test's node runs on both backends."""
        backend: str = request.param
        return backend

    async def test_secret_from_the_environment(self, secret_env: dict[str, str]) -> None:
        async with tcp_node(_store_name()) as (address, store):
            await store.set_many({"user:1": {"pod": "a"}, "user:2": {"pod": "b"}, "x": 0})
            result = await run_cli(
                "--tcp", address, "keys", store.name, "--prefix", "user:", "--json", env=secret_env
            )
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == ["user:1", "user:2"]
            result = await run_cli(
                "set", store.name, "user:3", '{"pod": "c"}', "--tcp", address, env=secret_env
            )
            assert result.returncode == 0, _details(result)
            await eventually(lambda: store.get("user:3") == {"pod": "c"}, stores=[store])

    async def test_cli_on_trio(self, secret_env: dict[str, str]) -> None:
        async with tcp_node(_store_name()) as (address, store):
            await store.set("k", [1, 2, 3])
            result = await run_cli(
                "--tcp",
                address,
                "--backend",
                "trio",
                "--json",
                "get",
                store.name,
                "k",
                env=secret_env,
            )
            assert result.returncode == 0, _details(result)
            assert json.loads(result.stdout) == {"key": "k", "found": True, "value": [1, 2, 3]}

    async def test_secret_sources(self, tmp_path: Path, secret_env: dict[str, str]) -> None:
        empty = tmp_path / "empty"
        empty.write_text("\n", encoding="utf-8")
        async with tcp_node(_store_name()) as (address, store):
            await store.set("k", 1)
            base = ("--tcp", address, "--hydrate-timeout", "1", "keys", store.name)
            # --secret beats the environment: a wrong one is refused.
            result = await run_cli(*base, "--secret", "wrong", env=secret_env)
            assert result.returncode == 2, _details(result)
            assert "cannot connect" in result.stderr
            assert result.stdout == ""
            result = await run_cli(*base, "--secret-file", str(empty))
            assert result.returncode == 2, _details(result)
            assert "is empty" in result.stderr
            result = await run_cli(*base, "--secret-file", str(tmp_path / "none"))
            assert result.returncode == 2, _details(result)
            assert "cannot read --secret-file" in result.stderr
            result = await run_cli(*base, "--secret", "a", "--secret-file", str(empty))
            assert result.returncode == 2, _details(result)
            assert "not both" in result.stderr

    async def test_unreachable_peer(self) -> None:
        address = f"127.0.0.1:{free_port()}"  # nothing listens there
        result = await run_cli(
            "--tcp", address, "--secret", SECRET, "--hydrate-timeout", "0.5", "keys", "some-store"
        )
        assert result.returncode == 2, _details(result)
        assert f"cannot connect to {address}" in result.stderr
        assert "ConnectionRefusedError" in result.stderr  # the cause, from the dialer
        assert "Traceback" not in result.stderr


def test_page_commands_quote_cleanly() -> None:
    # Every command on the page is one shell line bash can split (no unbalanced quote).
    for block in BLOCKS:
        for step in block.steps:
            assert shlex.split(step.command), f"docs/cli.md:{step.line}"
