"""The blocking API from a Flask app on a real WSGI server: two processes, one Redis."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests._support import RedisServer
from tests.integration._servers import ServerProcess, poll

pytestmark = pytest.mark.integration

pytest.importorskip("flask", reason="the examples extra (Flask) is not installed")
redis = pytest.importorskip("redis", reason="the redis extra is not installed")


@pytest.fixture
def pods(redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    # The shared server keeps what earlier tests persisted (Redis persistence is the
    # default): these pods start from an empty fleet.
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    env = {"PODSHARE_REDIS_URL": redis_server.url}
    started = [
        ServerProcess("flask_app.py", ["serve"], {**env, "POD_NAME": name})
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


def serves(pod: ServerProcess, path: str, expected: tuple[int, Any]) -> Callable[[], bool]:
    """A condition: ``pod`` answers ``expected`` to a GET of ``path``."""
    return lambda: pod.request("GET", path) == expected


def test_a_put_on_one_process_is_visible_on_the_other(
    pods: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pods
    assert a.request("GET", "/ready")[1]["node"].startswith("pod-a-")
    assert b.request("GET", "/flags/checkout")[0] == 404
    status, body = a.request("PUT", "/flags/checkout", {"enabled": True, "note": "v2"})
    assert (status, body) == (200, {"enabled": True, "note": "v2"})
    poll(lambda: b.request("GET", "/flags/checkout") == (200, {"enabled": True, "note": "v2"}))
    # And back, from the other side: a delete on b disappears on a.
    assert b.request("DELETE", "/flags/checkout")[0] == 204
    poll(lambda: a.request("GET", "/flags/checkout")[0] == 404)
    assert a.request("PUT", "/flags/x", {"colour": "red"})[0] == 422


def test_concurrent_requests_on_both_processes_converge(
    pods: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = pods

    def put(i: int) -> int:
        pod = a if i % 2 else b
        return pod.request("PUT", f"/flags/f{i}", {"enabled": bool(i % 3), "note": str(i)})[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(put, range(40))) == {200}
    for pod in (a, b):
        for i in range(40):
            expected = (200, {"enabled": bool(i % 3), "note": str(i)})
            poll(serves(pod, f"/flags/f{i}", expected))
