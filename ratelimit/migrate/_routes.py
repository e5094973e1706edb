"""Which requests an Envoy route or Istio virtual host selected, as a config ``match``.

Route names in EnvoyFilter patches are resolved through the VirtualServices (Istio names
an Envoy route ``<http.name>`` or ``<http.name>.<match.name>``) and the routes other
patches add, when the inputs hold them.
"""

from __future__ import annotations

import re
from typing import Any

from ._manifest import as_dict, as_list
from ._match import Match, any_of, header_condition, path_pattern, string_condition

__all__ = ["RouteTable", "route_match", "vhost_hosts", "vs_match"]


def route_match(spec: dict[str, Any]) -> tuple[Match, list[str]]:
    """An Envoy RouteMatch (``prefix``/``path``/``safe_regex``, headers) as a match."""
    match, problems = Match(), []
    ignore = spec.get("case_sensitive") is False
    for key, kind in (("prefix", "prefix"), ("path", "exact"), ("path_separated_prefix", "separated")):
        if isinstance(spec.get(key), str):
            pattern = path_pattern(kind, spec[key], ignore)
            match.paths = None if pattern is None else [pattern]
    regex = as_dict(spec.get("safe_regex")).get("regex", spec.get("regex"))
    if isinstance(regex, str):
        match.paths = [f"re:{'(?i)' if ignore else ''}{regex}"]
    for matcher in as_list(spec.get("headers")):
        result = header_condition(as_dict(matcher))
        problem = result if isinstance(result, str) else match.add_header(*result)
        if problem:
            problems.append(problem)
    if "grpc" in spec:
        match.add_header("content-type", {"prefix": "application/grpc"})
    for key in (
        "query_parameters",
        "runtime_fraction",
        "path_match_policy",
        "connect_matcher",
        "tls_context",
    ):
        if key in spec:
            problems.append(f"the route's {key} condition is not translated")
    return match, problems


def vs_match(spec: dict[str, Any]) -> tuple[Match, list[str]]:
    """An Istio VirtualService HTTPMatchRequest as a match."""
    match, problems = Match(), []
    uri = as_dict(spec.get("uri"))
    ignore = bool(spec.get("ignoreUriCase"))
    for key, kind in (("exact", "exact"), ("prefix", "prefix"), ("regex", "regex")):
        if isinstance(uri.get(key), str):
            pattern = path_pattern(kind, uri[key], ignore)
            match.paths = None if pattern is None else [pattern]
    pseudo = {"method": ":method", "authority": ":authority"}
    for field_name, header in pseudo.items():
        if field_name in spec:
            cond = string_condition(as_dict(spec[field_name]))
            problem = f"{field_name}: unknown match" if cond is None else match.add_header(header, cond)
            problems += [problem] if problem else []
    for negate, key in ((False, "headers"), (True, "withoutHeaders")):
        for name, value in as_dict(spec.get(key)).items():
            cond = string_condition(as_dict(value)) if value else {"present": True}
            if cond is None:
                problems.append(f"header {name}: unknown match {value!r}")
                continue
            if negate:
                cond = {**(cond if isinstance(cond, dict) else {"exact": cond}), "invert": True}
            problem = match.add_header(name, cond)
            problems += [problem] if problem else []
    for key in ("queryParams", "port", "sourceLabels", "sourceNamespace", "gateways", "scheme"):
        if key in spec:
            problems.append(f"the match's {key} condition is not translated")
    return match, problems


def vhost_hosts(name: str) -> list[str]:
    """Host names an Istio virtual host name (``api.example.com:443``) stands for."""
    host = name.rsplit(":", 1)[0] if ":" in name and "|" not in name else ""
    return [host] if host and host != "*" and re.fullmatch(r"[A-Za-z0-9*.-]+", host) else []


class RouteTable:
    """Route name -> the matches of the routes of that name found in the inputs."""

    def __init__(self) -> None:
        self._routes: dict[str, list[tuple[Match, list[str]]]] = {}

    def add(self, name: str, found: tuple[Match, list[str]]) -> None:
        """Remember that a route called ``name`` matches ``found``."""
        self._routes.setdefault(name, []).append(found)

    def add_virtual_service(self, spec: dict[str, Any]) -> None:
        """Every named HTTP route of a VirtualService."""
        for http in as_list(spec.get("http")):
            http = as_dict(http)
            name = http.get("name")
            if not isinstance(name, str) or not name:
                continue
            unnamed: list[tuple[Match, list[str]]] = []
            for m in as_list(http.get("match")) or [{}]:
                found = vs_match(as_dict(m))
                sub = as_dict(m).get("name")
                if sub:
                    self.add(f"{name}.{sub}", found)
                else:
                    unnamed.append(found)
            if unnamed:
                merged, problems = any_of([m for m, _ in unnamed])
                self.add(name, (merged, [p for _, ps in unnamed for p in ps] + problems))

    def lookup(self, name: str) -> tuple[Match, list[str]] | None:
        """The match of the route(s) called ``name``, with problems; None if unknown."""
        found = self._routes.get(name)
        if not found:
            return None
        merged, problems = any_of(
            [Match(m.paths, list(m.methods), list(m.hosts), dict(m.headers)) for m, _ in found]
        )
        return merged, [p for _, ps in found for p in ps] + problems
