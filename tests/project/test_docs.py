"""The documentation site: it builds in strict mode with its theme and plugins, the nav has
every page, links resolve, and the Python examples in the pages are valid Python.

tests/project/test_api_reference.py checks the generated API reference.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import markdown
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))

# Blocks fenced as ```python that show a call signature, not code (a bare `*`, annotated
# parameters). Keyed by page and first line; the test fails if one disappears or starts
# compiling, so this list cannot outlive its reason. (The API reference shows signatures
# generated from the code now, so none is left.)
SIGNATURE_BLOCKS: set[tuple[str, str]] = set()

# What the site promises its readers: Material's navigation, code copy buttons and linked
# tabs; highlighted code, tabs, admonitions and Mermaid diagrams in the pages.
THEME_FEATURES = {
    "navigation.instant",
    "navigation.sections",
    "navigation.top",
    "search.suggest",
    "content.code.copy",
    "content.tabs.link",
}
EXTENSIONS = {
    "toc",
    "admonition",
    "pymdownx.details",
    "pymdownx.highlight",
    "pymdownx.inlinehilite",
    "pymdownx.snippets",
    "pymdownx.superfences",
    "pymdownx.tabbed",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n]*)$", re.M)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_SNIPPET = re.compile(r'^[ \t]*--8<--[ \t]+"([^"]+)"[ \t]*$', re.M)


class _MkDocsLoader(yaml.SafeLoader):
    """mkdocs.yml's YAML: safe, plus the ``!!python/name:`` tags mkdocs itself accepts."""


def _python_name(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    module, _, name = suffix.rpartition(".")
    return getattr(importlib.import_module(module), name)


_MkDocsLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", _python_name)


def _blocks(text: str) -> Iterator[tuple[int, str, str, tuple[int, int]]]:
    """(line, info string, dedented code, span in ``text``) of every fenced block."""
    pos = 0
    while (opening := _FENCE.search(text, pos)) is not None:
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence)}[ \t]*$", re.M)
        line = text.count("\n", 0, opening.start()) + 1
        end = closing.search(text, opening.end())
        assert end is not None, f"unclosed code block at line {line}"
        body = text[opening.end() + 1 : end.start()]
        code = "\n".join(ln[len(indent) :] if ln.startswith(indent) else ln for ln in body.splitlines())
        yield line, opening["info"].strip(), code, (opening.start(), end.end())
        pos = end.end()


def _with_snippets(code: str) -> str:
    """``code`` with its ``--8<-- "file"`` lines replaced by the files (as mkdocs does)."""
    return _SNIPPET.sub(lambda m: (ROOT / m[1]).read_text(encoding="utf-8"), code)


def _prose(text: str) -> str:
    """The page without fenced blocks and inline code (where link syntax is not a link)."""
    kept, pos = [], 0
    for _, _, _, (start, end) in _blocks(text):
        kept.append(text[pos:start])
        pos = end
    kept.append(text[pos:])
    return _INLINE_CODE.sub("", "".join(kept))


def _nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


@cache
def _config() -> dict[str, Any]:
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_MkDocsLoader)


def _extensions() -> dict[str, dict[str, Any]]:
    """The Markdown extensions of mkdocs.yml, with their settings."""
    found: dict[str, dict[str, Any]] = {}
    for entry in _config()["markdown_extensions"]:
        name, options = next(iter(entry.items())) if isinstance(entry, dict) else (entry, None)
        found[name] = dict(options or {})
    return found


@cache
def _anchors(page: str) -> frozenset[str]:
    """The heading ids Python-Markdown's toc gives ``page`` (what mkdocs links to)."""
    configs = _extensions()
    if "pymdownx.snippets" in configs:  # its base_path is relative to the repository
        configs["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    md = markdown.Markdown(extensions=list(configs), extension_configs=configs)
    md.convert((DOCS / page).read_text(encoding="utf-8"))
    found: set[str] = set()
    tokens = list(md.toc_tokens)  # type: ignore[attr-defined]
    while tokens:
        token = tokens.pop()
        found.add(token["id"])
        tokens.extend(token["children"])
    return frozenset(found)


def _links(page: str) -> Iterator[str]:
    yield from _LINK.findall(_prose((DOCS / page).read_text(encoding="utf-8")))


def test_mkdocs_yml_uses_material_and_mkdocstrings() -> None:
    """Material with light and dark palettes, highlighting, tabs, Mermaid, and mkdocstrings (Google style)."""
    config = _config()
    assert config["docs_dir"] == "docs"
    theme = config["theme"]
    assert theme["name"] == "material"
    assert set(theme["features"]) >= THEME_FEATURES, sorted(THEME_FEATURES - set(theme["features"]))
    assert {p.get("scheme") for p in theme["palette"]} >= {"default", "slate"}
    extensions = _extensions()
    assert set(extensions) >= EXTENSIONS, sorted(EXTENSIONS - set(extensions))
    assert "fenced_code" not in extensions, "superfences replaces fenced_code; both break fences"
    assert extensions["toc"]["permalink"]
    assert extensions["pymdownx.tabbed"]["alternate_style"]
    fences = {f["name"]: f for f in extensions["pymdownx.superfences"]["custom_fences"]}
    assert fences["mermaid"]["class"] == "mermaid"
    plugins = {next(iter(p)) if isinstance(p, dict) else p: p for p in config["plugins"]}
    assert {"search", "mkdocstrings"} <= set(plugins)
    python = plugins["mkdocstrings"]["mkdocstrings"]["handlers"]["python"]
    assert python["options"]["docstring_style"] == "google"


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    """Each docs/*.md is reachable from the nav, once; the nav names no missing page."""
    nav = list(_nav_pages(_config()["nav"]))
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert sorted(nav) == PAGES, (
        f"not in nav: {sorted(set(PAGES) - set(nav))}; missing: {sorted(set(nav) - set(PAGES))}"
    )
    assert nav[0] == "index.md"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    """Links to pages (and their #anchors) resolve; links out of docs/ name a repository file."""
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("//"):
            continue  # an external URL
        assert not link.startswith("/"), f"{page}: absolute link {link!r} (make it relative)"
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in _anchors(page), f"{page}: no heading #{anchor} on this page"
            continue
        target = (DOCS / page).parent.joinpath(path).resolve()
        assert target.is_relative_to(ROOT), f"{page}: {link!r} leaves the repository"
        assert target.exists(), f"{page}: {link!r} points to nothing ({target.relative_to(ROOT)})"
        if target.is_relative_to(DOCS) and target.suffix == ".md" and anchor:
            name = target.relative_to(DOCS).as_posix()
            assert anchor in _anchors(name), f"{page}: {name} has no heading #{anchor}"


@pytest.mark.parametrize("page", PAGES)
def test_python_examples_compile(page: str) -> None:
    """Every ```python block on the page is valid Python (top-level await allowed)."""
    text = (DOCS / page).read_text(encoding="utf-8")
    for line, info, code, _ in _blocks(text):
        if info.split()[:1] not in (["python"], ["py"]):
            continue
        first = code.splitlines()[0] if code else ""
        code = _with_snippets(code)
        where = f"{page}:{line}"
        if (page, first) in SIGNATURE_BLOCKS:
            with pytest.raises(SyntaxError):
                compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            continue
        compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_signature_blocks_still_exist() -> None:
    """Each SIGNATURE_BLOCKS entry names a block that is still in the docs."""
    present = {
        (page, code.splitlines()[0])
        for page in PAGES
        for _, info, code, _ in _blocks((DOCS / page).read_text(encoding="utf-8"))
        if info.startswith("python") and code
    }
    assert present >= SIGNATURE_BLOCKS, sorted(SIGNATURE_BLOCKS - present)


def test_site_builds_in_strict_mode(built_site: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """`mkdocs build --strict` writes every page, with its tabs and diagrams, and the Grafana dashboard."""
    site, done = built_site
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    for page in PAGES:
        stem = page[: -len(".md")]
        built = site / ("index.html" if stem == "index" else f"{stem}/index.html")
        assert built.is_file(), f"{page} was not built"
    assert (site / "grafana" / "ratelimit-dashboard.json").is_file()
    assert not (site / "_ext").exists(), "the griffe extension was published as a page asset"
    # Material renders tabs and hands Mermaid fences to its diagram loader untouched.
    quickstart = (site / "quickstart" / "index.html").read_text(encoding="utf-8")
    assert 'class="tabbed-set tabbed-alternate"' in quickstart
    architecture = (site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert architecture.count('<pre class="mermaid"><code>') >= 2
    assert 'class="doc doc-heading"' in (site / "api" / "limiter" / "index.html").read_text(encoding="utf-8")
    # Links out of docs/ (to examples/, bench/) are reported at INFO level by the
    # mkdocs.yml validation settings; any other unresolved link must not hide there.
    for source, link in re.findall(
        r"Doc file '([^']+)' contains (?:a|an unrecognized relative) link '([^']+)'", log
    ):
        target = (DOCS / source).parent.joinpath(link.partition("#")[0]).resolve()
        assert not target.is_relative_to(DOCS), f"{source}: unresolved link {link!r}"
        assert target.exists(), f"{source}: {link!r} points to nothing"
