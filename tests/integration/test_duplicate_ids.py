"""Two processes sharing a node id (issue 12): over real Redis and a real TCP mesh,
each receives the other's writes, and each reports the duplicate."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests._support import RedisServer, free_port

pytestmark = pytest.mark.integration

POD = Path(__file__).with_name("_dup_pod.py")
ROOT = Path(__file__).resolve().parents[2]


def _run_pair(args_a: list[str], args_b: list[str]) -> list[dict[str, object]]:
    pods = [
        subprocess.Popen(
            [sys.executable, str(POD), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for args in (args_a, args_b)
    ]
    try:
        assert all(p.stdout is not None for p in pods)
        lines = [p.stdout.readline() for p in pods if p.stdout is not None]
        for p in pods:
            if p.stdin is not None:
                p.stdin.close()
        for p in pods:
            p.wait(timeout=30)
        errors = [p.stderr.read() if p.stderr is not None else "" for p in pods]
    finally:
        for p in pods:
            if p.poll() is None:
                p.kill()
                p.wait()
    for line, err, p in zip(lines, errors, pods, strict=True):
        assert line, f"pod printed nothing (exit {p.returncode}):\n{err}"
        assert p.returncode == 0, err
    return [json.loads(line) for line in lines]


def _check(results: list[dict[str, object]]) -> None:
    expected = sorted(f"{t}-{i}" for t in ("a", "b") for i in range(50))
    for result in results:
        assert result["keys"] == expected, result  # both processes' writes, on both
        duplicates = result["duplicates"]
        assert isinstance(duplicates, int)
        assert duplicates >= 1
        reported = result["reported"]
        assert isinstance(reported, list)
        assert reported
        assert "dup-node" in reported[0]


def test_two_processes_sharing_a_node_id_over_redis(redis_server: RedisServer) -> None:
    prefix = f"dup{uuid.uuid4().hex[:8]}"
    args = ["redis", redis_server.url, prefix]
    _check(_run_pair([*args, "a", "b"], [*args, "b", "a"]))


def test_two_processes_sharing_a_node_id_over_tcp() -> None:
    port_a, port_b = free_port(), free_port()
    _check(
        _run_pair(
            ["tcp", str(port_a), "-", "a", "b"],
            ["tcp", str(port_b), str(port_a), "b", "a"],
        )
    )
