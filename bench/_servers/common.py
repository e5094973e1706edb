"""What every benchmark server process shares: settings from the environment, counters.

The harness (``bench/bench_servers.py``) starts one server process per variant and run,
and describes the variant in ``BENCH_*`` environment variables. Each server counts the
statuses it answered and the failure-policy decisions its limiter made, and reports them
(as JSON) on ``GET /__stats`` (HTTP servers) or on a side HTTP port (gRPC), which the
harness reads before and after each measured run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

STATS_PATH = "/__stats"
SUBJECT_HEADER = "x-user-id"
TIER_HEADER = "x-user-plan"
ITEMS_PATH = "/items"
GRPC_METHOD = "/shop.Cart/GetCart"


@dataclass(frozen=True)
class ServerSettings:
    """The variant a server process runs, read from its environment."""

    variant: str
    redis_url: str | None
    rate: str  #: the limit of "allowed" variants, e.g. ``1000000/minute``
    deny_rate: str  #: the limit of the deny-path variant, e.g. ``10/minute``
    config_file: str | None  #: the YAML config of config-tiers
    jwt_public_key_file: str | None  #: PEM public key of the jwt-subject variants

    @classmethod
    def from_env(cls) -> ServerSettings:
        env = os.environ
        return cls(
            variant=env["BENCH_VARIANT"],
            redis_url=env.get("BENCH_REDIS_URL") or None,
            rate=env.get("BENCH_RATE", "1000000/minute"),
            deny_rate=env.get("BENCH_DENY_RATE", "10/minute"),
            config_file=env.get("BENCH_CONFIG_FILE") or None,
            jwt_public_key_file=env.get("BENCH_JWT_PUBLIC_KEY_FILE") or None,
        )

    def require_redis(self) -> str:
        if not self.redis_url:
            raise RuntimeError(f"variant {self.variant} needs BENCH_REDIS_URL")
        return self.redis_url

    def jwt_public_key(self) -> bytes:
        if not self.jwt_public_key_file:
            raise RuntimeError(f"variant {self.variant} needs BENCH_JWT_PUBLIC_KEY_FILE")
        with open(self.jwt_public_key_file, "rb") as f:
            return f.read()


class FallbackCounter:
    """A metrics sink (the ``MetricsSink`` methods) that counts failure-policy answers.

    Passed as ``metrics=`` to an adapter it sees every decision (``result ==
    "fallback"``: the failure policy answered, Redis failed or missed its timeout); passed
    to ``Limiter(metrics=...)`` it sees every backend error. Each method is one call and
    at most one integer increment, about what ``NullMetrics`` costs.
    """

    __slots__ = ("backend_errors", "fallbacks")

    def __init__(self) -> None:
        self.fallbacks = 0
        self.backend_errors = 0

    def decision(self, rule: str, result: str, adapter: str) -> None:
        if result == "fallback":
            self.fallbacks += 1

    def backend_latency(self, backend: str, seconds: float) -> None:
        pass

    def backend_phases(self, backend: str, queued: float, in_backend: float) -> None:
        pass

    def backend_error(self, backend: str, kind: str) -> None:
        self.backend_errors += 1

    def deny_cache_hit(self, rule: str) -> None:
        pass

    def config_reload(self, result: str) -> None:
        pass


class Stats:
    """Status counts and failure-policy counts of one server process.

    ``fallbacks`` is how many decisions the failure policy made (counted exactly where
    the variant lets us: the adapter's ``metrics=`` sink or ``Decision.fallback``);
    ``backend_errors`` is how many backend calls failed (``Limiter(metrics=...)``), which
    is the only signal for a route decorator (its decisions report to no sink). A
    ``None`` means "not observable for this variant" (a peer library).
    """

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.started = 0  #: requests handed to the app (answered or not)
        self._lock = threading.Lock()  # only the threaded (WSGI, sync gRPC) servers need it
        self.sinks: list[FallbackCounter] = []
        self.extra_fallbacks = 0  #: counted by hand (Decision.fallback in a wrapper)
        self.observable = True
        self.notes: list[str] = []

    def count(self, status: int) -> None:
        self.statuses[status] += 1

    def count_locked(self, status: int) -> None:
        with self._lock:
            self.statuses[status] += 1

    def start_locked(self) -> None:
        with self._lock:
            self.started += 1

    def sink(self) -> FallbackCounter:
        """A new counting sink whose counts this object reports."""
        s = FallbackCounter()
        self.sinks.append(s)
        return s

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            statuses = {str(k): v for k, v in self.statuses.items()}
        fallbacks = self.extra_fallbacks + sum(s.fallbacks for s in self.sinks)
        errors = sum(s.backend_errors for s in self.sinks)
        return {
            "pid": os.getpid(),
            "started": self.started,
            "statuses": statuses,
            "fallbacks": fallbacks if self.observable else None,
            "backend_errors": errors if self.observable else None,
            "notes": self.notes,
            # where the measured package came from (None: not imported, a bare app)
            "ratelimit": getattr(sys.modules.get("ratelimit"), "__file__", None),
        }

    def json(self) -> bytes:
        return json.dumps(self.snapshot()).encode()


def tiers_config(storage: str, rate: str) -> str:
    """The YAML of the config-tiers variant: a tiered per-user rule on ``/items``.

    The tier comes from the ``x-user-plan`` header (free, pro, or anything else: the
    default); pro has two limits (two counters per request), as a paid plan often has.
    Every limit is far above what the benchmark sends.
    """
    return f"""\
version: 1
backend:
  storage: {storage}
  timeout: 50ms
  failure_mode: open
identity:
  missing: anonymous
rules:
  - name: items-per-user
    match:
      paths: [{ITEMS_PATH}]
      methods: [GET]
    key: header:{SUBJECT_HEADER}
    tiers:
      by: header:{TIER_HEADER}
      limits:
        free: {rate}
        pro: [{rate}, 1000000000/day]
      default: {rate}
"""
