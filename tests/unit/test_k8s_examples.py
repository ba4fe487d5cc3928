"""examples/k8s/: every manifest parses, the names it references exist, and app.py agrees.

No cluster is needed: the manifests are parsed with PyYAML and cross-checked (Services,
selectors, ports, ConfigMaps, Secrets, volumes), then each app container's environment
is rebuilt from its manifest and given to app.py's own ``config_from_env``. app.py's
request handling runs against a store on the memory transport.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import yaml

from podshare import Store
from podshare.transport import MemoryTransport
from tests._support import eventually

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "examples" / "k8s"
APP_IMAGE = "podshare-k8s-example:0.1"
EXPECTED_TRANSPORT = {"tcp-mesh.yaml": "tcp", "redis.yaml": "redis", "nats.yaml": "nats"}
FAKE_POD = "podshare-0"
FAKE_SECRET = "s" * 32

Doc = dict[str, Any]


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("podshare_k8s_app", K8S / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


APP = _load_app()


def _docs(name: str) -> list[Doc]:
    text = (K8S / name).read_text(encoding="utf-8")
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _workloads(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


def _pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def _pod_labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _app_containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for workload in _workloads(docs):
        for container in _pod_spec(workload)["containers"]:
            if container["image"] == APP_IMAGE:
                yield workload, container


def _ports(container: Doc) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container.get("ports", [])}


def _resolve_port(container: Doc, port: int | str) -> int | None:
    """A container port given by number or by name, or None if the container lacks it."""
    ports = _ports(container)
    if isinstance(port, str):
        return ports.get(port)
    return port if port in ports.values() else None


def _selected(docs: list[Doc], selector: dict[str, str]) -> list[Doc]:
    return [w for w in _workloads(docs) if selector.items() <= _pod_labels(w).items()]


def _documented_secrets() -> set[str]:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"kubectl create secret generic (\S+)", readme))


def _env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as Kubernetes would build it (secrets faked)."""
    config_maps = _named(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in config_maps, f"envFrom names a ConfigMap {name!r} not in the manifest"
        env.update({key: str(value) for key, value in config_maps[name]["data"].items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = FAKE_POD
        elif "secretKeyRef" in source:
            name = source["secretKeyRef"]["name"]
            assert name in _documented_secrets(), f"README.md never creates Secret {name!r}"
            env[var["name"]] = FAKE_SECRET
        else:
            ref = source["configMapKeyRef"]
            assert ref["name"] in config_maps, f"no ConfigMap {ref['name']!r}"
            env[var["name"]] = str(config_maps[ref["name"]]["data"][ref["key"]])
    return env


def _service_port(service: Doc, port: int) -> Doc:
    for entry in service["spec"]["ports"]:
        if entry["port"] == port:
            found: Doc = entry
            return found
    raise AssertionError(f"Service {service['metadata']['name']!r} has no port {port}")


def _check_service_reaches(docs: list[Doc], service: Doc, port: int) -> list[Doc]:
    """The Service serves ``port`` on pods of the manifest that listen on its target."""
    entry = _service_port(service, port)
    target = entry.get("targetPort", port)
    pods = _selected(docs, service["spec"]["selector"])
    assert pods, f"Service {service['metadata']['name']!r} selects no workload"
    for workload in pods:
        containers = _pod_spec(workload)["containers"]
        assert any(_resolve_port(c, target) is not None for c in containers), (
            f"{workload['metadata']['name']} has no container port {target!r}"
        )
    return pods


MANIFESTS = sorted(path.name for path in K8S.glob("*.yaml"))


def test_the_three_variants_are_there() -> None:
    assert sorted(EXPECTED_TRANSPORT) == MANIFESTS


@pytest.mark.parametrize("name", MANIFESTS)
def test_documents_are_well_formed(name: str) -> None:
    docs = _docs(name)
    assert docs
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"{key} twice in {name}"
        seen.add(key)
    for workload in _workloads(docs):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= _pod_labels(workload).items(), workload["metadata"]
    assert list(_app_containers(docs)), f"{name} runs no {APP_IMAGE} container"


@pytest.mark.parametrize("name", MANIFESTS)
def test_services_select_pods_on_their_ports(name: str) -> None:
    docs = _docs(name)
    for service in _named(docs, "Service").values():
        for entry in service["spec"]["ports"]:
            _check_service_reaches(docs, service, entry["port"])


@pytest.mark.parametrize("name", MANIFESTS)
def test_volumes_claims_and_governing_services_exist(name: str) -> None:
    docs = _docs(name)
    claims = _named(docs, "PersistentVolumeClaim")
    services = _named(docs, "Service")
    for workload in _workloads(docs):
        spec = _pod_spec(workload)
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        templates = {
            t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
        }
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"no PersistentVolumeClaim {claim!r}"
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes.keys() | templates, mount
        if workload["kind"] == "StatefulSet":
            governing = services.get(workload["spec"]["serviceName"])
            assert governing is not None, workload["spec"]["serviceName"]
            assert governing["spec"]["selector"].items() <= _pod_labels(workload).items()


@pytest.mark.parametrize("name", MANIFESTS)
def test_app_containers_match_what_app_py_reads(name: str) -> None:
    docs = _docs(name)
    services = _named(docs, "Service")
    for workload, container in _app_containers(docs):
        env = _env(docs, container)
        unknown = set(env) - set(APP.ENV_VARS)
        assert not unknown, f"{name} sets variables app.py never reads: {sorted(unknown)}"

        config = APP.config_from_env(env)
        assert config.transport == EXPECTED_TRANSPORT[name]
        assert config.node_id == FAKE_POD
        # app.py's HTTP port is the container port the probe and the Services use.
        assert _ports(container).get("http") == config.http_port
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/healthz"
        assert _resolve_port(container, probe["port"]) == config.http_port

        if config.state_path is not None:
            mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert any(config.state_path.startswith(path + "/") for path in mounts), (
                f"PODSHARE_STATE {config.state_path} is not on a mounted volume"
            )

        if config.transport == "tcp":
            assert workload["kind"] == "StatefulSet"
            assert _ports(container).get("mesh") == config.mesh_port
            service_name = config.mesh_service.split(".")[0]
            service = services.get(service_name)
            assert service is not None, f"DNS discovery names no Service {service_name!r}"
            assert service["spec"].get("clusterIP") == "None", "the mesh Service is headless"
            assert service["spec"].get("publishNotReadyAddresses") is True
            pods = _check_service_reaches(docs, service, config.mesh_port)
            assert workload in pods
            assert workload["spec"]["serviceName"] == service_name
        else:
            url = config.redis_url if config.transport == "redis" else config.nats_servers[0]
            parts = urlsplit(url)
            assert parts.hostname is not None, url
            assert parts.port is not None, url
            service = services.get(parts.hostname)
            assert service is not None, f"{url} names no Service of {name}"
            _check_service_reaches(docs, service, parts.port)


def test_the_readme_builds_the_image_the_manifests_run() -> None:
    readme = (K8S / "README.md").read_text(encoding="utf-8")
    assert f"-f examples/k8s/Dockerfile -t {APP_IMAGE} ." in readme
    dockerfile = (K8S / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY examples/k8s/app.py /app/app.py" in dockerfile
    assert 'CMD ["python", "/app/app.py"]' in dockerfile
    for name in MANIFESTS:
        assert f"kubectl apply -f {name}" in (K8S / name).read_text(encoding="utf-8")


# -- app.py's configuration ------------------------------------------------------------------

BASE = {"POD_NAME": "pod-1", "PODSHARE_SECRET": FAKE_SECRET}


def test_config_defaults_and_each_transport() -> None:
    tcp = APP.config_from_env(
        {**BASE, "PODSHARE_TRANSPORT": "tcp", "PODSHARE_MESH_SERVICE": "mesh.ns.svc"}
    )
    assert (tcp.node_id, tcp.store, tcp.http_port, tcp.mesh_port) == (
        "pod-1",
        "k8s-demo",
        8080,
        7000,
    )
    assert tcp.mesh_service == "mesh.ns.svc"
    assert tcp.state_path is None

    redis = APP.config_from_env(
        {**BASE, "PODSHARE_TRANSPORT": "Redis", "PODSHARE_REDIS_URL": "rediss://r:6380/2"}
    )
    assert (redis.transport, redis.redis_url, redis.redis_sentinels) == (
        "redis",
        "rediss://r:6380/2",
        (),
    )

    sentinel = APP.config_from_env(
        {
            **BASE,
            "PODSHARE_TRANSPORT": "redis",
            "PODSHARE_REDIS_SENTINELS": "s-0:26379, s-1:26379",
        }
    )
    assert sentinel.redis_sentinels == (("s-0", 26379), ("s-1", 26379))
    assert (sentinel.redis_service, sentinel.redis_url) == ("mymaster", None)

    nats = APP.config_from_env(
        {
            **BASE,
            "PODSHARE_TRANSPORT": "nats",
            "PODSHARE_NATS_URL": "nats://a:4222,tls://b:4222",
            "PODSHARE_NATS_JETSTREAM": "yes",
            "PODSHARE_STORE": "orders",
            "PODSHARE_HTTP_PORT": "9000",
            "PODSHARE_STATE": "/data/x.db",
        }
    )
    assert nats.nats_servers == ("nats://a:4222", "tls://b:4222")
    assert (nats.jetstream, nats.store, nats.http_port, nats.state_path) == (
        True,
        "orders",
        9000,
        "/data/x.db",
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PODSHARE_TRANSPORT": "tcp", "PODSHARE_SECRET": FAKE_SECRET}, "POD_NAME"),
        ({**BASE}, "PODSHARE_TRANSPORT"),
        ({**BASE, "PODSHARE_TRANSPORT": "kafka"}, "PODSHARE_TRANSPORT"),
        ({"POD_NAME": "p", "PODSHARE_TRANSPORT": "tcp"}, "PODSHARE_SECRET"),
        (
            {"POD_NAME": "p", "PODSHARE_TRANSPORT": "nats", "PODSHARE_SECRET": "short"},
            "PODSHARE_SECRET",
        ),
        ({**BASE, "PODSHARE_TRANSPORT": "tcp"}, "PODSHARE_MESH_SERVICE"),
        (
            {
                **BASE,
                "PODSHARE_TRANSPORT": "tcp",
                "PODSHARE_MESH_SERVICE": "m",
                "PODSHARE_MESH_PORT": "8080",
            },
            "PODSHARE_MESH_PORT",
        ),
        (
            {
                **BASE,
                "PODSHARE_TRANSPORT": "tcp",
                "PODSHARE_MESH_SERVICE": "m",
                "PODSHARE_HTTP_PORT": "http",
            },
            "PODSHARE_HTTP_PORT",
        ),
        (
            {
                **BASE,
                "PODSHARE_TRANSPORT": "tcp",
                "PODSHARE_MESH_SERVICE": "m",
                "PODSHARE_MESH_PORT": "70000",
            },
            "PODSHARE_MESH_PORT",
        ),
        ({**BASE, "PODSHARE_TRANSPORT": "redis"}, "PODSHARE_REDIS_URL"),
        (
            {**BASE, "PODSHARE_TRANSPORT": "redis", "PODSHARE_REDIS_URL": "http://r"},
            "PODSHARE_REDIS_URL",
        ),
        (
            {**BASE, "PODSHARE_TRANSPORT": "redis", "PODSHARE_REDIS_SENTINELS": "s-0"},
            "PODSHARE_REDIS_SENTINELS",
        ),
        (
            {
                **BASE,
                "PODSHARE_TRANSPORT": "redis",
                "PODSHARE_REDIS_SENTINELS": "s-0:26379",
                "PODSHARE_REDIS_URL": "redis://r:6379",
            },
            "PODSHARE_REDIS_URL",
        ),
        ({**BASE, "PODSHARE_TRANSPORT": "nats"}, "PODSHARE_NATS_URL"),
        (
            {**BASE, "PODSHARE_TRANSPORT": "nats", "PODSHARE_NATS_URL": "redis://x:1"},
            "PODSHARE_NATS_URL",
        ),
        (
            {
                **BASE,
                "PODSHARE_TRANSPORT": "nats",
                "PODSHARE_NATS_URL": "nats://x:4222",
                "PODSHARE_NATS_JETSTREAM": "maybe",
            },
            "PODSHARE_NATS_JETSTREAM",
        ),
    ],
)
def test_config_errors_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(APP.ConfigError, match=names):
        APP.config_from_env(env)


def test_every_variable_app_py_reads_is_listed() -> None:
    source = (K8S / "app.py").read_text(encoding="utf-8")
    read = set(re.findall(r'"((?:PODSHARE_|POD_)[A-Z_]+)"', source))
    assert read == set(APP.ENV_VARS)


# -- app.py's HTTP API -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_handle_serves_the_map() -> None:
    async with MemoryTransport() as tr, Store[Any]("k8s", tr) as a, Store[Any]("k8s", tr) as b:
        assert await APP.handle(a, "GET", "/healthz", b"") == (200, {"synced": True})
        assert await APP.handle(a, "PUT", "/keys/flag", b'{"on": true}') == (204, None)
        await eventually(lambda: b.get("flag") == {"on": True}, stores=[b])  # replicated
        assert await APP.handle(b, "GET", "/keys/flag", b"") == (200, {"flag": {"on": True}})
        assert await APP.handle(b, "GET", "/keys", b"") == (200, {"flag": {"on": True}})
        status, _ = await APP.handle(a, "PUT", "/keys/flag", b"{not json")
        assert status == 400
        assert a.get("flag") == {"on": True}
        assert (await APP.handle(a, "POST", "/keys/flag", b"1"))[0] == 405
        assert (await APP.handle(a, "GET", "/nowhere", b""))[0] == 404
        assert (await APP.handle(a, "GET", "/keys/", b""))[0] == 404
        assert await APP.handle(b, "DELETE", "/keys/flag", b"") == (204, None)
        await eventually(lambda: "flag" not in a, stores=[a])
        assert (await APP.handle(a, "GET", "/keys/flag", b""))[0] == 404


@pytest.mark.anyio
async def test_requests_over_a_socket() -> None:
    async with (
        MemoryTransport() as tr,
        Store[Any]("k8s", tr) as store,
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):

        async def serve(client: Any) -> None:
            await APP._serve_one(store, client)

        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610

        async def request(raw: bytes) -> tuple[str, bytes]:
            async with await anyio.connect_tcp("127.0.0.1", port) as conn:
                await conn.send(raw)
                answer = b""
                with anyio.fail_after(5):
                    try:
                        while True:
                            answer += await conn.receive()
                    except anyio.EndOfStream:
                        pass
            head, _, body = answer.partition(b"\r\n\r\n")
            return head.decode().split("\r\n")[0], body

        body = json.dumps([1, 2]).encode()
        status, _ = await request(
            b"PUT /keys/list HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        assert status == "HTTP/1.1 204 -"
        assert store.get("list") == [1, 2]
        status, answer = await request(b"GET /keys?pretty=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 -"
        assert json.loads(answer) == {"list": [1, 2]}
        status, _ = await request(
            b"PUT /keys/big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (APP.MAX_REQUEST + 1)
        )
        assert status == "HTTP/1.1 413 -"
        assert "big" not in store
        tg.cancel_scope.cancel()
