"""The public API is exactly what ``__all__`` says, in ``ratelimit`` and in each public module."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import ratelimit

PUBLIC_MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(ratelimit.__path__, "ratelimit.")
    if not any(part.startswith("_") for part in m.name.split("."))
)


def test_ratelimit_exports_exactly_its_all() -> None:
    """Every public name of ``ratelimit`` is in ``__all__``, and ``__all__`` names only those."""
    exported = {
        name
        for name, value in vars(ratelimit).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"  # from __future__ import annotations
    }
    assert exported == set(ratelimit.__all__)


def test_the_names_users_and_docs_use_are_at_the_top() -> None:
    """Limiter, Decision, Rule, RequestInfo, Enforcer... come from ``ratelimit`` itself."""
    for name in (
        "Limiter",
        "Decision",
        "LimitStatus",
        "Rate",
        "Rule",
        "RequestInfo",
        "Enforcer",
        "BackendError",
    ):
        assert name in ratelimit.__all__, name


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_declare_what_they_export(name: str) -> None:
    """A public module has an ``__all__``, and each name in it exists there."""
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_no_module_imports_another_modules_private_names() -> None:
    """Private names stay in their module: nobody imports ``_x`` from another module of the package."""
    import ast
    from pathlib import Path

    root = Path(ratelimit.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("ratelimit")
            ):
                found += [
                    f"{path.relative_to(root)}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found
