"""Prometheus metrics: names, labels, shared collectors and bounded cardinality."""

from __future__ import annotations

import gc
import inspect
import logging
import sys
import threading
import weakref

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

import ratelimit
import ratelimit.metrics
from ratelimit.metrics import MAX_RULES, Metrics, NullMetrics

LABEL_NAMES = {"rule", "result", "adapter", "backend", "kind", "le"}  # le: histogram buckets


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def label_values(registry: CollectorRegistry, name: str, label: str) -> set[str]:
    return {s.labels[label] for m in registry.collect() for s in m.samples if s.name == name}


def test_decisions_counted_with_labels(registry: CollectorRegistry) -> None:
    """Each decision increments the counter for its rule, result and adapter."""
    m = Metrics(registry)
    m.decision("login", "denied", "asgi")
    m.decision("login", "denied", "asgi")
    m.decision("login", "allowed", "asgi")
    m.decision("api", "shadow", "grpc")
    name = "ratelimit_decisions_total"
    assert value(registry, name, rule="login", result="denied", adapter="asgi") == 2
    assert value(registry, name, rule="login", result="allowed", adapter="asgi") == 1
    assert value(registry, name, rule="api", result="shadow", adapter="grpc") == 1


def test_every_known_result_kept(registry: CollectorRegistry) -> None:
    """All five documented results are recorded as themselves."""
    m = Metrics(registry)
    results = ["allowed", "denied", "shadow", "fallback", "unauthenticated"]
    for result in results:
        m.decision("r", result, "wsgi")
    assert label_values(registry, "ratelimit_decisions_total", "result") == set(results)


def test_latency_histogram_buckets(registry: CollectorRegistry) -> None:
    """Latency observations land in the right cumulative buckets, with count and sum."""
    m = Metrics(registry)
    m.backend_latency("redis", 0.0003)
    m.backend_latency("redis", 0.003)
    m.backend_latency("redis", 1.0)
    name = "ratelimit_backend_latency_seconds"
    assert value(registry, f"{name}_bucket", backend="redis", le="0.0005") == 1
    assert value(registry, f"{name}_bucket", backend="redis", le="0.005") == 2
    assert value(registry, f"{name}_bucket", backend="redis", le="0.25") == 2
    assert value(registry, f"{name}_bucket", backend="redis", le="+Inf") == 3
    assert value(registry, f"{name}_count", backend="redis") == 3
    assert value(registry, f"{name}_sum", backend="redis") == pytest.approx(1.0033)


def test_custom_buckets_and_namespace(registry: CollectorRegistry) -> None:
    """The namespace prefixes every metric and custom buckets replace the defaults."""
    m = Metrics(registry, namespace="edge", latency_buckets=[0.1, 1.0])
    m.backend_latency("memory", 0.5)
    assert value(registry, "edge_backend_latency_seconds_bucket", backend="memory", le="1.0") == 1
    assert label_values(registry, "edge_backend_latency_seconds_bucket", "le") == {"0.1", "1.0", "+Inf"}


def test_errors_counted_by_kind(registry: CollectorRegistry) -> None:
    """Backend errors are counted per backend and kind."""
    m = Metrics(registry)
    m.backend_error("redis", "timeout")
    m.backend_error("redis", "timeout")
    m.backend_error("redis", "connection")
    m.backend_error("redis", "other")
    name = "ratelimit_backend_errors_total"
    assert value(registry, name, backend="redis", kind="timeout") == 2
    assert value(registry, name, backend="redis", kind="connection") == 1
    assert value(registry, name, backend="redis", kind="other") == 1


def test_deny_cache_hits(registry: CollectorRegistry) -> None:
    """Deny-cache hits are counted per rule."""
    m = Metrics(registry)
    for _ in range(3):
        m.deny_cache_hit("login")
    assert value(registry, "ratelimit_deny_cache_hits_total", rule="login") == 3


def test_default_registry_twice_shares_counts() -> None:
    """Two Metrics() on the default registry do not clash and share their counters."""
    name = "ratelimit_decisions_total"
    labels = {"rule": "test-metrics-shared", "result": "allowed", "adapter": "test"}
    before = value(REGISTRY, name, **labels)
    first, second = Metrics(), Metrics()
    first.decision("test-metrics-shared", "allowed", "test")
    second.decision("test-metrics-shared", "allowed", "test")
    assert value(REGISTRY, name, **labels) == before + 2


def test_same_registry_twice_shares_counts(registry: CollectorRegistry) -> None:
    """A user registry shared by two Metrics also gets one set of collectors."""
    Metrics(registry).deny_cache_hit("x")
    Metrics(registry).deny_cache_hit("x")
    assert value(registry, "ratelimit_deny_cache_hits_total", rule="x") == 2


def test_other_namespace_or_registry_is_separate(registry: CollectorRegistry) -> None:
    """Different namespaces and different registries keep separate counts."""
    other = CollectorRegistry()
    Metrics(registry).deny_cache_hit("x")
    Metrics(registry, namespace="b").deny_cache_hit("x")
    Metrics(other).deny_cache_hit("x")
    assert value(registry, "ratelimit_deny_cache_hits_total", rule="x") == 1
    assert value(registry, "b_deny_cache_hits_total", rule="x") == 1
    assert value(other, "ratelimit_deny_cache_hits_total", rule="x") == 1


def test_changed_buckets_on_existing_metrics_rejected(registry: CollectorRegistry) -> None:
    """Asking for other buckets on already-registered metrics fails at construction."""
    Metrics(registry)
    with pytest.raises(ValueError, match="latency buckets"):
        Metrics(registry, latency_buckets=(1.0, 2.0))


def test_name_clash_leaves_nothing_registered(registry: CollectorRegistry) -> None:
    """A clash with a user's own metric raises and registers none of ours, so a retry can work."""
    theirs = Counter("ratelimit_deny_cache_hits", "not ours", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(registry)
    assert {m.name for m in registry.collect()} == {"ratelimit_deny_cache_hits"}
    registry.unregister(theirs)
    Metrics(registry).deny_cache_hit("x")
    assert value(registry, "ratelimit_deny_cache_hits_total", rule="x") == 1


def test_bad_buckets_leave_nothing_registered(registry: CollectorRegistry) -> None:
    """Unsorted buckets raise before anything is registered."""
    with pytest.raises(ValueError):
        Metrics(registry, latency_buckets=(1.0, 0.1))
    assert list(registry.collect()) == []
    Metrics(registry).decision("r", "allowed", "asgi")


def test_registry_not_kept_alive() -> None:
    """The shared-collector cache does not keep a user's registry alive."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    ref = weakref.ref(registry)
    del registry
    gc.collect()
    assert ref() is None
    metrics.decision("r", "allowed", "asgi")  # still safe to call, just unexported


def test_only_bounded_label_names(registry: CollectorRegistry) -> None:
    """No sample carries a label other than rule/result/adapter/backend/kind (no subject)."""
    subject = "user:alice@example.com"
    m = Metrics(registry)
    m.decision("login", "denied", "asgi")
    m.backend_latency("redis", 0.001)
    m.backend_error("redis", "timeout")
    m.deny_cache_hit("login")
    samples = [s for metric in registry.collect() for s in metric.samples]
    assert samples
    for sample in samples:
        assert set(sample.labels) <= LABEL_NAMES, sample
    assert subject.encode() not in generate_latest(registry)
    for method in ("decision", "backend_latency", "backend_error", "deny_cache_hit"):
        params = set(inspect.signature(getattr(Metrics, method)).parameters)
        assert not params & {"subject", "key", "identity", "client"}, method


def test_rule_names_capped(registry: CollectorRegistry) -> None:
    """500 distinct rule names yield the first 200 plus "other"; nothing is lost."""
    m = Metrics(registry)
    for i in range(500):
        m.decision(f"rule-{i}", "allowed", "asgi")
        m.deny_cache_hit(f"rule-{i}")
    rules = label_values(registry, "ratelimit_decisions_total", "rule")
    assert len(rules) == MAX_RULES + 1
    assert "other" in rules
    assert label_values(registry, "ratelimit_deny_cache_hits_total", "rule") == rules
    name = "ratelimit_decisions_total"
    assert value(registry, name, rule="other", result="allowed", adapter="asgi") == 300
    assert value(registry, name, rule="rule-0", result="allowed", adapter="asgi") == 1


def test_rule_cap_is_shared_between_instances(registry: CollectorRegistry) -> None:
    """Two Metrics on one registry cannot together exceed the rule cap."""
    a, b = Metrics(registry), Metrics(registry)
    for i in range(300):
        a.decision(f"a-{i}", "allowed", "asgi")
        b.decision(f"b-{i}", "allowed", "asgi")
    assert len(label_values(registry, "ratelimit_decisions_total", "rule")) == MAX_RULES + 1


def test_rule_cap_under_threads(registry: CollectorRegistry) -> None:
    """Concurrent new rule names never push the label set past the cap."""
    m = Metrics(registry)

    def work(t: int) -> None:
        for i in range(100):
            m.decision(f"t{t}-{i}", "allowed", "asgi")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(label_values(registry, "ratelimit_decisions_total", "rule")) == MAX_RULES + 1
    total = sum(
        s.value for mt in registry.collect() for s in mt.samples if s.name == "ratelimit_decisions_total"
    )
    assert total == 800


def test_long_names_truncated(registry: CollectorRegistry) -> None:
    """Rule, adapter and backend values are cut to 64 characters."""
    m = Metrics(registry)
    m.decision("r" * 1000, "allowed", "a" * 100)
    m.backend_latency("b" * 100, 0.001)
    assert label_values(registry, "ratelimit_decisions_total", "rule") == {"r" * 64}
    assert label_values(registry, "ratelimit_decisions_total", "adapter") == {"a" * 64}
    assert label_values(registry, "ratelimit_backend_latency_seconds_count", "backend") == {"b" * 64}


def test_unknown_result_and_kind_become_other(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown result and kind values are recorded as "other", logged once, never raised."""
    m = Metrics(registry)
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        m.decision("r", "exploded", "asgi")
        m.decision("r", "imploded", "asgi")
        m.backend_error("redis", "ssl")
        m.backend_error("redis", "oom")
    assert value(registry, "ratelimit_decisions_total", rule="r", result="other", adapter="asgi") == 2
    assert value(registry, "ratelimit_backend_errors_total", backend="redis", kind="other") == 2
    assert label_values(registry, "ratelimit_decisions_total", "result") == {"other"}
    assert len([r for r in caplog.records if "result" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "kind" in r.getMessage()]) == 1


def test_generate_latest_names_every_metric(registry: CollectorRegistry) -> None:
    """The exposition text names all four metrics."""
    m = Metrics(registry)
    m.decision("r", "allowed", "asgi")
    m.backend_latency("redis", 0.001)
    m.backend_error("redis", "timeout")
    m.deny_cache_hit("r")
    text = generate_latest(registry).decode()
    for name in (
        "ratelimit_decisions_total",
        "ratelimit_backend_latency_seconds_bucket",
        "ratelimit_backend_errors_total",
        "ratelimit_deny_cache_hits_total",
    ):
        assert name in text


def test_null_metrics_matches_metrics() -> None:
    """NullMetrics has exactly Metrics' public methods, with the same signatures, and no-ops."""

    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(NullMetrics) == public(Metrics)
    for name in public(Metrics):
        assert inspect.signature(getattr(NullMetrics, name)) == inspect.signature(getattr(Metrics, name))
    null = NullMetrics()
    null.decision("r", "allowed", "asgi")
    null.backend_latency("redis", 0.1)
    null.backend_error("redis", "timeout")
    null.deny_cache_hit("r")


def test_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module imports without prometheus-client; building Metrics says what to install."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "ratelimit.metrics")
    monkeypatch.setattr(ratelimit, "metrics", ratelimit.metrics)  # restored after the re-import
    import ratelimit.metrics as fresh

    fresh.NullMetrics().decision("r", "allowed", "asgi")
    with pytest.raises(ImportError, match=r"pip install 'ambient-ratelimit\[prometheus\]'"):
        fresh.Metrics()
