"""Flask + podshare.sync: a feature-flag service whose processes all share one map.

Shows the blocking API (``podshare.sync.open_store``) in a threaded WSGI app. Each process
opens one store at start-up; request handlers read it like a dict (a local lookup, no
network) and a PUT blocks only until the write was published. Every other process sees
the change within milliseconds.

Two ways to run it:

- ``python examples/flask_app.py`` runs a self-contained demo: two WSGI servers (pod-a
  and pod-b) in this process over an in-memory network; a PUT on pod-a is then read
  back from pod-b over HTTP.
- ``python examples/flask_app.py serve --port 8001`` serves one process over Redis
  (``PODSHARE_REDIS_URL``, default ``redis://127.0.0.1:6379/0``); start a second one on
  another port and PUT on one, GET on the other::

      curl -X PUT localhost:8001/flags/checkout -H 'content-type: application/json' \\
           -d '{"enabled": true}'
      curl localhost:8002/flags/checkout

Needs ``pip install "podshare[examples]"`` (Flask; Redis for ``serve``).
"""

from __future__ import annotations

import os
import sys

# Python puts this folder first on the import path, and examples/redis.py would then
# shadow redis-py inside podshare: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

try:
    from flask import Flask, abort, jsonify, request
    from werkzeug.serving import BaseWSGIServer, make_server
except ImportError as exc:
    raise SystemExit(f"{exc}: this example needs: pip install 'podshare[examples]'") from exc

from podshare.exceptions import InvalidValue  # noqa: E402
from podshare.sync import SyncStore, TransportFactory, open_store  # noqa: E402
from podshare.transport import MemoryNetwork, MemoryTransport  # noqa: E402

REDIS_URL = os.environ.get("PODSHARE_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclasses.dataclass(frozen=True)
class Flag:
    enabled: bool
    note: str = ""


def node_id() -> str:
    """One node id per process: the pod's name plus the pid (several workers per pod)."""
    explicit = os.environ.get("PODSHARE_NODE_ID")
    if explicit:
        return explicit
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


def create_app(flags: SyncStore[Flag]) -> Flask:
    """The WSGI app; ``flags`` is this process's store, shared by every request thread."""
    app = Flask(__name__)

    @app.get("/ready")
    def ready() -> Any:
        # Readiness: serve traffic only once the store hydrated from its peers.
        return (jsonify(node=flags.node_id), 200) if flags.synced else ("hydrating", 503)

    @app.get("/flags/<key>")
    def get_flag(key: str) -> Any:
        flag = flags.get(key)  # a local dict lookup
        if flag is None:
            abort(404)
        return jsonify(dataclasses.asdict(flag))

    @app.put("/flags/<key>")
    def put_flag(key: str) -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400)
        try:
            flags.set(key, Flag(**body))  # blocks until published
        except (TypeError, InvalidValue) as exc:
            return jsonify(error=str(exc)), 422
        return jsonify(dataclasses.asdict(flags[key]))

    @app.delete("/flags/<key>")
    def delete_flag(key: str) -> Any:
        flags.delete(key)
        return "", 204

    return app


def open_flags(transport_factory: TransportFactory, name: str) -> SyncStore[Flag]:
    return open_store("flags", transport_factory, type=Flag, node_id=name)


def serve(args: argparse.Namespace) -> None:
    """One process: a threaded WSGI server over Redis, until SIGTERM or Ctrl-C."""
    from podshare.transport import RedisTransport

    with open_flags(lambda: RedisTransport(REDIS_URL), node_id()) as flags:
        server = make_server(args.host, args.port, create_app(flags), threaded=True, fd=args.fd)
        # serve_forever() returns once shutdown() is called from another thread.
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"{flags.node_id} serving on port {server.socket.getsockname()[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    print(f"{flags.node_id} stopped cleanly", flush=True)


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)  # noqa: S310 (http only)
    req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as response:  # noqa: S310 (our own URL)
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def demo() -> None:
    """Two pods in one process: two WSGI servers, two stores, one in-memory network."""
    network = MemoryNetwork()
    servers: list[BaseWSGIServer] = []
    with (
        open_flags(lambda: MemoryTransport(network=network), "pod-a") as flags_a,
        open_flags(lambda: MemoryTransport(network=network), "pod-b") as flags_b,
    ):
        for flags in (flags_a, flags_b):
            server = make_server("127.0.0.1", 0, create_app(flags), threaded=True)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        a, b = (f"http://127.0.0.1:{s.server_port}" for s in servers)
        status, body = _http("PUT", f"{a}/flags/checkout", b'{"enabled": true, "note": "v2"}')
        print(f"PUT on pod-a: {status} {body.decode().strip()}")
        _until(lambda: _http("GET", f"{b}/flags/checkout")[0] == 200)
        print(f"GET on pod-b: {_http('GET', f'{b}/flags/checkout')[1].decode().strip()}")
        refused, _ = _http("PUT", f"{a}/flags/x", b'{"colour": 1}')
        print(f"a body that is not a Flag is refused: {refused}")
        for server in servers:
            server.shutdown()
    print("flask: a PUT on pod-a is visible on pod-b")


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
        demo()
