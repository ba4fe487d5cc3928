"""A three-process TCP cluster: one node SIGKILLed while writes go on, restarted; all converge."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TIMEOUT = 20

# One node: a TcpTransport and a Store, driven by line commands on stdin.
#   set KEY JSON | delete KEY | until JSON (wait until the snapshot equals it) | dump | quit
NODE_SCRIPT = """
import json
import logging
import sys

import anyio

from podshare import Store
from podshare.transport import TcpTransport

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


async def main(index: int, ports: list[int]) -> None:
    peers = [f"127.0.0.1:{port}" for i, port in enumerate(ports) if i != index]
    async with (
        TcpTransport(
            listen=f"127.0.0.1:{ports[index]}",
            peers=peers,
            node_id=f"tcp-{index}",
            reconnect_backoff=(0.02, 0.3),
        ) as transport,
        Store("procs", transport, node_id=f"node-{index}", hydrate_timeout=2.0) as store,
    ):
        print("ready", flush=True)
        stdin = anyio.wrap_file(sys.stdin)
        async for line in stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "set":
                key, _, value = argument.partition(" ")
                await store.set(key, json.loads(value))
            elif command == "delete":
                await store.delete(argument)
            elif command == "until":
                expected = json.loads(argument)
                async with store.watch() as events:
                    if store.snapshot() != expected:
                        async for _ in events:
                            if store.snapshot() == expected:
                                break
            elif command == "dump":
                print(json.dumps(store.snapshot(), sort_keys=True), flush=True)
                continue
            elif command == "quit":
                break
            print("ok", flush=True)


anyio.run(main, int(sys.argv[1]), [int(p) for p in sys.argv[3:]], backend=sys.argv[2])
"""


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Node:
    """One node process and a line-based conversation with it."""

    def __init__(self, process: anyio.abc.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def line(self) -> str:
        with anyio.fail_after(TIMEOUT):
            return (await self._stdout.receive_until(b"\n", 1 << 20)).decode()

    async def ask(self, command: str) -> str:
        await self._stdin.send(command.encode() + b"\n")
        return await self.line()


@asynccontextmanager
async def start_node(
    script: Path, index: int, ports: list[int], backend: str
) -> AsyncIterator[Node]:
    command = [sys.executable, str(script), str(index), backend, *map(str, ports)]
    log = script.parent / f"node-{index}.log"
    # stderr goes to a file: an unread pipe could fill up and stall the node.
    with log.open("ab") as stderr:
        process = await anyio.open_process(command, stderr=stderr)
    async with process:
        node = Node(process)
        try:
            assert await node.line() == "ready"
            yield node
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(5):
                    await process.wait()  # a node told to quit leaves gracefully
                if process.returncode is None:
                    process.kill()
                    await process.wait()


@pytest.mark.slow
async def test_three_processes_survive_a_sigkill_and_converge(
    tmp_path: Path, anyio_backend: tuple[str, dict[str, object]]
) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    ports = free_ports(3)
    backend = anyio_backend[0]  # the nodes run on the same backend as the test
    expected: dict[str, object] = {}
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(start_node(script, i, ports, backend)) for i in range(3)
        ]
        for i in range(10):
            assert await nodes[i % 3].ask(f"set k{i} {i}") == "ok"
            expected[f"k{i}"] = i

        victim = nodes[2]
        victim.process.kill()  # SIGKILL: no goodbye, sockets just vanish
        await victim.process.wait()

        for i in range(10, 30):  # writes go on without it
            assert await nodes[i % 2].ask(f"set k{i} {i}") == "ok"
            expected[f"k{i}"] = i
        assert await nodes[0].ask("delete k3") == "ok"
        del expected["k3"]

        nodes[2] = await stack.enter_async_context(start_node(script, 2, ports, backend))
        for i in range(30, 36):
            assert await nodes[i % 3].ask(f"set k{i} {i}") == "ok"
            expected[f"k{i}"] = i

        wanted = json.dumps(expected)
        for node in nodes:
            assert await node.ask(f"until {wanted}") == "ok"
        dumps = [json.loads(await node.ask("dump")) for node in nodes]
        assert dumps == [expected] * 3
        for node in nodes:
            await node._stdin.send(b"quit\n")


@pytest.fixture(autouse=True)
def show_node_logs(tmp_path: Path) -> Iterator[None]:
    """Print the nodes' stderr after the test (pytest shows it when the test fails)."""
    yield
    for log in sorted(tmp_path.glob("node-*.log")):
        print(f"--- {log.name}\n{log.read_text()}")
