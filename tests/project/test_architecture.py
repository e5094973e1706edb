"""The package's import graph: no circles, and imports that point down the layers only.

The layers (docs/architecture.md), bottom to top; a module may import its own layer and
the ones below. Imports inside functions count (a lazy import is still a dependency);
imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ratelimit"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # core: no I/O. Rates, the window twin of the Lua, keyspace, plans, decisions, the
    # document reader with its YAML positions; and the public request model and rule set.
    ("core", ("_core", "request", "ruleset")),
    ("backends", ("backends",)),
    ("engine", ("_engine",)),
    (
        "policy",
        (
            "_policy",
            "rules",
            "matchers",
            "envoy",
            "headers",
            "enforce",
            "keys",
            "metrics",
            "context",
            "decorators",
        ),
    ),
    ("config", ("_config", "config")),
    ("limiter", ("limiter", "")),  # "" is the package itself (ratelimit/__init__.py)
    # serve: the envoyproxy/ratelimit gRPC service, an adapter of Envoy's requests to the limiter.
    ("adapters", ("asgi", "wsgi", "grpc", "flask", "django", "testing", "serve")),
    ("cli", ("_cli", "migrate", "__main__")),
]
"""Layer name and the modules in it (names relative to ``ratelimit``; a package covers its modules)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> Iterator[str]:
    """The package's modules that ``name`` imports (at module level or in functions)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []

    def known(target: str) -> str | None:
        while target not in MODULES and target:
            target = target.rpartition(".")[0]
        return target if target in MODULES else None

    def walk(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = [p for p in package[: len(package) - (child.level - 1)] if p]
                    stem = ".".join([*base, *([child.module] if child.module else [])])
                elif child.module and (child.module + ".").startswith("ratelimit."):
                    stem = child.module.removeprefix("ratelimit").lstrip(".")
                else:
                    continue
                for alias in child.names:
                    sub = f"{stem}.{alias.name}" if stem else alias.name
                    found = known(sub) if sub in MODULES else known(stem)
                    if found is not None and found != name:
                        yield found
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if (alias.name + ".").startswith("ratelimit."):
                        found = known(alias.name.removeprefix("ratelimit").lstrip("."))
                        if found is not None and found != name:
                            yield found
            else:
                yield from walk(child)

    yield from walk(ast.parse(path.read_text(encoding="utf-8")))


GRAPH = {name: set(_imports(name)) for name in MODULES}


def layer_of(name: str) -> int:
    """The index of ``name``'s layer (the longest matching entry wins)."""
    best: tuple[int, int] | None = None
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            inside = name == member or (member and name.startswith(member + "."))
            if inside and (best is None or len(member) > best[1]):
                best = (index, len(member))
    if best is None:
        raise AssertionError(f"ratelimit.{name} is in no layer: add it to LAYERS in {__file__}")
    return best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    """No module imports, directly or through others, a module that imports it back."""
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n or "ratelimit")
def test_imports_point_down_the_layers(name: str) -> None:
    """A module imports only modules of its own layer or of the layers below it."""
    mine = layer_of(name)
    up = sorted(f"ratelimit.{d} ({LAYERS[layer_of(d)][0]})" for d in GRAPH[name] if layer_of(d) > mine)
    assert not up, f"ratelimit.{name} ({LAYERS[mine][0]}) imports from above: {up}"


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks are not vacuous: a made-up circle and the old limiter -> decorators edge are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layer_of("_engine.engine") < layer_of("decorators") < layer_of("limiter")
    assert "limiter" in GRAPH and "_engine.engine" in GRAPH["limiter"]
