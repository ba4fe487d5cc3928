"""A multi-server collaborative editor backend: Yjs rooms shared by every pod.

Each pod runs a pycrdt-websocket server (podshare.yjs.server.YjsWebsocketServer) on the
same podshare transport; y-websocket clients connect to any pod, and every pod serving a
room keeps it in sync with the others: documents, cursors and presence.

    python examples/collab_server.py
        a demo: two pods over the TCP mesh on loopback, one editor on each, typing

    python examples/collab_server.py serve --port 1234 --redis redis://localhost:6379/0
    python examples/collab_server.py serve --port 1235 --listen 127.0.0.1:7001 \\
        --peer 127.0.0.1:7000
        a real pod, over Redis or over the TCP mesh (start several)

A browser (or Node.js) client needs only y-websocket:

    const provider = new WebsocketProvider('ws://any-pod:1234', 'my-room', ydoc)

The room is the URL path (without its query string); any pod serves any room.
Needs: pip install "podshare[yjs-server,redis]" (redis only for --redis).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

try:
    import pycrdt
    from websockets.asyncio.client import connect
except ImportError as exc:
    raise SystemExit(f"{exc}: this example needs: pip install 'podshare[yjs-server]'") from exc

from podshare.transport import TcpTransport, Transport
from podshare.yjs.server import WebsocketsChannel, YjsWebsocketServer, serve_websockets


@asynccontextmanager
async def pod(transport: Transport, port: int = 0) -> AsyncIterator[str]:
    """One server pod on ``transport``; yields its websocket URL."""
    async with (
        YjsWebsocketServer(
            transport,
            # Rooms could be loaded from and saved to a podshare.yjs.persistence
            # backend here: room_options={"persistence": ...}.
            room_options={"sync_timeout": 5.0, "resync_interval": 30.0},
        ) as server,
        serve_websockets(server, "127.0.0.1", port) as ws,
    ):
        yield f"ws://127.0.0.1:{ws.sockets[0].getsockname()[1]}"


@asynccontextmanager
async def editor(url: str, room: str) -> AsyncIterator[pycrdt.Doc[Any]]:
    """A Python editor client (pycrdt's Provider over a websocket): what a browser does."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    async with (
        connect(f"{url}/{room}") as connection,
        pycrdt.Provider(doc, WebsocketsChannel(connection)) as provider,
    ):
        with anyio.fail_after(10):
            await provider.synced.wait()
        yield doc


async def until(doc: pycrdt.Doc[Any], expected: str) -> None:
    with anyio.fail_after(10):
        async with doc.events() as events:
            if str(doc.get("text", type=pycrdt.Text)) == expected:
                return
            async for _ in events:
                if str(doc.get("text", type=pycrdt.Text)) == expected:
                    return


async def demo() -> None:
    async with (
        TcpTransport(node_id="pod-1") as mesh_1,
        TcpTransport(node_id="pod-2", peers=[mesh_1.address]) as mesh_2,
    ):
        with anyio.fail_after(10):
            await mesh_1.wait_connected(1)
        async with pod(mesh_1) as url_1, pod(mesh_2) as url_2:
            print(f"pod 1 serves {url_1}, pod 2 serves {url_2}")
            async with editor(url_1, "notes") as ada, editor(url_2, "notes") as grace:
                ada.get("text", type=pycrdt.Text).insert(0, "Hello from pod 1. ")
                await until(grace, "Hello from pod 1. ")
                text = grace.get("text", type=pycrdt.Text)
                text.insert(len(str(text)), "Hi from pod 2.")
                expected = "Hello from pod 1. Hi from pod 2."
                await until(ada, expected)
                seen = {str(d.get("text", type=pycrdt.Text)) for d in (ada, grace)}
                print(f"editor on pod 1 sees: {str(ada.get('text', type=pycrdt.Text))!r}")
                print(f"the editors on both pods agree: {seen == {expected}}")


async def serve(args: argparse.Namespace) -> None:
    transport: Any
    if args.redis:
        from podshare.transport import RedisTransport

        transport = RedisTransport(args.redis)
    else:
        transport = TcpTransport(listen=args.listen, peers=args.peer)
    async with transport as tr, pod(tr, args.port) as url:
        print(f"serving Yjs rooms on {url} (ctrl-c to stop)")
        await anyio.sleep_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run one pod")
    run.add_argument("--port", type=int, default=1234)
    run.add_argument("--redis", help="a Redis URL (else the TCP mesh)")
    run.add_argument("--listen", default="127.0.0.1:7000", help="TCP mesh address")
    run.add_argument("--peer", action="append", default=[], help="TCP mesh peers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.command == "serve":
        anyio.run(serve, args, backend="asyncio")
    else:
        anyio.run(demo, backend="asyncio")  # the websockets library is asyncio-only


if __name__ == "__main__":
    main()
