"""Config ``match`` mappings built from Envoy and Istio conditions (paths, headers, hosts).

Envoy header matchers and string matchers become the config's header conditions;
pseudo-headers become ``paths``, ``methods`` and ``hosts`` where that reads better.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ._manifest import as_dict, is_header, valid_regex

__all__ = ["Match", "any_of", "header_condition", "path_pattern", "string_condition"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
_PLAIN = re.compile(r"/[A-Za-z0-9._~%!$&'()+,;=:@/-]*")  # nothing our path patterns treat specially


def path_pattern(kind: str, value: str, ignore_case: bool = False) -> str | None:
    """A config path pattern for an Envoy/Istio path match; None when it selects every path."""
    if kind == "prefix" and value in ("", "/") and not ignore_case:
        return None
    plain = _PLAIN.fullmatch(value) is not None and not ignore_case
    if kind == "exact" and plain:
        return value
    if kind == "prefix" and plain and value.endswith("/"):
        return value + "**"
    if kind == "separated" and plain:
        return value.rstrip("/") + "/**"
    flag = "(?i)" if ignore_case else ""
    regex = {
        "exact": re.escape(value),
        "prefix": re.escape(value) + ".*",
        "separated": re.escape(value.rstrip("/")) + "(?:/.*)?",
        "suffix": ".*" + re.escape(value),
        "contains": ".*" + re.escape(value) + ".*",
    }.get(kind, value)
    return f"re:{flag}{regex}"


@dataclass
class Match:
    """A config ``match``: all conditions must hold; ``paths`` None means every path."""

    paths: list[str] | None = None
    methods: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    headers: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The mapping written to the config file (empty keys left out)."""
        out: dict[str, Any] = {}
        if self.paths is not None:
            out["paths"] = list(self.paths)
        for name in ("methods", "hosts", "headers"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    def invalid(self) -> str | None:
        """Why the config loader would refuse this match (say, a regex Python's re rejects), or None."""
        for p in self.paths or ():
            if p.startswith("re:") and not valid_regex(p[3:]):
                return f"the path regex {p[3:]!r} is not one Python's re accepts"
        for name, cond in self.headers.items():
            if isinstance(cond, dict) and "regex" in cond and not valid_regex(cond["regex"]):
                return f"header {name}: the regex {cond['regex']!r} is not one Python's re accepts"
        for method in self.methods:
            if method not in _METHODS:
                return f"{method!r} is not an HTTP method"
        for host in self.hosts:
            if not host.strip() or any(c.isspace() or c in "/?#" for c in host):
                return f"{host!r} is not a host name"
        return None

    def key(self) -> str:
        """A stable identity, to group entries that select the same requests."""
        return repr(self.config())

    def add_header(self, name: str, cond: Any) -> str | None:
        """AND a header condition in; pseudo-headers become paths/methods/hosts when simple.

        Returns a problem when it conflicts with a condition already there.
        """
        name = name.lower()
        if not is_header(name):
            return f"{name!r} is not a header name; condition left out"
        kind, value = _simple(cond)
        if name == ":method" and kind == "exact":
            if self.methods and value.upper() not in self.methods:
                return f"the method {value} conflicts with {self.methods}"
            self.methods = [value.upper()]
            return None
        if name == ":path" and kind in ("exact", "prefix", "regex") and self.paths is None:
            pattern = path_pattern(kind, value)
            if pattern is not None:
                self.paths = [pattern]
            return None
        if name in (":authority", "host") and kind == "exact" and not self.hosts:
            self.hosts = [value]
            return None
        if name in self.headers and self.headers[name] != cond:
            return f"two conditions on header {name} ({self.headers[name]!r} and {cond!r}); kept the first"
        self.headers[name] = cond
        return None

    def and_(self, other: Match) -> list[str]:
        """AND ``other`` into this match; returns the conditions that could not be combined."""
        problems: list[str] = []
        if other.paths is not None:
            if self.paths is None:
                self.paths = list(other.paths)
            elif self.paths != other.paths:
                problems.append(f"paths {other.paths} and {self.paths} both apply; kept {self.paths}")
        if other.methods:
            common = [m for m in self.methods if m in other.methods] if self.methods else other.methods
            self.methods = common or other.methods
        if self.hosts and other.hosts and set(self.hosts) != set(other.hosts):
            problems.append(f"hosts {other.hosts} and {self.hosts} both apply; kept {self.hosts}")
        self.hosts = self.hosts or list(other.hosts)
        for name, cond in other.headers.items():
            problem = self.add_header(name, cond)
            if problem:
                problems.append(problem)
        return problems


def _simple(cond: Any) -> tuple[str, str]:
    if isinstance(cond, str):
        return "exact", cond
    if isinstance(cond, dict) and len(cond) == 1:
        ((kind, value),) = cond.items()
        if kind in ("exact", "prefix", "regex") and isinstance(value, str):
            return kind, value
    return "", ""


def any_of(matches: list[Match]) -> tuple[Match, list[str]]:
    """One match for requests that satisfy any of ``matches`` (paths are OR-ed natively)."""
    if len(matches) == 1:
        return matches[0], []
    first = matches[0]
    out = Match(None, list(first.methods), list(first.hosts), dict(first.headers))
    if all(m.paths is not None for m in matches):
        out.paths = sorted({p for m in matches for p in m.paths or ()}, key=lambda p: (len(p), p))
    if any((m.methods, m.hosts, m.headers) != (first.methods, first.hosts, first.headers) for m in matches):
        out.methods, out.hosts, out.headers = [], [], {}
        return out, ["its matches differ in methods, hosts or headers; only their paths were kept"]
    return out, []


def string_condition(spec: dict[str, Any]) -> Any:
    """A config header condition from an Envoy StringMatcher / Istio StringMatch; None if unknown."""
    ignore = {"ignore_case": True} if spec.get("ignore_case") or spec.get("ignoreCase") else {}
    for kind in ("exact", "prefix", "suffix", "contains"):
        if isinstance(spec.get(kind), str):
            return spec[kind] if kind == "exact" and not ignore else {kind: spec[kind], **ignore}
    regex = as_dict(spec.get("safe_regex")).get("regex", spec.get("regex"))
    if isinstance(regex, str):
        return {"regex": regex, **ignore}
    return None


def header_condition(matcher: dict[str, Any]) -> tuple[str, Any] | str:
    """An Envoy HeaderMatcher as (header, config condition), or a problem saying why not."""
    name = str(matcher.get("name", "")).lower()
    if not name:
        return "a header matcher without a name"
    cond: Any = None
    for key, kind in (("exact_match", "exact"), ("prefix_match", "prefix"), ("suffix_match", "suffix")):
        if isinstance(matcher.get(key), str):
            cond = matcher[key] if kind == "exact" else {kind: matcher[key]}
    if isinstance(matcher.get("contains_match"), str):
        cond = string_condition({"contains": matcher["contains_match"]})
    regex = as_dict(matcher.get("safe_regex_match")).get("regex", matcher.get("regex_match"))
    if isinstance(regex, str):
        cond = {"regex": regex}
    if "present_match" in matcher:
        cond = {"present": bool(matcher["present_match"])}
    if "string_match" in matcher:
        cond = string_condition(as_dict(matcher["string_match"]))
    if cond is None and "range_match" in matcher:
        return f"header {name}: range_match is not translated"
    if cond is None and not (set(matcher) - {"name", "invert_match", "treat_missing_header_as_empty"}):
        cond = {"present": True}  # Envoy: no value matcher means "the header is present"
    if cond is None:
        return f"header {name}: unknown matcher {sorted(set(matcher) - {'name'})}"
    if matcher.get("invert_match"):
        cond = dict(cond) if isinstance(cond, dict) else {"exact": cond}
        cond["invert"] = True
    return name, cond
