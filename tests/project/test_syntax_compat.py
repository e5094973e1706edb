"""Syntax that only newer Pythons accept never reaches the package, checked on any interpreter.

The package claims Python >= 3.10. Neither ruff (``target-version = "py310"``) nor mypy
(``python_version = "3.10"``) reports an ``await`` inside a comprehension nested in a
plain comprehension, which Python 3.10 refuses at import time ("asynchronous
comprehension outside of an asynchronous function"); 3.11 accepted it, so a developer on
3.11+ never sees the error. The nox compat sessions run 3.10 itself; this test catches
the same class of error without it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ratelimit"
# The package, and everything else that runs on every supported Python (nox's compat
# sessions run the tests there too).
SOURCES = sorted(
    [
        *PACKAGE.rglob("*.py"),
        *(ROOT / "tests").rglob("*.py"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "bench").rglob("*.py"),
        ROOT / "noxfile.py",
    ]
)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _is_async(comp: ast.AST) -> bool:
    """The comprehension awaits in its own scope (an ``await`` or an ``async for``)."""
    assert isinstance(comp, COMPREHENSIONS)
    if any(gen.is_async for gen in comp.generators):
        return True
    # The first iterable is evaluated in the enclosing scope, so it does not count.
    parts: list[ast.AST] = [comp.generators[0].target, *comp.generators[0].ifs]
    for gen in comp.generators[1:]:
        parts += [gen.target, gen.iter, *gen.ifs]
    parts += [comp.key, comp.value] if isinstance(comp, ast.DictComp) else [comp.elt]
    stack = parts
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Await):
            return True
        if isinstance(node, (*SCOPES, *COMPREHENSIONS)):
            continue  # their awaits belong to them
        stack.extend(ast.iter_child_nodes(node))
    return False


def async_inside_sync_comprehension(tree: ast.AST) -> list[int]:
    """Line numbers of async comprehensions nested in a non-async comprehension."""
    found: list[int] = []

    def walk(node: ast.AST, in_sync_comprehension: bool) -> None:
        if isinstance(node, SCOPES):
            for child in ast.iter_child_nodes(node):
                walk(child, False)
            return
        if not isinstance(node, COMPREHENSIONS):
            for child in ast.iter_child_nodes(node):
                walk(child, in_sync_comprehension)
            return
        is_async = _is_async(node)
        if is_async and in_sync_comprehension:
            found.append(node.lineno)
        first, *rest = node.generators
        walk(first.iter, in_sync_comprehension)  # evaluated in the enclosing scope
        inner: list[ast.AST] = [first.target, *first.ifs, *rest]
        inner += [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in inner:
            walk(part, not is_async)

    walk(tree, False)
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_async_comprehension_inside_a_sync_one(path: Path) -> None:
    """No module nests an awaiting comprehension in a plain one (a SyntaxError on 3.10)."""
    lines = async_inside_sync_comprehension(ast.parse(path.read_text(encoding="utf-8")))
    assert not lines, f"{path}: lines {lines} are a SyntaxError on Python 3.10"


def test_the_check_finds_the_3_10_error() -> None:
    """The check flags the exact code that broke 3.10, and accepts its fixed forms."""
    broken = "async def f(rs, q):\n    return [[await g(k) for k in r.lookups] for r in rs]\n"
    fixed = "async def f(rs):\n    out = []\n    for r in rs:\n        out.append([await g(k) for k in r])\n"
    outer_async = "async def f(rs):\n    return [[await g(k) for k in r] async for r in rs]\n"
    first_iter = "async def f(rs):\n    return [x for x in [await g(r) for r in rs]]\n"
    assert async_inside_sync_comprehension(ast.parse(broken)) == [2]
    assert async_inside_sync_comprehension(ast.parse(fixed)) == []
    assert async_inside_sync_comprehension(ast.parse(outer_async)) == []
    assert async_inside_sync_comprehension(ast.parse(first_iter)) == []
