"""Prometheus metrics of ``ratelimit serve``, named after the Go service's (statsd mapper) ones.

Per domain and descriptor key, counted in hits (``hits_addend``), as upstream does::

    ratelimit_service_rate_limit_total_hits_total{domain, key}
    ratelimit_service_rate_limit_within_limit_total{domain, key}
    ratelimit_service_rate_limit_near_limit_total{domain, key}
    ratelimit_service_rate_limit_over_limit_total{domain, key}     (shadow limits too)
    ratelimit_service_rate_limit_shadow_mode_total{domain, key}    (over a shadow limit)
    ratelimit_service_should_rate_limit_error_total{err_type}      service_error | redis_error
    ratelimit_service_total_requests_total{grpc_method}
    ratelimit_service_response_time_seconds{grpc_method}           (histogram)
    ratelimit_service_global_shadow_mode_total
    ratelimit_service_domain_not_found_total{domain}

``key`` is the limit's descriptor path from the config (``domain.key_value.key``) or
its ``name``; with ``detailed_metric: true`` it is the request's own values. Label
values are bounded: at most 64 characters, 100 domains and 1000 keys, the rest ``other``.
The engine's own series (``ratelimit_decisions_total{adapter="serve"}``, backend
latency and errors, config reloads) come from :mod:`ratelimit.metrics`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._core.decision import LimitStatus
from ..metrics import BoundedLabel, Metrics

__all__ = ["ServiceMetrics"]


class _Series(NamedTuple):
    """One (domain, key)'s counters, labels already applied."""

    total_hits: Any
    within_limit: Any
    near_limit: Any
    over_limit: Any
    shadow_mode: Any


class ServiceMetrics:
    """The service's series; every method is a no-op when ``enabled`` is False.

    Args:
        enabled: record (needs prometheus-client).
        near_limit_ratio: hits past this share of a limit count as near the limit.
        registry: where to register (default: prometheus-client's global registry).
    """

    def __init__(self, enabled: bool, near_limit_ratio: float = 0.8, registry: Any = None) -> None:
        self.enabled = enabled
        self.ratio = near_limit_ratio
        self.engine: Metrics | None = None
        if not enabled:
            return
        from prometheus_client import REGISTRY, Counter, Histogram

        registry = REGISTRY if registry is None else registry
        self.engine = Metrics(registry)
        self._domains = BoundedLabel(100)
        self._keys = BoundedLabel(1000)
        self._methods: dict[str, tuple[Any, Any]] = {}  # the gRPC methods' series (a few)

        def per_key(name: str, doc: str) -> Any:
            return Counter(
                f"service_rate_limit_{name}", doc, ["domain", "key"], namespace="ratelimit", registry=registry
            )

        self.total_hits = per_key("total_hits", "Hits (hits_addend) per descriptor limit.")
        self.within_limit = per_key("within_limit", "Hits within the limit.")
        self.near_limit = per_key("near_limit", "Hits past NEAR_LIMIT_RATIO of the limit.")
        self.over_limit = per_key("over_limit", "Hits over the limit.")
        self.shadow_mode = per_key("shadow_mode", "Hits over a shadow limit (allowed anyway).")
        self.errors = Counter(
            "service_should_rate_limit_error",
            "ShouldRateLimit calls answered with an error (service_error) "
            "or by the failure policy (redis_error).",
            ["err_type"],
            namespace="ratelimit",
            registry=registry,
        )
        self.requests = Counter(
            "service_total_requests",
            "Calls per gRPC method.",
            ["grpc_method"],
            namespace="ratelimit",
            registry=registry,
        )
        self.latency = Histogram(
            "service_response_time_seconds",
            "Time to answer ShouldRateLimit.",
            ["grpc_method"],
            namespace="ratelimit",
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.shadowed = Counter(
            "service_global_shadow_mode",
            "Requests over a limit answered OK because of SHADOW_MODE.",
            namespace="ratelimit",
            registry=registry,
        )
        self.not_found = Counter(
            "service_domain_not_found",
            "Requests for a domain no config has.",
            ["domain"],
            namespace="ratelimit",
            registry=registry,
        )

    def series(self, domain: str, key: str) -> _Series | None:
        """The per-key series of one (domain, key), labels bounded; None when disabled.

        The service resolves this once per distinct descriptor and keeps it, so a call
        pays no label lookups.
        """
        if not self.enabled:
            return None
        labels = (self._domains(domain), self._keys(key))
        return _Series(
            self.total_hits.labels(*labels),
            self.within_limit.labels(*labels),
            self.near_limit.labels(*labels),
            self.over_limit.labels(*labels),
            self.shadow_mode.labels(*labels),
        )

    def descriptor(
        self, series: _Series | None, hits: int, status: LimitStatus, shadow: bool, fallback: bool
    ) -> None:
        """Count one counted descriptor's hits, as the Go service's per-key stats do."""
        if series is None:
            return
        series.total_hits.inc(hits)
        if fallback:
            return  # the failure policy answered: no counter to judge nearness by
        limit = status.rate.limit
        if not status.allowed:
            series.over_limit.inc(hits)
            if shadow:
                series.shadow_mode.inc(hits)
            return
        series.within_limit.inc(hits)
        used = limit - status.remaining
        near = int(limit * self.ratio)
        if used > near:
            series.near_limit.inc(min(hits, used - near))

    def decision(self, rule: str, result: str) -> None:
        """One descriptor's decision in ``ratelimit_decisions_total{adapter="serve"}``."""
        if self.engine is not None:
            self.engine.decision(rule, result, "serve")

    def error(self, kind: str) -> None:
        """A call answered with an error (``service_error``) or by the failure policy (``redis_error``)."""
        if self.enabled:
            self.errors.labels(kind).inc()

    def response_time(self, seconds: float, method: str = "ShouldRateLimit") -> None:
        """One call and how long it took."""
        if self.enabled:
            pair = self._methods.get(method)
            if pair is None:
                pair = self._methods[method] = (self.requests.labels(method), self.latency.labels(method))
            pair[0].inc()
            pair[1].observe(seconds)

    def global_shadow(self) -> None:
        """A request over a limit let through by SHADOW_MODE."""
        if self.enabled:
            self.shadowed.inc()

    def unknown_domain(self, domain: str) -> None:
        """A request for a domain no config has (answered OK, as upstream)."""
        if self.enabled:
            self.not_found.labels(self._domains(domain)).inc()
