"""SQLitePersistence keeps every acknowledged write when its process is SIGKILLed."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from podshare.persistence import SQLitePersistence

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Writes batch after batch (each a new key, the previous one deleted, and the meta naming
# it), printing each batch number once write() returned: an acknowledged write.
_WRITER = textwrap.dedent(
    """
    import sys, anyio
    from podshare.persistence import SQLitePersistence

    async def main(path: str) -> None:
        async with SQLitePersistence(path) as place:
            i = 0
            while True:
                await place.write("s", {f"k{i}": b"x" * 1000, f"k{i - 1}": None}, str(i).encode())
                print(i, flush=True)
                i += 1

    anyio.run(main, sys.argv[1])
    """
)


@pytest.mark.anyio
async def test_sigkill_mid_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last = -1
    with anyio.fail_after(60):
        async with await anyio.open_process(
            [sys.executable, "-c", _WRITER, str(path)], env=env, stderr=None
        ) as writer:
            assert writer.stdout is not None
            lines = BufferedByteReceiveStream(writer.stdout)
            while last < 200:
                last = int(await lines.receive_until(b"\n", 64))
            writer.send_signal(signal.SIGKILL)
            assert await writer.wait() == -signal.SIGKILL
    async with SQLitePersistence(path) as place:
        state = await place.load("s")
    # Writes after the last one read may have landed too; none up to it may be missing.
    saved = int(state.meta or b"-1")
    assert saved >= last
    assert dict(state.records) == {f"k{saved}": b"x" * 1000}
