"""Every code block of README.md and docs/ is checked (see tests/_docblocks.py for kinds).

Programs run as subprocesses and must exit 0 by themselves within ``TIMEOUT``; those
calling ``anyio.run`` run under asyncio and trio. Server programs run in
tests/integration/test_docs_servers.py against the fixtures' servers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests._docblocks import ELSEWHERE, ROOT, Block, all_blocks, blocks, pages

TIMEOUT = 60
BLOCKS = all_blocks()
PROGRAMS = [b for b in BLOCKS if b.kind == "program"]
# Runs the block with anyio.run pinned to one backend.
_RUNNER = (
    "import anyio, functools, runpy, sys; "
    "anyio.run = functools.partial(anyio.run, backend=sys.argv[2]); "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)


def _cases() -> list[tuple[Block, str]]:
    cases: list[tuple[Block, str]] = []
    for block in PROGRAMS:
        backends = ["asyncio", "trio"] if "anyio.run(" in block.code else ["asyncio"]
        cases.extend((block, backend) for backend in backends)
    return cases


def run_program(block: Block, backend: str, tmp_path: Path, env: dict[str, str]) -> str:
    """Run ``block`` as a file in ``tmp_path``; fail with its output unless it exits 0."""
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _RUNNER, str(script), backend],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=tmp_path,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id} did not exit within {TIMEOUT} s")
    details = f"{block.id}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, details
    assert "Traceback" not in result.stderr, details
    return result.stdout


def test_every_page_is_found() -> None:
    found = pages()
    assert "README.md" in found
    assert "docs/quickstart.md" in found
    assert len(BLOCKS) > 50


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_every_block_has_a_known_kind(block: Block) -> None:
    assert block.kind != "unknown", f"{block.id}: fence language {block.lang!r} is not checked"


def test_pages_checked_elsewhere_exist() -> None:
    for page, test in ELSEWHERE.items():
        assert blocks(page), page
        assert (ROOT / test).is_file(), test


@pytest.mark.parametrize(("block", "backend"), _cases(), ids=[f"{b.id}-{k}" for b, k in _cases()])
def test_program_runs(block: Block, backend: str, tmp_path: Path) -> None:
    run_program(block, backend, tmp_path, {})


INCLUDES = [b for b in BLOCKS if b.kind == "include"]


@pytest.mark.parametrize("block", INCLUDES, ids=[b.id for b in INCLUDES])
def test_included_file_is_run_by_its_test(block: Block) -> None:
    from tests.integration.test_examples import EXPECTED as EXAMPLES
    from tests.integration.test_yjs_docs import EXPECTED as SNIPPETS

    for path in block.includes:
        assert (ROOT / path).is_file(), f"{block.id}: {path} is missing"
        name = Path(path).name
        if path.startswith("examples/"):
            assert name in EXAMPLES, f"{block.id}: {path} is not run by test_examples.py"
        elif path.startswith("docs/snippets/"):
            assert name in SNIPPETS, f"{block.id}: {path} is not run by test_yjs_docs.py"
        else:
            assert block.lang not in ("python", *("bash", "sh")), f"{block.id}: {path}"


DATA = [b for b in BLOCKS if b.kind == "data"]


@pytest.mark.parametrize("block", DATA, ids=[b.id for b in DATA])
def test_data_block_parses(block: Block) -> None:
    if block.lang == "json":
        import json

        json.loads(block.code)
    elif block.lang == "toml":
        tomllib.loads(block.code)
    else:
        list(yaml.safe_load_all(block.code))


SHELL = [b for b in BLOCKS if b.kind == "shell"]
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS = set(_PYPROJECT["project"]["optional-dependencies"])
# Programs a shell block may name that this machine need not have installed.
SERVERS = {"redis-server", "nats-server", "docker", "kubectl", "uvicorn", "gunicorn"}


def _commands(code: str) -> list[list[str]]:
    text = code.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            found.append(shlex.split(line.removeprefix("$ ")))
    return found


def _podshare_subcommands() -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "podshare", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    return {word.strip("{},") for word in result.stdout.split() if word.strip("{},")}


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_names_real_commands(block: Block) -> None:
    for argv in _commands(block.code):
        program = argv[0]
        if program == "pip" and argv[1:2] == ["install"]:
            for arg in argv[2:]:
                if arg.startswith("podshare["):
                    extras = arg.removeprefix("podshare[").rstrip("]").split(",")
                    assert set(extras) <= EXTRAS, f"{block.id}: unknown extra in {arg}"
        elif program == "python" and argv[1:3] == ["-m", "podshare"]:
            words = [a for a in argv[3:] if not a.startswith("-")]
            assert words, f"{block.id}: {argv}"
            assert set(words) & _podshare_subcommands(), f"{block.id}: {shlex.join(argv)}"
        elif program.endswith("python") and "/" in program:  # a venv's python
            script = next((a for a in argv[1:] if a.endswith(".py")), None)
            assert script is None or (ROOT / script).is_file(), f"{block.id}: {script}?"
        elif program == "python":
            script = next((a for a in argv[1:] if a.endswith(".py")), None)
            if script is not None and "/" in script:
                assert (ROOT / script).is_file(), f"{block.id}: {script} does not exist"
        else:
            assert program in SERVERS or shutil.which(program), f"{block.id}: {program}?"
