"""The sdist and the wheel hold what they should, and nothing else (no caches).

Both are built with hatchling's own API (the build backend pyproject.toml names), from a
copy of the tracked files into which the test plants the caches a working tree gathers
(``.hypothesis/examples``, ``__pycache__``, ``node_modules``, ``.cache``), with no
``.gitignore``, so only pyproject.toml's own rules can keep them out.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from podshare import __version__

ROOT = Path(__file__).resolve().parents[2]
# What the sdist carries: the package, and what its tests, docs and benchmarks need.
SDIST_ROOTS = ("podshare/", "tests/", "examples/", "benchmarks/", "docs/", "scripts/")
SDIST_FILES = ("mkdocs.yml", "README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml")
PLANTED = (
    ".hypothesis/examples/0123/abcd",
    "examples/__pycache__/basic.cpython-311.pyc",
    "podshare/__pycache__/__init__.cpython-311.pyc",
    "tests/integration/ynode/node_modules/yjs/index.js",
    "tests/integration/ynode/.cache/blob",
    "docs/.cache/page",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """``(copy, tracked)``: the tracked files copied to a fresh folder, caches planted."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"],  # noqa: S607 - git from PATH
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    tracked = [name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    copy = tmp_path_factory.mktemp("project")
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    (copy / ".gitignore").unlink(missing_ok=True)
    for name in PLANTED:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(b"cache")
    return copy, tracked


def _build(project: Path, target: str, out: Path) -> Path:
    try:
        import hatchling  # noqa: F401 - only whether it is installed
    except ModuleNotFoundError:
        reason = "hatchling is not installed (the test extra installs it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}; CI must check the packages")
        pytest.skip(reason)
    from hatchling.builders.sdist import SdistBuilder
    from hatchling.builders.wheel import WheelBuilder

    if target == "sdist":
        artifacts = list(
            SdistBuilder(str(project)).build(directory=str(out), versions=["standard"])
        )
    else:
        artifacts = list(
            WheelBuilder(str(project)).build(directory=str(out), versions=["standard"])
        )
    assert len(artifacts) == 1, artifacts
    return Path(artifacts[0])


def test_sdist_holds_the_tracked_sources_docs_and_benchmarks_only(
    project: tuple[Path, list[str]], tmp_path: Path
) -> None:
    copy, tracked = project
    sdist = _build(copy, "sdist", tmp_path)
    top = f"podshare-{__version__}/"
    with tarfile.open(sdist) as archive:
        names = {m.name.removeprefix(top) for m in archive.getmembers() if m.isfile()}
    expected = {name for name in tracked if name.startswith(SDIST_ROOTS) or name in SDIST_FILES} | {
        "PKG-INFO"
    }
    assert names - expected == set(), "in the sdist but not expected"
    assert expected - names == set(), "expected but missing from the sdist"
    for needed in ("mkdocs.yml", "benchmarks/RESULTS.md", "docs/cli.md", "examples/ws_routing.py"):
        assert needed in names


def test_wheel_holds_the_package_only(project: tuple[Path, list[str]], tmp_path: Path) -> None:
    copy, tracked = project
    wheel = _build(copy, "wheel", tmp_path)
    dist_info = f"podshare-{__version__}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(dist_info + "METADATA"))
    package = {name for name in names if not name.startswith(dist_info)}
    assert package == {name for name in tracked if name.startswith("podshare/")}
    assert "podshare/py.typed" in package
    extras = set(metadata.get_all("Provides-Extra") or [])
    assert {"yjs", "testing", "examples", "redis", "nats"} <= extras
    requires = [r.replace("'", '"') for r in metadata.get_all("Requires-Dist") or []]
    assert any(r.startswith("hypothesis") and 'extra == "testing"' in r for r in requires)
    assert any(r.startswith("websockets") and 'extra == "examples"' in r for r in requires)
    assert not any(r.startswith("hypothesis") and "extra" not in r for r in requires)
