"""Docstrings under podshare/ are Markdown for mkdocstrings: no Sphinx roles, no reST ``::``.

The reference is rendered by mkdocstrings, which shows ``:class:`X``` as it is written;
cross-references are ``[`X`][podshare.X]`` (a public path the reference renders) and
examples are fenced blocks.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "podshare"
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|data|mod|obj|const):`[^`]*`")
LITERAL_BLOCK = re.compile(r"::[ \t]*\n[ \t]*\n[ \t]+\S")


def docstrings(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of every string statement in ``path``: docstrings of modules,
    classes and functions, and attribute docstrings."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            yield node.lineno, node.value.value


FILES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_found() -> None:
    assert len(FILES) > 20


@pytest.mark.parametrize("pattern", [ROLE, LITERAL_BLOCK], ids=["sphinx-role", "rest-literal"])
def test_no_sphinx_markup_in_docstrings(pattern: re.Pattern[str]) -> None:
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {match[0]!r}"
        for path in FILES
        for line, text in docstrings(path)
        for match in pattern.finditer(text)
    ]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "text",
    [
        "See :class:`~podshare.transport.Transport`.",
        "Call :meth:`Store.set` first.",
        "Example::\n\n    x = 1\n",
    ],
)
def test_the_patterns_catch_sphinx_markup(text: str) -> None:
    assert ROLE.search(text) or LITERAL_BLOCK.search(text)
