"""Every Python block of the checked documentation pages runs, under asyncio and trio.

A block is a whole program (imports, ``async def main``, ``anyio.run(main)``) whose
``assert`` lines state what the page claims. A block that is only a fragment says so in
its fence, `` ```python title="fragment" ``, which readers see as its title; it is not run.
Add a page to :data:`PAGES` once its blocks are written that way.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "docs/callreply.md",
    "docs/coming-from-go.md",
    "docs/durability.md",
    "docs/operations.md",
    "docs/transports/memory.md",
]

_FENCE = re.compile(r"^```python(?P<info>[^\n]*)\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)


def _blocks(page: str) -> list[tuple[str, int, str]]:
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        if 'title="fragment"' in match["info"]:
            continue
        line = text.count("\n", 0, match.start()) + 1
        found.append((page, line, match["code"]))
    return found


BLOCKS = [block for page in PAGES for block in _blocks(page)]


@pytest.mark.parametrize("page", PAGES)
def test_every_checked_page_has_runnable_blocks(page: str) -> None:
    assert _blocks(page), f"{page} has no runnable python block"


# Sync tests that start their own event loop (through the block's anyio.run), so the
# backend is a parameter here rather than the anyio plugin's fixture.
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    ("page", "line", "code"), BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS]
)
def test_block_runs(
    page: str, line: int, code: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anyio, "run", functools.partial(anyio.run, backend=backend))
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    # dont_inherit: a block runs as the script it is, without this module's
    # ``from __future__ import annotations`` (which would break a block's dataclasses).
    code_object = compile(code, f"{page}:{line}", "exec", dont_inherit=True)
    exec(code_object, namespace)  # noqa: S102 - our own docs
