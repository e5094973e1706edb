"""A griffe extension: the reST habits of the package's docstrings, as Markdown.

The docstrings are Google style ("Args:", "Returns:", "Raises:"), which mkdocstrings
parses, with two reST habits that Markdown would print as they are:

- roles, ``:class:`~ratelimit.rules.Rule``` or ``:meth:`refund```: they become
  autorefs cross-references, resolved in the scope of the object whose docstring
  names them (so a bare ``refund`` in a method of ``Limiter`` links to
  ``Limiter.refund``). A target in a private module is not in the reference, so it is
  shown as code rather than as a link that could not resolve.
- literal blocks, a paragraph ending in ``::`` followed by an indented block (and
  the indented doctest or code blocks of module docstrings): they become fenced
  blocks, highlighted as Python when they parse as Python.

And two habits of their own: a page named by its path (``see docs/concepts.md``)
becomes a link to that page of the site; parameters that share a description are
listed together (``cost, methods, shadow: as for Rule.of``), and each gets its own row
here, so that the parameter table names every parameter and griffe can check them
against the signature.

Loaded by mkdocstrings from mkdocs.yml (``extensions: [docs/_ext/rst_docstrings.py]``);
the package's source is never changed.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import griffe
import markdown

_ROLE = re.compile(r":(?:py:)?(?P<role>class|meth|func|mod|attr|data|exc|obj|const):`(?P<target>[^`]+)`")
_CALLABLE_ROLES = frozenset({"meth", "func"})
# A line that opens a Google-style section ("Args:", "Raises:"): what follows it is the
# section's body, not a literal block.
_SECTION = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_PARAMETERS = re.compile(r"^\s*(?:Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_PAGE = re.compile(r"(?<![`\w/])docs/(?P<page>[\w/-]+\.md)(?:#(?P<anchor>[\w-]+))?")
_DOCS = Path(__file__).resolve().parent.parent
_CODE_SPAN = re.compile(r"(`+[^`]*`+)")
_GROUPED = re.compile(r"^(?P<indent>\s*)(?P<names>\w+(?:\s*[,/]\s*\w+)+)\s*:(?P<text>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_private(path: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in path.split("."))


class RstDocstrings(griffe.Extension):
    """Rewrites every docstring of the loaded package once it is fully loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Convert the docstrings of ``pkg`` and of everything it contains."""
        by_name: dict[str, set[str]] = {}
        objects = list(_walk(pkg))
        for obj in objects:
            if not _is_private(obj.path):
                by_name.setdefault(obj.name, set()).add(obj.path)
        for obj in objects:
            if obj.docstring is None:
                continue
            text = _ROLE.sub(functools.partial(_reference, obj, by_name=by_name), obj.docstring.value)
            text = _fence_literal_blocks(_split_grouped_parameters(text))
            obj.docstring.value = _outside_code(text, lambda prose: _PAGE.sub(_page_link, prose))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and everything defined in it (an imported name is converted where it lives)."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _walk(member)


def _resolve(obj: griffe.Object, target: str, by_name: dict[str, set[str]]) -> str | None:
    """The full path ``target`` names in ``obj``'s scope, or None."""
    if target.startswith("ratelimit"):
        return target
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            found = scope.resolve(head)
        except griffe.NameResolutionError:
            scope = scope.parent
            continue
        return f"{found}.{rest}" if rest else found
    # Named without being imported where the docstring lives (``client_ip`` in the ASGI
    # middleware): a public object of that name, if there is exactly one.
    candidates = by_name.get(head, set())
    if len(candidates) == 1:
        (found,) = candidates
        return f"{found}.{rest}" if rest else found
    return None


def _reference(obj: griffe.Object, match: re.Match[str], *, by_name: dict[str, set[str]]) -> str:
    role, target = match["role"], match["target"].strip()
    short = target.startswith("~")
    target = target.lstrip("~")
    shown = target.rsplit(".", 1)[-1] if short else target
    if role in _CALLABLE_ROLES:
        shown += "()"
    path = _resolve(obj, target, by_name)
    if path is None or _is_private(path):
        return f"`{shown}`"
    return f"[`{shown}`][{path}]"


def _split_grouped_parameters(text: str) -> str:
    """``a, b: text`` in an "Args:" section becomes ``a: text`` and ``b: text``."""
    lines = text.splitlines()
    out: list[str] = []
    section: int | None = None  # the indent of the "Args:" line we are in, if any
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.strip() and section is not None and _indent(line) <= section:
            section = None
        if _PARAMETERS.match(line):
            section = _indent(line)
            out.append(line)
            continue
        grouped = _GROUPED.match(line) if section is not None else None
        if grouped is None:
            out.append(line)
            continue
        continuation = []
        while i < len(lines) and lines[i].strip() and _indent(lines[i]) > _indent(line):
            continuation.append(lines[i])
            i += 1
        for name in re.split(r"\s*[,/]\s*", grouped["names"]):
            out.append(f"{grouped['indent']}{name}:{grouped['text']}")
            out.extend(continuation)
    return "\n".join(out)


def _outside_code(text: str, convert: Callable[[str], str]) -> str:
    """``text`` with ``convert`` applied to its prose only: not in code blocks or spans."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            parts = _CODE_SPAN.split(line)
            line = "".join(convert(part) if i % 2 == 0 else part for i, part in enumerate(parts))
        out.append(line)
    return "\n".join(out)


@functools.cache
def _title_anchor(page: str) -> str | None:
    """The id of the page's first heading, which autorefs can link to from any page."""
    path = _DOCS / page
    if not path.is_file():
        return None
    md = markdown.Markdown(extensions=["toc"])
    md.convert(next((line for line in path.read_text("utf-8").splitlines() if line.startswith("#")), ""))
    tokens = md.toc_tokens
    return str(tokens[0]["id"]) if tokens else None


def _page_link(match: re.Match[str]) -> str:
    anchor = match["anchor"] or _title_anchor(match["page"])
    return match[0] if anchor is None else f"[{match[0]}][{anchor}]"


def _language(code: str) -> str:
    if code.lstrip().startswith(">>>"):
        return "pycon"
    try:
        ast.parse(code)
    except SyntaxError:
        return "text"
    return "python"


def _fence_literal_blocks(text: str) -> str:
    """Fence reST literal blocks and top-level indented code blocks."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        literal = line.rstrip().endswith("::")
        base = _indent(line)
        if literal:
            stripped = line.rstrip()[:-2].rstrip()
            if stripped.strip():
                out.append(stripped + ("" if stripped.endswith(":") else ":"))
        elif (
            i > 0
            and not line.strip()
            and base == 0
            and out
            and out[-1].strip()
            and _indent(out[-1]) == 0
            and not _SECTION.match(out[-1])
            and i + 1 < len(lines)
            and _indent(lines[i + 1]) >= 4
            and lines[i + 1].strip()
        ):
            # A blank line, then an indented block after a top-level paragraph: in reST
            # and in Markdown alike, code. Fence it to get it highlighted.
            literal, base = True, 0
            out.append("")
        else:
            out.append(line)
        i += 1
        if not literal:
            continue
        start = i
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            i += 1
        block = lines[start:i]
        while block and not block[-1].strip():
            block.pop()
        trailing = i - start - len(block)
        code = textwrap.dedent("\n".join(block)).strip("\n")
        if not code:
            continue
        pad = " " * base
        out.append("")
        out.append(f"{pad}```{_language(code)}")
        out.extend(f"{pad}{row}" if row else "" for row in code.splitlines())
        out.append(f"{pad}```")
        out.extend([""] * trailing)
    return "\n".join(out)
