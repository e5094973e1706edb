"""YAML that remembers where each value came from, so config errors can name the line.

Mappings load as :class:`Located` dicts and sequences as located lists: each knows the
line and column of every key and item. Duplicate keys are an error (PyYAML would keep
the last one silently). Needs PyYAML (the ``yaml`` extra).
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocatedDict", "LocatedList", "YAMLError", "load_documents", "position"]


class YAMLError(ValueError):
    """The text is not YAML (the message has the line and column)."""


class LocatedDict(dict[Any, Any]):
    """A mapping plus ``lines``: key -> (line, column), 1-based; ``at`` is where it starts."""

    lines: dict[Any, tuple[int, int]]
    at: tuple[int, int]


class LocatedList(list[Any]):
    """A sequence plus ``lines``: index -> (line, column), 1-based; ``at`` is where it starts."""

    lines: list[tuple[int, int]]
    at: tuple[int, int]


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ImportError(
            "reading config files needs PyYAML: pip install 'ambient-ratelimit[yaml]'"
        ) from None
    return yaml


def _loader_class() -> Any:
    yaml = _import_yaml()

    def mark(node: Any) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    class Loader(yaml.SafeLoader):  # type: ignore[misc,name-defined]
        def construct_mapping(self, node: Any, deep: bool = False) -> LocatedDict:
            self.flatten_mapping(node)
            out = LocatedDict()
            out.lines, out.at = {}, mark(node)
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a plain value", key_node.start_mark
                    ) from None
                if key in out:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                out[key] = self.construct_object(value_node, deep=True)
                out.lines[key] = mark(key_node)
            return out

        def construct_sequence(self, node: Any, deep: bool = False) -> LocatedList:
            out = LocatedList(self.construct_object(child, deep=True) for child in node.value)
            out.lines, out.at = [mark(child) for child in node.value], mark(node)
            return out

    Loader.add_constructor("tag:yaml.org,2002:map", Loader.construct_mapping)
    Loader.add_constructor("tag:yaml.org,2002:seq", Loader.construct_sequence)
    return Loader


def load_documents(text: str) -> list[Any]:
    """Every YAML document in ``text``, with positions (empty documents are skipped)."""
    yaml = _import_yaml()
    try:
        docs = list(yaml.load_all(text, Loader=_loader_class()))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YAMLError(f"{where}not valid YAML: {problem}") from None
    return [d for d in docs if d is not None]


def position(container: Any, key: Any) -> tuple[int, int] | None:
    """Where ``container[key]`` is written, if known."""
    lines = getattr(container, "lines", None)
    at: tuple[int, int] | None = getattr(container, "at", None)
    if isinstance(lines, dict):
        found: tuple[int, int] | None = lines.get(key)
        return found or at
    if isinstance(lines, list) and isinstance(key, int) and 0 <= key < len(lines):
        return lines[key]  # type: ignore[no-any-return]
    return at
