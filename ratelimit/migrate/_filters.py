"""HTTP filter patches: which rate limit filter is inserted, and its settings.

The global filter (``envoy.filters.http.ratelimit``, v3 or v2, plain or in a TypedStruct)
gives the domain and the failure policy; a local one (``local_ratelimit``) gives a
token bucket config, translated later with its routes.
"""

from __future__ import annotations

from typing import Any

from ._found import GlobalFilter, LocalConfig, Parsed, Scope
from ._manifest import Manifest, Report, as_dict, duration, unwrap

__all__ = ["filter_kind", "read_http_filter"]

_GLOBAL_NAMES = {"envoy.filters.http.ratelimit", "envoy.rate_limit", "envoy.ratelimit"}
_LOCAL_NAMES = {"envoy.filters.http.local_ratelimit", "envoy.local_rate_limit", "envoy.local_ratelimit"}


def filter_kind(name: str, type_url: str) -> str:
    """``"global"``, ``"local"`` or ``""`` for an HTTP filter's name and config type URL."""
    if name in _LOCAL_NAMES or "local_ratelimit" in type_url:
        return "local"
    if name in _GLOBAL_NAMES or type_url.endswith(("ratelimit.v3.RateLimit", "rate_limit.v2.RateLimit")):
        return "global"
    return ""


def read_http_filter(
    m: Manifest, where: str, scope: Scope, value: dict[str, Any], report: Report, parsed: Parsed
) -> None:
    """Add the filter in ``value`` (at ``where``, applying to ``scope``) to ``parsed``."""
    name = str(value.get("name", ""))
    type_url, config = unwrap(value)
    kind = filter_kind(name, type_url)
    if not kind:
        report.add(
            m, "note", where, f"HTTP filter {name or type_url or '(unnamed)'} ignored (not a rate limit)"
        )
        return
    here = f"{where}.patch.value"
    if kind == "local":
        parsed.locals.append(LocalConfig(scope, here, config))
        return
    if not config.get("domain"):
        report.add(m, "untranslated", here, "rate limit filter without a domain")
        return
    timeout = duration(config["timeout"]) if "timeout" in config else None
    if "timeout" in config and timeout is None:
        report.add(m, "untranslated", f"{here}.timeout", f"{config['timeout']!r} is not a duration")
    deny = bool(config.get("failure_mode_deny", False))
    parsed.filters.append(
        GlobalFilter(
            scope,
            str(config["domain"]),
            int(config.get("stage", 0) or 0),
            "closed" if deny else "open",
            timeout,
        )
    )
    service = as_dict(config.get("rate_limit_service"))
    grpc = as_dict(service.get("grpc_service")) or as_dict(config.get("grpc_service"))
    cluster = as_dict(grpc.get("envoy_grpc")).get("cluster_name") or as_dict(grpc.get("google_grpc")).get(
        "target_uri"
    )
    if cluster:
        report.add(
            m,
            "note",
            here,
            f"the ratelimit service at {cluster} is no longer called: counters"
            " live in the Redis of backend.storage (set REDIS_URL)",
        )
    known = {"domain", "timeout", "failure_mode_deny", "rate_limit_service", "stage", "transport_api_version"}
    for extra in sorted(set(config) - known):
        report.add(m, "note", f"{here}.{extra}", _FILTER_FIELDS.get(extra, "not translated"))


_FILTER_FIELDS = {
    "enable_x_ratelimit_headers": "the app sends IETF draft-10 RateLimit-Policy/RateLimit headers,"
    " and X-RateLimit-* unless headers.legacy is false",
    "disable_x_envoy_ratelimited_header": "the app never sends x-envoy-ratelimited",
    "request_type": "the app limits every request it receives (internal and external)",
    "rate_limited_as_resource_exhausted": "gRPC denials are RESOURCE_EXHAUSTED in the app",
    "failure_mode_deny_percent": "not translated: backend.failure_mode applies to every request",
}
