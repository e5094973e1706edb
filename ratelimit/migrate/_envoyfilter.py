"""Read Istio EnvoyFilters: which patch applies where, and what rate limiting it carries.

Nothing is translated here beyond the actions; :mod:`ratelimit._assemble` pairs what is
found with the service configs and :mod:`ratelimit.migrate._localrl` turns local limits into rules.
"""

from __future__ import annotations

from typing import Any

from ._filters import filter_kind, read_http_filter
from ._found import LocalConfig, Parsed, RateLimits, Scope
from ._manifest import Manifest, Report, as_dict, as_list, unwrap
from ._match import Match
from ._rate_limits import clean_entry
from ._routes import RouteTable, route_match, vhost_hosts

__all__ = ["collect_routes", "read_envoyfilter"]


def _selector(m: Manifest) -> str:
    spec, meta = as_dict(m.body.get("spec")), as_dict(m.body.get("metadata"))
    labels = as_dict(as_dict(spec.get("workloadSelector")).get("labels"))
    refs = [sorted(as_dict(r).items()) for r in as_list(spec.get("targetRefs"))]
    return repr((meta.get("namespace"), sorted(labels.items()), refs))


def collect_routes(m: Manifest, table: RouteTable) -> None:
    """Remember the named routes a VirtualService or an EnvoyFilter patch defines."""
    spec = as_dict(m.body.get("spec"))
    if m.kind == "VirtualService":
        table.add_virtual_service(spec)
        return
    for patch in as_list(spec.get("configPatches")):
        value = as_dict(as_dict(as_dict(patch).get("patch")).get("value"))
        routes = [value, *as_list(value.get("routes"))]
        routes += [
            r for vh in as_list(value.get("virtual_hosts")) for r in as_list(as_dict(vh).get("routes"))
        ]
        for route in map(as_dict, routes):
            if isinstance(route.get("name"), str) and isinstance(route.get("match"), dict):
                table.add(route["name"], route_match(route["match"]))


def read_envoyfilter(m: Manifest, routes: RouteTable, report: Report, parsed: Parsed) -> None:
    """Add the filters, rate_limits and local configs of EnvoyFilter ``m`` to ``parsed``."""
    spec = as_dict(m.body.get("spec"))
    for i, patch in enumerate(as_list(spec.get("configPatches"))):
        patch, where = as_dict(patch), f"spec.configPatches[{i}]"
        apply_to = str(patch.get("applyTo", ""))
        body = as_dict(patch.get("patch"))
        value = as_dict(body.get("value"))
        if body.get("operation") == "REMOVE":
            report.add(m, "note", where, f"REMOVE of {apply_to} ignored")
        elif apply_to == "HTTP_FILTER":
            read_http_filter(m, where, _scope(m, where, patch, "listener", report), value, report, parsed)
        elif apply_to in ("VIRTUAL_HOST", "HTTP_ROUTE"):
            _route_patch(m, where, patch, value, routes, report, parsed)
        elif apply_to == "NETWORK_FILTER" and "ratelimit" in str(value.get("name", "")):
            report.add(
                m,
                "untranslated",
                where,
                f"{value.get('name')} limits connections (L4), not requests;"
                " ztunnel has no equivalent and the app sees requests only",
            )
        else:
            report.add(m, "note", where, f"{apply_to} patch ignored (not a rate limit)")


def _scope(m: Manifest, where: str, patch: dict[str, Any], level: str, report: Report) -> Scope:
    match = as_dict(patch.get("match"))
    context = str(match.get("context", "ANY"))
    if context == "SIDECAR_OUTBOUND":
        report.add(
            m,
            "approximated",
            f"{where}.match.context",
            "SIDECAR_OUTBOUND limited the calls this"
            " workload made to others; the app limits the requests it receives: put this limit"
            " in the called service's config instead",
        )
    elif context == "GATEWAY":
        report.add(
            m,
            "note",
            f"{where}.match.context",
            "applied at the ingress gateway; the app limits"
            " every request it receives, also those from inside the mesh",
        )
    config = as_dict(match.get("routeConfiguration")) or as_dict(match.get("listener"))
    for key in ("portNumber", "portName", "name", "gateway"):
        if key in config:
            report.add(
                m,
                "note",
                f"{where}.match",
                f"{key} {config[key]!r} not translated (the app applies its config on every port it serves)",
            )
    vhost = as_dict(as_dict(match.get("routeConfiguration")).get("vhost"))
    vhost_name = str(vhost.get("name", ""))
    label = str(as_dict(vhost.get("route")).get("name", "")) if level == "route" else ""
    label = label or (vhost_name if level != "listener" else "")
    return Scope(m, where, level, _selector(m), Match(hosts=vhost_hosts(vhost_name)), label)


def _route_patch(
    m: Manifest,
    where: str,
    patch: dict[str, Any],
    value: dict[str, Any],
    routes: RouteTable,
    report: Report,
    parsed: Parsed,
) -> None:
    level = "route" if patch.get("applyTo") == "HTTP_ROUTE" else "vhost"
    scope = _scope(m, where, patch, level, report)
    route = as_dict(as_dict(as_dict(patch.get("match")).get("routeConfiguration")).get("vhost")).get("route")
    route = as_dict(route)
    if level == "route":
        if isinstance(value.get("match"), dict):
            found: tuple[Match, list[str]] | None = route_match(value["match"])
        elif route.get("name"):
            found = routes.lookup(str(route["name"]))
        else:
            found = (Match(), [])
            report.add(m, "note", f"{where}.match", "no route name: applies to every route")
        if found is None:
            report.add(
                m,
                "untranslated",
                f"{where}.match.routeConfiguration.vhost.route.name",
                f"route {route['name']!r} is not in the inputs (no VirtualService http route or"
                " route config of that name): pass it along, or write the rule with match.paths",
            )
            return
        for problem in found[1] + scope.match.and_(found[0]):
            report.add(m, "approximated", f"{where}.match", f"route {route.get('name', '')!r}: {problem}")
        if scope.match.invalid():
            report.add(
                m,
                "untranslated",
                f"{where}.match",
                f"route {route.get('name', '')!r}: {scope.match.invalid()}; the patch was left out",
            )
            return
    if route.get("action") not in (None, "ANY"):
        report.add(m, "note", f"{where}.match", f"route action {route['action']} not translated (any route)")
    entries = as_list(value.get("rate_limits")) or as_list(as_dict(value.get("route")).get("rate_limits"))
    field_name = "rate_limits" if "rate_limits" in value else "route.rate_limits"
    cleaned = []
    for i, entry in enumerate(entries):
        here = f"{where}.patch.value.{field_name}[{i}]"
        entry = clean_entry(as_dict(entry), here, m, report)
        if entry is not None:
            cleaned.append((here, int(as_dict(entries[i]).get("stage", 0) or 0), entry))
    if cleaned:
        parsed.limits.append(RateLimits(scope, cleaned))
    per_filter = {**as_dict(value.get("per_filter_config")), **as_dict(value.get("typed_per_filter_config"))}
    for name, config in per_filter.items():
        wrapped = {"typed_config": config} if "@type" in as_dict(config) else {"config": config}
        type_url, inner = unwrap(wrapped)
        kind = filter_kind(str(name), type_url)
        here = f"{where}.patch.value.typed_per_filter_config.{name}"
        if kind == "local":
            parsed.locals.append(LocalConfig(scope, here, inner))
        else:
            report.add(m, "note" if not kind else "untranslated", here, "per-route config not translated")
    if as_dict(value.get("route")).get("include_vh_rate_limits"):
        report.add(
            m,
            "note",
            f"{where}.patch.value.route.include_vh_rate_limits",
            "the app applies every matching entry (vhost and route) anyway",
        )
