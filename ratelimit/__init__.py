"""ambient-ratelimit: application-level rate limiting backed by Redis.

Sliding-window-counter limits decided by atomic Redis Lua scripts (Redis server time,
one round trip per request, all-or-nothing across several limits), with an in-memory
backend that runs the same math. Built for services that lost Envoy's rate limits
when they moved to Istio Ambient mode.

    >>> from ratelimit import Limiter
    >>> limiter = Limiter()                    # memory backend
    >>> limiter.hit("alice", "2/minute").allowed
    True
"""

from __future__ import annotations

from ._core.decision import Decision, LimitStatus, Receipt
from ._core.rate import Rate, RateParseError, parse_rates
from .backends.base import Backend, BackendError
from .enforce import Enforcer
from .limiter import Limiter
from .request import RequestInfo
from .rules import Rule

__all__ = [
    "Backend",
    "BackendError",
    "Decision",
    "Enforcer",
    "LimitStatus",
    "Limiter",
    "Rate",
    "RateParseError",
    "Receipt",
    "RequestInfo",
    "Rule",
    "__version__",
    "parse_rates",
]

__version__ = "0.1.0"
"""The package version (the wheel's metadata is read from this line)."""
