"""Put what the manifests held together into one config document.

Global limits: each EnvoyFilter's ``rate_limits`` go to the rate limit filter of their
stage (in the same EnvoyFilter, else one with the same workload selector, else any), and
each filter's domain is paired with the service config of that domain: one ``envoy:``
entry per (domain, match). Local limits become ``rules:``, a route's rules replacing
the virtual host's and listener's as Envoy's per-route configs did.
"""

from __future__ import annotations

from typing import Any

from ._found import GlobalFilter, Parsed, RateLimits, Scope
from ._localrl import LocalRules, translate_local
from ._manifest import Report, as_dict, safe_name
from ._rate_limits import action_key
from ._servicecfg import ServiceConfig

__all__ = ["backend", "envoy_entries", "local_rules"]

_LEVELS = {"listener": 0, "vhost": 1, "route": 2}


def backend(filters: list[GlobalFilter], report: Report) -> dict[str, Any]:
    """``backend:`` from the rate limit filters' failure mode and timeout."""
    out: dict[str, Any] = {"storage": "${REDIS_URL}"}
    if not filters:
        out["failure_mode"] = "open"
        return out
    first = filters[0]
    if first.timeout is not None and 0.001 <= first.timeout <= 60:
        out["timeout"] = f"{round(first.timeout * 1000)}ms"
    else:
        given = "no timeout" if first.timeout is None else f"timeout {first.timeout:g}s is out of range"
        report.add(
            first.scope.source,
            "note",
            first.scope.where,
            f"{given}: Envoy's default was 20 ms per ratelimit service call; the app's backend.timeout"
            " default is 50 ms per decision",
        )
    out["failure_mode"] = first.failure_mode
    for f in filters[1:]:
        if (f.failure_mode, f.timeout) != (first.failure_mode, first.timeout):
            report.add(
                f.scope.source,
                "approximated",
                f.scope.where,
                f"failure_mode {f.failure_mode}/timeout"
                f" {f.timeout} differ from the first filter's; the app has one backend: kept the first",
            )
    mode = "failure_mode_deny: true -> closed" if first.failure_mode == "closed" else "fail open -> open"
    report.translated(first.scope.source, first.scope.where, f"rate limit filter ({mode}) -> backend")
    return out


def _filters_for(scope: Scope, stage: int, filters: list[GlobalFilter]) -> list[GlobalFilter]:
    staged = [f for f in filters if f.stage == stage]
    same = [f for f in staged if f.scope.source is scope.source]
    selected = [f for f in staged if f.scope.selector == scope.selector]
    return same or selected or staged


def envoy_entries(
    parsed: Parsed, services: list[ServiceConfig], taken: set[str], used: set[str], report: Report
) -> list[dict[str, Any]]:
    """``envoy:`` entries: each domain's service config with the rate_limits that feed it.

    ``used`` names the rate_limits entries local descriptors read: those need no filter.
    """
    by_domain: dict[str, ServiceConfig] = {}
    for svc in services:
        if svc.domain in by_domain:
            report.add(
                svc.source,
                "untranslated",
                svc.where,
                f"a second config for domain {svc.domain!r}; the service refuses duplicates: kept the first",
            )
        else:
            by_domain[svc.domain] = svc
    grouped = _group(parsed, by_domain, used, report)
    out: list[dict[str, Any]] = []
    for (domain, _), (rl, entries) in grouped.items():
        item: dict[str, Any] = {"name": safe_name(f"envoy-{domain}", taken), "domain": domain}
        if rl.scope.match.config():
            item["match"] = rl.scope.match.config()
        item.update(rate_limits=entries, descriptors=by_domain[domain].descriptors)
        report.translated(
            rl.scope.source, rl.scope.where, f"rate_limits -> envoy[{len(out)}] ({item['name']})"
        )
        out.append(item)
    _vhost_and_route(grouped, report)
    for domain, svc in by_domain.items():
        mine = [(i, item) for i, item in enumerate(out) if item["domain"] == domain]
        if not mine:
            report.add(
                svc.source,
                "note",
                svc.where,
                f"no rate_limits for domain {domain!r} in the inputs:"
                " each descriptor key is read from the request by its name (docs/configuration.md)",
            )
            mine = [(len(out), {"name": safe_name(f"envoy-{domain}", taken), "domain": domain})]
            mine[0][1]["descriptors"] = svc.descriptors
            out.append(mine[0][1])
        produced = {
            action_key(as_dict(e["actions"][0])) for _, item in mine for e in item.get("rate_limits", [])
        }
        for i, desc in enumerate(svc.descriptors if produced else ()):
            if desc["key"] not in produced:
                report.add(
                    svc.source,
                    "note",
                    f"{svc.where}: descriptors[{i}]",
                    f"no translated rate_limits"
                    f" entry starts with key {desc['key']!r}: this descriptor never applies",
                )
        where = ", ".join(f"envoy[{i}]" for i, _ in mine)
        report.translated(svc.source, svc.where, f"domain {domain} -> {where}")
    return out


def _group(
    parsed: Parsed, by_domain: dict[str, ServiceConfig], used: set[str], report: Report
) -> dict[tuple[str, str], tuple[RateLimits, list[dict[str, Any]]]]:
    grouped: dict[tuple[str, str], tuple[RateLimits, list[dict[str, Any]]]] = {}
    for rl in parsed.limits:
        for where, stage, entry in rl.entries:
            filters = _filters_for(rl.scope, stage, parsed.filters)
            if not filters and where not in used:
                report.add(
                    rl.scope.source,
                    "untranslated",
                    where,
                    f"no rate limit filter (stage {stage})"
                    " in the inputs uses this entry: pass the EnvoyFilter that inserts it",
                )
            for domain in dict.fromkeys(f.domain for f in filters):
                if domain not in by_domain:
                    report.add(
                        rl.scope.source,
                        "untranslated",
                        where,
                        f"no service config for domain"
                        f" {domain!r} in the inputs (pass its ConfigMap): entry not translated",
                    )
                    continue
                _, entries = grouped.setdefault((domain, rl.scope.match.key()), (rl, []))
                if entry not in entries:
                    entries.append(entry)
    return grouped


def _vhost_and_route(grouped: dict[tuple[str, str], tuple[RateLimits, Any]], report: Report) -> None:
    levels = {(d, rl.scope.selector, rl.scope.level): rl for (d, _), (rl, _) in grouped.items()}
    for (domain, selector, level), rl in levels.items():
        if level == "vhost" and (domain, selector, "route") in levels:
            report.add(
                rl.scope.source,
                "approximated",
                rl.scope.where,
                "Envoy skipped a virtual host's"
                " rate_limits on routes with their own (unless include_vh_rate_limits); the app"
                " applies every entry whose match holds",
            )


def local_rules(
    parsed: Parsed, claims: dict[str, str], taken: set[str], used: set[str], report: Report
) -> list[dict[str, Any]]:
    """``rules:`` for the local rate limits; a narrower level's rules replace the wider ones.

    Adds the rate_limits entries their descriptors read to ``used``.
    """
    groups: list[LocalRules] = []
    has_filter = any(loc.scope.level == "listener" for loc in parsed.locals)
    for loc in parsed.locals:
        stage = int(loc.config.get("stage", 0) or 0)
        usable = [
            RateLimits(rl.scope, [e for e in rl.entries if e[1] == stage])
            for rl in parsed.limits
            if rl.scope.selector == loc.scope.selector
            and (loc.scope.level == "listener" or rl.scope.match.key() == loc.scope.match.key())
        ]
        group = translate_local(loc, usable, claims, taken, report)
        used |= group.used
        if not has_filter and loc.scope.level != "listener":
            report.add(
                loc.scope.source,
                "note",
                loc.where,
                "no envoy.filters.http.local_ratelimit filter in"
                " the inputs: Envoy applies per-route configs only with the filter in the chain",
            )
        if group.rules:
            names = ", ".join(r["name"] for r in group.rules)
            report.translated(loc.scope.source, loc.where, f"local rate limit -> rules {names}")
        groups.append(group)
    for group in groups:
        wider = [
            r["name"]
            for g in groups
            if g.selector == group.selector and _LEVELS[g.level] < _LEVELS[group.level]
            for r in g.rules
        ]
        if wider and not group.has_default:
            # Envoy used this level's config alone here, also for requests no descriptor matched.
            marker: dict[str, Any] = {"name": safe_name(f"{group.base}-scope", taken)}
            if group.match.config():
                marker["match"] = group.match.config()
            group.rules.append({**marker, "key": "global", "limits": "unlimited"})
        for rule in group.rules if wider else ():
            rule["replaces"] = list(dict.fromkeys([*rule.get("replaces", []), *wider]))
    return [rule for g in groups for rule in g.rules]
