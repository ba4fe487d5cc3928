"""FastAPI + podshare: one store and one callreply endpoint per process, opened in the lifespan.

Shows the web-service recipe of ``docs/web.md``:

- the lifespan opens one transport, one typed ``Store[Flag]`` (a pydantic model) and one
  callreply ``Endpoint`` per process, and closes them at shutdown;
- handlers get the store through a typed dependency (``FlagStore``);
- ``GET /ready`` is the readiness probe: 200 once the store is ``synced``;
- the node id comes from the pod name (``PODSHARE_NODE_ID``, else ``POD_NAME`` plus the
  pid, so several workers of one pod stay distinct);
- ``GET``/``PUT /flags/{key}`` read (a local lookup) and write a flag;
- ``/ws/{user}`` is a websocket registered with callreply as ``user:{user}``, and
  ``POST /push/{user}`` on *any* process pushes a message to it: the call is forwarded to
  the process holding the socket.

Two ways to run it:

- ``python examples/fastapi_app.py`` runs a self-contained demo: two uvicorn servers
  (pod-a and pod-b) in this process over an in-memory network. A flag PUT on pod-a is
  read from pod-b, and a push POSTed to pod-a reaches a websocket connected to pod-b.
- ``python examples/fastapi_app.py serve --port 8001`` serves one process over Redis
  (``PODSHARE_REDIS_URL``, default ``redis://127.0.0.1:6379/0``), as does
  ``uvicorn fastapi_app:app`` from this folder. Start two, then::

      curl -X PUT localhost:8001/flags/checkout -H 'content-type: application/json' \\
           -d '{"enabled": true}'
      curl localhost:8002/flags/checkout

Needs ``pip install "podshare[examples]"`` (FastAPI, uvicorn, websockets, pydantic, redis).
"""

from __future__ import annotations

import os
import sys

# Python puts this folder first on the import path, and examples/redis.py would then
# shadow redis-py inside podshare: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import AsyncIterator, Callable  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Annotated, Any  # noqa: E402

import anyio  # noqa: E402

try:
    import uvicorn
    from fastapi import Depends, FastAPI, HTTPException, WebSocket, WebSocketDisconnect
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel
    from starlette.requests import HTTPConnection
except ImportError as exc:
    raise SystemExit(f"{exc}: this example needs: pip install 'podshare[examples]'") from exc

from podshare import Store  # noqa: E402
from podshare.callreply import Endpoint, decode_payload, encode_payload  # noqa: E402
from podshare.exceptions import (  # noqa: E402
    CallTimeout,
    EndpointBusy,
    NoRoute,
    OwnerUnavailable,
    RemoteError,
)
from podshare.transport import MemoryNetwork, MemoryTransport, Transport  # noqa: E402

REDIS_URL = os.environ.get("PODSHARE_REDIS_URL", "redis://127.0.0.1:6379/0")


class Flag(BaseModel):
    """A feature flag: the store's value type (pydantic validates it on every pod)."""

    enabled: bool
    note: str = ""


class Push(BaseModel):
    """A message pushed to a user's websocket through callreply."""

    text: str


def node_id() -> str:
    """This process's node id: unique per process, stable per pod where it can be.

    Set ``PODSHARE_NODE_ID`` explicitly, or let the pod name (Kubernetes' downward API
    ``POD_NAME``, else the hostname) plus the pid tell workers of one pod apart.
    """
    explicit = os.environ.get("PODSHARE_NODE_ID")
    if explicit:
        return explicit
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


@dataclass
class Podshare:
    """What the lifespan opens, once per process."""

    store: Store[Flag]
    endpoint: Endpoint


# -- typed dependencies: handlers declare what they need ----------------------------------


def _podshare(conn: HTTPConnection) -> Podshare:
    # HTTPConnection rather than Request: the same dependency serves websockets.
    podshare: Podshare = conn.app.state.podshare
    return podshare


def get_store(conn: HTTPConnection) -> Store[Flag]:
    return _podshare(conn).store


def get_endpoint(conn: HTTPConnection) -> Endpoint:
    return _podshare(conn).endpoint


FlagStore = Annotated[Store[Flag], Depends(get_store)]
CallReply = Annotated[Endpoint, Depends(get_endpoint)]


# -- the app ----------------------------------------------------------------------------------


def create_app(
    transport_factory: Callable[[], Transport] | None = None, *, node: str | None = None
) -> FastAPI:
    """Build the app; the default transport is Redis at ``PODSHARE_REDIS_URL``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if transport_factory is None:
            from podshare.transport import RedisTransport

            transport: Any = RedisTransport(REDIS_URL)
        else:
            transport = transport_factory()
        this_node = node or node_id()
        # Entering the store waits for hydration (bounded by hydrate_timeout), so the
        # server accepts requests only once the process holds the map.
        async with (
            transport,
            Store[Flag]("flags", transport, node_id=this_node) as store,
            Endpoint(transport, node_id=this_node) as endpoint,
        ):
            app.state.podshare = Podshare(store, endpoint)
            yield
        # Closed: the last writes were published and the other pods saw this one leave.
        print(f"{this_node} stopped cleanly", flush=True)

    app = FastAPI(title="podshare flags", lifespan=lifespan)

    @app.get("/ready")
    async def ready(store: FlagStore) -> JSONResponse:
        status = 200 if store.synced else 503
        return JSONResponse({"node": store.node_id, "synced": store.synced}, status_code=status)

    @app.get("/flags/{key}")
    async def get_flag(key: str, store: FlagStore) -> Flag:
        flag = store.get(key)  # a local lookup, no network
        if flag is None:
            raise HTTPException(404, f"no flag {key!r}")
        return flag

    @app.put("/flags/{key}")
    async def put_flag(key: str, flag: Flag, store: FlagStore) -> Flag:
        await store.set(key, flag)  # returns once published to every process
        return flag

    @app.websocket("/ws/{user}")
    async def websocket(ws: WebSocket, user: str, endpoint: CallReply) -> None:
        await ws.accept()
        target = f"user:{user}"

        async def push(payload: bytes) -> bytes:
            await ws.send_text(decode_payload(payload, Push).text)
            return b"delivered"

        # Only the route `user:<name> -> this node` is replicated; the socket stays here.
        await endpoint.register(target, "push", push)
        await ws.send_text(f"connected to {endpoint.node_id}")
        try:
            while True:
                await ws.receive_text()  # this example ignores what the client sends
        except WebSocketDisconnect:
            pass
        finally:
            await endpoint.unregister(target)

    @app.post("/push/{user}")
    async def push_to_user(user: str, message: Push, endpoint: CallReply) -> dict[str, str]:
        try:
            reply = await endpoint.call(f"user:{user}", "push", encode_payload(message))
        except NoRoute as exc:
            raise HTTPException(404, f"{user} is not connected") from exc
        except (OwnerUnavailable, CallTimeout, EndpointBusy) as exc:
            raise HTTPException(503, str(exc)) from exc
        except RemoteError as exc:
            raise HTTPException(502, str(exc)) from exc
        return {"result": reply.decode(), "via": endpoint.owner(f"user:{user}") or "?"}

    return app


# `uvicorn fastapi_app:app` (run from this folder) serves one process over Redis.
app = create_app()


# -- running it -------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """One process over Redis, until SIGTERM or Ctrl-C.

    uvicorn runs the lifespan, so SIGTERM closes the store and the endpoint before the
    process exits (uvicorn then re-raises the signal: the exit status says SIGTERM).
    """
    uvicorn.run(
        create_app(),
        host=args.host,
        port=args.port,
        fd=args.fd,
        log_level="warning",
        lifespan="on",
    )


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (http only)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310 (our own URL)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def _request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    return await anyio.to_thread.run_sync(_http, method, url, body)


async def demo() -> None:
    """Two pods in one process: two uvicorn servers, two apps, one in-memory network."""
    from websockets.asyncio.client import connect

    network = MemoryNetwork()
    servers = []
    async with anyio.create_task_group() as tg:
        for name in ("pod-a", "pod-b"):
            pod_app = create_app(lambda: MemoryTransport(network=network), node=name)
            config = uvicorn.Config(pod_app, host="127.0.0.1", port=0, log_level="warning")
            server = uvicorn.Server(config)
            servers.append(server)
            tg.start_soon(server.serve)
        with anyio.fail_after(20):
            while not all(s.started for s in servers):  # noqa: ASYNC110 (uvicorn's flag)
                await anyio.sleep(0.01)
        a, b = (f"127.0.0.1:{s.servers[0].sockets[0].getsockname()[1]}" for s in servers)

        put = await _request("PUT", f"http://{a}/flags/checkout", {"enabled": True})
        print("PUT on pod-a:", put)
        with anyio.fail_after(10):  # pod-b is another server: poll its HTTP API
            while (await _request("GET", f"http://{b}/flags/checkout"))[0] != 200:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        print("GET on pod-b:", await _request("GET", f"http://{b}/flags/checkout"))

        async with connect(f"ws://{b}/ws/alice") as ws:
            print("websocket:", await ws.recv())
            # The route reaches pod-a within milliseconds; until then pod-a answers 404
            # (NoRoute: nothing ran, so trying again is safe).
            with anyio.fail_after(10):
                while True:
                    status, body = await _request(
                        "POST", f"http://{a}/push/alice", {"text": "hello from pod-a"}
                    )
                    if status != 404:
                        break
                    await anyio.sleep(0.01)
            print(f"POST /push/alice on pod-a: {status} {body}")
            print("websocket on pod-b got:", await ws.recv())
        print("fastapi: a push from pod-a reached the websocket on pod-b")
        for server in servers:
            server.should_exit = True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", help="serve one process over Redis")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8001)
    serve_cmd.add_argument("--fd", type=int, default=None, help="serve an inherited socket")
    parsed = parser.parse_args()
    if parsed.command == "serve":
        serve(parsed)
    else:
        anyio.run(demo)  # uvicorn and the websockets client run on asyncio
