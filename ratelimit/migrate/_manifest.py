"""What ``ratelimit migrate`` reads: Kubernetes objects from YAML files, and its findings.

Every finding names the object (kind, namespace/name) and the field it came from, and
sorts by where that object was in the inputs, so the report reads in source order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Finding",
    "Manifest",
    "MigrationError",
    "Report",
    "Severity",
    "as_dict",
    "as_list",
    "duration",
    "is_header",
    "load_manifests",
    "percent",
    "safe_name",
    "unwrap",
    "valid_regex",
]

Severity = Literal["untranslated", "approximated", "note"]
SEVERITIES: tuple[Severity, ...] = ("untranslated", "approximated", "note")


class MigrationError(Exception):
    """An input cannot be read or parsed; the message names the file."""


@dataclass(frozen=True)
class Finding:
    """Something the migration could not translate, translated approximately, or notes.

    Attributes:
        severity: ``"untranslated"`` (dropped: you must act), ``"approximated"``
            (translated, but it behaves differently) or ``"note"`` (worth knowing).
        kind: the object's kind (``EnvoyFilter``, ``ConfigMap``...).
        name: the object's ``namespace/name``.
        field: where in the object (``spec.configPatches[1].patch.value...``).
        message: what happened and what to do.
        file: the input file the object came from.
    """

    severity: Severity
    kind: str
    name: str
    field: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        where = f" {self.field}" if self.field else ""
        return f"{self.severity}: {self.kind} {self.name}{where}: {self.message}"


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object (or bare service config) and where it came from."""

    kind: str
    name: str
    body: dict[str, Any]
    file: str
    position: tuple[int, int]  # (file index, document index): the report's sort order

    @property
    def label(self) -> str:
        """``Kind namespace/name``, as findings and the header comment name it."""
        return f"{self.kind} {self.name}"


@dataclass
class Report:
    """Collects findings in source order (stable within one object)."""

    _items: list[tuple[tuple[int, int], int, Finding]] = field(default_factory=list)
    _done: list[tuple[tuple[int, int], int, str]] = field(default_factory=list)

    def translated(self, source: Manifest, where: str, what: str) -> None:
        """Record that ``where`` in ``source`` became ``what`` (for the header comment)."""
        where = f" {where}" if where else ""
        self._done.append((source.position, len(self._done), f"{source.label}{where}: {what}"))

    def translations(self) -> list[str]:
        """What was translated, in source order."""
        return [text for _, _, text in sorted(self._done)]

    def add(self, source: Manifest, severity: Severity, where: str, message: str) -> None:
        """Record a finding about ``source`` at field ``where``."""
        finding = Finding(severity, source.kind, source.name, where, message, source.file)
        if not any(f == finding for _, _, f in self._items):
            self._items.append((source.position, len(self._items), finding))

    def findings(self) -> list[Finding]:
        """Every finding, sorted by the input position of its object."""
        return [f for _, _, f in sorted(self._items, key=lambda item: (item[0], item[1]))]


def load_manifests(paths: list[str | Path]) -> list[Manifest]:
    """Every YAML document of every file, as manifests; ``kind: List`` is expanded."""
    import yaml

    out: list[Manifest] = []
    for index, path in enumerate(paths):
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MigrationError(f"{path}: cannot read: {exc}") from None
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise MigrationError(f"{path}: not valid YAML: {exc}") from None
        for number, doc in enumerate(documents):
            if doc is None:
                continue
            items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
            for item in as_list(items):
                out.append(_manifest(item, str(path), (index, number)))
    return out


def _manifest(doc: Any, file: str, position: tuple[int, int]) -> Manifest:
    if not isinstance(doc, dict):
        return Manifest("(document)", f"#{position[1] + 1}", {"value": doc}, file, position)
    meta = as_dict(doc.get("metadata"))
    name = str(meta.get("name", "(unnamed)"))
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    kind = doc.get("kind")
    if kind is None and "domain" in doc and "descriptors" in doc:
        # A bare envoyproxy/ratelimit service config file, as the service reads it.
        return Manifest("ServiceConfig", Path(file).name, doc, file, position)
    return Manifest(str(kind or "(no kind)"), name, doc, file, position)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a mapping, else an empty one (lenient reading of manifests)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


_HEADER = re.compile(r":?[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def is_header(name: object) -> bool:
    """Is ``name`` a header name (or pseudo-header) the config accepts?"""
    return isinstance(name, str) and _HEADER.fullmatch(name) is not None


def valid_regex(pattern: object) -> bool:
    """Does Python's ``re`` (what the app matches with) accept ``pattern``?"""
    try:
        re.compile(pattern)  # type: ignore[call-overload]
    except (re.error, TypeError):
        return False
    return isinstance(pattern, str)


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h)?\s*$")


def duration(value: Any) -> float | None:
    """Seconds in a protobuf Duration: ``"1.5s"``, ``"250ms"``, ``{seconds, nanos}``, a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        try:
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError):
            return None
    m = _DURATION.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    return float(m.group(1)) * scale


_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def percent(value: Any) -> tuple[float, str | None]:
    """A RuntimeFractionalPercent as (percent, runtime key); absent is 0%, as in Envoy."""
    spec = as_dict(value)
    default = as_dict(spec.get("default_value"))
    denominator = _DENOMINATORS.get(str(default.get("denominator", "HUNDRED")).upper(), 100)
    try:
        numerator = float(default.get("numerator", 0))
    except (TypeError, ValueError):
        numerator = 0.0
    runtime_key = spec.get("runtime_key")
    return min(100.0, 100.0 * numerator / denominator), str(runtime_key) if runtime_key else None


def unwrap(value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A filter's (type URL, config) from ``typed_config`` (also inside a TypedStruct) or v2 ``config``."""
    typed = as_dict(value.get("typed_config"))
    type_url = str(typed.get("@type", ""))
    if type_url.endswith("TypedStruct"):  # udpa.type.v1 / xds.type.v3: type_url + value
        return str(typed.get("type_url", "")), as_dict(typed.get("value"))
    if typed:
        return type_url, {k: v for k, v in typed.items() if k != "@type"}
    return "", as_dict(value.get("config"))


def safe_name(text: str, taken: set[str]) -> str:
    """A rule name (letters, digits, ``.``, ``_``, ``-``; at most 64) not in ``taken``."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60] or "rule"
    name, n = base, 2
    while name in taken:
        name = f"{base[: 60 - len(str(n))]}-{n}"
        n += 1
    taken.add(name)
    return name
