"""The API reference: every public name has a docstring and a place in the generated pages.

Public means: named in the ``__all__`` of a module none of whose dotted parts starts
with ``_``. The reference (docs/api/*.md, rendered by mkdocstrings) shows each public
object once, under whichever public path reads best (``ratelimit.Limiter``, not
``ratelimit.limiter.Limiter``), so a name counts as documented when the object it
names has a heading in the built pages under any path.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parents[2]
API_PAGES = ("api.md", "api")  # under docs/: the overview and the generated pages

# The heading mkdocstrings gives each object it renders: <h2 id="ratelimit.asgi.RateLimit" ...>.
_OBJECT_HEADING = re.compile(r'<h[1-6] id="(ratelimit(?:\.\w+)*)"')


@cache
def _package() -> griffe.Module:
    """The package as griffe reads it from this checkout (what mkdocstrings renders)."""
    package = griffe.load("ratelimit", search_paths=[str(ROOT)], docstring_parser="google")
    assert isinstance(package, griffe.Module)
    return package


def _public_modules(module: griffe.Module) -> Iterator[griffe.Module]:
    yield module
    for name, member in sorted(module.modules.items()):
        if not name.startswith("_"):
            yield from _public_modules(member)


def _public_names() -> list[tuple[str, str]]:
    """(module path, name) for every name in a public module's ``__all__``."""
    return [
        (module.path, name) for module in _public_modules(_package()) for name in sorted(module.exports or ())
    ]


def _member(module_path: str, name: str) -> griffe.Object | griffe.Alias:
    package = _package()
    module = package if module_path == package.path else package[module_path[len("ratelimit.") :]]
    return module[name]


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    """What an imported name finally stands for."""
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def _documented(obj: griffe.Object) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())


def test_every_public_module_declares_all() -> None:
    """Each public module lists its public names in ``__all__``, and each of them exists."""
    modules = list(_public_modules(_package()))
    assert {"ratelimit", "ratelimit.asgi", "ratelimit.backends.redis"} <= {m.path for m in modules}
    for module in modules:
        assert module.exports is not None, f"{module.path} has no __all__"
        for name in module.exports:
            assert name in module.members, f"{module.path}.__all__ names {name!r}, which it lacks"


def test_every_public_module_and_name_has_a_docstring() -> None:
    """Public modules, and every name in their ``__all__``, have a docstring."""
    missing = [module.path for module in _public_modules(_package()) if not _documented(module)]
    for module_path, name in _public_names():
        if not _documented(_target(_member(module_path, name))):
            missing.append(f"{module_path}.{name}")
    assert not missing, "no docstring: " + ", ".join(missing)


def test_every_public_method_has_a_docstring() -> None:
    """The methods and properties of public classes have a docstring (not inherited ones)."""
    missing = []
    seen: set[str] = set()
    for module_path, name in _public_names():
        obj = _target(_member(module_path, name))
        if not obj.is_class or obj.path in seen:
            continue
        seen.add(obj.path)
        for member_name, member in obj.members.items():
            if member_name.startswith("_") or isinstance(member, griffe.Alias):
                continue
            if (member.is_function or "property" in member.labels) and not _documented(member):
                missing.append(member.path)
    assert not missing, "no docstring: " + ", ".join(sorted(missing))


def _canonical(path: str) -> str | None:
    """The path of the object ``path`` finally names, or None if it names nothing."""
    try:
        obj = _package() if path == "ratelimit" else _package()[path[len("ratelimit.") :]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return _target(obj).path


@pytest.fixture(scope="module")
def reference_headings(built_site: tuple[Path, subprocess.CompletedProcess[str]]) -> frozenset[str]:
    """The objects with a heading in the built reference, by canonical path."""
    site, done = built_site
    assert done.returncode == 0, "mkdocs build --strict failed:\n" + done.stdout + done.stderr
    pages = [site / API_PAGES[0].removesuffix(".md") / "index.html"]
    pages += sorted((site / API_PAGES[1]).rglob("*.html"))
    headings = {found for page in pages for found in _OBJECT_HEADING.findall(page.read_text("utf-8"))}
    assert "ratelimit.Limiter" in headings, "the reference was not rendered"
    return frozenset(filter(None, map(_canonical, headings)))


def test_every_public_name_is_in_the_reference(reference_headings: frozenset[str]) -> None:
    """Each name of each public ``__all__`` has a heading in the generated API pages."""
    absent = [
        f"{module_path}.{name}"
        for module_path, name in _public_names()
        if _target(_member(module_path, name)).path not in reference_headings
    ]
    # mkdocs.yml renders only documented objects: a name without a docstring is absent too.
    assert not absent, "no heading in docs/api.md or docs/api/*.md: " + ", ".join(absent)
