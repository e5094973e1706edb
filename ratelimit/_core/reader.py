"""Read a loaded YAML document field by field, collecting every error with its place.

Each error names the file, line and column, the field's path (``rules[2].limits``),
what was expected and what was found. Readers return None for a bad value so the
caller can go on and report the next error too.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .located_yaml import position

__all__ = ["Field", "Report", "parse_duration"]

T = TypeVar("T")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {
    None: 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: object) -> float:
    """Seconds from ``0.05``, ``"50ms"``, ``"2s"``, ``"1m"`` (and Go's ``us``, ``ns``); else ValueError."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("a duration like 50ms, 2s or 0.5")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration >= 0")
    return seconds


def _shown(value: object) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class Report:
    """The errors found in one file."""

    source: str
    errors: list[str] = field(default_factory=list)

    def add(self, pos: tuple[int, int] | None, path: str, message: str) -> None:
        self.errors.append(self.line(pos, path, message))

    def line(self, pos: tuple[int, int] | None, path: str, message: str) -> str:
        """``file:line:col: field: message``, as errors are written (notes use it too)."""
        where = f"{self.source}:{pos[0]}:{pos[1]}" if pos else self.source
        return f"{where}: {path or '(top level)'}: {message}"


@dataclass
class Field:
    """One value in the document, with where it is and how to report about it."""

    value: Any
    path: str
    pos: tuple[int, int] | None
    report: Report

    def fail(self, expected: str, detail: str = "") -> None:
        """Report that this value is not what was expected."""
        extra = f" ({detail})" if detail else ""
        self.report.add(self.pos, self.path, f"expected {expected}, got {_shown(self.value)}{extra}")

    def child(self, key: Any) -> Field:
        """The field at ``key`` of this mapping or list."""
        path = f"{self.path}[{key}]" if isinstance(key, int) else (f"{self.path}.{key}" if self.path else key)
        return Field(self.value[key], path, position(self.value, key) or self.pos, self.report)

    def mapping(self, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Field] | None:
        """The keys of a mapping; unknown keys and missing required ones are reported."""
        if not isinstance(self.value, Mapping):
            self.fail("a mapping")
            return None
        out: dict[str, Field] = {}
        for key in self.value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                where = position(self.value, key) or self.pos
                self.report.add(
                    where, self.path, f"unknown key {key!r} ({hint}expected one of: {', '.join(allowed)})"
                )
                continue
            out[key] = self.child(key)
        for key in required:
            if key not in self.value:
                self.report.add(self.pos, self.path, f"missing required key {key!r}")
        return out

    def entries(self) -> dict[str, Field] | None:
        """A mapping whose keys are data (claims, tiers, identities): every key, as a string."""
        if not isinstance(self.value, Mapping):
            self.fail("a mapping")
            return None
        return {str(key): self.child(key) for key in self.value}

    def items(self) -> list[Field] | None:
        """The items of a list."""
        if not isinstance(self.value, list):
            self.fail("a list")
            return None
        return [self.child(i) for i in range(len(self.value))]

    def many(self) -> list[Field]:
        """The items of a list, or this one value as a list of one."""
        return (self.items() or []) if isinstance(self.value, list) else [self]

    def string(self, pattern: re.Pattern[str] | None = None, expected: str = "a string") -> str | None:
        """A string, with ``${VAR}`` / ``${VAR:-default}`` read from the environment."""
        if isinstance(self.value, bool) or not isinstance(self.value, (str, int, float)):
            self.fail(expected)
            return None
        text = str(self.value)
        missing: list[str] = []

        def expand(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1))
            if found is None:
                if m.group(2) is None:
                    missing.append(m.group(1))
                    return ""
                return m.group(2)
            return found

        text = _ENV.sub(expand, text)
        if missing:
            self.report.add(
                self.pos, self.path, f"environment variable {missing[0]} is not set (and no :-default)"
            )
            return None
        if pattern is not None and not pattern.fullmatch(text):
            self.fail(expected)
            return None
        return text

    def choice(self, options: Sequence[str]) -> str | None:
        """One of ``options``."""
        text = self.string(expected="one of: " + ", ".join(options))
        if text is not None and text not in options:
            self.fail("one of: " + ", ".join(options))
            return None
        return text

    def boolean(self) -> bool | None:
        """true or false."""
        if not isinstance(self.value, bool):
            self.fail("true or false")
            return None
        return self.value

    def integer(self, minimum: int = 0) -> int | None:
        """An integer >= ``minimum``."""
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < minimum:
            self.fail(f"an integer >= {minimum}")
            return None
        return self.value

    def duration(self) -> float | None:
        """Seconds, from a number or ``50ms``/``2s``."""
        try:
            return parse_duration(self.value)
        except ValueError as exc:
            self.fail(str(exc))
            return None

    def convert(self, parse: Callable[[Any], T], expected: str) -> T | None:
        """``parse(value)``, reporting its ValueError/TypeError as not ``expected``."""
        try:
            return parse(self.value)
        except (ValueError, TypeError) as exc:
            self.fail(expected, str(exc))
            return None
