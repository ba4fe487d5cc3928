"""The documentation's server programs (``<!-- run: redis -->`` / ``<!-- run: nats -->``)
run against the fixtures' servers, with the documented URLs pointed at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._docblocks import Block, all_blocks
from tests.unit.test_docs_pages import run_program

pytestmark = pytest.mark.integration

SERVERS = {
    "redis": ("redis_server", "redis://localhost:6379"),
    "nats": ("nats_server", "nats://localhost:4222"),
}
BLOCKS = [b for b in all_blocks() if b.kind == "server"]


def test_server_programs_are_found() -> None:
    assert any(b.server == "redis" for b in BLOCKS)
    assert all(b.server in SERVERS for b in BLOCKS), [b.id for b in BLOCKS]


# redis-py and nats-py are asyncio-only, so these programs are too.
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_server_program_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fixture, documented = SERVERS[block.server or ""]
    server = request.getfixturevalue(fixture)
    assert documented in block.code, f"{block.id} does not use {documented}"
    # The fixture's URL without its path (a Redis URL's /0), so a documented /0 stays.
    scheme, _, rest = server.url.partition("://")
    code = block.code.replace(documented, f"{scheme}://{rest.split('/', 1)[0]}")
    moved = Block(block.page, block.line, block.lang, block.info, code, block.server)
    run_program(moved, "asyncio", tmp_path, {})
