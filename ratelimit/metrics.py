"""Prometheus metrics for rate limit decisions, with bounded label cardinality.

``Metrics`` records four series (``ratelimit`` is the default namespace)::

    ratelimit_decisions_total{rule, result, adapter}
    ratelimit_backend_latency_seconds{backend}          (histogram)
    ratelimit_backend_errors_total{backend, kind}
    ratelimit_deny_cache_hits_total{rule}

``NullMetrics`` has the same methods and records nothing; it is the default when
metrics are off and needs no ``prometheus-client``.

Label values never include the subject (the client identity being limited): a
subject per label value would create one time series per client. Rule names come from
configuration, never from requests; the per-label caps below are a safety net against
a configuration bug, not a way to label by request data.

    >>> from prometheus_client import CollectorRegistry
    >>> metrics = Metrics(CollectorRegistry())
    >>> metrics.decision("login", "denied", "asgi")
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.registry import Collector

__all__ = ["DECISION_RESULTS", "ERROR_KINDS", "OTHER", "RELOAD_RESULTS", "Metrics", "NullMetrics"]

DECISION_RESULTS: frozenset[str] = frozenset({"allowed", "denied", "shadow", "fallback", "unauthenticated"})
"""Values of the decisions' ``result`` label; anything else is reported as ``OTHER``."""
RELOAD_RESULTS: frozenset[str] = frozenset({"applied", "rejected"})
"""Values of the ``result`` label; anything else is reported as ``OTHER``."""
ERROR_KINDS: frozenset[str] = frozenset({"timeout", "connection", "other"})
"""Values of the ``kind`` label; anything else is reported as ``OTHER``."""
OTHER = "other"
"""The label value that stands in for unknown values and for new names past a cap."""

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

MAX_LABEL_LENGTH = 64
MAX_RULES = 200
# Adapters and backends are named by code, not configuration; a handful is normal.
MAX_ADAPTERS = 20
MAX_BACKENDS = 20
# Bounds the memory of the raw-argument -> child caches even if callers pass
# unbounded values; past it the (still cheap) normalising path runs on every call.
_MAX_CACHED_CHILDREN = 4096

log = logging.getLogger("ratelimit")

_K = TypeVar("_K")
_V = TypeVar("_V")

_INSTALL_HINT = "Metrics needs prometheus-client: pip install 'ambient-ratelimit[prometheus]'"


class BoundedLabel:  # not in __all__: shared with ratelimit.serve, not an API
    """Truncates label values and admits at most ``cap`` distinct ones; the rest are OTHER."""

    __slots__ = ("_cap", "_lock", "_seen")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        value = str(value)[:MAX_LABEL_LENGTH]
        if value in self._seen:
            return value
        with self._lock:  # check-and-add must not let concurrent callers overshoot the cap
            if value in self._seen:
                return value
            if len(self._seen) >= self._cap:
                return OTHER
            self._seen.add(value)
            return value


class _Collectors:
    """The collectors of one (registry, namespace), shared by every Metrics built on it."""

    def __init__(self, registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = weakref.ref(registry)
        self.buckets = buckets
        # Built unregistered, then registered together: a name clash part-way must not
        # leave half the metrics behind, or every later attempt would clash too.
        self.decisions = Counter(
            "decisions",
            "Rate limit decisions.",
            ["rule", "result", "adapter"],
            namespace=namespace,
            registry=None,
        )
        self.latency = Histogram(
            "backend_latency_seconds",
            "Time spent in the rate limit backend per call.",
            ["backend"],
            namespace=namespace,
            registry=None,
            buckets=buckets,
        )
        self.phases = Histogram(
            "backend_phase_seconds",
            "Per script call on the asyncio path: time queued in this process before it was "
            "written (phase=queued), and time until Redis answered (phase=redis).",
            ["backend", "phase"],
            namespace=namespace,
            registry=None,
            buckets=buckets,
        )
        self.errors = Counter(
            "backend_errors",
            "Rate limit backend failures.",
            ["backend", "kind"],
            namespace=namespace,
            registry=None,
        )
        self.deny_cache_hits = Counter(
            "deny_cache_hits",
            "Denials answered from the local deny cache.",
            ["rule"],
            namespace=namespace,
            registry=None,
        )
        self.reloads = Counter(
            "config_reloads",
            "Config file changes: applied, or rejected as invalid (the old rules stay).",
            ["result"],
            namespace=namespace,
            registry=None,
        )
        registered: list[Collector] = []
        try:
            for collector in (
                self.decisions,
                self.latency,
                self.phases,
                self.errors,
                self.deny_cache_hits,
                self.reloads,
            ):
                registry.register(collector)
                registered.append(collector)
        except ValueError:
            for done in registered:
                registry.unregister(done)
            raise
        # Shared with every Metrics on these collectors, so two instances cannot
        # together exceed the caps.
        self.rules = BoundedLabel(MAX_RULES)
        self.adapters = BoundedLabel(MAX_ADAPTERS)
        self.backends = BoundedLabel(MAX_BACKENDS)
        self.decision_children: dict[tuple[str, str, str], Counter] = {}
        self.latency_children: dict[str, Histogram] = {}
        self.phase_children: dict[str, tuple[Histogram, Histogram]] = {}
        self.error_children: dict[tuple[str, str], Counter] = {}
        self.deny_cache_children: dict[str, Counter] = {}
        self._warned: set[str] = set()

    def known(self, label: str, value: str, allowed: frozenset[str]) -> str:
        """``value`` if allowed, else OTHER; the first unknown value per label is logged."""
        if value in allowed:
            return value
        if label not in self._warned:
            self._warned.add(label)
            log.warning("unknown metrics %s %r reported as %r (logged once)", label, value, OTHER)
        return OTHER


def _remember(cache: dict[_K, _V], key: _K, child: _V) -> _V:
    # Unlocked on purpose: a race only lets the cache overshoot by a few entries.
    if len(cache) < _MAX_CACHED_CHILDREN:
        cache[key] = child
    return child


# (id(registry), namespace) -> collectors. Prometheus refuses to register a metric name
# twice ("Duplicated timeseries"), so every Metrics on the same registry and namespace
# reuses the first one's collectors (and so shares its counts). The entry keeps a weak
# reference to its registry and is dropped when that registry is collected, so a new
# registry that happens to reuse the id never receives stale collectors.
_COLLECTORS: dict[tuple[int, str], _Collectors] = {}
_COLLECTORS_LOCK = threading.Lock()


def _collectors_for(registry: CollectorRegistry, namespace: str, buckets: tuple[float, ...]) -> _Collectors:
    key = (id(registry), namespace)
    with _COLLECTORS_LOCK:
        found = _COLLECTORS.get(key)
        if found is not None and found.registry() is registry:
            if found.buckets != buckets:
                raise ValueError(
                    f"metrics {namespace!r} already exist on this registry with latency buckets "
                    f"{found.buckets}; cannot change them to {buckets}"
                )
            return found
        created = _Collectors(registry, namespace, buckets)
        _COLLECTORS[key] = created
        weakref.finalize(registry, _forget, key, created)
        return created


def _forget(key: tuple[int, str], collectors: _Collectors) -> None:
    with _COLLECTORS_LOCK:
        if _COLLECTORS.get(key) is collectors:
            del _COLLECTORS[key]


class Metrics:
    """Prometheus metrics for rate limit decisions. Label values never include the subject.

    Args:
        registry: where to register; ``prometheus_client.REGISTRY`` by default.
        namespace: prefix of every metric name.
        latency_buckets: upper bounds (seconds) of the backend latency histogram.

    Building ``Metrics`` again with the same registry and namespace returns views of the
    same collectors (shared counts, no "Duplicated timeseries" error); asking for other
    latency buckets then raises ``ValueError``. Unregistering the collectors by hand is
    not supported.

    Label values are bounded: ``result`` and ``kind`` outside ``DECISION_RESULTS`` and
    ``ERROR_KINDS`` become ``"other"`` (never an exception on the request path); rule,
    adapter and backend names are cut to 64 characters, and new names beyond the first
    200 rules (20 adapters, 20 backends) are reported as ``"other"``.

    The recording methods run on every request: each bound label child is cached by its
    arguments, so a repeat call is a dict lookup and an increment.
    """

    __slots__ = ("_collectors", "_decisions", "_deny_cache", "_errors", "_latency", "_phases")

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "ratelimit",
        latency_buckets: Sequence[float] = DEFAULT_LATENCY_BUCKETS,
    ) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        if registry is None:
            registry = prometheus_client.REGISTRY
        c = _collectors_for(registry, namespace, tuple(float(b) for b in latency_buckets))
        self._collectors = c
        self._decisions = c.decision_children
        self._latency = c.latency_children
        self._phases = c.phase_children
        self._errors = c.error_children
        self._deny_cache = c.deny_cache_children

    def decision(self, rule: str, result: str, adapter: str) -> None:
        """Count one decision of ``rule`` (``"allowed"``, ``"denied"``, ...) made by ``adapter``."""
        child = self._decisions.get((rule, result, adapter))
        if child is None:
            c = self._collectors
            labels = (c.rules(rule), c.known("result", result, DECISION_RESULTS), c.adapters(adapter))
            child = _remember(self._decisions, (rule, result, adapter), c.decisions.labels(*labels))
        child.inc()

    def backend_latency(self, backend: str, seconds: float) -> None:
        """Observe how long one call to ``backend`` took."""
        child = self._latency.get(backend)
        if child is None:
            c = self._collectors
            child = _remember(self._latency, backend, c.latency.labels(c.backends(backend)))
        child.observe(seconds)

    def backend_phases(self, backend: str, queued: float, in_backend: float) -> None:
        """Observe one script call's time queued in this process and its time in ``backend``."""
        children = self._phases.get(backend)
        if children is None:
            c = self._collectors
            name = c.backends(backend)
            children = _remember(
                self._phases, backend, (c.phases.labels(name, "queued"), c.phases.labels(name, "redis"))
            )
        children[0].observe(queued)
        children[1].observe(in_backend)

    def backend_error(self, backend: str, kind: str) -> None:
        """Count one failed call to ``backend``: ``"timeout"``, ``"connection"`` or ``"other"``."""
        child = self._errors.get((backend, kind))
        if child is None:
            c = self._collectors
            labels = (c.backends(backend), c.known("kind", kind, ERROR_KINDS))
            child = _remember(self._errors, (backend, kind), c.errors.labels(*labels))
        child.inc()

    def deny_cache_hit(self, rule: str) -> None:
        """Count one denial of ``rule`` answered from the local deny cache."""
        child = self._deny_cache.get(rule)
        if child is None:
            c = self._collectors
            child = _remember(self._deny_cache, rule, c.deny_cache_hits.labels(c.rules(rule)))
        child.inc()

    def config_reload(self, result: str) -> None:
        """Count a config file change that was ``"applied"`` or ``"rejected"``."""
        c = self._collectors
        c.reloads.labels(c.known("result", result, RELOAD_RESULTS)).inc()


class NullMetrics:
    """Records nothing; the default when metrics are off. Same methods as ``Metrics``."""

    __slots__ = ()

    def decision(self, rule: str, result: str, adapter: str) -> None:
        """Do nothing."""

    def backend_latency(self, backend: str, seconds: float) -> None:
        """Do nothing."""

    def backend_phases(self, backend: str, queued: float, in_backend: float) -> None:
        """Do nothing."""

    def backend_error(self, backend: str, kind: str) -> None:
        """Do nothing."""

    def deny_cache_hit(self, rule: str) -> None:
        """Do nothing."""

    def config_reload(self, result: str) -> None:
        """Do nothing."""
