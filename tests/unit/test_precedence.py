"""A static guard against operator-precedence slips such as ``value or 0 >= 2`` (which
reads ``value or (0 >= 2)``), in the agent and in its tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for root in ("hiw_monitor", "tests", "bench") for p in
                 (REPO / root).rglob("*.py"))


def slips(tree: ast.AST) -> list[str]:
    """Comparisons that start with two constants (``0 >= 2``): what is left of
    ``value or 0 >= 2`` once Python has bound ``>=`` tighter than ``or``."""
    return [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant)
            and isinstance(node.comparators[0], ast.Constant)]


def test_the_guard_sees_the_slip():
    assert slips(ast.parse("f(lambda: value() or 0 >= 2)"))
    assert not slips(ast.parse("f(lambda: (value() or 0) >= 2)"))
    assert not slips(ast.parse("ok = p.isdigit() and 0 < int(p) < 65536"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_precedence_slips(path):
    assert slips(ast.parse(path.read_text(encoding="utf-8"))) == []
