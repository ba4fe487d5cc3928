"""Smoke tests of examples/: each runs as a script, exits 0 and prints what it shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60

# A line each example prints only when its pattern worked end to end.
EXPECTED: dict[str, str] = {
    "basic.py": "converged: True",
    "redis.py": "converged: True",
    "p2p.py": "converged: True",
    "feature_flags.py": "every worker saw every change",
    "ws_routing.py": "alice got: you have a new message",
    "presence.py": "pod-b left; online, seen from pod-a: alice@pod-a, bob@pod-a",
    "circuit_breaker.py": "breaker everywhere: {'pod-1': False, 'pod-2': False, 'pod-3': False}",
    "session_affinity.py": "pod-1 and pod-2 agree on every user's pod",
    "chat_cache.py": "all pods agree: True",
    # Without arguments the web-app examples run a self-contained two-pod demo; their
    # "serve" mode (two real server processes over Redis) is driven by
    # test_sync_wsgi.py and test_fastapi_app.py.
    "flask_app.py": "flask: a PUT on pod-a is visible on pod-b",
    "fastapi_app.py": "fastapi: a push from pod-a reached the websocket on pod-b",
    "collab_server.py": "the editors on both pods agree: True",
}
NEEDS_REDIS = {"redis.py"}


def _examples() -> list[str]:
    return sorted(path.name for path in EXAMPLES.glob("*.py"))


def test_every_expected_example_exists() -> None:
    missing = sorted(set(EXPECTED) - set(_examples()))
    assert not missing, f"examples missing from {EXAMPLES}: {missing}"


def test_every_example_is_checked() -> None:
    unchecked = sorted(set(_examples()) - set(EXPECTED))
    assert not unchecked, f"add the examples {unchecked} to EXPECTED with a line they print"


# Every example runs as a subprocess, and some open loopback sockets or a redis-server.
@pytest.mark.integration
@pytest.mark.parametrize("name", _examples())
def test_example_runs(name: str, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if name in NEEDS_REDIS:
        # The fixture starts a private redis-server (skips, or fails under CI=true, when
        # redis-server is missing); the example reads its URL from the environment.
        env["PODSHARE_REDIS_URL"] = request.getfixturevalue("redis_server").url
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        cwd=EXAMPLES.parent,
        check=False,
    )
    details = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{details}"
    assert "Traceback" not in result.stderr, details
    expected = EXPECTED.get(name)
    assert expected is not None, f"add {name} to EXPECTED with a line it prints"
    assert expected in result.stdout.splitlines(), f"{name}: no line {expected!r}\n{details}"
