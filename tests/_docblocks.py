"""The code blocks of README.md and docs/: found, classified, and how each is checked.

Every fenced block is one of:

- a **program** (```` ```python ````): complete, it exits by itself; the tests run it as a
  subprocess with a timeout, under asyncio and trio when it calls ``anyio.run``;
- a **server program**: a program after ``<!-- run: redis -->`` or ``<!-- run: nats -->``;
  the integration tests run it against the fixtures' server, with every
  ``redis://localhost:6379`` / ``nats://localhost:4222`` in it replaced by that server's
  URL;
- a **fragment** (```` ```python title="fragment" ````, a title readers see): part of a
  program, not run. The page around it says what it needs;
- a **shell** block (```` ```bash ````): each command names a program that exists, with
  ``pip install`` extras and ``podshare`` subcommands checked against the project;
- an **include** (a block that is only ``--8<-- "path"`` lines): the included file is
  run by its own test (examples/ by test_examples.py, docs/snippets/ by
  test_yjs_docs.py);
- **data** (``yaml``, ``json``, ``toml``: parsed) or **output** (``text``, ``console``:
  shown, not run).

docs/cli.md's blocks are driven by tests/integration/test_cli.py, not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Pages whose blocks another test drives as they are written.
ELSEWHERE = {"docs/cli.md": "tests/integration/test_cli.py"}

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)(?P<info>[^\n]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
    re.M | re.S,
)
_INCLUDE = re.compile(r'--8<-- "([^"]+)"')
_RUN = re.compile(r"<!--\s*run:\s*(?P<server>\w+)\s*-->\s*$")
OUTPUT = {"text", "console", "output", ""}
DATA = {"yaml", "yml", "json", "toml"}
SHELL = {"bash", "sh", "shell"}
# Other languages' code, quoted for comparison (the Go library's calls): not run.
FOREIGN = {"go", "javascript", "js", "typescript"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    line: int
    lang: str
    info: str
    code: str
    server: str | None  # "redis" / "nats" for a server program

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def includes(self) -> list[str]:
        """The files a block made only of ``--8<--`` lines includes (else empty)."""
        lines = [line.strip() for line in self.code.splitlines() if line.strip()]
        found = [m[1] for line in lines if (m := _INCLUDE.fullmatch(line))]
        return found if found and len(found) == len(lines) else []

    @property
    def kind(self) -> str:
        if self.includes:
            return "include"
        if self.lang == "python":
            if 'title="fragment"' in self.info:
                return "fragment"
            return "server" if self.server else "program"
        if self.lang in SHELL:
            return "shell"
        if self.lang in DATA:
            return "data"
        if self.lang in OUTPUT:
            return "output"
        if self.lang in FOREIGN:
            return "foreign"
        return "unknown"


def pages() -> list[str]:
    found = ["README.md", *(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
    return sorted(found)


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        run = _RUN.search(before)
        indent = match["indent"]
        code = "\n".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match["code"].split("\n")
        )
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=match["lang"],
                info=match["info"],
                code=code,
                server=run["server"] if run else None,
            )
        )
    return found


def all_blocks() -> list[Block]:
    return [b for page in pages() if page not in ELSEWHERE for b in blocks(page)]
