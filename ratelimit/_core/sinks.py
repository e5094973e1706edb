"""What the layers report to: the metrics sink, as a Protocol at the bottom of the stack.

The engine and the backends (below the policy layer) and the Enforcer (in it) all
report to one object; :class:`ratelimit.metrics.Metrics` and
:class:`ratelimit.metrics.NullMetrics` are the implementations, and any object with
these methods works. Defining the shape here lets the lower layers type it without
importing ``ratelimit.metrics`` (which sits above them).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MetricsSink"]


class MetricsSink(Protocol):
    """The methods a metrics object has (see :class:`ratelimit.metrics.Metrics`)."""

    def decision(self, rule: str, result: str, adapter: str) -> None:
        """Count one decision of ``rule``."""
        ...

    def backend_latency(self, backend: str, seconds: float) -> None:
        """Observe one backend call's duration."""
        ...

    def backend_phases(self, backend: str, queued: float, in_backend: float) -> None:
        """Observe a script call's time queued in the process and its time in the backend."""
        ...

    def backend_error(self, backend: str, kind: str) -> None:
        """Count one failed backend call."""
        ...

    def deny_cache_hit(self, rule: str) -> None:
        """Count one denial answered by the deny cache."""
        ...

    def config_reload(self, result: str) -> None:
        """Count one config file change, applied or rejected."""
        ...
