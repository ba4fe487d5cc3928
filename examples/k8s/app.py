"""The podshare Kubernetes example: one small HTTP service whose pods share a map.

Every manifest in this folder runs this same program; environment variables choose the
transport (a TCP mesh found through a headless Service, Redis, or NATS) and everything
else. Each pod announces itself under ``pods/{POD_NAME}`` as an ephemeral entry (it
vanishes on every replica when the pod dies) and serves the map over HTTP:

- ``GET /healthz``: 200 once the store is synced with its peers, 503 before (the
  readiness probe);
- ``GET /keys``: the whole map as JSON; ``GET /keys/{key}``: one value (404 if absent);
- ``PUT /keys/{key}`` with a JSON body: set it on every pod; ``DELETE /keys/{key}``.

Environment (see ``ENV_VARS``; ``config_from_env`` reads and checks them):

| variable | meaning |
|---|---|
| ``POD_NAME`` | the node id (the pod's name, from the downward API); required |
| ``PODSHARE_TRANSPORT`` | ``tcp``, ``redis`` or ``nats``; required |
| ``PODSHARE_SECRET`` | the shared secret (a MAC on every message); required |
| ``PODSHARE_STORE`` | the store's name, default ``k8s-demo`` |
| ``PODSHARE_HTTP_PORT`` | the HTTP port, default 8080 |
| ``PODSHARE_MESH_SERVICE`` | tcp: the DNS name of the headless Service; required |
| ``PODSHARE_MESH_PORT`` | tcp: the mesh port, default 7000 |
| ``PODSHARE_STATE`` | optional: a SQLite file for durable state (a volume per pod) |
| ``PODSHARE_REDIS_URL`` | redis: the server's URL; required unless Sentinel is used |
| ``PODSHARE_REDIS_SENTINELS`` | redis: ``host:port`` of each sentinel, comma-separated |
| ``PODSHARE_REDIS_SERVICE`` | redis with sentinels: the service name, default ``mymaster`` |
| ``PODSHARE_NATS_URL`` | nats: the servers, comma-separated; required |
| ``PODSHARE_NATS_JETSTREAM`` | nats: ``true`` for JetStream (replay, KV persistence) |

Run it on one machine with ``POD_NAME=a PODSHARE_TRANSPORT=redis PODSHARE_SECRET=...
PODSHARE_REDIS_URL=redis://localhost:6379/0 python app.py``; the README shows the
cluster setup.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from anyio.abc import SocketStream

from podshare import Store, TransportError
from podshare.persistence import Persistence
from podshare.transport import Transport

log = logging.getLogger("podshare-k8s")

TransportName = Literal["tcp", "redis", "nats"]
TRANSPORTS: tuple[TransportName, ...] = ("tcp", "redis", "nats")

# Every variable config_from_env reads: the manifests set nothing else of podshare's.
ENV_VARS = (
    "POD_NAME",
    "PODSHARE_TRANSPORT",
    "PODSHARE_SECRET",
    "PODSHARE_STORE",
    "PODSHARE_HTTP_PORT",
    "PODSHARE_MESH_SERVICE",
    "PODSHARE_MESH_PORT",
    "PODSHARE_STATE",
    "PODSHARE_REDIS_URL",
    "PODSHARE_REDIS_SENTINELS",
    "PODSHARE_REDIS_SERVICE",
    "PODSHARE_NATS_URL",
    "PODSHARE_NATS_JETSTREAM",
)

MAX_REQUEST = 64 * 1024  # bytes of one HTTP request, head and body


class ConfigError(ValueError):
    """The environment does not describe a runnable pod; the message says what to fix."""


@dataclass(frozen=True)
class Config:
    """What one pod runs with, parsed from its environment by ``config_from_env``."""

    node_id: str
    transport: TransportName
    secret: str
    store: str = "k8s-demo"
    http_port: int = 8080
    mesh_service: str | None = None
    mesh_port: int = 7000
    state_path: str | None = None
    redis_url: str | None = None
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_service: str = "mymaster"
    nats_servers: tuple[str, ...] = ()
    jetstream: bool = False


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{name} must be 1..65535, got {port}")
    return port


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _required(env: Mapping[str, str], name: str, why: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required ({why})")
    return value


def _sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    found = []
    for part in (part.strip() for part in raw.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"PODSHARE_REDIS_SENTINELS: {part!r} is not host:port")
        found.append((host, int(port)))
    return tuple(found)


def config_from_env(env: Mapping[str, str]) -> Config:
    """Parse and check the pod's environment; raise ``ConfigError`` naming the variable."""
    node_id = _required(env, "POD_NAME", "the node id: set it from metadata.name")
    transport = env.get("PODSHARE_TRANSPORT", "").strip().lower()
    if transport not in TRANSPORTS:
        raise ConfigError(
            f"PODSHARE_TRANSPORT must be one of {', '.join(TRANSPORTS)}, got {transport!r}"
        )
    secret = _required(env, "PODSHARE_SECRET", "the shared secret, from a Kubernetes Secret")
    if len(secret.encode()) < 16:
        raise ConfigError("PODSHARE_SECRET must be at least 16 bytes")
    common: dict[str, Any] = {
        "node_id": node_id,
        "transport": transport,
        "secret": secret,
        "store": env.get("PODSHARE_STORE", "").strip() or "k8s-demo",
        "http_port": _port(env, "PODSHARE_HTTP_PORT", 8080),
        "state_path": env.get("PODSHARE_STATE", "").strip() or None,
    }
    if transport == "tcp":
        mesh_port = _port(env, "PODSHARE_MESH_PORT", 7000)
        if mesh_port == common["http_port"]:
            raise ConfigError("PODSHARE_MESH_PORT and PODSHARE_HTTP_PORT must differ")
        return Config(
            **common,
            mesh_service=_required(env, "PODSHARE_MESH_SERVICE", "the headless Service"),
            mesh_port=mesh_port,
        )
    if transport == "redis" and env.get("PODSHARE_REDIS_SENTINELS", "").strip():
        if env.get("PODSHARE_REDIS_URL", "").strip():
            raise ConfigError("set PODSHARE_REDIS_URL or PODSHARE_REDIS_SENTINELS, not both")
        return Config(
            **common,
            redis_sentinels=_sentinels(env["PODSHARE_REDIS_SENTINELS"]),
            redis_service=env.get("PODSHARE_REDIS_SERVICE", "").strip() or "mymaster",
        )
    if transport == "redis":
        url = _required(env, "PODSHARE_REDIS_URL", "redis://host:6379/0, or sentinels")
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(f"PODSHARE_REDIS_URL must be a redis:// URL, got {url!r}")
        return Config(**common, redis_url=url)
    raw = _required(env, "PODSHARE_NATS_URL", "nats://host:4222, comma-separated")
    servers = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [server for server in servers if not server.startswith(("nats://", "tls://"))]
    if bad or not servers:
        raise ConfigError(f"PODSHARE_NATS_URL must list nats:// URLs, got {raw!r}")
    return Config(**common, nats_servers=servers, jetstream=_flag(env, "PODSHARE_NATS_JETSTREAM"))


@asynccontextmanager
async def open_transport(config: Config) -> AsyncIterator[Transport]:
    """The transport the config names, entered (and, for tcp, its DNS discovery)."""
    if config.transport == "tcp":
        from podshare.transport import DNSDiscoverer, TcpTransport

        assert config.mesh_service is not None  # config_from_env requires it
        discoverer = DNSDiscoverer(config.mesh_service, config.mesh_port)
        async with (
            TcpTransport(
                listen=f"0.0.0.0:{config.mesh_port}",  # other pods dial in
                node_id=config.node_id,
                secret=config.secret,
            ) as tcp,
            discoverer.attach(tcp),
        ):
            yield tcp
    elif config.transport == "redis":
        from podshare.transport import RedisTransport

        if config.redis_sentinels:
            redis = RedisTransport(
                sentinels=list(config.redis_sentinels),
                service_name=config.redis_service,
                secret=config.secret,
            )
        else:
            redis = RedisTransport(config.redis_url, secret=config.secret)
        async with redis:
            yield redis
    else:
        from podshare.transport import NatsTransport

        async with NatsTransport(
            list(config.nats_servers), secret=config.secret, jetstream=config.jetstream
        ) as nats:
            yield nats


def _persistence(config: Config) -> Persistence | None:
    """A SQLite file when PODSHARE_STATE names one, else the transport's default
    (Redis: the same Redis; NATS with JetStream: a KV bucket; TCP: none)."""
    if config.state_path is None:
        return None
    from podshare.persistence import SQLitePersistence

    return SQLitePersistence(config.state_path)


async def handle(
    store: Store[Any], method: str, path: str, body: bytes
) -> tuple[int, dict[str, Any] | None]:
    """Answer one HTTP request: (status, JSON body or None)."""
    if path == "/healthz" and method == "GET":
        return (200, {"synced": True}) if store.synced else (503, {"synced": False})
    if path == "/keys" and method == "GET":
        return 200, store.snapshot()
    if not path.startswith("/keys/") or len(path) == len("/keys/"):
        return 404, {"error": f"no route for {method} {path}"}
    key = path.removeprefix("/keys/")
    if method == "GET":
        return (200, {key: store[key]}) if key in store else (404, {"error": "no such key"})
    try:
        if method == "PUT":
            try:
                value = json.loads(body)
            except ValueError:
                return 400, {"error": "the body must be JSON"}
            await store.set(key, value)
        elif method == "DELETE":
            await store.delete(key)
        else:
            return 405, {"error": f"{method} is not allowed on {path}"}
    except TransportError as exc:
        # The write stands on this pod; the store's repair carries it to the others.
        return 503, {"error": str(exc), "applied_locally": True}
    return 204, None


async def _serve_one(store: Store[Any], client: SocketStream) -> None:
    async with client:
        data = b""
        with anyio.move_on_after(10), suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                data += await client.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, *_ = [*lines[0].split(" "), "", ""]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length" and value.strip().isdigit():
                    length = int(value)
            answer: dict[str, Any] | None
            if length > MAX_REQUEST:
                status, answer = 413, {"error": "request too large"}
            else:
                while len(body) < length:
                    body += await client.receive()
                status, answer = await handle(store, method, path.split("?")[0], body)
            payload = b"" if answer is None else json.dumps(answer).encode()
            await client.send(
                f"HTTP/1.1 {status} -\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )


async def run(config: Config) -> None:
    """Open the transport and the store, announce this pod, serve HTTP until SIGTERM."""
    async with (
        open_transport(config) as transport,
        Store[Any](
            config.store, transport, node_id=config.node_id, persistence=_persistence(config)
        ) as store,
        await anyio.create_tcp_listener(local_port=config.http_port) as listener,
        anyio.create_task_group() as tg,
    ):
        started = datetime.now(UTC).isoformat(timespec="seconds")
        await store.set(f"pods/{config.node_id}", {"started": started}, ephemeral=True)
        log.info("%s serving store %r on :%d", config.node_id, config.store, config.http_port)

        async def serve(client: SocketStream) -> None:
            await _serve_one(store, client)

        tg.start_soon(listener.serve, serve)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s: %s, leaving", config.node_id, signal.Signals(signum).name)
                break
        # Leaving the blocks closes the store (its last writes flushed to persistence)
        # within terminationGracePeriodSeconds, then the transport.
        tg.cancel_scope.cancel()


def main() -> None:
    """Entry point: parse the environment, then run (asyncio: Redis and NATS need it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = config_from_env(os.environ)
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    anyio.run(run, config, backend="asyncio")


if __name__ == "__main__":
    main()
