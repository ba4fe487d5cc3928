"""The runnable code of docs/yjs.md (docs/snippets/yjs_*.py) runs and prints what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycrdt", reason="the snippets need the yjs extra (pycrdt)")

pytestmark = pytest.mark.integration

SNIPPETS = Path(__file__).resolve().parents[2] / "docs" / "snippets"
EXPECTED = {
    "yjs_bridge.py": ["hello from pod 1", "1 update applied, none sent back"],
    "yjs_persistence.py": ["kept across restarts"],
}


def test_every_yjs_snippet_is_checked() -> None:
    assert sorted(p.name for p in SNIPPETS.glob("yjs_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_snippet_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SNIPPETS / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=SNIPPETS.parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED[name], result.stdout
