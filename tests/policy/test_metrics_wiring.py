"""The limiter and the enforcer report to Prometheus: decisions, latency, errors, deny-cache hits."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from support.flaky import FlakyBackend

from ratelimit import Limiter
from ratelimit.enforce import Enforcer
from ratelimit.keys import header
from ratelimit.metrics import Metrics
from ratelimit.request import Headers, RequestInfo
from ratelimit.rules import Rule


def request(user: str) -> RequestInfo:
    return RequestInfo("http", "GET", "/items", Headers([(b"x-user", user.encode())]), "10.0.0.1")


def test_decisions_latency_errors_and_cache_hits_are_counted() -> None:
    """Every decision is counted by rule and result, backend calls timed, failures and cache hits counted."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    backend = FlakyBackend()
    limiter = Limiter(backend, metrics=metrics, deny_cache=True)
    enforcer = Enforcer(
        limiter, [Rule.of("per-user", "1/minute", header("x-user"))], metrics=metrics, adapter="test"
    )
    for _ in range(3):
        enforcer.check(request("alice"))
    limiter._breaker._base = 0.0  # let the next hit reach the (now failing) backend
    backend.broken = True
    enforcer.check(request("bob"))

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("ratelimit_decisions_total", rule="per-user", result="allowed", adapter="test") == 1
    assert value("ratelimit_decisions_total", rule="per-user", result="denied", adapter="test") == 2
    assert value("ratelimit_decisions_total", rule="per-user", result="fallback", adapter="test") == 1
    assert value("ratelimit_deny_cache_hits_total", rule="per-user") == 1
    assert value("ratelimit_backend_latency_seconds_count", backend="flaky") == 2
    assert value("ratelimit_backend_errors_total", backend="flaky", kind="other") == 1
