"""Smoke test of examples/fastapi_app.py: two uvicorn processes against one Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._support import RedisServer
from tests.integration._servers import ServerProcess, poll

pytestmark = pytest.mark.integration

for _module in ("fastapi", "uvicorn", "websockets", "pydantic", "redis"):
    pytest.importorskip(_module, reason=f"the examples extra ({_module}) is not installed")

import redis  # noqa: E402
from websockets.sync.client import connect  # noqa: E402


@pytest.fixture
def pods(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # The shared server keeps what earlier tests persisted (Redis persistence is the
    # default): these pods start from an empty fleet.
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    env = {"PODSHARE_REDIS_URL": redis_server.url}
    started = [
        ServerProcess("fastapi_app.py", ["serve"], {**env, "POD_NAME": name})
        for name in ("pod-a", "pod-b")
    ]
    try:
        for pod in started:
            pod.wait_ready()
        yield started[0], started[1]
    finally:
        outputs = [pod.stop() for pod in started]
    for out in outputs:
        assert "stopped cleanly" in out, out
        assert "Traceback" not in out, out


def test_put_on_one_process_is_visible_on_the_other(
    pods: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pods
    status, body = a.request("GET", "/ready")
    assert status == 200
    assert body["synced"] is True
    assert body["node"].startswith("pod-a-")  # the pod name plus the pid
    assert b.request("GET", "/flags/checkout")[0] == 404
    assert a.request("PUT", "/flags/checkout", {"enabled": True, "note": "v2"}) == (
        200,
        {"enabled": True, "note": "v2"},
    )
    poll(lambda: b.request("GET", "/flags/checkout") == (200, {"enabled": True, "note": "v2"}))
    assert a.request("PUT", "/flags/bad", {"enabled": "perhaps"})[0] == 422


def test_a_push_reaches_the_websocket_held_by_the_other_process(
    pods: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pods
    assert a.request("POST", "/push/alice", {"text": "nobody there"})[0] == 404
    with connect(f"{b.ws_url}/ws/alice", open_timeout=10) as ws:
        greeting = ws.recv(timeout=10)
        assert isinstance(greeting, str)
        assert greeting.startswith("connected to pod-b-")
        # The route `user:alice -> pod-b` reaches pod-a within milliseconds; until then
        # pod-a answers 404 (NoRoute: nothing ran, so retrying is safe).
        replies: list[tuple[int, object]] = []

        def pushed() -> bool:
            replies.append(a.request("POST", "/push/alice", {"text": "hello from pod-a"}))
            return replies[-1][0] != 404

        poll(pushed)
        status, body = replies[-1]
        assert status == 200, body
        assert body["result"] == "delivered"  # type: ignore[index]
        assert body["via"].startswith("pod-b-")  # type: ignore[index]
        assert ws.recv(timeout=10) == "hello from pod-a"
    # The socket closed: pod-b unregisters, and the route disappears on pod-a too.
    poll(lambda: a.request("POST", "/push/alice", {"text": "gone"})[0] == 404)
